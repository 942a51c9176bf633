"""Resume after a crash (SIGKILL included) and atomic checkpoint writes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from conftest import CONFIGS, REPO, tiny_overrides, train_config_files

from custom.training.checkpoint import atomic_torch_save


def _cmd(tmp_path, dataset, models, **extra):
    ov = tiny_overrides(
        tmp_path, dataset, max_iterations=24, ckpt_dir=str(models), output_dir=str(models / "eval"), **extra
    )
    ov["train#epoch_length"] = 2
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
        args += [
            f"--{k}",
            str(v) if not isinstance(v, (list, bool)) else repr(v).replace("True", "true").replace("False", "false"),
        ]
    return args


def _env():
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONHASHSEED": "0"}


def _final_state(models):
    return torch.load(models / "train_state" / "train_state.pt", map_location="cpu", weights_only=True)


def test_killed_run_resumes_to_the_same_weights(tmp_path, demo_dataset):
    full, killed = tmp_path / "full", tmp_path / "killed"
    subprocess.run(
        _cmd(tmp_path, demo_dataset, full), cwd=REPO, env=_env(), check=True, capture_output=True, timeout=900
    )

    proc = subprocess.Popen(
        _cmd(tmp_path, demo_dataset, killed), cwd=REPO, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    state_file = killed / "train_state" / "train_state.pt"
    deadline = time.time() + 600
    killed_at = None
    while time.time() < deadline and proc.poll() is None:
        if state_file.is_file():
            try:
                it = torch.load(state_file, map_location="cpu", weights_only=True)["trainer"]["iteration"]
            except Exception:  # being replaced right now: atomic rename means the next read succeeds
                it = 0
            if 4 <= it < 24:
                proc.send_signal(signal.SIGKILL)
                killed_at = it
                break
        time.sleep(0.05)
    proc.wait(timeout=60)
    if killed_at is None:
        pytest.skip("the run finished before it could be killed mid-way (machine too fast for this check)")
    assert _final_state(killed)["trainer"]["iteration"] < 24

    subprocess.run(
        _cmd(tmp_path, demo_dataset, killed, resume=True),
        cwd=REPO,
        env=_env(),
        check=True,
        capture_output=True,
        timeout=900,
    )
    a, b = _final_state(full), _final_state(killed)
    assert b["trainer"]["iteration"] == a["trainer"]["iteration"] == 24
    parts = ("cnn", "transformer", "teacher_cnn", "teacher_transformer")
    a, b = ({**s, **{f"teacher_{r}": t for r, t in s["trainer_extra"]["teachers"].items()}} for s in (a, b))
    for part in parts:
        for key, value in a[part].items():
            if value.is_floating_point():
                assert torch.allclose(value, b[part][key], atol=1e-6, rtol=1e-5), (part, key, killed_at)
    assert a["validator"] == b["validator"]


def test_resume_without_state_starts_from_scratch(tmp_path, demo_dataset):
    from monai.bundle import run

    run(run_id="training", config_file=train_config_files(), resume=True, **tiny_overrides(tmp_path, demo_dataset))
    assert _final_state(tmp_path / "models")["trainer"]["iteration"] == 2


def test_interrupted_save_leaves_the_old_file_whole(tmp_path, monkeypatch):
    target = tmp_path / "state.pt"
    atomic_torch_save({"w": torch.ones(3)}, str(target))
    before = target.read_bytes()

    def broken_save(obj, f, *a, **k):
        f.write(b"partial bytes of a checkpoint")
        raise KeyboardInterrupt("killed while saving")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(KeyboardInterrupt):
        atomic_torch_save({"w": torch.zeros(3)}, str(target))
    assert target.read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["state.pt"]  # no temporary file left behind


def test_a_state_of_the_earlier_teacher_layout_resumes_into_the_teachers_by_role(tmp_path):
    """Before every EMA teacher was kept by role, the method's one teacher was saved as ``teacher``
    (the others by role in the trainer's state): it goes to the one role the file lacks; a file
    that fits no role is refused in one line."""
    from types import SimpleNamespace

    from custom.training.checkpoint import TrainingStateSaver, resume_training
    from custom.training.ema import EMATeacher

    nets = {"cnn": torch.nn.Conv2d(1, 2, 1), "transformer": torch.nn.Conv2d(1, 2, 3)}
    old = {role: EMATeacher(net) for role, net in nets.items()}
    for t in old.values():
        torch.nn.init.constant_(t.module.weight, 0.5)
    engine = SimpleNamespace(
        teachers={role: EMATeacher(net) for role, net in nets.items()},
        load_state_dict=lambda state: None,
        state=SimpleNamespace(iteration=4, epoch=2),
    )
    loaded = {}
    engine.load_extra_state_dict = lambda extra: loaded.update(extra)
    state = {
        "trainer": {},
        "teacher": old["transformer"].state_dict(),
        "trainer_extra": {"teachers": {"cnn": old["cnn"].state_dict()}},
    }
    atomic_torch_save(state, str(tmp_path / "train_state.pt"))
    saver = TrainingStateSaver(str(tmp_path), save_dict={})
    assert resume_training(saver, engine)
    assert set(loaded["teachers"]) == {"cnn", "transformer"}
    assert torch.equal(loaded["teachers"]["transformer"]["module.weight"], old["transformer"].module.weight)
    engine.teachers = {"cnn": engine.teachers["cnn"]}  # a method without a role left for it
    with pytest.raises(ValueError, match="earlier layout") as e:
        resume_training(saver, engine)
    assert "\n" not in str(e.value)


# ---------------------------------------------------------------- resuming with other settings (issue 33)


def _train(tmp_path, dataset, method="bcp", **more):
    from monai.bundle import run

    ov = tiny_overrides(tmp_path, dataset, **{"max_iterations": 4, "validate_transformer": False, **more})
    ov["train#epoch_length"] = 2
    run(run_id="training", config_file=train_config_files(f"methods/{method}.yaml"), **ov)
    return _final_state(tmp_path / "models")


def _message(error: BaseException) -> str:
    """The project's own message at the bottom of MONAI's chain of config-evaluation errors."""
    while error.__cause__ is not None:
        error = error.__cause__
    return str(error)


def test_a_finished_run_resumed_with_more_iterations_trains_to_the_new_length(tmp_path, demo_dataset, capsys):
    first = _train(tmp_path, demo_dataset)
    assert first["trainer"]["iteration"] == 4
    longer = _train(tmp_path, demo_dataset, max_iterations=8, resume=True)
    assert longer["trainer"]["iteration"] == 8 and longer["trainer"]["max_epochs"] == 4
    # the poly schedule now spans the new length; its position continued from the state
    assert longer["lr_scheduler_cnn"]["lr_lambdas"][0]["total_iterations"] == 8
    assert longer["lr_scheduler_cnn"]["last_epoch"] == 8
    assert any(not torch.equal(v, longer["cnn"][k]) for k, v in first["cnn"].items())  # it trained
    assert "last:" in capsys.readouterr().out

    again = _train(tmp_path, demo_dataset, max_iterations=8, resume=True)  # already there: nothing to do
    assert again["trainer"]["iteration"] == 8
    assert "nothing was left to train" in capsys.readouterr().out
    with pytest.raises(Exception) as e:  # shorter than what was trained: refused
        _train(tmp_path, demo_dataset, max_iterations=6, resume=True)
    assert "is at iteration 8, beyond this run's 6 (max_iterations)" in _message(e.value)


@pytest.mark.parametrize("written_by, resumed_by", [("bcp", "labeled_only"), ("ours", "bcp"), ("labeled_only", "ours")])
def test_a_state_of_another_method_is_refused(tmp_path, demo_dataset, written_by, resumed_by):
    _train(tmp_path, demo_dataset, method=written_by)
    with pytest.raises(Exception) as e:
        _train(tmp_path, demo_dataset, method=resumed_by, max_iterations=6, resume=True)
    message = _message(e.value)
    assert f"written by method '{written_by}', this run is '{resumed_by}'" in message and "\n" not in message
    # a state written before the method was recorded is refused by what it holds
    path = tmp_path / "models" / "train_state" / "train_state.pt"
    state = torch.load(path, map_location="cpu", weights_only=True)
    del state["method"]
    atomic_torch_save(state, str(path))
    with pytest.raises(Exception) as e:
        _train(tmp_path, demo_dataset, method=resumed_by, max_iterations=6, resume=True)
    assert "written by another method" in _message(e.value) or "another method or layout" in _message(e.value)
