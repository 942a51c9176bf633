"""Export of weights that cannot be exported as they are: one ``error:`` line each (status 2),
nothing written, and never PyTorch's advice to load with ``weights_only=False``."""

from __future__ import annotations

import os

import pytest
import torch

from custom.deploy.export import main
from custom.deploy.model_config import ModelConfig
from custom.networks import UNeXt

RECORD = {"image_size": [64, 64], "num_classes": 2, "in_channels": 1, "intensity_range": [0, 255]}


class _Payload:
    """A pickle that would run code when loaded with weights_only=False."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _truncated(folder):
    torch.save(UNeXt(1, 2).state_dict(), folder / "model.pt")
    data = (folder / "model.pt").read_bytes()
    (folder / "model.pt").write_bytes(data[: len(data) // 2])


def _nan(folder):
    state = UNeXt(1, 2).state_dict()
    next(v for v in state.values() if v.is_floating_point()).fill_(float("nan"))
    torch.save(state, folder / "model.pt")


def _three_classes(folder):
    torch.save(UNeXt(1, 3).state_dict(), folder / "model.pt")


def _pickle(folder):
    torch.save({"w": _Payload(str(folder / "pwned"))}, folder / "model.pt")


@pytest.mark.parametrize(
    "make,expected",
    [
        (_truncated, "cannot read checkpoint"),
        (_nan, "NaN/Inf"),
        (_three_classes, "does not fit UNeXt"),
        (_pickle, "refused because loading them could run code"),
    ],
    ids=["truncated", "nan", "other-class-count", "pickle-payload"],
)
def test_unexportable_weights_are_one_line(tmp_path, capsys, make, expected):
    make(tmp_path)
    ModelConfig(str(tmp_path), RECORD).write()  # a record carrying these very bytes' checksum
    before = sorted(p.name for p in tmp_path.iterdir())
    with pytest.raises(SystemExit) as exit_:
        main(["torchscript", "--ckpt_dir", str(tmp_path)])
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_.value.code == 2 and err, err
    last = err[-1]
    assert last.startswith("error: ") and expected in last and str(tmp_path / "model.pt") in last, err
    assert "weights_only=False" not in "\n".join(err) and "Traceback" not in "\n".join(err), err
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # nothing written, no payload ran
