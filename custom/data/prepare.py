"""``prepare``: source folder -> ``out/images``, ``out/labels``, ``out/datalist.json``, ``out/summary.json``.

Order: scan the source (``sources``), read and check every pair (``validate``), split by group
(``splits``), then write everything into a temporary sibling of ``out`` that replaces ``out``
only when complete (``staging``). Nothing is written when validation fails.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from custom.utils.atomic import atomic_write_json
from custom.utils.cli import parse_bool
from custom.utils.options import check_option
from .datalist import DATALIST_NAME
from .errors import DataValidationError, Problem, SplitError
from .options import parse_group_list, parse_id_ranges
from .sources import discover
from .sources import kind_options as kind_options_of
from .splits import LABELED_DRAWS, SPLITS, SplitPlan, labeled_target, split_groups, spread_positions
from .staging import check_output_target, staging_directory
from .summary import build_summary, format_summary
from .validate import CheckedSample, check_groups_disjoint, validate_samples
from .writers import write_sample

__all__ = ["prepare", "DEFAULT_TEST_FRACTION"]

DEFAULT_TEST_FRACTION = 0.1
SUMMARY_NAME = "summary.json"
# kinds whose groups are blocks of consecutive video frames: labelled frames are spread over them
DEFAULT_LABELED_DRAW = {"psfhs": "frames"}
SKIPPED_NAME = "skipped.json"


def prepare(
    kind: str,
    source: str | Path,
    out: str | Path,
    *,
    labeled_fraction: float | None = None,
    labeled_count: int | None = None,
    labeled_every: int | None = None,
    labeled_draw: str | None = None,
    val_fraction: float = 0.1,
    test_fraction: float | None = None,
    seed: int = 0,
    hide_unlabeled_masks: bool = False,
    test_groups: str | Sequence[str | int] | None = None,
    test_ids: str | int | Sequence[str | int] | None = None,
    limit: int | None = None,
    skip_invalid: bool = False,
    overwrite: bool = False,
    progress: bool = True,
    quiet: bool = False,
    unlabeled_extra: str | Path | None = None,
    unlabeled_extra_ids: str | int | Sequence[str | int] | None = None,
    **kind_options: Any,
) -> dict[str, Any]:
    """Prepare a dataset of kind ``hc18``, ``psfhs``, ``acouslic`` or ``folder``; returns the summary.

    Splits (by group, never by image; deterministic for ``seed``): test groups first
    (``test_fraction`` of all images, default 0.1, or ``test_groups``/``test_ids``), then
    validation (``val_fraction`` of all images), then labelled ``training`` from the remaining
    pool (``labeled_fraction`` of the pool images, rounded half up, or ``labeled_count`` images;
    default: the whole pool); the rest of the pool is ``unlabeled``. ``labeled_every`` N instead
    labels the pool images whose numeric name is divisible by N, whatever their group (the
    PSFHS protocol: every 20th frame, about 5%; frames of one video are then both labelled and
    unlabelled, as in that protocol; test and validation stay whole groups). ``labeled_draw``:
    ``groups`` draws the labelled images as whole groups; ``frames`` (the default for psfhs, whose
    groups are blocks of 50 consecutive frames of one video) draws single frames evenly spread over
    the training pool, so a 5% labelled set spans every video block instead of filling one; the
    summary says how many groups it spans. ``hide_unlabeled_masks``
    writes no masks for the unlabelled part.

    ``kind_options`` are the options of the kind (its class in ``custom.data.sources``):
    ``block_size`` (psfhs ids per group), ``background_per_case`` and ``binarize`` (acouslic),
    ``images_subdir``/``labels_subdir``/``label_suffix``/``label_map``/``num_classes``/
    ``class_names``/``group_regex`` (folder); an option of another kind is refused. ``limit`` keeps the first N samples
    by name (quick trials). ``skip_invalid`` skips invalid pairs (listed in ``skipped.json``)
    instead of failing; ``overwrite`` replaces a non-empty ``out`` after success.
    ``unlabeled_extra`` adds the images of another folder (any readable format, no masks; e.g. a new
    site's frames; ``unlabeled_extra_ids`` keeps the numeric names in those ranges) to the
    ``unlabeled`` list only, as their own group (``extra:<folder>``), never to a labelled,
    validation or test list; a file that cannot be read, or that is the same frame as one of the
    dataset's (pixel for pixel), is refused by name (:mod:`custom.data.extra`).
    Raises ``DataValidationError`` listing every problem, ``SplitError`` for impossible splits.
    """
    hide_unlabeled_masks, skip_invalid, overwrite, progress, quiet = (
        parse_bool(value, name) for value, name in ((hide_unlabeled_masks, "hide-unlabeled-masks"),
                                                    (skip_invalid, "skip-invalid"), (overwrite, "overwrite"),
                                                    (progress, "progress"), (quiet, "quiet")))
    seed = check_option("seed", seed, dashes=True)  # the one rule of custom/utils/options.py
    kind = str(kind).lower()
    source_options = kind_options_of(kind, kind_options, seed=int(seed), progress=progress)
    options = _recorded_options({**locals(), **source_options.given()})
    source, out = Path(source).expanduser(), Path(out).expanduser()
    check_output_target(out, source, overwrite)
    if test_fraction is not None and (test_groups or test_ids):
        raise SplitError("give --test-fraction or --test-groups/--test-ids, not both")
    explicit_test_requested = bool(test_groups or test_ids)
    if labeled_every is not None and (labeled_fraction is not None or labeled_count is not None):
        raise SplitError("give --labeled-every or --labeled-fraction/--labeled-count, not several")
    if labeled_every is not None and int(labeled_every) < 1:
        raise SplitError(f"--labeled-every {labeled_every}: must be a positive integer")
    if labeled_every is not None and labeled_draw is not None:
        raise SplitError("give --labeled-every or --labeled-draw, not both (--labeled-every draws frames by their id)")
    draw = DEFAULT_LABELED_DRAW.get(str(kind).lower(), "groups") if labeled_draw is None else str(labeled_draw).lower()
    if draw not in LABELED_DRAWS:
        raise SplitError(f"--labeled-draw {labeled_draw}: must be one of {', '.join(LABELED_DRAWS)}")
    options["labeled_draw"] = None if labeled_every is not None else draw
    plan = SplitPlan(  # checks the split options before any file is read
        labeled_fraction=None if labeled_fraction is None else float(labeled_fraction),
        labeled_count=None if labeled_count is None else int(labeled_count),
        val_fraction=float(val_fraction),
        test_fraction=0.0 if explicit_test_requested else float(_default(test_fraction, DEFAULT_TEST_FRACTION)),
        seed=int(seed),
    )
    discovery = discover(kind, source, source_options)
    samples = sorted(discovery.samples, key=lambda s: s.name)[: None if limit is None else int(limit)]
    checked, problems = validate_samples(samples, discovery.num_classes, progress=progress)
    problems = discovery.problems + problems
    if problems and not skip_invalid:
        raise DataValidationError(problems, context=str(source))
    if not checked:
        nothing = [Problem(str(source), "no image/mask pair found")]
        raise DataValidationError(problems or nothing, context="nothing left to prepare")

    if explicit_test_requested:
        plan = replace(plan, test_groups=tuple(sorted(_explicit_test_groups(checked, test_groups, test_ids))))
    extra = None
    if unlabeled_extra is not None and str(unlabeled_extra) != "":
        from .extra import read_extra_images

        extra = read_extra_images(Path(unlabeled_extra).expanduser(), unlabeled_extra_ids, checked,
                                  skip_invalid=skip_invalid, progress=progress)
        problems = problems + extra.problems
    splits = _assign_splits(checked, plan)
    if labeled_every is not None:
        splits = _label_every(splits, int(labeled_every))
    elif draw == "frames":
        splits = _label_frames(splits, plan)
    with_masks = {split: not (split == "unlabeled" and hide_unlabeled_masks) for split in SPLITS}

    with staging_directory(out, overwrite=overwrite) as staging:
        entries = _write_splits(splits, with_masks, staging, progress=progress)
        if extra is not None:
            entries["unlabeled"] += extra.write(staging)
        summary = build_summary(
            kind=kind,
            splits=splits,
            with_masks=with_masks,
            labels=discovery.labels,
            skipped=problems,
            notes=discovery.notes + ([extra.note] if extra is not None else []),
            out=str(out),
        )
        summary["seed"] = int(seed)
        datalist = {
            "source_kind": kind,
            "seed": int(seed),
            "num_classes": discovery.num_classes,
            "labels": dict(discovery.labels),
            "options": options,
            **entries,
        }
        _write_json(staging / DATALIST_NAME, datalist)
        _write_json(staging / SUMMARY_NAME, summary)
        if skip_invalid:
            _write_json(staging / SKIPPED_NAME, [p.as_dict() for p in problems])
    if not quiet:
        if skip_invalid:
            print(_skipped_report(problems))
        print(format_summary(summary))
    return summary


def _default(value: Any, default: Any) -> Any:
    """``value``, or ``default`` where it is None (0 stays 0)."""
    return default if value is None else value


def _recorded_options(arguments: Mapping[str, Any]) -> dict[str, Any]:
    """The call's options as JSON-friendly values, for ``datalist.json``."""
    recorded = {}
    for name, value in arguments.items():
        if name in ("progress", "quiet", "kind_options", "source_options"):
            continue
        if isinstance(value, Path):
            value = str(value)
        elif isinstance(value, tuple):
            value = list(value)
        elif isinstance(value, Mapping):
            value = {str(k): v for k, v in value.items()}
        recorded[name] = value
    return recorded


def _explicit_test_groups(
    checked: Sequence[CheckedSample],
    test_groups: str | Sequence[str | int] | None,
    test_ids: str | int | Sequence[str | int] | None,
) -> set[str]:
    """Groups named by ``test_groups`` plus the groups of the images whose numeric name is in ``test_ids``."""
    present = {c.sample.group for c in checked}
    chosen: set[str] = set()
    for item in parse_group_list(test_groups):
        if isinstance(item, int):  # fire turns "10" into 10: match numeric group ids by value
            matches = {g for g in present if g.isdigit() and int(g) == item}
        else:
            matches = {item} & present
        if not matches:
            raise SplitError(f"--test-groups: group {item!r} is not in the data")
        chosen |= matches
    if test_ids is not None and test_ids != "":
        ids = parse_id_ranges(test_ids)
        matched = {c.sample.group for c in checked if c.sample.name.isdigit() and int(c.sample.name) in ids}
        if not matched:
            raise SplitError(f"--test-ids {test_ids}: no image has an id in this range")
        chosen |= matched
    return chosen


def _assign_splits(checked: Sequence[CheckedSample], plan: SplitPlan) -> dict[str, list[CheckedSample]]:
    """Split the checked samples by group; raises if a group ended up in two splits."""
    sizes = Counter(c.sample.group for c in checked)
    split_of_group = {group: split for split, groups in split_groups(sizes, plan).items() for group in groups}
    splits: dict[str, list[CheckedSample]] = {split: [] for split in SPLITS}
    for c in checked:
        splits[split_of_group[c.sample.group]].append(c)
    problems = check_groups_disjoint(splits)
    if problems:
        raise DataValidationError(problems, context="split")
    return splits


def _label_every(splits: Mapping[str, list[CheckedSample]], every: int) -> dict[str, list[CheckedSample]]:
    """Re-divide the pool (``training`` + ``unlabeled``): labelled = numeric names divisible by ``every``."""
    pool = sorted(splits["training"] + splits["unlabeled"], key=lambda c: c.sample.name)
    not_numeric = [c.sample.name for c in pool if not c.sample.name.isdigit()]
    if not_numeric:
        raise SplitError(f"--labeled-every needs numeric image names; not numeric: {', '.join(not_numeric[:5])}")
    training = [c for c in pool if int(c.sample.name) % every == 0]
    if not training:
        raise SplitError(f"--labeled-every {every}: no training-pool image has an id divisible by {every}")
    unlabeled = [c for c in pool if int(c.sample.name) % every != 0]
    return {**splits, "training": training, "unlabeled": unlabeled}


def _label_frames(splits: Mapping[str, list[CheckedSample]], plan: SplitPlan) -> dict[str, list[CheckedSample]]:
    """Re-divide the pool (``training`` + ``unlabeled``): the labelled images are single frames
    evenly spread over the pool in (group, name) order, as many as ``plan`` asks for."""
    pool = sorted(splits["training"] + splits["unlabeled"], key=lambda c: (c.sample.group, c.sample.name))
    chosen = set(spread_positions(len(pool), labeled_target(plan, len(pool)), plan.seed))
    training = [c for i, c in enumerate(pool) if i in chosen]
    unlabeled = [c for i, c in enumerate(pool) if i not in chosen]
    return {**splits, "training": training, "unlabeled": unlabeled}


def _write_splits(
    splits: Mapping[str, Sequence[CheckedSample]], with_masks: Mapping[str, bool], out_dir: Path, *, progress: bool
) -> dict[str, list[dict[str, Any]]]:
    """Write every sample of every split; returns the datalist entries per split."""
    from tqdm.auto import tqdm

    (out_dir / "images").mkdir()
    (out_dir / "labels").mkdir()
    total = sum(len(members) for members in splits.values())
    entries: dict[str, list[dict[str, Any]]] = {}
    with tqdm(total=total, desc="writing", unit="image", disable=not progress) as bar:
        for split in SPLITS:
            entries[split] = []
            for checked in splits[split]:
                entries[split].append(write_sample(checked, out_dir, with_label=with_masks[split]))
                bar.update()
    return entries


def _write_json(path: Path, data: Any) -> None:
    """Write ``data`` as indented JSON (atomically)."""
    atomic_write_json(path, data, indent=1)


def _skipped_report(problems: Sequence[Problem]) -> str:
    """The printed list of skipped files and why."""
    if not problems:
        return "Skipped: nothing (no invalid input found)"
    return "\n".join([f"Skipped {len(problems)} problem(s) (saved in {SKIPPED_NAME}):"] + [f"  {p}" for p in problems])
