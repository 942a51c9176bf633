"""Datalist hygiene: entries leaving the dataset folder need an explicit opt-in; an image listed twice
in one list, or in two of training/validation/test, is refused by name."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from PIL import Image

from custom.data.datalist import DatalistError, load_datalist, load_split


@pytest.fixture
def dataset(tmp_path):
    root = tmp_path / "data"
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    for name in ("a", "b", "c"):
        Image.fromarray(np.zeros((8, 8), np.uint8)).save(root / "images" / f"{name}.png")
        Image.fromarray(np.zeros((8, 8), np.uint8)).save(root / "labels" / f"{name}.png")
    outside = tmp_path / "elsewhere.png"
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(outside)
    return root


def _write(root, doc):
    (root / "datalist.json").write_text(json.dumps(doc))
    return root / "datalist.json"


def _entry(name):
    return {"image": f"images/{name}.png", "label": f"labels/{name}.png"}


@pytest.mark.parametrize(
    "image",
    ["../elsewhere.png", "ABSOLUTE", "images/link.png"],
    ids=["dotdot", "absolute", "symlink-out"],
)
def test_entries_leaving_the_dataset_folder_need_an_opt_in(dataset, image):
    if image == "ABSOLUTE":
        image = str(dataset.parent / "elsewhere.png")
    if image == "images/link.png":
        os.symlink(dataset.parent / "elsewhere.png", dataset / "images" / "link.png")
    file = _write(dataset, {"training": [_entry("a"), {"image": image, "label": "labels/b.png"}]})
    with pytest.raises(DatalistError) as err:
        load_split(file, "training")
    text = str(err.value)
    assert text.startswith(f"{file}: 'training' entry 1: image") and "outside the dataset folder" in text, text
    assert "allow_paths_outside" in text and "\n" not in text
    if image == "images/link.png":
        assert "symbolic link" in text
    _write(dataset, {"training": [_entry("a"), {"image": image, "label": "labels/b.png"}], "allow_paths_outside": True})
    assert len(load_split(file, "training")) == 2  # explicit opt-in


def test_an_absolute_path_inside_the_folder_is_fine(dataset):
    file = _write(dataset, {"test": [{"image": str(dataset / "images" / "a.png"), "label": "labels/a.png"}]})
    assert load_split(file, "test")[0]["image"] == str(dataset / "images" / "a.png")


def test_a_duplicate_test_entry_is_refused_by_name(dataset):
    file = _write(dataset, {"test": [_entry("a"), _entry("b"), {"image": "images/./a.png", "label": "labels/a.png"}]})
    with pytest.raises(DatalistError, match=r"'test' lists .*a\.png twice \(entries 0 and 2\)"):
        load_datalist(file)


@pytest.mark.parametrize("first,second", [("training", "validation"), ("training", "test"), ("validation", "test")])
def test_overlapping_lists_are_refused_by_name(dataset, first, second):
    file = _write(dataset, {first: [_entry("a"), _entry("b")], second: [_entry("c"), _entry("b")]})
    with pytest.raises(DatalistError) as err:
        load_split(file, second)
    text = str(err.value)
    assert f"is in both '{first}' (entry 1) and '{second}' (entry 1)" in text and "b.png" in text, text


def test_unlabeled_may_share_images_with_training(dataset):
    # the PSFHS protocol labels every 20th frame of videos whose other frames are unlabelled
    unlabeled = [{"image": "images/a.png"}, {"image": "images/b.png"}]
    file = _write(dataset, {"training": [_entry("a")], "unlabeled": unlabeled})
    assert len(load_split(file, "unlabeled", require_labels=False)) == 2


def test_a_further_test_list_may_not_share_an_image_with_training_or_leave_the_folder(dataset):
    file = _write(dataset, {"training": [_entry("a")], "test": [_entry("b")], "test_site2": [_entry("a")]})
    with pytest.raises(DatalistError, match="is in both 'training' \\(entry 0\\) and 'test_site2'"):
        load_datalist(file)
    _write(dataset, {"training": [_entry("a")], "test_site2": [{"image": "../elsewhere.png"}]})
    with pytest.raises(DatalistError, match="'test_site2' entry 0: image .* outside the dataset folder"):
        load_datalist(file)
    _write(dataset, {"training": [_entry("a")], "test": [_entry("b")], "test_site2": [_entry("c")]})
    assert [e["image"].endswith("c.png") for e in load_datalist(file)["test_site2"]] == [True]


def test_a_batched_list_keeps_the_fields_every_entry_has(dataset):
    # a frame added later (here with a reference head circumference and its source) beside the others
    extra = {**_entry("b"), "hc_mm": 210.0, "source": "elsewhere"}
    training = [{**_entry("a"), "hc_mm": 150.0}, extra]
    file = _write(dataset, {"training": training, "test": [_entry("c")]})
    assert [set(e) for e in load_split(file, "training", batched=True)] == [{"image", "label", "hc_mm"}] * 2
    assert set(load_split(file, "training")[1]) == {"image", "label", "hc_mm", "source"}  # unbatched: all kept


def test_the_training_stream_batches_labelled_frames_with_other_fields(tmp_path, demo_dataset):
    """A labelled frame added to the training list with fields the others lack still batches: the
    training config reads that list with ``batched=True`` (torch's collate needs equal keys)."""
    import shutil

    from conftest import tiny_overrides, train_config_files
    from monai.bundle import ConfigParser
    from torch.utils.data import default_collate

    data = tmp_path / "data"
    shutil.copytree(demo_dataset, data)
    doc = json.loads((data / "datalist.json").read_text())
    doc["training"][0] = {**doc["training"][0], "hc_mm": 210.0, "source": "a later stage"}
    (data / "datalist.json").write_text(json.dumps(doc))
    # what the stream met before whenever the added frame came first in a batch
    with pytest.raises(KeyError, match="hc_mm"):
        default_collate(doc["training"][:2])
    parser = ConfigParser()
    parser.read_config(train_config_files("methods/labeled_only.yaml"))
    # the added frame first in the batch (unshuffled)
    unshuffled = {"train#dataloader#shuffle": False}
    parser.update(tiny_overrides(tmp_path, str(data), labeled_bs=len(doc["training"]), **unshuffled))
    batch = next(iter(parser.get_parsed_content("train#dataloader")))
    assert batch["image"].shape[0] == len(doc["training"]) and "source" not in batch
