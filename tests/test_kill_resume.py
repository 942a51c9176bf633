"""Issue 15 items 9-11: SIGKILL mid-epoch, during the model.pt write and during the
training-state write, then `--resume true`: model.pt is the uninterrupted run's best model
and the final training state is the uninterrupted run's.

The validation Dice is scripted (tests/kill_hooks/sitecustomize.py) so that the best epoch
is known and the epochs after it are worse: the case where the first validation after a
resume used to replace model.pt with a worse model."""

from __future__ import annotations

import os
import subprocess
import sys

import torch
from conftest import CONFIGS, REPO, tiny_overrides, train_config_files

HOOKS = REPO / "tests" / "kill_hooks"
# epochs 1..6 (12 iterations of 2 per epoch): model.pt written at epochs 1, 2 and 4; 4 is the best
SCORES = "0.3,0.5,0.4,0.6,0.2,0.1"


def _cmd(tmp_path, dataset, models, **extra):
    ov = tiny_overrides(
        tmp_path,
        dataset,
        max_iterations=12,
        ckpt_dir=str(models),
        output_dir=str(models / "eval"),
        validate_transformer=False,
        **extra,
    )
    args = [
        sys.executable,
        "-m",
        "monai.bundle",
        "run",
        "training",
        "--config_file",
        str(train_config_files()),
        "--meta_file",
        str(CONFIGS / "metadata.json"),
    ]
    for k, v in ov.items():
        args += [f"--{k}", repr(v) if isinstance(v, list) else str(v).lower() if isinstance(v, bool) else str(v)]
    return args


def _run(args, kill_at=None):
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "PYTHONHASHSEED": "0",
        "PYTHONPATH": f"{HOOKS}{os.pathsep}{REPO}",
        "KILL_REPO": str(REPO),
        "KILL_SCORES": SCORES,
    }
    env.pop("KILL_AT", None)
    if kill_at:
        env["KILL_AT"] = kill_at
    p = subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    if kill_at:
        assert p.returncode == -9, f"{kill_at}: expected a SIGKILL, got {p.returncode}: {p.stderr[-2000:]}"
    else:
        assert p.returncode == 0, p.stderr[-3000:]
    return p


def _load(path):
    return torch.load(path, map_location="cpu", weights_only=True)


def _model_pt_whole(models):
    """After any kill, model.pt is absent or a complete state dict (never truncated)."""
    path = models / "model.pt"
    if path.exists():
        assert isinstance(_load(path), dict)


def _same(a, b):
    assert a.keys() == b.keys()
    for k in a:
        if isinstance(a[k], dict):
            _same(a[k], b[k])
        elif torch.is_tensor(a[k]):
            assert torch.allclose(a[k].float(), b[k].float(), atol=1e-6, rtol=1e-5), k


def test_kills_at_three_moments_resume_to_the_uninterrupted_best(tmp_path, demo_dataset):
    full, killed = tmp_path / "full", tmp_path / "killed"
    out = _run(_cmd(tmp_path, demo_dataset, full))
    assert "at epoch 4" in out.stdout, out.stdout[-500:]  # the scripted best

    # killed in the middle of the second model.pt write (epoch 2): the model.pt of epoch 1 stays whole
    _run(_cmd(tmp_path, demo_dataset, killed), kill_at="model:2")
    _model_pt_whole(killed)
    assert _load(killed / "train_state" / "train_state.pt")["trainer"]["iteration"] == 2
    # resumed from epoch 1, killed mid-epoch 5 (after the best epoch 4)
    _run(_cmd(tmp_path, demo_dataset, killed, resume=True), kill_at="iteration:9")
    _model_pt_whole(killed)
    assert _load(killed / "train_state" / "train_state.pt")["trainer"]["iteration"] == 8
    # resumed from epoch 4, killed while writing the training state of epoch 5
    _run(_cmd(tmp_path, demo_dataset, killed, resume=True), kill_at="state:1")
    _model_pt_whole(killed)
    assert _load(killed / "train_state" / "train_state.pt")["trainer"]["iteration"] == 8
    out = _run(_cmd(tmp_path, demo_dataset, killed, resume=True))
    assert "at epoch 4" in out.stdout, out.stdout[-500:]

    _same(_load(full / "model.pt"), _load(killed / "model.pt"))
    a, b = _load(full / "train_state" / "train_state.pt"), _load(killed / "train_state" / "train_state.pt")
    assert a["trainer"]["iteration"] == b["trainer"]["iteration"] == 12
    for part in ("cnn", "transformer"):
        _same(a[part], b[part])
    for role in ("cnn", "transformer"):  # the EMA teachers, by role in the trainer's state
        _same(a["trainer_extra"]["teachers"][role], b["trainer_extra"]["teachers"][role])
    assert a["validator"] == b["validator"] == {"best_metric": 0.6, "best_metric_epoch": 4}
