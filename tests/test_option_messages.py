"""Issue 33 item 4: each bad value is refused in one line that names the option the user typed,
before anything is written."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from custom.utils.cli import OptionError


@pytest.fixture
def dataset(demo_dataset, tmp_path) -> Path:
    copy = tmp_path / "data"
    shutil.copytree(demo_dataset, copy)
    doc = json.loads((copy / "datalist.json").read_text())
    doc["test"], doc["validation"] = doc["validation"][:2], doc["validation"][2:]  # a test list to shift
    (copy / "datalist.json").write_text(json.dumps(doc))
    return copy


def _lists(dataset: Path) -> set[str]:
    return {k for k, v in json.loads((dataset / "datalist.json").read_text()).items() if isinstance(v, list)}


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"seed": "abc"}, "--seed: expected an integer within 0..4294967295, got 'abc'"),
        ({"seed": -1}, "--seed: expected an integer within 0..4294967295, got -1"),
        ({"kinds": "zoom_out,zoom_out"}, "--kinds zoom_out,zoom_out: zoom_out given twice"),
    ],
)
def test_shift_names_its_option(dataset, kwargs, message):
    from custom.data.held_out_lists import add_shifted_lists

    before = _lists(dataset)
    with pytest.raises(ValueError) as e:
        add_shifted_lists(dataset, **{"kinds": "zoom_out", "progress": False, **kwargs})
    assert message in str(e.value) and "\n" not in str(e.value)
    assert _lists(dataset) == before  # nothing written


@pytest.mark.parametrize("ids", ["abc", "4799-4500"])
def test_add_test_ids_are_reported_as_ids(dataset, tmp_path, ids):
    from custom.data.held_out_lists import add_test_list

    with pytest.raises(OptionError, match=rf"^--ids '{ids}': '{ids}' is not an id or an id range"):
        add_test_list(dataset, "site2", dataset, kind="folder", ids=ids, progress=False)


def test_unlabeled_extra_ids_are_reported_as_such(tmp_path):
    from custom.data.extra import read_extra_images

    (tmp_path / "x.png").write_bytes(b"")
    with pytest.raises(OptionError, match=r"^--unlabeled-extra-ids 'abc'"):
        read_extra_images(tmp_path, "abc", [], progress=False)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"seeds": "abc"}, "--seeds: expected an integer within 0..4294967295, got 'abc'"),
        ({"max_iterations": "abc"}, "--max-iterations: expected a positive integer, got 'abc'"),
        ({"override": "LIST"}, "holds list, where a mapping of config keys to values is expected"),
        ({"override": "MISSING"}, "MISSING.yaml: file not found"),
    ],
)
def test_compare_names_its_option(dataset, tmp_path, kwargs, message):
    from custom.tools.compare import run_comparison

    listed = tmp_path / "LIST.yaml"
    listed.write_text("- a\n- b\n")
    if "override" in kwargs:
        kwargs = {"override": str(tmp_path / f"{kwargs['override']}.yaml")}
    with pytest.raises((ValueError, FileNotFoundError)) as e:
        run_comparison(
            str(dataset), methods="bcp", **{"seeds": 0, "out": str(tmp_path / "out"), "progress": False, **kwargs}
        )
    assert message in str(e.value) and "\n" not in str(e.value)
    assert not (tmp_path / "out" / "runs").exists()  # nothing trained
