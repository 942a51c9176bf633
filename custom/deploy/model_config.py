"""What the weights were trained with travels with them: ``model_config.json`` beside ``model.pt``.

Training writes it (atomically, with the sha256 of the weights it describes, ``weights_sha256``,
just before each ``model.pt`` is renamed into place; see
``custom.training.checkpoint.BestModelSaver``): image size, classes and their names, input channels,
intensity range and the architecture arguments of both networks. Every consumer merges
``common.yaml``, whose ``image_size``, ``num_classes``, ... default to the recorded values
(:func:`value`), so evaluation, inference, export, packaging and MONAI Label need no scale
override; an explicit, different value is refused by :func:`check` with one line naming both.
Training does not read the file (``model_config_file: null`` in train.yaml): it refuses to
replace weights of another configuration unless told to (:class:`ModelConfig`).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from typing import Any

from custom.utils.cli import parse_bool
from custom.utils.digest import file_sha256
from custom.utils.jsonio import load_json

__all__ = [
    "FILENAME",
    "ModelConfigError",
    "config_path",
    "read",
    "value",
    "datalist_labels",
    "differences",
    "check",
    "CHECKSUM_KEY",
    "weights_sha256",
    "belongs_to",
    "trusted",
    "recorded_image_size",
    "ModelConfig",
    "network_data_format",
    "write_network_data_format",
]

logger = logging.getLogger(__name__)

FILENAME = "model_config.json"
# the sha256 of the weights file the record describes: a record belongs to those bytes only
CHECKSUM_KEY = "weights_sha256"
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
        data = load_json(path)
    except ValueError as e:  # load_json's message names the file
        raise ModelConfigError(f"cannot read the weights record {e} (delete it or retrain)") from e
    except OSError as e:
        why = e.strerror or e
        raise ModelConfigError(f"cannot read the weights record {path}: {why} (delete it or retrain)") from e
    if not isinstance(data, dict):
        raise ModelConfigError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data


def datalist_labels(datalist_file: str | os.PathLike) -> dict | None:
    """The ``labels`` map (``{name: value}``) of a prepared datalist, ``None`` when it has none."""
    try:
        labels = load_json(datalist_file).get("labels")
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


def weights_sha256(path: str | os.PathLike) -> str:
    """The sha256 (hex) of a weights file: :func:`custom.utils.digest.file_sha256`."""
    return file_sha256(path)


def belongs_to(record: Mapping | None, weights: str | os.PathLike) -> str | None:
    """``None`` when ``record`` carries the checksum of ``weights``; else why it does not (a phrase)."""
    if record is None:
        return f"there is no {FILENAME} beside them"
    recorded = record.get(CHECKSUM_KEY)
    if not recorded:
        return f"their {FILENAME} carries no checksum of the weights it describes (written before records did)"
    if recorded != weights_sha256(weights):
        return f"their {FILENAME} describes other weights (its {CHECKSUM_KEY} differs from theirs)"
    return None


def trusted(record_file: str | os.PathLike | None, weights: str | os.PathLike | None) -> str | None:
    """``record_file`` when it describes ``weights`` (its checksum matches), else ``None``: a record
    that belongs to other weights never sets a value. Where ``weights`` is absent the record is
    taken as it is (the loader then reports the missing weights)."""
    if record_file is None:
        return None
    if weights is None or not os.path.isfile(weights):
        return os.fspath(record_file)
    why = belongs_to(read(record_file), weights)
    if why is None:
        return os.fspath(record_file)
    if os.path.isfile(record_file):
        logger.warning("%s: %s; it is ignored", weights, why)
    return None


def recorded_image_size(record_file: str | os.PathLike | None, weights: str | os.PathLike | None, default: Any) -> Any:
    """The image size ``weights`` were trained at, from their own record (``image_size`` of common.yaml
    when not given explicitly). A missing record, or one of other weights (checksum), is refused:
    running at a default size gives wrong masks without a word. ``default`` where records are not
    read (``record_file`` ``None``: training) or the weights are absent."""
    if record_file is None:
        return default
    if weights is None or not os.path.isfile(weights):
        return value(record_file, "image_size", default)
    why = belongs_to(read(record_file), weights)
    if why is not None:
        raise ModelConfigError(
            f"{weights}: {why}, so the image size they were trained at is unknown: pass it explicitly "
            '(--image_size "[H, W]", the size of their training) or retrain'
        )
    return value(record_file, "image_size", default)


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
    diff = differences({k: v for k, v in data.items() if k != CHECKSUM_KEY}, record)
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
        diff = differences({k: v for k, v in recorded.items() if k != CHECKSUM_KEY}, self.record)
        if diff:
            raise ModelConfigError(
                f"{self.weights} holds weights of another configuration ({diff[0]}"
                f"{'; ...' if len(diff) > 1 else ''}): pass --overwrite_model true to replace "
                "them, or a new --ckpt_dir"
            )

    def write(self, sha256: str | None = None) -> None:
        """Write the record with the checksum of the weights it describes: ``sha256`` (of the
        bytes about to become ``model.pt``), else that of the ``model.pt`` on disk."""
        record = dict(self.record)
        if sha256 is None and os.path.isfile(self.weights):
            sha256 = weights_sha256(self.weights)
        if sha256 is not None:
            record[CHECKSUM_KEY] = sha256
        if read(self.path) != record:
            _write_json(self.path, record)


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
