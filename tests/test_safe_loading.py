"""Checkpoints are never unpickled with code: every ``torch.load`` passes ``weights_only=True``,
and a pickle carrying code is refused by every loader with an error naming the file."""

from __future__ import annotations

import ast
import os
import pickle
from pathlib import Path

import pytest
import torch
from conftest import REPO

from custom.networks import SwinUnet, UNeXt, load_pretrained_swin
from custom.training.checkpoint import load_network_weights, load_training_state

SCANNED = [REPO / "custom", REPO / "tests"]
# torch.load calls allowed without weights_only=True, with the reason (keep this empty if you can)
ALLOWED: dict[str, str] = {}


def _unsafe_torch_loads(path: Path) -> list[int]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    lines = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        f = node.func
        is_load = (
            isinstance(f, ast.Attribute)
            and f.attr == "load"
            and isinstance(f.value, ast.Name)
            and f.value.id == "torch"
        )
        if not is_load:
            continue
        safe = any(
            k.arg == "weights_only" and isinstance(k.value, ast.Constant) and k.value.value is True
            for k in node.keywords
        )
        if not safe:
            lines.append(node.lineno)
    return lines


def test_every_torch_load_uses_weights_only():
    found = []
    for root in SCANNED:
        assert root.is_dir(), f"{root} is gone: scan the folders that hold the code"
        for path in sorted(root.rglob("*.py")):
            rel = path.relative_to(REPO).as_posix()
            if rel in ALLOWED:
                continue
            found += [f"{rel}:{line}" for line in _unsafe_torch_loads(path)]
    assert not found, "torch.load without weights_only=True:\n" + "\n".join(found)


def test_the_scanner_finds_unsafe_calls(tmp_path):
    src = tmp_path / "x.py"
    load = "torch." + "load"  # the scanner's test input, spelled so that text searches do not flag this file
    src.write_text(
        f"import torch\na = {load}('a')\nb = {load}('b', weights_only=False)\nc = {load}('c', weights_only=True)\n"
    )
    assert _unsafe_torch_loads(src) == [2, 3]


class _Payload:
    """Unpickling it would create the marker file."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.fixture()
def evil_checkpoint(tmp_path):
    marker = tmp_path / "PWNED"
    state = {"model": {"weight": torch.zeros(1)}, "cnn": _Payload(str(marker)), "layers.0.x": _Payload(str(marker))}
    path = tmp_path / "evil.pt"
    torch.save(state, path, pickle_module=pickle)
    return path, marker


def test_pickles_with_code_are_refused_by_every_loader(evil_checkpoint):
    path, marker = evil_checkpoint
    with pytest.raises(ValueError, match=r"cannot read checkpoint .*evil\.pt"):
        load_network_weights(UNeXt(1, 2), str(path))
    with pytest.raises(ValueError, match=r"cannot read training state .*evil\.pt"):
        load_training_state(str(path), {"cnn": UNeXt(1, 2)})
    swin = SwinUnet(img_size=32, in_channels=1, out_channels=2, embed_dim=12, num_heads=(1, 1, 2, 2), window_size=4)
    with pytest.raises(ValueError, match=r"cannot read pretrained Swin checkpoint .*evil\.pt"):
        load_pretrained_swin(swin, str(path))
    assert not marker.exists(), "the pickle's code ran"
