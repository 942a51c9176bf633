"""The pretraining workflow's parts around MONAI's engine (bundle/configs/pretrain.yaml): the images
it reads, the pretrained weights with their record, and the loss curve.

Outputs in ``ckpt_dir`` (each written atomically after every epoch and at the end):

- ``transformer_pretrained.pt``: ``{"state_dict": the Swin-Unet encoder's tensors}`` in timm's
  Swin layout, which ``transformer_pretrained_path`` loads into the encoder and the mirrored
  decoder stages (``custom.networks.load_pretrained_swin``);
- ``transformer_pretrained.json``: its record (images used by source, iterations done, scale,
  masking, last losses, the weights' sha256);
- ``pretrain_loss.csv`` and ``pretrain_loss.png``: the loss per iteration;
- ``pretrain_state/train_state.pt``: the full state ``--resume true`` continues from.
"""

from __future__ import annotations

import csv
import hashlib
import io
import logging
import os
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from ignite.engine import Engine, Events

from custom.data.datalist import list_names, load_datalist, load_split
from custom.data.errors import ReadError
from custom.data.held_out_lists import content_hash
from custom.data.options import frame_id, parse_id_ranges
from custom.data.readers import read_image_plane, strip_suffix
from custom.data.sources.base import is_mask_name, list_files
from custom.utils.atomic import atomic_torch_save, atomic_write_json, atomic_write_text
from custom.utils.cli import OptionError
from custom.utils.digest import file_sha256

__all__ = ["WEIGHTS_FILE", "RECORD_FILE", "pretraining_images", "PretrainedWeightsSaver", "LossCurve"]

logger = logging.getLogger(__name__)

WEIGHTS_FILE = "transformer_pretrained.pt"
RECORD_FILE = "transformer_pretrained.json"
# the dataset's lists whose images pretraining reads (never their masks); every other list
# (validation, tests) is held out, and an extra image identical to one of their frames is refused
PRETRAINING_LISTS = ("training", "unlabeled")


def _folders(value: Any) -> list[Path]:
    if value is None or value == "" or value == []:
        return []
    items = [value] if isinstance(value, (str, os.PathLike)) else list(value)
    return [Path(os.fspath(v)).expanduser() for v in items]


def _extra_files(folder: Path, ids: Any) -> list[Path]:
    if not folder.is_dir():
        raise FileNotFoundError(f"--extra_images {folder}: folder not found")
    files = [f for f in list_files(folder) if not is_mask_name(f)]
    if ids is not None and str(ids) != "":
        wanted = parse_id_ranges(ids, "--extra_ids")
        files = [f for f in files if frame_id(strip_suffix(f)) in wanted]
    if not files:
        raise OptionError(
            f"--extra_images {folder}: no image file (PNG/JPEG/BMP/TIFF/NIfTI/DICOM) there"
            + (f" with an id within --extra_ids {ids}" if ids not in (None, "") else "")
        )
    return files


def _frame_hash(path: str | Path) -> str:
    try:
        return content_hash(read_image_plane(Path(path)).array)
    except ReadError as e:
        raise ValueError(f"--extra_images {path}: {e}") from e


def pretraining_images(datalist_file: str, extra_images: Any = None, extra_ids: Any = None) -> list[dict[str, str]]:
    """``{"image", "source"}`` entries: every image of the datalist's ``training`` and ``unlabeled``
    lists (masks never read) and every image file of the ``extra_images`` folders (not their
    subfolders; names that say mask, e.g. ``X_mask.png``, left out; names whose leading number is within
    ``extra_ids`` when given). An extra image that is a frame of a validation or test list is
    refused: held-out frames never reach any training."""
    entries: list[dict[str, str]] = []
    for split in PRETRAINING_LISTS:
        for entry in load_split(datalist_file, split, require_labels=False, allow_empty=True):
            entries.append({"image": entry["image"], "source": split})
    folders = _folders(extra_images)
    if folders:
        doc = load_datalist(Path(datalist_file))
        held_out = {}
        for name in list_names(doc):
            if name not in PRETRAINING_LISTS:
                for entry in load_split(datalist_file, name, require_labels=False, allow_empty=True):
                    held_out.setdefault(_frame_hash(entry["image"]), f"'{name}' {entry['image']}")
        known = {os.path.realpath(e["image"]) for e in entries}
        for folder in folders:
            for path in _extra_files(folder, extra_ids):
                twin = held_out.get(_frame_hash(path))
                if twin is not None:
                    raise ValueError(
                        f"--extra_images {path}: the same frame as {twin} of {datalist_file}; held-out "
                        "frames never enter pretraining (leave it out, e.g. with --extra_ids)"
                    )
                if os.path.realpath(path) not in known:
                    known.add(os.path.realpath(path))
                    # named after the data set: its folder, or the one above a folder named images/
                    named = folder.resolve().parent if folder.name.lower() == "images" else folder
                    entries.append({"image": str(path.resolve()), "source": f"extra:{named.name}"})
    if not entries:
        raise ValueError(f"{datalist_file}: no image to pretrain on (empty 'training' and 'unlabeled' lists)")
    logger.info("pretraining on %d images: %s", len(entries), dict(Counter(e["source"] for e in entries)))
    return entries


def _images_digest(images: Sequence[Mapping[str, str]]) -> str:
    return hashlib.sha256("\n".join(sorted(e["image"] for e in images)).encode()).hexdigest()


class LossCurve:
    """The loss of every iteration, kept in the training state (``state_dict``) so that a resumed
    run's curve is whole, and written as ``pretrain_loss.csv`` and ``pretrain_loss.png``."""

    def __init__(self, save_dir: str, title: str = "masked image modelling") -> None:
        self.save_dir, self.title = save_dir, title
        self.losses: list[float] = []

    def state_dict(self) -> dict[str, Any]:
        return {"losses": torch.tensor(self.losses, dtype=torch.float64)}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.losses = [float(v) for v in state["losses"]]

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._record)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self.write)
        engine.add_event_handler(Events.COMPLETED, self.write)

    def _record(self, engine: Engine) -> None:
        del self.losses[engine.state.iteration - 1 :]  # a resumed run redoes nothing; this is defensive
        self.losses.append(float(engine.state.output["loss"].detach()))

    def recent(self, n: int = 50) -> float | None:
        tail = self.losses[-n:]
        return sum(tail) / len(tail) if tail else None

    def write(self, engine: Engine | None = None) -> None:
        rows = io.StringIO()
        writer = csv.writer(rows)
        writer.writerow(["iteration", "loss"])
        writer.writerows((i + 1, f"{v:.6f}") for i, v in enumerate(self.losses))
        atomic_write_text(os.path.join(self.save_dir, "pretrain_loss.csv"), rows.getvalue())
        self._plot(os.path.join(self.save_dir, "pretrain_loss.png"))

    def _plot(self, path: str) -> None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        import numpy as np

        from custom.utils.atomic import atomic_path

        fig, ax = plt.subplots(figsize=(6, 3.5))
        losses = np.asarray(self.losses)
        ax.plot(np.arange(1, len(losses) + 1), losses, lw=0.5, alpha=0.4, label="per iteration")
        if len(losses) >= 20:
            k = max(len(losses) // 50, 10)
            smooth = np.convolve(losses, np.ones(k) / k, mode="valid")
            ax.plot(np.arange(k, len(losses) + 1), smooth, lw=1.5, label=f"mean of {k}")
        ax.set_xlabel("iteration")
        ax.set_ylabel("L1 on masked pixels")
        ax.set_title(self.title)
        ax.legend()
        fig.tight_layout()
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format="png", dpi=100)
        plt.close(fig)


class PretrainedWeightsSaver:
    """Writes the encoder of ``transformer`` as ``transformer_pretrained.pt`` and its record
    ``transformer_pretrained.json`` to ``save_dir`` after every epoch and at the end (atomically,
    the record after the weights it describes)."""

    def __init__(
        self,
        save_dir: str,
        transformer: torch.nn.Module,
        images: Sequence[Mapping[str, str]],
        settings: Mapping[str, Any],
        loss_curve: LossCurve | None = None,
    ) -> None:
        self.save_dir, self.transformer = save_dir, transformer
        self.images, self.settings, self.loss_curve = list(images), dict(settings), loss_curve

    @property
    def path(self) -> str:
        return os.path.join(self.save_dir, WEIGHTS_FILE)

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_COMPLETED, self)
        engine.add_event_handler(Events.COMPLETED, self)

    def record(self, engine: Engine) -> dict[str, Any]:
        done, total = int(engine.state.iteration), int(engine.state.max_epochs * engine.state.epoch_length)
        return {
            "what": "the Swin-Unet encoder pretrained by masked image modelling (SimMIM); load it with "
            "--transformer_pretrained_path",
            "weights_file": WEIGHTS_FILE,
            "complete": done >= total,
            "iterations": done,
            "max_iterations": total,
            "images": len(self.images),
            "images_by_source": dict(Counter(e["source"] for e in self.images)),
            "images_sha256": _images_digest(self.images),
            "loss_last_50": None if self.loss_curve is None else self.loss_curve.recent(50),
            **self.settings,
        }

    def __call__(self, engine: Engine) -> None:
        if getattr(self, "_saved_at", None) == engine.state.iteration:  # COMPLETED right after the last epoch
            return
        self._saved_at = engine.state.iteration
        state = {k: v.detach().cpu().clone() for k, v in self.transformer.encoder.state_dict().items()}
        atomic_torch_save({"state_dict": state}, self.path)
        record = {**self.record(engine), "weights_sha256": file_sha256(self.path)}
        atomic_write_json(os.path.join(self.save_dir, RECORD_FILE), record)
        logger.info(
            "pretrained encoder after %d of %d iterations: %s",
            record["iterations"],
            record["max_iterations"],
            self.path,
        )
