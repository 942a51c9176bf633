"""Robustness to a change of acquisition: the training augmentation keeps image and mask aligned and
reaches every stream, class-adaptive thresholds keep a rare class, validation counts missed
structures, and the further test lists (another site, synthetic shifts, extra unlabelled frames)
never mix with the training lists."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import CONFIGS, REPO, require_shared, train_config_files
from monai.bundle import ConfigParser
from PIL import Image

from custom.data.errors import DataValidationError
from custom.data.held_out_lists import SHIFTS, add_shifted_lists, add_test_list, shift_frame
from custom.evaluation.metrics import EmptyPredictions
from custom.training.losses import CrossPseudoSupervisionLoss, class_thresholds, confidence_mask

NEW_AUGMENTATIONS = (
    "RandZoomd",
    "RandAffined",
    "RandScaleIntensityFixedMeand",
    "RandSimulateLowResolutiond",
    "RandAcousticShadowd",
)


def parser(*extra: str, **values) -> ConfigParser:
    p = ConfigParser()
    p.read_config(train_config_files("methods/bcp.yaml", *extra))
    p.update({"image_size": [64, 64], "dataset_dir": "/nonexistent", "num_classes": 2, **values})
    return p


def disc_pair(size: int = 64, radius: int = 10, centre=(32, 32)) -> dict:
    """An image whose bright disc is exactly the mask's foreground."""
    yy, xx = np.mgrid[:size, :size]
    mask = ((yy - centre[0]) ** 2 + (xx - centre[1]) ** 2 <= radius**2).astype(np.float32)
    return {"image": torch.as_tensor(0.8 * mask + 0.1)[None], "label": torch.as_tensor(mask)[None]}


# ------------------------------------------------------------------------------ augmentation


@pytest.mark.parametrize("target", ["RandZoomd", "RandAffined"])
def test_each_spatial_augmentation_moves_and_scales_the_mask_as_the_image(target):
    transforms = parser().get_parsed_content("train#random_transforms")
    (t,) = [t for t in transforms if type(t).__name__ == target]
    t.prob = 1.0
    for seed in range(5):
        t.set_random_state(seed)
        out = t(disc_pair(centre=(30, 34)))
        image, label = np.asarray(out["image"][0]), np.asarray(out["label"][0])
        inside = image > 0.5  # the disc as the image shows it after the transform
        assert label.sum() > 0
        # the mask covers the image's disc up to its interpolated rim: a one-pixel border at most
        assert (inside != (label > 0.5)).sum() <= 0.25 * label.sum()
        assert np.abs(np.argwhere(inside).mean(0) - np.argwhere(label > 0.5).mean(0)).max() < 1.0


def test_zoom_out_shrinks_the_structure_and_pads_the_frame_with_black():
    transforms = parser(aug_zoom_prob=1.0, aug_zoom_range=[0.7, 0.7]).get_parsed_content("train#random_transforms")
    (zoom,) = [t for t in transforms if type(t).__name__ == "RandZoomd"]
    pair = disc_pair()  # a grey frame with a bright disc
    out = zoom(pair)
    area = float(out["label"].sum()) / float(pair["label"].sum())
    assert area == pytest.approx(0.49, abs=0.08)
    assert float(out["image"][0, 0, 0]) == 0.0 and float(out["image"][0, 32, 32]) > 0.5  # border black, centre kept


def test_an_acoustic_shadow_darkens_a_band_from_some_depth_to_the_bottom_and_keeps_the_mask():
    transforms = parser(aug_shadow_prob=1.0).get_parsed_content("train#random_transforms")
    (shadow,) = [t for t in transforms if type(t).__name__ == "RandAcousticShadowd"]
    pair = disc_pair()
    shadow.set_random_state(3)
    out = shadow(pair)
    ratio = (out["image"][0] / pair["image"][0].clamp_min(1e-6)).numpy()  # W x H: depth is the last axis
    dark = ratio < 0.99
    columns, rows = np.flatnonzero(dark.any(1)), np.flatnonzero(dark.any(0))
    assert 0 < len(columns) < ratio.shape[0] and rows[-1] == ratio.shape[1] - 1 and rows[0] > 0  # a band, to the bottom
    assert np.all(dark[columns[len(columns) // 2], rows[0] :])  # every pixel below its start in the band
    assert np.allclose(ratio[:, : rows[0]], 1.0)  # above the reflector nothing changes
    assert 0.1 <= float(ratio.min()) <= 0.5 and torch.equal(out["label"], pair["label"])  # the head goes on under it


def test_every_stream_is_augmented_and_the_basic_set_switches_the_new_parts_off():
    default = parser()
    names = [type(t).__name__ for t in default.get_parsed_content("train#random_transforms")]
    assert all(n in names for n in NEW_AUGMENTATIONS)
    unlabeled = [type(t).__name__ for t in default.get_parsed_content("train#unlabeled_preprocessing").transforms]
    assert all(n in unlabeled for n in NEW_AUGMENTATIONS) and "RandRotated" in unlabeled
    # the unlabelled stream has its own instances (own random state), not the labelled stream's
    labelled_ids = {id(t) for t in default.get_parsed_content("train#random_transforms")}
    assert not labelled_ids & {id(t) for t in default.get_parsed_content("train#unlabeled_preprocessing").transforms}

    basic = parser(str(CONFIGS / "basic_augmentation.yaml"))
    random_transforms = basic.get_parsed_content("train#random_transforms")
    assert all(t.prob == 0.0 for t in random_transforms if type(t).__name__ in NEW_AUGMENTATIONS)
    unlabeled = basic.get_parsed_content("train#unlabeled_preprocessing").transforms
    assert not any(type(t).__name__.startswith("Rand") for t in unlabeled)


def test_unlabelled_frames_without_a_mask_pass_through_the_augmentation():
    pre = parser().get_parsed_content("train#unlabeled_random_transforms")
    for t in pre:
        if hasattr(t, "prob"):
            t.prob = 1.0
    data = {"image": disc_pair()["image"]}
    for t in pre:
        data = t(data)
    assert data["image"].shape == (1, 64, 64) and "label" not in data


# ------------------------------------------------------------------------------ class-adaptive thresholds


def rare_class_probs() -> torch.Tensor:
    """Background sure at 0.99 everywhere but a 4x4 patch of a rare class held at 0.75."""
    p = torch.zeros(1, 3, 16, 16)
    p[:, 0] = 0.99
    p[:, 1] = 0.005
    p[:, 2] = 0.005
    p[:, :, 6:10, 6:10] = torch.tensor([0.2, 0.75, 0.05])[:, None, None]
    return p


def test_a_class_threshold_keeps_the_rare_class_a_global_threshold_drops():
    p = rare_class_probs()
    rare = torch.zeros(1, 1, 16, 16, dtype=torch.bool)
    rare[..., 6:10, 6:10] = True
    assert confidence_mask(p, 0.9)[rare].sum() == 0  # the global gate erases the structure
    kept = confidence_mask(p, 0.9, per_class=True)
    assert bool(kept[rare].all()) and bool(kept[~rare].all())
    tau = class_thresholds(p, 0.9)
    assert tau[0] == pytest.approx(0.9) and tau[1] == pytest.approx(0.9 * 0.75 / 0.99, rel=1e-5)
    assert tau[2] == pytest.approx(0.9)  # a class no pixel is assigned to keeps the global threshold


def test_the_gated_pseudo_label_loss_teaches_the_rare_class_only_with_class_thresholds():
    teacher = rare_class_probs()
    for per_class, expect_signal in ((False, False), (True, True)):
        logits = torch.zeros(1, 3, 16, 16, requires_grad=True)
        loss = CrossPseudoSupervisionLoss(confidence=0.9, per_class=per_class)
        loss.pseudo(torch.softmax(logits, 1), teacher).backward()
        rare_grad = logits.grad[0, 1, 6:10, 6:10].abs().sum().item()
        assert (rare_grad > 1e-6) == expect_signal


# ------------------------------------------------------------------------------ validation counts


def test_validation_counts_images_whose_prediction_misses_a_present_class():
    metric = EmptyPredictions(num_classes=3, class_names={"background": 0, "ps": 1, "head": 2})
    metric.reset()

    def onehot(label: np.ndarray) -> torch.Tensor:
        return torch.nn.functional.one_hot(torch.as_tensor(label), 3).permute(2, 0, 1).float()

    ref = np.zeros((8, 8), int)
    ref[1:3, 1:3], ref[4:8, 4:8] = 1, 2
    missed_ps = ref.copy()
    missed_ps[ref == 1] = 0
    absent = np.zeros((8, 8), int)  # the reference has neither class: nothing is missed
    metric.update(([onehot(missed_ps), onehot(ref), onehot(absent)], [onehot(ref), onehot(ref), onehot(absent)]))
    assert metric.compute() == {"val_empty_pred_ps": 1, "val_empty_pred_head": 0, "val_empty_pred": 1}


# ------------------------------------------------------------------------------ test lists


def test_every_shift_keeps_image_and_mask_aligned():
    pair = disc_pair(size=96, radius=20, centre=(40, 50))
    image = (np.asarray(pair["image"][0]) * 255).astype(np.uint8)
    label = np.asarray(pair["label"][0]).astype(np.uint8)
    for kind in SHIFTS:
        img, lab, factor = shift_frame(image, label, kind, seed=3)
        assert img.shape == image.shape and img.dtype == np.uint8 and set(np.unique(lab)) <= {0, 1}
        bright = img > 128
        if kind in ("zoom_out", "depth_crop"):  # geometry changes: the mask follows the image
            assert abs(bright.sum() - lab.sum()) <= 0.2 * lab.sum()
            assert np.abs(np.argwhere(bright).mean(0) - np.argwhere(lab).mean(0)).max() < 1.5
            assert lab.sum() / label.sum() == pytest.approx(factor**-2, rel=0.1)
        else:  # intensity and resolution only: the mask is unchanged
            assert (lab == label).all() and factor == 1.0


@pytest.fixture()
def psfhs_small(tmp_path) -> Path:
    """A prepared PSFHS subset: 3 blocks of the real data (skips without ../shared/data)."""
    from custom.data.prepare import prepare

    source = require_shared("psfhs")
    src = tmp_path / "src"
    for sub in ("images", "labels"):
        (src / sub).mkdir(parents=True)
        for i in list(range(3744, 3750)) + list(range(3800, 3806)) + list(range(4500, 4506)):
            shutil.copy(source / sub / f"{i:05d}.png", src / sub / f"{i:05d}.png")
    prepare("psfhs", src, tmp_path / "prepared", labeled_count=2, val_fraction=0.3, test_ids="4500-4505",
            progress=False, quiet=True)
    return tmp_path / "prepared"


def test_shifted_lists_are_written_beside_the_test_list_with_their_own_masks(psfhs_small):
    added = add_shifted_lists(psfhs_small, kinds="zoom_out,low_res", progress=False)
    assert added == {"test_zoom_out": 6, "test_low_res": 6}
    doc = json.loads((psfhs_small / "datalist.json").read_text())
    for name in added:
        for entry, original in zip(doc[name], doc["test"]):
            assert entry["name"] == original["name"]
            img = np.array(Image.open(psfhs_small / entry["image"]))
            assert img.shape == np.array(Image.open(psfhs_small / original["image"])).shape
            assert (psfhs_small / entry["label"]).is_file()
    with pytest.raises(FileExistsError, match="already has a list 'test_zoom_out'"):
        add_shifted_lists(psfhs_small, kinds="zoom_out", progress=False)
    with pytest.raises(ValueError, match="--kinds blur"):
        add_shifted_lists(psfhs_small, kinds="blur", progress=False)


def test_another_sites_frames_become_a_test_list_but_never_a_frame_already_used(psfhs_small, tmp_path):
    site2 = require_shared("psfhs_site2")
    assert add_test_list(psfhs_small, "site2", site2, kind="psfhs", ids="4950-4953", progress=False) == 4
    doc = json.loads((psfhs_small / "datalist.json").read_text())
    assert [e["name"] for e in doc["test_site2"]] == ["04950", "04951", "04952", "04953"]
    # a frame of the training pool offered as a test frame is refused by name
    used = json.loads((psfhs_small / "datalist.json").read_text())["unlabeled"][0]["name"]
    leak = tmp_path / "leak"
    for sub in ("images", "labels"):
        (leak / sub).mkdir(parents=True)
        shutil.copy(psfhs_small / sub / f"{used}.png", leak / sub / "09999.png")
    with pytest.raises(DataValidationError, match="the same frame is in unlabeled"):
        add_test_list(psfhs_small, "leak", leak, kind="psfhs", progress=False)
    assert "test_leak" not in json.loads((psfhs_small / "datalist.json").read_text())


def test_unlabeled_extra_frames_only_ever_join_the_unlabelled_list(tmp_path):
    from custom.data.prepare import prepare

    source = require_shared("psfhs")
    site2 = require_shared("psfhs_site2")
    extra = tmp_path / "extra"
    extra.mkdir()
    for i in range(4900, 4906):
        shutil.copy(site2 / "images" / f"{i:05d}.png", extra / f"{i:05d}.png")
    shutil.copy(site2 / "images" / "04906.png", extra / "frame.jpg")  # another format is fine
    src = tmp_path / "src"
    for sub in ("images", "labels"):
        (src / sub).mkdir(parents=True)
        for i in list(range(3744, 3750)) + list(range(4500, 4504)):
            shutil.copy(source / sub / f"{i:05d}.png", src / sub / f"{i:05d}.png")
    out = tmp_path / "out"
    prepare("psfhs", src, out, labeled_count=2, val_fraction=0.0, test_ids="4500-4503", progress=False, quiet=True,
            unlabeled_extra=extra, unlabeled_extra_ids="4900-4904")
    doc = json.loads((out / "datalist.json").read_text())
    extras = [e for e in doc["unlabeled"] if e["group"] == "extra:extra"]
    assert sorted(e["name"] for e in extras) == [f"extra:0490{i}" for i in range(5)]
    assert all("label" not in e and (out / e["image"]).is_file() for e in extras)
    for split in ("training", "validation", "test"):
        assert not any(e["name"].startswith("extra:") for e in doc.get(split, []))

    # an unreadable file, or a frame of the dataset itself, is refused by name and nothing is written
    (extra / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    shutil.copy(source / "images" / "04500.png", extra / "again.png")
    with pytest.raises(DataValidationError) as error:
        prepare("psfhs", src, tmp_path / "out2", labeled_count=2, val_fraction=0.0, test_ids="4500-4503",
                progress=False, quiet=True, unlabeled_extra=extra)
    assert "broken.png" in str(error.value) and "again.png" in str(error.value) and "04500" in str(error.value)
    assert not (tmp_path / "out2").exists()


def test_the_readmes_robustness_commands_run_as_written(tmp_path):
    """The README's PSFHS protocol preparation and its add-test and shift lines, as written, from a
    working folder whose ``../shared/data`` is the real data (nothing is written into the repository)."""
    import os
    import re
    import shlex
    import subprocess
    import sys

    from conftest import REPO, SHARED_DATA

    require_shared("psfhs_site2")
    text = (REPO / "README.md").read_text(encoding="utf-8")
    prepare = re.search(r"^\.venv/bin/python -m custom\.data prepare psfhs .*--out data/psfhs20 .*$", text, re.M)
    section = text[text.index("### Robustness across acquisitions") :]
    lists = re.findall(r"^(\.venv/bin/python -m custom\.data (?:add-test|shift) .*)$", section, re.M)
    assert prepare and [shlex.split(c)[3] for c in lists] == ["add-test", "shift"], lists
    work = tmp_path / "repo"
    work.mkdir()
    (tmp_path / "shared").mkdir()
    (tmp_path / "shared" / "data").symlink_to(SHARED_DATA)
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    for command in [prepare.group(0), *lists]:
        cmd = shlex.split(command)
        proc = subprocess.run([sys.executable, *cmd[1:], "--progress", "false"], cwd=work, env=env,
                              capture_output=True, text=True, timeout=900)
        assert proc.returncode == 0, f"{command}\n{proc.stderr[-2000:]}"
    doc = json.loads((work / "data" / "psfhs20" / "datalist.json").read_text())
    assert len(doc["test_site2"]) == 50 and {len(doc[f"test_{k}"]) for k in SHIFTS} == {len(doc["test"])}
    names = {e["name"] for split in ("training", "unlabeled", "validation") for e in doc[split]}
    assert not names & {e["name"] for e in doc["test_site2"]}


def test_a_pool_with_extra_frames_without_masks_trains(tmp_path, demo_dataset):
    """Extra unlabelled frames (no mask, their own keys) beside masked unlabelled frames: the
    unlabelled stream batches images only, and a copy-paste run trains through them."""
    from conftest import tiny_overrides
    from monai.bundle import ConfigWorkflow

    data = tmp_path / "data"
    shutil.copytree(demo_dataset, data)
    doc = json.loads((data / "datalist.json").read_text())
    assert all("label" in e for e in doc["unlabeled"])
    doc["unlabeled"] = doc["unlabeled"][:2] + [
        {"image": e["image"], "group": "extra:site2", "name": f"extra:{i}", "source": "/elsewhere"}
        for i, e in enumerate(doc["unlabeled"][2:])
    ]
    (data / "datalist.json").write_text(json.dumps(doc))
    wf = ConfigWorkflow(
        config_file=train_config_files("methods/bcp.yaml"),
        meta_file=str(CONFIGS / "metadata.json"),
        workflow_type="train",
        **tiny_overrides(tmp_path, str(data), bcp_start=0),
    )
    wf.initialize()
    assert all(set(e) == {"image"} for e in wf.parser.get_parsed_content("unlabeled_datalist"))
    wf.run()
    trainer = wf.parser.get_parsed_content("train#trainer")
    assert trainer.state.iteration == 2 and (tmp_path / "models" / "model.pt").is_file()


def test_every_config_file_the_docs_name_exists_and_parses():
    """The measurement commands in the READMEs name override files (protocol.yaml, the
    augmentation leave-one-out files, ...): each must exist and load as a mapping, so that a
    documented command never fails on a renamed or missing file."""
    import re

    docs = [REPO / "README.md", *sorted((REPO / "bundle" / "docs").glob("*.md"))]
    named = set()
    for doc in docs:
        named |= set(re.findall(r"bundle/configs/[\w./-]+?\.(?:yaml|json)", doc.read_text(encoding="utf-8")))
    assert "bundle/configs/ablations/no_aug_zoom.yaml" in named
    missing = sorted(p for p in named if not (REPO / p).is_file())
    assert not missing, f"the docs name config files that do not exist: {missing}"
    for p in sorted(named):
        if p.endswith(".yaml"):
            assert isinstance(ConfigParser.load_config_file(str(REPO / p)) or {}, dict), p


def test_masks_beside_extra_frames_never_join_the_pool(tmp_path):
    """Issue 33: ``X_mask.png`` beside ``X.png``, or a data set's ``images/`` + ``labels/`` layout
    given as the extra folder: the masks are left out by name and only images join the pool."""
    from PIL import Image

    from custom.data.extra import read_extra_images

    rng = np.random.default_rng(0)
    flat, layout = tmp_path / "flat", tmp_path / "layout"
    for folder in (flat, layout / "images", layout / "labels"):
        folder.mkdir(parents=True)
    for i in range(3):
        Image.fromarray(rng.integers(0, 256, (32, 32), dtype=np.uint8)).save(flat / f"{i:05d}.png")
        Image.fromarray(np.zeros((32, 32), np.uint8)).save(flat / f"{i:05d}_mask.png")
        Image.fromarray(rng.integers(0, 256, (32, 32), dtype=np.uint8)).save(layout / "images" / f"{i:05d}.png")
        Image.fromarray(np.full((32, 32), i, np.uint8)).save(layout / "labels" / f"{i:05d}.png")
    extra = read_extra_images(flat, None, [], progress=False)
    assert sorted(extra.images) == ["00000", "00001", "00002"]
    assert "3 files named as masks left out (00000_mask.png" in extra.note
    extra = read_extra_images(layout, "1-2", [], progress=False)
    assert sorted(extra.images) == ["00001", "00002"] and extra.source == (layout / "images").resolve()
