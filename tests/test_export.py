"""TorchScript and ONNX export of the deployed UNeXt (``python -m custom.deploy.export``).

The README's export commands are run as written, with ``--ckpt_dir`` pointing at a temporary
folder that holds a seeded random UNeXt at 64 px and its ``model_config.json`` (the record that
training writes): the exported files take their input shape from that record, not from a
hard-coded 448, and reproduce the eager network.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import CONFIGS, REPO

from custom.networks import UNeXt

SIZE = 64
CLASSES = 2


def _random_unext(seed: int = 0) -> UNeXt:
    """A seeded random UNeXt with non-trivial BatchNorm statistics (eval mode)."""
    torch.manual_seed(seed)
    net = UNeXt(1, CLASSES)
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 1.5)
    return net.eval()


def _write_model(ckpt_dir, net: UNeXt) -> dict:
    """``model.pt`` and the record a training at 64 px would write beside it (common.yaml's
    ``model_record``, written by :class:`custom.deploy.model_config.ModelConfig`)."""
    from monai.bundle import ConfigParser

    from custom.deploy.model_config import ModelConfig

    parser = ConfigParser()
    parser.read_config([str(CONFIGS / "common.yaml")])
    parser.update(
        {
            "bundle_root": str(REPO / "bundle"),
            "ckpt_dir": str(ckpt_dir),
            "model_config_file": None,
            "image_size": [SIZE, SIZE],
            "num_classes": CLASSES,
            "labels": {"background": 0, "fetal head": 1},
            "transformer_def#embed_dim": 12,
            "transformer_def#num_heads": [1, 1, 2, 2],
            "transformer_def#window_size": 4,
        }
    )
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    torch.save(net.state_dict(), ckpt_dir / "model.pt")
    config = ModelConfig(str(ckpt_dir), parser.get_parsed_content("model_record"))
    config.write()
    return config.record


def _readme_export_commands() -> list[str]:
    text = (REPO / "README.md").read_text(encoding="utf-8")
    section = text[text.index("## Export, metadata, sharing") :]
    commands = re.findall(r"^(\.venv/bin/python -m custom\.deploy\.export .*)$", section, re.M)
    assert [shlex.split(c)[3] for c in commands] == ["torchscript", "onnx"], commands
    assert "input_shape" not in section.split("```")[1], "the README still types an input shape"
    return commands


def _run(cmd: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        cmd, cwd=REPO, capture_output=True, text=True, timeout=600, env={**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    )


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """The README's two export commands as written, plus ``--ckpt_dir`` (a temporary folder)."""
    ckpt_dir = tmp_path_factory.mktemp("export") / "models"
    net = _random_unext()
    record = _write_model(ckpt_dir, net)
    outputs = {}
    for command in _readme_export_commands():
        cmd = shlex.split(command)
        assert cmd[0] == ".venv/bin/python"
        proc = _run([sys.executable, *cmd[1:], "--ckpt_dir", str(ckpt_dir)])
        assert proc.returncode == 0, f"{command}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
        assert f"input [1, 1, {SIZE}, {SIZE}] from {ckpt_dir / 'model_config.json'}" in proc.stderr, proc.stderr
        assert re.search(r"wrote \S+ in [0-9.]+ s", proc.stderr), proc.stderr
        outputs[cmd[3]] = proc
    assert not [p.name for p in ckpt_dir.iterdir() if p.name.startswith(".tmp_")]
    return {
        "net": net,
        "record": record,
        "ckpt_dir": ckpt_dir,
        "ts": ckpt_dir / "model.ts",
        "onnx": ckpt_dir / "model.onnx",
    }


def test_torchscript_export_has_the_recorded_shape_and_matches_eager(exported):
    extra = {"metadata.json": "", "common.json": ""}
    ts = torch.jit.load(str(exported["ts"]), map_location="cpu", _extra_files=extra)
    text = {k: v.decode() if isinstance(v, bytes) else v for k, v in extra.items()}
    fmt = json.loads(text["metadata.json"])["network_data_format"]
    # the metadata travelling in the file describes the weights (64 px, 1 channel, their classes), not 448 px
    assert fmt["inputs"]["image"]["spatial_shape"] == exported["record"]["image_size"] == [SIZE, SIZE]
    assert fmt["inputs"]["image"]["num_channels"] == exported["record"]["in_channels"] == 1
    assert fmt["outputs"]["pred"]["num_channels"] == CLASSES
    assert fmt["outputs"]["pred"]["channel_def"] == {"0": "background", "1": "fetal head"}
    assert json.loads(text["common.json"])["network_def"]["_target_"] == "custom.networks.UNeXt"
    torch.manual_seed(1)
    # scripted: valid at the recorded shape, for other batch sizes and sides (multiples of 32)
    for shape in [(1, 1, SIZE, SIZE), (2, 1, SIZE, SIZE), (1, 1, 96, 128)]:
        x = torch.rand(*shape)
        with torch.no_grad():
            expected, got = exported["net"](x), ts(x)
        assert got.shape == expected.shape == (shape[0], CLASSES, *shape[2:])
        torch.testing.assert_close(got, expected, rtol=0, atol=1e-4)
    with pytest.raises(Exception, match="divisible by 32"):
        ts(torch.rand(1, 1, 60, 64))


def test_onnx_export_has_the_recorded_shape_and_matches_eager_with_dynamic_batch(exported):
    ort = pytest.importorskip("onnxruntime")
    session = ort.InferenceSession(str(exported["onnx"]), providers=["CPUExecutionProvider"])
    (inp,), (out,) = session.get_inputs(), session.get_outputs()
    assert (inp.name, out.name) == ("image", "pred")
    assert isinstance(inp.shape[0], str), inp.shape  # dynamic batch
    assert list(inp.shape[1:]) == [exported["record"]["in_channels"], *exported["record"]["image_size"]]
    assert list(out.shape[1:]) == [CLASSES, SIZE, SIZE], out.shape
    torch.manual_seed(2)
    for batch in (1, 3):
        x = torch.rand(batch, 1, SIZE, SIZE)
        with torch.no_grad():
            expected = exported["net"](x).numpy()
        (got,) = session.run(None, {"image": x.numpy()})
        assert got.shape == expected.shape == (batch, CLASSES, SIZE, SIZE)
        np.testing.assert_allclose(got, expected, rtol=0, atol=1e-4)


def test_traced_torchscript_to_another_filepath(exported, tmp_path):
    from custom.deploy.export import export

    target = tmp_path / "out" / "traced"  # no extension: .ts, as MONAI names it
    written = export("torchscript", ckpt_dir=exported["ckpt_dir"], filepath=target, use_trace="true")
    assert written == str(target) + ".ts" and os.path.isfile(written)
    ts = torch.jit.load(written, map_location="cpu")
    x = torch.rand(2, 1, SIZE, SIZE)
    with torch.no_grad():
        torch.testing.assert_close(ts(x), exported["net"](x), rtol=0, atol=1e-4)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["traced.ts"]


def _fails(argv: list[str], capsys) -> str:
    from custom.deploy.export import main

    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and "Traceback" not in err, err
    return err


def test_missing_weights_record_or_size_is_one_line(tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert f"no model.pt in {empty}" in _fails(["onnx", "--ckpt_dir", str(empty)], capsys)

    bare = tmp_path / "bare"
    bare.mkdir()
    torch.save(_random_unext().state_dict(), bare / "model.pt")
    err = _fails(["torchscript", "--ckpt_dir", str(bare)], capsys)
    assert "model_config.json" in err and str(bare / "model.pt") in err, err

    (bare / "model_config.json").write_text(json.dumps({"image_size": 64, "in_channels": 1, "num_classes": 2}))
    err = _fails(["onnx", "--ckpt_dir", str(bare)], capsys)
    assert "carries no checksum" in err and "--image_size" in err, err  # a record must belong to the weights

    from custom.deploy.model_config import ModelConfig

    ModelConfig(str(bare), {"image_size": 64, "in_channels": 1, "num_classes": 2}).write()  # with their sha256
    err = _fails(["onnx", "--ckpt_dir", str(bare)], capsys)
    assert "image_size must be two positive integers, got 64" in err and "model_config.json" in err, err

    assert "expected one of torchscript, onnx" in _fails(["tflite", "--ckpt_dir", str(bare)], capsys)
    assert sorted(p.name for p in bare.iterdir()) == ["model.pt", "model_config.json"]  # nothing written


def test_a_failed_export_leaves_the_previous_file(exported, tmp_path, monkeypatch):
    """Atomic: an export that breaks half-way (here: after writing part of its file) keeps the old one."""
    import monai.bundle

    from custom.deploy.export import export

    target = tmp_path / "model.onnx"
    target.write_bytes(b"previous export")

    def broken(*args, filepath, **kwargs):
        with open(filepath, "wb") as f:
            f.write(b"half")
        raise RuntimeError("exporter died")

    monkeypatch.setattr(monai.bundle, "onnx_export", broken)
    with pytest.raises(RuntimeError, match="exporter died"):
        export("onnx", ckpt_dir=exported["ckpt_dir"], filepath=target)
    assert target.read_bytes() == b"previous export"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx"]
