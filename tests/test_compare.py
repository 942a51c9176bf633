"""``custom.tools.compare``: outputs of a tiny comparison, resuming without retraining, evaluation
at the original image size."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from conftest import CONFIGS, tiny_overrides
from PIL import Image

import custom.tools.compare as compare
from custom.networks import UNeXt


@pytest.fixture()
def tiny_set(tmp_path, demo_dataset) -> str:
    """The demo set with a ``test`` list (two of its validation images) and a 2-iteration scale file."""
    data = tmp_path / "data"
    shutil.copytree(demo_dataset, data)
    doc = json.loads((data / "datalist.json").read_text())
    # two validation images become the test list (lists may not overlap: refused by name)
    doc["test"], doc["validation"] = doc["validation"][:2], doc["validation"][2:]
    (data / "datalist.json").write_text(json.dumps(doc))
    return str(data)


def scale_file(tmp_path: Path) -> str:
    values = {
        k: v
        for k, v in tiny_overrides(tmp_path, "unused").items()
        if k not in ("bundle_root", "dataset_dir", "ckpt_dir", "output_dir", "max_iterations")
    }
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(values))
    return str(path)


def test_list_arguments_accept_what_fire_hands_over():
    assert compare._as_list("ours,cps") == ["ours", "cps"]
    assert compare._as_list(("ours", "cps")) == ["ours", "cps"]
    assert compare._as_list(0) == ["0"] and compare._as_list((0, 1)) == ["0", "1"]
    assert compare._as_list(None) == []


def test_short_runs_cap_the_epoch_length_and_validation_interval():
    assert compare._capped(200, "2") == "$min(200, 2)"
    assert compare._capped("$len(@train#dataloader)", "2") == "$min(len(@train#dataloader), 2)"
    assert compare._capped(None, "2") is None


def test_two_methods_one_seed_write_every_output_and_a_rerun_trains_nothing(tmp_path, tiny_set, monkeypatch):
    out = tmp_path / "cmp"
    result = compare.run_comparison(
        tiny_set,
        methods="ours,labeled_only",
        seeds="0",
        override=scale_file(tmp_path),
        out=str(out),
        max_iterations=2,
        launcher="inprocess",
        progress=False,
    )
    assert result["trained"] == ["ours/seed0", "labeled_only/seed0"] and not result["failed"]
    for name in ("runs.csv", "per_image.csv", "comparison.md", "comparison.png", "scale.json"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    rows = list(csv.DictReader(open(out / "runs.csv")))
    assert [(r["method"], r["seed"]) for r in rows] == [("ours", "0"), ("labeled_only", "0")]
    assert all(r["unit"] == "px" and 0.0 <= float(r["dice"]) <= 1.0 and float(r["hd95"]) >= 0 for r in rows)
    per_image = list(csv.DictReader(open(out / "per_image.csv")))
    assert len(per_image) == 2 * 2  # 2 runs x 2 test images
    md = (out / "comparison.md").read_text()
    assert "| ours |" in md and "| labeled_only |" in md and "64x64 px input, 2 iterations" in md
    assert "8 labelled / 8 unlabelled / 2 validation / 2 test images" in md
    assert "python -m custom.tools.compare" in md
    scale = json.loads((out / "scale.json").read_text())["scale"]
    assert scale["image_size"] == [64, 64] and scale["swin_embed_dim"] == 12
    done = {m: out / "runs" / m / "seed0" / "done.json" for m in ("ours", "labeled_only")}
    mtimes = {m: p.stat().st_mtime_ns for m, p in done.items()}

    calls = []
    monkeypatch.setattr(compare, "train_run", lambda *a, **k: calls.append(a))
    again = compare.run_comparison(
        tiny_set,
        methods="ours,labeled_only",
        seeds="0",
        override=scale_file(tmp_path),
        out=str(out),
        max_iterations=2,
        launcher="inprocess",
        progress=False,
    )
    assert calls == [] and again["trained"] == []
    assert {m: p.stat().st_mtime_ns for m, p in done.items()} == mtimes
    assert again["table"]["ours"]["dice"] == pytest.approx(result["table"]["ours"]["dice"])

    # an evaluation lost after training: evaluated again, not retrained
    done["labeled_only"].unlink()
    third = compare.run_comparison(
        tiny_set,
        methods="ours,labeled_only",
        seeds="0",
        override=scale_file(tmp_path),
        out=str(out),
        max_iterations=2,
        launcher="inprocess",
        progress=False,
    )
    assert calls == [] and third["trained"] == ["labeled_only/seed0"] and done["labeled_only"].is_file()


def test_a_changed_config_retrains_and_a_failed_run_does_not_stop_the_others(tmp_path, tiny_set, monkeypatch):
    calls = []

    def fake_train(spec, launcher="subprocess", threads=None):
        calls.append(spec.name)
        if spec.method == "cps":
            raise RuntimeError("boom")
        spec.model_path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(UNeXt(1, 2).state_dict(), spec.model_path)

    monkeypatch.setattr(compare, "train_run", fake_train)
    kwargs = dict(
        methods="labeled_only,cps",
        seeds="0,1",
        override=scale_file(tmp_path),
        out=str(tmp_path / "cmp"),
        launcher="inprocess",
        progress=False,
    )
    with pytest.raises(RuntimeError, match="2 run"):
        compare.run_comparison(tiny_set, max_iterations=2, **kwargs)
    assert calls == ["labeled_only/seed0", "labeled_only/seed1", "cps/seed0", "cps/seed1"]
    md = (tmp_path / "cmp" / "comparison.md").read_text()
    assert "| labeled_only |" in md and "Failed runs" in md and "std over seeds" in md
    calls.clear()
    with pytest.raises(RuntimeError):
        compare.run_comparison(tiny_set, max_iterations=2, **kwargs)
    assert calls == ["cps/seed0", "cps/seed1"]  # finished runs are skipped, failed ones retried
    calls.clear()
    with pytest.raises(RuntimeError):
        compare.run_comparison(tiny_set, max_iterations=3, **kwargs)  # another config: another hash
    assert calls == ["labeled_only/seed0", "labeled_only/seed1", "cps/seed0", "cps/seed1"]


class _Threshold(torch.nn.Module):
    """A 'network' whose argmax is the input thresholded at 0.5."""

    def forward(self, x):
        return torch.cat([0.5 - x, x - 0.5], dim=1)


def test_evaluation_is_at_the_original_size_in_mm_when_the_spacing_is_known(tmp_path):
    from monai.bundle import ConfigParser
    from monai.transforms import Compose

    mask = np.zeros((32, 48), np.uint8)
    mask[8:24, 12:36] = 1
    Image.fromarray(mask * 255).save(tmp_path / "img.png")
    Image.fromarray(mask).save(tmp_path / "lab.png")
    parser = ConfigParser()
    parser.read_config(str(CONFIGS / "common.yaml"))
    parser.update({"image_size": [64, 64]})
    pre = Compose(parser.get_parsed_content("deterministic_transforms"))
    entry = {"image": str(tmp_path / "img.png"), "label": str(tmp_path / "lab.png")}
    from custom.evaluation.evaluate import evaluate_network

    (row,), _ = evaluate_network(_Threshold(), [entry], pre, num_classes=2)
    assert row["dice"] == pytest.approx(1.0) and row["hd95"] == 0.0 and row["unit"] == "px"
    mask_shift = np.zeros_like(mask)
    mask_shift[8:24, 14:38] = 1  # the prediction is 2 pixels off along x
    Image.fromarray(mask_shift * 255).save(tmp_path / "img.png")
    (row,), _ = evaluate_network(_Threshold(), [{**entry, "spacing": [0.5, 0.5]}], pre, num_classes=2)
    (row_px,), _ = evaluate_network(_Threshold(), [entry], pre, num_classes=2)
    assert row_px["unit"] == "px" and row_px["hd95"] >= 2.0 and row_px["dice"] < 1.0
    assert row["unit"] == "mm" and row["hd95"] == pytest.approx(0.5 * row_px["hd95"])
    assert row["asd"] == pytest.approx(0.5 * row_px["asd"]) and row["dice"] == pytest.approx(row_px["dice"])


def test_methods_are_names_or_override_files_and_the_gap_share_is_computed():
    assert compare.method_file("ours") == ("ours", [CONFIGS / "methods" / "ours.yaml"])
    # an override that is not a method file of its own varies the default
    name, paths = compare.method_file("bundle/configs/ablations/no_gate.yaml")
    assert name == "no_gate" and paths[0] == CONFIGS / "methods" / "ours.yaml" and paths[1].is_file()
    # a method file (it sets `method`) stands alone
    name, paths = compare.method_file(str(CONFIGS / "methods" / "bcp.yaml"))
    assert name == "bcp" and paths == [CONFIGS / "methods" / "bcp.yaml"]
    with pytest.raises(ValueError, match="unknown method 'nosuch'"):
        compare.method_file("nosuch")
    with pytest.raises(FileNotFoundError, match="missing.yaml"):
        compare.method_file("missing.yaml")

    def row(dice, std):
        return {"dice": dice, "dice_std": std}

    table = {
        "labeled_only": row(0.70, 0.01),
        "fully_supervised": row(0.80, 0.01),
        "good": row(0.76, 0.02),
        "harmful": row(0.65, 0.03),
        "noisy": row(0.71, 0.02),
    }
    shares = compare.gap_shares(table)
    assert set(shares) == {"good", "harmful", "noisy"}
    assert shares["good"]["gap_share"] == pytest.approx(0.6) and shares["good"]["never_below"]
    assert shares["harmful"]["gap_share"] == pytest.approx(-0.5) and not shares["harmful"]["never_below"]
    assert shares["noisy"]["gap_share"] == pytest.approx(0.1) and not shares["noisy"]["never_below"]  # 0.69 < 0.70
    assert compare.gap_shares({"labeled_only": row(0.7, 0), "good": row(0.8, 0)}) == {}  # no upper reference
    assert compare.gap_shares({**table, "fully_supervised": row(0.69, 0)}) == {}  # C not above A: no gap to close


@pytest.mark.parametrize(
    "args, needle",
    [
        (["/nonexistent/set"], "datalist not found"),
        (["{data}", "--methods", "nosuch"], "unknown method 'nosuch'"),
        # a space-separated list: fire would hand the 2 to the next parameter (max_iterations)
        (["--dataset-dir", "{data}", "--seeds", "1", "2"], "unexpected argument(s) 2: give every option as --name"),
    ],
)
def test_command_line_input_errors_are_one_line(args, needle, tmp_path):
    import subprocess
    import sys

    (tmp_path / "datalist.json").write_text('{"training": [], "test": []}')
    argv = [a.format(data=tmp_path) for a in args]
    done = subprocess.run(
        [sys.executable, "-m", "custom.tools.compare", *argv, "--out", str(tmp_path / "out")],
        capture_output=True,
        text=True,
        cwd=compare.REPO,
        timeout=300,
    )
    assert done.returncode == 2, done.stderr
    lines = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and needle in lines[0] and "Traceback" not in done.stderr


def test_every_test_list_is_scored_and_a_list_added_later_is_evaluated_without_retraining(
    tmp_path, tiny_set, monkeypatch
):
    def fake_train(spec, launcher="subprocess", threads=None):
        spec.model_path.parent.mkdir(parents=True, exist_ok=True)
        torch.manual_seed(spec.seed)
        torch.save(UNeXt(1, 2).state_dict(), spec.model_path)

    monkeypatch.setattr(compare, "train_run", fake_train)
    datalist = Path(tiny_set) / "datalist.json"
    doc = json.loads(datalist.read_text())

    def copied(entries, name):  # a further test list of its own files (lists may not share an image)
        out = []
        for e in entries:
            new = {**e, "name": f"{name}_{e.get('name') or Path(e['image']).stem}"}
            for key in ("image", "label"):
                src = Path(tiny_set) / e[key]
                dst = src.with_name(f"{name}_{src.name}")
                shutil.copy(src, dst)
                new[key] = str(Path(e[key]).with_name(dst.name))
            out.append(new)
        return out

    doc["test_other"] = copied(doc["validation"][:2], "other")
    datalist.write_text(json.dumps(doc))
    kwargs = dict(methods="labeled_only", seeds="0,1", override=scale_file(tmp_path), out=str(tmp_path / "cmp"),
                  max_iterations=2, launcher="inprocess", progress=False)
    result = compare.run_comparison(tiny_set, **kwargs)
    assert list(result["tables"]) == ["test", "test_other"] and result["trained"] == ["labeled_only/seed0",
                                                                                        "labeled_only/seed1"]
    rows = list(csv.DictReader(open(tmp_path / "cmp" / "runs.csv")))
    assert [(r["seed"], r["list"]) for r in rows] == [("0", "test"), ("0", "test_other"), ("1", "test"),
                                                      ("1", "test_other")]
    assert all(any(k.startswith("n_empty_pred_") for k in r) for r in rows)  # per class
    # each list is scored on its own images (per-image rows name them)
    per_image = list(csv.DictReader(open(tmp_path / "cmp" / "per_image.csv")))
    for name in ("test", "test_other"):
        expected = sorted(2 * [e.get("name") or Path(e["image"]).stem for e in doc[name]])
        assert sorted(r["name"] for r in per_image if r["list"] == name) == expected
    md = (tmp_path / "cmp" / "comparison.md").read_text()
    assert "## Every list" in md and "## `test_other` (2 images)" in md and "per seed" in md

    # a new list: evaluated for every run, nothing retrained
    monkeypatch.setattr(compare, "train_run", lambda *a, **k: pytest.fail("retrained"))
    doc["test_third"] = copied(doc["validation"][:1], "third")
    datalist.write_text(json.dumps(doc))
    again = compare.run_comparison(tiny_set, **kwargs)
    assert list(again["tables"]) == ["test", "test_other", "test_third"] and len(again["trained"]) == 2
    assert again["tables"]["test"]["labeled_only"]["dice"] == pytest.approx(
        result["tables"]["test"]["labeled_only"]["dice"])
    # --split names the lists to score
    only = compare.run_comparison(tiny_set, **{**kwargs, "out": str(tmp_path / "cmp")}, split="test_third")
    assert list(only["tables"]) == ["test_third"] and only["trained"] == []
