"""Reading a prepared ``datalist.json`` with its file paths made absolute."""

from __future__ import annotations

import warnings

import json
import os
from pathlib import Path
from typing import Any

from .splits import SPLITS

__all__ = ["DATALIST_NAME", "PATH_KEYS", "list_names", "evaluation_lists", "DatalistError", "read_datalist_file", "validate_datalist", "load_datalist", "load_split", "datalist_num_classes", "datalist_class_names", "label_names", "labeled_union_datalist"]

DATALIST_NAME = "datalist.json"
PATH_KEYS = ("image", "label")


def list_names(doc: dict[str, Any]) -> list[str]:
    """The datalist's lists of entries: the splits ``prepare`` writes, then every further test list
    (``test_<name>``, added by ``python -m custom.data add-test`` or ``shift``)."""
    return [s for s in SPLITS if s in doc] + sorted(k for k in doc if k.startswith("test_") and k not in SPLITS)


def evaluation_lists(doc: dict[str, Any]) -> list[str]:
    """``test`` (when present) and every ``test_<name>`` list, in that order."""
    return [name for name in list_names(doc) if name == "test" or name.startswith("test_")]


class DatalistError(ValueError):
    """A ``datalist.json`` that cannot be used; the message names the file, the key and the problem."""


def _json_type(value: Any) -> str:
    names = {dict: "an object", list: "a list", str: "a string", bool: "a boolean", int: "a number", float: "a number"}
    return "null" if value is None else names.get(type(value), type(value).__name__)


def validate_datalist(doc: Any, file: str | Path) -> dict[str, Any]:
    """The one schema check of a datalist (training, evaluation and ``custom.tools.compare`` all read
    through it): an object whose lists (``training``, ``unlabeled``, ``validation``, ``test``) hold
    objects with a non-empty ``image`` path and, where given, a ``label`` path. Raises
    :class:`DatalistError` naming the file, the key and the problem."""
    if not isinstance(doc, dict):
        raise DatalistError(f"{file}: the top level is {_json_type(doc)}; expected an object with lists such as "
                            "'training' and 'test'")
    for split in list_names(doc):
        entries = doc[split]
        if not isinstance(entries, list):
            raise DatalistError(f"{file}: '{split}' is {_json_type(entries)}; expected a list of entries")
        for i, entry in enumerate(entries):
            if not isinstance(entry, dict):
                raise DatalistError(f"{file}: '{split}' entry {i} is {_json_type(entry)}; expected an object with an "
                                    "'image' path")
            image = entry.get("image")
            if not isinstance(image, str) or not image:
                what = "missing" if "image" not in entry else f"{_json_type(image)}" if image != "" else "empty"
                raise DatalistError(f"{file}: '{split}' entry {i}: 'image' is {what}; expected a file path")
            if "label" in entry and (not isinstance(entry["label"], str) or not entry["label"]):
                label = entry["label"]
                raise DatalistError(f"{file}: '{split}' entry {i} ({image}): 'label' is "
                                    f"{_json_type(label) if label != '' else 'empty'}; expected a file path (leave the key "
                                    "out for an image without a mask)")
    if "num_classes" in doc and (isinstance(doc["num_classes"], bool) or not isinstance(doc["num_classes"], int)
                                 or doc["num_classes"] < 2):
        raise DatalistError(f"{file}: 'num_classes' is {doc['num_classes']!r}; expected an integer of at least 2")
    if "labels" in doc and not isinstance(doc["labels"], dict):
        raise DatalistError(f"{file}: 'labels' is {_json_type(doc['labels'])}; expected an object {{name: class id}}")
    return doc


def _datalist_file(path: str | Path) -> Path:
    """``path``, or ``path/datalist.json`` for a folder; a folder without one is refused saying so."""
    file = Path(path)
    if file.is_dir():
        if not (file / DATALIST_NAME).is_file():
            raise FileNotFoundError(
                f"{file} is a folder with no {DATALIST_NAME} in it; pass the datalist file (or the folder "
                "`python -m custom.data prepare` wrote)"
            )
        file = file / DATALIST_NAME
    return file


def read_datalist_file(path: str | Path) -> dict[str, Any]:
    """Parse and validate ``datalist.json`` (paths left as written); :class:`DatalistError` says what is wrong."""
    file = _datalist_file(path)
    try:
        raw = file.read_bytes()
    except FileNotFoundError as e:
        raise FileNotFoundError(f"datalist not found: {file} (prepare one with `python -m custom.data prepare`)") from e
    except OSError as e:
        raise DatalistError(f"{file}: cannot read the datalist ({e.strerror or e})") from e
    if raw.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise DatalistError(f"{file}: the datalist is UTF-16 text; save it as UTF-8")
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise DatalistError(f"{file}: the datalist is not UTF-8 text ({e.reason} at byte {e.start}); save it as UTF-8") from e
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as e:
        raise DatalistError(f"{file}: not valid JSON ({e.msg} at line {e.lineno}, column {e.colno})") from e
    except RecursionError as e:
        raise DatalistError(f"{file}: JSON nested too deeply to be a datalist") from e
    return validate_datalist(doc, file)


def load_datalist(path: str | Path) -> dict[str, Any]:
    """Load ``datalist.json`` (or ``<folder>/datalist.json``) with "image"/"label" made absolute.

    Paths are resolved against the folder holding the file. Hand-written rather than
    ``monai.data.load_decathlon_datalist``, which reads one key at a time and fails on an empty
    ``test`` list.
    """
    path = Path(path)
    if path.is_dir():
        path = path / DATALIST_NAME
    datalist = read_datalist_file(path)
    base = path.resolve().parent
    for split in list_names(datalist):
        for entry in datalist.get(split, []):
            for key in PATH_KEYS:
                if isinstance(entry.get(key), str):
                    entry[key] = os.path.normpath(base / entry[key])
    check_hygiene(datalist, path)
    return datalist


# a datalist may list files outside its own folder only when it says so (an explicit opt-in)
ALLOW_OUTSIDE_KEY = "allow_paths_outside"
# lists whose images must be disjoint: an image in two of them leaks evaluation data into training
DISJOINT_SPLITS = ("training", "validation", "test")


def check_hygiene(datalist: dict[str, Any], file: str | Path) -> None:
    """Refuse (:class:`DatalistError`, naming the file, the list and the entry) what makes a
    result silently wrong or reads files the dataset does not hold:

    * an entry that leaves the datalist's folder (``../``, an absolute path elsewhere, a symlink
      pointing out), unless the datalist sets ``"allow_paths_outside": true``;
    * an image listed twice in one list (a duplicate counts twice in the report);
    * an image in two of ``training``, ``validation``, ``test`` and the further test lists
      ``test_<name>`` (overlapping lists).

    ``datalist`` holds absolute paths (as :func:`load_datalist` makes them)."""
    file = Path(file)
    root = os.path.realpath(file.resolve().parent)
    allow_outside = datalist.get(ALLOW_OUTSIDE_KEY) is True
    seen: dict[str, tuple[str, int]] = {}
    for split in list_names(datalist):
        first: dict[str, int] = {}
        for i, entry in enumerate(datalist.get(split, [])):
            for key in PATH_KEYS:
                value = entry.get(key)
                if not isinstance(value, str) or allow_outside:
                    continue
                real = os.path.realpath(value)
                if real != root and not real.startswith(root + os.sep):
                    how = " (through a symbolic link)" if os.path.normpath(value).startswith(root + os.sep) else ""
                    raise DatalistError(
                        f"{file}: '{split}' entry {i}: {key} {value} lies outside the dataset folder {root}{how}; "
                        f"move it inside, or set \"{ALLOW_OUTSIDE_KEY}\": true in the datalist to allow it"
                    )
            image = os.path.realpath(entry["image"])
            if image in first:
                raise DatalistError(
                    f"{file}: '{split}' lists {entry['image']} twice (entries {first[image]} and {i}); "
                    "remove the duplicate"
                )
            first[image] = i
            if split in DISJOINT_SPLITS or split.startswith("test_"):
                if image in seen and seen[image][0] != split:
                    other, j = seen[image]
                    raise DatalistError(
                        f"{file}: {entry['image']} is in both '{other}' (entry {j}) and '{split}' (entry {i}); "
                        f"the {', '.join(DISJOINT_SPLITS)} lists must not overlap"
                    )
                seen.setdefault(image, (split, i))


def load_split(
    path: str | Path, split: str, require_labels: bool = True, allow_empty: bool = False, batched: bool = False
) -> list[dict[str, Any]]:
    """One list of a datalist, paths absolute, checked before training touches it.

    Raises ``FileNotFoundError`` for a missing datalist or a listed file that is absent, and
    ``ValueError`` naming the datalist and the list for a missing or empty list or an entry
    without a label where labels are required. Without ``require_labels`` each entry is its
    ``image`` alone. ``batched`` (a list whose entries are batched together, e.g. the labelled
    ``training`` list): each entry keeps only the keys every entry has, so that frames added with
    other fields (a reference head circumference, a source) still collate into one batch.
    """
    file = _datalist_file(path)
    if not file.is_file():
        raise FileNotFoundError(f"datalist not found: {file} (prepare one with `python -m custom.data prepare`)")
    try:
        datalist = load_datalist(file)
    except json.JSONDecodeError as e:
        raise ValueError(f"{file}: not valid JSON ({e})") from e
    if split not in datalist:
        raise ValueError(f"{file}: no '{split}' list (it has {sorted(k for k, v in datalist.items() if isinstance(v, list))})")
    entries = datalist[split]
    if not entries and not allow_empty:
        raise ValueError(f"{file}: the '{split}' list is empty")
    for i, entry in enumerate(entries):
        if "image" not in entry:
            raise ValueError(f"{file}: entry {i} of '{split}' has no 'image'")
        keys = ("image", "label") if require_labels else ("image",)
        if require_labels and "label" not in entry:
            raise ValueError(f"{file}: entry {i} of '{split}' ({entry['image']}) has no 'label'")
        for key in keys:
            if not os.path.isfile(entry[key]):
                raise FileNotFoundError(f"{file}: '{split}' entry {i}: {key} file not found: {entry[key]}")
    if not require_labels:
        # a stream that reads images only gets images only: an unchecked mask could stop it, and a
        # list whose entries carry different keys (extra unlabelled frames without a mask, with their
        # source, beside the dataset's own) cannot be batched
        entries = [{"image": entry["image"]} for entry in entries]
    elif batched:
        common = set.intersection(*(set(entry) for entry in entries)) if entries else set()
        entries = [{k: v for k, v in entry.items() if k in common} for entry in entries]
    return entries


def datalist_num_classes(path: str | Path, default: int = 2) -> int:
    """``num_classes`` recorded in a datalist by ``custom.data prepare`` (``default`` when absent)."""
    path = Path(path)
    file = path / DATALIST_NAME if path.is_dir() else path
    try:
        return int(read_datalist_file(file).get("num_classes", default))
    except (OSError, ValueError):  # a missing or malformed datalist is reported where its lists are read
        return default


def label_names(labels: Any, num_classes: int) -> dict[int, str]:
    """Foreground ``{label: name}`` from a datalist's ``labels`` (``{name: label}``, written by
    ``custom.data prepare``); ``class_<label>`` for labels it does not name or when absent."""
    try:
        named = {int(label): str(name) for name, label in (labels or {}).items()}
    except (ValueError, TypeError, AttributeError):
        named = {}
    return {c: named.get(c, f"class_{c}") for c in range(1, int(num_classes))}


def datalist_class_names(path: str | Path, num_classes: int) -> dict[int, str]:
    """:func:`label_names` of the datalist file at ``path`` (or in the folder ``path``)."""
    path = Path(path)
    file = path / DATALIST_NAME if path.is_dir() else path
    try:
        labels = read_datalist_file(file).get("labels")
    except (OSError, ValueError, TypeError, AttributeError):
        labels = None
    return label_names(labels, num_classes)


def labeled_union_datalist(datalist_file: str, dataset_dir: str) -> list[dict]:
    """The fully supervised bound's training list: every ``training`` entry plus every
    ``unlabeled`` entry that has a ``label`` (paths resolved like MONAI's
    ``load_decathlon_datalist``).

    Raises ``ValueError`` when no unlabelled entry has a mask (the set was prepared with
    ``--hide-unlabeled-masks``); warns when only some have one.
    """
    from monai.data import load_decathlon_datalist

    labeled = load_decathlon_datalist(datalist_file, True, "training", dataset_dir)
    try:
        unlabeled = load_decathlon_datalist(datalist_file, True, "unlabeled", dataset_dir)
    except ValueError:  # no "unlabeled" key
        unlabeled = []
    with_mask = [e for e in unlabeled if e.get("label")]
    if unlabeled and not with_mask:
        raise ValueError(
            f"fully_supervised trains on the masks of the unlabelled images, but none of the {len(unlabeled)} "
            f"'unlabeled' entries of {datalist_file} has a 'label' (the set was prepared with --hide-unlabeled-masks). "
            "Prepare the data again without --hide-unlabeled-masks for this bound."
        )
    if len(with_mask) < len(unlabeled):
        warnings.warn(
            f"fully_supervised: {len(unlabeled) - len(with_mask)} of {len(unlabeled)} unlabelled entries "
            "have no mask and are left out",
            stacklevel=2,
        )
    return labeled + with_mask
