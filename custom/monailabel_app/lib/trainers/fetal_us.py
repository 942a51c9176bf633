"""Training of the bundle's method (the default, or ``--conf method``) through MONAI Label's ``BundleTrainTask``.

MONAI Label's labelled images become ``train#dataset#data`` (and ``validate#dataset#data``
by ``val_split``); its unlabelled images feed the semi-supervised terms through
``train#unlabeled_dataset#data``. The run id is ``run`` (``training: '@run'`` in train.yaml).
Training starts from the app's ``models_dir/model.pt`` (UNeXt) and the Transformer of
``models_dir/train_state/train_state.pt`` when they exist (``pretrained``, the default), and
writes both files back there.

Every labelled pair and unlabelled image is read once before training
(:func:`custom.data.preflight.check_entries`): a file that cannot be read or is not a usable
image or mask is left out with a warning naming it and the reason, so one broken upload
never stops training on the rest. Training needs at least one usable labelled image: with none,
it stops before building anything with one error line saying so (and naming the unusable ones);
with fewer labelled images than ``labeled_bs``, train.yaml makes the labelled batch smaller
(with a warning); with no validation image (``val_split`` 0, or too few labels to spare one)
it validates on the training images and says so in the log and in the stats.

After each epoch and at the end, the run is summarised in ``models_dir/train_stats.json``
(MONAI Label's ``BasicTrainTask`` layout and file name, written atomically), which MONAI Label
serves as ``train_stats`` in ``GET /info/`` and ``GET /model/info/<model>``: ``start_ts``,
``last_training`` (local time of the last update), ``total_time`` (``current_time`` while
running), ``status``, ``epoch``/``max_epochs``, ``iterations``, ``best_metric`` and
``best_metric_epoch`` (the UNeXt's validation mean Dice, the metric ``model.pt`` is chosen by),
``eval``/``train`` (metrics, key metric, best and its epoch), ``labelled_images``,
``validation_images``, ``validated_on``, ``unlabelled_images``, ``left_out`` (image id and
problem of each frame left out), ``labeled_batch_size``, ``method``, ``image_size``. A training
refused before it starts (no usable label, a bad request, weights of another size) is written
there too: ``status: refused`` and the one-line ``error``, so ``/info/`` never shows an earlier
run's ``done`` for it.

Scale: training continues the served model (``models_dir/model_config.json``: image size, input
channels, intensity range, the Swin-Unet's widths, class names); ``image_size`` in the request
trains at another size, replacing weights of another size only with ``overwrite_model: true``.
No progress bar (the server logs the task's output line by line): ``StatsHandler`` logs one line
every ``log_every`` iterations.
"""

from __future__ import annotations

import datetime
import logging
import math
import os
import sys
import time
from typing import Any, Dict

import monai.bundle
from monailabel.interfaces.datastore import Datastore
from monailabel.tasks.train.bundle import BundleConstants, BundleTrainTask
from monailabel.utils.others.generic import device_list

from ..bundle_config import BundleSettings, ensure_repo_on_path, epoch_overrides, running_or_stopped

logger = logging.getLogger(__name__)

STATS_FILENAME = "train_stats.json"  # BasicTrainTask's name, in the model folder


class TrainingInputError(ValueError):
    """What MONAI Label has to train on cannot be trained on (no usable labelled image)."""


def _in_task_process() -> bool:
    """Whether this is the process MONAI Label starts for a training request
    (``python -m monailabel.interfaces.utils.app -m train``), whose output the train status shows."""
    argv0 = os.path.normpath(sys.argv[0]) if sys.argv and sys.argv[0] else ""
    return argv0.endswith(os.path.join("monailabel", "interfaces", "utils", "app.py"))


def _image_id(path: str, ids: Dict[str, str]) -> str:
    return ids.get(os.path.realpath(path)) or os.path.splitext(os.path.basename(path))[0]


def _image_size(value: Any) -> list[int]:
    """``[H, W]`` from a train request's ``image_size`` (``128``, ``[128, 128]`` or ``"128"``)."""
    import json

    given = value
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            value = None
    size = [value, value] if isinstance(value, int) and not isinstance(value, bool) else value
    if (
        not isinstance(size, list)
        or len(size) != 2
        or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 32 and v % 32 == 0 for v in size)
    ):
        raise TrainingInputError(
            f"train request: image_size {given!r}: expected a side (e.g. 128) or [height, width], multiples of 32"
        )
    return size


def _number(value: Any) -> Any:
    """A JSON-safe value: tensors and numpy values as Python numbers, NaN/inf as ``None``
    (FastAPI refuses to send NaN)."""
    if hasattr(value, "tolist"):
        value = value.tolist()
    if isinstance(value, (list, tuple)):
        return [_number(v) for v in value]
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if value is None or isinstance(value, (bool, int, str)):
        return value
    return str(value)


def _engine_summary(engine: Any) -> Dict[str, Any]:
    state = engine.state
    epoch = getattr(state, "best_metric_epoch", -1)
    best = _number(getattr(state, "best_metric", None))
    return {
        "metrics": {str(k): _number(v) for k, v in (state.metrics or {}).items()},
        "key_metric_name": getattr(state, "key_metric_name", None),
        "best_metric": best if epoch is not None and epoch >= 0 else None,
        "best_metric_epoch": epoch if epoch is not None and epoch >= 0 else None,
    }


class TrainStatsWriter:
    """Writes ``train_stats.json`` from the trainer's and the validator's states: after every
    epoch (``status: running``) and when the run ends (``done``, or ``failed`` with the error)."""

    def __init__(self, path: str, trainer: Any, evaluator: Any, data: Dict[str, Any]) -> None:
        self.path, self.trainer, self.evaluator, self.data = path, trainer, evaluator, dict(data)
        self.start = time.time()

    def stats(self, status: str = "running", error: str | None = None) -> Dict[str, Any]:
        state = self.trainer.state
        done = status != "running"
        evaluation = _engine_summary(self.evaluator)
        elapsed = str(datetime.timedelta(seconds=int(time.time() - self.start)))
        return {
            "status": status,
            **({"error": error} if error else {}),
            # the training process, so that a reader can tell a run that was stopped (DELETE /train/)
            # or killed from one still running: see FetalUSTrainTask.stats
            **({} if done else {"pid": os.getpid()}),
            "start_ts": int(self.start),
            "last_training": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
            ("total_time" if done else "current_time"): elapsed,
            "epoch": int(state.epoch),
            "max_epochs": int(state.max_epochs or 0),
            "iterations": int(state.iteration),
            "epoch_length": int(state.epoch_length or 0),
            # the UNeXt's validation mean Dice, the key metric model.pt is chosen by
            "best_metric": evaluation["best_metric"],
            "best_metric_epoch": evaluation["best_metric_epoch"],
            "key_metric_name": evaluation["key_metric_name"],
            "eval": evaluation,
            "train": _engine_summary(self.trainer),
            **self.data,
        }

    def write(self, status: str = "running", error: str | None = None) -> Dict[str, Any]:
        from custom.utils.atomic import atomic_write_json

        stats = self.stats(status, error)
        atomic_write_json(self.path, stats)
        return stats

    def epoch_completed(self, engine: Any = None) -> None:
        self.write("running")


class FetalUSTrainConstants(BundleConstants):
    def __init__(self, settings: BundleSettings) -> None:
        self.settings = settings

    def configs(self):
        return self.settings.config_files("train")[:1]

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
        self._summary: dict[str, Any] = {}
        kwargs.setdefault("load_strict", True)
        super().__init__(settings.bundle_root, conf, const=FetalUSTrainConstants(settings), **kwargs)

    def _load_bundle_config(self, path, config):
        return self.settings.parser("train")

    @property
    def stats_path(self) -> str:
        return os.path.join(self.settings.models_dir, STATS_FILENAME)

    def stats(self) -> Dict[str, Any]:
        """The last training's summary (``train_stats`` in ``GET /info/``); ``{}`` before the first."""
        import json

        try:
            with open(self.stats_path, encoding="utf-8") as f:
                stats = json.load(f)
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as e:
            logger.warning("cannot read %s: %s", self.stats_path, e)
            return {}
        return running_or_stopped(stats) if isinstance(stats, dict) else {}

    def __call__(self, request, datastore: Datastore):
        request = dict(request)
        if request.get("multi_gpu") or request.get("force_multi_gpu"):
            # MONAI Label would return without training when the bundle has no multi-GPU config
            logger.warning("the app trains in one process: multi_gpu ignored")
        request["multi_gpu"] = request["force_multi_gpu"] = False
        self._summary = {"model": request.get("model"), "method": self.settings.method}
        self._request, self._started, self._stats_written = request, time.time(), False
        try:
            return super().__call__(request, datastore)
        except Exception as error:
            from custom.deploy.model_config import ModelConfigError
            from custom.utils.runtime import input_error_of

            found = error if isinstance(error, (TrainingInputError, ModelConfigError)) else input_error_of(error)
            if not self._stats_written:  # refused before training started: /info/ says so, not the last run's `done`
                self._write_refusal("refused" if found is not None else "failed", found or error)
            if found is None or os.environ.get("CUSTOM_TRACEBACK") == "1":
                raise
            logger.error("training failed: %s", found)
            if _in_task_process():
                # the train status shows the task's last output lines: this one, not a traceback
                raise SystemExit(1) from None
            raise

    def _write_refusal(self, status: str, error: BaseException) -> None:
        from custom.utils.atomic import atomic_write_json

        message = (
            " ".join(str(error).split())
            if isinstance(error, (TrainingInputError, ValueError))
            else (f"{type(error).__name__}: {' '.join(str(error).split())}")
        )
        stats = {
            "status": status,
            "error": message,
            "start_ts": int(self._started),
            "last_training": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
            "total_time": str(datetime.timedelta(seconds=int(time.time() - self._started))),
            "epoch": 0,
            "iterations": 0,
            "best_metric": None,
            "best_metric_epoch": None,
            **self._summary,
        }
        try:
            atomic_write_json(self.stats_path, stats)
        except OSError as e:
            logger.warning("cannot write %s: %s", self.stats_path, e)

    # --- scale: the served model's (models_dir/model_config.json), or the request's image_size
    def _scale_overrides(self, request: Dict[str, Any]) -> Dict[str, Any]:
        """The served weights' scale (image size, channels, intensity range, Swin-Unet widths and
        class names from ``model_config.json``), so that training continues the model inference
        serves; ``image_size`` in the request trains at that size instead, which replaces weights of
        another size only with ``"overwrite_model": true`` in the request."""
        from custom.deploy.model_config import config_path, read
        from custom.utils.cli import OptionError, parse_bool

        recorded = read(config_path(self.settings.models_dir)) or {}
        out: Dict[str, Any] = {}
        for key in ("image_size", "in_channels", "intensity_range"):
            if recorded.get(key) is not None:
                out[key] = recorded[key]
        for key in ("embed_dim", "depths", "num_heads", "window_size"):
            value = (recorded.get("transformer_def") or {}).get(key)
            if value is not None:
                out[f"transformer_def#{key}"] = value
        out["labels"] = recorded.get("labels") or {"background": 0, **self.settings.label_map()}
        try:
            overwrite = parse_bool(request.get("overwrite_model", False), "overwrite_model")
        except OptionError as e:
            raise TrainingInputError(f"train request: {e}") from None
        out["overwrite_model"] = overwrite
        size = request.get("image_size")
        if size not in (None, "", []):
            size = _image_size(size)
            served = recorded.get("image_size")
            if served and list(served) != size and os.path.isfile(self.settings.model_path) and not overwrite:
                raise TrainingInputError(
                    f"train request: image_size {size} but {self.settings.model_path} was trained at image_size "
                    f'{list(served)}: add "overwrite_model": true to the request to replace it, or leave '
                    "image_size out to train at the served model's size"
                )
            out["image_size"] = size
            out["_resized"] = bool(served) and list(served) != size
        logger.info(
            "training at image_size %s (%s)",
            out.get("image_size") or self._configured_image_size(),
            "the request's"
            if request.get("image_size") not in (None, "", [])
            else ("the served model's" if recorded else "no model_config.json yet"),
        )
        return out

    def _configured_image_size(self) -> Any:
        """The merged configs' image size (no record, no request): said as a size in the log."""
        try:
            return list(self.bundle_config.get_parsed_content("image_size"))
        except Exception:  # noqa: BLE001 - only a log line depends on it; training resolves it itself
            return "of the configs"

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
        unlabelled_ids = sorted(datastore.get_unlabeled_images(label_tag, labels))
        unlabelled = [{"image": datastore.get_image_uri(i)} for i in unlabelled_ids]
        ids = {os.path.realpath(datastore.get_image_uri(i)): i for i in datastore.list_images()}
        if not labelled:
            raise TrainingInputError(
                f"training needs at least 1 labelled image; the datastore has 0 labelled and "
                f"{len(unlabelled_ids)} unlabelled images: save a label first "
                "(PUT /datastore/label?image=ID&tag=final)"
            )
        labelled, bad_labelled = self._usable(labelled, ids, require_labels=True)
        if not labelled:
            raise TrainingInputError(
                f"training needs at least 1 usable labelled image; none of the {len(bad_labelled)} labelled "
                "images is usable: " + "; ".join(f"image {i!r} ({f}): {m}" for i, f, m in bad_labelled)
            )
        unlabelled, bad_unlabelled = self._usable(unlabelled, ids, require_labels=False)
        self._unlabeled = unlabelled
        self._summary.update(
            unlabelled_images=len(unlabelled),
            left_out=[{"image": i, "file": f, "problem": m} for i, f, m in bad_labelled + bad_unlabelled],
        )
        logger.info("labelled images: %d; unlabelled images: %d", len(labelled), len(unlabelled))
        return labelled

    def _usable(
        self, entries: list[dict], ids: Dict[str, str], require_labels: bool
    ) -> tuple[list[dict], list[tuple[str, str, str]]]:
        """The entries whose files all read as usable images (and masks); the others are logged
        (image id, file, problem) and left out."""
        from custom.data.preflight import check_entries

        good, bad = [], []
        for entry in entries:
            problems = check_entries([entry], self.settings.num_classes, require_labels=require_labels, timeout_s=60.0)
            if problems:
                image = _image_id(entry["image"], ids)
                for file, problem in problems:
                    bad.append((image, file, problem))
                    logger.warning("training leaves out image %r (%s): %s", image, file, problem)
            else:
                good.append(entry)
        return good, bad

    def _partition_datalist(self, datalist, request, shuffle=False):
        train_ds, val_ds = super()._partition_datalist(datalist, request, shuffle=shuffle)
        validated_on = "validation images"
        if not val_ds:
            # the bundle saves model.pt on its best validation Dice, so it needs validation images
            logger.warning(
                "no validation image (val_split %s, %d labelled): validating on the %d training image(s); "
                "the validation Dice is then a training Dice",
                request.get("val_split", 0.2),
                len(datalist),
                len(train_ds),
            )
            val_ds = list(train_ds)
            validated_on = "training images (no validation image)"
        self._train = list(train_ds)
        self._summary.update(
            labelled_images=len(train_ds),
            validation_images=0 if validated_on != "validation images" else len(val_ds),
            validated_on=validated_on,
        )
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
        if pretrained and os.path.isfile(state) and self.settings.trains_transformer:
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
        scale = self._scale_overrides(getattr(self, "_request", {}) or {})
        parser = self.bundle_config
        batch, labelled_batch = (
            int(parser.get_parsed_content("batch_size")),
            int(parser.get_parsed_content("labeled_bs")),
        )
        self._summary.update(
            batch_size=batch,
            # as train.yaml clamps it (custom.training.settings.labeled_batch_size, which warns)
            labeled_batch_size=min(labelled_batch, len(overrides[self.const.key_train_dataset_data()])),
        )
        unlabelled = self._unlabeled_data(batch - labelled_batch)
        overrides.update(self.settings.overrides())
        resized = scale.pop("_resized", False)
        overrides.update(scale)
        try:  # an epoch is one pass over the labelled images, whatever the scale file (bundle_config)
            overrides.update(epoch_overrides((getattr(self, "_request", {}) or {}).get("max_epochs", 50)))
        except ValueError as e:
            raise TrainingInputError(str(e)) from None
        # no progress bar: the server logs the task's output line by line, and a bar redrawn to a
        # pipe is a line (or two) per iteration; StatsHandler logs one line every log_every iterations
        key = self.const.key_train_handlers()
        overrides[key] = [
            h
            for h in overrides.get(key, parser.get(key, []))
            if not (isinstance(h, dict) and str(h.get("_target_", "")).endswith("ProgressBar"))
        ]
        if resized:
            # another image size: the Swin-Unet starts afresh (its attention windows follow the
            # size); the UNeXt, size-agnostic, still starts from model.pt
            overrides[key] = [
                h
                for h in overrides[key]
                if not (isinstance(h, dict) and h.get("key") == "transformer" and h.get("network") == "@transformer")
            ]
        self._summary["image_size"] = scale.get("image_size")
        overrides["bundle_root"] = self.settings.bundle_root
        overrides[self.const.key_unlabeled_dataset_data()] = unlabelled
        # the top-level datalists the bundle's other entries may read
        overrides["train_datalist"] = overrides[self.const.key_train_dataset_data()]
        overrides["unlabeled_datalist"] = unlabelled
        if self.const.key_validate_dataset_data() in overrides:
            overrides["val_datalist"] = overrides[self.const.key_validate_dataset_data()]
        return overrides

    def run_single_gpu(self, request, overrides):
        from ignite.engine import Events

        run_id = request.get("run_id") or "run"
        ensure_repo_on_path()
        # monai.bundle.run, with the trainer and validator kept for the stats; the overrides (the
        # datalists among them) go in without create_workflow's input summary, which logs every
        # entry of every list (the labelled list twice: train#dataset#data and train_datalist)
        workflow = monai.bundle.ConfigWorkflow(
            config_file=self.settings.config_files("train"),
            meta_file=self.settings.metadata,
            init_id="initialize",
            run_id=run_id,
            final_id=None,
            workflow_type="train",
        )
        workflow.parser.update(pairs=overrides)
        workflow.initialize()
        logger.info(
            "training %s on %d labelled, %d validation and %d unlabelled image(s)",
            run_id,
            len(overrides.get(self.const.key_train_dataset_data(), [])),
            len(overrides.get(self.const.key_validate_dataset_data(), []) or []),
            len(overrides.get(self.const.key_unlabeled_dataset_data(), [])),
        )
        trainer = workflow.parser.get_parsed_content("train#trainer")
        evaluator = workflow.parser.get_parsed_content("validate#evaluator")
        writer = TrainStatsWriter(self.stats_path, trainer, evaluator, self._summary)
        self._stats_written = True  # from here on the writer reports the run, failed or done
        trainer.add_event_handler(Events.EPOCH_COMPLETED, writer.epoch_completed)
        try:
            workflow.run()
            if trainer.state.iteration < 1:
                raise TrainingInputError(
                    f"training ran no iteration ({len(self._train)} labelled images, labelled batch "
                    f"{self._summary.get('labeled_batch_size')}): nothing was trained"
                )
        except BaseException as error:
            writer.write("failed", f"{type(error).__name__}: {error}")
            raise
        stats = writer.write("done")
        workflow.finalize()
        best = stats["best_metric"]
        logger.info(
            "trained %d epoch(s), %d iteration(s) on %d labelled image(s); best validation mean Dice %s at epoch %s "
            "(on the %s); stats in %s",
            stats["epoch"],
            stats["iterations"],
            stats.get("labelled_images", len(self._train)),
            "none" if best is None else f"{best:.4f}",
            stats["best_metric_epoch"],
            stats.get("validated_on"),
            self.stats_path,
        )
