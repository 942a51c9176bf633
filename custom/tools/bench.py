"""Speed and memory benchmarks of the trainer and of the deployed UNeXt.

Subcommands (a ``fire`` CLI, progress bars on stderr, ``--json`` prints one JSON object and
nothing else on stdout)::

    # median seconds per training iteration of custom.training.trainer.SemiSupervisedTrainer built from
    # the bundle configs (default: the paper's method, 224 px, batch 5 with 1 labelled, 2 threads,
    # fp32, synthetic data through the bundle's own data pipeline), beside the compute floor
    # measured in the same run
    python -m custom.tools.bench train
    python -m custom.tools.bench train --amp bf16 --json
    python -m custom.tools.bench train --data real --dataset-dir data/psfhs

    # images/s and latency of the deployed UNeXt: eager, channels-last, TorchScript, ONNX Runtime
    python -m custom.tools.bench infer --sizes "[256, 448]"

    # frames/s of the evaluation path on real PSFHS label maps (metrics, resize back, report,
    # overlays), optionally beside the previous metrics implementation kept in tests/
    python -m custom.tools.bench evaluate --frames 100 --threads 1 --reference true

    # torch.compile through the persistent compile cache (custom.utils.compile_cache); the first,
    # compiling iteration is reported apart (a later run with the same shapes loads the kernels)
    python -m custom.tools.bench train --compile true [--compile-cache DIR]

    # our iteration beside the authors' public implementation fetched outside the repository
    # (custom.tools.reference): interleaved rounds, throughput and peak-memory ratios
    python -m custom.tools.bench reference --path REF/DACL-for-Semi-supervised-Ultrasound-Segmentation \\
        --python REF/venv/bin/python --variants "[paper, ours+bf16]"

    # the GPU check (custom.tools.gpu_check): one JSON file of the train/infer benchmarks at 448 px and
    # short real PSFHS trainings; --tiny true runs it on the CPU at 64 px (its test)
    python -m custom.tools.bench gpu --out gpu_check.json

On a machine whose cores are shared with other jobs, run with ``OMP_WAIT_POLICY=PASSIVE``
(it must be set before torch loads; the value is recorded in the result's ``config``):
OpenMP's default spin-waiting of the idle threads costs far more than the compute there.

How ``train`` measures:

* the trainer is ``train#trainer`` of ``common.yaml + train.yaml (+ paper.yaml)`` built with
  ``monai.bundle.ConfigParser`` and the overrides below; its per-epoch and logging handlers
  (validation, leader selection, state saving, Stats/TensorBoard, progress bar) are removed,
  the learning-rate schedulers are kept. ``ict_start`` is 0 so that every term is computed.
* an Ignite handler pair times each iteration from ``GET_BATCH_STARTED`` to the end of
  ``ITERATION_COMPLETED`` (attached last, so the metric and post-processing handlers are
  inside); the data-loader wait is ``GET_BATCH_STARTED -> GET_BATCH_COMPLETED`` (the labelled
  batch) plus the time in the unlabelled stream's ``next()`` (drawn inside the iteration).
* the compute floor is plain PyTorch on the trainer's own modules and the same shapes,
  threads, autocast and memory format: forward+backward of each network on the whole batch,
  forward+backward of each ICT network on the mixed images, forward (no grad) of the EMA
  teacher on the unlabelled images. Each floor component is measured right after each
  training iteration (interleaved, so both see the same load on a shared machine; the floor's
  gradients are discarded by the next iteration's ``zero_grad``). ``floor_s`` is the sum of the
  component medians.
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
import resource
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from custom.utils.cli import OptionError, parse_bool

REPO = Path(__file__).resolve().parents[2]
CONFIGS = REPO / "bundle" / "configs"

__all__ = ["build_trainer", "bench_train", "bench_infer", "bench_evaluate", "main"]

# handlers of train#handlers kept for the benchmark (per-iteration work of a real run)
_KEPT_HANDLERS = ("LrSchedules",)


_MMAP_THRESHOLD: dict[str, str] = {}  # what set_mmap_threshold set, for the result's config


def set_mmap_threshold(kib: int) -> None:
    """glibc's ``mallopt(M_MMAP_THRESHOLD, kib KiB)``: allocations from that size up are mmapped
    and go back to the system when freed, instead of staying in the heap (where freed activation
    buffers of one iteration inflate the resident peak of the next). Same effect as starting
    Python with ``MALLOC_MMAP_THRESHOLD_=<bytes>``; no Python API exposes it, hence ctypes."""
    import ctypes
    import ctypes.util

    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    if not hasattr(libc, "mallopt") or libc.mallopt(-3, int(kib) * 1024) != 1:  # M_MMAP_THRESHOLD = -3
        raise OSError("mallopt(M_MMAP_THRESHOLD) is not available here (glibc only)")
    _MMAP_THRESHOLD["kib"] = f"{int(kib)} KiB"


def _peak_rss_mb() -> float:
    # ru_maxrss is in KiB on Linux (bytes on macOS)
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return r / (1024 * 1024) if sys.platform == "darwin" else r / 1024


def _median(xs: Sequence[float]) -> float:
    return float(statistics.median(xs)) if xs else float("nan")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _progress(total: int, desc: str, quiet: bool = False):
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, file=sys.stderr, disable=quiet, leave=False, dynamic_ncols=True)


def config_files(method: str = "paper") -> list[str]:
    """``common.yaml + train.yaml`` and the method: for ``method="paper"``, ``methods/ours.yaml`` and
    ``paper.yaml``; for any other name, ``methods/<name>.yaml`` (``ours``: the default)."""
    files = [str(CONFIGS / "common.yaml"), str(CONFIGS / "train.yaml")]
    if method == "paper":
        files += [str(CONFIGS / "methods" / "ours.yaml"), str(CONFIGS / "paper.yaml")]
    else:
        files.append(str(CONFIGS / "methods" / f"{method or 'ours'}.yaml"))
    return files


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
        _sync(self.device)
        self._t0 = time.perf_counter()
        self._wait = 0.0

    def _got_batch(self, _engine) -> None:
        self._wait += time.perf_counter() - self._t0

    def _done(self, _engine) -> None:
        _sync(self.device)
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
            _sync(self.device)
            t = time.perf_counter()
            fn()
            _sync(self.device)
            if record:
                self.times[name].append(time.perf_counter() - t)
        for net in self.trainer.networks.values():
            net.zero_grad(set_to_none=True)

    def medians(self) -> dict[str, float]:
        return {k: _median(v) for k, v in self.times.items()}


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
) -> dict:
    """Median seconds per training iteration and the compute floor of the same run (see module doc).
    ``compile_backend``: the ``torch.compile`` backend with ``compile`` (default: inductor);
    ``compile_cache``: the persistent compile cache directory (default:
    :func:`custom.utils.compile_cache.configure`'s). With ``compile`` the result also has
    ``first_iteration_s`` (the compiling iteration), ``setup_s`` (building the trainer) and the
    cache's directory and file counts before and after."""
    torch.set_num_threads(int(threads))
    dev = torch.device(device)
    if amp not in ("none", "bf16", "fp16"):
        raise ValueError(f"--amp must be none, bf16 or fp16, got {amp!r}")
    total = int(warmup) + int(iterations)
    with tempfile.TemporaryDirectory(prefix="bench_") as tmp:
        if data == "random":
            dataset_dir = _synthetic_dataset(tmp, int(image_size))
        elif data == "real":
            if not dataset_dir:
                raise ValueError(
                    "--data real needs --dataset-dir (a folder prepared by `python -m custom.data prepare`)"
                )
        else:
            raise ValueError(f"--data must be random or real, got {data!r}")
        cfg = {
            "bundle_root": str(REPO / "bundle"),
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
        bar = _progress(total, "train iterations", quiet)

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
    iteration_s = _median(it)
    result: dict[str, Any] = {
        "benchmark": "train",
        "iteration_s": iteration_s,
        "iteration_s_all": it,
        "data_wait_s": _median(wait),
        "data_wait_fraction": float(sum(wait) / sum(it)) if it else float("nan"),
        "peak_rss_mb": _peak_rss_mb(),
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
            "malloc_mmap_threshold": os.environ.get("MALLOC_MMAP_THRESHOLD_") or _MMAP_THRESHOLD.get("kib"),
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


# ----------------------------------------------------------------------------------- infer
def _deployed_unext(num_classes: int, in_channels: int = 1) -> torch.nn.Module:
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config([str(CONFIGS / "common.yaml")])
    # a fresh UNeXt of the bundle's definition: no trained weights, so no recorded model_config.json applies
    parser.update(
        {
            "num_classes": int(num_classes),
            "in_channels": int(in_channels),
            "device": "$torch.device('cpu')",
            "read_model_config": False,
        }
    )
    return parser.get_parsed_content("network_def").eval()


def _torchscript(net: torch.nn.Module, example: torch.Tensor) -> tuple[torch.nn.Module, str]:
    try:
        ts, how = torch.jit.script(copy.deepcopy(net).eval()), "script"
    except Exception:  # noqa: BLE001 - any scripting failure: trace instead
        ts, how = torch.jit.trace(copy.deepcopy(net).eval(), example, check_trace=False), "trace"
    try:
        return torch.jit.freeze(ts.eval()), how + "+freeze"
    except Exception:  # noqa: BLE001
        return ts, how


def _onnx_session(net: torch.nn.Module, example: torch.Tensor, path: str, threads: int):
    import onnxruntime as ort

    kwargs = dict(
        input_names=["image"], output_names=["pred"], dynamic_axes={"image": {0: "batch"}, "pred": {0: "batch"}}
    )
    with torch.no_grad(), open(os.devnull, "w") as devnull, contextlib.redirect_stdout(devnull):
        try:
            torch.onnx.export(net, (example,), path, dynamo=False, opset_version=17, **kwargs)
        except TypeError:  # a torch without the ``dynamo`` argument
            torch.onnx.export(net, (example,), path, opset_version=17, **kwargs)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = int(threads)
    opts.inter_op_num_threads = 1
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.log_severity_level = 3
    session = ort.InferenceSession(path, sess_options=opts, providers=["CPUExecutionProvider"])

    def run(x: torch.Tensor):
        return session.run(None, {"image": x.numpy()})[0]

    return run


def bench_infer(
    sizes: Sequence[int] = (256, 448),
    threads: int = 2,
    batch: int = 8,
    reps: int = 10,
    warmup: int = 2,
    num_classes: int = 2,
    variants: Sequence[str] = ("eager", "channels_last", "torchscript", "onnxruntime"),
    quiet: bool = False,
) -> dict:
    """Latency (batch 1, median ms per image) and throughput (batch ``batch``, images/s) of the
    deployed UNeXt per variant; the variants are measured round-robin (same load) and compared
    with eager in the same run."""
    torch.set_num_threads(int(threads))
    if isinstance(sizes, (int, str)):
        sizes = [int(s) for s in str(sizes).strip("[]()").split(",")]
    if isinstance(variants, str):
        variants = [v.strip() for v in variants.strip("[]()").split(",")]
    torch.manual_seed(0)
    net = _deployed_unext(num_classes)
    out: dict[str, Any] = {
        "benchmark": "infer",
        "sizes": {},
        "config": {
            "threads": threads,
            "batch": batch,
            "reps": reps,
            "warmup": warmup,
            "num_classes": num_classes,
            "torch": torch.__version__,
            "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
        },
    }
    with tempfile.TemporaryDirectory(prefix="bench_onnx_") as tmp:
        for size in sizes:
            x1 = torch.rand(1, 1, int(size), int(size))
            xb = torch.rand(int(batch), 1, int(size), int(size))
            runners: dict[str, Callable[[torch.Tensor], Any]] = {}
            notes: dict[str, str] = {}
            for v in variants:
                if v == "eager":
                    runners[v] = net
                elif v == "channels_last":
                    cl = copy.deepcopy(net).to(memory_format=torch.channels_last)
                    runners[v] = lambda x, m=cl: m(x.contiguous(memory_format=torch.channels_last))
                elif v == "torchscript":
                    ts, how = _torchscript(net, x1)
                    runners[v], notes[v] = ts, how
                elif v == "onnxruntime":
                    runners[v] = _onnx_session(net, x1, os.path.join(tmp, f"unext_{size}.onnx"), threads)
                else:
                    raise ValueError(f"unknown variant {v!r}")
            times: dict[str, dict[str, list[float]]] = {v: {"b1": [], "bn": []} for v in runners}
            bar = _progress((warmup + reps) * len(runners), f"infer {size}px", quiet)
            with torch.inference_mode():
                for r in range(warmup + reps):
                    for v, fn in runners.items():  # round-robin: every variant sees the same load
                        for key, x in (("b1", x1), ("bn", xb)):
                            t = time.perf_counter()
                            fn(x)
                            dt = time.perf_counter() - t
                            if r >= warmup:
                                times[v][key].append(dt)
                        bar.update(1)
            bar.close()
            res = {}
            for v, tv in times.items():
                b1, bn = _median(tv["b1"]), _median(tv["bn"])
                res[v] = {
                    "latency_ms": 1000 * b1,
                    "images_per_s_batch1": 1.0 / b1,
                    "images_per_s": int(batch) / bn,
                    "batch_ms": 1000 * bn,
                }
                if v in notes:
                    res[v]["how"] = notes[v]
            if "eager" in res:
                for v in res:
                    res[v]["throughput_ratio_vs_eager"] = res[v]["images_per_s"] / res["eager"]["images_per_s"]
                    res[v]["latency_ratio_vs_eager"] = res["eager"]["latency_ms"] / res[v]["latency_ms"]
            out["sizes"][str(size)] = res
    out["peak_rss_mb"] = _peak_rss_mb()
    return out


# -------------------------------------------------------------------------------- evaluate
DEFAULT_PSFHS = REPO.parent / "shared" / "data" / "psfhs"
REFERENCE_METRICS = REPO / "tests" / "metrics_reference.py"  # the previous (slower) implementation, test-only


def _reference_evaluate_case() -> Callable:
    """``evaluate_case`` of ``tests/metrics_reference.py`` (a repository checkout only)."""
    import importlib.util

    if not REFERENCE_METRICS.is_file():
        raise OptionError(f"--reference: {REFERENCE_METRICS} is absent (it ships with the repository's tests)")
    spec = importlib.util.spec_from_file_location("_metrics_reference", REFERENCE_METRICS)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module.evaluate_case


def _network_like_prediction(gt_xy, index: int, low_res: int = 64):
    """A prediction with a network's kind of errors from the reference itself: the label map at
    ``low_res`` px (an argmax at the training size) and a shift of a few pixels; brought back
    to the frame's size by :func:`_resize_back`."""
    import numpy as np

    t = torch.as_tensor(np.roll(gt_xy, (index % 5 - 2, index % 7 - 3), axis=(0, 1)), dtype=torch.float32)[None, None]
    return torch.nn.functional.interpolate(t, size=(low_res, low_res), mode="nearest")


def _resize_back(pred_low: torch.Tensor, size: Sequence[int]):
    """The nearest-neighbour resize back to the frame's size of ``custom.evaluation.evaluate.evaluate_network``."""
    import numpy as np

    return torch.nn.functional.interpolate(pred_low, size=tuple(size), mode="nearest")[0, 0].numpy().astype(np.int64)


def bench_evaluate(
    dataset_dir: str | None = None,
    frames: int = 100,
    threads: int = 1,
    num_classes: int = 3,
    n_overlays: int = 3,
    reference: bool = False,
    quiet: bool = False,
) -> dict:
    """Frames/s of the evaluation path on real label maps (``labels/*.png`` of ``dataset_dir``,
    default ``../shared/data/psfhs``): reading the reference (``read_label_map``), the resize
    back of a network-like low-resolution prediction, the per-image metrics (Dice, pooled HD95,
    ASD, HD95_monai by ``case_record`` / ``evaluate_case``), the report (``write_report``:
    summary, CSV, Markdown) and the best/worst overlays. ``reference``: the previous metrics
    implementation (``tests/metrics_reference.py``) scored on the same frames, interleaved."""
    import numpy as np

    from custom.evaluation.evaluate import _loader, case_record, overlay_image, read_label_map, write_report

    torch.set_num_threads(int(threads))
    root = Path(dataset_dir) if dataset_dir else DEFAULT_PSFHS
    labels = sorted((root / "labels").glob("*.png")) if (root / "labels").is_dir() else []
    if not labels:
        raise OptionError(
            f"--dataset-dir: no labels/*.png under {root} (expected a PSFHS-style folder "
            "with images/ and labels/, default ../shared/data/psfhs)"
        )
    if int(frames) < 1:
        raise OptionError(f"--frames: expected a positive number of frames, got {frames!r}")
    labels = labels[: int(frames)]
    reference_case = _reference_evaluate_case() if reference else None
    stage: dict[str, list[float]] = {"load": [], "resize_back": [], "score": [], "score_reference": []}
    rows, preds, shapes = [], {}, set()
    bar = _progress(len(labels), "evaluate frames", quiet)
    for i, path in enumerate(labels):
        t0 = time.perf_counter()
        gt = read_label_map(str(path))
        t1 = time.perf_counter()
        pred = _resize_back(_network_like_prediction(gt, i), gt.shape)
        t2 = time.perf_counter()
        row = case_record(pred, gt, int(num_classes), None, path.stem)
        t3 = time.perf_counter()
        stage["load"].append(t1 - t0)
        stage["resize_back"].append(t2 - t1)
        stage["score"].append(t3 - t2)
        if reference_case is not None:
            t = time.perf_counter()
            reference_case(pred.T, gt.T, int(num_classes), None)
            stage["score_reference"].append(time.perf_counter() - t)
        rows.append(row)
        preds[path.stem] = pred
        shapes.add(tuple(gt.shape))
        bar.update(1)
    bar.close()
    with tempfile.TemporaryDirectory(prefix="bench_eval_") as tmp:
        t = time.perf_counter()
        write_report(rows, tmp, [f"class_{c}" for c in range(1, int(num_classes))])
        report_s = time.perf_counter() - t
    ranked = sorted(rows, key=lambda r: r["dice"])
    picks = ranked[: int(n_overlays)] + ranked[::-1][: int(n_overlays)] if n_overlays else []
    t = time.perf_counter()
    for r in picks:
        image_file = root / "images" / f"{r['name']}.png"
        image = (
            np.squeeze(np.asarray(_loader(str(image_file), for_mask=False), dtype=np.float32))
            if image_file.is_file()
            else np.zeros(preds[r["name"]].shape, np.float32)
        )
        if image.ndim == 3:
            image = image[..., :3].mean(-1) if image.shape[-1] in (3, 4) else image.mean(0)
        overlay_image(image.T, read_label_map(str(root / "labels" / f"{r['name']}.png")).T, preds[r["name"]].T)
    overlays_s = time.perf_counter() - t
    n = len(labels)
    per_frame = {k: 1000 * sum(v) / n for k, v in stage.items() if v and k != "score_reference"}
    total_s = sum(sum(stage[k]) for k in ("load", "resize_back", "score")) + report_s + overlays_s
    result: dict[str, Any] = {
        "benchmark": "evaluate",
        "frames": n,
        "frame_shapes": sorted(shapes),
        "score_frames_per_s": n / sum(stage["score"]),
        "path_frames_per_s": n / total_s,
        "ms_per_frame": per_frame,
        "report_s": report_s,
        "overlays": len(picks),
        "overlays_s": overlays_s,
        "mean_dice": float(np.mean([r["dice"] for r in rows])),
        "config": {
            "dataset_dir": str(root),
            "threads": int(threads),
            "num_classes": int(num_classes),
            "metrics": "dice, hd95 (pooled), asd, hd95_monai",
            "prediction": "reference at 64 px, shifted, resized back with nearest",
            "torch": torch.__version__,
            "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
        },
    }
    if stage["score_reference"]:
        result["reference_score_frames_per_s"] = n / sum(stage["score_reference"])
        result["speedup_vs_reference"] = result["score_frames_per_s"] / result["reference_score_frames_per_s"]
    return result


# ------------------------------------------------------------------------------------ CLI
def _print_train(r: dict) -> None:
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


def _print_infer(r: dict) -> None:
    c = r["config"]
    print(
        f"infer: UNeXt ({c['num_classes']} classes), {c['threads']} threads, "
        f"batch 1 latency and batch {c['batch']} throughput"
    )
    for size, res in r["sizes"].items():
        print(f"  {size} px")
        for v, m in res.items():
            extra = f" [{m['how']}]" if "how" in m else ""
            print(
                f"    {v:14s} {m['latency_ms']:8.1f} ms/img (x{m.get('latency_ratio_vs_eager', 1):.2f})  "
                f"{m['images_per_s']:7.2f} img/s (x{m.get('throughput_ratio_vs_eager', 1):.2f}){extra}"
            )
    print(f"  peak RSS: {r['peak_rss_mb']:.0f} MB")


def _print_evaluate(r: dict) -> None:
    c = r["config"]
    print(
        f"evaluate: {r['frames']} frames {r['frame_shapes']} of {c['dataset_dir']}, {c['num_classes']} classes "
        f"({c['metrics']}), {c['threads']} thread(s)"
    )
    print(
        f"  scoring: {r['score_frames_per_s']:.1f} frames/s"
        + (
            f"  (previous implementation: {r['reference_score_frames_per_s']:.1f} frames/s, "
            f"x{r['speedup_vs_reference']:.1f})"
            if "reference_score_frames_per_s" in r
            else ""
        )
    )
    print(
        f"  whole path (read reference, resize back, score, report, {r['overlays']} overlays): "
        f"{r['path_frames_per_s']:.1f} frames/s"
    )
    print(
        "  ms/frame: "
        + ", ".join(f"{k} {v:.2f}" for k, v in r["ms_per_frame"].items())
        + f"; report {r['report_s']:.2f} s, overlays {r['overlays_s']:.2f} s"
    )
    print(f"  mean Dice of the synthetic predictions: {r['mean_dice']:.4f}")


class Bench:
    """Benchmarks of the trainer (``train``), the deployed UNeXt (``infer``), the evaluation (``evaluate``),
    the comparison with the authors' implementation (``reference``) and the GPU check (``gpu``)."""

    def train(
        self,
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
        mmap_threshold_kib: int | None = None,
        compile_cache: str | None = None,
        compile_backend: str | None = None,
        json: bool = False,
    ):
        """Median s/iteration of the trainer, the compute floor, their ratio, loader wait, peak memory.

        ``--method paper`` (default: common + train + paper.yaml) or a methods/ file name
        (``ours``); ``--overrides "{'transformer_def#window_size': 4}"`` any config value;
        ``--mmap-threshold-kib 128``: freed large buffers go back to the system (see
        :func:`set_mmap_threshold`), recorded in the result's ``config``. ``--compile true``
        compiles the networks and teachers with ``torch.compile`` through the persistent cache of
        :mod:`custom.utils.compile_cache` (``--compile-cache DIR``, else ``TORCHINDUCTOR_CACHE_DIR``,
        ``FETAL_US_COMPILE_CACHE`` or ``~/.cache/fetal_us_ssl/torch_compile``); the first
        (compiling) iteration is reported apart; ``--compile-backend eager`` traces without
        Inductor (a quick check of the compiled path)."""
        channels_last, compile, floor, json = (
            parse_bool(v, n)
            for v, n in ((channels_last, "channels-last"), (compile, "compile"), (floor, "floor"), (json, "json"))
        )
        if mmap_threshold_kib:
            set_mmap_threshold(int(mmap_threshold_kib))
        r = bench_train(
            image_size,
            batch_size,
            labeled_bs,
            iterations,
            warmup,
            threads,
            amp,
            channels_last,
            compile,
            device,
            data,
            dataset_dir,
            method,
            num_workers,
            floor,
            overrides,
            quiet=False,
            compile_backend=compile_backend,
            compile_cache=compile_cache,
        )
        _emit(r, json, _print_train)

    def infer(
        self,
        sizes: Any = (256, 448),
        threads: int = 2,
        batch: int = 8,
        reps: int = 10,
        warmup: int = 2,
        num_classes: int = 2,
        variants: Any = ("eager", "channels_last", "torchscript", "onnxruntime"),
        json: bool = False,
    ):
        """Latency and throughput of the deployed UNeXt: eager, channels-last, TorchScript, ONNX Runtime."""
        json = parse_bool(json, "json")
        r = bench_infer(sizes, threads, batch, reps, warmup, num_classes, variants, quiet=False)
        _emit(r, json, _print_infer)

    def evaluate(
        self,
        dataset_dir: str | None = None,
        frames: int = 100,
        threads: int = 1,
        num_classes: int = 3,
        n_overlays: int = 3,
        reference: bool = False,
        json: bool = False,
    ):
        """Frames/s of the evaluation path (metrics, resize back, report, overlays) on real label maps.

        ``--dataset-dir``: a folder with ``labels/*.png`` (and ``images/``), default
        ``../shared/data/psfhs``; ``--reference true``: also the previous metrics
        implementation (``tests/metrics_reference.py``) on the same frames."""
        reference, json = parse_bool(reference, "reference"), parse_bool(json, "json")
        r = bench_evaluate(dataset_dir, frames, threads, num_classes, n_overlays, reference, quiet=False)
        _emit(r, json, _print_evaluate)

    def reference(
        self,
        path: str | None = None,
        utils_path: str | None = None,
        python: str | None = None,
        variants: Any = ("paper",),
        rounds: int = 4,
        iterations: int = 5,
        warmup: int = 2,
        image_size: int = 224,
        batch_size: int = 5,
        labeled_bs: int = 1,
        threads: int = 2,
        num_classes: int = 2,
        json: bool = False,
    ):
        """Our training iteration beside the authors' public implementation, fetched outside the
        repository (``--path DIR``; ``--utils-path`` their companion checkout with ``src/code/utils``;
        ``--python`` the interpreter with the reference's dependencies), in ``--rounds`` interleaved
        rounds of ``--iterations`` after ``--warmup``; ``--variants "[paper, ours+bf16]"`` our
        method with ``+bf16``, ``+cl``, ``+compile``. Throughput and peak-memory ratios (see
        :mod:`custom.tools.reference`)."""
        from custom.tools.reference import compare, print_comparison

        json = parse_bool(json, "json")
        if not path:
            raise OptionError("--path: give the folder of the fetched reference implementation")
        if isinstance(variants, str):
            variants = [v.strip() for v in variants.strip("[]()").split(",") if v.strip()]
        r = compare(
            path,
            utils_path,
            python,
            [str(v) for v in variants],
            rounds,
            iterations,
            warmup,
            image_size,
            batch_size,
            labeled_bs,
            threads,
            num_classes,
            log=lambda line: print(line, file=sys.stderr, flush=True),
        )
        _emit(r, json, print_comparison)

    def gpu(
        self,
        out: str | None = None,
        tiny: bool = False,
        dataset_dir: str | None = None,
        iterations: int | None = None,
        threads: int | None = None,
        stages: Any = None,
    ):
        """The GPU check (``custom.tools.gpu_check``): train benchmark at 448 px (fp32, bf16, compile),
        inference benchmark, short real PSFHS trainings of paper.yaml and the default with their
        test Dice; one JSON file ``--out`` written atomically after every stage. ``--tiny true``:
        the same on the CPU at 64 px in about a minute. ``--iterations`` of the real trainings
        (default 300; tiny 3), ``--stages "[train_fp32, infer]"`` a subset."""
        from custom.tools.gpu_check import STAGES, run_gpu_check

        if not out:
            raise OptionError("--out: give the path of the JSON file to write, e.g. --out gpu_check.json")
        tiny = parse_bool(tiny, "tiny")
        if stages is None:
            chosen = STAGES
        elif isinstance(stages, str):
            chosen = tuple(x.strip() for x in stages.strip("[]()").split(",") if x.strip())
        else:
            chosen = tuple(str(x) for x in stages)
        unknown = [x for x in chosen if x not in STAGES]
        if unknown:
            raise OptionError(f"--stages: unknown {unknown}; known: {list(STAGES)}")
        r = run_gpu_check(
            out, tiny=tiny, dataset_dir=dataset_dir, iterations=iterations, threads=threads, stages=chosen
        )
        for name, record in r["stages"].items():
            line = f"{record['seconds']:7.1f} s" + ("" if record["ok"] else f"  FAILED: {record['error'][:200]}")
            print(f"  {name:14s} {line}", file=sys.stderr)
        print(
            f"gpu check on {r['device']}: {len(r['stages']) - len(r['failed'])}/{len(r['stages'])} stages ok, "
            f"written to {out}"
        )


_JSON_STDOUT = None  # the real stdout while main() routes every other print to stderr


def _emit(result: dict, as_json: bool, printer: Callable[[dict], None]) -> None:
    if as_json:
        stream = _JSON_STDOUT or sys.stdout
        stream.write(json.dumps(result) + "\n")
        stream.flush()
    else:
        printer(result)


def _wants_json(args: Sequence[str]) -> bool:
    """Whether the command line asks for ``--json`` (``--json``, ``--json true``, ``--json=yes``; not
    ``--json false``)."""
    args = list(args)
    for i, arg in enumerate(args):
        if arg.startswith("--json="):
            value = arg.split("=", 1)[1]
        elif arg == "--json":
            value = args[i + 1] if i + 1 < len(args) and not args[i + 1].startswith("-") else "true"
        else:
            continue
        try:
            return parse_bool(value, "json")
        except OptionError:
            return False  # fire's call reports the bad value
    return False


def main(argv: Sequence[str] | None = None) -> None:
    try:
        _main(argv)
    except OptionError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)


def _main(argv: Sequence[str] | None = None) -> None:
    import fire

    if _wants_json(argv if argv is not None else sys.argv[1:]):
        # keep stdout for the one JSON object: anything else that prints goes to stderr
        global _JSON_STDOUT
        _JSON_STDOUT, sys.stdout = sys.stdout, sys.stderr
        try:
            fire.Fire(Bench, command=list(argv) if argv is not None else None, name="custom.tools.bench")
        finally:
            sys.stdout, _JSON_STDOUT = _JSON_STDOUT, None
        return
    fire.Fire(Bench, command=list(argv) if argv is not None else None, name="custom.tools.bench")


if __name__ == "__main__":
    main()
