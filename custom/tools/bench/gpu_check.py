"""One GPU check: ``python -m custom.tools.bench gpu --out FILE.json [--tiny true]``.

Stages, each timed and recorded in the one JSON file whatever the others do (a failing stage
records its error and the end of its traceback; the file is rewritten atomically after every
stage, so a run stopped half-way still leaves the finished stages):

* ``environment``: torch, CUDA, cuDNN, MONAI versions, the device name and memory;
* ``train_fp32``, ``train_bf16``, ``train_compile``: :func:`custom.tools.bench.train.bench_train` at 448 px
  (the paper's method, batch 5 with 1 labelled, synthetic data): fp32, bf16 autocast,
  ``torch.compile`` (fp32, inductor, without the compute-floor measurement) with a new, empty
  compile cache (:mod:`custom.utils.compile_cache`), so its first iteration is a cold compile;
* ``train_compile_cached``: the same compiled benchmark again in a new process
  (``python -m custom.tools.bench train --compile true``) on the cache the previous stage filled:
  the first iteration of a later run on the same machine;
* ``infer``: :func:`custom.tools.bench.infer.bench_infer` (the deployed UNeXt on the CPU variants) and the
  same network on the GPU (batch 1 latency, batch 8 throughput, fp32 and bf16 autocast);
* ``prepare_psfhs``: ``python -m custom.data prepare psfhs`` of ``--dataset-dir`` (the PSFHS source) into a
  temporary folder (the protocol's split: every 20th frame labelled, test ids 4500-4799);
* ``real_paper``, ``real_default``: a short training at 448 px of ``methods/paper.yaml`` (the
  published recipe) and of the default method (``custom.utils.paths.DEFAULT_METHOD``), through
  ``custom.tools.compare``'s ``build_runs`` / ``train_run`` (``monai.bundle run training`` in a subprocess) /
  ``evaluate_run`` (argmax at 448, nearest back to the frame's size), then the test Dice.

Sized for under 8 minutes on one H200. ``--tiny true`` runs every stage on the CPU at 64 px with a
narrow Swin-Unet, 2-3 iterations and a handful of frames (the test of this command).
"""

from __future__ import annotations

import os
import platform
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from custom.utils.atomic import atomic_write_json, atomic_write_text
from custom.utils.cli import OptionError, parse_bool
from custom.utils.paths import DEFAULT_METHOD, source_root

__all__ = ["STAGES", "TINY_SWIN", "run_gpu_check", "print_gpu_check"]

REPO = source_root()  # the repository (the folder holding custom/)
TINY_SWIN = {
    "transformer_def#embed_dim": 12,
    "transformer_def#num_heads": [1, 1, 2, 2],
    "transformer_def#window_size": 4,
}
STAGES = (
    "environment",
    "train_fp32",
    "train_bf16",
    "train_compile",
    "train_compile_cached",
    "infer",
    "prepare_psfhs",
    "real_paper",
    "real_default",
)


def _environment(device: torch.device) -> dict[str, Any]:
    import monai

    env: dict[str, Any] = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "monai": monai.__version__,
        "cuda_available": torch.cuda.is_available(),
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "device": str(device),
        "cpu_count": os.cpu_count(),
        "host": platform.node(),
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        env.update(
            device_name=props.name,
            device_memory_gib=props.total_memory / 2**30,
            capability=f"{props.major}.{props.minor}",
            bf16_supported=torch.cuda.is_bf16_supported(),
        )
    else:
        env["device_name"] = platform.processor() or "cpu"
    return env


def _infer_on_device(device: torch.device, sizes: tuple[int, ...], batch: int, reps: int, warmup: int) -> dict:
    """The deployed UNeXt on ``device``: median batch-1 latency and batch-``batch`` images/s, fp32 and bf16."""
    from custom.tools.bench.infer import deployed_unext
    from custom.tools.bench.timing import median, sync

    net = deployed_unext(num_classes=3).to(device)
    out: dict[str, Any] = {}
    for size in sizes:
        for dtype in ("fp32", "bf16"):
            autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=dtype == "bf16")
            times: dict[int, list[float]] = {1: [], batch: []}
            with torch.inference_mode(), autocast:
                for b in times:
                    x = torch.rand(b, 1, size, size, device=device)
                    for r in range(warmup + reps):
                        sync(device)
                        t = time.perf_counter()
                        net(x)
                        sync(device)
                        if r >= warmup:
                            times[b].append(time.perf_counter() - t)
            out[f"{size}_{dtype}"] = {
                "latency_ms": 1000 * median(times[1]),
                "images_per_s": batch / median(times[batch]),
            }
    return out


def _prepare(dataset_dir: Path | None, out: Path, tiny: bool) -> dict:
    """``python -m custom.data prepare psfhs`` into ``out`` (a subprocess: the command users run)."""
    if dataset_dir is None:
        raise FileNotFoundError("no PSFHS frames: pass --dataset-dir (the PSFHS source, e.g. ../shared/data/psfhs)")
    if not (dataset_dir / "images").is_dir():
        raise FileNotFoundError(f"PSFHS frames not found at {dataset_dir} (expected images/ and labels/)")
    split = (
        [
            "--limit",
            "40",
            "--block-size",
            "8",
            "--labeled-every",
            "4",
            "--test-fraction",
            "0.2",
            "--val-fraction",
            "0.2",
        ]
        if tiny
        else ["--labeled-every", "20", "--test-ids", "4500-4799", "--val-fraction", "0.05"]
    )
    cmd = [
        sys.executable,
        "-m",
        "custom.data",
        "prepare",
        "psfhs",
        "--source",
        str(dataset_dir),
        "--out",
        str(out),
        *split,
        "--seed",
        "0",
    ]
    proc = subprocess.run(cmd, cwd=str(REPO), capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed (exit {proc.returncode}): {(proc.stderr or proc.stdout)[-2000:]}")
    import json

    datalist = json.loads((out / "datalist.json").read_text(encoding="utf-8"))
    return {"command": " ".join(cmd), "splits": {k: len(v) for k, v in datalist.items() if isinstance(v, list)}}


def _real_training(
    method: str, dataset_dir: Path, work: Path, iterations: int, tiny: bool, device: str, threads: int | None
) -> dict:
    """Train ``method`` for ``iterations`` with ``custom.tools.compare``'s pieces, then the test Dice."""
    from custom.data import load_datalist
    from custom.data.datalist import label_names
    from custom.evaluation.metrics import summarize
    from custom.tools.compare import (
        build_runs,
        evaluate_run,
        head_class_of,
        load_test_entries,
        train_run,
    )

    override = work / f"override_{Path(method).stem}.yaml"
    lines = (
        ["image_size: [64, 64]", "batch_size: 4", "labeled_bs: 2", *[f"{k}: {v}" for k, v in TINY_SWIN.items()]]
        if tiny
        else ["image_size: [448, 448]"]
    )
    lines.append(f"device: \"$torch.device('{device}')\"")
    atomic_write_text(override, "\n".join(lines) + "\n")
    spec = build_runs(dataset_dir, [method], [0], [str(override)], work / "runs", max_iterations=iterations)[0]
    t = time.perf_counter()
    train_run(spec, launcher="subprocess", threads=threads)
    train_s = time.perf_counter() - t
    entries = load_test_entries(dataset_dir)
    datalist = load_datalist(dataset_dir / "datalist.json")
    t = time.perf_counter()
    rows = evaluate_run(spec, entries, device, head_class_of(datalist, entries))
    eval_s = time.perf_counter() - t
    summary = summarize(rows, label_names(datalist.get("labels"), int(datalist.get("num_classes", 3))))
    return {
        "method": spec.method,
        "config_files": [Path(f).name for f in spec.config_files[:-1]],
        "iterations": iterations,
        "train_s": train_s,
        "eval_s": eval_s,
        "test_images": len(rows),
        "test_dice": summary["overall"]["dice_mean"],
        "test_hd95": summary["overall"]["hd95_mean"],
        "test_asd": summary["overall"]["asd_mean"],
        "unit": summary["unit"],
        "dice_per_class": {name: c["dice_mean"] for name, c in summary["classes"].items()},
    }


def run_gpu_check(
    out: str | os.PathLike | None = None,
    tiny: bool = False,
    dataset_dir: str | os.PathLike | None = None,
    iterations: int | None = None,
    threads: int | None = None,
    quiet: bool = False,
    stages: Sequence[str] | str = STAGES,
    _stage_hook: Callable[[str], None] | None = None,
) -> dict:
    """The GPU check (module doc): the train benchmark at 448 px (fp32, bf16, compile), the inference
    benchmark, short real PSFHS trainings of methods/paper.yaml and the default with their test Dice;
    one JSON file ``out`` written atomically after every stage; returns the result. ``tiny``: the
    same on the CPU at 64 px in about a minute. ``iterations`` of the real trainings (default 300;
    tiny 3); ``stages "[train_fp32, infer]"`` a subset."""
    from custom.tools.bench.infer import bench_infer
    from custom.tools.bench.timing import progress
    from custom.tools.bench.train import bench_train

    tiny, quiet = parse_bool(tiny, "tiny"), parse_bool(quiet, "quiet")
    if not out:
        raise OptionError("--out: give the path of the JSON file to write, e.g. --out gpu_check.json")
    if isinstance(stages, str):
        stages = [x.strip() for x in stages.strip("[]()").split(",") if x.strip()]
    stages = tuple(str(x) for x in stages)
    unknown = [x for x in stages if x not in STAGES]
    if unknown:
        raise OptionError(f"--stages: unknown {unknown}; known: {list(STAGES)}")
    out = Path(out)
    if out.is_dir():
        raise IsADirectoryError(f"--out {out} is a folder; give the path of the JSON file to write")
    out.parent.mkdir(parents=True, exist_ok=True)
    cuda = torch.cuda.is_available() and not tiny
    device = torch.device("cuda" if cuda else "cpu")
    threads = int(threads or (2 if tiny else min(16, os.cpu_count() or 1)))
    iterations = int(iterations or (3 if tiny else 300))
    data = Path(dataset_dir) if dataset_dir else None
    size = 64 if tiny else 448
    train_kw: dict[str, Any] = dict(
        image_size=size,
        iterations=2 if tiny else 20,
        warmup=1 if tiny else 5,
        threads=threads,
        device=str(device),
        quiet=True,
        overrides=dict(TINY_SWIN) if tiny else None,
    )
    result: dict[str, Any] = {
        "check": "gpu",
        "out": str(out),
        "tiny": bool(tiny),
        "device": str(device),
        "started": time.time(),
        "stages": {},
        "failed": [],
    }
    work_root = tempfile.mkdtemp(prefix="gpu_check_")
    work = Path(work_root)
    prepared = work / "psfhs"

    compile_cache = work / "compile_cache"  # empty: the first compiled stage compiles cold

    def train_compile():
        # no floor measurement: its extra input shapes and grad modes would each be compiled again;
        # tiny (CPU): dynamo's tracing with the eager backend, not inductor's C++ compilation (minutes on 2 cores)
        return bench_train(
            compile=True,
            compile_backend="eager" if tiny else None,
            compile_cache=str(compile_cache),
            **dict(train_kw, floor=False),
        )

    def train_compile_cached():
        # a new process on the cache train_compile filled: what a later run on this machine pays
        cmd = [sys.executable, "-m", "custom.tools.bench", "train", "--compile", "true"]
        cmd += ["--compile-cache", str(compile_cache), "--floor", "false", "--json"]
        cmd += ["--image-size", str(size), "--iterations", str(train_kw["iterations"])]
        cmd += ["--warmup", str(train_kw["warmup"]), "--threads", str(threads), "--device", str(device)]
        if tiny:
            cmd += ["--overrides", repr(dict(TINY_SWIN)), "--compile-backend", "eager"]
        proc = subprocess.run(cmd, cwd=str(REPO), capture_output=True, text=True, check=False)
        lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
        if proc.returncode != 0 or not lines:
            raise RuntimeError(f"{' '.join(cmd)} failed (exit {proc.returncode}): {proc.stderr[-2000:]}")
        import json

        return json.loads(lines[-1])

    plan: dict[str, Callable[[], Any]] = {
        "environment": lambda: _environment(device),
        "train_fp32": lambda: bench_train(amp="none", **train_kw),
        "train_bf16": lambda: bench_train(amp="bf16", **train_kw),
        "train_compile": train_compile,
        "train_compile_cached": train_compile_cached,
        "infer": lambda: {
            "cpu": bench_infer(
                sizes=(64,) if tiny else (256, 448),
                threads=threads,
                batch=2 if tiny else 8,
                reps=2 if tiny else 10,
                warmup=1 if tiny else 2,
                num_classes=3,
                quiet=True,
            ),
            **({"cuda": _infer_on_device(device, (256, 448), 8, 20, 5)} if cuda else {}),
        },
        "prepare_psfhs": lambda: _prepare(data, prepared, tiny),
        "real_paper": lambda: _real_training("paper", prepared, work, iterations, tiny, str(device), threads),
        "real_default": lambda: _real_training(DEFAULT_METHOD, prepared, work, iterations, tiny, str(device), threads),
    }
    bar = progress(len(stages), "gpu check", quiet)
    try:
        for name in stages:
            bar.set_postfix_str(name)
            t = time.perf_counter()
            try:
                if _stage_hook is not None:
                    _stage_hook(name)
                value = plan[name]()
                record: dict[str, Any] = {"ok": True, "result": value}
            except Exception as error:  # noqa: BLE001 - one stage's failure is recorded, the others still run
                record = {
                    "ok": False,
                    "error": f"{type(error).__name__}: {error}",
                    "traceback": traceback.format_exc()[-3000:],
                }
                result["failed"].append(name)
            record["seconds"] = time.perf_counter() - t
            result["stages"][name] = record
            result["elapsed_s"] = time.time() - result["started"]
            atomic_write_json(out, result, default=str)
            bar.update(1)
    finally:
        bar.close()
        import shutil

        shutil.rmtree(work_root, ignore_errors=True)
    return result


def print_gpu_check(r: dict) -> None:
    """One line per stage on stderr (its time, or its error), then where the file is."""
    for name, record in r["stages"].items():
        line = f"{record['seconds']:7.1f} s" + ("" if record["ok"] else f"  FAILED: {record['error'][:200]}")
        print(f"  {name:14s} {line}", file=sys.stderr)
    print(
        f"gpu check on {r['device']}: {len(r['stages']) - len(r['failed'])}/{len(r['stages'])} stages ok, "
        f"written to {r['out']}"
    )
