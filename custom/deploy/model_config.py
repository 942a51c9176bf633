"""What the weights were trained with travels with them: ``model_config.json`` beside ``model.pt``.

Training writes it (atomically, just before each write of ``model.pt``; see
``custom.training.checkpoint.BestModelSaver``): image size, classes and their names, input channels,
intensity range and the architecture arguments of both networks. Every consumer merges
``common.yaml``, whose ``image_size``, ``num_classes``, ... default to the recorded values
(:func:`value`), so evaluation, inference, export, packaging and MONAI Label need no scale
override; an explicit, different value is refused by :func:`check` with one line naming both.
Training does not read the file (``read_model_config: false`` in train.yaml): it refuses to
replace weights of another configuration unless told to (:class:`ModelConfig`).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from typing import Any

from custom.utils.cli import parse_bool

__all__ = [
    "FILENAME",
    "ModelConfigError",
    "config_path",
    "read",
    "value",
    "datalist_labels",
    "differences",
    "check",
    "ModelConfig",
    "network_data_format",
    "write_network_data_format",
]

logger = logging.getLogger(__name__)

FILENAME = "model_config.json"
_MISSING = object()


class ModelConfigError(ValueError):
    """A model_config.json that cannot be read, or a setting that contradicts it."""


def config_path(ckpt_dir: str | os.PathLike | None) -> str | None:
    return None if ckpt_dir is None else os.path.join(os.fspath(ckpt_dir), FILENAME)


def read(path: str | os.PathLike | None) -> dict | None:
    """The recorded settings, or ``None`` when ``path`` is ``None`` or absent."""
    if path is None or not os.path.isfile(path):
        return None
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, ValueError) as e:
        raise ModelConfigError(f"cannot read {path}: {e} (delete it or retrain)") from e
    if not isinstance(data, dict):
        raise ModelConfigError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data


def datalist_labels(datalist_file: str | os.PathLike) -> dict | None:
    """The ``labels`` map (``{name: value}``) of a prepared datalist, ``None`` when it has none."""
    try:
        with open(datalist_file, encoding="utf-8") as f:
            labels = json.load(f).get("labels")
    except (OSError, ValueError, AttributeError):
        return None
    return {str(k): int(v) for k, v in labels.items()} if isinstance(labels, Mapping) else None


def _get(data: Mapping, key: str, default: Any = _MISSING) -> Any:
    for part in key.split("."):
        if not isinstance(data, Mapping) or part not in data:
            return default
        data = data[part]
    return data


def value(path: str | os.PathLike | None, key: str, default: Any) -> Any:
    """``key`` (dotted: ``transformer_def.embed_dim``) of the file at ``path``, else ``default``."""
    data = read(path)
    found = _MISSING if data is None else _get(data, key)
    return default if found is _MISSING else found


def _norm(v: Any) -> Any:
    if isinstance(v, Mapping):
        return {str(k): _norm(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_norm(x) for x in v]
    if hasattr(v, "tolist"):  # numpy / torch scalars and arrays
        return _norm(v.tolist())
    return v


def _flatten(data: Mapping, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in data.items():
        if isinstance(v, Mapping):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def differences(recorded: Mapping, given: Mapping) -> list[str]:
    """``key: recorded X, given Y`` for each setting present in both that differs."""
    rec, giv = _flatten(_norm(recorded)), _flatten(_norm(given))
    return [
        f"{k}={giv[k]!r} but the weights were trained with {k}={rec[k]!r}"
        for k in rec
        if k in giv and giv[k] is not None and rec[k] != giv[k]
    ]


def check(path: str | os.PathLike | None, record: Mapping) -> bool:
    """Refuse settings that contradict the file at ``path`` (one line naming both values).
    Returns ``True`` (for ``_requires_``); a no-op when ``path`` is ``None`` or absent."""
    data = read(path)
    if data is None:
        return True
    diff = differences(data, record)
    if diff:
        raise ModelConfigError(
            f"{'; '.join(diff)} ({path}): drop the override, or point ckpt_dir at weights trained with it"
        )
    return True


def _write_json(path: str, data: Mapping, sort_keys: bool = True) -> None:
    """The project's one atomic writer (:mod:`custom.utils.atomic`): never a partial file."""
    from custom.utils.atomic import atomic_write_json

    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    atomic_write_json(path, data, indent=2, sort_keys=sort_keys)


class ModelConfig:
    """The settings of a training run (``record``) and their file in ``ckpt_dir``.

    Built by train.yaml; ``refuse_replacing()`` runs when the best-model saver is attached
    (before training): weights of a different configuration already in ``ckpt_dir`` are
    kept unless ``overwrite_model`` is true. ``write()`` runs before each ``model.pt`` write.
    """

    def __init__(self, ckpt_dir: str, record: Mapping, overwrite_model: Any = False, weights: str = "model.pt") -> None:
        self.ckpt_dir, self.record = os.fspath(ckpt_dir), _norm(dict(record))
        self.path = config_path(self.ckpt_dir)
        self.weights = os.path.join(self.ckpt_dir, weights)
        self.overwrite_model = parse_bool(overwrite_model, "overwrite_model")

    def refuse_replacing(self) -> None:
        if self.overwrite_model or not os.path.isfile(self.weights):
            return
        recorded = read(self.path)
        if recorded is None:
            logger.warning(
                "%s has no %s beside it (trained before it was recorded): it will be replaced by this "
                "training's best model",
                self.weights,
                FILENAME,
            )
            return
        diff = differences(recorded, self.record)
        if diff:
            raise ModelConfigError(
                f"{self.weights} holds weights of another configuration ({diff[0]}"
                f"{'; ...' if len(diff) > 1 else ''}): pass --overwrite_model true to replace "
                "them, or a new --ckpt_dir"
            )

    def write(self) -> None:
        if read(self.path) != self.record:
            _write_json(self.path, self.record)


def network_data_format(meta: Mapping, record: Mapping) -> dict:
    """``meta`` (a bundle's metadata.json) with ``network_data_format`` set from ``record``:
    input channels and size, output classes, their names and size."""
    out = json.loads(json.dumps(meta))
    fmt = out.setdefault("network_data_format", {})
    image = fmt.setdefault("inputs", {}).setdefault("image", {})
    pred = fmt.setdefault("outputs", {}).setdefault("pred", {})
    size, n = list(record.get("image_size", image.get("spatial_shape", []))), int(record.get("num_classes", 2))
    image.update(num_channels=int(record.get("in_channels", 1)), spatial_shape=size)
    image["channel_def"] = {str(c): "image" for c in range(image["num_channels"])}
    names = {int(v): str(k) for k, v in (record.get("labels") or {}).items()}
    old = pred.get("channel_def", {})
    pred.update(
        num_channels=n,
        spatial_shape=size,
        channel_def={str(c): names.get(c, old.get(str(c), "background" if c == 0 else f"class_{c}")) for c in range(n)},
    )
    return out


def write_network_data_format(metadata_file: str | os.PathLike, record_file: str | os.PathLike) -> None:
    """Rewrite ``metadata_file`` (atomically) to describe the weights recorded in ``record_file``."""
    record = read(record_file)
    if record is None:
        return
    with open(metadata_file, encoding="utf-8") as f:
        meta = json.load(f)
    _write_json(os.fspath(metadata_file), network_data_format(meta, record), sort_keys=False)
