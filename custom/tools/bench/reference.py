"""Our training iteration beside the authors' public implementation, in interleaved rounds.

The reference is the authors' public training code of the method (UNeXt + Swin-Unet, cross
pseudo supervision, ICT with a Swin-Unet EMA teacher, KL + Mutual Information Gap), fetched and
run **outside this repository**; nothing of it is copied here. This module only drives it::

    python -m custom.tools.bench reference --path DIR [--utils-path DIR2] [--python PY] \\
        [--variants "[paper, ours+bf16]"] [--rounds 4] [--iterations 5] [--warmup 2] [--json]

``DIR`` is a checkout of the authors' repository with ``src/code/train_semi_swin_unext_consist_v2.py``
(their networks, data set and sampler beside it). That checkout lacks the ``utils`` package the
script imports (``utils.losses.DiceLoss``, ``utils.ramps.sigmoid_rampup``, ``utils.dice``,
``utils.metrics``); ``--utils-path`` names the authors' companion repository that has one
(``src/code/utils``; default: a ``Semi-supervised-EGAD`` checkout beside ``DIR``). Four loss names
that the script imports but never calls are absent from that package too; they are bound to
placeholders that raise if called. ``--python`` is the interpreter for the reference (it needs
``tensorboardX``, ``yacs``, ``albumentations``, ``opencv``, ``h5py``, ``medpy``, ``torchmetrics``
besides torch; default: this interpreter).

How the reference runs (one process per round, :func:`run_reference`): the script's source is
executed as a module (its ``__main__`` block is not run; it does not call ``train`` anyway) and
its own ``train(args, snapshot_path)`` is called, with its own argument parser, networks,
losses, optimisers, EMA update, learning-rate schedule, data set, augmentations,
``TwoStreamBatchSampler`` and ``DataLoader`` (4 workers), on random images and masks written
as files in its folder layout. Three things are changed, all outside its iteration's
mathematics: (1) the ICT term, which the script switches on at iteration 1000, is on from the
start (``ict_start: 0`` in our benchmark, so that both compute every term); (2) no pretrained
Swin checkpoint (the script loads one from a file it does not ship; timing does not depend on
the weights); (3) its module-level ``update_ema_variables`` is wrapped to stamp the time after
each call: one interval between two stamps is one whole training iteration (loading, both
forwards, the mixed forward, the teacher's, the losses, backward, both steps, EMA, schedule and
logging). Peak memory is the process's peak RSS (``ru_maxrss``), as in ``bench train``.

One encoder pass (``one_encoder_pass``, on by default in :func:`compare`): the reference's
Swin-Unet wrapper (``networks/vision_transformer.py``, ``SwinUnet.forward``) runs the Swin encoder
twice per forward, once for the logits and once more for a feature map (``emb[-1]``) that no loss
of this script reads, in each of its four Swin forwards per iteration (student, mixed, two teacher
halves). The correction replaces that method with the same computation done once: the encoder's
output and skips feed the decoder, and the returned feature map is the same tensor. The logits and
every loss are unchanged; only the unused second encoder pass goes, so the comparison is with
the reference's mathematics at its necessary cost. ``--one-encoder-pass false`` times it as published.

Our side is ``python -m custom.tools.bench train`` (no floor measurement) at the same size,
batch and threads. The variants are the method (``paper``: the published recipe, the equal
mathematics; ``ours``: the paper's method as this bundle configures it) with ``+bf16``
(autocast), ``+cl`` (channels-last) or ``+compile`` (``torch.compile`` through the persistent
cache) appended. Every round runs the reference and each variant once, in an order rotated from
round to round, so that all see the same load; the result pools the post-warm-up iterations of
every round, per side, and also gives the ratio of the two medians within each round.
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import random
import re
import resource
import subprocess
import sys
import tempfile
import time
import types
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from custom.tools.bench.timing import median
from custom.utils.cli import OptionError, parse_bool
from custom.utils.paths import source_root

__all__ = ["SCRIPT", "parse_variant", "run_reference", "compare", "main"]

REPO = source_root()  # the repository (the folder holding custom/)
SCRIPT = Path("src") / "code" / "train_semi_swin_unext_consist_v2.py"
CONFIG = Path("src") / "code" / "configs" / "swin_tiny_patch4_window7_224_lite.yaml"
UTILS = Path("src") / "code" / "utils"
ICT_GATE = "if iter_num < 1000:"  # the script's ICT start, replaced by the benchmark's
UNUSED_LOSSES = ("ConstraLoss_multi_AvgProj", "smooth_l1_loss", "global_contra_loss", "Uncertainty_Loss")


def _peak_rss_mb() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return r / (1024 * 1024) if sys.platform == "darwin" else r / 1024


def resolve_paths(path: str | os.PathLike, utils_path: str | os.PathLike | None = None) -> tuple[Path, Path]:
    """``(script, utils_dir)`` of the fetched reference, or an :class:`OptionError` saying what is missing."""
    root = Path(path).expanduser().resolve()
    script = root / SCRIPT
    if not script.is_file():
        raise OptionError(
            f"--path: {script} not found (expected a checkout of the authors' repository with {SCRIPT.as_posix()})"
        )
    candidates = [Path(utils_path).expanduser().resolve()] if utils_path else [root.parent / "Semi-supervised-EGAD"]
    for c in candidates:
        for utils_dir in (c / UTILS, c / "utils", c):
            if (utils_dir / "losses.py").is_file() and (utils_dir / "ramps.py").is_file():
                return script, utils_dir
    raise OptionError(
        f"--utils-path: no utils/losses.py and utils/ramps.py under {candidates[0]} (the script imports the "
        "authors' `utils` package, which its own repository does not ship; give a checkout that has "
        "src/code/utils)"
    )


def _write_random_dataset(root: Path, size: int, n_labeled: int, n_unlabeled: int, seed: int) -> None:
    """Random frames and binary masks as PNG files in the reference's folder layout
    (``image/``, ``mask/``, ``ssl/train/{labeled,unlabeled}_data/data_<n>.list``, ``ssl/val/data.list``)."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    (root / "image").mkdir(parents=True)
    (root / "mask").mkdir()
    names = [f"frame_image_{i:04d}.png" for i in range(n_labeled + n_unlabeled)]
    yy, xx = np.mgrid[:size, :size]
    for i, name in enumerate(names):
        Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(root / "image" / name)
        cy, cx, r = rng.uniform(0.3, 0.7) * size, rng.uniform(0.3, 0.7) * size, rng.uniform(0.15, 0.3) * size
        mask = (((yy - cy) ** 2 + (xx - cx) ** 2) < r * r).astype(np.uint8) * 255
        Image.fromarray(mask).save(root / "mask" / name.replace("_image_", "_mask_"))
    for sub, part in (("labeled_data", names[:n_labeled]), ("unlabeled_data", names[n_labeled:])):
        d = root / "ssl" / "train" / sub
        d.mkdir(parents=True)
        (d / f"data_{n_labeled}.list").write_text("\n".join(part) + "\n")
    (root / "ssl" / "val").mkdir(parents=True)
    (root / "ssl" / "val" / "data.list").write_text("\n".join(names[:2]) + "\n")


def _load_script(script: Path, utils_dir: Path, argv: list[str], ict_start: int) -> types.ModuleType:
    """The reference script as a module (argument parsing and module-level setup run; not ``__main__``).
    Its folder goes first on ``sys.path`` and its ``utils`` package into ``sys.modules``; :func:`_unload`
    takes them away again."""
    code_dir = str(script.parent)
    sys.path.insert(0, code_dir)
    utils = types.ModuleType("utils")  # the authors' utils package, from the companion checkout
    utils.__path__ = [str(utils_dir)]  # type: ignore[attr-defined]
    sys.modules["utils"] = utils
    import importlib

    losses = importlib.import_module("utils.losses")
    for name in UNUSED_LOSSES:  # imported by the script, never called by its iteration
        if not hasattr(losses, name):

            def _absent(*_a, _name=name, **_k):
                raise NotImplementedError(f"{_name} is not in the authors' public utils package")

            setattr(losses, name, _absent)
    source = script.read_text(encoding="utf-8")
    gate = re.compile(rf"^(\s*){re.escape(ICT_GATE)}", re.MULTILINE)  # the active line, not a commented copy
    if len(gate.findall(source)) != 1:
        raise RuntimeError(f"{script}: expected one {ICT_GATE!r} (the ICT start) in the script; the code has changed")
    source = gate.sub(lambda m: m.group(1) + "if iter_num < _BENCH_ICT_START:", source)
    module = types.ModuleType("reference_train")
    module.__file__ = str(script)
    module._BENCH_ICT_START = int(ict_start)
    old_argv, old_cwd = sys.argv, os.getcwd()
    sys.argv = [str(script), *argv]
    try:
        os.chdir(code_dir)  # its config path defaults are relative to src/code
        exec(compile(source, str(script), "exec"), module.__dict__)  # noqa: S102 - the fetched reference, run as is
    finally:
        sys.argv = old_argv
        os.chdir(old_cwd)
    return module


def _one_encoder_pass(module_name: str = "networks.vision_transformer") -> None:
    """Make the reference's Swin-Unet wrapper run its encoder once per forward (module doc), after
    checking that its forward is still the published one (two encoder passes)."""
    import inspect

    wrapper = getattr(sys.modules.get(module_name), "SwinUnet", None)
    source = inspect.getsource(wrapper.forward) if wrapper is not None else ""
    if "forward_features(x)" not in source or "self.swin_unet(x)" not in source:
        raise RuntimeError(f"{module_name}.SwinUnet.forward is not the published one (two encoder passes)")

    def forward(self, x):
        if x.size()[1] == 1:  # as the wrapper: grey images repeated to three channels
            x = x.repeat(1, 3, 1, 1)
        net = self.swin_unet  # SwinTransformerSys.forward is these three steps
        features, skips = net.forward_features(x)
        return net.up_x4(net.forward_up_features(features, skips)), skips[-1]

    wrapper.forward = forward


def run_reference(
    path: str | os.PathLike,
    utils_path: str | os.PathLike | None = None,
    image_size: int = 224,
    batch_size: int = 5,
    labeled_bs: int = 1,
    iterations: int = 5,
    warmup: int = 2,
    threads: int = 2,
    num_classes: int = 2,
    ict_start: int = 0,
    seed: int = 0,
    one_encoder_pass: bool = False,
) -> dict:
    """One reference run in this process: ``warmup + iterations + 1`` iterations of the authors'
    ``train``; the intervals between EMA updates after the warm-up are the iteration times.
    ``one_encoder_pass``: its Swin-Unet wrapper without the unused second encoder pass (module doc)."""
    import numpy as np
    import torch

    script, utils_dir = resolve_paths(path, utils_path)
    torch.set_num_threads(int(threads))
    total = int(warmup) + int(iterations) + 1
    n_labeled = total + 2  # no epoch ends (no worker restart) and no validation within the run
    with tempfile.TemporaryDirectory(prefix="reference_bench_") as tmp:
        data = Path(tmp) / "data"
        _write_random_dataset(data, int(image_size), n_labeled, max(8, 2 * batch_size), seed)
        argv = [
            "--root_path",
            str(data),
            "--exp",
            "bench",
            "--model",
            "unext_swin",
            "--max_iterations",
            str(total),
            "--batch_size",
            str(batch_size),
            "--labeled_bs",
            str(labeled_bs),
            "--labeled_num",
            str(n_labeled),
            "--num_classes",
            str(num_classes),
            "--cfg",
            str(script.parents[0] / "configs" / CONFIG.name),
            "--seed",
            str(seed),
        ]
        before = set(sys.modules)
        module = _load_script(script, utils_dir, argv, ict_start)
        if one_encoder_pass:
            _one_encoder_pass()
        module.args.patch_size = [int(image_size), int(image_size)]  # its `type=list` option cannot be given
        module.config.defrost()
        module.config.MODEL.PRETRAIN_CKPT = None  # not shipped; timing does not depend on the weights
        module.config.DATA.IMG_SIZE = int(image_size)
        module.config.freeze()
        stamps: list[float] = []
        ema_update = module.update_ema_variables

        def timed_ema_update(*args, **kwargs):
            ema_update(*args, **kwargs)
            stamps.append(time.perf_counter())

        module.update_ema_variables = timed_ema_update
        random.seed(seed)
        np.random.seed(seed)
        torch.manual_seed(seed)
        snapshot = Path(tmp) / "snapshot"
        snapshot.mkdir()
        t = time.perf_counter()
        try:
            module.train(module.args, str(snapshot))
        finally:
            _unload(script, before)
        run_s = time.perf_counter() - t
    intervals = [b - a for a, b in zip(stamps, stamps[1:])]
    it = intervals[int(warmup) :]
    return {
        "benchmark": "reference",
        "iteration_s": median(it),
        "iteration_s_all": it,
        "warmup_s_all": intervals[: int(warmup)],
        "peak_rss_mb": _peak_rss_mb(),
        "run_s": run_s,
        "config": {
            "script": str(script),
            "utils": str(utils_dir),
            "image_size": image_size,
            "batch_size": batch_size,
            "labeled_bs": labeled_bs,
            "iterations": iterations,
            "warmup": warmup,
            "threads": threads,
            "num_classes": num_classes,
            "ict_start": ict_start,
            "one_encoder_pass": bool(one_encoder_pass),
            "torch": torch.__version__,
            "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
        },
    }


def _unload(script: Path, before: set[str]) -> None:
    """Forget the modules the reference brought in (its ``networks``, ``dataloaders``, ``config``,
    ``utils``) and its folder on ``sys.path``, so that the calling process is as it was."""
    for name in set(sys.modules) - before:
        module = sys.modules.get(name)
        where = str(getattr(module, "__file__", "") or "")
        if name == "utils" or name.startswith("utils.") or where.startswith(str(script.parents[1])):
            del sys.modules[name]
    while str(script.parent) in sys.path:
        sys.path.remove(str(script.parent))


# ------------------------------------------------------------------------------ comparison
_FLAGS = {"bf16": ("amp", "bf16"), "cl": ("channels_last", True), "compile": ("compile", True)}


def parse_variant(spec: str) -> dict[str, Any]:
    """``"paper"``, ``"ours+bf16"``, ``"ours+bf16+cl+compile"`` -> bench_train options."""
    method, *flags = [p.strip() for p in str(spec).split("+")]
    if not method or method not in _methods():
        raise OptionError(f"--variants: {spec!r} must start with a method ({', '.join(sorted(_methods()))})")
    options: dict[str, Any] = {"method": method, "amp": "none", "channels_last": False, "compile": False}
    for flag in flags:
        if flag not in _FLAGS:
            raise OptionError(f"--variants: unknown option {flag!r} in {spec!r} (known: {', '.join(_FLAGS)})")
        key, value = _FLAGS[flag]
        options[key] = value
    return options


def _methods() -> set[str]:
    """The methods a variant may name: those of ``bundle/configs/methods/`` (discovered by the
    comparison; ``paper`` among them)."""
    from custom.tools.compare import method_names

    return set(method_names())


def _command(head: list[str], **options: Any) -> list[str]:
    """``head`` with ``options`` as ``--name value`` (a bool as true/false): the command line of a child
    whose options are its function's parameters."""
    for name, value in options.items():
        head = [*head, "--" + name.replace("_", "-"), str(value).lower() if isinstance(value, bool) else str(value)]
    return head


def _child(cmd: list[str], timeout: float) -> dict:
    env = {**os.environ, "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY", "PASSIVE")}
    proc = subprocess.run(cmd, cwd=str(REPO), capture_output=True, text=True, timeout=timeout, env=env, check=False)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"{' '.join(cmd[:6])} ... failed (exit {proc.returncode}): {proc.stderr[-3000:]}")
    return json.loads(lines[-1])


def compare(
    path: str | os.PathLike | None = None,
    utils_path: str | os.PathLike | None = None,
    python: str | None = None,
    variants: Sequence[str] = ("paper",),
    rounds: int = 4,
    iterations: int = 5,
    warmup: int = 2,
    image_size: int = 224,
    batch_size: int = 5,
    labeled_bs: int = 1,
    threads: int = 2,
    num_classes: int = 2,
    timeout: float = 3600,
    one_encoder_pass: bool = True,
    quiet: bool = False,
) -> dict:
    """Our training iteration beside the authors' public implementation, fetched outside the
    repository (``path``; ``utils_path`` their companion checkout with ``src/code/utils``;
    ``python`` the interpreter with the reference's dependencies), in ``rounds`` interleaved rounds
    of ``iterations`` after ``warmup`` (module doc); ``variants "[paper, ours+bf16]"``: our methods
    with ``+bf16``, ``+cl``, ``+compile``; ``one_encoder_pass false``: the reference as published,
    with the second encoder pass its Swin-Unet wrapper makes and no loss reads. Returns the
    throughput and peak-memory ratios per variant; a line per round on stderr unless ``quiet``."""
    one_encoder_pass, quiet = parse_bool(one_encoder_pass, "one-encoder-pass"), parse_bool(quiet, "quiet")
    if not path:
        raise OptionError("--path: give the folder of the fetched reference implementation")
    if isinstance(variants, str):
        variants = [v.strip() for v in variants.strip("[]()").split(",") if v.strip()]
    script, utils_dir = resolve_paths(path, utils_path)
    specs = {str(v): parse_variant(str(v)) for v in variants}
    py = python or sys.executable
    shared = dict(image_size=image_size, batch_size=batch_size, labeled_bs=labeled_bs)
    shared.update(iterations=iterations, warmup=warmup, threads=threads)
    reference = dict(path=script.parents[2], utils_path=utils_dir, num_classes=num_classes)
    commands: dict[str, list[str]] = {
        "reference": _command([py, "-m", "custom.tools.bench.reference", "run"], **reference, **shared,
                              one_encoder_pass=one_encoder_pass),
    }
    for name, o in specs.items():
        commands[name] = _command([sys.executable, "-m", "custom.tools.bench", "train", "--json"], **shared, **o,
                                  floor=False)
    names = list(commands)
    runs: dict[str, list[dict]] = {n: [] for n in names}
    for r in range(int(rounds)):
        order = names[r % len(names) :] + names[: r % len(names)]
        for n in order:
            t = time.perf_counter()
            runs[n].append(_child(commands[n], timeout))
            if not quiet:
                res = runs[n][-1]
                print(
                    f"round {r + 1}/{rounds} {n}: {res['iteration_s']:.3f} s/it, peak RSS {res['peak_rss_mb']:.0f} MB "
                    f"({time.perf_counter() - t:.0f} s)",
                    file=sys.stderr,
                    flush=True,
                )
    out: dict[str, Any] = {"benchmark": "reference_comparison", "sides": {}, "ratios": {}, "commands": commands}
    for n in names:
        pooled = [x for res in runs[n] for x in res["iteration_s_all"]]
        out["sides"][n] = {
            "iteration_s": median(pooled),
            "iterations_pooled": len(pooled),
            "round_medians_s": [res["iteration_s"] for res in runs[n]],
            "peak_rss_mb": median([res["peak_rss_mb"] for res in runs[n]]),
            "peak_rss_mb_all": [res["peak_rss_mb"] for res in runs[n]],
            "config": runs[n][0]["config"],
        }
    ref = out["sides"]["reference"]
    for n in specs:
        side = out["sides"][n]
        per_round = [a / b for a, b in zip(ref["round_medians_s"], side["round_medians_s"])]
        out["ratios"][n] = {
            "throughput_vs_reference": ref["iteration_s"] / side["iteration_s"],
            "throughput_vs_reference_per_round": per_round,
            "peak_memory_vs_reference": side["peak_rss_mb"] / ref["peak_rss_mb"],
            "meets_throughput_1_5x": ref["iteration_s"] / side["iteration_s"] >= 1.5,
            "meets_memory_0_75x": side["peak_rss_mb"] / ref["peak_rss_mb"] <= 0.75,
        }
    out["config"] = {
        "rounds": rounds,
        "iterations": iterations,
        "warmup": warmup,
        "image_size": image_size,
        "batch_size": batch_size,
        "labeled_bs": labeled_bs,
        "threads": threads,
        "num_classes": num_classes,
        "variants": {n: specs[n] for n in specs},
        "reference_python": py,
        "reference_one_encoder_pass": bool(one_encoder_pass),
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
    }
    return out


def print_comparison(r: dict) -> None:
    c = r["config"]
    print(
        f"reference comparison: {c['image_size']} px, batch {c['batch_size']} ({c['labeled_bs']} labelled), "
        f"{c['threads']} threads, {c['rounds']} interleaved rounds x {c['iterations']} iterations after {c['warmup']}"
        + ("; the reference with one encoder pass" if c.get("reference_one_encoder_pass") else "")
    )
    for n, s in r["sides"].items():
        print(
            f"  {n:22s} {s['iteration_s']:.3f} s/it (pooled {s['iterations_pooled']}; rounds "
            + ", ".join(f"{x:.2f}" for x in s["round_medians_s"])
            + f"), peak RSS {s['peak_rss_mb']:.0f} MB"
        )
    for n, q in r["ratios"].items():
        print(
            f"  {n:22s} throughput x{q['throughput_vs_reference']:.2f} of the reference (rounds "
            + ", ".join(f"{x:.2f}" for x in q["throughput_vs_reference_per_round"])
            + f"), peak memory x{q['peak_memory_vs_reference']:.2f}"
        )


def _run_parser() -> argparse.ArgumentParser:
    """``run``'s options: :func:`run_reference`'s parameters, their names and defaults (one source of
    truth). argparse rather than fire: the reference's interpreter (``--python``) need have torch and
    none of this project's other dependencies."""
    parser = argparse.ArgumentParser(prog="custom.tools.bench.reference")
    run = parser.add_subparsers(dest="command", required=True).add_parser("run")
    for p in inspect.signature(run_reference).parameters.values():
        flag = "--" + p.name.replace("_", "-")
        if p.default is p.empty:
            run.add_argument(flag, required=True)
        elif isinstance(p.default, bool):
            run.add_argument(flag, type=lambda v, flag=flag: parse_bool(v, flag), default=p.default)
        else:
            run.add_argument(flag, type=int if isinstance(p.default, int) else str, default=p.default)
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m custom.tools.bench.reference run --path DIR ...``: one reference run, one JSON line
    (the child of :func:`compare`)."""
    from custom.utils.runtime import setup

    setup()
    options = vars(_run_parser().parse_args(argv))
    del options["command"]
    try:
        r = run_reference(**options)
    except OptionError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
    real_stdout = sys.stdout
    real_stdout.write(json.dumps(r) + "\n")
    real_stdout.flush()


if __name__ == "__main__":
    main()
