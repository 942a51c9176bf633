"""Where the bundle, its weights and its configs are for the MONAI Label app, from the app's conf.

conf keys (``monailabel start_server ... --conf KEY VALUE``), each with an environment-variable
fallback so that the training subprocess MONAI Label starts sees the same values:

================== ============================ ==========================================================
conf key           environment variable         default
================== ============================ ==========================================================
``bundle_root``    ``FETAL_US_BUNDLE_ROOT``     the repository's ``bundle/`` folder (a packaged bundle: itself)
``models_dir``     ``FETAL_US_MODELS_DIR``      ``<bundle_root>/models`` (``model.pt``, ``train_state/``)
``output_dir``     ``FETAL_US_OUTPUT_DIR``      ``<models_dir>/monailabel_eval`` (TensorBoard logs)
``config_overrides`` ``FETAL_US_CONFIG_OVERRIDES`` none; comma-separated YAML files merged last, e.g.
                                                ``bundle/configs/cpu_small.yaml`` (relative to the repo)
``num_classes``    ``FETAL_US_NUM_CLASSES``     2 (3 for PSFHS weights)
``labels``         ``FETAL_US_LABELS``          ``fetal head`` (2 classes), ``pubic symphysis,fetal head`` (3)
``method``         ``FETAL_US_METHOD``          the bundle's default (``custom.utils.paths.DEFAULT_METHOD``,
                                                ``ours``); a packaged bundle: the method its ``train.json`` trains
================== ============================ ==========================================================

The ``divergence`` strategy needs the Swin-Unet, which only a method that trains it saves (the
default ``ours``, ``paper``); with any other method it answers that in one line.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, Mapping

logger = logging.getLogger(__name__)

APP_DIR = Path(__file__).resolve().parents[1]
REPO_ROOT = APP_DIR.parents[1]
APP_OVERRIDE = APP_DIR / "configs" / "monailabel.yaml"
MODEL_NAME = "fetal_us_ssl"

DEFAULT_LABELS = {2: ["fetal head"], 3: ["pubic symphysis", "fetal head"]}
# a packaged bundle (custom.deploy.package) ships one merged config per workflow instead of the pieces
MERGED = ("inference", "train")


def _get(conf: Mapping[str, Any], key: str, env: str, default: Any = None) -> Any:
    value = conf.get(key) if conf else None
    if value in (None, ""):
        value = os.environ.get(env)
    return default if value in (None, "") else value


def _resolve(path: str | os.PathLike) -> str:
    p = Path(os.path.expanduser(str(path)))
    return str(p if p.is_absolute() else (REPO_ROOT / p).resolve())


@dataclass
class BundleSettings:
    bundle_root: str
    models_dir: str
    output_dir: str
    num_classes: int = 2
    labels: list[str] = field(default_factory=lambda: list(DEFAULT_LABELS[2]))
    config_overrides: list[str] = field(default_factory=list)
    # the method file the app trains with (bundle/configs/methods/<method>.yaml); from_conf: the
    # conf's, else the bundle's default
    method: str = ""

    @classmethod
    def from_conf(cls, conf: Mapping[str, Any] | None = None) -> "BundleSettings":
        conf = conf or {}
        bundle_root = _resolve(_get(conf, "bundle_root", "FETAL_US_BUNDLE_ROOT", default_bundle_root()))
        models_dir = _resolve(_get(conf, "models_dir", "FETAL_US_MODELS_DIR", os.path.join(bundle_root, "models")))
        output_dir = _resolve(
            _get(conf, "output_dir", "FETAL_US_OUTPUT_DIR", os.path.join(models_dir, "monailabel_eval"))
        )
        # classes and their names default to those recorded beside the weights (models/model_config.json)
        ensure_repo_on_path()
        from custom.deploy.model_config import config_path, value

        recorded = config_path(models_dir)
        num_classes = int(_get(conf, "num_classes", "FETAL_US_NUM_CLASSES", value(recorded, "num_classes", 2)))
        names = {int(v): k for k, v in (value(recorded, "labels", None) or {}).items()}
        labels = _get(conf, "labels", "FETAL_US_LABELS", None)
        labels = (
            [s.strip() for s in labels.split(",") if s.strip()]
            if labels
            else (
                [names[c] for c in range(1, num_classes)]
                if set(range(1, num_classes)) <= set(names)
                else DEFAULT_LABELS.get(num_classes, [f"label_{i}" for i in range(1, num_classes)])
            )
        )
        if len(labels) != num_classes - 1:
            raise ValueError(
                f"labels {labels} must name the {num_classes - 1} foreground classes of num_classes={num_classes}"
            )
        overrides = _get(conf, "config_overrides", "FETAL_US_CONFIG_OVERRIDES", "")
        overrides = [_resolve(s.strip()) for s in str(overrides).split(",") if s.strip()]
        for f in overrides:
            if not os.path.isfile(f):
                raise FileNotFoundError(f"config override not found: {f}")
        configs = os.path.join(bundle_root, "configs")
        method = _get(conf, "method", "FETAL_US_METHOD", None)
        if os.path.isfile(os.path.join(configs, "common.yaml")):
            from custom.utils.paths import DEFAULT_METHOD

            method = str(method or DEFAULT_METHOD)
            if not os.path.isfile(os.path.join(configs, "methods", f"{method}.yaml")):
                raise FileNotFoundError(f"method {method!r}: no configs/methods/{method}.yaml in {bundle_root}")
        elif all(os.path.isfile(os.path.join(configs, f"{s}.json")) for s in MERGED):
            packaged = packaged_method(configs)  # a packaged bundle's train.json is one method, merged
            if method not in (None, packaged):
                raise FileNotFoundError(
                    f"method {method!r}: a packaged bundle ({bundle_root}) trains only {packaged!r}"
                )
            method = packaged
        else:
            raise FileNotFoundError(
                f"{bundle_root} is not the bundle folder (no configs/common.yaml, nor a packaged bundle's "
                "configs/inference.json and train.json)"
            )
        return cls(bundle_root, models_dir, output_dir, num_classes, labels, overrides, method)

    @cached_property
    def trains_transformer(self) -> bool:
        """Whether the app's method trains the Swin-Unet (and saves it for the divergence strategy)."""
        return "transformer" in (self.parser("train").get("networks") or {})

    # --- files
    @property
    def configs_dir(self) -> str:
        return os.path.join(self.bundle_root, "configs")

    @property
    def metadata(self) -> str:
        return os.path.join(self.configs_dir, "metadata.json")

    @property
    def model_path(self) -> str:
        return os.path.join(self.models_dir, "model.pt")

    @property
    def train_state_path(self) -> str:
        return os.path.join(self.models_dir, "train_state", "train_state.pt")

    def config_files(self, stage: str) -> list[str]:
        """``common.yaml``, the stage's config (``inference.yaml``, or ``train.yaml`` and the method
        file), the app's ``monailabel.yaml`` and the ``config_overrides``, merged in that order; in a
        packaged bundle the stage's merged ``inference.json`` / ``train.json`` replaces the pieces."""
        if not os.path.isfile(os.path.join(self.configs_dir, "common.yaml")):
            return [os.path.join(self.configs_dir, f"{stage}.json"), str(APP_OVERRIDE), *self.config_overrides]
        method = [os.path.join(self.configs_dir, "methods", f"{self.method}.yaml")] if stage == "train" else []
        return [
            os.path.join(self.configs_dir, "common.yaml"),
            os.path.join(self.configs_dir, f"{stage}.yaml"),
            *method,
            str(APP_OVERRIDE),
            *self.config_overrides,
        ]

    def overrides(self) -> dict[str, Any]:
        """Values the app sets on top of the merged configs."""
        return {
            "bundle_root": self.bundle_root,
            "ckpt_dir": self.models_dir,
            "output_dir": self.output_dir,
            "num_classes": self.num_classes,
        }

    def parser(self, stage: str):
        """A ``monai.bundle.ConfigParser`` holding the merged configs and the app's overrides."""
        from monai.bundle import ConfigParser

        ensure_repo_on_path()
        parser = ConfigParser()
        parser.read_config(self.config_files(stage))
        for key, value in self.overrides().items():
            parser[key] = value
        return parser

    def label_map(self) -> dict[str, int]:
        return {name: i for i, name in enumerate(self.labels, start=1)}


def epoch_overrides(max_epochs: Any) -> dict[str, Any]:
    """What ``max_epochs`` of a train request means, whatever scale file the server merges: an epoch
    is one pass over the labelled images MONAI Label hands in (not a scale file's ``epoch_length``:
    ``cpu_small.yaml``'s 200 would make 10 epochs 2,000 iterations), validated after each, and the
    learning-rate schedule and the terms' ramps span the ``max_epochs`` passes."""
    try:
        epochs = int(str(max_epochs).strip())
    except ValueError:
        epochs = 0
    if epochs < 1 or isinstance(max_epochs, bool):
        raise ValueError(
            f"train request: max_epochs {max_epochs!r}: expected a positive integer (passes over the labelled images)"
        )
    return {
        "train#epoch_length": "$len(@train#dataloader)",
        "max_iterations": f"$max(1, {epochs} * len(@train#dataloader))",
    }


def _zombie(pid: int) -> bool:
    """Whether ``pid`` has ended but not been reaped (``Z`` in ``/proc/<pid>/stat``; False where unknown)."""
    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except (OSError, IndexError):
        return False


def running_or_stopped(stats: dict[str, Any]) -> dict[str, Any]:
    """``stats`` as ``GET /info/`` should show them: a ``running`` run whose process has ended
    without writing ``done`` or ``failed`` (``DELETE /train/`` stops it with a signal, a crash kills
    it) is ``stopped``, with ``stopped_after`` its last iteration written."""
    from custom.training.lock import pid_alive

    pid = stats.get("pid")
    if stats.get("status") != "running" or not isinstance(pid, int) or (pid_alive(pid) and not _zombie(pid)):
        return stats
    return {
        **{k: v for k, v in stats.items() if k != "pid"},
        "status": "stopped",
        "stopped_after": f"iteration {stats.get('iterations')}, epoch {stats.get('epoch')}",
    }


def packaged_method(configs: str) -> str | None:
    """The method a packaged bundle's ``configs/train.json`` trains (its ``method`` entry)."""
    import json

    with open(os.path.join(configs, "train.json"), encoding="utf-8") as f:
        return json.load(f).get("method")


def default_bundle_root() -> Path:
    """The bundle folder as every config and tool finds it (:func:`custom.utils.paths.bundle_root`):
    the repository's ``bundle/``, or a copy made by ``custom.deploy.package`` itself; where there is
    none, the folder holding ``custom`` (refused below with a line saying what is missing)."""
    ensure_repo_on_path()
    from custom.utils.paths import bundle_root

    try:
        return Path(bundle_root())
    except FileNotFoundError:
        return REPO_ROOT


def ensure_repo_on_path() -> None:
    """Make the repository's ``custom`` package importable (the configs ``$import custom``)."""
    import sys

    root = str(REPO_ROOT)
    if root not in sys.path:
        sys.path.insert(0, root)
    # the training subprocess MONAI Label starts inherits this
    parts = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    if root not in parts:
        os.environ["PYTHONPATH"] = os.pathsep.join([root, *parts])
