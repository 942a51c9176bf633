"""Training of the bundle's method (UNeXt + Swin-Unet) through MONAI Label's ``BundleTrainTask``.

MONAI Label's labelled images become ``train#dataset#data`` (and ``validate#dataset#data``
by ``val_split``); its unlabelled images feed the semi-supervised terms through
``train#unlabeled_dataset#data``. The run id is ``run`` (``training: '@run'`` in train.yaml).
Training starts from the app's ``models_dir/model.pt`` (UNeXt) and the Transformer of
``models_dir/train_state/train_state.pt`` when they exist (``pretrained``, the default), and
writes both files back there.

Every labelled pair and unlabelled image is read once before training
(:func:`custom.data.preflight.check_entries`): a file that cannot be read or is not a usable
image or mask is left out with a warning naming it and the reason, so one broken upload
never stops training on the rest; no usable labelled image left is an error naming them.
"""

from __future__ import annotations

import logging
import os
from typing import Any, Dict

import monai.bundle
from monailabel.interfaces.datastore import Datastore
from monailabel.tasks.train.bundle import BundleConstants, BundleTrainTask
from monailabel.utils.others.generic import device_list

from ..bundle_config import BundleSettings, ensure_repo_on_path

logger = logging.getLogger(__name__)


class FetalUSTrainConstants(BundleConstants):
    def __init__(self, settings: BundleSettings) -> None:
        self.settings = settings

    def configs(self):
        return [
            os.path.join(self.settings.configs_dir, "train.yaml"),
            os.path.join(self.settings.configs_dir, "methods", f"{self.settings.method}.yaml"),
        ]

    def multi_gpu_configs(self):
        return []  # single process: the app runs the method's trainer in one process

    def key_network(self) -> str:
        return "network"  # the UNeXt, top-level in common.yaml

    def key_unlabeled_dataset_data(self) -> str:
        return "train#unlabeled_dataset#data"


class FetalUSTrainTask(BundleTrainTask):
    def __init__(self, settings: BundleSettings, conf: Dict[str, str], **kwargs) -> None:
        ensure_repo_on_path()
        self.settings = settings
        self._unlabeled: list[dict[str, str]] = []
        self._train: list[dict[str, str]] = []
        kwargs.setdefault("load_strict", True)
        super().__init__(settings.bundle_root, conf, const=FetalUSTrainConstants(settings), **kwargs)

    def _load_bundle_config(self, path, config):
        return self.settings.parser("train")

    def config(self):
        c = super().config()
        d = self.settings.models_dir
        models = sorted((f for f in os.listdir(d) if f.endswith(".pt")), key=len) if os.path.isdir(d) else []
        c.update(
            {
                "device": device_list(),
                "max_epochs": 50,
                "val_split": 0.2,
                "multi_gpu": False,
                "model_filename": models or ["model.pt"],
            }
        )
        return c

    def _fetch_datalist(self, request, datastore: Datastore):
        labelled = super()._fetch_datalist(request, datastore)
        label_tag, labels = request.get("label_tag"), request.get("labels")
        unlabelled = [
            {"image": datastore.get_image_uri(i)} for i in sorted(datastore.get_unlabeled_images(label_tag, labels))
        ]
        if not labelled:
            raise ValueError("no labelled image in the datastore: save at least one label first")
        labelled, bad_labelled = self._usable(labelled, require_labels=True)
        if not labelled:
            raise ValueError(
                "no usable labelled image in the datastore: " + "; ".join(f"{f}: {m}" for f, m in bad_labelled)
            )
        unlabelled, _ = self._usable(unlabelled, require_labels=False)
        self._unlabeled = unlabelled
        logger.info("labelled images: %d; unlabelled images: %d", len(labelled), len(unlabelled))
        return labelled

    def _usable(self, entries: list[dict], require_labels: bool) -> tuple[list[dict], list[tuple[str, str]]]:
        """The entries whose files all read as usable images (and masks); the others are logged and left out."""
        from custom.data.preflight import check_entries

        good, bad = [], []
        for entry in entries:
            problems = check_entries([entry], self.settings.num_classes, require_labels=require_labels, timeout_s=60.0)
            if problems:
                bad += problems
                for file, problem in problems:
                    logger.warning("training leaves out %s: %s", file, problem)
            else:
                good.append(entry)
        return good, bad

    def _partition_datalist(self, datalist, request, shuffle=False):
        train_ds, val_ds = super()._partition_datalist(datalist, request, shuffle=shuffle)
        if not val_ds:
            # the bundle saves model.pt on its best validation Dice, so it needs validation images
            logger.warning(
                "no validation images (val_split %s, %d labelled): validating on the training images",
                request.get("val_split", 0.2),
                len(datalist),
            )
            val_ds = list(train_ds)
        self._train = list(train_ds)
        return train_ds, val_ds

    def _unlabeled_data(self, unlabeled_batch: int) -> list[dict[str, str]]:
        data = list(self._unlabeled)
        if len(data) < unlabeled_batch:
            # the unsupervised terms need full batches; labelled images serve as unlabelled too
            extra = [{"image": d["image"]} for d in self._train]
            logger.warning(
                "only %d unlabelled images for batches of %d: adding the %d labelled images",
                len(data),
                unlabeled_batch,
                len(extra),
            )
            data += extra
        while data and len(data) < unlabeled_batch:
            data += data[: unlabeled_batch - len(data)]
        return data

    def _load_checkpoint(self, model_pytorch, pretrained, train_handlers):
        # MONAI Label builds the path from the bundle folder; ours is the app's models_dir
        model_pytorch = os.path.join(self.settings.models_dir, os.path.basename(model_pytorch))
        super()._load_checkpoint(model_pytorch, pretrained, train_handlers)
        state = self.settings.train_state_path
        if pretrained and os.path.isfile(state):
            if not [t for t in train_handlers if t.get("_target_") == "custom.training.checkpoint.WeightsLoader"]:
                logger.info("Transformer weights from %s", state)
                train_handlers.insert(
                    0,
                    {
                        "_target_": "custom.training.checkpoint.WeightsLoader",
                        "load_path": state,
                        "network": "@transformer",
                        "key": "transformer",
                    },
                )

    def _update_overrides(self, overrides: Dict[str, Any]) -> Dict[str, Any]:
        parser = self.bundle_config
        batch, labelled_batch = (
            int(parser.get_parsed_content("batch_size")),
            int(parser.get_parsed_content("labeled_bs")),
        )
        unlabelled = self._unlabeled_data(batch - labelled_batch)
        overrides.update(self.settings.overrides())
        overrides["bundle_root"] = self.settings.bundle_root
        overrides[self.const.key_unlabeled_dataset_data()] = unlabelled
        # the top-level datalists the bundle's other entries may read
        overrides["train_datalist"] = overrides[self.const.key_train_dataset_data()]
        overrides["unlabeled_datalist"] = unlabelled
        if self.const.key_validate_dataset_data() in overrides:
            overrides["val_datalist"] = overrides[self.const.key_validate_dataset_data()]
        return overrides

    def run_single_gpu(self, request, overrides):
        run_id = request.get("run_id") or "run"
        ensure_repo_on_path()
        monai.bundle.run(
            run_id=run_id,
            init_id="initialize",
            final_id=None,
            meta_file=self.settings.metadata,
            config_file=self.settings.config_files("train"),
            **overrides,
        )
