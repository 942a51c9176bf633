"""What the configs call around the trainer (train.yaml, pretrain.yaml): the run length in epochs,
the labelled batch, the method's name, the amp option, and the line that reports the best
validation. Kept apart from :mod:`custom.training.trainer`, which holds the trainer only."""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from typing import Any

import torch

__all__ = [
    "iterations_to_epochs",
    "labeled_batch_size",
    "require_method",
    "report_best",
    "resolve_amp",
    "bf16_is_native",
]

logger = logging.getLogger(__name__)


def iterations_to_epochs(total_iterations: int, epoch_length: int) -> int:
    """Epochs needed for ``total_iterations`` when an epoch has ``epoch_length`` iterations."""
    if epoch_length <= 0:
        raise ValueError(f"epoch_length must be positive (is the labelled list empty?), got {epoch_length}")
    return max(1, math.ceil(total_iterations / epoch_length))


def labeled_batch_size(labeled_bs: int, available: int) -> int:
    """The labelled batch: ``labeled_bs``, or all ``available`` labelled images when there are fewer
    (with a warning), so that a small labelled set trains instead of yielding no batch at all."""
    labeled_bs, available = int(labeled_bs), int(available)
    if labeled_bs < 1:
        raise ValueError(f"labeled_bs must be at least 1, got {labeled_bs}")
    if available < 1:
        raise ValueError("no labelled image to train on: the `training` list is empty")
    if available < labeled_bs:
        logger.warning(
            "labeled_bs is %d but only %d labelled image(s) are listed: batches of %d", labeled_bs, available, available
        )
        return available
    return labeled_bs


def require_method(method: str | None) -> None:
    """Training needs a method file after train.yaml (which holds only what every method shares)."""
    if not method:
        raise ValueError(
            "no method: train.yaml holds only what every method shares; add a method file after it in "
            "--config_file, e.g. 'bundle/configs/methods/ours.yaml' (the default), "
            "'bundle/configs/methods/bcp.yaml' (one network, fast) or 'bundle/configs/methods/labeled_only.yaml'"
        )


def report_best(evaluator: Any) -> None:
    """Print the UNeXt's best and last validation Dice (on the first process only)."""
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized() and dist.get_rank() > 0:
        return
    state = evaluator.state
    best, epoch = state.best_metric, state.best_metric_epoch
    if "val_mean_dice" not in state.metrics:  # a resumed run that had already reached max_iterations
        print(f"best validation mean Dice (UNeXt): {best:.4f} at epoch {epoch}; nothing was left to train")
        return
    print(f"best validation mean Dice (UNeXt): {best:.4f} at epoch {epoch}; last: {state.metrics['val_mean_dice']:.4f}")


def bf16_is_native(device: torch.device | str) -> bool:
    """Whether ``device`` computes bfloat16 natively: a CUDA device that supports it, or a CPU
    with AVX512-BF16 or AMX-BF16 (read from /proc/cpuinfo; False where it cannot be read)."""
    device = torch.device(device)
    if device.type == "cuda":
        return bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())
    if device.type != "cpu":
        return False
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            flags = f.read()
    except OSError:
        return False
    return " avx512_bf16" in flags or " amx_bf16" in flags


def resolve_amp(
    amp: Any, image_size: Sequence[int], device: torch.device | str, amp_dtype: str = "bfloat16", min_side: int = 128
) -> bool:
    """The ``amp`` option: a boolean (``true/false/yes/no/1/0``), or ``auto``: bfloat16 autocast
    where it was measured to win (bundle/docs/performance.md): images of at least ``min_side``
    pixels a side on a device with native bfloat16; off below (at 64 px it was slower)."""
    if isinstance(amp, str) and amp.strip().lower() == "auto":
        on = (
            str(amp_dtype) == "bfloat16"
            and min(int(v) for v in ([image_size] if isinstance(image_size, int) else image_size)) >= int(min_side)
            and bf16_is_native(device)
        )
        logger.info(
            "amp auto: bfloat16 autocast %s (%s px, %s)", "on" if on else "off", "x".join(map(str, image_size)), device
        )
        return on
    from custom.utils.cli import parse_bool

    return parse_bool(amp, "amp")
