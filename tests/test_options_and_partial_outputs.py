"""Boolean options, atomic
writes, per-file reading in inference, output folders, datalist schema, leftovers, header
size limits. Tiny synthetic inputs in ``tmp_path``; seconds on 2 cores."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import train_config_files
from PIL import Image

from custom.utils.cli import OptionError, parse_bool


def save_png(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def folder_source(root: Path, groups: int = 5, size: tuple[int, int] = (16, 20)) -> Path:
    """images/sNN.png + labels/sNN.png (0/1), one image per group."""
    rng = np.random.default_rng(0)
    for g in range(groups):
        save_png(root / "images" / f"s{g:02d}.png", rng.integers(0, 256, size, dtype=np.uint8))
        mask = np.zeros(size, np.uint8)
        mask[3:9, 4 : 10 + g] = 1
        save_png(root / "labels" / f"s{g:02d}.png", mask)
    return root


def run_main(main, argv: list[str], monkeypatch) -> int:
    """Run a command-line ``main()`` with ``argv``; returns its exit status (0 when it returns)."""
    monkeypatch.setattr(sys, "argv", argv)
    try:
        main()
    except SystemExit as exit_:
        return int(exit_.code or 0)
    return 0


PREPARE = [
    "custom.data",
    "prepare",
    "folder",
    "--group-regex",
    r"^(s\d+)",
    "--val-fraction",
    "0.2",
    "--test-fraction",
    "0.2",
    "--progress",
    "false",
    "--quiet",
    "true",
]


# ----------------------------------------------------------------------------- item 4: booleans


@pytest.mark.parametrize(
    "value,expected",
    [
        (True, True),
        (False, False),
        (1, True),
        (0, False),
        ("true", True),
        ("FALSE", False),
        ("Yes", True),
        ("no", False),
        ("1", True),
        ("0", False),
        (" off ", False),
        ("ON", True),
    ],
)
def test_parse_bool_accepts_the_usual_spellings(value, expected) -> None:
    assert parse_bool(value, "flag") is expected


@pytest.mark.parametrize("value", ["maybe", "", "2", 2, None, 0.5, "tru"])
def test_parse_bool_refuses_anything_else_by_name(value) -> None:
    with pytest.raises(OptionError, match=r"^--overwrite: expected true or false"):
        parse_bool(value, "overwrite")


def test_prepare_overwrite_false_keeps_the_existing_output(tmp_path: Path, monkeypatch, capsys) -> None:
    from custom.data.__main__ import main

    source = folder_source(tmp_path / "src")
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("previous result")
    status = run_main(main, PREPARE + ["--source", str(source), "--out", str(out), "--overwrite", "false"], monkeypatch)
    err = capsys.readouterr().err
    assert status == 2 and "--overwrite" in err and "Traceback" not in err
    assert [p.name for p in out.iterdir()] == ["keep.txt"] and (out / "keep.txt").read_text() == "previous result"


def test_prepare_skip_invalid_false_fails_on_an_invalid_pair(tmp_path: Path, monkeypatch, capsys) -> None:
    from custom.data.__main__ import main

    source = folder_source(tmp_path / "src")
    (source / "labels" / "s01.png").write_bytes(b"")
    out = tmp_path / "out"
    status = run_main(
        main, PREPARE + ["--source", str(source), "--out", str(out), "--skip-invalid", "false"], monkeypatch
    )
    err = capsys.readouterr().err
    assert status == 2 and "labels/s01.png: empty file" in err and not out.exists()


@pytest.mark.parametrize("kind,option", [("folder", "--skip-invalid"), ("acouslic", "--binarize")])
def test_prepare_refuses_a_non_boolean_value_by_name(kind: str, option: str, tmp_path: Path, monkeypatch, capsys):
    from custom.data.__main__ import main

    source = folder_source(tmp_path / "src")
    command = ["custom.data", "prepare", kind, "--source", str(source), "--out", str(tmp_path / "out"), option, "maybe"]
    status = run_main(main, command, monkeypatch)
    err = capsys.readouterr().err
    assert status == 2 and err.strip() == f"error: {option}: expected true or false (also 1/0, yes/no), got 'maybe'"
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("kind,option,accepted", [
    ("folder", "--binarize", "--images-subdir, --labels-subdir, --label-suffix, --label-map, --num-classes, "
                             "--class-names, --group-regex"),
    ("psfhs", "--group-regex", "--block-size"),
    ("hc18", "--block-size", "none"),
])
def test_an_option_of_another_kind_is_refused_naming_the_kinds_own(
    kind: str, option: str, accepted: str, tmp_path: Path, monkeypatch, capsys
) -> None:
    """Each kind declares its options (custom.data.sources): one given to a kind that has no use for
    it was silently ignored before; now it is one line, and nothing is written."""
    from custom.data.__main__ import main

    source = folder_source(tmp_path / "src")
    command = ["custom.data", "prepare", kind, "--source", str(source), "--out", str(tmp_path / "out"), option, "2"]
    status = run_main(main, command, monkeypatch)
    err = capsys.readouterr().err
    assert status == 2
    assert err.strip() == f"error: {option}: not an option of kind {kind} (its options: {accepted})"
    assert not (tmp_path / "out").exists()


def test_a_kind_option_is_checked_by_name_before_anything_is_read(tmp_path: Path, monkeypatch, capsys) -> None:
    from custom.data.__main__ import main

    command = ["custom.data", "prepare", "psfhs", "--source", str(tmp_path / "absent"), "--out", str(tmp_path / "out"),
               "--block-size", "0"]
    status = run_main(main, command, monkeypatch)
    assert status == 2 and capsys.readouterr().err.strip() == "error: --block-size: expected a positive integer, got 0"


def test_package_refuses_a_non_boolean_value_by_name(tmp_path: Path, monkeypatch, capsys) -> None:
    from custom.deploy.package import main

    status = run_main(
        main,
        ["custom.deploy.package", "--out", str(tmp_path / "pkg"), "--allow-missing-weights", "perhaps"],
        monkeypatch,
    )
    err = capsys.readouterr().err
    assert status == 2 and err.startswith("error: --allow-missing-weights: expected true or false")
    assert not (tmp_path / "pkg").exists()


def test_bench_json_false_is_not_json() -> None:
    from custom.tools.bench.cli import json_option

    assert json_option(["infer", "--json"]) == (True, ["infer"])
    assert json_option(["infer", "--json", "yes", "--reps", "2"]) == (True, ["infer", "--reps", "2"])
    assert json_option(["--json", "infer"]) == (True, ["infer"]) and json_option(["--json=1"]) == (True, [])
    assert json_option(["infer", "--json", "false"]) == (False, ["infer"])
    assert json_option(["infer", "--json=No"]) == (False, ["infer"]) and json_option(["infer"]) == (False, ["infer"])
    with pytest.raises(OptionError, match="--json"):
        json_option(["infer", "--json", "maybe"])


def test_bundle_booleans_from_the_command_line_are_parsed(tmp_path: Path) -> None:
    """``monai.bundle run ... --resume false`` hands the config the string 'false'."""
    from custom.deploy.inference import InputScreen, SaveMaskd
    from custom.training.checkpoint import TrainingStateSaver

    assert TrainingStateSaver(str(tmp_path), {}, resume="false").resume is False
    assert TrainingStateSaver(str(tmp_path), {}, resume="True").resume is True
    screen = InputScreen(str(tmp_path), overwrite="false", fail_on_bad_input="no")
    assert screen.overwrite is False and screen.fail_on_bad_input is False
    saver = SaveMaskd("pred", str(tmp_path), overwrite="0", overlay="false")
    assert saver.overwrite is False and saver.overlay is False
    with pytest.raises(OptionError, match="--resume"):
        TrainingStateSaver(str(tmp_path), {}, resume="sometimes")


def test_inference_config_disables_the_disagreement_for_with_disagreement_false() -> None:
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(
        [str(Path(__file__).resolve().parents[1] / "bundle" / "configs" / f) for f in ("common.yaml", "inference.yaml")]
    )
    parser["with_disagreement"] = "false"
    handlers = parser.get("handlers")
    disabled = [h for h in handlers if isinstance(h, dict) and "_disabled_" in h]
    assert disabled and all(
        parser.get_parsed_content(f"handlers#{handlers.index(h)}#_disabled_") is True for h in disabled
    )


@pytest.mark.parametrize("value, disabled", [("false", True), ("true", False), ("0", True), ("yes", False)])
def test_train_config_booleans_from_the_command_line_are_parsed(value, disabled) -> None:
    """``--validate_transformer false`` switches the Swin-Unet's validation off (the coupling's
    leader, chosen by validation, then stays the UNeXt: the Swin-Unet is never rated)."""
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(train_config_files())
    parser["validate_transformer"] = value
    assert parser.get_parsed_content("transformer_validation#_disabled_") is disabled
    parser["validate_transformer"] = "perhaps"
    with pytest.raises(Exception, match="validate_transformer"):
        parser.get_parsed_content("transformer_validation#_disabled_")


# ----------------------------------------------------------------------------- item 6: atomic writes


def test_atomic_write_keeps_the_old_file_when_the_writer_fails(tmp_path: Path) -> None:
    from custom.utils.atomic import atomic_write, atomic_write_json, atomic_write_text

    target = tmp_path / "summary.json"
    atomic_write_json(target, {"old": 1})

    def half_then_crash(tmp: str) -> None:
        Path(tmp).write_text('{"new": ')
        raise KeyboardInterrupt  # a kill between the first bytes and the end

    with pytest.raises(KeyboardInterrupt):
        atomic_write(target, half_then_crash)
    assert json.loads(target.read_text()) == {"old": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["summary.json"], "no temporary file may stay"
    atomic_write_text(tmp_path / "x.md", "hello")
    assert (tmp_path / "x.md").read_text() == "hello" and (tmp_path / "x.md").stat().st_mode & 0o044 == 0o044


def test_checkpoint_reexports_the_one_atomic_torch_save() -> None:
    import custom.training.checkpoint
    import custom.utils.atomic

    assert custom.training.checkpoint.atomic_torch_save is custom.utils.atomic.atomic_torch_save


def _interrupted_rename(monkeypatch) -> None:
    """Every atomic write dies just before its rename (as a SIGKILL there would)."""
    import custom.utils.atomic

    def killed(*args, **kwargs):
        raise KeyboardInterrupt("killed before the rename")

    monkeypatch.setattr(custom.utils.atomic.os, "replace", killed)


def test_a_kill_while_writing_leaves_no_mask_and_no_report_under_their_names(tmp_path: Path, monkeypatch) -> None:
    import torch
    from monai.data import MetaTensor

    from custom.deploy.inference import SaveMaskd
    from custom.evaluation.evaluate import write_report

    _interrupted_rename(monkeypatch)
    saver = SaveMaskd("pred", str(tmp_path / "inf"))
    mask = MetaTensor(torch.ones(1, 8, 6), meta={"filename_or_obj": "/x/a.png", "spatial_shape": np.array([8, 6])})
    with pytest.raises(KeyboardInterrupt):
        saver({"pred": mask})
    assert not (tmp_path / "inf" / "a_mask.png").exists()
    from custom.evaluation.evaluate import case_record

    gt = np.zeros((8, 8), np.int64)
    gt[2:6, 2:6] = 1
    with pytest.raises(KeyboardInterrupt):
        write_report([case_record(gt, gt, 2, None, "a")], str(tmp_path / "ev"), ["head"])
    assert not any(p.name in ("per_image.csv", "summary.json", "summary.md") for p in (tmp_path / "ev").iterdir())


# ----------------------------------------------------------------------------- items 1, 2, 13: inference masks


def make_dicom(path: Path, array: np.ndarray) -> None:
    """A valid single-frame 8-bit DICOM written with pydicom."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.7"  # secondary capture
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Modality, ds.PatientID = "OT", "synthetic"
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.Rows, ds.Columns = array.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.ImagePositionPatient, ds.ImageOrientationPatient, ds.PixelSpacing = [0, 0, 0], [1, 0, 0, 0, 1, 0], [0.5, 0.5]
    ds.PixelData = np.ascontiguousarray(array, np.uint8).tobytes()
    ds.save_as(str(path), enforce_file_format=True)


def random_model(path: Path, classes: int = 2) -> str:
    import torch

    from custom.networks import UNeXt

    torch.manual_seed(0)
    torch.save(UNeXt(1, classes).state_dict(), path)
    return str(path)


def run_inference(tmp_path: Path, inputs: Path, model: str, **more) -> Path:
    """The bundle's inference.yaml, in this process, at 64 px."""
    from conftest import CONFIGS
    from monai.bundle import run

    out = tmp_path / "out"
    run(
        config_file=[str(CONFIGS / "common.yaml"), str(CONFIGS / "inference.yaml")],
        input_path=str(inputs),
        ckpt_path=model,
        output_dir=str(out),
        image_size=[64, 64],
        num_classes=2,
        **more,
    )
    return out / "inference"


def read_shape(path: Path) -> tuple[int, ...]:
    from monai.transforms import LoadImage

    return tuple(LoadImage(image_only=True)(str(path)).shape)


def test_save_mask_carries_nothing_from_one_file_to_the_next(tmp_path: Path) -> None:
    """MONAI's SaveImage kept the channel_dim it guessed for a file with a 3-entry spatial shape
    (a DICOM read as 64x64x1): that mask and every later PNG's came out 1 x 64 (all zero)."""
    import torch
    from monai.data import MetaTensor

    from custom.deploy.inference import SaveMaskd

    saver = SaveMaskd("pred", str(tmp_path))
    first = MetaTensor(torch.ones(1, 64, 64), meta={"filename_or_obj": "/x/ok.dcm", "spatial_shape": (64, 64, 1)})
    later = MetaTensor(torch.ones(1, 56, 40), meta={"filename_or_obj": "/x/z.png", "spatial_shape": np.array([56, 40])})
    saver({"pred": first})
    saver({"pred": later})
    assert read_shape(tmp_path / "ok_mask.png") == (64, 64) and read_shape(tmp_path / "z_mask.png") == (56, 40)
    assert np.asarray(Image.open(tmp_path / "z_mask.png")).min() == 1


def test_a_dicom_in_the_batch_spoils_nothing_and_a_3d_nifti_keeps_its_axes(tmp_path: Path) -> None:
    import nibabel as nib

    inputs = tmp_path / "in"
    rng = np.random.default_rng(0)
    save_png(inputs / "a.png", rng.integers(0, 256, (40, 56), dtype=np.uint8))
    make_dicom(inputs / "ok.dcm", rng.integers(0, 256, (48, 36), dtype=np.uint8))
    (inputs / "z.png").write_bytes((inputs / "a.png").read_bytes())
    affine = np.diag([0.5, 0.7, 1.0, 1.0])
    nib.save(nib.Nifti1Image((rng.random((64, 64, 1)) * 255).astype(np.float32), affine), str(inputs / "vol.nii.gz"))
    out = run_inference(tmp_path, inputs, random_model(tmp_path / "model.pt"))
    for name in ("a", "ok", "z"):
        source = inputs / (f"{name}.dcm" if name == "ok" else f"{name}.png")
        assert read_shape(out / f"{name}_mask.png") == read_shape(source), name
    assert (out / "a_mask.png").read_bytes() == (out / "z_mask.png").read_bytes()
    nii = nib.load(str(out / "vol_mask.nii.gz"))
    assert nii.shape == (64, 64, 1) and np.allclose(nii.affine, affine)
    assert json.loads((out / "bad_inputs.json").read_text()) == []


def test_an_input_whose_mask_name_is_too_long_is_reported_and_the_rest_written(tmp_path: Path) -> None:
    inputs = tmp_path / "in"
    image = np.random.default_rng(0).integers(0, 256, (20, 24), dtype=np.uint8)
    save_png(inputs / "a.png", image)
    long = inputs / ("L" * 250 + ".png")  # fits; its mask's name (+ "_mask") does not
    save_png(long, image)
    out = run_inference(tmp_path, inputs, random_model(tmp_path / "model.pt"))
    assert (out / "a_mask.png").is_file()
    bad = json.loads((out / "bad_inputs.json").read_text())
    assert [b["file"] for b in bad] == [str(long)] and "File name too long" in bad[0]["reason"]
    assert sorted(p.name for p in out.iterdir()) == ["a_mask.png", "bad_inputs.json"]


# ----------------------------------------------------------------------------- item 3: non-finite checkpoint


def test_a_nan_checkpoint_is_an_error_naming_the_file(tmp_path: Path) -> None:
    import torch

    from custom.networks import UNeXt
    from custom.training.checkpoint import load_network_weights

    net = UNeXt(1, 2)
    state = {k: torch.full_like(v, float("nan")) if v.is_floating_point() else v for k, v in net.state_dict().items()}
    path = tmp_path / "nan.pt"
    torch.save(state, path)
    with pytest.raises(ValueError, match=rf"^{path}: \d+ weight tensor\(s\) hold NaN/Inf values"):
        load_network_weights(UNeXt(1, 2), str(path))


def test_a_non_finite_network_output_stops_inference_naming_the_checkpoint() -> None:
    from types import SimpleNamespace

    import torch
    from monai.data import MetaTensor

    from custom.deploy.inference import FiniteOutputCheck

    image = MetaTensor(torch.zeros(1, 1, 4, 4), meta={"filename_or_obj": ["/x/a.png"]})
    engine = SimpleNamespace(
        state=SimpleNamespace(output={"pred": torch.full((1, 2, 4, 4), float("nan"))}, batch={"image": image})
    )
    with pytest.raises(ValueError, match=r"^/m/model.pt: the network output for /x/a.png holds NaN/Inf"):
        FiniteOutputCheck("/m/model.pt")(engine)
    engine.state.output["pred"] = torch.zeros(1, 2, 4, 4)
    FiniteOutputCheck("/m/model.pt")(engine)


# ----------------------------------------------------------------------------- item 5: the demo's folder


def test_the_demo_refuses_a_folder_it_did_not_write(tmp_path: Path) -> None:
    from custom.data.demo import DEMO_MARKER, ensure_demo_dataset

    prepared = tmp_path / "prepared"
    prepared.mkdir()
    (prepared / "datalist.json").write_text(json.dumps({"training": [{"image": "images/a.png"}]}))
    before = (prepared / "datalist.json").read_bytes()
    with pytest.raises(FileExistsError, match=rf"^dataset_dir {prepared}: not empty and not a demo set"):
        ensure_demo_dataset(str(prepared), n_labeled=1, n_unlabeled=1, n_validation=1, size=16)
    assert (
        sorted(p.name for p in prepared.iterdir()) == ["datalist.json"]
        and (prepared / "datalist.json").read_bytes() == before
    )
    empty = tmp_path / "empty"
    empty.mkdir()
    ensure_demo_dataset(str(empty), n_labeled=1, n_unlabeled=1, n_validation=1, size=16)
    assert (empty / DEMO_MARKER).is_file()
    ensure_demo_dataset(str(empty), n_labeled=2, n_unlabeled=1, n_validation=1, size=16)  # its own set: replaced
    assert len(json.loads((empty / "datalist.json").read_text())["training"]) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty", "prepared"]


# ----------------------------------------------------------------------------- item 7: evaluation output folder


def _report(out: Path, overwrite: bool = False):
    from custom.evaluation.evaluate import SegmentationReport, case_record

    report = SegmentationReport(str(out), num_classes=2, class_names=["head"], n_overlays=0, overwrite=overwrite)
    mask = np.zeros((8, 8), np.int64)
    mask[2:6, 2:6] = 1
    report.rows = [case_record(mask, mask, 2, None, "a")]
    return report


def test_evaluation_refuses_a_non_empty_output_folder_and_replaces_it_whole_with_overwrite(tmp_path: Path) -> None:
    out = tmp_path / "evaluation"
    out.mkdir()
    (out / "worst_old_dice0.100.png").write_bytes(b"old overlay")
    (out / "per_image.csv").write_text("old")
    with pytest.raises(FileExistsError, match=rf"^{out}: the evaluation output folder exists and is not empty"):
        _report(out).check_output_dir()
    with pytest.raises(FileExistsError):
        _report(out).write()
    assert (out / "per_image.csv").read_text() == "old"
    _report(out, overwrite="true").write()
    assert sorted(p.name for p in out.iterdir()) == ["per_image.csv", "summary.json", "summary.md"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["evaluation"], "no staging folder may stay"


# ----------------------------------------------------------------------------- item 14: datalist schema


MALFORMED_DATALISTS = {
    "a list": (b'[{"image": "a.png"}]', r"the top level is a list; expected an object"),
    "string entry": (b'{"test": ["a.png"]}', r"'test' entry 0 is a string; expected an object"),
    "test as a dict": (b'{"test": {"image": "a.png"}}', r"'test' is an object; expected a list of entries"),
    "label null": (b'{"test": [{"image": "a.png", "label": null}]}', r"'test' entry 0 \(a.png\): 'label' is null"),
    "deep nesting": (b"[" * 100_000 + b"]" * 100_000, r"JSON nested too deeply"),
    "utf-16": ('{"test": []}'.encode("utf-16"), r"the datalist is UTF-16 text; save it as UTF-8"),
    "latin-1": ('{"test": [{"image": "\u00e9.png"}]}'.encode("latin-1"), r"the datalist is not UTF-8 text"),
    "image number": (b'{"test": [{"image": 3}]}', r"'test' entry 0: 'image' is a number; expected a file path"),
}


@pytest.mark.parametrize("case", sorted(MALFORMED_DATALISTS))
def test_a_malformed_datalist_is_one_clear_error_for_training_evaluation_and_compare(tmp_path: Path, case: str) -> None:
    from custom.data.datalist import DatalistError, datalist_num_classes, load_split
    from custom.tools.compare import load_test_entries

    content, message = MALFORMED_DATALISTS[case]
    file = tmp_path / "datalist.json"
    file.write_bytes(content)
    pattern = rf"^{file}: {message}"
    with pytest.raises(DatalistError, match=pattern):
        load_split(file, "test")
    with pytest.raises(DatalistError, match=pattern):
        load_test_entries(tmp_path)
    assert datalist_num_classes(file, 3) == 3


# ----------------------------------------------------------------------------- item 15: one clear line each


def test_prepare_bad_group_regex_is_one_line_naming_the_option(tmp_path: Path, monkeypatch, capsys) -> None:
    from custom.data.__main__ import main

    source = folder_source(tmp_path / "src")
    argv = [a if a != r"^(s\d+)" else "(unclosed" for a in PREPARE]
    status = run_main(main, argv + ["--source", str(source), "--out", str(tmp_path / "out")], monkeypatch)
    err = capsys.readouterr().err
    assert status == 2 and err.startswith("error: --group-regex '(unclosed': not a valid regular expression")
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_prepare_reports_folders_and_broken_links_named_like_images(tmp_path: Path) -> None:
    from custom.data import DataValidationError
    from custom.data.prepare import prepare

    source = folder_source(tmp_path / "src")
    (source / "images" / "dir.png").mkdir()
    (source / "images" / "dangling.png").symlink_to(source / "images" / "nothing.png")
    (source / "labels" / "loop.png").symlink_to(source / "labels" / "loop.png")
    with pytest.raises(DataValidationError) as caught:
        prepare("folder", source, tmp_path / "out", group_regex=r"^(s\d+)", progress=False, quiet=True)
    found = {p.file: p.message for p in caught.value.problems}
    assert found["images/dir.png"].startswith("a folder, not an image file")
    assert found["images/dangling.png"].startswith("dangling symbolic link")
    assert found["labels/loop.png"].startswith("symbolic-link loop")


def test_inference_output_path_that_is_a_file_is_named(tmp_path: Path) -> None:
    from custom.deploy.inference import InputScreen

    out = tmp_path / "out"
    out.write_text("a file")
    with pytest.raises(
        FileExistsError, match=rf"^{out}: the inference output folder \(infer_output_dir\) is an existing file$"
    ):
        InputScreen(str(out))([{"image": str(tmp_path / "a.png")}])


@pytest.mark.parametrize(
    "content,reason",
    [
        (b"", r"empty file \(0 bytes\)$"),
        (bytes(range(256)) * 3, r"not a PyTorch checkpoint of plain tensors"),
        (b"hello world garbage", r"not a readable PyTorch checkpoint \("),
    ],
)
def test_unreadable_checkpoints_say_why_and_never_suggest_weights_only_false(tmp_path: Path, content, reason) -> None:
    from custom.training.checkpoint import safe_torch_load

    path = tmp_path / "model.pt"
    path.write_bytes(content)
    with pytest.raises(ValueError, match=rf"^cannot read checkpoint {path}: {reason}") as caught:
        safe_torch_load(str(path))
    assert "weights_only=False" not in str(caught.value) and "\n" not in str(caught.value)


# ----------------------------------------------------------------------------- item 8: leftovers of a kill


def test_leftovers_of_a_killed_run_are_removed_on_the_next_start(tmp_path: Path, caplog) -> None:
    from ignite.engine import Engine

    from custom.data.prepare import prepare
    from custom.training.checkpoint import TrainingStateSaver

    state_dir = tmp_path / "train_state"
    state_dir.mkdir()
    (state_dir / ".tmp_abc123.pt").write_bytes(b"partial")
    (state_dir / "train_state.pt").write_bytes(b"kept")
    with caplog.at_level("WARNING"):
        TrainingStateSaver(str(state_dir), {}, save_interval=0).attach(Engine(lambda e, b: None))
    assert sorted(p.name for p in state_dir.iterdir()) == ["train_state.pt"]
    assert ".tmp_abc123.pt" in caplog.text

    source = folder_source(tmp_path / "src")
    partial = tmp_path / ".out.partial-xyz"
    (partial / "images").mkdir(parents=True)
    previous = tmp_path / ".out.previous-keep"
    previous.mkdir()
    with caplog.at_level("WARNING"):
        prepare(
            "folder",
            source,
            tmp_path / "out",
            group_regex=r"^(s\d+)",
            val_fraction=0.2,
            test_fraction=0.2,
            progress=False,
            quiet=True,
        )
    assert not partial.exists() and previous.is_dir() and (tmp_path / "out" / "datalist.json").is_file()
    assert ".out.partial-xyz" in caplog.text


# ----------------------------------------------------------------------------- item 12: header size limit


def test_a_header_claiming_gigapixels_is_refused_before_reading(tmp_path: Path) -> None:
    import gzip

    import nibabel as nib

    from custom.data import DataValidationError
    from custom.data.preflight import load_channel_first
    from custom.data.prepare import prepare

    source = folder_source(tmp_path / "src", groups=3)
    header = nib.Nifti1Header()
    header.set_data_shape((30000, 30000))
    header.set_data_dtype(np.float32)
    bomb = source / "images" / "s00.nii.gz"
    bomb.write_bytes(gzip.compress(header.binaryblock + b"\0" * 4 + b"\0" * 1000))  # a few kB, claims 3.6 GB
    (source / "images" / "s00.png").unlink()
    with pytest.raises(
        DataValidationError, match=r"images/s00\.nii\.gz: header declares 900,000,000 pixels, more than"
    ):
        prepare("folder", source, tmp_path / "out", group_regex=r"^(s\d+)", progress=False, quiet=True)
    with pytest.raises(ValueError, match=r"^header declares 900,000,000 pixels"):
        load_channel_first(bomb)


# ----------------------------------------------------------------- values no option took

def test_a_stray_value_is_refused_before_the_function_runs() -> None:
    """``without_stray_arguments``: the required positional parameters still bind by position or
    by flag; anything beyond them is refused by name and the function never runs."""
    from custom.utils.cli import without_stray_arguments

    calls = []

    def command(dataset_dir, name, seeds=(0,), max_iterations=None, **more):
        calls.append((dataset_dir, name, seeds, max_iterations, more))

    wrapped = without_stray_arguments(command)
    wrapped("d", "n", seeds=(1, 2), extra=3)
    wrapped("d", name="n")
    assert calls == [("d", "n", (1, 2), None, {"extra": 3}), ("d", "n", (0,), None, {})]
    with pytest.raises(OptionError, match=r"unexpected argument\(s\) 2: give every option as --name VALUE"):
        wrapped("2", dataset_dir="d", name="n")  # what fire hands over for --dataset-dir d --name n --seeds 1 2
    with pytest.raises(OptionError, match=r"unexpected argument\(s\) x"):
        wrapped("d", "n", "x")
    assert len(calls) == 2


@pytest.mark.parametrize(
    "argv",
    [
        ["custom.data", "prepare", "folder", "--source", "{src}", "--out", "{out}", "--labeled-fraction", "0.1",
         "--seed", "3", "4"],
        ["custom.data", "shift", "--dataset-dir", "{out}", "--kinds", "zoom_out", "low_res"],
        ["custom.deploy.package", "--out", "{out}", "--zip", "true", "false"],
        ["custom.deploy.export", "onnx", "--ckpt_dir", "{src}", "--filepath", "{out}/m.onnx", "extra"],
        ["custom.tools.compare", "--dataset-dir", "{src}", "--seeds", "1", "2", "--out", "{out}"],
        ["custom.tools.active_learning", "--dataset-dir", "{src}", "--seeds", "0", "1", "--out", "{out}"],
        ["custom.tools.bench", "train", "--image-size", "64", "128"],
    ],
    ids=["prepare", "shift", "package", "export", "compare", "active_learning", "bench"],
)
def test_every_command_refuses_a_value_no_option_took_in_one_line(argv, tmp_path: Path) -> None:
    """``--seeds 1 2`` or ``--kinds a b``: fire would give the second value to another parameter
    (compare: a 2-iteration run) or run the command and only then fail; instead one line and
    status 2, and nothing is written."""
    import subprocess

    src, out = tmp_path / "src", tmp_path / "out"
    src.mkdir()
    args = [a.format(src=src, out=out) for a in argv]
    done = subprocess.run([sys.executable, "-m", *args], capture_output=True, text=True, timeout=300,
                          cwd=Path(__file__).resolve().parents[1])
    assert done.returncode == 2, done.stdout + done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "unexpected argument(s)" in errors[0], done.stderr
    assert "Traceback" not in done.stderr and not out.exists()


def test_a_full_disk_while_saving_names_the_file(tmp_path: Path, monkeypatch) -> None:
    """Issue 33: torch's writer fails on a full device with a RuntimeError that names no file (an
    OSError without a file name likewise): the error names the file that could not be written, in
    one line, and the previous file stays whole."""
    import errno
    import shutil
    from collections import namedtuple

    import torch

    from custom.utils.atomic import atomic_torch_save, atomic_write_text
    from custom.utils.outputs import os_error_line

    target = tmp_path / "train_state.pt"
    atomic_torch_save({"w": torch.ones(2)}, target)
    before = target.read_bytes()
    usage = namedtuple("usage", "total used free")

    def full_save(obj, f, *a, **k):
        raise RuntimeError("[enforce fail at inline_container.cc:858] . PytorchStreamWriter failed writing file "
                           "data/0: file write failed")

    monkeypatch.setattr(torch, "save", full_save)
    monkeypatch.setattr(shutil, "disk_usage", lambda p: usage(10**9, 10**9, 0))
    with pytest.raises(OSError) as e:
        atomic_torch_save({"w": torch.zeros(2)}, target)
    assert e.value.errno == errno.ENOSPC and e.value.filename == str(target)
    assert os_error_line(e.value).startswith(f"{target}: No space left on device")
    assert target.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["train_state.pt"]

    monkeypatch.setattr(shutil, "disk_usage", lambda p: usage(10**9, 0, 10**9))
    with monkeypatch.context() as m:
        def no_name(*args, **kwargs):
            raise OSError(errno.ENOSPC, "No space left on device")  # as a write() of a full disk raises it

        m.setattr("builtins.open", no_name)
        with pytest.raises(OSError) as e:
            atomic_write_text(tmp_path / "summary.md", "text")
    assert e.value.filename == str(tmp_path / "summary.md")
