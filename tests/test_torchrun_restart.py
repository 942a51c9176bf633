"""A fault under the distributed engine: ``torchrun`` (2 processes, gloo) with ``--max-restarts 1``
and ``--resume true``; one worker is killed (SIGKILL) mid-epoch, torchrun restarts the group, it
resumes from the training state (every rank its own random generators) and ends with the same
weights as an uninterrupted run. The uninterrupted run is the two-node form (two ``torchrun``
launches, one process each, rendezvous on loopback), as several machines run it."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import torch
import yaml
from conftest import CONFIGS, REPO, tiny_overrides, train_config_files

HOOKS = REPO / "tests" / "kill_hooks"
ITERATIONS = 6  # 3 epochs of 2 iterations; the kill comes mid-epoch 2


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(**more) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("KILL_")}
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONHASHSEED="0", KILL_REPO=str(REPO))
    env["PYTHONPATH"] = os.pathsep.join([str(HOOKS), str(REPO)])
    env.update(more)
    return env


def _config(tmp_path: Path, demo_dataset: str, name: str) -> list[str]:
    over = tiny_overrides(
        tmp_path / name, demo_dataset, max_iterations=ITERATIONS, dist_timeout_minutes=2, resume=True,
        validate_transformer=False,
    )
    (tmp_path / f"{name}.yaml").write_text(yaml.safe_dump(over))
    return train_config_files("multi_gpu_train.yaml") + [str(tmp_path / f"{name}.yaml")]


def _bundle_args(configs: list[str]) -> list[str]:
    return ["-m", "monai.bundle", "run", "training", "--config_file", str(configs),
            "--meta_file", str(CONFIGS / "metadata.json")]


def _final(tmp_path: Path, name: str) -> dict:
    models = tmp_path / name / "models"
    state = torch.load(models / "train_state" / "train_state.pt", map_location="cpu", weights_only=True)
    assert state["trainer"]["iteration"] == ITERATIONS
    return {
        "model": torch.load(models / "model.pt", map_location="cpu", weights_only=True),
        **{k: state[k] for k in ("cnn", "transformer")},
        "teacher": state["trainer_extra"]["teachers"]["transformer"],
    }


def test_a_killed_worker_restarts_the_group_which_resumes_to_the_uninterrupted_weights(tmp_path, demo_dataset):
    # the uninterrupted run, in the several-machines form: node 0 and node 1, one process each
    configs = _config(tmp_path, demo_dataset, "two_nodes")
    port = _free_port()
    nodes = [
        subprocess.Popen(
            [sys.executable, "-m", "torch.distributed.run", "--nnodes=2", "--nproc_per_node=1",
             f"--node_rank={rank}", "--master_addr=127.0.0.1", f"--master_port={port}", *_bundle_args(configs)],
            cwd=REPO, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )
        for rank in (0, 1)
    ]
    logs = [n.communicate(timeout=480)[0] for n in nodes]
    assert [n.returncode for n in nodes] == [0, 0], logs[0][-4000:] + logs[1][-4000:]
    reference = _final(tmp_path, "two_nodes")

    # one machine, two workers, rank 1 killed at iteration 3 (mid-epoch 2); one restart allowed
    configs = _config(tmp_path, demo_dataset, "killed")
    marker = tmp_path / "killed_once"
    started = time.time()
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "--max-restarts=1",
         *_bundle_args(configs)],
        cwd=REPO, env=_env(KILL_AT="iteration:3", KILL_RANK="1", KILL_ONCE=str(marker)),
        capture_output=True, text=True, timeout=480,
    )
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-6000:]
    assert marker.exists(), "rank 1 was killed once"
    assert "resumed from" in log and "at iteration 2" in log, log[-4000:]
    print(f"killed and restarted group: {time.time() - started:.1f} s")
    restarted = _final(tmp_path, "killed")
    # bit-identical: every rank resumed its own batches, augmentations, generators and EMA teachers
    # (with rank 0's for all, the copy-paste term's pseudo-labels on rank 1 came from rank 0's
    # teacher and the UNeXt ended apart)
    for key, tensors in reference.items():
        differ = [k for k in tensors if not torch.equal(tensors[k], restarted[key][k])]
        assert not differ, f"{key}: the restarted run differs from the uninterrupted one in {differ[:5]}"
    assert sorted(p.name for p in (tmp_path / "killed" / "models").iterdir()) == [
        "model.pt", "model_config.json", "review.json", "train_state",
    ]

