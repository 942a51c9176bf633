"""TorchScript and ONNX export of the deployed UNeXt through monai.bundle's own commands.

The commands are the ones documented for the bundle, at 64 px instead of 448 px:

    python -m monai.bundle ckpt_export network_def --filepath bundle/models/model.ts \
        --ckpt_file bundle/models/model.pt --meta_file bundle/configs/metadata.json \
        --config_file "['bundle/configs/common.yaml']" --use_trace True --input_shape "[1, 1, 448, 448]"
    python -m monai.bundle onnx_export network_def --filepath bundle/models/model.onnx \
        --ckpt_file bundle/models/model.pt --meta_file bundle/configs/metadata.json \
        --config_file "['bundle/configs/common.yaml']" --input_shape "[1, 1, 448, 448]" \
        --converter_kwargs "{'input_names': ['image'], 'output_names': ['pred'], 'dynamic_axes': {'image': {0: 'batch'}, 'pred': {0: 'batch'}}}"
"""  # noqa: E501

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import REPO

from custom.networks import UNeXt

SIZE = 64
CLASSES = 2
COMMON = "['bundle/configs/common.yaml']"
ONNX_KWARGS = (
    "{'input_names': ['image'], 'output_names': ['pred'], "
    "'dynamic_axes': {'image': {0: 'batch'}, 'pred': {0: 'batch'}}}"
)


def _random_unext(seed: int = 0) -> UNeXt:
    """A seeded random UNeXt with non-trivial BatchNorm statistics (eval mode)."""
    torch.manual_seed(seed)
    net = UNeXt(1, CLASSES)
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 1.5)
    return net.eval()


def _bundle_command(*args: str) -> list[str]:
    # num_classes pinned so that a prepared datalist lying around cannot change the network
    return [
        sys.executable,
        "-m",
        "monai.bundle",
        *args,
        "--meta_file",
        "bundle/configs/metadata.json",
        "--config_file",
        COMMON,
        "--image_size",
        f"[{SIZE}, {SIZE}]",
        "--num_classes",
        str(CLASSES),
    ]


def _run(cmd: list[str]) -> None:
    proc = subprocess.run(
        cmd, cwd=REPO, capture_output=True, text=True, timeout=300, env={**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    )
    assert proc.returncode == 0, f"{' '.join(cmd)}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("export")
    net = _random_unext()
    ckpt = tmp / "model.pt"
    torch.save(net.state_dict(), ckpt)
    ts, onnx_file = tmp / "model.ts", tmp / "model.onnx"
    _run(
        _bundle_command(
            "ckpt_export",
            "network_def",
            "--filepath",
            str(ts),
            "--ckpt_file",
            str(ckpt),
            "--use_trace",
            "True",
            "--input_shape",
            f"[1, 1, {SIZE}, {SIZE}]",
        )
    )
    _run(
        _bundle_command(
            "onnx_export",
            "network_def",
            "--filepath",
            str(onnx_file),
            "--ckpt_file",
            str(ckpt),
            "--input_shape",
            f"[1, 1, {SIZE}, {SIZE}]",
            "--converter_kwargs",
            ONNX_KWARGS,
        )
    )
    return {"net": net, "ckpt": ckpt, "ts": ts, "onnx": onnx_file, "tmp": tmp}


def test_torchscript_export_matches_eager(exported):
    extra = {"metadata.json": "", "common.json": ""}
    ts = torch.jit.load(str(exported["ts"]), map_location="cpu", _extra_files=extra)
    text = {k: v.decode() if isinstance(v, bytes) else v for k, v in extra.items()}
    assert "network_data_format" in json.loads(text["metadata.json"])  # the metadata travels in the file
    assert json.loads(text["common.json"])["network_def"]["_target_"] == "custom.networks.UNeXt"
    torch.manual_seed(1)
    # traced at 1 x 1 x 64 x 64; the trace stays valid for other batch sizes and sides (multiples of 32)
    for shape in [(1, 1, SIZE, SIZE), (2, 1, SIZE, SIZE), (1, 1, 96, 128)]:
        x = torch.rand(*shape)
        with torch.no_grad():
            expected, got = exported["net"](x), ts(x)
        assert got.shape == expected.shape == (shape[0], CLASSES, *shape[2:])
        torch.testing.assert_close(got, expected, rtol=0, atol=1e-4)


def test_onnx_export_matches_eager_with_dynamic_batch(exported):
    ort = pytest.importorskip("onnxruntime")
    session = ort.InferenceSession(str(exported["onnx"]), providers=["CPUExecutionProvider"])
    (inp,), (out,) = session.get_inputs(), session.get_outputs()
    assert (inp.name, out.name) == ("image", "pred")
    assert isinstance(inp.shape[0], str) and list(inp.shape[1:]) == [1, SIZE, SIZE]
    torch.manual_seed(2)
    for batch in (1, 3):
        x = torch.rand(batch, 1, SIZE, SIZE)
        with torch.no_grad():
            expected = exported["net"](x).numpy()
        (got,) = session.run(None, {"image": x.numpy()})
        assert got.shape == expected.shape == (batch, CLASSES, SIZE, SIZE)
        np.testing.assert_allclose(got, expected, rtol=0, atol=1e-4)


def _scriptable() -> bool:
    try:
        torch.jit.script(UNeXt(1, CLASSES))
    except Exception:  # noqa: BLE001 - any scripting failure means: not scriptable
        return False
    return True


def test_torchscript_scripting_export_when_scriptable(exported):
    """``ckpt_export`` without ``--use_trace`` scripts the network; UNeXt's input check must be
    TorchScript-compatible for that (otherwise tracing, tested above, is the export path)."""
    if not _scriptable():
        pytest.skip("UNeXt is not scriptable (torch.jit.script fails on its input check): export uses --use_trace True")
    ts_file = exported["tmp"] / "model_scripted.ts"
    _run(
        _bundle_command("ckpt_export", "network_def", "--filepath", str(ts_file), "--ckpt_file", str(exported["ckpt"]))
    )
    ts = torch.jit.load(str(ts_file), map_location="cpu")
    x = torch.rand(2, 1, 96, 64)
    with torch.no_grad():
        torch.testing.assert_close(ts(x), exported["net"](x), rtol=0, atol=1e-4)
    with pytest.raises(Exception, match="divisible by 32"):
        ts(torch.rand(1, 1, 60, 64))
