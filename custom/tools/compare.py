"""Compare the semi-supervised methods on one prepared dataset: train each, evaluate each on every test list.

Command line::

    python -m custom.tools.compare --dataset-dir DIR --methods ours,labeled_only,... --seeds 0,1 \\
        [--override FILE[,FILE...]] [--out DIR] [--max-iterations N] [--split LIST[,LIST...]] [--threads N] \\
        [--launcher subprocess|inprocess]

Every method (``bundle/configs/methods/<method>.yaml``) is trained with every seed on the same
``datalist.json`` (the same splits), through the bundle's one trainer: the config list of a run
is ``common.yaml, train.yaml, methods/<method>.yaml, *overrides`` plus the run's own values
(``dataset_dir``, ``seed``, ``ckpt_dir``/``output_dir`` under ``OUT/runs/<method>/seed<k>``,
``num_classes`` from the datalist, ``max_iterations``). Each trained UNeXt (the ``model.pt``
the validation keeps) is evaluated on EVERY test list of the datalist (``test`` and each
``test_<name>``: another site's frames, synthetic acquisition changes; ``custom.data.held_out_lists``),
or on the lists ``--split`` names, at the ORIGINAL image size: argmax at the training size,
resized back with nearest neighbour, scored by :func:`custom.evaluation.evaluate.evaluate_network`
with the run's own deterministic transforms (in mm when the entry has a ``spacing``) and
summarised by :func:`custom.evaluation.metrics.summarize`, per list: mean Dice per class, HD95,
ASD and how many frames get an empty prediction of a class their reference contains.

Outputs in ``OUT``: ``runs.csv`` (one row per method x seed x list), ``per_image.csv``,
``comparison.md`` (a robustness table of every list, then per list the mean ± std over seeds
per method, the per-seed values and the share of the labelled-only-to-fully-supervised gap, the
scale and the command), ``comparison.png`` (bars with error bars, first list) and ``scale.json``.
A run writes ``done.json`` (its metrics and per-image rows per list) last and atomically; a rerun
skips every run whose ``done.json`` carries the same config hash (config file contents, run
values, and the datalist's training, unlabelled and validation lists: adding a test list retrains
nothing) and has every requested list evaluated on the same entries, so an interrupted comparison
resumes where it stopped and a new test list is only evaluated. A run whose training finished but
whose evaluation did not is evaluated again without retraining (``trained.json``).
"""

from __future__ import annotations

import hashlib
import inspect
import json
import logging
import os
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from custom.data.datalist import label_names
from custom.tools.comparison_report import (
    aggregate,
    comparison_markdown,
    comparison_plot,
    gap_shares,
    list_view,
    run_row,
    scale_line,
    write_csv,
)
from custom.utils.options import check_option
from custom.utils.paths import ABLATED_METHOD, DEFAULT_METHOD, bundle_root, configs_dir, source_root

__all__ = [
    "method_names",
    "RunSpec",
    "load_test_entries",
    "build_runs",
    "train_run",
    "evaluate_run",
    "run_comparison",
    "method_file",
    "gap_shares",
    "main",
]

logger = logging.getLogger(__name__)

REPO = source_root()  # the repository (the folder holding custom/)
BASE_CONFIGS = ("common.yaml", "train.yaml")  # in configs_dir(), the one bundle-root finder (custom.utils.paths)


def method_names(folder: Path | None = None) -> tuple[str, ...]:
    """The methods, discovered: every ``<name>.yaml`` of ``bundle/configs/methods/`` (a method is its
    file), the default (``custom.utils.paths.DEFAULT_METHOD``) first, then by name."""
    names = sorted(p.stem for p in (folder or configs_dir() / "methods").glob("*.yaml"))
    return tuple(sorted(names, key=lambda n: n != DEFAULT_METHOD))


DONE, TRAINED = "done.json", "trained.json"


# ------------------------------------------------------------------------------ helpers


def _as_list(value: Any) -> list[str]:
    """``"a,b"``, ``("a", "b")``, ``["a,b"]`` or a scalar -> ``["a", "b"]`` (fire hands any of them)."""
    if value is None:
        return []
    if isinstance(value, str):
        return [v.strip() for v in value.split(",") if v.strip()]
    if isinstance(value, Iterable):
        return [item for v in value for item in _as_list(v)]
    return [str(value)]


def _write_json_atomic(path: Path, obj: Any) -> None:
    """JSON through the project's one atomic writer (:mod:`custom.utils.atomic`)."""
    from custom.utils.atomic import atomic_write_json

    atomic_write_json(path, obj, indent=1, default=float)


def _read_json(path: Path) -> Any | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


# the datalist's parts that a training reads (its hash): test lists may be added without retraining
TRAINING_KEYS = ("training", "unlabeled", "validation", "num_classes", "labels")


def training_digest(datalist: Mapping[str, Any]) -> str:
    """A digest of what training reads from a datalist (:data:`TRAINING_KEYS`), not its test lists."""
    return _sha(json.dumps({k: datalist.get(k) for k in TRAINING_KEYS}, sort_keys=True))


def _datalist_path(dataset_dir: str | Path) -> Path:
    path = Path(dataset_dir)
    return path / "datalist.json" if path.is_dir() else path


def load_test_entries(dataset_dir: str | Path, split: str = "test") -> list[dict]:
    """The ``split`` entries of ``datalist.json`` with absolute paths; every entry needs a ``label``."""
    from custom.data import load_datalist

    datalist = load_datalist(_datalist_path(dataset_dir))
    entries = datalist.get(split) or []
    if not entries:
        raise ValueError(
            f"{_datalist_path(dataset_dir)} has no '{split}' entries to evaluate on "
            f"(it has {[k for k, v in datalist.items() if isinstance(v, list)]}); use --split"
        )
    missing = [e["image"] for e in entries if not e.get("label")]
    if missing:
        raise ValueError(f"{len(missing)} '{split}' entries have no label, e.g. {missing[0]}")
    return entries


def evaluation_lists(dataset_dir: str | Path, split: Any = None) -> dict[str, list[dict]]:
    """``{list name: entries}`` to evaluate on: every test list of the datalist (``test``, then each
    ``test_<name>``) when ``split`` is None or ``all``, else the lists it names (comma-separated)."""
    from custom.data import load_datalist
    from custom.data.datalist import evaluation_lists as names_of

    names = _as_list(split)
    if not names or names == ["all"]:
        names = names_of(load_datalist(_datalist_path(dataset_dir)))
        if not names:
            raise ValueError(f"{_datalist_path(dataset_dir)} has no test list ('test' or 'test_<name>'); use --split")
    return {name: load_test_entries(dataset_dir, name) for name in names}


def _entries_digest(entries: Sequence[Mapping[str, Any]]) -> str:
    return _sha(json.dumps(list(entries), sort_keys=True, default=str))


# ---------------------------------------------------------------------------- run specs


@dataclass
class RunSpec:
    """One training run: a method, a seed, its config files and its own values."""

    method: str
    seed: int
    config_files: list[str]
    overrides: dict[str, Any]
    run_dir: Path
    hash_inputs: dict[str, Any] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return f"{self.method}/seed{self.seed}"

    @property
    def model_path(self) -> Path:
        return self.run_dir / "models" / "model.pt"

    @property
    def config_hash(self) -> str:
        return _sha(json.dumps(self.hash_inputs, sort_keys=True, default=str))


def _capped(raw: Any, bound: str) -> Any:
    """``min(raw, bound)`` as a config expression, ``raw`` being a number or a ``$`` expression
    of the merged config and ``bound`` a Python expression (it may use ``@`` references)."""
    if isinstance(raw, bool) or raw is None:
        return raw
    if isinstance(raw, (int, float)):
        return f"$min({int(raw)}, {bound})"
    if isinstance(raw, str) and raw.startswith("$"):
        return f"$min({raw[1:]}, {bound})"
    return raw


def _merged_config(config_files: Sequence[str], overrides: Mapping[str, Any] | None = None):
    """A ``ConfigParser`` of the merged files and overrides (nothing instantiated)."""
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config([str(f) for f in config_files])
    if overrides:
        parser.update(dict(overrides))
    return parser


def method_file(method: str) -> tuple[str, list[Path]]:
    """``(name, files)`` of a method: a name in ``bundle/configs/methods`` (``bcp``), or the path of
    a YAML file named by its stem: a method file of its own (it sets ``method``), or any other
    override (an ablation), which varies the default and is merged over ``methods/ours.yaml``
    (``custom.utils.paths.ABLATED_METHOD``)."""
    if method.endswith((".yaml", ".yml", ".json")):
        path = Path(method).expanduser().resolve()
        if not path.is_file():
            raise FileNotFoundError(f"method file not found: {method}")
        from monai.bundle import ConfigParser

        own = "method" in (ConfigParser.load_config_file(str(path)) or {})
        return path.stem, [path] if own else [configs_dir() / "methods" / f"{ABLATED_METHOD}.yaml", path]
    path = configs_dir() / "methods" / f"{method}.yaml"
    if not path.is_file():
        raise ValueError(
            f"unknown method {method!r}; known: {sorted(method_names())}, "
            "or give the path of a YAML override"
        )
    return method, [path]


def _check_override_file(path: str) -> None:
    """An ``--override`` file: a YAML/JSON mapping of config keys to values (one line otherwise)."""
    import yaml

    if not Path(path).is_file():
        raise FileNotFoundError(f"--override {path}: file not found")
    try:
        content = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise ValueError(f"--override {path}: not readable YAML ({' '.join(str(e).split())[:200]})") from e
    if not isinstance(content, dict):
        raise ValueError(
            f"--override {path}: holds {type(content).__name__ if content is not None else 'nothing'}, "
            "where a mapping of config keys to values is expected (key: value lines)"
        )


def build_runs(
    dataset_dir: str | Path,
    methods: Sequence[str],
    seeds: Sequence[int],
    overrides: Sequence[str] = (),
    out: str | Path = "runs/comparison",
    max_iterations: int | None = None,
) -> list[RunSpec]:
    """One :class:`RunSpec` per method x seed (methods outer), with config hashes."""
    dataset_dir = Path(dataset_dir).resolve()
    datalist_file = _datalist_path(dataset_dir)
    if not datalist_file.is_file():
        raise FileNotFoundError(
            f"no datalist.json in {dataset_dir}: prepare the data with `python -m custom.data prepare`"
        )
    datalist = json.loads(datalist_file.read_text(encoding="utf-8"))
    resolved = [method_file(m) for m in methods]
    names = [name for name, _ in resolved]
    if len(set(names)) != len(names):
        raise ValueError(f"two methods share a name: {names}")
    extra = [str(Path(o).resolve()) for o in overrides]
    for o in extra:
        _check_override_file(o)
    runs = []
    for method, paths in resolved:
        files = [str(configs_dir() / name) for name in BASE_CONFIGS] + [str(p) for p in paths] + extra
        for seed in seeds:
            run_dir = Path(out).resolve() / "runs" / method / f"seed{seed}"
            values: dict[str, Any] = {
                "bundle_root": bundle_root(),
                "dataset_dir": str(dataset_dir),
                "seed": int(seed),
                "ckpt_dir": str(run_dir / "models"),
                "output_dir": str(run_dir / "eval"),
            }
            if "num_classes" in datalist:
                values["num_classes"] = int(datalist["num_classes"])
            if max_iterations is not None:  # a short run: epochs and validation interval fit inside it
                merged = _merged_config(files)
                values["max_iterations"] = int(max_iterations)
                values["train#epoch_length"] = _capped(merged.get("train#epoch_length"), str(int(max_iterations)))
                values["val_interval"] = _capped(
                    merged.get("val_interval", 1),
                    f"custom.training.settings.iterations_to_epochs({int(max_iterations)}, @train#epoch_length)",
                )
            hashed = {k: v for k, v in values.items() if k not in ("ckpt_dir", "output_dir", "bundle_root")}
            hash_inputs = {
                "method": method,
                "values": hashed,
                "datalist": training_digest(datalist),
                "configs": {
                    Path(f).name if Path(f).parent in (configs_dir(), configs_dir() / "methods") else f:
                    _sha(Path(f).read_text())
                    for f in files
                },
            }
            runs.append(RunSpec(method, int(seed), files, values, run_dir, hash_inputs))
    return runs


# ------------------------------------------------------------------------------ training


def train_run(spec: RunSpec, launcher: str = "subprocess", threads: int | None = None) -> None:
    """Train one run with ``monai.bundle run training``; its log goes to ``run_dir/train.log``.

    ``launcher="subprocess"`` (default) runs ``python -m monai.bundle run training --args_file
    run_dir/args.json`` (a crash or leak stays in its process); ``"inprocess"`` calls
    ``monai.bundle.run`` here. Raises ``RuntimeError`` when training fails or writes no model.
    """
    spec.run_dir.mkdir(parents=True, exist_ok=True)
    args = {"config_file": spec.config_files, "meta_file": str(configs_dir() / "metadata.json"), **spec.overrides}
    args_file = spec.run_dir / "args.json"
    _write_json_atomic(args_file, args)
    log_path = spec.run_dir / "train.log"
    if launcher == "inprocess":
        from monai.bundle import run

        run(run_id="training", args_file=str(args_file))
    elif launcher == "subprocess":
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
        if threads:
            env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(int(threads))
        cmd = [sys.executable, "-m", "monai.bundle", "run", "training", "--args_file", str(args_file)]
        with open(log_path, "w", encoding="utf-8") as log:
            log.write("$ " + shlex.join(cmd) + "\n")
            log.flush()
            proc = subprocess.run(cmd, cwd=str(REPO), env=env, stdout=log, stderr=subprocess.STDOUT, check=False)
        if proc.returncode != 0:
            tail = "".join(log_path.read_text(encoding="utf-8", errors="replace").splitlines(True)[-15:])
            raise RuntimeError(f"training {spec.name} failed (exit {proc.returncode}); {log_path} ends with:\n{tail}")
    else:
        raise ValueError(f"launcher must be 'subprocess' or 'inprocess', got {launcher!r}")
    if not spec.model_path.is_file():
        raise RuntimeError(f"training {spec.name} wrote no {spec.model_path} (no validation ran?)")


# ---------------------------------------------------------------------------- evaluation


def head_class_of(datalist: Mapping[str, Any], entries: Sequence[Mapping[str, Any]]) -> int | None:
    """The head label when the test entries carry a reference head circumference (HC18's ``hc_mm``)."""
    labels = datalist.get("labels")
    if not isinstance(labels, Mapping) or not any("hc_mm" in e for e in entries):
        return None
    heads = [int(v) for k, v in labels.items() if "head" in str(k).lower()]
    return heads[0] if len(heads) == 1 else None


def evaluate_run(
    spec: RunSpec, entries: Sequence[Mapping[str, Any]], device: str = "cpu", head_class: int | None = None
) -> list[dict[str, Any]]:
    """Build the run's UNeXt from its merged config, load ``model.pt`` and evaluate it on ``entries``
    at the original size with :func:`custom.evaluation.evaluate.evaluate_network` and the run's own
    deterministic transforms (the head circumference error for ``head_class``)."""
    from monai.transforms import Compose

    from custom.evaluation.evaluate import evaluate_network
    from custom.training.checkpoint import load_network_weights

    parser = _merged_config(spec.config_files, spec.overrides)
    network = load_network_weights(parser.get_parsed_content("network_def"), str(spec.model_path))
    num_classes = int(parser.get_parsed_content("num_classes"))
    preprocessing = Compose(parser.get_parsed_content("deterministic_transforms"))
    rows, _ = evaluate_network(network, entries, preprocessing, num_classes, head_class=head_class, device=device)
    return rows


# ------------------------------------------------------------------------------- the scale


def describe_scale(spec: RunSpec, datalist: Mapping[str, Any]) -> dict[str, Any]:
    """What a run's config amounts to: image size, iterations, batch, widths, split counts."""
    from custom.networks import UNeXt

    parser = _merged_config(spec.config_files, spec.overrides)

    def value(key: str, default: Any = None) -> Any:
        try:
            return parser.get_parsed_content(key)
        except (KeyError, ValueError):
            return default

    channels = (parser.get("network_def") or {}).get("channels") or inspect.signature(UNeXt).parameters[
        "channels"
    ].default
    return {
        "image_size": list(value("image_size")),
        "max_iterations": int(value("max_iterations")),
        "batch_size": int(value("batch_size")),
        "labeled_bs": int(value("labeled_bs")),
        "learning_rate": float(value("learning_rate")),
        "unext_channels": list(channels),
        "swin_embed_dim": value("transformer_def#embed_dim"),
        "swin_depths": value("transformer_def#depths"),
        "swin_num_heads": value("transformer_def#num_heads"),
        "swin_window_size": value("transformer_def#window_size"),
        "counts": {split: len(datalist.get(split) or []) for split in ("training", "unlabeled", "validation", "test")},
    }


# ------------------------------------------------------------------------------ the driver


def _command_line(
    dataset_dir: str,
    methods: Sequence[str],
    seeds: Sequence[int],
    overrides: Sequence[str],
    out: str,
    max_iterations: int | None,
    split: Any,
) -> str:
    parts = [
        "python",
        "-m",
        "custom.tools.compare",
        "--dataset-dir",
        str(dataset_dir),
        "--methods",
        ",".join(methods),
        "--seeds",
        ",".join(str(s) for s in seeds),
    ]
    if overrides:
        parts += ["--override", ",".join(overrides)]
    parts += ["--out", str(out)]
    if max_iterations is not None:
        parts += ["--max-iterations", str(max_iterations)]
    if _as_list(split) and _as_list(split) != ["all"]:
        parts += ["--split", ",".join(_as_list(split))]
    return shlex.join(parts)


def _is_complete(record: Mapping[str, Any] | None, spec: RunSpec, digests: Mapping[str, str]) -> bool:
    """Whether a ``done.json`` record is of this config and holds every list, on the same entries."""
    if not record or record.get("config_hash") != spec.config_hash or not isinstance(record.get("lists"), dict):
        return False
    return all(record["lists"].get(n, {}).get("entries") == d for n, d in digests.items())


def run_comparison(
    dataset_dir: str,
    methods: Any = None,
    seeds: Any = (0,),
    override: Any = (),
    out: str = "runs/comparison",
    max_iterations: int | None = None,
    split: Any = None,
    launcher: str = "subprocess",
    threads: int | None = None,
    device: str | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Train every method x seed and evaluate it on every test list (skipping finished runs and
    lists already evaluated), then write the outputs.

    ``methods``: default every method of ``bundle/configs/methods/`` (:func:`method_names`).
    ``split``: None or ``all`` for every test list of the datalist, else the lists to evaluate.
    Returns ``{"tables": {list: per-method aggregates}, "table": the first list's, "runs": [done
    records], "trained": [run names trained or evaluated by this call], "failed": [...], "out":
    OUT}``. Raises ``RuntimeError`` after writing the outputs of the finished runs when some run
    failed.
    """
    from tqdm.auto import tqdm

    from custom.utils.cli import parse_bool

    progress = parse_bool(progress, "progress")
    methods_l = list(method_names()) if methods is None else _as_list(methods)
    names_l = [method_file(m)[0] for m in methods_l]
    seeds_l = [check_option("seed", s, flag="--seeds") for s in _as_list(seeds)]
    if max_iterations is not None:
        max_iterations = check_option("max_iterations", max_iterations, flag="--max-iterations")
    overrides_l = _as_list(override)
    if not methods_l or not seeds_l:
        raise ValueError("give at least one method and one seed")
    if threads:
        import torch

        torch.set_num_threads(int(threads))
    if device is None:
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"
    from custom.data import load_datalist

    out_dir = Path(out).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    datalist = load_datalist(_datalist_path(dataset_dir))
    lists = evaluation_lists(dataset_dir, split)
    digests = {name: _entries_digest(entries) for name, entries in lists.items()}
    specs = build_runs(dataset_dir, methods_l, seeds_l, overrides_l, out_dir, max_iterations)
    command = _command_line(dataset_dir, methods_l, seeds_l, overrides_l, out, max_iterations, split)

    done_records, trained, failed = [], [], []
    bar = tqdm(specs, desc="comparison", unit="run", disable=not progress)
    for spec in bar:
        bar.set_postfix_str(spec.name)
        record = _read_json(spec.run_dir / DONE)
        if _is_complete(record, spec, digests):
            done_records.append(record)
            continue
        previous = record if record and record.get("config_hash") == spec.config_hash else None
        try:
            record = _train_and_evaluate(spec, lists, digests, datalist, launcher, threads, device, previous)
        except Exception as error:  # one failed run does not stop the comparison
            logger.error("run %s failed: %s", spec.name, error)
            tqdm.write(f"run {spec.name} failed: {error}")
            failed.append(spec.name)
            continue
        trained.append(spec.name)
        done_records.append(record)
    bar.close()

    views = {name: [list_view(r, name) for r in done_records] for name in lists}
    tables = {name: aggregate(views[name], names_l) for name in lists}
    first = next(iter(lists))
    scale = done_records[0]["scale"] if done_records else describe_scale(specs[0], datalist)
    num_classes = int(datalist.get("num_classes", 2))
    if done_records:
        num_classes = len(views[first][0]["summary"]["classes"]) + 1
    class_names = label_names(datalist.get("labels"), num_classes)
    write_csv(out_dir / "runs.csv", [run_row(v) for r in done_records for v in (list_view(r, n) for n in lists)])
    write_csv(
        out_dir / "per_image.csv",
        [
            {"method": r["method"], "seed": r["seed"], "list": name, **row}
            for r in done_records
            for name in lists
            for row in r["lists"][name]["per_image"]
        ],
    )
    _write_json_atomic(
        out_dir / "scale.json",
        {
            "scale": scale,
            "scale_line": scale_line(scale),
            "command": command,
            "dataset_dir": str(Path(dataset_dir).resolve()),
            "lists": {name: len(entries) for name, entries in lists.items()},
            "seeds": seeds_l,
            "methods": methods_l,
        },
    )
    from custom.utils.atomic import atomic_write_text

    atomic_write_text(
        out_dir / "comparison.md",
        comparison_markdown(
            tables,
            scale,
            command,
            str(Path(dataset_dir).resolve()),
            seeds_l,
            class_names,
            {name: len(entries) for name, entries in lists.items()},
            failed,
        ),
    )
    if tables[first]:
        comparison_plot(tables[first], out_dir / "comparison.png", title=f"{first}: {scale_line(scale)}")
    if failed:
        raise RuntimeError(
            f"{len(failed)} run(s) failed: {failed}; the outputs in {out_dir} hold the others. "
            "Run the same command again to retry them."
        )
    return {
        "tables": tables,
        "table": tables[first],
        "runs": done_records,
        "trained": trained,
        "failed": failed,
        "out": str(out_dir),
    }


def _evaluate_list(
    spec: RunSpec, entries: Sequence[Mapping[str, Any]], datalist: Mapping[str, Any], device: str, num_classes: int
) -> dict[str, Any]:
    """One list's summary and per-image rows of a trained run."""
    from custom.evaluation.evaluate import head_circumference_summary
    from custom.evaluation.metrics import summarize

    start = time.perf_counter()
    rows = evaluate_run(spec, entries, device, head_class_of(datalist, entries))
    summary = summarize(rows, label_names(datalist.get("labels"), num_classes))
    hc = head_circumference_summary(rows)  # HC18: the challenge's score, |HC(prediction) - HC(reference)|
    if hc is not None:
        summary["head_circumference"] = hc
    return {"summary": summary, "per_image": rows, "eval_seconds": time.perf_counter() - start}


def _train_and_evaluate(
    spec: RunSpec,
    lists: Mapping[str, Sequence[Mapping[str, Any]]],
    digests: Mapping[str, str],
    datalist: Mapping[str, Any],
    launcher: str,
    threads: int | None,
    device: str,
    previous: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Train (unless ``trained.json`` matches), evaluate every list not already in ``previous`` (the
    run's ``done.json`` of the same config), write ``done.json`` last; return its record."""
    marker = _read_json(spec.run_dir / TRAINED)
    if not (marker and marker.get("config_hash") == spec.config_hash and spec.model_path.is_file()):
        if spec.run_dir.exists():
            shutil.rmtree(spec.run_dir)  # a stale or half-finished run: start clean
        previous = None
        start = time.perf_counter()
        train_run(spec, launcher=launcher, threads=threads)
        train_seconds = time.perf_counter() - start
        _write_json_atomic(spec.run_dir / TRAINED, {"config_hash": spec.config_hash, "train_seconds": train_seconds})
    else:
        train_seconds = marker.get("train_seconds")
    num_classes = int(_merged_config(spec.config_files, spec.overrides).get_parsed_content("num_classes"))
    evaluated = dict((previous or {}).get("lists") or {})
    for name, entries in lists.items():
        if evaluated.get(name, {}).get("entries") != digests[name]:
            evaluated[name] = {"entries": digests[name], **_evaluate_list(spec, entries, datalist, device, num_classes)}
    record = {
        "method": spec.method,
        "seed": spec.seed,
        "config_hash": spec.config_hash,
        "config_files": spec.config_files,
        "overrides": spec.overrides,
        "scale": describe_scale(spec, datalist),
        "train_seconds": train_seconds,
        "lists": evaluated,
    }
    _write_json_atomic(spec.run_dir / DONE, record)
    return record


def main() -> None:
    """``python -m custom.tools.compare``: :func:`run_comparison` as a command (fire)."""
    import fire

    from custom.utils.cli import command, exit_on_error, without_stray_arguments
    from custom.utils.runtime import setup

    setup()

    def report(result: dict[str, Any]) -> None:
        print((Path(result["out"]) / "comparison.md").read_text(encoding="utf-8"))

    # the options are run_comparison's parameters; bad input (a missing dataset, a bad option, a
    # malformed datalist) and failed runs are one line; '--seeds 1 2' is refused, not 2 handed on
    compare = exit_on_error((RuntimeError,), status=1)(
        exit_on_error((ValueError, OSError, KeyError))(without_stray_arguments(command(run_comparison, report)))
    )
    fire.Fire(compare)


if __name__ == "__main__":
    main()
