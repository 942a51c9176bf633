"""``bench train``: median seconds per training iteration of the bundle's trainer beside the
compute floor measured in the same run (the measurement is described in :mod:`custom.tools.bench`)."""

from __future__ import annotations

import contextlib
import os
import tempfile
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch

from custom.tools.bench.timing import median, mmap_threshold, peak_rss_mb, progress, set_mmap_threshold, sync
from custom.utils.cli import OptionError, parse_bool
from custom.utils.paths import bundle_root, configs_dir, source_root

__all__ = ["config_files", "build_trainer", "bench_train", "print_train"]

REPO = source_root()  # the repository (the folder holding custom/)
# handlers of train#handlers kept for the benchmark (per-iteration work of a real run)
_KEPT_HANDLERS = ("LrSchedules",)


def config_files(method: str = "paper") -> list[str]:
    """``common.yaml + train.yaml`` and ``methods/<method>.yaml`` (``paper``: the published recipe;
    none: ``ours``, the default, whose Swin-Unet is most of an iteration's compute)."""
    return [str(configs_dir() / f) for f in ("common.yaml", "train.yaml", f"methods/{method or 'ours'}.yaml")]


def build_trainer(files: Sequence[str], overrides: dict[str, Any], keep_handlers: Sequence[str] = _KEPT_HANDLERS):
    """``(parser, trainer)``: ``train#trainer`` of the merged ``files`` with ``overrides``
    (``ConfigParser`` ids such as ``"train#epoch_length"``), keeping only the handlers of
    ``train#handlers`` whose ``_target_`` is in ``keep_handlers``."""
    import monai
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(list(files))
    parser.update(dict(overrides))
    handlers = parser["train#handlers"]
    parser["train#handlers"] = [h for h in handlers if str(h.get("_target_", "")).split(".")[-1] in keep_handlers]
    monai.utils.set_determinism(seed=int(parser.get_parsed_content("seed")))
    trainer = parser.get_parsed_content("train#trainer")
    return parser, trainer


def _synthetic_dataset(root: str, size: int) -> str:
    from custom.data.demo import ensure_demo_dataset

    out = os.path.join(root, "data")
    ensure_demo_dataset(out, n_labeled=8, n_unlabeled=16, n_validation=1, size=size, seed=0)
    return out


class _IterationTimer:
    """Per-iteration wall time and data-loader wait, from Ignite events."""

    def __init__(self, device: torch.device, after_iteration: Callable[[], None] | None = None, bar=None) -> None:
        self.device, self.after_iteration, self.bar = device, after_iteration, bar
        self.iteration_s: list[float] = []
        self.wait_s: list[float] = []
        self._t0 = self._wait = 0.0

    def attach(self, engine) -> None:
        from ignite.engine import Events

        engine.add_event_handler(Events.GET_BATCH_STARTED, self._start)
        engine.add_event_handler(Events.GET_BATCH_COMPLETED, self._got_batch)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._done)  # last: after metrics/post-processing
        if getattr(engine, "unlabeled", None) is not None:  # the unlabelled batch is drawn inside the iteration
            stream = engine.unlabeled
            original = stream.next

            def timed_next():
                t = time.perf_counter()
                batch = original()
                self._wait += time.perf_counter() - t
                return batch

            stream.next = timed_next

    def _start(self, _engine) -> None:
        sync(self.device)
        self._t0 = time.perf_counter()
        self._wait = 0.0

    def _got_batch(self, _engine) -> None:
        self._wait += time.perf_counter() - self._t0

    def _done(self, _engine) -> None:
        sync(self.device)
        self.iteration_s.append(time.perf_counter() - self._t0)
        self.wait_s.append(self._wait)
        if self.bar is not None:
            self.bar.update(1)
        if self.after_iteration is not None:
            self.after_iteration()


class _Floor:
    """The compute floor of one iteration, in plain PyTorch, component by component."""

    def __init__(
        self,
        trainer,
        image_shape: Sequence[int],
        labeled_bs: int,
        device: torch.device,
        autocast: Callable,
        channels_last: bool,
        seed: int = 0,
    ) -> None:
        from custom.training.terms import InterpolationConsistencyTerm

        g = torch.Generator().manual_seed(seed)
        b = image_shape[0]
        self.x = torch.rand(*image_shape, generator=g).to(device)
        self.x_u = self.x[labeled_bs:]
        half = self.x_u.shape[0] // 2
        self.x_mix = (0.5 * self.x_u[:half] + 0.5 * self.x_u[half : 2 * half]) if half else None
        if channels_last:
            self.x, self.x_u = (
                self.x.contiguous(memory_format=torch.channels_last),
                self.x_u.contiguous(memory_format=torch.channels_last),
            )
            if self.x_mix is not None:
                self.x_mix = self.x_mix.contiguous(memory_format=torch.channels_last)
        self.trainer, self.device, self.autocast = trainer, device, autocast
        ict = [t for t in trainer.terms if isinstance(t, InterpolationConsistencyTerm)]
        ict_roles = [role for t in ict for role in t.roles]
        self.components: dict[str, Callable[[], None]] = {}
        for role, net in trainer.networks.items():
            self.components[f"fwd_bwd_{role}"] = self._fwd_bwd(net, self.x)
        if self.x_mix is not None and b > labeled_bs:
            for role in ict_roles:
                self.components[f"fwd_bwd_{role}_mix"] = self._fwd_bwd(trainer.networks[role], self.x_mix)
            for role in dict.fromkeys(r for t in ict for r in t.teacher_roles):
                self.components[f"fwd_teacher_{role}"] = self._fwd_no_grad(trainer.teachers[role], self.x_u)
        self.times: dict[str, list[float]] = {k: [] for k in self.components}

    def _fwd_bwd(self, net, x):
        def run():
            net.train()
            net.zero_grad(set_to_none=True)
            with self.autocast():
                y = net(x)
            y.float().mean().backward()

        return run

    def _fwd_no_grad(self, net, x):
        def run():
            with torch.no_grad(), self.autocast():
                net(x)

        return run

    def measure_once(self, record: bool = True) -> None:
        for name, fn in self.components.items():
            sync(self.device)
            t = time.perf_counter()
            fn()
            sync(self.device)
            if record:
                self.times[name].append(time.perf_counter() - t)
        for net in self.trainer.networks.values():
            net.zero_grad(set_to_none=True)

    def medians(self) -> dict[str, float]:
        return {k: median(v) for k, v in self.times.items()}


def bench_train(
    image_size: int = 224,
    batch_size: int = 5,
    labeled_bs: int = 1,
    iterations: int = 10,
    warmup: int = 3,
    threads: int = 2,
    amp: str = "none",
    channels_last: bool = False,
    compile: bool = False,
    device: str = "cpu",
    data: str = "random",
    dataset_dir: str | None = None,
    method: str = "paper",
    num_workers: int = 0,
    floor: bool = True,
    overrides: dict | None = None,
    quiet: bool = False,
    compile_backend: str | None = None,
    compile_cache: str | None = None,
    mmap_threshold_kib: int | None = None,
) -> dict:
    """Median s/iteration of the trainer, the compute floor, their ratio, loader wait, peak memory
    (see module doc).

    ``method``: a methods/ file name (default ``paper``: common + train + methods/paper.yaml, the
    published recipe; ``ours``); ``overrides``: any config value, e.g.
    ``"{'transformer_def#window_size': 4}"``; ``data real`` with ``dataset_dir``: a prepared dataset
    instead of synthetic frames. ``compile`` compiles the networks and teachers with
    ``torch.compile`` through the persistent cache of :mod:`custom.utils.compile_cache`
    (``compile_cache`` DIR, else ``TORCHINDUCTOR_CACHE_DIR``, ``FETAL_US_COMPILE_CACHE`` or
    ``~/.cache/fetal_us_ssl/torch_compile``); the first (compiling) iteration is then reported apart
    (``first_iteration_s``, with ``setup_s`` and the cache's file counts before and after);
    ``compile_backend eager`` traces without Inductor (a quick check of the compiled path).
    ``mmap_threshold_kib 128``: freed large buffers go back to the system
    (:func:`custom.tools.bench.timing.set_mmap_threshold`), recorded in the result's ``config``."""
    channels_last, compile, floor, quiet = (
        parse_bool(v, n)
        for v, n in ((channels_last, "channels-last"), (compile, "compile"), (floor, "floor"), (quiet, "quiet"))
    )
    if amp not in ("none", "bf16", "fp16"):
        raise OptionError(f"--amp must be none, bf16 or fp16, got {amp!r}")
    if data not in ("random", "real"):
        raise OptionError(f"--data must be random or real, got {data!r}")
    if data == "real" and not dataset_dir:
        raise OptionError("--data real needs --dataset-dir (a folder prepared by `python -m custom.data prepare`)")
    if mmap_threshold_kib:
        set_mmap_threshold(int(mmap_threshold_kib))
    torch.set_num_threads(int(threads))
    dev = torch.device(device)
    total = int(warmup) + int(iterations)
    with tempfile.TemporaryDirectory(prefix="bench_") as tmp:
        if data == "random":
            dataset_dir = _synthetic_dataset(tmp, int(image_size))
        cfg = {
            "bundle_root": bundle_root(),
            "dataset_dir": str(dataset_dir),
            "ckpt_dir": os.path.join(tmp, "models"),
            "output_dir": os.path.join(tmp, "eval"),
            "device": f"$torch.device('{dev}')",
            "image_size": [int(image_size), int(image_size)],
            "batch_size": int(batch_size),
            "labeled_bs": int(labeled_bs),
            "max_iterations": total,
            "train#epoch_length": total,
            "ict_start": 0,
            "num_workers": int(num_workers),
            "amp": amp != "none",
            "amp_dtype": {"none": "bfloat16", "bf16": "bfloat16", "fp16": "float16"}[amp],
        }
        cfg.update(overrides or {})
        t_setup = time.perf_counter()
        parser, trainer = build_trainer(config_files(method), cfg)
        setup_s = time.perf_counter() - t_setup
        if channels_last:
            for net in trainer.networks.values():
                net.to(memory_format=torch.channels_last)
            for teacher in trainer.teachers.values():
                teacher.to(memory_format=torch.channels_last)
        cache_info: dict[str, Any] = {}
        if compile:
            from custom.utils.compile_cache import cache_entries, compile_networks, configure

            cache = configure(compile_cache)
            cache_info = {"compile_cache": str(cache), "compile_cache_files_before": cache_entries(cache)}
            how = {"backend": compile_backend} if compile_backend else {}
            # in place (parameter names, EMA update, checkpoints unchanged), the teachers too
            compile_networks(trainer, cache, **how)
        in_channels = int(parser.get_parsed_content("in_channels"))
        shape = (int(batch_size), in_channels, int(image_size), int(image_size))
        autocast = trainer._autocast if hasattr(trainer, "_autocast") else contextlib.nullcontext
        fl = _Floor(trainer, shape, int(labeled_bs), dev, autocast, channels_last) if floor else None
        bar = progress(total, "train iterations", quiet)

        def after_iteration():
            if fl is not None:
                fl.measure_once(record=len(timer.iteration_s) > warmup)

        timer = _IterationTimer(dev, after_iteration, bar)
        timer.attach(trainer)
        if dev.type == "cuda":
            torch.cuda.reset_peak_memory_stats(dev)
        trainer.state.device = dev  # _autocast reads it before the run starts
        t_run = time.perf_counter()
        trainer.run()
        run_s = time.perf_counter() - t_run
        bar.close()
    if compile:
        from custom.utils.compile_cache import cache_entries

        cache_info["compile_cache_files_after"] = cache_entries(cache_info["compile_cache"])
    it = timer.iteration_s[warmup:]
    wait = timer.wait_s[warmup:]
    iteration_s = median(it)
    result: dict[str, Any] = {
        "benchmark": "train",
        "iteration_s": iteration_s,
        "iteration_s_all": it,
        "data_wait_s": median(wait),
        "data_wait_fraction": float(sum(wait) / sum(it)) if it else float("nan"),
        "peak_rss_mb": peak_rss_mb(),
        "first_iteration_s": timer.iteration_s[0] if timer.iteration_s else float("nan"),
        "warmup_s_all": timer.iteration_s[:warmup],
        "run_s": run_s,
        "setup_s": setup_s,
        **cache_info,
        "config": {
            "method": method,
            "image_size": image_size,
            "batch_size": batch_size,
            "labeled_bs": labeled_bs,
            "iterations": iterations,
            "warmup": warmup,
            "threads": threads,
            "amp": amp,
            "channels_last": channels_last,
            "compile": compile,
            "compile_backend": compile_backend,
            "device": str(dev),
            "data": data,
            "num_workers": num_workers,
            "torch": torch.__version__,
            "overrides": overrides or {},
            "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
            "malloc_mmap_threshold": os.environ.get("MALLOC_MMAP_THRESHOLD_") or mmap_threshold(),
        },
    }
    if fl is not None:
        comps = fl.medians()
        result["floor_components_s"] = comps
        result["floor_s"] = float(sum(comps.values()))
        result["floor_ratio"] = iteration_s / result["floor_s"]
    if dev.type == "cuda":
        result["peak_cuda_mb"] = torch.cuda.max_memory_allocated(dev) / 2**20
    return result


def print_train(r: dict) -> None:
    c = r["config"]
    print(
        f"train: {c['method']} method, {c['image_size']} px, batch {c['batch_size']} ({c['labeled_bs']} labelled), "
        f"{c['threads']} threads, amp {c['amp']}, channels_last {c['channels_last']}, compile {c['compile']}, "
        f"{c['device']}, data {c['data']}, num_workers {c['num_workers']}"
    )
    print(f"  iteration (median of {len(r['iteration_s_all'])}): {r['iteration_s']:.3f} s")
    if c["compile"]:
        print(
            f"  first (compiling) iteration: {r['first_iteration_s']:.1f} s; compile cache {r['compile_cache']} "
            f"({r['compile_cache_files_before']} files before, {r['compile_cache_files_after']} after)"
        )
    if "floor_s" in r:
        comps = ", ".join(f"{k} {v:.3f}" for k, v in r["floor_components_s"].items())
        print(f"  compute floor: {r['floor_s']:.3f} s ({comps})")
        print(f"  iteration / floor: {r['floor_ratio']:.3f}")
    print(f"  data-loader wait: {100 * r['data_wait_fraction']:.1f}% of the iteration time")
    print(
        f"  peak RSS: {r['peak_rss_mb']:.0f} MB"
        + (f", peak CUDA: {r['peak_cuda_mb']:.0f} MB" if "peak_cuda_mb" in r else "")
    )
