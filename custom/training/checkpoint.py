"""The full training state on disk: written atomically, read back safely.

Ignite's ``Checkpoint`` needs the engine in its ``save_dict``, and a config cannot list a
handler that references the trainer inside the trainer's own handler list (a circular
reference), so this handler adds the engine it is attached to. It also writes with fsync
before the rename, which ``DiskSaver`` does not, so a crash never leaves a truncated file.
"""

from __future__ import annotations

import copy
import logging
import os
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from ignite.engine import Engine, Events

from custom.utils.atomic import atomic_torch_save, remove_leftovers  # noqa: F401 - re-exported: the one atomic writer lives in custom.utils.atomic
from custom.utils.cli import parse_bool

__all__ = [
    "safe_torch_load",
    "training_objects",
    "TrainingStateSaver",
    "atomic_torch_save",
    "load_training_state",
    "resume_training",
    "random_states",
    "set_random_states",
    "load_network_weights",
    "WeightsLoader",
    "BestModelSaver",
]

logger = logging.getLogger(__name__)


def _state_of(obj: Any) -> dict[str, Any]:
    """``state_dict()``, except for an evaluator, whose best metric is what a resume needs
    (so that a worse model never replaces ``model.pt`` after a restart)."""
    if isinstance(obj, Engine):
        return {
            "best_metric": float(getattr(obj.state, "best_metric", -1)),
            "best_metric_epoch": int(getattr(obj.state, "best_metric_epoch", -1)),
        }
    return obj.state_dict()


def _load_state_into(obj: Any, state: Mapping[str, Any]) -> None:
    if isinstance(obj, Engine):
        obj.state.best_metric, obj.state.best_metric_epoch = state["best_metric"], state["best_metric_epoch"]
    else:
        obj.load_state_dict(state)


def _randomizables(obj: Any, found: list | None = None, seen: set | None = None) -> list:
    """MONAI ``Randomizable`` objects reachable from a dataset or transform, in a fixed order:
    composed transforms and the array transforms inside dictionary ones (``RandRotated``
    draws from its inner ``RandRotate``'s generator), found through their attributes."""
    from monai.transforms import Randomizable

    found = [] if found is None else found
    seen = set() if seen is None else seen
    if id(obj) in seen or not (isinstance(obj, (Randomizable, list, tuple)) or hasattr(obj, "transform")):
        return found
    seen.add(id(obj))
    if isinstance(obj, (list, tuple)):
        for item in obj:
            _randomizables(item, found, seen)
        return found
    if isinstance(obj, Randomizable) and isinstance(getattr(obj, "R", None), __import__("numpy").random.RandomState):
        found.append(obj)
    for name, value in sorted(vars(obj).items()):
        if name != "R" and (isinstance(value, (Randomizable, list, tuple)) or name == "transform"):
            _randomizables(value, found, seen)
    return found


def _np_state_to_torch(state: tuple) -> dict[str, Any]:
    name, keys, pos, has_gauss, cached = state
    return {
        "name": name,
        "keys": torch.from_numpy(keys.astype("int64")),
        "pos": int(pos),
        "has_gauss": int(has_gauss),
        "cached": float(cached),
    }


def _np_state_from_torch(d: Mapping[str, Any]) -> tuple:
    import numpy as np

    return d["name"], d["keys"].numpy().astype(np.uint32), d["pos"], d["has_gauss"], d["cached"]


def random_states(datasets: Sequence[Any] = ()) -> dict[str, Any]:
    """Global torch/numpy/python generators and every random transform's own generator,
    in forms ``torch.load(weights_only=True)`` accepts."""
    import random

    import numpy as np

    out = {
        "torch": torch.get_rng_state(),
        "numpy": _np_state_to_torch(np.random.get_state()),
        "python": random.getstate(),
        "transforms": [[_np_state_to_torch(t.R.get_state()) for t in _randomizables(ds)] for ds in datasets],
    }
    if torch.cuda.is_available():
        out["cuda"] = torch.cuda.get_rng_state_all()
    return out


def set_random_states(state: Mapping[str, Any], datasets: Sequence[Any] = ()) -> None:
    import random

    import numpy as np

    torch.set_rng_state(state["torch"])
    np.random.set_state(_np_state_from_torch(state["numpy"]))
    random.setstate(tuple(tuple(x) if isinstance(x, list) else x for x in state["python"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    for ds, states in zip(datasets, state.get("transforms", [])):
        transforms = _randomizables(ds)
        if len(transforms) != len(states):
            raise ValueError(
                f"training state has {len(states)} random transforms for a dataset that has {len(transforms)}"
            )
        for t, st in zip(transforms, states):
            t.R.set_state(_np_state_from_torch(st))


class TrainingStateSaver:
    """Saves ``{name: obj.state_dict()}`` of every object in ``save_dict`` plus the trainer
    (iteration, epoch, its extra state) and all random generators (global ones and those of
    the random transforms of ``datasets``) to ``save_dir/filename`` every ``save_interval``
    epochs and at the end, atomically. :func:`resume_training` reads it back.

    Under ``torchrun`` rank 0 alone writes, with what differs between ranks gathered from every
    rank (``ranks``: :meth:`rank_state`), so that a restarted group resumes each rank where it
    was (rank 1's augmentations and batches are not rank 0's) and ends with the uninterrupted
    run's weights."""

    def __init__(
        self,
        save_dir: str,
        save_dict: Mapping[str, Any],
        save_interval: int = 1,
        filename: str = "train_state.pt",
        datasets: Sequence[Any] = (),
        resume: bool = False,
        method: str | None = None,
    ) -> None:
        self.save_dir, self.save_dict, self.method = save_dir, dict(save_dict), method
        self.save_interval, self.filename = int(save_interval), filename
        self.datasets, self.resume = (
            list(datasets),
            parse_bool(resume, "resume"),
        )  # `--resume false` arrives as a string
        self.engine: Engine | None = None

    @property
    def path(self) -> str:
        return os.path.join(self.save_dir, self.filename)

    def attach(self, engine: Engine) -> None:
        self.engine = engine
        remove_leftovers(self.save_dir, ".tmp_*.pt", "partial training state")  # of a run killed mid-write
        if self.resume:  # when the run starts, before Ignite sets up the epoch from the iteration counter
            engine.add_event_handler(Events.STARTED, lambda e: resume_training(self, e))
        if self.save_interval > 0:
            engine.add_event_handler(Events.EPOCH_COMPLETED(every=self.save_interval), self)
        engine.add_event_handler(Events.COMPLETED, self)

    def state(self, engine: Engine) -> dict[str, Any]:
        out = {name: _state_of(obj) for name, obj in self.save_dict.items()}
        out["trainer"] = engine.state_dict()
        if hasattr(engine, "extra_state_dict"):
            out["trainer_extra"] = engine.extra_state_dict()
        out["random"] = random_states(self.datasets)
        if self.method is not None:
            out["method"] = str(self.method)
        return out

    def rank_state(self, engine: Engine) -> dict[str, Any]:
        """What differs between the ranks of a torchrun group: every random generator, the
        trainer's own generator and its loaders' positions and shuffle generators (each rank
        seeds them with its rank), and the EMA teachers (in the trainer's extra state: their
        BatchNorm statistics follow the rank's own student between DDP's buffer broadcasts). The
        networks and optimisers are the same on every rank and are saved once."""
        out: dict[str, Any] = {"random": random_states(self.datasets)}
        if hasattr(engine, "extra_state_dict"):
            out["trainer_extra"] = engine.extra_state_dict()
        return out

    def __call__(self, engine: Engine) -> None:
        rank, world = _rank_and_world()
        gathered = None
        if world > 1:  # what differs between ranks (a collective: every rank calls this at the same events)
            import torch.distributed as dist

            gathered = [None] * world
            dist.all_gather_object(gathered, self.rank_state(engine))
        if rank != 0:  # one writer
            return
        state = self.state(engine)
        if gathered is not None:
            state["ranks"] = gathered
        atomic_torch_save(state, self.path)
        logger.info("saved training state at iteration %d to %s", engine.state.iteration, self.path)


def _rank_and_world() -> tuple[int, int]:
    """This process's rank and the number of processes (0, 1 without a process group)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def resume_training(saver: TrainingStateSaver, engine: Engine, path: str | None = None) -> bool:
    """Continue from ``saver``'s file (or ``path``) if it exists: every saved object, the
    trainer's iteration and extra state, and all random generators. Returns whether it
    resumed. Documented use: ``--resume true`` on the same training command."""
    path = path or saver.path
    if not os.path.isfile(path):
        logger.info("no training state at %s: starting from scratch", path)
        return False
    planned_epochs, epoch_length = (getattr(engine.state, k, None) for k in ("max_epochs", "epoch_length"))
    shapes = _schedule_shapes(saver.save_dict)
    state = load_training_state(path, saver.save_dict, engine, method=saver.method)
    _check_teachers(state, engine, path, saver.method)
    for obj, shape in shapes:  # a schedule's shape is this run's (its horizon), its position the state's
        vars(obj).update(shape)
    _continue_to_planned_length(engine, planned_epochs, epoch_length, path)
    rank, world = _rank_and_world()
    ranks = state.get("ranks")
    own = ranks[rank] if ranks is not None and len(ranks) == world else None  # torchrun: this rank's own
    if ranks is not None and own is None:
        logger.warning(
            "%s was written by %d processes, this run has %d: every rank resumes rank 0's generators",
            path,
            len(ranks),
            world,
        )
    extra = {**state.get("trainer_extra", {}), **((own or {}).get("trainer_extra") or {})}
    if "teacher" in state:  # written before every EMA teacher was kept by role in the trainer's state
        extra = _teachers_by_role(extra, (own or {}).get("teacher", state["teacher"]), engine, path)
    if extra and hasattr(engine, "load_extra_state_dict"):
        engine.load_extra_state_dict(extra)
    random = (own or {}).get("random", state.get("random"))
    if random is not None:
        set_random_states(random, saver.datasets)
    logger.info("resumed from %s at iteration %d (epoch %d)", path, engine.state.iteration, engine.state.epoch)
    return True


def _teachers_by_role(extra: dict[str, Any], legacy: Any, engine: Engine, path: str) -> dict[str, Any]:
    """A training state of the earlier layout (one EMA teacher under ``teacher``, the others by
    role in ``trainer_extra``) in today's: that teacher goes to the one role of the trainer's
    ``teachers`` that the file holds no teacher for."""
    saved = dict(extra.get("teachers") or {})
    missing = [role for role in getattr(engine, "teachers", {}) if role not in saved]
    if len(missing) != 1:
        raise ValueError(
            f"{path} holds an EMA teacher of an earlier layout ('teacher') that fits none of this method's "
            f"teachers by role ({missing or 'none left'}): start anew, or resume with the method that wrote it"
        )
    return {**extra, "teachers": {**saved, missing[0]: legacy}}


def safe_torch_load(path: str, what: str = "checkpoint", hint: str = "") -> Any:
    """``torch.load(path, weights_only=True)`` (no pickled code ever runs) with errors that
    name the file: ``FileNotFoundError`` when absent, ``ValueError`` when unreadable."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{what} not found: {path}{hint}")
    if os.path.getsize(path) == 0:
        raise ValueError(f"cannot read {what} {path}: empty file (0 bytes)")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated file, not a checkpoint, or a pickle carrying code
        raise ValueError(f"cannot read {what} {path}: {_load_failure(e)}") from e


def _load_failure(error: Exception) -> str:
    """Why ``torch.load(weights_only=True)`` failed, in one line, without PyTorch's advice to load
    with ``weights_only=False`` (which would run whatever code the file carries: never do that)."""
    text = str(error)
    if "weights_only" in text or "Weights only load failed" in text:
        detail = text.split("WeightsUnpickler error:", 1)[1] if "WeightsUnpickler error:" in text else ""
        detail = " ".join(detail.split("Check the documentation", 1)[0].split())
        return (
            "not a PyTorch checkpoint of plain tensors (corrupt, truncated, or holding pickled objects that are "
            f"refused because loading them could run code){f': {detail}' if detail else ''}"
        )
    text = " ".join(text.split())
    return f"not a readable PyTorch checkpoint ({type(error).__name__}{f': {text[:200]}' if text else ''})"


# what a training state holds besides the saved objects
_STATE_KEYS = {"trainer", "trainer_extra", "random", "ranks", "teacher", "method"}


# what of a learning-rate scheduler is its position in the run (from the state on a resume); the
# rest (the horizon, the warm-up, the lambdas' settings) is its shape, this run's
_SCHEDULE_POSITION = {"last_epoch", "_step_count", "_last_lr", "_is_initial", "_get_lr_called_within_step"}


def _schedule_shapes(objects: Mapping[str, Any]) -> list[tuple[Any, dict[str, Any]]]:
    """The shape of every learning-rate scheduler in ``objects`` (its own settings, and those of a
    ``LambdaLR``'s lambda objects, e.g. the poly schedule's horizon), which ``load_state_dict``
    would overwrite with the saved run's: ``(object, settings)`` pairs to put back after loading."""
    from torch.optim.lr_scheduler import LRScheduler

    shapes = []
    for obj in objects.values():
        if not isinstance(obj, LRScheduler):
            continue
        own = {k: v for k, v in vars(obj).items() if k not in _SCHEDULE_POSITION | {"optimizer", "lr_lambdas"}}
        shapes.append((obj, copy.deepcopy(own)))
        for fn in getattr(obj, "lr_lambdas", ()):
            if not hasattr(fn, "__func__") and getattr(fn, "__dict__", None):  # an object, not a (bound) function
                shapes.append((fn, copy.deepcopy(vars(fn))))
    return shapes


def _continue_to_planned_length(engine: Engine, planned_epochs: Any, epoch_length: Any, path: str) -> None:
    """A resumed run trains to this run's length (a longer ``max_iterations`` continues a finished
    run; the poly schedule and the terms' ramps then span the new length), never past it."""
    if planned_epochs is None or epoch_length is None:
        return
    done, saved_length = int(engine.state.iteration), int(engine.state.epoch_length)
    if saved_length != int(epoch_length):
        raise ValueError(
            f"{path} was written with {saved_length} iterations per epoch, this run has {int(epoch_length)} "
            "(train#epoch_length): resume with the same epoch length, or start in a new ckpt_dir"
        )
    planned = int(planned_epochs) * int(epoch_length)
    if done > planned:
        raise ValueError(
            f"{path} is at iteration {done}, beyond this run's {planned} (max_iterations): give max_iterations of "
            f"at least {done} to continue it, or start in a new ckpt_dir"
        )
    if int(engine.state.max_epochs) != int(planned_epochs):
        logger.info(
            "resuming a run planned for %d iterations to %d: its learning-rate schedule and ramps now span %d",
            int(engine.state.max_epochs) * saved_length,
            planned,
            planned,
        )
        engine.state.max_epochs = int(planned_epochs)
    if done == planned:
        logger.info(
            "%s is already at iteration %d of %d: nothing left to train (a larger max_iterations continues it)",
            path,
            done,
            planned,
        )


def _check_teachers(state: Mapping[str, Any], engine: Engine, path: str, method: str | None) -> None:
    """The state's EMA teachers are this method's (by role)."""
    saved = set((state.get("trainer_extra") or {}).get("teachers") or {})
    wanted = set(getattr(engine, "teachers", {}) or {})
    if "teacher" in state or not hasattr(engine, "teachers"):
        return  # the earlier layout: _teachers_by_role places it
    if saved != wanted:
        raise ValueError(
            f"{path} holds EMA teachers {sorted(saved) or 'none'}, this method ({method or 'unnamed'}) has "
            f"{sorted(wanted) or 'none'}: it was written by another method; resume with that method, or start in a "
            "new ckpt_dir"
        )


def load_training_state(
    path: str, objects: Mapping[str, Any], engine: Engine | None = None, method: str | None = None
) -> dict[str, Any]:
    """Load a file written by :class:`TrainingStateSaver` into ``objects`` (and ``engine``). A state
    written by another method (its recorded ``method``, or objects this run does not have, such as
    a second network) is refused, naming both."""
    state = safe_torch_load(path, "training state")
    written_by = state.get("method")
    if method is not None and written_by is not None and str(written_by) != str(method):
        raise ValueError(
            f"{path} was written by method '{written_by}', this run is '{method}': resume with --method's file "
            f"methods/{written_by}.yaml, or start '{method}' in a new ckpt_dir"
        )
    missing = [k for k in objects if k not in state]
    foreign = sorted(k for k in state if k not in objects and k not in _STATE_KEYS)
    if missing or foreign:
        raise ValueError(
            f"{path} holds {sorted(k for k in state if k not in _STATE_KEYS)}, this run "
            f"({method or 'this method'}) saves {sorted(objects)}: it was written by "
            f"{repr(written_by) if written_by else 'another method or layout'}; resume with that method, or start "
            "in a new ckpt_dir"
        )
    for name, obj in objects.items():
        _load_state_into(obj, state[name])
    if engine is not None:
        engine.load_state_dict(state["trainer"])
    return state


def checked_state_dict(path: str, key: str | None = None) -> dict:
    """The state dict of ``path`` (``model.pt``, or ``state[key]`` of a training state), read safely
    (``weights_only=True``), its floating-point tensors all finite; errors name the file and the problem."""
    state = safe_torch_load(path, "checkpoint", " (train the bundle first or point ckpt_path at a model.pt)")
    if key is not None:
        if not isinstance(state, dict) or key not in state:
            raise ValueError(
                f"{path} has no '{key}' entry: the method it was trained with has no network of that role "
                "(the Swin-Unet: methods/ours.yaml trains it)"
            )
        state = state[key]
    if not isinstance(state, dict):
        raise ValueError(f"{path} does not hold a state dict")
    bad = [
        name
        for name, value in state.items()
        if isinstance(value, torch.Tensor) and value.is_floating_point() and not bool(torch.isfinite(value).all())
    ]
    if bad:
        raise ValueError(
            f"{path}: {len(bad)} weight tensor(s) hold NaN/Inf values (e.g. '{bad[0]}'); the checkpoint is "
            "corrupt or from a diverged training: use another one"
        )
    return state


def load_network_weights(network: torch.nn.Module, path: str, key: str | None = None) -> torch.nn.Module:
    """Load a state dict (``model.pt``, or ``state[key]`` of a training state) into ``network``,
    safely (``weights_only=True``), with errors that name the file and the problem."""
    state = checked_state_dict(path, key)
    target = network.module if hasattr(network, "module") and isinstance(network.module, torch.nn.Module) else network
    try:
        target.load_state_dict(state)
    except RuntimeError as e:
        raise ValueError(
            f"{path} does not fit {type(target).__name__} (wrong num_classes, in_channels or network?): {e}"
        ) from e
    return network


class WeightsLoader:
    """Handler: load weights into ``network`` when the engine starts (see :func:`load_network_weights`)."""

    def __init__(self, load_path: str, network: torch.nn.Module, key: str | None = None) -> None:
        self.load_path, self.network, self.key = load_path, network, key

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, lambda _: load_network_weights(self.network, self.load_path, self.key))


# --------------------------------------------------------------------- the best model (model.pt)


def _readable_by_all(path: str) -> None:
    """``mkstemp`` creates 0600 files; ``model.pt`` is shared with servers run by other users
    (what MONAI's ``DiskSaver(atomic=False)`` comment asks for), so add group/others read."""
    import stat

    os.chmod(path, os.stat(path).st_mode | stat.S_IRGRP | stat.S_IROTH)


def _atomic_disk_saver():
    from ignite.handlers import DiskSaver

    class AtomicDiskSaver(DiskSaver):
        """Ignite ``DiskSaver`` writing through :func:`atomic_torch_save`.

        Hand-written because MONAI's ``CheckpointSaver`` builds its ``DiskSaver`` with
        ``atomic=False`` (it writes ``model.pt`` in place: a kill mid-write leaves a truncated
        file), and ignite's ``atomic=True`` renames a temporary file without ``fsync`` (after a
        power cut the rename can reach the disk before the data). With a fixed ``filename``,
        ``remove`` does nothing: ignite removes the old best before writing the new one, which
        would leave no ``model.pt`` at all until the write finishes; the rename replaces it.
        ``before_save(sha256)`` runs once the new weights are on disk, just before they are renamed
        to ``model.pt`` (it writes ``model_config.json`` carrying their checksum).
        """

        def __init__(self, dirname: str, filename: str | None = None, before_save: Any = None) -> None:
            super().__init__(dirname=dirname, atomic=True, create_dir=True, require_empty=False)
            self.filename, self.before_save = filename, before_save

        def __call__(self, checkpoint: Mapping, filename: str, metadata: Mapping | None = None) -> None:
            import ignite.distributed as idist

            if idist.get_rank() != self.save_on_rank:
                return
            path = os.path.join(str(self.dirname), self.filename or filename)
            if self.before_save is None:
                atomic_torch_save(checkpoint, path)
            else:  # the record carries the checksum of exactly the bytes renamed to model.pt
                from custom.utils.atomic import atomic_path
                from custom.utils.digest import file_sha256

                with atomic_path(path) as tmp:
                    with open(tmp, "wb") as f:
                        torch.save(checkpoint, f)
                    self.before_save(file_sha256(tmp))
            _readable_by_all(path)

        def remove(self, filename: str) -> None:
            if self.filename is None:
                super().remove(filename)

    return AtomicDiskSaver


def _monai_checkpoint_saver():
    from monai.handlers import CheckpointSaver

    return CheckpointSaver


class BestModelSaver(_monai_checkpoint_saver()):
    """MONAI ``CheckpointSaver(save_key_metric=True, key_metric_filename=...)`` for ``model.pt``
    that (1) writes atomically (:func:`atomic_torch_save`, see ``AtomicDiskSaver``) and
    (2) keeps the best score across ``--resume true``.

    (2): the resumed validator gets its ``best_metric`` back from the training state, but the
    ``CheckpointSaver``'s own ignite ``Checkpoint`` compares against its ``_saved`` list,
    which starts empty, so the first validation after a resume replaced ``model.pt`` even
    when it was worse. When the evaluator starts with an empty list and a restored best, the
    list is set to that best (``model.pt`` on disk holds its weights), so only a better model
    replaces it. MONAI's alternative (``key_metric_save_state`` + ``CheckpointLoader``) stores
    the list inside ``model.pt`` itself, which would no longer be a plain state dict.

    ``model_config``: a :class:`custom.deploy.model_config.ModelConfig`: when the saver is built
    (before training) it refuses to replace weights of another configuration, and its
    ``write()`` runs before each write of ``model.pt`` (what inference needs to rebuild the networks).
    """

    def __init__(
        self,
        save_dir: str,
        save_dict: dict,
        key_metric_filename: str = "model.pt",
        key_metric_name: str | None = None,
        key_metric_negative_sign: bool = False,
        key_metric_greater_or_equal: bool = False,
        model_config: Any = None,
        name: str | None = None,
    ) -> None:
        super().__init__(
            save_dir=save_dir,
            save_dict=save_dict,
            name=name,
            save_key_metric=True,
            key_metric_name=key_metric_name,
            key_metric_n_saved=1,
            key_metric_filename=key_metric_filename,
            key_metric_greater_or_equal=key_metric_greater_or_equal,
            key_metric_negative_sign=key_metric_negative_sign,
        )
        self.filename, self.sign = key_metric_filename, -1.0 if key_metric_negative_sign else 1.0
        self.model_config = model_config
        if model_config is not None:  # before training: never replace weights of another configuration silently
            model_config.refuse_replacing()
        before = getattr(model_config, "write", None)
        self._key_metric_checkpoint.save_handler = _atomic_disk_saver()(save_dir, key_metric_filename, before)

    @property
    def path(self) -> str:
        return os.path.join(self.save_dir, self.filename)

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, self.restore_best)
        super().attach(engine)

    def restore_best(self, engine: Engine) -> None:
        """Take the evaluator's restored best as the score ``model.pt`` has to beat."""
        from ignite.handlers import Checkpoint

        checkpoint = self._key_metric_checkpoint
        best_epoch = getattr(engine.state, "best_metric_epoch", -1)
        if checkpoint._saved or best_epoch is None or best_epoch < 0:
            return
        if not os.path.isfile(self.path):
            logger.warning(
                "the training state records a best %.4f at epoch %d but %s is absent: the next validation writes it",
                engine.state.best_metric,
                best_epoch,
                self.path,
            )
            return
        checkpoint._saved = [Checkpoint.Item(self.sign * float(engine.state.best_metric), self.filename)]
        logger.info(
            "%s holds the best %.4f of epoch %d: only a better validation replaces it",
            self.path,
            engine.state.best_metric,
            best_epoch,
        )


def training_objects(
    networks: Mapping[str, Any],
    optimizers: Mapping[str, Any],
    lr_schedulers: Mapping[str, Any],
    extra: Mapping[str, Any] | None = None,
    validator: Any = None,
) -> dict[str, Any]:
    """What the training state saves, derived from what the method trains: every network under
    its role, ``optimizer_<role>``, ``lr_scheduler_<role>``, the method's further objects
    (``extra``, e.g. a discriminator) and the deployed network's ``validator`` (its best metric).
    The EMA teachers (by role) are the trainer's own extra state."""
    out: dict[str, Any] = dict(networks)
    out.update({f"optimizer_{role}": opt for role, opt in optimizers.items()})
    out.update({f"lr_scheduler_{role}": s for role, s in lr_schedulers.items()})
    clash = sorted(set(out) & set(extra or {}))
    if clash:
        raise ValueError(f"method_state names {clash} are already taken by the networks, optimisers or schedulers")
    out.update(extra or {})
    if validator is not None:
        out["validator"] = validator
    return out
