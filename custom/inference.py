"""Inference pieces of ``inference.yaml``: input listing, mask saving in the input's format,
overlays, and the CNN-Transformer disagreement (per-pixel map and per-image score)."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from ignite.engine import Engine, Events
from monai.engines.utils import IterationEvents
from monai.transforms import MapTransform, SaveImage

from .losses import InformationDivergenceLoss

__all__ = ["IMAGE_SUFFIXES", "list_inputs", "SaveMaskd", "DisagreementWriter", "is_nifti"]

logger = logging.getLogger(__name__)

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


class SaveMaskd(MapTransform):
    """Save a label map (``1 x X x Y`` at the original size) next to nothing else: PNG for 2-D
    image files, NIfTI (with the input's affine) for NIfTI inputs, as ``<stem>_mask.<ext>``.

    Uses MONAI's ``SaveImage`` writers; an existing output is never overwritten unless
    ``overwrite`` is set (a clear ``FileExistsError`` names it).
    """

    def __init__(self, keys, output_dir: str, source_key: str = "image", overwrite: bool = False,
                 postfix: str = "mask", overlay: bool = False, allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.output_dir, self.source_key, self.overwrite, self.postfix = output_dir, source_key, bool(overwrite), postfix
        self.overlay = bool(overlay)
        common = dict(output_dir=output_dir, output_postfix=postfix, output_dtype=np.uint8, resample=False,
                      separate_folder=False, print_log=False)
        self.png = SaveImage(output_ext=".png", scale=None, **common)
        self.nifti = SaveImage(output_ext=".nii.gz", **common)

    def output_path(self, source: str) -> str:
        ext = ".nii.gz" if is_nifti(source) else ".png"
        return os.path.join(self.output_dir, f"{_stem(source)}_{self.postfix}{ext}")

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            mask = d[key]
            source = str(mask.meta.get("filename_or_obj", "")) if hasattr(mask, "meta") else ""
            target = self.output_path(source or "mask.png")
            if os.path.exists(target) and not self.overwrite:
                raise FileExistsError(f"{target} exists; refusing to overwrite it (set overwrite to replace outputs)")
            os.makedirs(self.output_dir, exist_ok=True)
            (self.nifti if is_nifti(source) else self.png)(mask.to(torch.uint8) if isinstance(mask, torch.Tensor) else mask)
            d[f"{key}_path"] = target
            if self.overlay and source:
                self._save_overlay(source, np.squeeze(np.asarray(mask.detach().cpu() if isinstance(mask, torch.Tensor) else mask)))
        return d


    def _save_overlay(self, source: str, mask_xy: np.ndarray) -> None:
        from monai.transforms import LoadImage
        from PIL import Image

        from .evaluation import overlay_image

        image = np.squeeze(np.asarray(LoadImage(image_only=True)(source), dtype=np.float32))
        if image.ndim == 3:
            image = image[..., :3].mean(-1) if image.shape[-1] in (3, 4) else image.mean(0)
        rgb = overlay_image(image.T, np.zeros_like(mask_xy.T), mask_xy.T.astype(np.int64))
        Image.fromarray(rgb).save(os.path.join(self.output_dir, f"{_stem(source)}_overlay.png"))


class DisagreementWriter:
    """Runs the Transformer beside the deployed CNN and records how much they disagree.

    On each batch (after the CNN's forward pass) it computes ``p1 = softmax(CNN(x))``,
    ``p2 = softmax(Transformer(x))`` and the information divergence
    ``KL(p1 || p2) + MIG(p1, p2)`` per pixel (the method's ``L_ID`` before averaging).
    It writes ``<stem>_disagreement.npy`` (float32 map at the network's input size) and a
    PNG heat map, and at the end ``disagreement.json`` with each image's mean divergence,
    highest first, so users can spot the images the model is unsure about.
    """

    def __init__(self, transformer: torch.nn.Module, output_dir: str, kl_weight: float = 1.0, mig_weight: float = 1.0,
                 image_key: str = "image") -> None:
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
        x = batch[self.image_key]
        x = (x.as_tensor() if hasattr(x, "as_tensor") else x).to(engine.state.device)
        logits = engine.state.output["pred"]
        logits = logits.as_tensor() if hasattr(logits, "as_tensor") else logits
        self.transformer.eval()
        p1 = torch.softmax(logits.float(), 1)
        p2 = torch.softmax(self.transformer(x).float(), 1)
        maps = self.divergence(p1, p2).cpu().numpy()
        names = batch[self.image_key].meta.get("filename_or_obj", [f"image_{len(self.scores) + i}" for i in range(len(maps))])
        os.makedirs(self.output_dir, exist_ok=True)
        for name, m in zip(names, maps):
            stem = _stem(str(name))
            self.scores[str(name)] = float(m.mean())
            np.save(os.path.join(self.output_dir, f"{stem}_disagreement.npy"), m.T.astype(np.float32))
            heat = np.clip(m.T / (np.log(2) * 2), 0, 1)  # KL + MIG of a confident 50/50 split is about 2 ln 2
            Image.fromarray((heat * 255).astype(np.uint8)).save(os.path.join(self.output_dir, f"{stem}_disagreement.png"))

    def write(self, engine: Engine | None = None) -> None:
        ranked = sorted(self.scores.items(), key=lambda kv: kv[1], reverse=True)
        doc = {"score": "mean over pixels of KL(p_cnn || p_transformer) + MIG(p_cnn, p_transformer)",
               "images": [{"image": k, "disagreement": v} for k, v in ranked]}
        with open(os.path.join(self.output_dir, "disagreement.json"), "w") as f:
            json.dump(doc, f, indent=2)
