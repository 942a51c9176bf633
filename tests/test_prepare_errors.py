"""``python -m custom.data prepare``: bad options and paths end with one ``error:`` line (status 2),
never a traceback, and write nothing."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from conftest import REPO
from PIL import Image

from custom.data.__main__ import _prepare_command
from custom.data.datalist import DatalistError, load_split, read_datalist_file


@pytest.fixture
def source(tmp_path):
    src = tmp_path / "src"
    (src / "images").mkdir(parents=True)
    (src / "labels").mkdir()
    for i in range(4):
        image = np.full((32, 32), 40 * i, np.uint8)
        mask = np.zeros((32, 32), np.uint8)
        mask[8:20, 8:20] = 1
        Image.fromarray(image).save(src / "images" / f"c{i}.png")
        Image.fromarray(mask).save(src / "labels" / f"c{i}.png")
    return src


def _one_line(capsys, *args, **kwargs) -> str:
    with pytest.raises(SystemExit) as exit_:
        _prepare_command(*args, **kwargs)
    err = capsys.readouterr().err.strip()
    assert exit_.value.code == 2 and err.startswith("error: ") and "\n" not in err and "Traceback" not in err, err
    return err


@pytest.mark.parametrize(
    "kind,options,expected",
    [
        ("folder", {"out": "SRC"}, "--out"),
        ("folder", {"label_map": "255:abc"}, "--label-map '255:abc'"),
        ("folder", {"num_classes": 1}, "--num-classes"),
        ("folder", {"num_classes": "abc"}, "--num-classes"),
        ("bogus", {}, "unknown source kind 'bogus'"),
        ("folder", {"seed": -1}, "--seed"),
        ("folder", {"seed": "abc"}, "--seed"),
        ("folder", {"test_ids": "4-x"}, "--test-ids"),
    ],
)
def test_bad_prepare_options_are_one_line(source, tmp_path, capsys, kind, options, expected):
    out = tmp_path / "out"
    options = {k: (str(source) if v == "SRC" else v) for k, v in options.items()}
    kwargs = {"out": str(out), "progress": False, **options}
    err = _one_line(capsys, kind, source=str(source), **kwargs)
    assert expected in err, err
    assert not out.exists()
    assert sorted(p.name for p in source.iterdir()) == ["images", "labels"]  # the source is untouched


def test_the_command_line_itself_prints_one_line(source, tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "custom.data", "prepare", "folder", "--source", str(source), "--out", str(source)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 2 and proc.stderr.strip().startswith("error: --out"), proc.stderr
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, proc.stderr


def test_a_deeply_nested_or_folder_datalist_is_one_line_naming_it(tmp_path):
    deep = tmp_path / "deep.json"
    deep.write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(DatalistError, match="nested too deeply") as err:
        read_datalist_file(deep)
    assert str(deep) in str(err.value)
    with pytest.raises(DatalistError, match="nested too deeply"):
        load_split(deep, "training")
    folder = tmp_path / "not_a_datalist"
    folder.mkdir()
    for reader in (read_datalist_file, lambda p: load_split(p, "training")):
        with pytest.raises((DatalistError, FileNotFoundError)) as err:
            reader(folder)
        assert f"{folder} is a folder" in str(err.value) and "datalist.json" in str(err.value), str(err.value)


def test_a_good_call_still_prepares(source, tmp_path):
    _prepare_command("folder", source=str(source), out=str(tmp_path / "out"), val_fraction=0.25,
                     test_fraction=0.25, seed="3", progress=False, quiet=True)
    doc = json.loads((tmp_path / "out" / "datalist.json").read_text())
    assert sum(len(doc.get(k, [])) for k in ("training", "unlabeled", "validation", "test")) == 4
