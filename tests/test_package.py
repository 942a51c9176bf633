"""``python -m custom.deploy.package``: a self-contained bundle that runs with only its own folder on
PYTHONPATH, from another working directory, and a zip of the same files."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import REPO
from PIL import Image

from custom.networks import UNeXt

NAME = "fetal_us_ssl"


def _distinctive_weights(path: Path) -> None:
    """Random UNeXt weights whose prediction is class 1 everywhere (a large bias on the last
    layer): a mask full of foreground proves that the copy's weights were the ones loaded."""
    torch.manual_seed(0)
    net = UNeXt(1, 2)
    with torch.no_grad():
        net.final.bias.copy_(torch.tensor([-1e3, 1e3]))
    torch.save(net.state_dict(), path)


def _bundle_env(bundle: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in {"PYTHONPATH", "PYTHONHOME"}}
    env.update(PYTHONPATH=str(bundle), CUDA_VISIBLE_DEVICES="")
    return env


def _files(root: Path) -> set[str]:
    return {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()}


@pytest.fixture(scope="module")
def packaged(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("package")
    weights = tmp / "weights.pt"
    _distinctive_weights(weights)
    out = tmp / "out"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "custom.deploy.package",
            "--out",
            str(out),
            "--name",
            NAME,
            "--weights",
            str(weights),
            "--zip",
            "true",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return {"bundle": out / NAME, "zip": out / f"{NAME}.zip", "weights": weights, "tmp": tmp}


def test_layout_weights_and_zip(packaged):
    bundle = packaged["bundle"]
    files = _files(bundle)
    for required in (
        "configs/common.yaml",
        "configs/metadata.json",
        "configs/meta_schema.json",
        "configs/logging.conf",
        "models/model.pt",
        "docs/README.md",
        "LICENSE",
        "custom/__init__.py",
        "custom/networks/unext.py",
        "custom/deploy/package.py",
    ):
        assert required in files, required
    assert not [f for f in files if "__pycache__" in f or f.endswith(".pyc")]
    # only the runtime code the configs import: no comparison, benchmark or GPU-check tool
    assert not {"custom/tools/compare.py", "custom/tools/bench.py", "custom/tools/gpu_check.py"} & set(files)
    # every config of the repository's bundle is shipped
    repo_configs = {f for f in _files(REPO / "bundle" / "configs") if "__pycache__" not in f and not f.endswith(".pyc")}
    assert repo_configs <= {f.removeprefix("configs/") for f in files if f.startswith("configs/")}
    assert (bundle / "models" / "model.pt").read_bytes() == packaged["weights"].read_bytes()
    with zipfile.ZipFile(packaged["zip"]) as zf:
        zipped = {n for n in zf.namelist() if not n.endswith("/")}
        assert zipped == {f"{NAME}/{f}" for f in files}
        assert zf.read(f"{NAME}/models/model.pt") == packaged["weights"].read_bytes()


def test_no_absolute_path_in_the_copied_configs(packaged):
    needles = {str(REPO), str(REPO.resolve()), str(REPO / "bundle")}
    for file in (packaged["bundle"] / "configs").rglob("*"):
        if file.is_file():
            text = file.read_text(encoding="utf-8", errors="replace")
            assert not [n for n in needles if n in text], file
    common = (packaged["bundle"] / "configs" / "common.yaml").read_text()
    assert 'bundle_root: "$custom.deploy.package.bundle_root()"' in common


def test_refuses_missing_weights_and_existing_output(tmp_path, packaged):
    def run(*args):
        return subprocess.run(
            [sys.executable, "-m", "custom.deploy.package", *args],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=120,
        )

    proc = run("--out", str(tmp_path), "--weights", str(tmp_path / "absent.pt"))
    assert proc.returncode == 2 and "weights not found" in proc.stderr
    assert not (tmp_path / NAME).exists()
    proc = run("--out", str(tmp_path), "--weights", str(tmp_path / "absent.pt"), "--allow-missing-weights", "true")
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / NAME / "configs" / "common.yaml").is_file() and not (
        tmp_path / NAME / "models" / "model.pt"
    ).exists()
    proc = run("--out", str(tmp_path), "--weights", str(packaged["weights"]))
    assert proc.returncode == 2 and "exists" in proc.stderr


def test_runs_from_the_copy_alone(packaged, tmp_path):
    """Only the bundle folder on PYTHONPATH, another working directory: `custom` resolves to
    the copy and inference runs from the copy's configs and weights."""
    bundle = packaged["bundle"]
    workdir = tmp_path / "elsewhere"
    workdir.mkdir()
    env = _bundle_env(bundle)
    probe = subprocess.run(
        [
            sys.executable,
            "-c",
            "import custom, custom.deploy.package as p; print(custom.__file__); print(p.bundle_root())",
        ],
        cwd=workdir,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert probe.returncode == 0, probe.stderr
    custom_file, root = probe.stdout.split()
    assert Path(custom_file).resolve().is_relative_to(bundle.resolve())
    assert Path(root).resolve() == bundle.resolve()

    configs = bundle / "configs"
    if (configs / "inference.yaml").is_file():
        image = workdir / "frame.png"
        Image.fromarray((np.random.default_rng(0).random((70, 90)) * 255).astype(np.uint8)).save(image)
        out = workdir / "masks"
        cmd = [
            sys.executable,
            "-m",
            "monai.bundle",
            "run",
            "--config_file",
            str([str(configs / "common.yaml"), str(configs / "inference.yaml")]),
            "--meta_file",
            str(configs / "metadata.json"),
            "--bundle_root",
            str(bundle),
            "--input_path",
            str(image),
            "--infer_output_dir",
            str(out),
            "--image_size",
            "[64, 64]",
            "--num_classes",
            "2",
        ]
        proc = subprocess.run(cmd, cwd=workdir, env=env, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        masks = sorted(out.rglob("*.png"))
        assert masks, f"no mask written under {out}: {proc.stdout[-2000:]}"
        mask = np.asarray(Image.open(masks[0]))
        assert mask.shape[:2] == (70, 90)
        assert mask.min() == mask.max() and mask.max() > 0, "the copy's weights (foreground everywhere) were used"
    else:
        script = (
            "import torch\n"
            "from monai.bundle import ConfigParser\n"
            "p = ConfigParser(); p.read_config(r'%s'); p['num_classes'] = 2\n"
            "net = p.get_parsed_content('network_def')\n"
            "net.load_state_dict(torch.load(p.get_parsed_content('ckpt_dir') + '/model.pt', weights_only=True))\n"
            "out = net.eval()(torch.rand(1, 1, 64, 64))\n"
            "assert out.shape == (1, 2, 64, 64) and bool((out.argmax(1) == 1).all()), out.shape\n"
            "print('ok')\n" % (configs / "common.yaml")
        )
        proc = subprocess.run(
            [sys.executable, "-c", script], cwd=workdir, env=env, capture_output=True, text=True, timeout=300
        )
        assert proc.returncode == 0 and "ok" in proc.stdout, proc.stderr[-3000:]
