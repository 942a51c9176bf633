"""Tests of ``custom.data`` (dataset preparation): real shared data where present, synthetic
data written into ``tmp_path`` otherwise. Whole file: well under a minute on 2 cores."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from PIL import Image
from skimage.draw import ellipse, ellipse_perimeter
from skimage.measure import EllipseModel, find_contours
from skimage.segmentation import find_boundaries

from custom.data import DataValidationError, SplitError, load_datalist
from custom.data.outlines import fill_outline
from custom.data.prepare import prepare
from custom.data.sources.hc18 import subject_of
from custom.data.splits import SPLITS, SplitPlan, round_half_up, split_groups

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
HC18_DIR = SHARED_DATA / "hc18"
PSFHS_DIR = SHARED_DATA / "psfhs"
SPLIT_NAMES = ("training", "unlabeled", "validation", "test")

ABSENT = "not found (the real data is present on developer and CI machines only)"
needs_hc18 = pytest.mark.skipif(not HC18_DIR.is_dir(), reason=f"shared HC18 data {HC18_DIR} {ABSENT}")
needs_psfhs = pytest.mark.skipif(not PSFHS_DIR.is_dir(), reason=f"shared PSFHS data {PSFHS_DIR} {ABSENT}")


# ----------------------------------------------------------------------------- helpers


def save_png(path: Path, array: np.ndarray) -> None:
    """Write an array as PNG (mode from the dtype), creating the folder."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def read_png(path: Path) -> np.ndarray:
    """Read a PNG as an array."""
    with Image.open(path) as image:
        return np.asarray(image)


def ramanujan_perimeter(a: float, b: float) -> float:
    """Ramanujan's approximation of the perimeter of an ellipse with semi-axes a, b."""
    return float(np.pi * (3 * (a + b) - np.sqrt((3 * a + b) * (a + 3 * b))))


def fitted_circumference_mm(mask: np.ndarray, pixel_size: float) -> float:
    """Circumference (mm) of the least-squares ellipse through the boundary of a filled mask."""
    points = np.concatenate(find_contours(mask.astype(float), 0.5))[:, ::-1]  # (x, y)
    if hasattr(EllipseModel, "from_estimate"):
        a, b = EllipseModel.from_estimate(points).axis_lengths
    else:  # scikit-image < 0.26
        model = EllipseModel()
        model.estimate(points)
        a, b = model.params[2:4]
    return ramanujan_perimeter(a, b) * pixel_size


def all_entries(datalist: dict) -> list[dict]:
    """Entries of every split."""
    return [entry for split in SPLIT_NAMES for entry in datalist[split]]


def groups_per_split(datalist: dict) -> dict[str, set[str]]:
    """The set of groups of each split."""
    return {split: {entry["group"] for entry in datalist[split]} for split in SPLIT_NAMES}


def assert_groups_disjoint(datalist: dict) -> None:
    """No group appears in two splits."""
    groups = groups_per_split(datalist)
    for i, first in enumerate(SPLIT_NAMES):
        for second in SPLIT_NAMES[i + 1 :]:
            assert not groups[first] & groups[second], f"groups in {first} and {second}"


def make_folder_dataset(root: Path, groups: int = 6, per_group: int = 2, size: tuple[int, int] = (24, 32)) -> Path:
    """A small valid ``folder`` dataset: images/sNN_k.png (grey) + labels/sNN_k.png (0/1)."""
    rng = np.random.default_rng(0)
    for g in range(groups):
        for k in range(per_group):
            name = f"s{g:02d}_{k}"
            save_png(root / "images" / f"{name}.png", rng.integers(0, 256, size, dtype=np.uint8))
            mask = np.zeros(size, np.uint8)
            mask[4 : 10 + g, 5 : 12 + k] = 1
            save_png(root / "labels" / f"{name}.png", mask)
    return root


FOLDER_OPTIONS = dict(group_regex=r"^(s\d+)_", val_fraction=0.2, test_fraction=0.2, progress=False, quiet=True)


# ----------------------------------------------------------------------------- shared HC18


@pytest.fixture(scope="module")
def hc18_prepared(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """The shared HC18 subset prepared with 5 % labelled (default 10 % validation, 10 % test)."""
    if not HC18_DIR.is_dir():
        pytest.skip(f"shared HC18 data not found at {HC18_DIR}")
    out = tmp_path_factory.mktemp("hc18") / "prepared"
    summary = prepare("hc18", HC18_DIR, out, labeled_fraction=0.05, seed=0, progress=False, quiet=True)
    return out, summary


@needs_hc18
def test_hc18_prepared_layout_and_metadata(hc18_prepared: tuple[Path, dict]) -> None:
    out, summary = hc18_prepared
    datalist = json.loads((out / "datalist.json").read_text())
    assert datalist["num_classes"] == 2 and datalist["labels"] == {"background": 0, "fetal head": 1}
    assert datalist["source_kind"] == "hc18" and datalist["seed"] == 0
    assert datalist["options"]["labeled_fraction"] == 0.05
    entries = all_entries(datalist)
    assert len(entries) == 741 == summary["total_images"]
    assert len({e["name"] for e in entries}) == 741
    for entry in entries[::25]:
        assert not Path(entry["image"]).is_absolute() and entry["image"] == f"images/{entry['name']}.png"
        assert entry["label"] == f"labels/{entry['name']}.png"
        assert entry["group"] == subject_of(entry["name"]) and len(entry["group"]) == 3
        assert len(entry["spacing"]) == 2 and 0.03 < entry["spacing"][0] < 0.3
        image, label = read_png(out / entry["image"]), read_png(out / entry["label"])
        assert image.ndim == 2 and image.dtype == np.uint8 and image.shape == label.shape
        assert set(np.unique(label)) <= {0, 1}
    saved = json.loads((out / "summary.json").read_text())
    assert saved == json.loads(json.dumps(summary)) and saved["splits"]["training"]["images"] == 30
    assert sum(saved["image_sizes_wxh"].values()) == 741 and saved["image_sizes_wxh"]["800x540"] > 700
    assert saved["spacing_mm"]["known"] == 741 and saved["spacing_mm"]["x_min_max"][0] > 0.03
    fractions = saved["class_pixel_fractions"]["all_written_masks"]
    assert sum(fractions.values()) == pytest.approx(1.0, abs=1e-4) and 0.1 < fractions["fetal head"] < 0.5
    assert not list(out.parent.glob(".prepared.*")), "temporary folders left behind"


@needs_hc18
def test_hc18_splits_by_subject(hc18_prepared: tuple[Path, dict]) -> None:
    datalist = json.loads((hc18_prepared[0] / "datalist.json").read_text())
    assert_groups_disjoint(datalist)
    assert groups_per_split(datalist)["training"], "no labelled subject"
    by_name = {e["name"]: split for split in SPLIT_NAMES for e in datalist[split]}
    assert by_name["010_HC"] == by_name["010_2HC"]  # two images of subject 010 stay together
    assert by_name["014_HC"] == by_name["014_2HC"] == by_name["014_3HC"]


@needs_hc18
def test_hc18_labelled_count_for_five_percent(hc18_prepared: tuple[Path, dict]) -> None:
    """741 images; test = round(0.1 * 741) = 74, validation = 74, pool = 593;
    labelled = round(0.05 * 593) = round(29.65) = 30 images (exactly: groups are taken while
    they fit). Without validation/test: round(0.05 * 741) = round(37.05) = 37."""
    summary = hc18_prepared[1]
    assert [summary["splits"][s]["images"] for s in SPLIT_NAMES] == [30, 563, 74, 74]
    sizes = Counter(subject_of(p.name) for p in (HC18_DIR / "images").glob("*.png"))
    assert sum(sizes.values()) == 741 and len(sizes) == 600
    for seed in range(5):
        plan = SplitPlan(labeled_fraction=0.05, val_fraction=0.0, test_fraction=0.0, seed=seed)
        labelled = split_groups(sizes, plan)["training"]
        assert sum(sizes[g] for g in labelled) == round_half_up(0.05 * 741) == 37


@needs_hc18
def test_hc18_filled_masks_match_reference_circumference(hc18_prepared: tuple[Path, dict]) -> None:
    out = hc18_prepared[0]
    datalist = load_datalist(out)
    entries = sorted(all_entries(datalist), key=lambda e: e["name"])[::37]  # 21 images
    assert len(entries) >= 20
    for entry in entries:
        mask = read_png(Path(entry["label"])) > 0
        circumference = fitted_circumference_mm(mask, entry["spacing"][0])
        assert circumference == pytest.approx(entry["hc_mm"], rel=0.02), entry["name"]


@needs_hc18
def test_hc18_outline_layout_filled_like_reference(tmp_path: Path) -> None:
    """Outlines drawn from the shared masks (challenge layout, three of them cut by the border)
    are filled back to the masks and to the reference circumference."""
    rows = {r["filename"]: r for r in csv.DictReader((HC18_DIR / "pixel_size_and_hc.csv").open())}
    names = sorted(rows)[::40] + ["186_HC.png", "346_HC.png", "352_2HC.png"]  # the last three touch the border
    source = tmp_path / "hc18_release"
    folder = source / "training_set"
    folder.mkdir(parents=True)
    with (source / "training_set_pixel_size_and_HC.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["filename", "pixel size(mm)", "head circumference (mm)"])
        for name in names:
            writer.writerow([name, rows[name]["pixel size(mm)"], rows[name]["head circumference (mm)"]])
    for name in names:
        mask = read_png(HC18_DIR / "labels" / name) > 0
        save_png(folder / name, read_png(HC18_DIR / "images" / name))
        outline = find_boundaries(mask, mode="inner").astype(np.uint8) * 255
        save_png(folder / name.replace(".png", "_Annotation.png"), outline)
    out = tmp_path / "out"
    summary = prepare("hc18", source, out, val_fraction=0, test_fraction=0, progress=False, quiet=True)
    assert summary["conversions"]["HC18 outline open (e.g. cut by the border): ellipse fitted"] == 3
    datalist = load_datalist(out)
    for entry in all_entries(datalist):
        filled = read_png(Path(entry["label"])) > 0
        reference = read_png(HC18_DIR / "labels" / f"{entry['name']}.png") > 0
        iou = (filled & reference).sum() / (filled | reference).sum()
        assert iou > 0.98, entry["name"]
        assert fitted_circumference_mm(filled, entry["spacing"][0]) == pytest.approx(entry["hc_mm"], rel=0.02)


# ----------------------------------------------------------------------------- outline filling (synthetic)


def test_fill_outline_closed_ring() -> None:
    ring = np.zeros((120, 160), np.uint8)
    rows, cols = ellipse_perimeter(60, 80, 40, 60, orientation=0.3, shape=ring.shape)
    ring[rows, cols] = 255
    filled, fitted = fill_outline(ring)
    assert not fitted
    truth = np.zeros(ring.shape, bool)
    truth[ellipse(60, 80, 40, 60, shape=ring.shape, rotation=-0.3)] = True  # skimage: rotation = -orientation
    assert (filled & truth).sum() / (filled | truth).sum() > 0.93
    assert filled[60, 80] and not filled[0, 0]


def test_fill_outline_ring_cut_by_border_uses_ellipse_fit() -> None:
    shape = (100, 140)
    ring = np.zeros(shape, np.uint8)
    rows, cols = ellipse_perimeter(70, 70, 45, 60, shape=shape)  # the lower part lies outside the image
    ring[rows, cols] = 1
    assert not ring[-1].any() or ring[-1].sum() < 10
    filled, fitted = fill_outline(ring)
    assert fitted
    truth = np.zeros(shape, bool)
    truth[ellipse(70, 70, 45, 60, shape=shape)] = True
    assert (filled & truth).sum() / (filled | truth).sum() > 0.95
    assert filled[-1, 70], "the part of the head at the border is filled"


# ----------------------------------------------------------------------------- shared PSFHS through the CLI


@pytest.fixture(scope="module")
def psfhs_cli(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, subprocess.CompletedProcess]:
    """The shared PSFHS subset (1056 images) prepared once through the command line."""
    if not PSFHS_DIR.is_dir():
        pytest.skip(f"shared PSFHS data not found at {PSFHS_DIR}")
    out = tmp_path_factory.mktemp("psfhs") / "prepared"
    command = [
        sys.executable, "-m", "custom.data", "prepare", "psfhs",
        "--source", str(PSFHS_DIR), "--out", str(out),
        "--labeled-fraction", "0.1", "--test-ids", "4500-4799", "--hide-unlabeled-masks", "--seed", "3",
    ]  # fmt: skip
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return out, result


@needs_psfhs
def test_psfhs_cli_prepares_block_groups(psfhs_cli: tuple[Path, subprocess.CompletedProcess]) -> None:
    out, result = psfhs_cli
    assert "Prepared 1056 images (psfhs)" in result.stdout
    datalist = json.loads((out / "datalist.json").read_text())
    assert datalist["num_classes"] == 3
    assert datalist["labels"] == {"background": 0, "pubic symphysis": 1, "fetal head": 2}
    assert datalist["seed"] == 3 and datalist["options"]["hide_unlabeled_masks"] is True
    # psfhs draws labelled frames spread over the pool's video blocks (labeled_draw frames):
    # the pool, validation and test stay whole groups apart; labelled frames span every pool block
    groups = groups_per_split(datalist)
    pool = groups["training"] | groups["unlabeled"]
    assert not pool & groups["validation"] and not pool & groups["test"] and not groups["validation"] & groups["test"]
    assert datalist["options"]["labeled_draw"] == "frames" and groups["training"] == pool
    assert f"labelled images span {len(pool)} of the training pool's {len(pool)} groups" in result.stdout
    assert sorted(int(e["name"]) for e in datalist["test"]) == list(range(4500, 4800))
    for entry in all_entries(datalist):
        start = int(entry["name"]) // 50 * 50
        assert entry["group"] == f"{start:05d}-{start + 49:05d}"
    pool = 1056 - 300 - len(datalist["validation"])
    assert len(datalist["training"]) >= round_half_up(0.1 * pool)
    label = read_png(out / datalist["training"][0]["label"])
    assert label.shape == (256, 256) and set(np.unique(label)) <= {0, 1, 2}


@needs_psfhs
def test_psfhs_hidden_unlabelled_masks_are_not_written(psfhs_cli: tuple[Path, subprocess.CompletedProcess]) -> None:
    out = psfhs_cli[0]
    datalist = json.loads((out / "datalist.json").read_text())
    assert datalist["unlabeled"], "no unlabelled images"
    assert all(set(e) >= {"image", "group", "name"} and "label" not in e for e in datalist["unlabeled"])
    written = {p.stem for p in (out / "labels").glob("*.png")}
    assert not written & {e["name"] for e in datalist["unlabeled"]}
    assert len(written) == sum(len(datalist[s]) for s in ("training", "validation", "test"))
    assert len(list((out / "images").glob("*.png"))) == 1056


def test_psfhs_mha_release_layout(tmp_path: Path) -> None:
    """Three-channel greyscale .mha images become one-channel PNGs; labels 0/1/2 are kept."""
    rng = np.random.default_rng(1)
    for file_id in range(3744, 3750):
        grey = rng.integers(0, 256, (40, 48), dtype=np.uint8)
        (tmp_path / "src" / "image_mha").mkdir(parents=True, exist_ok=True)
        (tmp_path / "src" / "label_mha").mkdir(parents=True, exist_ok=True)
        three_channels = sitk.GetImageFromArray(np.stack([grey] * 3, -1), isVector=True)
        sitk.WriteImage(three_channels, str(tmp_path / "src" / "image_mha" / f"{file_id:05d}.mha"))
        label = np.zeros((40, 48), np.uint8)
        label[5:10, 5:10], label[20:30, 20:40] = 1, 2
        sitk.WriteImage(sitk.GetImageFromArray(label), str(tmp_path / "src" / "label_mha" / f"{file_id:05d}.mha"))
    options = dict(block_size=2, val_fraction=0, test_fraction=0, progress=False, quiet=True)
    prepare("psfhs", tmp_path / "src", tmp_path / "out", **options)
    datalist = load_datalist(tmp_path / "out" / "datalist.json")
    entry = next(e for e in datalist["training"] if e["name"] == "03744")
    assert entry["group"] == "03744-03745"
    image = read_png(Path(entry["image"]))
    assert image.shape == (40, 48) and image.ndim == 2
    assert set(np.unique(read_png(Path(entry["label"])))) == {0, 1, 2}


# ----------------------------------------------------------------------------- ACOUSLIC-AI (synthetic .mha)


def write_sweep(root: Path, case: str, frames: int, foreground: list[int], value: int = 1) -> None:
    """A synthetic sweep: (frames, 30, 40) uint8 stack with spacing 0.28 x 0.3 mm, and its mask."""
    image = np.random.default_rng(len(case)).integers(0, 256, (frames, 30, 40), dtype=np.uint8)
    mask = np.zeros_like(image)
    for index, frame in enumerate(foreground):
        mask[frame, 10:20, 10:25] = value if index % 2 == 0 else 2
    for array, folder in ((image, "images/stacked_fetal_ultrasound"), (mask, "masks/stacked_fetal_abdomen")):
        (root / folder).mkdir(parents=True, exist_ok=True)
        volume = sitk.GetImageFromArray(array)
        volume.SetSpacing((0.28, 0.3, 1.0))
        sitk.WriteImage(volume, str(root / folder / f"{case}.mha"), True)


def test_acouslic_frames_from_synthetic_sweeps(tmp_path: Path) -> None:
    source = tmp_path / "acouslic"
    cases = {"case_a": [3, 4, 5], "case_b": [0, 7], "case_c": [2], "case_d": [8, 9]}
    for case, foreground in cases.items():
        write_sweep(source, case, frames=12, foreground=foreground)
    summary = prepare(
        "acouslic", source, tmp_path / "out", background_per_case=2, val_fraction=0.25, test_fraction=0.25,
        seed=5, progress=False, quiet=True,
    )  # fmt: skip
    datalist = load_datalist(tmp_path / "out")
    entries = all_entries(datalist)
    assert datalist["num_classes"] == 3 and summary["total_images"] == len(entries) == 8 + 4 * 2
    assert_groups_disjoint(datalist)
    for case, foreground in cases.items():
        frames = sorted(e["frame"] for e in entries if e["group"] == case)
        assert set(foreground) <= set(frames) and len(frames) == len(foreground) + 2
    for entry in entries:
        assert entry["name"] == f"{entry['group']}_{entry['frame']:04d}"
        assert entry["spacing"] == pytest.approx([0.28, 0.3])
        label = read_png(Path(entry["label"]))
        assert label.shape == (30, 40) and read_png(Path(entry["image"])).shape == (30, 40)
        assert label.any() == (entry["frame"] in cases[entry["group"]])
    assert {int(v) for e in entries for v in np.unique(read_png(Path(e["label"])))} == {0, 1, 2}
    # the same seed draws the same background frames; binarize merges suboptimal into 1
    prepare("acouslic", source, tmp_path / "bin", background_per_case=2, binarize=True, val_fraction=0.25,
            test_fraction=0.25, seed=5, progress=False, quiet=True)  # fmt: skip
    binarized = load_datalist(tmp_path / "bin")
    assert binarized["num_classes"] == 2 and binarized["labels"] == {"background": 0, "abdomen": 1}
    assert sorted(e["name"] for e in all_entries(binarized)) == sorted(e["name"] for e in entries)
    assert {int(v) for e in all_entries(binarized) for v in np.unique(read_png(Path(e["label"])))} == {0, 1}


def test_acouslic_flat_layout_and_size_mismatch(tmp_path: Path) -> None:
    source = tmp_path / "flat"
    for folder, shape in (("images", (4, 30, 40)), ("masks", (4, 30, 41))):
        (source / folder).mkdir(parents=True)
        sitk.WriteImage(sitk.GetImageFromArray(np.zeros(shape, np.uint8)), str(source / folder / "c1.mha"))
    with pytest.raises(DataValidationError, match=r"masks/c1\.mha: size 41x30x4 differs from image 40x30x4"):
        prepare("acouslic", source, tmp_path / "out", progress=False, quiet=True)


# ----------------------------------------------------------------------------- folder kind, conversions


def test_folder_kind_conversions_label_map_and_nifti(tmp_path: Path) -> None:
    source = tmp_path / "src"
    image16 = (np.arange(20 * 30, dtype=np.uint16).reshape(20, 30) * 100).astype(np.uint16)
    save_png(source / "images" / "p1_a.png", image16)
    rgb = np.zeros((20, 30, 3), np.uint8)
    rgb[..., 0] = 200
    save_png(source / "images" / "p2_a.png", rgb)
    save_png(source / "images" / "p3_a.png", np.full((20, 30, 3), 77, np.uint8))  # 3-channel greyscale
    mask = np.zeros((20, 30), np.uint8)
    mask[5:10, 5:10] = 255
    for name in ("p1_a", "p2_a", "p3_a"):
        save_png(source / "labels" / f"{name}_mask.png", mask)
    volume = sitk.GetImageFromArray(np.full((20, 30), 9, np.int16))
    volume.SetSpacing((0.2, 0.25))
    sitk.WriteImage(volume, str(source / "images" / "p4_a.nii.gz"))
    sitk.WriteImage(sitk.GetImageFromArray(mask), str(source / "labels" / "p4_a_mask.nii.gz"))
    dicom = sitk.GetImageFromArray(np.full((20, 30), 120, np.uint8))
    dicom.SetSpacing((0.3, 0.3))
    sitk.WriteImage(dicom, str(source / "images" / "p5_a.dcm"))
    save_png(source / "labels" / "p5_a_mask.png", mask)
    from PIL import Image

    Image.fromarray(np.full((20, 30), 60, np.uint8)).save(source / "images" / "p6_a.gif")  # palette GIF
    Image.fromarray(np.full((20, 30), 90, np.uint8)).save(source / "images" / "p7_a.webp", lossless=True)
    for name in ("p6_a", "p7_a"):
        save_png(source / "labels" / f"{name}_mask.png", mask)
    summary = prepare(
        "folder", source, tmp_path / "out", label_map="255:1", label_suffix="_mask", group_regex=r"^(p\d)_",
        val_fraction=0, test_fraction=0, progress=False, quiet=True,
    )  # fmt: skip
    datalist = load_datalist(tmp_path / "out")
    by_name = {e["name"]: e for e in all_entries(datalist)}
    assert {e["group"] for e in by_name.values()} == {"p1", "p2", "p3", "p4", "p5", "p6", "p7"}
    assert np.all(read_png(Path(by_name["p6_a"]["image"])) == 60)
    assert np.all(read_png(Path(by_name["p7_a"]["image"])) == 90)
    assert by_name["p5_a"]["spacing"] == pytest.approx([0.3, 0.3]) and "spacing" not in by_name["p1_a"]
    assert np.all(read_png(Path(by_name["p5_a"]["image"])) == 120)
    converted = read_png(Path(by_name["p1_a"]["image"]))
    assert converted.dtype == np.uint8 and converted.min() == 0 and converted.max() == 255
    assert read_png(Path(by_name["p2_a"]["image"])).ndim == 2
    assert np.all(read_png(Path(by_name["p3_a"]["image"])) == 77)
    assert set(np.unique(read_png(Path(by_name["p1_a"]["label"])))) == {0, 1}
    assert summary["conversions"]["16-bit/float image rescaled to 8 bit (per-image min to max)"] == 1
    assert summary["conversions"]["colour image converted to greyscale (luminance)"] == 1
    nifti = by_name["p4_a"]
    assert nifti["image"].endswith("images/p4_a.nii.gz") and nifti["label"].endswith("labels/p4_a.nii.gz")
    assert nifti["spacing"] == pytest.approx([0.2, 0.25])
    written = sitk.ReadImage(nifti["image"])
    assert written.GetSpacing() == pytest.approx((0.2, 0.25)) and np.all(sitk.GetArrayFromImage(written) == 9)
    assert set(np.unique(sitk.GetArrayFromImage(sitk.ReadImage(nifti["label"])))) == {0, 1}


# ----------------------------------------------------------------------------- broken inputs


def _break_unreadable(source: Path) -> None:
    (source / "images" / "s01_0.png").write_bytes(b"this is not a png file at all")


def _break_empty(source: Path) -> None:
    (source / "labels" / "s01_0.png").write_bytes(b"")


def _break_size(source: Path) -> None:
    save_png(source / "labels" / "s01_0.png", np.zeros((32, 24), np.uint8))


def _break_label_range(source: Path) -> None:
    save_png(source / "labels" / "s01_0.png", np.full((24, 32), 7, np.uint8))


def _break_missing_mask(source: Path) -> None:
    (source / "labels" / "s01_0.png").unlink()


def _break_missing_image(source: Path) -> None:
    (source / "images" / "s01_0.png").unlink()


def _break_duplicate(source: Path) -> None:
    Image.open(source / "images" / "s01_0.png").save(source / "images" / "s01_0.bmp")


BROKEN_CASES = {
    "unreadable": (_break_unreadable, r"images/s01_0\.png: cannot read \("),
    "zero-byte": (_break_empty, r"labels/s01_0\.png: empty file \(0 bytes\)"),
    "size-mismatch": (_break_size, r"labels/s01_0\.png: size 24x32 differs from image 32x24"),
    "label-range": (_break_label_range, r"labels/s01_0\.png: label values \[7\] outside the declared classes 0\.\.1"),
    "missing-mask": (_break_missing_mask, r"images/s01_0\.png: no mask found \(expected labels/s01_0\.\*\)"),
    "missing-image": (_break_missing_image, r"labels/s01_0\.png: mask without an image"),
    "duplicate-name": (_break_duplicate, r"images/s01_0\.bmp: duplicate name 's01_0' \(also images/s01_0\.png\)"),
}


@pytest.mark.parametrize("case", sorted(BROKEN_CASES))
def test_broken_input_gives_clear_error_and_writes_nothing(tmp_path: Path, case: str) -> None:
    source = make_folder_dataset(tmp_path / "src")
    breaker, message = BROKEN_CASES[case]
    breaker(source)
    out = tmp_path / "out"
    with pytest.raises(DataValidationError, match=message) as caught:
        prepare("folder", source, out, **FOLDER_OPTIONS)
    assert isinstance(caught.value, ValueError) and len(caught.value.problems) >= 1
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["src"]


def test_all_problems_listed_at_once(tmp_path: Path) -> None:
    source = make_folder_dataset(tmp_path / "src")
    _break_size(source)
    (source / "labels" / "s02_1.png").write_bytes(b"")
    save_png(source / "labels" / "s03_0.png", np.full((24, 32), 2, np.uint8))
    with pytest.raises(DataValidationError) as caught:
        prepare("folder", source, tmp_path / "out", **FOLDER_OPTIONS)
    files = sorted(p.file for p in caught.value.problems)
    assert files == ["labels/s01_0.png", "labels/s02_1.png", "labels/s03_0.png"]
    assert all(f in str(caught.value) for f in files)


def test_skip_invalid_reports_and_prepares_the_rest(tmp_path: Path) -> None:
    source = make_folder_dataset(tmp_path / "src")
    _break_size(source)
    _break_missing_mask_of = source / "labels" / "s02_1.png"
    _break_missing_mask_of.unlink()
    out = tmp_path / "out"
    summary = prepare("folder", source, out, skip_invalid=True, **FOLDER_OPTIONS)
    skipped = json.loads((out / "skipped.json").read_text())
    assert sorted(s["file"] for s in skipped) == ["images/s02_1.png", "labels/s01_0.png"]
    assert all(s["problem"] for s in skipped)
    assert summary["skipped"] == 2 and summary["total_images"] == 10
    names = {e["name"] for e in all_entries(json.loads((out / "datalist.json").read_text()))}
    assert "s01_0" not in names and "s02_1" not in names and len(names) == 10


def test_existing_output_is_kept_unless_overwrite(tmp_path: Path) -> None:
    source = make_folder_dataset(tmp_path / "src")
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("previous result")
    with pytest.raises(FileExistsError, match="--overwrite"):
        prepare("folder", source, out, **FOLDER_OPTIONS)
    _break_size(source)
    with pytest.raises(DataValidationError):
        prepare("folder", source, out, overwrite=True, **FOLDER_OPTIONS)
    assert [p.name for p in out.iterdir()] == ["keep.txt"], "a failed run must leave --out untouched"
    make_folder_dataset(source)  # repair
    prepare("folder", source, out, overwrite=True, **FOLDER_OPTIONS)
    assert not (out / "keep.txt").exists() and (out / "datalist.json").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "src"]


# ----------------------------------------------------------------------------- splits


def test_split_is_deterministic_for_a_seed(tmp_path: Path) -> None:
    source = make_folder_dataset(tmp_path / "src", groups=20, per_group=2, size=(8, 8))
    options = dict(FOLDER_OPTIONS, labeled_fraction=0.25)
    prepare("folder", source, tmp_path / "a", seed=7, **options)
    prepare("folder", source, tmp_path / "b", seed=7, **options)
    prepare("folder", source, tmp_path / "c", seed=8, **options)
    first, second, other = (json.loads((tmp_path / d / "datalist.json").read_text()) for d in "abc")
    assert {s: first[s] for s in SPLIT_NAMES} == {s: second[s] for s in SPLIT_NAMES}
    assert groups_per_split(first) != groups_per_split(other)
    assert_groups_disjoint(first)
    assert len(first["training"]) == round_half_up(0.25 * (40 - 8 - 8)) == 6
    assert all(len(first[s]) == 8 for s in ("validation", "test"))


def test_labelled_count_reaches_the_target_in_images() -> None:
    sizes = {"a": 3, "b": 1, "c": 2, "d": 1, "e": 5, "f": 1, "g": 2}
    for seed in range(10):
        plan = SplitPlan(labeled_count=4, val_fraction=0.0, test_fraction=0.0, seed=seed)
        split = split_groups(sizes, plan)
        assert sum(sizes[g] for g in split["training"]) == 4
        assert set(split["training"]) | set(split["unlabeled"]) == set(sizes)


def test_fraction_selecting_no_image_is_an_error_naming_the_numbers(tmp_path: Path) -> None:
    expected = r"--labeled-fraction 0\.01 of 8 training-pool images selects round\(0\.08\) = 0"
    with pytest.raises(SplitError, match=expected):
        split_groups({f"g{i}": 1 for i in range(10)}, SplitPlan(labeled_fraction=0.01, seed=0))
    source = make_folder_dataset(tmp_path / "src")
    with pytest.raises(SplitError, match="selects"):
        prepare("folder", source, tmp_path / "out", labeled_fraction=0.01, **FOLDER_OPTIONS)
    assert not (tmp_path / "out").exists()


def test_bad_options_fail_before_reading_or_writing(tmp_path: Path) -> None:
    source = make_folder_dataset(tmp_path / "src")
    with pytest.raises(SplitError, match="leave no training images"):
        prepare("folder", source, tmp_path / "out", **dict(FOLDER_OPTIONS, val_fraction=0.5, test_fraction=0.5))
    with pytest.raises(SplitError, match="not both"):
        prepare("folder", source, tmp_path / "out", labeled_fraction=0.5, labeled_count=2, **FOLDER_OPTIONS)
    with pytest.raises(ValueError, match="must not be the source or contain it"):
        prepare("folder", source, tmp_path, overwrite=True, **FOLDER_OPTIONS)
    with pytest.raises(ValueError, match="unknown source kind"):
        prepare("nosuchkind", source, tmp_path / "out", **FOLDER_OPTIONS)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src"]


def test_explicit_test_groups(tmp_path: Path) -> None:
    source = make_folder_dataset(tmp_path / "src")
    options = dict(FOLDER_OPTIONS, test_fraction=None)
    prepare("folder", source, tmp_path / "out", test_groups="s01,s04", **options)
    datalist = load_datalist(tmp_path / "out")
    assert groups_per_split(datalist)["test"] == {"s01", "s04"} and len(datalist["test"]) == 4
    with pytest.raises(SplitError, match="'s99' is not in the data"):
        prepare("folder", source, tmp_path / "out2", test_groups=["s99"], **options)


def test_limit_keeps_the_first_samples_by_name(tmp_path: Path) -> None:
    source = make_folder_dataset(tmp_path / "src")
    summary = prepare("folder", source, tmp_path / "out", limit=5, **dict(FOLDER_OPTIONS, test_fraction=0))
    names = sorted(e["name"] for e in all_entries(load_datalist(tmp_path / "out")))
    assert summary["total_images"] == 5 and names == ["s00_0", "s00_1", "s01_0", "s01_1", "s02_0"]


def test_load_datalist_makes_paths_absolute(tmp_path: Path) -> None:
    source = make_folder_dataset(tmp_path / "src")
    prepare("folder", source, tmp_path / "out", **FOLDER_OPTIONS)
    raw = json.loads((tmp_path / "out" / "datalist.json").read_text())
    loaded = load_datalist(tmp_path / "out" / "datalist.json")
    for split in SPLIT_NAMES:
        for plain, absolute in zip(raw[split], loaded[split]):
            assert Path(absolute["image"]) == (tmp_path / "out" / plain["image"]).resolve()
            assert Path(absolute["image"]).is_file() and Path(absolute["label"]).is_file()
    assert loaded["labels"] == {"background": 0, "class_1": 1}


@needs_psfhs
def test_psfhs_labeled_every_labels_exactly_the_ids_divisible_by_n(tmp_path: Path) -> None:
    """The issue-10 protocol's split: labelled = pool ids divisible by 20, whatever their block."""
    out = tmp_path / "every20"
    prepare(
        "psfhs",
        PSFHS_DIR,
        out,
        labeled_every=20,
        test_ids="4500-4799",
        val_fraction=0.05,
        seed=0,
        progress=False,
        quiet=True,
    )
    datalist = load_datalist(out)
    ids = {split: {int(Path(e["image"]).stem) for e in datalist[split]} for split in SPLITS}
    held_out = ids["test"] | ids["validation"]
    pool = ids["training"] | ids["unlabeled"]
    assert ids["training"] and all(i % 20 == 0 for i in ids["training"])
    assert not any(i % 20 == 0 for i in ids["unlabeled"])
    assert ids["test"] == {i for i in held_out | pool if 4500 <= i <= 4799}
    assert not pool & held_out and not ids["test"] & ids["validation"]
    # frames of one video block are labelled and unlabelled; the held-out splits stay whole blocks
    assert {i // 50 for i in ids["training"]} & {i // 50 for i in ids["unlabeled"]}
    assert not {i // 50 for i in held_out} & {i // 50 for i in pool}
    with pytest.raises(SplitError, match="not several"):
        prepare("psfhs", PSFHS_DIR, tmp_path / "x", labeled_every=20, labeled_fraction=0.05, progress=False, quiet=True)


@needs_hc18
def test_later_pregnancy_frames_as_a_test_list_and_as_unlabelled_frames(
    hc18_prepared: tuple[Path, dict], tmp_path: Path
) -> None:
    """Issue 32: hc18_late's subjects 650-699 as a test list (spacing and reference HC per frame),
    its subjects 600-649 as unlabelled frames; an HC18 id range selects subjects (``650_2HC``)."""
    import csv
    import shutil

    from custom.data.extra import read_extra_images
    from custom.data.held_out_lists import add_test_list

    late = HC18_DIR.parent / "hc18_late"
    if not late.is_dir():
        pytest.skip(f"shared data {late} is absent")
    out = tmp_path / "prepared"
    shutil.copytree(hc18_prepared[0], out)
    with (late / "pixel_size_and_hc.csv").open() as f:
        rows = {r["filename"]: r for r in csv.DictReader(f)}
    expected = {n for n in rows if 650 <= int(n.split("_")[0]) <= 699}
    assert add_test_list(out, "late", late, kind="hc18", ids="650-699", progress=False) == len(expected)
    doc = json.loads((out / "datalist.json").read_text())
    entries = doc["test_late"]
    assert {Path(e["image"]).name for e in entries} == expected
    for e in entries:
        row = rows[Path(e["image"]).name]
        assert e["hc_mm"] == pytest.approx(float(row["head circumference (mm)"]))
        assert e["spacing"][0] == pytest.approx(float(row["pixel size(mm)"]))
    extra = read_extra_images(late / "images", "600-649", [], progress=False)
    assert extra.images and all(600 <= int(name.split("_")[0]) <= 649 for name in extra.images)
    assert not any("Annotation" in name for name in extra.images)
