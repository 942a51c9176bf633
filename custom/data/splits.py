"""Group-wise splitting into training (labelled), unlabeled, validation and test.

Groups are shuffled once with ``numpy.random.default_rng(seed)`` (from their sorted ids, so the
result depends only on the groups and the seed). Test groups are drawn first (or given
explicitly), then validation groups, both sized in images as ``round(fraction * all images)``;
then labelled groups from the remaining pool, sized in images as ``round(fraction * pool
images)`` or ``labeled_count``; the rest of the pool is unlabeled. ``round`` rounds half up.

Drawing stops at the target image count exactly whenever the group sizes allow it: a group that
would overshoot is passed over while later groups still fit (only if no combination in that order
reaches the target is the next group added, overshooting).
"""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from .errors import SplitError

__all__ = ["SPLITS", "LABELED_DRAWS", "SplitPlan", "round_half_up", "take_groups", "split_groups", "labeled_target",
           "spread_positions"]

SPLITS = ("training", "unlabeled", "validation", "test")
# how the labelled images are drawn from the training pool: whole groups, or single frames spread
# evenly over the pool (every group contributes; a group's other frames stay unlabelled)
LABELED_DRAWS = ("groups", "frames")


@dataclass(frozen=True)
class SplitPlan:
    """How to split; exactly one of ``labeled_fraction``/``labeled_count`` is used (fraction 1.0 by default)."""

    labeled_fraction: float | None = None
    labeled_count: int | None = None
    val_fraction: float = 0.1
    test_fraction: float = 0.1
    seed: int = 0
    test_groups: Collection[str] = field(default_factory=tuple)  # explicit test groups (replace test_fraction)

    def __post_init__(self) -> None:
        if self.labeled_fraction is not None and self.labeled_count is not None:
            raise SplitError("give --labeled-fraction or --labeled-count, not both")
        for option, value in (
            ("--labeled-fraction", self.labeled_fraction),
            ("--val-fraction", self.val_fraction),
            ("--test-fraction", self.test_fraction),
        ):
            if value is not None and not 0.0 <= value <= 1.0:
                raise SplitError(f"{option} {value}: must be within 0..1")
        if self.val_fraction + self.test_fraction >= 1.0:
            raise SplitError(
                f"--val-fraction {self.val_fraction} + --test-fraction {self.test_fraction} leave no training images"
            )


def round_half_up(value: float) -> int:
    """``value`` rounded to the nearest integer, halves up (Python's ``round`` rounds halves to even)."""
    return int(math.floor(value + 0.5))


def take_groups(order: Sequence[str], sizes: Mapping[str, int], target: int) -> list[str]:
    """Groups from ``order`` whose image counts add up to ``target`` (exactly where possible)."""
    chosen: list[str] = []
    total = 0
    for group in order:
        if total == target:
            break
        if total + sizes[group] <= target:
            chosen.append(group)
            total += sizes[group]
    taken = set(chosen)
    for group in order:  # target not reachable exactly: add groups in order until it is passed
        if total >= target:
            break
        if group not in taken:
            chosen.append(group)
            total += sizes[group]
    return chosen


def _target(option: str, fraction: float, images: int, what: str) -> int:
    """Image count for ``fraction`` of ``images``; a positive fraction that selects none is an error."""
    target = round_half_up(fraction * images)
    if fraction > 0 and target == 0:
        raise SplitError(f"{option} {fraction} of {images} {what} selects round({fraction * images:g}) = 0 images")
    return target


def split_groups(sizes: Mapping[str, int], plan: SplitPlan) -> dict[str, list[str]]:
    """Assign every group (id -> image count) to one of ``SPLITS``; deterministic for a seed."""
    total = sum(sizes.values())
    order = [str(g) for g in np.random.default_rng(plan.seed).permutation(sorted(sizes))]
    unknown = sorted(set(plan.test_groups) - set(sizes))
    if unknown:
        raise SplitError(f"test groups not in the data: {', '.join(unknown)}")
    if plan.test_groups:
        test = sorted(plan.test_groups)
    else:
        test = take_groups(order, sizes, _target("--test-fraction", plan.test_fraction, total, "images"))
    test_set = set(test)
    remaining = [g for g in order if g not in test_set]
    validation = take_groups(remaining, sizes, _target("--val-fraction", plan.val_fraction, total, "images"))
    validation_set = set(validation)
    pool = [g for g in remaining if g not in validation_set]
    pool_images = sum(sizes[g] for g in pool)
    if pool_images == 0:
        raise SplitError(f"no training images left: {total} images, all in test or validation")
    labeled_target = _labeled_target(plan, pool_images)
    training = take_groups(pool, sizes, labeled_target)
    training_set = set(training)
    unlabeled = [g for g in pool if g not in training_set]
    return {
        "training": sorted(training),
        "unlabeled": sorted(unlabeled),
        "validation": sorted(validation),
        "test": sorted(test),
    }


def _labeled_target(plan: SplitPlan, pool_images: int) -> int:
    """Number of labelled images to draw from a pool of ``pool_images`` images."""
    if plan.labeled_count is not None:
        target = int(plan.labeled_count)
        if not 1 <= target <= pool_images:
            raise SplitError(f"--labeled-count {target}: must be within 1..{pool_images} (training-pool images)")
        return target
    fraction = 1.0 if plan.labeled_fraction is None else plan.labeled_fraction
    target = round_half_up(fraction * pool_images)
    if target < 1:
        raise SplitError(
            f"--labeled-fraction {fraction} of {pool_images} training-pool images selects "
            f"round({fraction * pool_images:g}) = 0 images; at least 1 labelled image is needed"
        )
    return target


def labeled_target(plan: SplitPlan, pool_images: int) -> int:
    """Number of labelled images ``plan`` asks for from a pool of ``pool_images`` images."""
    return _labeled_target(plan, pool_images)


def spread_positions(n: int, target: int, seed: int) -> list[int]:
    """``target`` of the positions ``0..n-1``, evenly spaced (stride ``n / target``) from an
    offset within the first stride drawn with ``default_rng(seed)``; deterministic, sorted."""
    if not 1 <= target <= n:
        raise SplitError(f"cannot draw {target} of {n} images")
    stride = n / target
    offset = float(np.random.default_rng(seed).uniform(0.0, stride))
    return [min(n - 1, int(offset + i * stride)) for i in range(target)]
