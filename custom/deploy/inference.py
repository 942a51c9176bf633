"""Inference pieces of ``inference.yaml``: input listing, mask saving in the input's format,
overlays, and the CNN-Transformer disagreement (per-pixel map and per-image score)."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Hashable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from ignite.engine import Engine, Events
from monai.engines.utils import IterationEvents
from monai.transforms import MapTransform

from custom.evaluation.overlays import at_frame_size
from custom.training.losses import InformationDivergenceLoss
from custom.utils.atomic import atomic_write, atomic_write_json
from custom.utils.cli import parse_bool

__all__ = [
    "IMAGE_SUFFIXES",
    "list_inputs",
    "InputScreen",
    "screen_inputs",
    "BAD_INPUTS_NAME",
    "SaveMaskd",
    "DisagreementWriter",
    "is_nifti",
    "MaskWriteError",
    "FiniteOutputCheck",
    "HeadReviewWriter",
    "head_review_record",
]

logger = logging.getLogger(__name__)

BAD_INPUTS_NAME = "bad_inputs.json"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".nii", ".nii.gz", ".dcm")


def is_nifti(path: str) -> bool:
    return path.lower().endswith((".nii", ".nii.gz"))


def _stem(path: str) -> str:
    name = os.path.basename(path)
    for suffix in (".nii.gz",) + IMAGE_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return os.path.splitext(name)[0]


def list_inputs(inputs: str | Sequence[str]) -> list[dict[str, str]]:
    """``[{"image": path}]`` for a file, a folder (its image files, sorted) or a list of files.

    Raises ``FileNotFoundError`` naming a missing path and ``ValueError`` for a folder
    without images or a file of an unsupported type.
    """
    paths = [inputs] if isinstance(inputs, str) else list(inputs)
    files: list[str] = []
    for p in paths:
        p = os.path.expanduser(str(p))
        if os.path.isdir(p):
            found = sorted(os.path.join(p, f) for f in os.listdir(p) if f.lower().endswith(IMAGE_SUFFIXES))
            if not found:
                raise ValueError(f"{p}: no image files ({', '.join(IMAGE_SUFFIXES)}) in this folder")
            files.extend(found)
        elif os.path.isfile(p):
            if not p.lower().endswith(IMAGE_SUFFIXES):
                raise ValueError(f"{p}: unsupported file type (expected one of {', '.join(IMAGE_SUFFIXES)})")
            files.append(p)
        else:
            raise FileNotFoundError(f"input not found: {p}")
    if not files:
        raise ValueError("no input image given")
    stems = [_stem(f) for f in files]
    dupes = sorted({s for s in stems if stems.count(s) > 1})
    if dupes:
        raise ValueError(f"several inputs would write the same output name: {dupes}")
    return [{"image": os.path.abspath(f)} for f in files]


def mask_output_path(output_dir: str, source: str, postfix: str = "mask") -> str:
    """Where :class:`SaveMaskd` writes the mask of ``source``."""
    ext = ".nii.gz" if is_nifti(source) else ".png"
    return os.path.join(output_dir, f"{_stem(source)}_{postfix}{ext}")


def screen_file(
    path: str,
    transform: Callable | None = None,
    intensity_range: Sequence[float] | None = None,
    timeout_s: float | None = 60.0,
) -> str | None:
    """Why ``path`` cannot be segmented (``None``: it can). Reads it with MONAI's ``LoadImage``
    (readable, 2-D or 2-D + 1/3/4 channels, finite values, within ``intensity_range``), then
    runs ``transform`` (the inference preprocessing) on it, all within ``timeout_s`` seconds."""
    from custom.data.preflight import image_problem, load_channel_first, time_limit

    try:
        with time_limit(timeout_s, f"checking {path}"):
            problem = image_problem(load_channel_first(path), intensity_range)
            if problem is None and transform is not None:
                transform({"image": path})
    except (ValueError, OSError, TimeoutError) as e:
        return str(e)
    except Exception as e:  # noqa: BLE001 - whatever the preprocessing raises makes the file a bad input
        cause = e.__cause__ or e  # MONAI's Compose wraps the transform's own error
        return f"preprocessing failed ({type(cause).__name__}: {' '.join(str(cause).split())[:300]})"
    return problem


class InputScreen:
    """Batch-inference pre-check: every input read once before the run; bad ones are logged,
    left out and, when the run completes, listed in ``<output_dir>/bad_inputs.json``
    (``[{"file", "reason"}]``, empty when all were good); the good ones are segmented.

    ``fail_on_bad_input`` makes any bad input fatal (a ``ValueError`` listing them all, before
    anything is written). Inputs that are all bad are an error too. Before the run it also
    refuses (``FileExistsError``) when a mask or ``bad_inputs.json`` it would write exists and
    ``overwrite`` is off, so a refused run writes nothing. Attach it as a handler to write the
    report at the end of the run.
    """

    def __init__(
        self,
        output_dir: str,
        transform: Callable | None = None,
        intensity_range: Sequence[float] | None = None,
        fail_on_bad_input: bool = False,
        overwrite: bool = False,
        timeout_s: float | None = 60.0,
        postfix: str = "mask",
    ) -> None:
        self.output_dir, self.transform, self.intensity_range = output_dir, transform, intensity_range
        self.fail_on_bad_input = parse_bool(fail_on_bad_input, "fail_on_bad_input")
        self.overwrite, self.timeout_s, self.postfix = parse_bool(overwrite, "overwrite"), timeout_s, postfix
        self.bad: list[dict[str, str]] = []

    @property
    def report_path(self) -> str:
        return os.path.join(self.output_dir, BAD_INPUTS_NAME)

    def __call__(self, entries: Sequence[Mapping[str, str]]) -> list[dict[str, str]]:
        from custom.data.preflight import PreflightError

        if os.path.exists(self.output_dir) and not os.path.isdir(self.output_dir):
            raise FileExistsError(
                f"{self.output_dir}: the inference output folder (infer_output_dir) is an existing file"
            )
        from custom.utils.outputs import check_output_folder

        check_output_folder(self.output_dir, "--infer_output_dir")  # read-only or full: before any input is read
        if os.path.isdir(self.output_dir):  # the hidden temporary files of a killed run into this folder
            from custom.utils.atomic import remove_leftovers

            remove_leftovers(self.output_dir, ".tmp_*", "partial output")
        good, self.bad = [], []
        for entry in entries:
            reason = screen_file(entry["image"], self.transform, self.intensity_range, self.timeout_s)
            if reason is None:
                good.append(dict(entry))
            else:
                self.bad.append({"file": entry["image"], "reason": reason})
                logger.warning("bad input %s: %s", entry["image"], reason)
        if self.bad and self.fail_on_bad_input:
            raise PreflightError(
                [(b["file"], b["reason"]) for b in self.bad], context="the inference inputs (fail_on_bad_input)"
            )
        if not good:
            raise PreflightError(
                [(b["file"], b["reason"]) for b in self.bad], context="the inference inputs: none is usable"
            )
        if not self.overwrite:
            existing = [
                p
                for p in [self.report_path]
                + [mask_output_path(self.output_dir, e["image"], self.postfix) for e in good]
                if os.path.exists(p)
            ]
            if existing:
                raise FileExistsError(
                    f"{existing[0]} exists; refusing to overwrite it (set overwrite to replace outputs"
                    f"{f'; {len(existing)} outputs exist' if len(existing) > 1 else ''})"
                )
        if self.bad:
            logger.warning(
                "%d of %d inputs are bad and are skipped (listed in %s at the end)",
                len(self.bad),
                len(entries),
                self.report_path,
            )
        return good

    def add_bad(self, file: str, reason: str) -> None:
        """An input found bad during the run (e.g. its mask cannot be written): listed like the others."""
        self.bad.append({"file": file, "reason": reason})
        logger.warning("bad input %s: %s", file, reason)

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.COMPLETED, self.write)

    def write(self, engine: Engine | None = None) -> None:
        from custom.utils.atomic import atomic_write_json

        atomic_write_json(self.report_path, self.bad, indent=2)
        if self.bad:
            print(f"{len(self.bad)} bad input(s) skipped, listed in {self.report_path}:")
            for b in self.bad:
                print(f"  {b['file']}: {b['reason']}")


def screen_inputs(entries: Sequence[Mapping[str, str]], output_dir: str, **kwargs: Any) -> list[dict[str, str]]:
    """Functional form of :class:`InputScreen` (writes ``bad_inputs.json`` at once)."""
    screen = InputScreen(output_dir, **kwargs)
    good = screen(entries)
    screen.write()
    return good


def _spatial_shape_of(mask: Any) -> tuple[int, ...] | None:
    """The input's own spatial shape as LoadImage read it (``spatial_shape`` of the mask's meta)."""
    meta = getattr(mask, "meta", None)
    value = meta.get("spatial_shape") if isinstance(meta, Mapping) else None
    if value is None:
        return None
    try:
        shape = (
            np.asarray(torch.as_tensor(value) if not isinstance(value, np.ndarray) else value).astype(np.int64).ravel()
        )
    except (TypeError, ValueError):
        return None
    return tuple(int(v) for v in shape) if shape.size else None


def _squeezed(shape: Sequence[int]) -> tuple[int, ...]:
    return tuple(int(s) for s in shape if int(s) != 1)


def _size(shape: Sequence[int]) -> str:
    return "x".join(str(int(s)) for s in shape)


class MaskWriteError(ValueError):
    """A mask could not be written (or not at its input's size); the message names the file and why."""


class SaveMaskd(MapTransform):
    """Save a label map (``1 x X x Y`` at the original size) next to nothing else: PNG for 2-D
    image files, NIfTI (with the input's affine and its own array shape, e.g. ``64 x 64 x 1``)
    for NIfTI inputs, as ``<stem>_mask.<ext>``.

    Each file gets a fresh MONAI writer (``PILWriter`` / ``NibabelWriter``): nothing is carried
    from one file to the next (MONAI's ``SaveImage`` keeps a ``channel_dim`` it guessed for one
    file, which broke every later mask of a batch). Every file is written atomically
    (:mod:`custom.utils.atomic`) and read back: a mask is written at its input's size and orientation,
    or not at all. A mask that cannot be written (file name too long, a mismatching size, ...)
    makes its input a bad input, listed by ``screen`` (the run's :class:`InputScreen`) with the
    reason; without ``screen`` it raises :class:`MaskWriteError`. An existing output is never
    overwritten unless ``overwrite`` is set (a clear ``FileExistsError`` names it).
    """

    def __init__(
        self,
        keys,
        output_dir: str,
        source_key: str = "image",
        overwrite: bool = False,
        postfix: str = "mask",
        overlay: bool = False,
        allow_missing_keys: bool = False,
        screen: InputScreen | None = None,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.output_dir, self.source_key, self.overwrite, self.postfix = (
            output_dir,
            source_key,
            parse_bool(overwrite, "overwrite"),
            postfix,
        )
        self.overlay = parse_bool(overlay, "save_overlays")
        self.screen = screen

    def output_path(self, source: str) -> str:
        return mask_output_path(self.output_dir, source, self.postfix)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            mask = d[key]
            source = str(mask.meta.get("filename_or_obj", "")) if hasattr(mask, "meta") else ""
            target = self.output_path(source or "mask.png")
            if os.path.exists(target) and not self.overwrite:
                raise FileExistsError(f"{target} exists; refusing to overwrite it (set overwrite to replace outputs)")
            try:
                self._write_mask(mask, source, target)
                if self.overlay and source:
                    self._save_overlay(
                        source, np.squeeze(np.asarray(mask.detach().cpu() if isinstance(mask, torch.Tensor) else mask))
                    )
            except (MaskWriteError, OSError) as e:
                from custom.utils.outputs import FOLDER_ERRNOS, OutputFolderError

                if isinstance(e, OSError) and e.errno in FOLDER_ERRNOS:  # a full disk, a read-only folder:
                    raise OutputFolderError(  # no later mask fares better, and exit 0 would claim success
                        f"--infer_output_dir {self.output_dir}: cannot write {os.path.basename(target)}: "
                        f"{e.strerror or e} (the masks written before it are complete)"
                    ) from e
                reason = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
                reason = (
                    f"cannot write its mask {os.path.basename(target)}: {reason}" if isinstance(e, OSError) else reason
                )
                if self.screen is None:
                    raise MaskWriteError(f"{source or target}: {reason}") from e
                self.screen.add_bad(source or target, reason)
                d[f"{key}_path"] = None
                continue
            d[f"{key}_path"] = target
        return d

    def _write_mask(self, mask: Any, source: str, target: str) -> None:
        from monai.data import NibabelWriter, PILWriter
        from monai.transforms import LoadImage

        from custom.utils.atomic import atomic_path

        array = (mask.detach().cpu() if isinstance(mask, torch.Tensor) else torch.as_tensor(np.asarray(mask))).to(
            torch.uint8
        )
        array = array.as_tensor() if hasattr(array, "as_tensor") else array
        if array.ndim == 2:
            array = array[None]
        expected = _spatial_shape_of(mask) or tuple(array.shape[1:])
        if _squeezed(array.shape[1:]) != _squeezed(expected) or array.shape[0] != 1:
            raise MaskWriteError(
                f"the mask came out {_size(array.shape[1:])} for an input of {_size(expected)}; not written"
            )
        array = array.reshape(1, *expected)  # the input's own axes (a 64x64x1 NIfTI gets a 64x64x1 mask)
        meta = dict(mask.meta) if hasattr(mask, "meta") else {}
        nifti = is_nifti(source)
        with atomic_path(target) as tmp:
            writer = NibabelWriter(output_dtype=np.uint8) if nifti else PILWriter(output_dtype=np.uint8, scale=None)
            writer.set_data_array(array, channel_dim=0, squeeze_end_dims=not nifti)
            writer.set_metadata(meta, resample=False)
            if nifti:  # the input's own array shape (MONAI pads to 3-D + channel): a 64x64x1 input gets a 64x64x1 mask
                writer.data_obj = writer.data_obj.reshape(expected)
            writer.write(tmp, verbose=False)
            written = LoadImage(image_only=True)(tmp)  # a fresh reader per file
            if _squeezed(written.shape) != _squeezed(expected) or (nifti and tuple(written.shape) != tuple(expected)):
                raise MaskWriteError(
                    f"the written mask is {_size(written.shape)} for an input of {_size(expected)}; not written"
                )

    def _save_overlay(self, source: str, mask_xy: np.ndarray) -> None:
        from PIL import Image

        from custom.data.transforms import load_image
        from custom.evaluation.evaluate import overlay_image
        from custom.utils.atomic import atomic_write

        image = np.squeeze(np.asarray(load_image(source), dtype=np.float32))
        if image.ndim == 3:
            image = image[..., :3].mean(-1) if image.shape[-1] in (3, 4) else image.mean(0)
        rgb = overlay_image(image.T, np.zeros_like(mask_xy.T), mask_xy.T.astype(np.int64))
        atomic_write(
            os.path.join(self.output_dir, f"{_stem(source)}_overlay.png"),
            lambda tmp: Image.fromarray(rgb).save(tmp, format="PNG"),
        )


class FiniteOutputCheck:
    """Handler: stop with an error naming the checkpoint when the network's output for an input is
    not finite (NaN/Inf), instead of writing the all-background masks an argmax of NaN gives."""

    def __init__(self, ckpt_path: str, pred_key: str = "pred", image_key: str = "image") -> None:
        self.ckpt_path, self.pred_key, self.image_key = ckpt_path, pred_key, image_key

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(IterationEvents.FORWARD_COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        pred = engine.state.output[self.pred_key]
        if bool(torch.isfinite(torch.as_tensor(pred)).all()):
            return
        image = engine.state.batch.get(self.image_key) if isinstance(engine.state.batch, Mapping) else None
        names = (
            getattr(image, "meta", {}).get("filename_or_obj", ["this input"]) if image is not None else ["this input"]
        )
        name = names[0] if isinstance(names, (list, tuple)) and names else names
        raise ValueError(
            f"{self.ckpt_path}: the network output for {name} holds NaN/Inf values; the checkpoint is "
            "corrupt or does not fit these inputs (no mask written)"
        )


def _forward(network: torch.nn.Module, engine: Engine, image_key: str) -> torch.Tensor:
    """``network``'s logits (in eval mode) on the engine's current batch of images, as a plain tensor."""
    x = engine.state.batch[image_key]
    x = (x.as_tensor() if hasattr(x, "as_tensor") else x).to(engine.state.device)
    return network.eval()(x)


class DisagreementWriter:
    """Runs the Transformer beside the deployed CNN and records how much they disagree.

    On each batch (after the CNN's forward pass) it computes ``p1 = softmax(CNN(x))``,
    ``p2 = softmax(Transformer(x))`` and the information divergence
    ``KL(p1 || p2) + MIG(p1, p2)`` per pixel (the method's ``L_ID`` before averaging).
    It writes ``<stem>_disagreement.npy`` (float32 map at the frame's size, resized bilinearly
    from the network's input size, as the masks are) and a PNG heat map, and at the end
    ``disagreement.json`` with each image's mean divergence, highest first, so users can spot
    the images the model is unsure about.
    """

    def __init__(
        self,
        transformer: torch.nn.Module,
        output_dir: str,
        kl_weight: float = 1.0,
        mig_weight: float = 1.0,
        image_key: str = "image",
    ) -> None:
        self.transformer, self.output_dir, self.image_key = transformer, output_dir, image_key
        self.divergence = InformationDivergenceLoss(kl_weight=kl_weight, mig_weight=mig_weight, reduction="none")
        self.scores: dict[str, float] = {}

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(IterationEvents.FORWARD_COMPLETED, self.on_forward)
        engine.add_event_handler(Events.COMPLETED, self.write)

    @torch.no_grad()
    def on_forward(self, engine: Engine) -> None:
        from PIL import Image

        batch = engine.state.batch
        logits = engine.state.output["pred"]
        logits = logits.as_tensor() if hasattr(logits, "as_tensor") else logits
        p1 = torch.softmax(logits.float(), 1)
        p2 = torch.softmax(_forward(self.transformer, engine, self.image_key).float(), 1)
        # per-pixel maps at each frame's own size (like the masks), not the network's input size
        maps = at_frame_size(self.divergence(p1, p2), batch[self.image_key])
        names = batch[self.image_key].meta.get(
            "filename_or_obj", [f"image_{len(self.scores) + i}" for i in range(len(maps))]
        )
        os.makedirs(self.output_dir, exist_ok=True)
        for name, m in zip(names, maps):
            stem = _stem(str(name))
            self.scores[str(name)] = float(m.mean())
            atomic_write(
                os.path.join(self.output_dir, f"{stem}_disagreement.npy"),
                lambda tmp, m=m: np.save(tmp, m.T.astype(np.float32)),
            )
            heat = np.clip(m.T / (np.log(2) * 2), 0, 1)  # KL + MIG of a confident 50/50 split is about 2 ln 2
            atomic_write(
                os.path.join(self.output_dir, f"{stem}_disagreement.png"),
                lambda tmp, heat=heat: Image.fromarray((heat * 255).astype(np.uint8)).save(tmp, format="PNG"),
            )

    def write(self, engine: Engine | None = None) -> None:
        ranked = sorted(self.scores.items(), key=lambda kv: kv[1], reverse=True)
        doc = {
            "score": "mean over pixels of KL(p_cnn || p_transformer) + MIG(p_cnn, p_transformer)",
            "images": [{"image": k, "disagreement": v} for k, v in ranked],
        }
        atomic_write_json(os.path.join(self.output_dir, "disagreement.json"), doc, indent=2)


def head_review_record(
    head_xy: np.ndarray,
    image_path: str,
    review_doc: Mapping[str, Any] | None,
    second_xy: np.ndarray | None = None,
    pixel_size_mm: float | None = None,
) -> dict[str, Any]:
    """One frame's head measurement and review (inference and the MONAI Label app): the head
    circumference of the ellipse fitted to ``head_xy`` (a boolean map in the reader's (x, y) order,
    at the frame's size; mm with ``pixel_size_mm``, else pixels), the review scores (the frame read
    from ``image_path``; ``second_xy``: the Transformer's head) and, with ``review_doc``'s
    thresholds, ``review`` true/false and its reason (``None`` and why without thresholds)."""
    from custom.data.transforms import load_image
    from custom.evaluation.biometry import ellipse_perimeter, fit_head_ellipse
    from custom.evaluation.evaluate import _grey
    from custom.evaluation.review import review, review_scores, with_size

    image = _grey(np.asarray(load_image(image_path, for_mask=False), dtype=np.float32))
    scores = review_scores(
        head_xy.T,
        None if second_xy is None or second_xy.shape != head_xy.shape else second_xy.T,
        image.T if image.shape == head_xy.shape else None,
    )
    try:
        _, _, a, b, _ = fit_head_ellipse(head_xy.T, pixel_size_mm)
        hc: float | None = ellipse_perimeter(a, b)
    except ValueError:
        hc = None
    row: dict[str, Any] = {"head_circumference": hc, "unit": "mm" if pixel_size_mm else "px"}
    if review_doc is not None:
        scores = with_size(scores, hc if pixel_size_mm else None, review_doc)
        row["review"], row["review_reason"] = review(scores, review_doc["thresholds"])
    else:
        row["review"], row["review_reason"] = None, "no review thresholds beside the weights (review.json)"
    row["scores"] = {k: (float(v) if np.isfinite(v) else None) for k, v in scores.items()}
    return row


class HeadReviewWriter:
    """The head measurement of every segmented frame and whether to distrust it.

    After the masks are saved (``ITERATION_COMPLETED``) it fits the head ellipse to each mask's
    ``head_class`` (:mod:`custom.evaluation.biometry`), scores it with
    :func:`custom.evaluation.review.review_scores` (the frame itself and, when the thresholds use it,
    the Transformer's head: ``transformer``) and marks it with the thresholds set on the validation
    list (``review``: :func:`custom.evaluation.review.read_review_file`). It writes
    ``<stem>_review.json`` beside each mask (head circumference in mm with ``pixel_size_mm``, else in
    pixels; ``review`` true/false and its reason; the scores) and, at the end, ``review.csv`` with
    one row per frame.
    """

    def __init__(
        self,
        output_dir: str,
        review: Mapping[str, Any] | None,
        head_class: int | None = None,
        transformer: torch.nn.Module | None = None,
        pixel_size_mm: float | None = None,
        overwrite: bool = False,
        image_key: str = "image",
        pred_key: str = "pred",
    ) -> None:
        self.output_dir, self.review = output_dir, review
        self.head_class = int(head_class if head_class is not None else (review or {}).get("head_class", 0)) or None
        if self.head_class is None:
            raise ValueError(
                "--head_class: no head label given and no review thresholds beside the weights to take it from"
            )
        self.transformer, self.overwrite = transformer, parse_bool(overwrite, "overwrite")
        self.pixel_size_mm = None if pixel_size_mm in (None, "", "null") else float(pixel_size_mm)
        if self.pixel_size_mm is not None and not (self.pixel_size_mm > 0 and np.isfinite(self.pixel_size_mm)):
            raise ValueError(f"--pixel_size_mm {pixel_size_mm!r}: expected a positive number of mm per pixel")
        self.image_key, self.pred_key = image_key, pred_key
        self.second: dict[str, np.ndarray] = {}
        self.rows: list[dict[str, Any]] = []

    def attach(self, engine: Engine) -> None:
        if self.transformer is not None:
            engine.add_event_handler(IterationEvents.FORWARD_COMPLETED, self.on_forward)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self.on_iteration)
        engine.add_event_handler(Events.COMPLETED, self.write)

    @torch.no_grad()
    def on_forward(self, engine: Engine) -> None:
        """The Transformer's head at each frame's size (kept until its mask is scored)."""
        from custom.evaluation.evaluate import _label_map
        from custom.evaluation.overlays import _frame_shapes

        x = engine.state.batch[self.image_key]
        logits = _forward(self.transformer, engine, self.image_key)
        names = x.meta.get("filename_or_obj", []) if hasattr(x, "meta") else []
        for i, (name, shape) in enumerate(zip(names, _frame_shapes(x, len(logits)))):
            if shape is not None:  # the label map as the evaluation's (calibration's) path makes it
                self.second[str(name)] = _label_map(logits[i : i + 1], shape[:2]) == self.head_class

    def on_iteration(self, engine: Engine) -> None:
        outputs = engine.state.output if isinstance(engine.state.output, list) else [engine.state.output]
        for out in outputs:
            pred = out.get(self.pred_key)
            mask_path = out.get(f"{self.pred_key}_path")
            source = str(pred.meta.get("filename_or_obj", "")) if hasattr(pred, "meta") else ""
            if pred is None or not source or not mask_path:
                continue  # a frame without a mask (a bad input) has no measurement either
            head_xy = np.squeeze(np.asarray(pred.detach().cpu())) == self.head_class
            row = {
                "image": source,
                "mask": mask_path,
                **head_review_record(head_xy, source, self.review, self.second.pop(source, None), self.pixel_size_mm),
            }
            target = mask_output_path(self.output_dir, source, "review")
            target = target[: -len(".nii.gz")] + ".json" if target.endswith(".nii.gz") else target[:-4] + ".json"
            if os.path.exists(target) and not self.overwrite:
                raise FileExistsError(f"{target} exists; refusing to overwrite it (set overwrite to replace outputs)")
            atomic_write_json(target, row, indent=2)
            self.rows.append(row)

    def write(self, engine: Engine | None = None) -> None:
        import csv
        import io

        from custom.utils.atomic import atomic_write_text

        buffer = io.StringIO()
        writer = csv.writer(buffer)
        columns = ("image", "mask", "head_circumference", "unit", "review", "review_reason")
        writer.writerow(columns)
        writer.writerows([r[c] for c in columns] for r in self.rows)
        atomic_write_text(os.path.join(self.output_dir, "review.csv"), buffer.getvalue())
        marked = sum(bool(r["review"]) for r in self.rows)
        logger.info("%d of %d frames marked for review (review.csv in %s)", marked, len(self.rows), self.output_dir)
