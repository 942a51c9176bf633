"""The full training state on disk: written atomically, read back safely.

Ignite's ``Checkpoint`` needs the engine in its ``save_dict``, and a config cannot list a
handler that references the trainer inside the trainer's own handler list (a circular
reference), so this handler adds the engine it is attached to. It also writes with fsync
before the rename, which ``DiskSaver`` does not, so a crash never leaves a truncated file.
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Mapping
from typing import Any

import torch
from ignite.engine import Engine, Events

__all__ = ["TrainingStateSaver", "atomic_torch_save", "load_training_state", "load_network_weights", "WeightsLoader"]

logger = logging.getLogger(__name__)


def atomic_torch_save(obj: Any, path: str) -> None:
    """``torch.save`` to a temporary file in the same folder, fsync, then rename over ``path``."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp_", suffix=".pt", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        dir_fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


class TrainingStateSaver:
    """Saves ``{name: obj.state_dict()}`` of every object in ``save_dict`` plus the trainer
    (iteration, epoch) to ``save_dir/filename`` every ``save_interval`` epochs and at the end."""

    def __init__(self, save_dir: str, save_dict: Mapping[str, Any], save_interval: int = 1,
                 filename: str = "train_state.pt") -> None:
        self.save_dir, self.save_dict = save_dir, dict(save_dict)
        self.save_interval, self.filename = int(save_interval), filename
        self.engine: Engine | None = None

    @property
    def path(self) -> str:
        return os.path.join(self.save_dir, self.filename)

    def attach(self, engine: Engine) -> None:
        self.engine = engine
        if self.save_interval > 0:
            engine.add_event_handler(Events.EPOCH_COMPLETED(every=self.save_interval), self)
        engine.add_event_handler(Events.COMPLETED, self)

    def state(self, engine: Engine) -> dict[str, Any]:
        out = {name: obj.state_dict() for name, obj in self.save_dict.items()}
        out["trainer"] = engine.state_dict()
        return out

    def __call__(self, engine: Engine) -> None:
        if engine.state.rank if hasattr(engine.state, "rank") else 0:
            return
        atomic_torch_save(self.state(engine), self.path)
        logger.info("saved training state at iteration %d to %s", engine.state.iteration, self.path)


def load_training_state(path: str, objects: Mapping[str, Any], engine: Engine | None = None) -> dict[str, Any]:
    """Load a file written by :class:`TrainingStateSaver` into ``objects`` (and ``engine``)."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"training state not found: {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise ValueError(f"cannot read training state {path}: {e}") from e
    missing = [k for k in objects if k not in state]
    if missing:
        raise ValueError(f"{path} lacks {missing}; it holds {sorted(state)}")
    for name, obj in objects.items():
        obj.load_state_dict(state[name])
    if engine is not None:
        engine.load_state_dict(state["trainer"])
    return state


def load_network_weights(network: torch.nn.Module, path: str, key: str | None = None) -> torch.nn.Module:
    """Load a state dict (``model.pt``, or ``state[key]`` of a training state) into ``network``,
    safely (``weights_only=True``), with errors that name the file and the problem."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint not found: {path} (train the bundle first or point ckpt_path at a model.pt)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise ValueError(f"cannot read checkpoint {path}: {e}") from e
    if key is not None:
        if not isinstance(state, dict) or key not in state:
            raise ValueError(f"{path} has no '{key}' entry")
        state = state[key]
    if not isinstance(state, dict):
        raise ValueError(f"{path} does not hold a state dict")
    target = network.module if hasattr(network, "module") and isinstance(network.module, torch.nn.Module) else network
    try:
        target.load_state_dict(state)
    except RuntimeError as e:
        raise ValueError(f"{path} does not fit {type(target).__name__} (wrong num_classes, in_channels or network?): {e}") from e
    return network


class WeightsLoader:
    """Handler: load weights into ``network`` when the engine starts (see :func:`load_network_weights`)."""

    def __init__(self, load_path: str, network: torch.nn.Module, key: str | None = None) -> None:
        self.load_path, self.network, self.key = load_path, network, key

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, lambda _: load_network_weights(self.network, self.load_path, self.key))
