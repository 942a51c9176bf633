"""Reliability fixes of issue 15 (what an independent test broke): boolean options, atomic
writes, per-file reading in inference, output folders, datalist schema, leftovers, header
size limits. Tiny synthetic inputs in ``tmp_path``; seconds on 2 cores."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from custom.cli import OptionError, parse_bool


def save_png(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def folder_source(root: Path, groups: int = 5, size: tuple[int, int] = (16, 20)) -> Path:
    """images/sNN.png + labels/sNN.png (0/1), one image per group."""
    rng = np.random.default_rng(0)
    for g in range(groups):
        save_png(root / "images" / f"s{g:02d}.png", rng.integers(0, 256, size, dtype=np.uint8))
        mask = np.zeros(size, np.uint8)
        mask[3:9, 4:10 + g] = 1
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


PREPARE = ["custom.data", "prepare", "folder", "--group-regex", r"^(s\d+)", "--val-fraction", "0.2",
           "--test-fraction", "0.2", "--progress", "false", "--quiet", "true"]


# ----------------------------------------------------------------------------- item 4: booleans


@pytest.mark.parametrize("value,expected", [(True, True), (False, False), (1, True), (0, False), ("true", True),
                                            ("FALSE", False), ("Yes", True), ("no", False), ("1", True), ("0", False),
                                            (" off ", False), ("ON", True)])
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
    status = run_main(main, PREPARE + ["--source", str(source), "--out", str(out), "--skip-invalid", "false"], monkeypatch)
    err = capsys.readouterr().err
    assert status == 2 and "labels/s01.png: empty file" in err and not out.exists()


def test_prepare_refuses_a_non_boolean_value_by_name(tmp_path: Path, monkeypatch, capsys) -> None:
    from custom.data.__main__ import main

    source = folder_source(tmp_path / "src")
    status = run_main(main, PREPARE + ["--source", str(source), "--out", str(tmp_path / "out"), "--binarize", "maybe"],
                      monkeypatch)
    err = capsys.readouterr().err
    assert status == 2 and err.strip() == "error: --binarize: expected true or false (also 1/0, yes/no), got 'maybe'"
    assert not (tmp_path / "out").exists()


def test_package_refuses_a_non_boolean_value_by_name(tmp_path: Path, monkeypatch, capsys) -> None:
    from custom.package import main

    status = run_main(main, ["custom.package", "--out", str(tmp_path / "pkg"), "--allow-missing-weights", "perhaps"],
                      monkeypatch)
    err = capsys.readouterr().err
    assert status == 2 and err.startswith("error: --allow-missing-weights: expected true or false")
    assert not (tmp_path / "pkg").exists()


def test_bench_json_false_is_not_json() -> None:
    from custom.bench import _wants_json

    assert _wants_json(["infer", "--json"]) and _wants_json(["infer", "--json", "yes"]) and _wants_json(["--json=1"])
    assert not _wants_json(["infer", "--json", "false"]) and not _wants_json(["infer", "--json=No"])
    assert not _wants_json(["infer"])


def test_bundle_booleans_from_the_command_line_are_parsed(tmp_path: Path) -> None:
    """``monai.bundle run ... --resume false`` hands the config the string 'false'."""
    from custom.checkpoint import TrainingStateSaver
    from custom.inference import InputScreen, SaveMaskd

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
    parser.read_config([str(Path(__file__).resolve().parents[1] / "bundle" / "configs" / f) for f in
                        ("common.yaml", "inference.yaml")])
    parser["with_disagreement"] = "false"
    handlers = parser.get("handlers")
    disabled = [h for h in handlers if isinstance(h, dict) and "_disabled_" in h]
    assert disabled and all(parser.get_parsed_content(f"handlers#{handlers.index(h)}#_disabled_") is True for h in disabled)
