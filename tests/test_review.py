"""Which head measurements to distrust (custom/evaluation/review.py): the scores, thresholds set on
validation, the flag in the evaluation CSV and beside every inferred mask (issue 32)."""

from __future__ import annotations

import csv
import json
import subprocess
import sys

import numpy as np
import pytest
from conftest import CONFIGS, REPO, require_shared, tiny_overrides, train_config_files

from custom.evaluation.review import (
    calibrate,
    ellipse_mask,
    head_label,
    read_review_file,
    review,
    review_scores,
    size_outside,
    with_size,
    write_review_file,
)

SHAPE = (120, 160)


def _ellipse(cy=60, cx=80, a=50, b=35, angle=0.3):
    return ellipse_mask(SHAPE, cy, cx, a, b, angle)


def test_a_whole_ellipse_scores_clean_and_each_fault_raises_its_own_score():
    head = _ellipse()
    clean = review_scores(head, head.copy())
    assert clean["no_head"] == 0 and clean["edge"] == 0
    assert clean["ellipse_misfit"] < 0.01 and clean["disagreement"] == 0

    cut = review_scores(_ellipse(cx=30))  # the head runs off the frame's left edge
    assert cut["edge"] > 0.1

    bitten = head.copy()
    bitten &= ~_ellipse(cx=120, a=30, b=30)  # a bite out of one side: not an ellipse any more
    assert review_scores(bitten)["ellipse_misfit"] > clean["ellipse_misfit"] + 0.02

    other = _ellipse(a=40, b=28)
    assert review_scores(head, other)["disagreement"] == pytest.approx(1 - 2 * other.sum() / (head.sum() + other.sum()))

    assert review_scores(np.zeros(SHAPE, bool))["no_head"] == 1


def test_skull_outside_is_positive_where_the_bright_arc_lies_outside_the_outline():
    rows, cols = np.mgrid[: SHAPE[0], : SHAPE[1]]
    skull = _ellipse(a=56, b=41) & ~_ellipse(a=52, b=37)  # a bright ring: the skull
    image = np.where(skull, 200.0, 40.0) + np.random.default_rng(0).normal(0, 5, SHAPE)
    on_the_skull = review_scores(_ellipse(a=56, b=41), image=image)["skull_outside"]
    inside_the_skull = review_scores(_ellipse(a=46, b=31), image=image)["skull_outside"]
    assert inside_the_skull > 0 > on_the_skull


def test_thresholds_are_validation_quantiles_and_the_flag_names_each_score_above_its_own():
    rows = [
        {"edge": 0.0, "ellipse_misfit": m, "disagreement": d}
        for m, d in zip(np.linspace(0, 0.1, 41), np.linspace(0, 0.4, 41))
    ]
    cal = calibrate(rows, rate=0.1)
    # two scores vary (edge is 0 on every frame: its threshold 0, no share of the rate): each at the
    # 1 - 0.1 / 2 quantile, so at most ~10 % of such frames are marked
    assert cal["quantile"] == pytest.approx(1 - 0.1 / 2) and cal["thresholds"]["edge"] == 0
    assert cal["thresholds"]["ellipse_misfit"] == pytest.approx(np.quantile(np.linspace(0, 0.1, 41), 1 - 0.1 / 2))
    marked = [review(r, cal["thresholds"])[0] for r in rows]
    assert 0 < sum(marked) <= 0.1 * len(rows) + 1

    flag, reason = review({"no_head": 0, "edge": 0, "ellipse_misfit": 0.5, "disagreement": 0.0}, cal["thresholds"])
    assert flag and reason.startswith("ellipse_misfit 0.5 >") and "disagreement" not in reason
    assert review({"no_head": 1.0}, cal["thresholds"]) == (True, "no head ellipse")
    assert review(rows[0], cal["thresholds"]) == (False, "")
    with pytest.raises(ValueError, match="review rate 2"):
        calibrate(rows, rate=2)


def test_a_head_outside_the_validated_sizes_is_marked_for_its_size():
    rows = [
        {"hc": hc * 1.01, "hc_ref": hc, "hc_unit": "mm", "edge": 0.0, "ellipse_misfit": 0.02}
        for hc in np.linspace(100.0, 200.0, 30)
    ]
    cal = calibrate(rows)
    assert cal["hc_range_mm"] == [100.0, 200.0]
    assert size_outside(150.0, cal["hc_range_mm"]) == 0 and size_outside(250.0, [100.0, 200.0]) == pytest.approx(0.25)
    assert size_outside(80.0, [100.0, 200.0]) == pytest.approx(0.25) and np.isnan(size_outside(None, [100, 200]))
    inside = with_size({"edge": 0.0, "ellipse_misfit": 0.02}, 180.0, cal)
    larger = with_size({"edge": 0.0, "ellipse_misfit": 0.02}, 260.0, cal)
    assert review(inside, cal["thresholds"]) == (False, "")
    marked, reason = review(larger, cal["thresholds"])
    assert marked and reason.startswith("size_outside 0.3 >")
    # in pixels (no pixel size): not judged by size
    assert "size_outside" not in with_size({"edge": 0.0}, None, cal)


def test_the_head_is_the_one_class_named_so():
    assert head_label({"background": 0, "pubic symphysis": 1, "fetal head": 2}) == 2
    assert head_label({"background": 0, "class_1": 1}) is None
    assert head_label(None) is None


def test_thresholds_of_other_weights_are_refused(tmp_path):
    (tmp_path / "model.pt").write_bytes(b"weights one")
    path = write_review_file(str(tmp_path), calibrate([{"edge": 0.0, "ellipse_misfit": 0.1}]), head_class=1)
    assert read_review_file(str(tmp_path / "model.pt"))["thresholds"]["ellipse_misfit"] == pytest.approx(0.1)
    (tmp_path / "model.pt").write_bytes(b"weights two")
    with pytest.raises(ValueError, match="set for other weights than .*model.pt"):
        read_review_file(str(tmp_path / "model.pt"))
    assert read_review_file(str(tmp_path / "other" / "model.pt")) is None
    assert path.endswith("review.json")


def _bundle(*args):
    proc = subprocess.run(
        [sys.executable, "-m", "monai.bundle", "run", *args], cwd=REPO, capture_output=True, text=True, timeout=900
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def _hc18_datalist(tmp_path):
    hc, late = require_shared("hc18"), require_shared("hc18_late")

    def entries(root, names):
        sizes = {r[0]: r for r in csv.reader((root / "pixel_size_and_hc.csv").read_text().splitlines()[1:])}
        return [
            {
                "image": str(root / "images" / n),
                "label": str(root / "labels" / n),
                "spacing": [float(sizes[n][1])] * 2,
                "hc_mm": float(sizes[n][2]),
            }
            for n in names
        ]

    names = sorted(p.name for p in (hc / "images").glob("*.png"))
    doc = {
        "num_classes": 2,
        "labels": {"background": 0, "fetal head": 1},
        "allow_paths_outside": True,
        "training": entries(hc, names[0:4]),
        "unlabeled": [{"image": e["image"]} for e in entries(hc, names[10:14])],
        "validation": entries(hc, names[20:26]),
        "test_late": entries(late, ["650_HC.png", "651_HC.png", "652_HC.png"]),
    }
    (tmp_path / "datalist.json").write_text(json.dumps(doc))
    return doc


def test_training_sets_thresholds_on_validation_and_evaluation_and_inference_mark_each_frame(tmp_path):
    doc = _hc18_datalist(tmp_path)
    overrides = tiny_overrides(tmp_path, str(tmp_path))
    args = [f"--{k}={json.dumps(v) if not isinstance(v, str) else v}" for k, v in overrides.items()]
    _bundle(
        "training", "--config_file", str(train_config_files()), "--meta_file", str(CONFIGS / "metadata.json"), *args
    )
    models = tmp_path / "models"
    record = json.loads((models / "review.json").read_text())
    # the default trains both networks: their disagreement is one of the scores; set on validation
    assert record["head_class"] == 1 and record["set_on"] == "validation" and record["n_images"] == 6
    assert set(record["thresholds"]) == {"edge", "ellipse_misfit", "disagreement", "skull_outside", "size_outside"}
    refs = [e["hc_mm"] for e in doc["validation"]]
    assert record["hc_range_mm"] == [min(refs), max(refs)]  # the validation heads' references, in mm

    common = ["--meta_file", str(CONFIGS / "metadata.json"), "--ckpt_dir", str(models), "--image_size", "[64,64]"]
    swin = ("transformer_def#embed_dim", "transformer_def#num_heads", "transformer_def#window_size")
    tiny = [a for k in swin for a in (f"--{k}", json.dumps(overrides[k]))]
    evaluate = str([str(CONFIGS / c) for c in ("common.yaml", "train.yaml", "evaluate.yaml")])
    _bundle(
        "evaluating",
        "--config_file",
        evaluate,
        "--dataset_dir",
        str(tmp_path),
        "--eval_split",
        "test_late",
        "--output_dir",
        str(tmp_path / "eval"),
        *common,
        *tiny,
    )
    with open(tmp_path / "eval" / "evaluation" / "per_image.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 3 and all(r["review"] in ("True", "False") for r in rows)
    assert all(r["disagreement"] != "" for r in rows)
    summary = json.loads((tmp_path / "eval" / "evaluation" / "summary.json").read_text())
    assert summary["head_circumference"]["n_marked"] == sum(r["review"] == "True" for r in rows)

    # every threshold below any score: every frame marked, each naming its scores
    record["thresholds"] = {k: -1e9 for k in record["thresholds"]}
    (models / "review.json").write_text(json.dumps(record))
    frames = tmp_path / "frames"
    frames.mkdir()
    for e in doc["test_late"]:
        (frames / e["image"].rsplit("/", 1)[1]).write_bytes(open(e["image"], "rb").read())
    infer = str([str(CONFIGS / c) for c in ("common.yaml", "inference.yaml")])
    _bundle(
        "--config_file",
        infer,
        "--input_path",
        str(frames),
        "--output_dir",
        str(tmp_path / "out"),
        "--pixel_size_mm",
        "0.2",
        *common,
        *tiny,
    )
    out = tmp_path / "out" / "inference"
    for e in doc["test_late"]:
        stem = e["image"].rsplit("/", 1)[1][:-4]
        result = json.loads((out / f"{stem}_review.json").read_text())
        assert (out / f"{stem}_mask.png").is_file() and result["mask"].endswith(f"{stem}_mask.png")
        assert result["review"] is True and "disagreement" in result["review_reason"], result
        assert result["unit"] == "mm" and result["head_circumference"] is None or result["head_circumference"] > 0
    with open(out / "review.csv") as f:
        assert [r["review"] for r in csv.DictReader(f)] == ["True"] * 3

    # thresholds of other weights: one line naming the file, no result claimed
    (models / "model.pt").write_bytes((models / "model.pt").read_bytes() + b"\0")
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "monai.bundle",
            "run",
            "--config_file",
            infer,
            "--input_path",
            str(frames),
            "--output_dir",
            str(tmp_path / "out2"),
            *common,
            *tiny,
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode != 0 and "review.json: set for other weights" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_a_model_that_finds_no_head_on_validation_sets_no_thresholds_and_drops_stale_ones(tmp_path):
    """A training whose model predicts no head on any validation frame ends normally: no review
    thresholds are written, and those of earlier weights in the folder are removed."""
    import torch
    from monai.bundle import ConfigParser
    from monai.transforms import Compose

    from custom.evaluation.evaluate import set_review_thresholds
    from custom.networks import UNeXt

    hc = require_shared("hc18")
    names = sorted(p.name for p in (hc / "images").glob("*.png"))[:3]
    entries = [{"image": str(hc / "images" / n), "label": str(hc / "labels" / n)} for n in names]
    net = UNeXt(1, 2)
    with torch.no_grad():
        net.final.bias.copy_(torch.tensor([1e3, -1e3]))  # background everywhere
    torch.save(net.state_dict(), tmp_path / "model.pt")
    (tmp_path / "review.json").write_text("{}")  # thresholds of earlier weights
    parser = ConfigParser()
    parser.read_config([str(CONFIGS / "common.yaml")])
    parser.update({"bundle_root": str(REPO / "bundle"), "model_config_file": None, "image_size": [64, 64]})
    pre = Compose(parser.get_parsed_content("deterministic_transforms"))
    labels = {"background": 0, "fetal head": 1}
    assert set_review_thresholds(str(tmp_path), UNeXt(1, 2), entries, pre, 2, labels) is None
    assert not (tmp_path / "review.json").exists()
