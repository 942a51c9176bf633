"""A persistent ``torch.compile`` cache, so that compiling is paid once per machine and configuration.

``torch.compile`` (Inductor) spends most of its first call generating and compiling kernels.
Two of its caches keep that work on disk, keyed by the graph, the shapes, the options and the
torch version: the FX graph cache (Inductor's generated code and compiled kernels) and the
AOT-autograd cache (the forward/backward graphs of training). Both are on by default in
recent torch, but under ``/tmp/torchinductor_<user>``, which a reboot or a tmp cleaner empties.
:func:`configure` points them at a directory that stays:

1. ``cache_dir`` given to :func:`configure` (the bench's ``--compile-cache``);
2. else ``TORCHINDUCTOR_CACHE_DIR`` if it is already set (Inductor's own variable, respected);
3. else ``FETAL_US_COMPILE_CACHE``;
4. else ``$XDG_CACHE_HOME/fetal_us_ssl/torch_compile`` (``~/.cache/fetal_us_ssl/torch_compile``).

It sets ``TORCHINDUCTOR_CACHE_DIR`` (read by Inductor whenever it looks the cache up, so it may be
set after torch is imported, but before the first compilation) and switches both caches on.
A later process with the same graphs, shapes, options and torch version loads the compiled
code instead of generating it; Dynamo still traces the Python code in every process (seconds
to a minute for these networks), which no cache removes. Deleting the directory is always safe.

:func:`compile_networks` compiles a :class:`custom.training.trainer.SemiSupervisedTrainer`'s
networks (and their EMA teachers) in place with ``nn.Module.compile``: parameter names, state
dicts, checkpoints and the EMA update are unchanged.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

__all__ = ["ENV_VAR", "default_cache_dir", "configure", "cache_entries", "compile_networks"]

ENV_VAR = "FETAL_US_COMPILE_CACHE"
_PROJECT = "fetal_us_ssl"


def default_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/fetal_us_ssl/torch_compile`` (``~/.cache/...`` when XDG_CACHE_HOME is unset)."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / _PROJECT / "torch_compile"


def configure(cache_dir: str | os.PathLike | None = None) -> Path:
    """Point Inductor's FX-graph and AOT-autograd caches at a persistent directory (module doc)
    and switch them on; returns the directory (created)."""
    if cache_dir is not None:
        path = Path(cache_dir)
    elif os.environ.get("TORCHINDUCTOR_CACHE_DIR"):
        path = Path(os.environ["TORCHINDUCTOR_CACHE_DIR"])
    elif os.environ.get(ENV_VAR):
        path = Path(os.environ[ENV_VAR])
    else:
        path = default_cache_dir()
    path = path.expanduser().resolve()
    path.mkdir(parents=True, exist_ok=True)
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(path)
    try:  # the config objects exist in every torch with torch.compile (2.x)
        import torch._functorch.config as functorch_config
        import torch._inductor.config as inductor_config

        inductor_config.fx_graph_cache = True
        functorch_config.enable_autograd_cache = True
    except (ImportError, AttributeError):  # an older torch: the directory alone still applies
        pass
    return path


def cache_entries(cache_dir: str | os.PathLike) -> int:
    """How many files the cache holds (0: a cold cache); for reporting first and later runs."""
    root = Path(cache_dir)
    return sum(1 for p in root.rglob("*") if p.is_file()) if root.is_dir() else 0


def compile_networks(trainer: Any, cache_dir: str | os.PathLike | None = None, **options: Any) -> Path:
    """:func:`configure` the cache, then ``compile`` every network of ``trainer.networks`` and the
    module of every EMA teacher (``trainer.teachers``) in place; ``options``
    go to ``nn.Module.compile`` (e.g. ``backend``, ``mode``). Returns the cache directory."""
    path = configure(cache_dir)
    for net in trainer.networks.values():
        net.compile(**options)
    teachers = list((getattr(trainer, "teachers", None) or {}).values())
    for teacher in teachers:
        if teacher is not None:
            getattr(teacher, "module", teacher).compile(**options)
    return path
