"""A newcomer's run: the README's Quick start lines as written, the test command
that keeps the environment, OMP_WAIT_POLICY by default, the iteration-log interval and
library warnings shown once."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest
from conftest import CONFIGS, REPO, train_config_files

from custom.utils.paths import DEFAULT_METHOD

README = REPO / "README.md"


def _quick_start_lines() -> list[str]:
    text = README.read_text(encoding="utf-8")
    section = text.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    block = section.split("```bash", 1)[1].split("```", 1)[0]
    return [line for line in block.splitlines() if line.strip() and not line.startswith("#")]


def _env_without_omp() -> dict:
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    env["OMP_NUM_THREADS"] = "1"
    return env


def test_quick_start_test_line_is_ci_test_and_ci_run_calls_it():
    lines = _quick_start_lines()
    assert lines[-1] == "bash .ci/test"
    test_script = (REPO / ".ci" / "test").read_text()
    assert "rm -rf" not in test_script and "bash .ci/setup requirements-dev.txt" in test_script
    assert ".venv/bin/python -m pytest -q" in test_script
    run_script = (REPO / ".ci" / "run").read_text()
    assert re.search(r"^bash \.ci/test .*\|\| main_rc=\$\?$", run_script, re.M), "CI must run the README's test command"
    assert "pytest" not in run_script.split("bash .ci/test", 1)[0], "the main suite runs through .ci/test only"
    assert run_script.rstrip().endswith('[ "$main_rc" -eq 0 ] && [ "$extra_rc" -eq 0 ]')


def test_ci_test_keeps_the_existing_environment(tmp_path):
    """The README's test line, run on this machine's .venv: setup only completes it, pytest runs."""
    python = REPO / ".venv" / "bin" / "python"
    if not python.is_file():
        pytest.skip("no .venv in the repository (CI builds it)")
    before = python.resolve()
    res = subprocess.run(
        ["bash", ".ci/test", "--collect-only", "-q", "-p", "no:cacheprovider", "tests/test_losses.py"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
        env=_env_without_omp(),
    )
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    assert re.search(r"tests/test_losses\.py: \d+", res.stdout), res.stdout
    assert python.is_file() and python.resolve() == before


def test_importing_custom_changes_nothing_in_the_process():
    code = (
        "import os, sys, warnings; hook, filters = sys.excepthook, list(warnings.filters); import custom;"
        "assert 'torch' not in sys.modules, 'custom imported torch';"
        "assert 'OMP_WAIT_POLICY' not in os.environ, 'custom set OMP_WAIT_POLICY';"
        "assert sys.excepthook is hook and warnings.filters == filters; print('untouched')"
    )
    res = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120, env=_env_without_omp()
    )
    assert res.returncode == 0 and res.stdout.strip() == "untouched", res.stderr


def test_every_entry_point_and_bundle_config_calls_the_runtime_setup():
    """The setup is called explicitly: first in the configs' initialize lists (as MONAI bundles
    set up a run there) and in every command-line entry point's main."""
    from monai.bundle import ConfigParser

    for files in (
        train_config_files(),
        train_config_files("demo.yaml"),
        [str(CONFIGS / "common.yaml"), str(CONFIGS / "inference.yaml")],
    ):
        assert ConfigParser.load_config_files(files)["initialize"][0].startswith("$custom.utils.runtime.setup()"), files
    # every fire entry point, found rather than listed (a new tool cannot be forgotten)
    modules = sorted(
        p.relative_to(REPO / "custom").as_posix()
        for p in (REPO / "custom").rglob("*.py")
        if "monailabel_app" not in p.parts and "def main(" in (text := p.read_text(encoding="utf-8")) and "fire" in text
    )
    assert {"tools/compare.py", "tools/active_learning.py", "data/__main__.py"} <= set(modules), modules
    for module in modules:
        text = (REPO / "custom" / module).read_text(encoding="utf-8")
        main = text[text.index("def main(") :]
        assert "setup()" in main.split("\ndef ", 1)[0], module


@pytest.mark.parametrize("given, expected", [(None, "PASSIVE"), ("ACTIVE", "ACTIVE")])
def test_the_runtime_setup_sets_omp_wait_policy_unless_set(given, expected):
    env = _env_without_omp()
    if given:
        env["OMP_WAIT_POLICY"] = given
    code = (
        "import sys, os; from custom.utils.runtime import setup; setup();"
        "assert 'torch' not in sys.modules, 'the setup imported torch';"
        "import subprocess; print(os.environ['OMP_WAIT_POLICY']);"
        "print(subprocess.run([sys.executable, '-c', 'import os; print(os.environ[\"OMP_WAIT_POLICY\"])'],"
        " capture_output=True, text=True).stdout.strip())"
    )
    res = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120, env=env)
    assert res.returncode == 0, res.stderr
    assert res.stdout.split() == [expected, expected]  # set in the process and inherited by its children


def test_every_n_filters_iterations():
    from custom.training.logs import every_n

    f = every_n(3)
    assert [i for i in range(1, 11) if f(None, i)] == [3, 6, 9]
    assert every_n(0) is False


def _tensorboard_scalars(folder) -> set[str]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tags = set()
    for events in folder.glob("events.out.tfevents.*"):
        acc = EventAccumulator(str(events))
        acc.Reload()
        tags |= set(acc.Tags()["scalars"])
    return tags


@pytest.mark.parametrize("method", ["as written", "bcp"])
def test_quick_start_demo_line_logs_every_log_every_iterations_and_warns_once(tmp_path, method):
    """The Quick start's demo line as written (the default method: both networks), and with the
    single-network BCP in its place, at a tiny size: 6 iterations, a line every 2."""
    demo = [line for line in _quick_start_lines() if "demo.yaml" in line]
    assert len(demo) == 1 and "OMP_WAIT_POLICY=PASSIVE .venv/bin/python -m monai.bundle run training" in demo[0]
    assert f"'bundle/configs/methods/{DEFAULT_METHOD}.yaml'" in demo[0], "the Quick start trains the default method"
    if not (REPO / ".venv" / "bin" / "python").is_file():
        pytest.skip("no .venv in the repository (CI builds it)")
    line = demo[0]
    if method != "as written":
        line = line.replace(f"methods/{DEFAULT_METHOD}.yaml", f"methods/{method}.yaml")
    tiny = (
        f" --dataset_dir {tmp_path / 'demo'} --ckpt_dir {tmp_path / 'models'} --output_dir {tmp_path / 'eval'}"
        " --max_iterations 6 --train#epoch_length 3 --log_every 2"
    )
    if method == "as written":
        tiny += " --ict_start 0 --transformer_def#embed_dim 12 --transformer_def#num_heads '[1,1,2,2]'"
    res = subprocess.run(
        ["bash", "-c", line + tiny], cwd=REPO, capture_output=True, text=True, timeout=600, env=_env_without_omp()
    )
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    iteration_lines = [line for line in res.stdout.splitlines() if re.search(r"Epoch: \d+/\d+, Iter: \d+/\d+ --", line)]
    assert len(iteration_lines) == 3, iteration_lines
    both = res.stdout + res.stderr
    assert both.count("nvImageCodec is not available") <= 1
    assert both.count("nvImageCodec decoder plugin did not register") <= 1
    assert "best validation mean Dice (UNeXt)" in res.stdout
    # captured output is not a terminal: progress as log lines (each epoch's), no bar redraws in them
    assert "Epoch[2] Complete" in both and "progress as log lines" in both
    assert "it/s]" not in both and "\u2588" not in both and "\r" not in both
    assert (tmp_path / "models" / "model.pt").is_file()
    # every trained network's validation metrics and every term's loss reach TensorBoard
    tags = _tensorboard_scalars(tmp_path / "eval")
    if method == "as written":
        assert {"val_mean_dice", "val_transformer_mean_dice", "val_transformer_hd95"} <= tags, tags
        assert {"loss_cps", "loss_id", "loss_ict", "loss_bcp"} <= tags, tags
    else:
        assert {"val_mean_dice", "loss_bcp", "loss_sup_cnn"} <= tags, tags
        assert not [t for t in tags if "transformer" in t], tags


# ----------------------------------------------------------------- labelled frames across video blocks


def _synthetic_psfhs(root, n=200):
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for folder in ("images", "labels"):
        (root / folder).mkdir(parents=True, exist_ok=True)
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (16, 16), dtype=np.uint8)).save(root / "images" / f"{i:05d}.png")
        label = np.zeros((16, 16), np.uint8)
        label[2:6, 2:6], label[8:14, 8:14] = 1, 2
        Image.fromarray(label).save(root / "labels" / f"{i:05d}.png")
    return root


def test_spread_positions_are_even_and_deterministic():
    from custom.data.splits import spread_positions

    picks = spread_positions(700, 35, 0)
    assert len(set(picks)) == 35 and picks == spread_positions(700, 35, 0) != spread_positions(700, 35, 1)
    assert {b - a for a, b in zip(picks, picks[1:])} <= {19, 20, 21}
    assert spread_positions(5, 5, 3) == [0, 1, 2, 3, 4]


@pytest.mark.parametrize("draw, images, spans", [(None, 15, 3), ("groups", 50, 1)])
def test_psfhs_labelled_fraction_spans_the_video_blocks_by_default(tmp_path, capsys, draw, images, spans):
    """10 % of a 150-frame pool (3 video blocks of 50): 15 frames from every block by default;
    --labeled-draw groups rounds up to one whole block (the old behaviour)."""
    import json

    from custom.data.prepare import prepare

    src = _synthetic_psfhs(tmp_path / "src")
    options = {} if draw is None else {"labeled_draw": draw}
    summary = prepare(
        "psfhs",
        src,
        tmp_path / "out",
        labeled_fraction=0.1,
        test_ids="150-199",
        val_fraction=0,
        seed=0,
        progress=False,
        **options,
    )
    assert summary["splits"]["training"]["images"] == images
    assert summary["labeled_groups"] == {"groups": spans, "pool_groups": 3}
    datalist = json.loads((tmp_path / "out" / "datalist.json").read_text())
    assert len({e["group"] for e in datalist["training"]}) == spans
    assert {e["group"] for e in datalist["training"] + datalist["unlabeled"]}.isdisjoint(
        e["group"] for e in datalist["test"]
    )
    assert f"labelled images span {spans} of the training pool's 3 groups" in capsys.readouterr().out


def test_labeled_draw_bad_value_is_one_clear_line(tmp_path):
    src = _synthetic_psfhs(tmp_path / "src", n=4)
    res = subprocess.run(
        [
            sys.executable,
            "-m",
            "custom.data",
            "prepare",
            "psfhs",
            "--source",
            str(src),
            "--out",
            str(tmp_path / "out"),
            "--labeled-fraction",
            "0.5",
            "--labeled-draw",
            "videos",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert res.returncode == 2 and res.stderr.strip().splitlines() == [
        "error: --labeled-draw videos: must be one of groups, frames"
    ]


# ----------------------------------------------------------------- outputs: class names, overlays, maps at frame size


def _bundle_run(*args, timeout=600):
    res = subprocess.run(
        [sys.executable, "-m", "monai.bundle", "run", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=_env_without_omp(),
    )
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    return res


def _frames(folder, sizes):
    import numpy as np
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    paths = []
    for i, (h, w) in enumerate(sizes):
        image = rng.integers(0, 256, (h, w), dtype=np.uint8)
        label = np.zeros((h, w), np.uint8)
        label[h // 4 : h // 2, w // 4 : w // 2], label[h // 2 + 2 :, w // 2 + 2 :] = 1, 2
        Image.fromarray(image).save(folder / f"f{i}.png")
        Image.fromarray(label).save(folder / f"f{i}_label.png")
        paths.append((folder / f"f{i}.png", folder / f"f{i}_label.png"))
    return paths


def test_overlay_has_one_colour_per_class_and_a_legend():
    import numpy as np

    from custom.evaluation.overlays import class_colour, overlay_image

    gt = np.zeros((160, 256), np.int64)
    gt[80:100, 50:80], gt[110:150, 150:220] = 1, 2
    rgb = overlay_image(np.full(gt.shape, 100.0), gt, gt, {1: "pubic_symphysis", 2: "fetal_head"})
    assert rgb.shape == (160, 256, 3) and rgb.dtype == np.uint8
    grey = tuple(rgb[-1, 0])
    assert tuple(rgb[80, 65]) == class_colour(1) and tuple(rgb[110, 180]) == class_colour(2)  # reference outlines
    assert class_colour(1) != class_colour(2)
    fill_1, fill_2 = tuple(rgb[90, 65]), tuple(rgb[130, 180])  # prediction fills, one colour per class
    assert len({grey, fill_1, fill_2}) == 3
    assert len({tuple(v) for v in rgb[:30, :120].reshape(-1, 3)}) > 3, "no legend in the corner"
    only_pred = overlay_image(np.full(gt.shape, 100.0), None, gt)
    assert tuple(only_pred[80, 65]) != class_colour(1)  # inference: no reference outline


def test_disagreement_map_is_at_the_frame_size_and_evaluation_names_the_classes(tmp_path):
    import json

    import numpy as np
    import torch

    from custom.networks import SwinUnet, UNeXt

    torch.manual_seed(0)
    torch.save(UNeXt(1, 3).state_dict(), tmp_path / "model.pt")
    swin = SwinUnet(img_size=64, in_channels=1, out_channels=3, embed_dim=12, num_heads=(1, 1, 2, 2), window_size=4)
    (tmp_path / "train_state").mkdir()
    torch.save({"transformer": swin.state_dict()}, tmp_path / "train_state" / "train_state.pt")
    pairs = _frames(tmp_path / "in", [(80, 112), (64, 64)])
    scale = [
        "--image_size",
        "[64,64]",
        "--num_classes",
        "3",
        "--transformer_def#embed_dim",
        "12",
        "--transformer_def#num_heads",
        "[1,1,2,2]",
        "--transformer_def#window_size",
        "4",
    ]
    inputs = [str(p[0]) for p in pairs]
    _bundle_run(
        "--config_file",
        str([str(REPO / "bundle/configs" / c) for c in ("common.yaml", "inference.yaml")]),
        "--meta_file",
        str(REPO / "bundle/configs/metadata.json"),
        "--input_path",
        str(inputs),
        "--ckpt_dir",
        str(tmp_path),
        "--output_dir",
        str(tmp_path / "out"),
        "--with_disagreement",
        "true",
        "--save_overlays",
        "true",
        *scale,
    )
    out = tmp_path / "out" / "inference"
    for i, (h, w) in enumerate([(80, 112), (64, 64)]):
        assert np.load(out / f"f{i}_disagreement.npy").shape == (h, w)
        from PIL import Image

        assert np.array(Image.open(out / f"f{i}_disagreement.png")).shape == (h, w)
        assert np.array(Image.open(out / f"f{i}_mask.png")).shape == (h, w)
    # evaluation names the classes as the datalist does
    entries = [{"image": str(img), "label": str(lab), "name": img.stem} for img, lab in pairs]
    datalist = {
        "num_classes": 3,
        "labels": {"background": 0, "pubic_symphysis": 1, "fetal_head": 2},
        "test": entries,
        "allow_paths_outside": True,
    }  # the frames lie beside the list's folder
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "datalist.json").write_text(json.dumps(datalist))
    _bundle_run(
        "evaluating",
        "--config_file",
        str([str(REPO / "bundle/configs" / c) for c in ("common.yaml", "train.yaml", "evaluate.yaml")]),
        "--meta_file",
        str(REPO / "bundle/configs/metadata.json"),
        "--dataset_dir",
        str(tmp_path / "data"),
        "--ckpt_path",
        str(tmp_path / "model.pt"),
        "--output_dir",
        str(tmp_path / "eval"),
        "--n_overlays",
        "1",
        *scale,
    )
    summary = (tmp_path / "eval" / "evaluation" / "summary.md").read_text()
    assert "pubic_symphysis" in summary and "fetal_head" in summary and "class_1" not in summary


# ----------------------------------------------------------------- one self-contained config per workflow


def test_packaged_bundle_runs_inference_from_one_merged_config(tmp_path):
    """Like a model-zoo bundle: `configs/inference.json` alone, run from the bundle folder."""
    import json

    import numpy as np
    import torch

    from custom.deploy.package import package, workflow_configs
    from custom.networks import UNeXt

    torch.manual_seed(0)
    torch.save(UNeXt(1, 2).state_dict(), tmp_path / "model.pt")
    bundle = package(str(tmp_path / "dist"), weights=str(tmp_path / "model.pt"))
    for workflow in workflow_configs():
        merged = json.loads((bundle / "configs" / f"{workflow}.json").read_text())
        assert "$import custom" in merged["imports"] and "_meta_" not in merged
    evaluate = json.loads((bundle / "configs" / "evaluate.json").read_text())
    assert evaluate["eval_preprocessing"]["_target_"] == "Compose" and "evaluating" in evaluate
    assert "evaluate_network(" in " ".join(evaluate["evaluating"])  # the one evaluation path
    assert "training" in json.loads((bundle / "configs" / "train.json").read_text())
    (frame,) = [p for p, _ in _frames(tmp_path / "in", [(70, 90)])]
    env = {k: v for k, v in _env_without_omp().items() if k not in {"PYTHONPATH", "PYTHONHOME"}}
    env["CUDA_VISIBLE_DEVICES"] = ""
    res = subprocess.run(
        [
            sys.executable,
            "-m",
            "monai.bundle",
            "run",
            "--config_file",
            "configs/inference.json",
            "--meta_file",
            "configs/metadata.json",
            "--input_path",
            str(frame),
            "--infer_output_dir",
            str(tmp_path / "out"),
            "--image_size",
            "[64,64]",
        ],
        cwd=bundle,
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
    )
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    from PIL import Image

    assert np.array(Image.open(tmp_path / "out" / "f0_mask.png")).shape == (70, 90)


def test_rerun_into_an_existing_inference_folder_is_one_line(tmp_path):
    """The refusal's message (raised in custom.deploy.inference) without MONAI's chained traceback."""
    import torch

    from custom.networks import UNeXt

    torch.save(UNeXt(1, 2).state_dict(), tmp_path / "model.pt")
    (frame,) = [p for p, _ in _frames(tmp_path / "in", [(64, 64)])]
    cmd = [
        sys.executable,
        "-m",
        "monai.bundle",
        "run",
        "--config_file",
        str([str(REPO / "bundle/configs" / c) for c in ("common.yaml", "inference.yaml")]),
        "--meta_file",
        str(REPO / "bundle/configs/metadata.json"),
        "--input_path",
        str(frame),
        "--ckpt_path",
        str(tmp_path / "model.pt"),
        "--infer_output_dir",
        str(tmp_path / "out"),
        "--image_size",
        "[64,64]",
    ]
    first = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600, env=_env_without_omp())
    assert first.returncode == 0, first.stderr[-3000:]
    again = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600, env=_env_without_omp())
    assert again.returncode != 0
    assert "Traceback" not in again.stderr
    errors = [line for line in again.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "refusing to overwrite" in errors[0], again.stderr[-2000:]
    verbose = subprocess.run(
        cmd, cwd=REPO, capture_output=True, text=True, timeout=600, env={**_env_without_omp(), "CUSTOM_TRACEBACK": "1"}
    )
    assert verbose.returncode != 0 and "Traceback" in verbose.stderr and "FileExistsError" in verbose.stderr


def test_on_a_terminal_the_progress_bar_prints_log_lines_above_it(monkeypatch):
    """On a terminal each epoch leaves one bar, closed before the epoch's other log lines; off a
    terminal there is none (test above)."""
    import io
    import logging

    from ignite.engine import Engine, Events

    from custom.training.logs import ProgressBar, on_terminal

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    tty = Terminal()
    assert on_terminal(tty) and not on_terminal(io.StringIO())
    monkeypatch.setattr("sys.stderr", tty)
    handler = logging.StreamHandler(tty)
    logging.getLogger().addHandler(handler)
    try:
        engine = Engine(lambda e, b: None)
        ProgressBar(persist=True).attach(engine)
        engine.add_event_handler(Events.EPOCH_COMPLETED, lambda e: logging.getLogger("x").warning("epoch line"))
        engine.run(range(3), max_epochs=2)
    finally:
        root = logging.getLogger()
        root.handlers = [h for h in root.handlers if getattr(h, "stream", None) is not tty]
    text = tty.getvalue()
    assert "Epoch [2/2]: [3/3] 100%" in text and text.count("epoch line") == 2
    assert not re.search(r"\d+%\|[^\n\r]*epoch line", text)  # no log line inside a bar
