"""Multi-process (DistributedDataParallel) training support, used by ``multi_gpu_train.yaml``.

What DDP does not do by itself for this method, and what this module adds:

* :func:`setup` starts the process group (``nccl`` on GPU, ``gloo`` on CPU), pins the
  process to its GPU, seeds every random generator with ``seed + rank`` (so the ranks draw
  different augmentations, drop-path masks and mixup weights; the networks are still
  identical because DDP broadcasts rank 0's parameters and buffers when it wraps them) and
  lets only rank 0 log below WARNING.
* :func:`from_rank0`: the config's networks take rank 0's weights as they are built, so that
  an EMA teacher copied from one (:class:`custom.training.ema.EMATeacher`, which copies and
  averages the *unwrapped* student whatever it is given) starts from rank 0's weights on every
  rank whenever it is built; its updates are then identical on every rank because the students
  are (gradients are all-reduced before each step). :func:`wrap_ddp` wraps every network of
  the method for the trainer.
* :class:`BroadcastBuffers`: DDP overwrites buffers (BatchNorm running statistics) with
  rank 0's at the start of each training forward, but every rank then updates them from
  its own shard, so they differ between ranks after the last step. Attached before the
  validation handlers, it copies rank 0's buffers to all ranks at the end of each epoch
  and of the run: validation (on all ranks, each on a shard) and the saved checkpoints
  then use the buffers DDP itself treats as authoritative.
* the leader of the cross terms is broadcast from rank 0 by its own component
  (:meth:`custom.training.coupling.Coupling.broadcast`).
* :func:`cleanup` destroys the process group (the bundle's ``finalize``).

Everything here is a no-op in a single process, so the handlers are safe in any config.
"""

from __future__ import annotations

import datetime
import logging
import os
from collections.abc import Iterable, Mapping
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

__all__ = [
    "is_distributed",
    "get_rank",
    "get_world_size",
    "default_backend",
    "setup",
    "cleanup",
    "unwrap",
    "broadcast_object",
    "broadcast_buffers",
    "from_rank0",
    "wrap_ddp",
    "BroadcastBuffers",
]

logger = logging.getLogger(__name__)


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def get_rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def get_world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def default_backend() -> str:
    """``nccl`` where CUDA is available, else ``gloo``."""
    return "nccl" if torch.cuda.is_available() else "gloo"


def setup(
    backend: str | None = None,
    device: torch.device | str | None = None,
    seed: int | None = None,
    timeout_minutes: float = 30.0,
    quiet_non_zero_ranks: bool = True,
) -> int:
    """Initialise the default process group from torchrun's environment (``RANK``,
    ``WORLD_SIZE``, ``MASTER_ADDR``, ``MASTER_PORT``) unless it is already initialised; pin
    this process to ``device`` when it is a CUDA device; seed MONAI/torch/numpy/random with
    ``seed + rank``; on ranks > 0 raise the root logger's level to WARNING. Returns the rank.
    A bad ``seed`` is refused (one line) before the process group is set up.
    """
    if seed is not None:
        from custom.utils.options import check_option

        seed = check_option("seed", seed)
    if not is_distributed():
        backend = backend or default_backend()
        if device is not None and torch.device(device).type == "cuda":
            torch.cuda.set_device(torch.device(device))  # before NCCL creates its communicators
        _init_process_group(backend, datetime.timedelta(minutes=float(timeout_minutes)))
    elif device is not None and torch.device(device).type == "cuda":
        torch.cuda.set_device(torch.device(device))
    _sync_ignite()  # on every rank, now (see there)
    rank = dist.get_rank()
    if seed is not None:
        from monai.utils import set_determinism

        set_determinism(seed=seed + rank)
    if quiet_non_zero_ranks and rank > 0:
        logging.getLogger().setLevel(logging.WARNING)
    logger.info(
        "process group %s: rank %d of %d (local rank %s)",
        dist.get_backend(),
        rank,
        dist.get_world_size(),
        os.environ.get("LOCAL_RANK", "?"),
    )
    return rank


def cleanup() -> None:
    """Destroy the default process group (after a barrier, so no rank leaves while another
    still communicates); a no-op when none is initialised."""
    if is_distributed():
        dist.barrier()
        dist.destroy_process_group()
        _sync_ignite()


def _init_process_group(backend: str, timeout: datetime.timedelta) -> None:
    """``init_process_group`` from torchrun's environment, in a store namespace of its own per
    restart of the group (``TORCHELASTIC_RESTART_COUNT``).

    torchrun (``--max-restarts``) keeps serving one store across restarts, and the keys of the
    failed attempt stay in it: gloo of the restarted group read the dead worker's old address
    and failed with ``connectFullMesh ... Connection refused``, so the group never resumed."""
    restart = os.environ.get("TORCHELASTIC_RESTART_COUNT")
    if restart is None:  # not under torchrun's agent
        dist.init_process_group(backend=backend, timeout=timeout)
        return
    store, rank, world_size = next(dist.rendezvous("env://", timeout=timeout))
    dist.init_process_group(
        backend=backend,
        store=dist.PrefixStore(f"fetal_us_ssl/attempt_{restart}", store),
        rank=rank,
        world_size=world_size,
        timeout=timeout,
    )


def _sync_ignite() -> None:
    """Let ignite's ``idist`` adopt the current process group now, on every rank.

    Its first ``idist.get_rank()`` otherwise adopts it lazily and, doing so, creates a
    process group (``dist.new_group``): a collective that every rank must join. Handlers
    that exist on rank 0 only (MONAI's ``CheckpointSaver`` asks ``idist.get_rank()`` when it
    is built) would then wait forever for the other ranks.
    """
    import ignite.distributed as idist

    idist.sync()


def unwrap(module: nn.Module) -> nn.Module:
    """The module inside a ``DistributedDataParallel``/``DataParallel`` wrapper (else itself)."""
    while isinstance(module, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
        module = module.module
    return module


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """``src``'s ``obj`` on every rank (picklable objects; the object itself in one process)."""
    if not is_distributed():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


@torch.no_grad()
def broadcast_buffers(modules: Iterable[nn.Module], src: int = 0) -> None:
    """Copy ``src``'s buffers (e.g. BatchNorm running statistics) of every module to all ranks."""
    if not is_distributed():
        return
    for module in modules:
        for buf in unwrap(module).buffers():
            dist.broadcast(buf, src=src)


def from_rank0(module: nn.Module, src: int = 0) -> nn.Module:
    """``module`` with rank ``src``'s parameters and buffers on every rank (in place), so that what
    is built from it before DDP wraps it (an EMA teacher) is the same everywhere; a no-op in a
    single process."""
    if is_distributed():
        with torch.no_grad():
            for t in list(module.parameters()) + list(module.buffers()):
                torch.distributed.broadcast(t.data, src)
    return module


def wrap_ddp(networks: Mapping[str, nn.Module], device: torch.device, find_unused_parameters: bool = False) -> dict:
    """Every network of the method in DistributedDataParallel (device ids on CUDA only), by role."""
    device = torch.device(device)
    ids = [device] if device.type == "cuda" else None
    return {
        role: nn.parallel.DistributedDataParallel(net, device_ids=ids, find_unused_parameters=find_unused_parameters)
        for role, net in networks.items()
    }


class BroadcastBuffers:
    """Ignite handler: rank ``src``'s buffers of ``modules`` copied to every rank at the end
    of each epoch and of the run. Put it before the validation and checkpoint handlers."""

    def __init__(self, modules: Mapping[str, nn.Module] | Iterable[nn.Module], src: int = 0) -> None:
        self.modules = list(modules.values()) if isinstance(modules, Mapping) else list(modules)
        self.src = int(src)

    def attach(self, engine) -> None:
        from ignite.engine import Events

        engine.add_event_handler(Events.EPOCH_COMPLETED, self)
        engine.add_event_handler(Events.COMPLETED, self)

    def __call__(self, engine=None) -> None:
        broadcast_buffers(self.modules, self.src)
