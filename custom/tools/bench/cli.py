"""``python -m custom.tools.bench``: the benchmarks as one ``fire`` command (see
:mod:`custom.tools.bench`); ``--json`` prints one JSON object and nothing else on stdout."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Sequence
from typing import Any

from custom.tools.bench.evaluate import bench_evaluate, print_evaluate
from custom.tools.bench.infer import bench_infer, print_infer
from custom.tools.bench.timing import set_mmap_threshold
from custom.tools.bench.train import bench_train, print_train
from custom.utils.cli import OptionError, parse_bool, without_stray_arguments

__all__ = ["Bench", "main"]


class Bench:
    """Benchmarks of the trainer (``train``), the deployed UNeXt (``infer``), the evaluation (``evaluate``),
    the comparison with the authors' implementation (``reference``) and the GPU check (``gpu``)."""

    @without_stray_arguments
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

        ``--method paper`` (default: common + train + methods/paper.yaml, the published recipe) or
        another methods/ file name (``ours``); ``--overrides "{'transformer_def#window_size': 4}"`` any config value;
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
        _emit(r, json, print_train)

    @without_stray_arguments
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
        _emit(r, json, print_infer)

    @without_stray_arguments
    def evaluate(
        self,
        dataset_dir: str | None = None,
        frames: int = 100,
        threads: int = 1,
        num_classes: int = 3,
        n_overlays: int = 3,
        reference: str | None = None,
        json: bool = False,
    ):
        """Frames/s of the evaluation path (metrics, resize back, report, overlays) on real label maps.

        ``--dataset-dir``: a folder with ``labels/*.png`` (and ``images/``), e.g.
        ``../shared/data/psfhs``; ``--reference tests/metrics_reference.py``: also the previous
        metrics implementation on the same frames."""
        json = parse_bool(json, "json")
        r = bench_evaluate(dataset_dir, frames, threads, num_classes, n_overlays, reference, quiet=False)
        _emit(r, json, print_evaluate)

    @without_stray_arguments
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
        one_encoder_pass: bool = True,
        json: bool = False,
    ):
        """Our training iteration beside the authors' public implementation, fetched outside the
        repository (``--path DIR``; ``--utils-path`` their companion checkout with ``src/code/utils``;
        ``--python`` the interpreter with the reference's dependencies), in ``--rounds`` interleaved
        rounds of ``--iterations`` after ``--warmup``; ``--variants "[paper, ours+bf16]"`` our
        method with ``+bf16``, ``+cl``, ``+compile``; ``--one-encoder-pass false``: the reference as
        published, with the second encoder pass its Swin-Unet wrapper makes and no loss reads.
        Throughput and peak-memory ratios (see :mod:`custom.tools.reference`)."""
        from custom.tools.reference import compare, print_comparison

        json = parse_bool(json, "json")
        one_encoder_pass = parse_bool(one_encoder_pass, "one-encoder-pass")
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
            one_encoder_pass=one_encoder_pass,
        )
        _emit(r, json, print_comparison)

    @without_stray_arguments
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
        inference benchmark, short real PSFHS trainings of methods/paper.yaml and the default with their
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
    from custom.utils.runtime import setup

    setup()
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
