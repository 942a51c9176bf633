"""``bench infer``: latency and throughput of the deployed UNeXt (eager, channels-last,
TorchScript, ONNX Runtime)."""

from __future__ import annotations

import contextlib
import copy
import os
import tempfile
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch

from custom.tools.bench.timing import median, peak_rss_mb, progress
from custom.utils.cli import OptionError, parse_bool
from custom.utils.paths import configs_dir

__all__ = ["VARIANTS", "deployed_unext", "bench_infer", "print_infer"]

VARIANTS = ("eager", "channels_last", "torchscript", "onnxruntime")


def deployed_unext(num_classes: int, in_channels: int = 1) -> torch.nn.Module:
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config([str(configs_dir() / "common.yaml")])
    # a fresh UNeXt of the bundle's definition: no trained weights, so no recorded model_config.json applies
    parser.update(
        {
            "num_classes": int(num_classes),
            "in_channels": int(in_channels),
            "device": "$torch.device('cpu')",
            "model_config_file": None,
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
    variants: Sequence[str] = VARIANTS,
    quiet: bool = False,
) -> dict:
    """Latency (batch 1, median ms per image) and throughput (batch ``batch``, images/s) of the
    deployed UNeXt per variant; the variants are measured round-robin (same load) and compared
    with eager in the same run."""
    quiet = parse_bool(quiet, "quiet")
    if isinstance(sizes, (int, str)):
        sizes = [int(s) for s in str(sizes).strip("[]()").split(",")]
    if isinstance(variants, str):
        variants = [v.strip() for v in variants.strip("[]()").split(",")]
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        raise OptionError(f"--variants: unknown {unknown}; known: {list(VARIANTS)}")
    torch.set_num_threads(int(threads))
    torch.manual_seed(0)
    net = deployed_unext(num_classes)
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
                else:  # onnxruntime
                    runners[v] = _onnx_session(net, x1, os.path.join(tmp, f"unext_{size}.onnx"), threads)
            times: dict[str, dict[str, list[float]]] = {v: {"b1": [], "bn": []} for v in runners}
            bar = progress((warmup + reps) * len(runners), f"infer {size}px", quiet)
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
                b1, bn = median(tv["b1"]), median(tv["bn"])
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
    out["peak_rss_mb"] = peak_rss_mb()
    return out


def print_infer(r: dict) -> None:
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
