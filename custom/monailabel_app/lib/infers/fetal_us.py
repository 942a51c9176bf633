"""Segmentation with the bundle's UNeXt through MONAI Label's ``BundleInferTask``.

Our bundle differs from a model-zoo bundle in three ways that this subclass handles:

* its inference config is ``common.yaml`` + ``inference.yaml`` (+ the app's override YAML), not
  one file, so the config is read as a merged list;
* its weights live in the app's ``models_dir`` (by default ``bundle/models``), which may be
  outside the bundle folder;
* its postprocessing ends with ``custom.deploy.inference.SaveMaskd`` (the bundle writes PNGs itself):
  that is filtered out; MONAI Label writes the mask, squeezed to a 2-D ``uint8`` label map at
  the image's original size (PNG for PNG/JPEG inputs).
"""

from __future__ import annotations

import logging
import os
from typing import Any, Callable, Dict, Sequence

import numpy as np
import torch
from monai.transforms import SaveImaged
from monailabel.interfaces.exception import MONAILabelError, MONAILabelException
from monailabel.interfaces.tasks.infer_v2 import InferType
from monailabel.tasks.infer.basic_infer import BasicInferTask
from monailabel.tasks.infer.bundle import BundleConstants, BundleInferTask

from ..bundle_config import BundleSettings, ensure_repo_on_path

logger = logging.getLogger(__name__)


class FetalUSInferConstants(BundleConstants):
    """Absolute paths: ``os.path.join(bundle, 'configs', abs)`` is ``abs``, so MONAI Label's
    lookups land on the merged-config entry point and on the app's model file."""

    def __init__(self, settings: BundleSettings) -> None:
        self.settings = settings

    def configs(self) -> Sequence[str]:
        return self.settings.config_files("inference")[:1]

    def model_pytorch(self) -> str:
        return self.settings.model_path

    def model_torchscript(self) -> str:
        return os.path.join(self.settings.models_dir, "model.ts")


def image_id_of(path: str) -> str:
    """The datastore id of a frame's file (its name without the extension)."""
    return os.path.splitext(os.path.basename(str(path)))[0] if path else ""


def image_error(image_id: str, problem: str, path: str | None = None):
    """The HTTP 422 for an image that cannot be segmented: ``image 'ID' (FILE): PROBLEM``."""
    from fastapi import HTTPException

    where = f" ({path})" if path else ""
    return HTTPException(status_code=422, detail=f"image {image_id!r}{where}: {problem}")


class Squeeze2Dd:
    """``1 x W x H`` (or ``W x H``) label map -> ``W x H`` ``uint8`` numpy array."""

    def __init__(self, key: str = "pred") -> None:
        self.key = key

    def __call__(self, data: Dict[str, Any]) -> Dict[str, Any]:
        d = dict(data)
        x = d[self.key]
        x = x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
        while x.ndim > 2 and x.shape[0] == 1:
            x = x[0]
        if x.ndim != 2:
            raise ValueError(f"expected a 2-D label map, got shape {x.shape}")
        d[self.key] = np.round(x).astype(np.uint8)
        return d


class FetalUSInferTask(BundleInferTask):
    def __init__(self, settings: BundleSettings, conf: Dict[str, str], **kwargs) -> None:
        ensure_repo_on_path()
        import custom.deploy.inference

        self.settings = settings
        kwargs.setdefault("post_filter", [SaveImaged, custom.deploy.inference.SaveMaskd])
        # the bundle reads image and label with its own LoadImaged (label: allow_missing_keys, both through
        # custom.data.transforms.DisplayPILReader); MONAI Label's tensor-loading
        # wrapper would ask for a label, so keep the bundle's own LoadImaged
        kwargs.setdefault("extend_load_image", False)
        kwargs.setdefault("load_strict", True)
        super().__init__(
            settings.bundle_root, conf, const=FetalUSInferConstants(settings), type=InferType.SEGMENTATION, **kwargs
        )
        if not self.valid:
            # no model.pt yet: register the task anyway (MONAI Label trains the first one);
            # _get_network refuses to run until the file exists
            self._init_without_weights(conf, kwargs.get("load_strict", True))
        self.labels = settings.label_map()
        self._config["model_filename"] = self._model_files()
        self.description = (
            f"UNeXt of the semi-supervised fetal ultrasound bundle ({settings.num_classes} classes: "
            f"{', '.join(['background', *settings.labels])}); weights {settings.model_path}"
        )

    def __call__(self, request, *args, **kwargs):
        """Screen the image first (readable, 2-D, finite, within the intensity range): a bad
        file gets a 422 that names the image id, its file and the problem, instead of a bare
        server error. ``request["image_id"]`` is the id the client asked for (``MyApp.infer``
        keeps it; MONAI Label replaces ``image`` with the file's path)."""
        image = request.get("image")
        if isinstance(image, str):
            import custom.deploy.inference

            problem = custom.deploy.inference.screen_file(image, timeout_s=None) if image else "no file"
            if problem is not None:
                raise image_error(request.get("image_id") or image_id_of(image), problem, image)
        return super().__call__(request, *args, **kwargs)

    def _init_without_weights(self, conf: Dict[str, str], load_strict: bool) -> None:
        import json

        with open(self.settings.metadata) as fp:
            metadata = json.load(fp)
        self.key_image = next(iter(metadata["network_data_format"]["inputs"]))
        self.key_pred = next(iter(metadata["network_data_format"]["outputs"]))
        self.add_post_restore = True
        network = self.bundle_config.get_parsed_content(self.const.key_network_def(), instantiate=True)
        BasicInferTask.__init__(
            self,
            path=self.settings.model_path,
            network=network,
            type=InferType.SEGMENTATION,
            labels=self.settings.label_map(),
            dimension=2,
            description="",
            load_strict=load_strict,
        )
        self.version = metadata.get("version")
        self.valid = True
        logger.warning(
            "no model at %s yet: inference answers with an error until training writes one", self.settings.model_path
        )

    def _model_files(self) -> list[str]:
        d = self.settings.models_dir
        files = sorted((f for f in os.listdir(d) if f.endswith(".pt")), key=len) if os.path.isdir(d) else []
        return files or ["model.pt"]

    def _load_bundle_config(self, path, config):
        return self.settings.parser("inference")

    def _get_network(self, device, data):
        if not os.path.isfile(self.settings.model_path):
            raise MONAILabelException(
                MONAILabelError.INFERENCE_ERROR,
                f"no trained model at {self.settings.model_path}: train first (POST /train/<model>) "
                "or copy a model.pt there",
            )
        return super()._get_network(device, data)

    def post_transforms(self, data=None) -> Sequence[Callable]:
        return [*super().post_transforms(data), Squeeze2Dd(self.key_pred)]

    def writer(self, data: Dict[str, Any], extension=None, dtype=None):
        path = str(data.get("image_path") or "")
        if extension is None and not data.get("result_extension") and path.lower().endswith((".jpg", ".jpeg")):
            extension = ".png"  # a lossy mask is no mask
        result_file, result_json = super().writer(data, extension=extension, dtype=dtype or np.uint8)
        return result_file, {**(result_json or {}), **self._head_review(data, path)}

    def _head_review(self, data: Dict[str, Any], path: str) -> Dict[str, Any]:
        """The head measurement and ``review`` true/false with its reason (thresholds set on the
        validation list at the end of training: ``review.json`` beside ``model.pt``), as inference
        writes them beside each mask; nothing where no class names the head."""
        ensure_repo_on_path()
        from custom.deploy.inference import head_review_record
        from custom.evaluation.review import head_label, read_review_file

        try:
            review_doc = read_review_file(self.settings.model_path)
        except ValueError as e:  # thresholds of other weights: say so rather than judge with them
            return {"review": None, "review_reason": str(e)}
        head = review_doc["head_class"] if review_doc else head_label(self.settings.label_map())
        pred = data.get(self.key_pred)
        if head is None or pred is None or not path:
            return {}
        head_xy = np.squeeze(np.asarray(pred.detach().cpu() if isinstance(pred, torch.Tensor) else pred)) == head
        second = self._second_head(review_doc, path, head, head_xy.shape)
        return head_review_record(head_xy, path, review_doc, second)

    def _second_head(self, review_doc: Dict[str, Any] | None, path: str, head: int, shape) -> np.ndarray | None:
        """The Swin-Unet's head on the frame (its weights from the training state), where the
        thresholds judge the two networks' disagreement; ``None`` otherwise."""
        from monai.transforms import Compose

        from custom.evaluation.evaluate import _label_map
        from custom.evaluation.review import second_network

        state = self.settings.train_state_path
        if not review_doc or "disagreement" not in review_doc["thresholds"] or not os.path.isfile(state):
            return None
        key = (state, os.path.getmtime(state))
        if getattr(self, "_transformer_key", None) != key:
            parser = self.settings.parser("inference")
            self._transformer = second_network(review_doc, parser.get_parsed_content("transformer_def"), state).eval()
            self._preprocessing = Compose(parser.get_parsed_content("deterministic_transforms"))
            self._transformer_key = key
        x = torch.as_tensor(self._preprocessing({"image": path})["image"]).float()[None]
        with torch.no_grad():
            return _label_map(self._transformer(x), shape) == head
