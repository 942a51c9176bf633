"""A simulated active-learning study: does choosing the next frames to annotate by a score save labels?

Command line::

    python -m custom.tools.active_learning --dataset-dir DIR --out OUT \\
        [--strategies random,entropy,divergence,divergence_spread] [--seeds 0,1] [--rounds K] \\
        [--seed-fraction 0.02] [--batch-fraction 0.02] [--method ours] [--override FILE[,FILE...]] \\
        [--max-iterations N] [--split test] [--val-limit N] [--test-limit N] [--threads N] [--progress true] \
        [--launcher subprocess|inprocess]

The pool is the prepared dataset's ``training`` + ``unlabeled`` frames; their masks are known (the
set must be prepared without ``--hide-unlabeled-masks``) but held by a :class:`SimulatedAnnotator`
that reveals a frame's mask only when a strategy picks it. Per seed, every strategy starts from the
same seed labels (``--seed-fraction`` of the pool, drawn as ``custom.data prepare`` draws labelled
frames: single frames spread evenly over the pool for PSFHS, whose groups are video blocks; whole
groups, i.e. subjects, otherwise) and the seed round is trained once. Then, for ``K`` rounds, the
previous round's networks score the unlabelled rest of the pool, the strategy picks the next
``--batch-fraction`` of the pool, the annotator reveals those masks, and the bundle is trained again
FROM SCRATCH on the labelled frames (the rest of the pool stays its unlabelled stream): every
strategy has the same number of labelled frames in every round.

Strategies (:data:`STRATEGIES`):

* ``random``: a uniform draw from the unlabelled pool;
* ``entropy``: the highest mean per-pixel entropy of the UNeXt;
* ``divergence``: the highest CNN-Transformer information divergence (KL + MIG), the MONAI Label
  app's next-sample score, :func:`custom.evaluation.disagreement.divergence_scores`;
* ``divergence_spread``: the same score, spread: the unlabelled frames are clustered (k-means, as
  many clusters as the batch) on the UNeXt's pooled bottleneck features and the most divergent
  frame of each cluster is picked, so that a batch is not a run of near-duplicate neighbouring
  frames.

Each round's training is the bundle's own, through :func:`custom.tools.compare.run_comparison` on a
datalist of that round (``OUT/<strategy>/seed<k>/round<r>/data/datalist.json``: ``training`` = the
revealed frames, ``unlabeled`` = the rest of the pool, images only; the dataset's validation and
test lists, optionally thinned to ``--val-limit`` / ``--test-limit`` evenly spaced frames), and is
evaluated on the test list(s) with compare's evaluation (the UNeXt at the original size).

Outputs in ``OUT`` (each written atomically, after every round): ``picks.json`` (the seed labels and,
per strategy, seed and round, the frame ids picked), ``results.csv`` (strategy, seed, round,
n_labelled, test mean Dice per list and class, training seconds), ``results.md`` (mean ± std over
seeds per strategy and round, and how many labels each strategy needs to reach random's final
Dice) and ``plot.png`` (test Dice against labelled frames, one line per strategy, the band the std
over seeds). The measured study and its answer: ``bundle/docs/active_learning.md``. An interrupted
study resumes: a finished round's training is skipped (compare's
``done.json``) and the picks already in ``picks.json`` are reused, never drawn again.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import shlex
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from custom.tools.active_learning_report import (
    groups_spanned,
    results_markdown,
    study_plot,
    summarise,
)
from custom.tools.comparison_report import write_csv

__all__ = [
    "STRATEGIES",
    "SimulatedAnnotator",
    "frame_id",
    "draw_seed_labels",
    "budget",
    "select",
    "kmeans",
    "round_datalist",
    "run_study",
    "main",
]

logger = logging.getLogger(__name__)

STRATEGIES: tuple[str, ...] = ("random", "entropy", "divergence", "divergence_spread")
PICKS, RESULTS_CSV, RESULTS_MD, PLOT = "picks.json", "results.csv", "results.md", "plot.png"


# ----------------------------------------------------------------------------- the annotator


def frame_id(entry: Mapping[str, Any]) -> str:
    """A pool frame's id: its ``name`` (``custom.data prepare`` writes one), else its image's stem."""
    name = entry.get("name")
    return str(name) if name else Path(str(entry["image"])).stem


class SimulatedAnnotator:
    """Holds the pool's masks; the learner sees images only, and a mask once a strategy asks for it.

    ``reveal(ids)`` returns the full entries (image and ``label``) of exactly those frames and
    records them; an id outside the pool, repeated, or already revealed is refused
    (``ValueError``): a frame is annotated once. ``hidden(ids)`` returns the image-only entries
    the learner may train on as unlabelled frames."""

    def __init__(self, pool: Sequence[Mapping[str, Any]]) -> None:
        self._truth: dict[str, dict[str, Any]] = {}
        for entry in pool:
            key = frame_id(entry)
            if key in self._truth:
                raise ValueError(f"two pool frames share the id {key!r}")
            if not entry.get("label"):
                raise ValueError(
                    f"pool frame {key!r} ({entry.get('image')}) has no mask: the simulation needs the pool's masks "
                    "(prepare the dataset without --hide-unlabeled-masks)"
                )
            self._truth[key] = dict(entry)
        self.revealed: list[str] = []

    @property
    def ids(self) -> list[str]:
        return list(self._truth)

    def reveal(self, ids: Iterable[str]) -> list[dict[str, Any]]:
        ids = [str(i) for i in ids]
        unknown = [i for i in ids if i not in self._truth]
        if unknown:
            raise ValueError(f"cannot reveal frames outside the pool: {unknown[:5]}")
        if len(set(ids)) != len(ids):
            raise ValueError("a frame asked for twice in one batch")
        again = sorted(set(ids) & set(self.revealed))
        if again:
            raise ValueError(f"frames already annotated: {again[:5]}")
        self.revealed.extend(ids)
        return [dict(self._truth[i]) for i in ids]

    def labelled(self) -> list[dict[str, Any]]:
        """The full entries of every frame revealed so far, in the order they were revealed."""
        return [dict(self._truth[i]) for i in self.revealed]

    def unlabelled_ids(self) -> list[str]:
        """The pool frames not revealed yet, in pool order."""
        seen = set(self.revealed)
        return [i for i in self._truth if i not in seen]

    def hidden(self, ids: Iterable[str]) -> list[dict[str, Any]]:
        """Image-only entries (no ``label``) of ``ids``."""
        return [{k: v for k, v in self._truth[str(i)].items() if k != "label"} for i in ids]


# ---------------------------------------------------------------------------- the budget


def budget(pool_size: int, seed_fraction: float, batch_fraction: float, rounds: int) -> list[int]:
    """Labelled frames after round 0 (the seed labels), 1, ..., ``rounds``: the seed set is
    ``round(seed_fraction * pool)``, each round adds ``round(batch_fraction * pool)`` (halves up,
    at least 1 frame each); the same for every strategy."""
    from custom.data.splits import round_half_up

    for option, value in (("--seed-fraction", seed_fraction), ("--batch-fraction", batch_fraction)):
        if not 0.0 < float(value) < 1.0:
            raise ValueError(f"{option} {value}: must be within 0..1 (a share of the pool)")
    if int(rounds) < 1:
        raise ValueError(f"--rounds {rounds}: must be a positive whole number")
    seed_n = max(1, round_half_up(float(seed_fraction) * pool_size))
    batch_n = max(1, round_half_up(float(batch_fraction) * pool_size))
    counts = [seed_n + r * batch_n for r in range(int(rounds) + 1)]
    if counts[-1] >= pool_size:
        raise ValueError(
            f"--seed-fraction {seed_fraction} + --rounds {rounds} x --batch-fraction {batch_fraction} label "
            f"{counts[-1]} of the {pool_size} pool frames: leave some unlabelled"
        )
    return counts


def draw_seed_labels(pool: Sequence[Mapping[str, Any]], n: int, seed: int, draw: str) -> list[str]:
    """``n`` frame ids drawn as ``custom.data prepare`` draws labelled frames: ``frames`` spreads
    single frames evenly over the pool sorted by id (:func:`custom.data.splits.spread_positions`);
    ``groups`` takes whole groups in a seeded order (:func:`custom.data.splits.take_groups`)."""
    from custom.data.splits import LABELED_DRAWS, spread_positions, take_groups

    if draw not in LABELED_DRAWS:
        raise ValueError(f"labelled draw {draw!r}: must be one of {LABELED_DRAWS}")
    ids = sorted(frame_id(e) for e in pool)
    if draw == "frames":
        return [ids[i] for i in spread_positions(len(ids), n, seed)]
    groups: dict[str, list[str]] = {}
    for entry in sorted(pool, key=frame_id):
        groups.setdefault(str(entry.get("group", frame_id(entry))), []).append(frame_id(entry))
    order = [str(g) for g in np.random.default_rng(seed).permutation(sorted(groups))]
    chosen = take_groups(order, {g: len(v) for g, v in groups.items()}, n)
    picked = [i for g in chosen for i in groups[g]]
    return picked[:n]  # a last group that overshoots gives only what the budget allows


# -------------------------------------------------------------------------- the strategies


def kmeans(features: np.ndarray, k: int, seed: int, iterations: int = 50) -> np.ndarray:
    """Cluster labels (``0..k-1``) of the rows of ``features`` by Lloyd's k-means with k-means++
    seeding, deterministic for ``seed``. Hand-written: neither MONAI nor torch has k-means and
    scikit-learn is not a dependency of the bundle; a few dozen rows of numpy suffice here."""
    x = np.asarray(features, dtype=np.float64)
    n = len(x)
    k = max(1, min(int(k), n))
    rng = np.random.default_rng(seed)
    centres = [x[rng.integers(n)]]
    for _ in range(1, k):  # k-means++: the next centre far from the chosen ones
        d2 = np.min(((x[:, None, :] - np.asarray(centres)[None]) ** 2).sum(-1), axis=1)
        total = d2.sum()
        centres.append(x[rng.choice(n, p=d2 / total)] if total > 0 else x[rng.integers(n)])
    c = np.asarray(centres)
    labels = np.full(n, -1)
    for _ in range(iterations):
        new = ((x[:, None, :] - c[None]) ** 2).sum(-1).argmin(axis=1)
        if np.array_equal(new, labels):
            break
        labels = new
        for j in range(k):
            if np.any(labels == j):
                c[j] = x[labels == j].mean(axis=0)
    return labels


def select(
    strategy: str,
    candidates: Sequence[str],
    n: int,
    rng: np.random.Generator,
    scores: Mapping[str, float] | None = None,
    features: Mapping[str, np.ndarray] | None = None,
    seed: int = 0,
) -> list[str]:
    """``n`` distinct ids of ``candidates`` by ``strategy``: ``random`` draws them with ``rng``;
    ``entropy`` and ``divergence`` take the highest ``scores`` (ties by id); ``divergence_spread``
    clusters ``features`` into ``n`` groups (:func:`kmeans`, seeded with ``seed``) and takes the
    highest score of each, then fills any shortfall by score."""
    candidates = sorted(set(map(str, candidates)))
    n = int(n)
    if not 0 < n <= len(candidates):
        raise ValueError(f"cannot pick {n} of {len(candidates)} unlabelled frames")
    if strategy == "random":
        return [candidates[i] for i in sorted(rng.choice(len(candidates), size=n, replace=False))]
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown strategy {strategy!r}; known: {', '.join(STRATEGIES)}")
    if scores is None:
        raise ValueError(f"strategy {strategy} needs scores")
    ranked = sorted(candidates, key=lambda i: (-float(scores[i]), i))
    if strategy != "divergence_spread":
        return ranked[:n]
    if features is None:
        raise ValueError("strategy divergence_spread needs features")
    x = np.stack([np.asarray(features[i], dtype=np.float64) for i in candidates])
    labels = dict(zip(candidates, kmeans(x, n, seed)))
    picked, seen = [], set()
    for i in ranked:  # the most divergent frame of each cluster, in score order
        if labels[i] not in seen:
            seen.add(labels[i])
            picked.append(i)
    picked += [i for i in ranked if i not in set(picked)][: n - len(picked)]
    return picked[:n]


# ----------------------------------------------------------------------------- the rounds


def _thin(entries: Sequence[Mapping[str, Any]], limit: int | None) -> list[dict[str, Any]]:
    """``limit`` evenly spaced entries of ``entries`` (all of them when ``limit`` is None)."""
    entries = [dict(e) for e in entries]
    if limit is None or int(limit) >= len(entries):
        return entries
    return [entries[int(i * len(entries) / int(limit))] for i in range(int(limit))]


def round_datalist(
    base: Mapping[str, Any],
    labelled: Sequence[Mapping[str, Any]],
    unlabelled: Sequence[Mapping[str, Any]],
    lists: Mapping[str, Sequence[Mapping[str, Any]]],
) -> dict[str, Any]:
    """A round's datalist: the dataset's scalar keys (``num_classes``, ``labels``, ...), ``training``
    = ``labelled``, ``unlabeled`` = ``unlabelled`` (image-only entries), and ``lists`` (validation
    and the test lists) as given, with absolute paths outside the round's folder allowed."""
    from custom.data.datalist import ALLOW_OUTSIDE_KEY

    out = {k: v for k, v in base.items() if not isinstance(v, list) and k != ALLOW_OUTSIDE_KEY}
    out.update({"training": [dict(e) for e in labelled], "unlabeled": [dict(e) for e in unlabelled]})
    out.update({name: [dict(e) for e in entries] for name, entries in lists.items()})
    out[ALLOW_OUTSIDE_KEY] = True
    return out


@dataclass
class Round:
    """One trained round of one strategy and seed."""

    strategy: str
    seed: int
    round: int
    folder: Path

    @property
    def dataset_dir(self) -> Path:
        return self.folder / "data"

    @property
    def compare_dir(self) -> Path:
        return self.folder / "compare"


def _networks(spec: Any, with_transformer: bool):
    """The round's UNeXt (``model.pt``, the one validation kept) and, when asked, its Swin-Unet (the
    training state's ``transformer``, as the app loads it), in eval mode, with the preprocessing."""
    from monai.transforms import Compose

    from custom.tools.compare import _merged_config
    from custom.training.checkpoint import load_network_weights

    parser = _merged_config(spec.config_files, spec.overrides)
    cnn = parser.get_parsed_content("network_def")
    load_network_weights(cnn, str(spec.model_path))
    transformer = None
    if with_transformer:
        state = spec.model_path.parent / "train_state" / "train_state.pt"
        if not state.is_file():
            raise ValueError(
                f"the divergence strategies need the Swin-Unet, but {spec.name} wrote no {state}: "
                "use a method that trains both networks (--method ours)"
            )
        transformer = parser.get_parsed_content("transformer_def")
        load_network_weights(transformer, str(state), key="transformer")
        transformer.eval()
    preprocessing = Compose(parser.get_parsed_content("deterministic_transforms"))
    return cnn.eval(), transformer, preprocessing


def score_pool(spec: Any, entries: Sequence[Mapping[str, Any]], strategy: str, device: str = "cpu") -> dict[str, Any]:
    """The scores ``strategy`` ranks by, of ``entries`` (image-only), from the trained run ``spec``:
    ``{"scores": {id: float}, "features": {id: array}}`` (features for ``divergence_spread`` only)."""
    from custom.evaluation.disagreement import cnn_features, divergence_scores, entropy_scores

    ids = [frame_id(e) for e in entries]
    cnn, transformer, preprocessing = _networks(spec, strategy in ("divergence", "divergence_spread"))
    cnn, transformer = cnn.to(device), transformer.to(device) if transformer is not None else None
    images = [preprocessing({"image": e["image"]})["image"] for e in entries]
    if strategy == "entropy":
        return {"scores": dict(zip(ids, entropy_scores(cnn, images, device=device)))}
    out: dict[str, Any] = {"scores": dict(zip(ids, divergence_scores(cnn, transformer, images, device=device)))}
    if strategy == "divergence_spread":
        out["features"] = dict(zip(ids, cnn_features(cnn, images, device=device).numpy()))
    return out


# ---------------------------------------------------------------------------------- outputs


def _write_json(path: Path, obj: Any) -> None:
    from custom.utils.atomic import atomic_write_json

    atomic_write_json(path, obj, indent=1)


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, json.JSONDecodeError) as error:
        raise ValueError(f"{path}: cannot be read ({error}); move it aside to start the study afresh") from error


# ------------------------------------------------------------------------------ the driver


def _as_list(value: Any) -> list[str]:
    from custom.tools.compare import _as_list as as_list

    return as_list(value)


def _whole(value: Any, option: str, minimum: int = 0) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, str)) or not str(value).strip().lstrip("-").isdigit():
        raise ValueError(f"--{option} {value!r}: expected a whole number")
    if int(value) < minimum:
        raise ValueError(f"--{option} {value}: must be at least {minimum}")
    return int(value)


def _fraction(value: Any, option: str) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"--{option} {value!r}: expected a number within 0..1") from None
    if isinstance(value, bool) or not math.isfinite(number):
        raise ValueError(f"--{option} {value!r}: expected a number within 0..1")
    return number


def _settings_key(settings: Mapping[str, Any]) -> str:
    """What the picks depend on (not the strategies, seeds or round count, which may grow)."""
    keys = ("dataset", "seed_n", "batch", "method", "overrides", "max_iterations", "val", "draw")
    return hashlib.sha256(json.dumps({k: settings[k] for k in keys}, sort_keys=True).encode()).hexdigest()[:16]


def run_study(
    dataset_dir: str,
    out: str = "runs/active_learning",
    strategies: Any = ",".join(STRATEGIES),
    seeds: Any = "0,1",
    rounds: Any = 2,
    seed_fraction: Any = 0.02,
    batch_fraction: Any = 0.02,
    method: str = "ours",
    override: Any = (),
    max_iterations: Any = None,
    split: Any = "test",
    val_limit: Any = None,
    test_limit: Any = None,
    threads: Any = None,
    device: str | None = None,
    progress: Any = True,
    launcher: str = "subprocess",
) -> dict[str, Any]:
    """Run (or resume) the study; see the module docstring. ``launcher``: how compare starts each
    training (``subprocess`` or ``inprocess``). Returns ``{"curves": {split: {strategy:
    [points]}}, "rows": [...], "picks": {...}, "out": OUT}``."""
    from tqdm.auto import tqdm

    from custom.data import load_datalist
    from custom.data.prepare import DEFAULT_LABELED_DRAW
    from custom.tools import compare
    from custom.utils.cli import parse_bool

    progress = parse_bool(progress, "progress")
    strategies_l = _as_list(strategies)
    unknown = [s for s in strategies_l if s not in STRATEGIES]
    if not strategies_l or unknown:
        raise ValueError(f"--strategies {strategies!r}: expected some of {', '.join(STRATEGIES)}")
    if len(set(strategies_l)) != len(strategies_l):
        raise ValueError(f"--strategies {strategies!r}: a strategy named twice")
    seeds_l = [_whole(s, "seeds") for s in _as_list(seeds)]
    if not seeds_l or len(set(seeds_l)) != len(seeds_l):
        raise ValueError(f"--seeds {seeds!r}: expected distinct whole numbers")
    rounds_n = _whole(rounds, "rounds", 1)
    limits = {
        name: None if v is None else _whole(v, name, 1)
        for name, v in (("val-limit", val_limit), ("test-limit", test_limit))
    }
    max_iterations = None if max_iterations is None else _whole(max_iterations, "max-iterations", 1)
    threads = None if threads is None else _whole(threads, "threads", 1)
    split_l = _as_list(split) or ["test"]
    overrides = [str(Path(o).resolve()) for o in _as_list(override)]
    for o in overrides:
        if not Path(o).is_file():
            raise FileNotFoundError(f"--override: file not found: {o}")
    if launcher not in ("subprocess", "inprocess"):
        raise ValueError(f"--launcher {launcher!r}: must be subprocess or inprocess")
    compare.method_file(method)  # an unknown method is one line here, not after the seed round
    if threads:
        import torch

        torch.set_num_threads(threads)
    if device is None:
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"

    datalist_file = Path(dataset_dir) / "datalist.json" if Path(dataset_dir).is_dir() else Path(dataset_dir)
    if not datalist_file.is_file():
        raise FileNotFoundError(f"--dataset-dir {dataset_dir}: no datalist.json (prepare it with custom.data prepare)")
    datalist = load_datalist(datalist_file)
    pool = list(datalist.get("training") or []) + list(datalist.get("unlabeled") or [])
    SimulatedAnnotator(pool)  # refuses a pool without masks or with duplicate ids, before any training
    missing = [s for s in split_l if not datalist.get(s)]
    if missing or not datalist.get("validation"):
        raise ValueError(f"--dataset-dir {dataset_dir}: no (or an empty) {(missing or ['validation'])[0]!r} list")
    counts = budget(
        len(pool), _fraction(seed_fraction, "seed-fraction"), _fraction(batch_fraction, "batch-fraction"), rounds_n
    )
    draw = DEFAULT_LABELED_DRAW.get(str(datalist.get("source_kind", "")).lower(), "groups")
    fixed_lists = {"validation": _thin(datalist["validation"], limits["val-limit"])}
    fixed_lists.update({s: _thin(datalist[s], limits["test-limit"]) for s in split_l})

    out_dir = Path(out).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    settings = {
        "dataset": str(datalist_file.resolve()),
        "dataset_dir": str(Path(dataset_dir)),
        "seed_n": counts[0],
        "batch": counts[1] - counts[0],
        "method": method,
        "overrides": {o: hashlib.sha256(Path(o).read_bytes()).hexdigest()[:16] for o in overrides},
        "max_iterations": max_iterations,
        "val": len(fixed_lists["validation"]),
        "draw": draw,
    }
    picks_path = out_dir / PICKS
    picks = _read_json(picks_path) or {"settings_key": _settings_key(settings), "seed_labels": {}, "picks": {}}
    if picks.get("settings_key") != _settings_key(settings):
        raise ValueError(
            f"--out {out}: holds a study of other settings (dataset, budget, method, overrides or scale); "
            "give another --out or move it aside"
        )
    command = shlex.join(
        [
            "python",
            "-m",
            "custom.tools.active_learning",
            "--dataset-dir",
            str(dataset_dir),
            "--out",
            str(out),
            "--strategies",
            ",".join(strategies_l),
            "--seeds",
            ",".join(map(str, seeds_l)),
            "--rounds",
            str(rounds_n),
            "--seed-fraction",
            str(seed_fraction),
            "--batch-fraction",
            str(batch_fraction),
            "--method",
            method,
        ]
        + (["--override", ",".join(_as_list(override))] if overrides else [])
        + (["--max-iterations", str(max_iterations)] if max_iterations else [])
        + ["--split", ",".join(split_l)]
        + [f"--{k}={v}" for k, v in limits.items() if v is not None]
    )

    def train(rnd: Round, labelled: list[dict], unlabelled: list[dict]) -> dict[str, Any]:
        """Write the round's datalist and train/evaluate it through compare (skipped when done)."""
        from custom.utils.atomic import atomic_write_json

        file = rnd.dataset_dir / "datalist.json"
        doc = round_datalist(datalist, labelled, unlabelled, fixed_lists)
        if _read_json(file) != json.loads(json.dumps(doc)):
            atomic_write_json(file, doc, indent=1)
        result = compare.run_comparison(
            str(rnd.dataset_dir),
            [method],
            [rnd.seed],
            overrides,
            str(rnd.compare_dir),
            max_iterations,
            ",".join(split_l),
            launcher,
            threads,
            device,
            progress=False,
        )
        return result["runs"][0]

    def spec_of(rnd: Round):
        return compare.build_runs(rnd.dataset_dir, [method], [rnd.seed], overrides, rnd.compare_dir, max_iterations)[0]

    rows: list[dict[str, Any]] = []
    seconds = {"training (every round)": 0.0, "scoring (this invocation)": 0.0}
    groups = {frame_id(e): str(e.get("group", frame_id(e))) for e in pool}
    total = len(seeds_l) * (1 + len(strategies_l) * rounds_n)
    bar = tqdm(total=total, desc="active learning", unit="training", disable=not progress)

    def record(rnd: Round, done: Mapping[str, Any], strategies_of: Sequence[str]) -> None:
        seconds["training (every round)"] += float(done.get("train_seconds") or 0.0)
        for name in split_l:
            summary = done["lists"][name]["summary"]
            for strategy in strategies_of:
                row = {
                    "strategy": strategy,
                    "seed": rnd.seed,
                    "round": rnd.round,
                    "n_labelled": counts[rnd.round],
                    "list": name,
                    "n_test": summary["n_images"],
                    "dice": summary["overall"]["dice_mean"],
                }
                row.update({f"dice_{c}": v["dice_mean"] for c, v in summary["classes"].items()})
                row["train_seconds"] = done.get("train_seconds")
                rows.append(row)

    def flush() -> dict[str, Any]:
        _write_json(picks_path, picks)
        ordered = sorted(rows, key=lambda r: (strategies_l.index(r["strategy"]), r["seed"], r["round"], r["list"]))
        write_csv(out_dir / RESULTS_CSV, ordered)
        curves = {name: summarise([r for r in ordered if r["list"] == name], name) for name in split_l}
        scale = describe(spec_of(first_round)) if first_round else ""
        text = "\n".join(
            results_markdown(
                curves[name],
                name,
                {**settings, "scale": scale, "n_test": len(fixed_lists[name])},
                command,
                len(pool),
                seconds,
                groups_spanned(picks, groups),
            )
            for name in split_l
        )
        from custom.utils.atomic import atomic_write_text

        atomic_write_text(out_dir / RESULTS_MD, text)
        first = split_l[0]
        if curves[first]:
            study_plot(curves[first], out_dir / PLOT, f"{Path(settings['dataset']).parent.name} ({first}): {scale}")
        return curves

    def describe(spec: Any) -> str:
        from custom.tools.compare import describe_scale

        s = describe_scale(spec, datalist)
        size = "x".join(str(v) for v in s["image_size"])
        return (
            f"{method}, {size} px, {s['max_iterations']} iterations, batch {s['batch_size']} "
            f"({s['labeled_bs']} labelled), Swin-Unet embed {s['swin_embed_dim']}"
        )

    first_round: Round | None = None
    state: dict[tuple[int, str], tuple[SimulatedAnnotator, Round]] = {}
    for seed in seeds_l:  # the seed round, shared by every strategy of a seed
        seed_ids = picks["seed_labels"].get(str(seed))
        if seed_ids is None:
            seed_ids = draw_seed_labels(pool, counts[0], seed, draw)
            picks["seed_labels"][str(seed)] = seed_ids
            _write_json(picks_path, picks)
        start = Round("seed", seed, 0, out_dir / "seed_round" / f"seed{seed}")
        first_round = first_round or start
        annotator = SimulatedAnnotator(pool)
        annotator.reveal(seed_ids)
        bar.set_postfix_str(f"seed {seed}, round 0")
        record(start, train(start, annotator.labelled(), annotator.hidden(annotator.unlabelled_ids())), strategies_l)
        bar.update(1)
        for strategy in strategies_l:
            state[seed, strategy] = (SimulatedAnnotator(pool), start)
            state[seed, strategy][0].reveal(seed_ids)
    for rnd_n in range(1, rounds_n + 1):  # rounds outer: an early stop leaves every strategy and seed level
        for seed in seeds_l:
            for strategy in strategies_l:
                annotator, previous = state[seed, strategy]
                chosen = picks["picks"].setdefault(strategy, {}).setdefault(str(seed), {}).get(str(rnd_n))
                bar.set_postfix_str(f"seed {seed}, {strategy}, round {rnd_n}")
                if chosen is None:  # picked with the previous round's networks; a resumed study reuses picks
                    candidates = annotator.unlabelled_ids()
                    t0 = time.perf_counter()
                    scored = (
                        {}
                        if strategy == "random"
                        else score_pool(spec_of(previous), annotator.hidden(candidates), strategy, device)
                    )
                    seconds["scoring (this invocation)"] += time.perf_counter() - t0
                    chosen = select(
                        strategy,
                        candidates,
                        counts[rnd_n] - counts[rnd_n - 1],
                        np.random.default_rng([seed, rnd_n]),
                        scored.get("scores"),
                        scored.get("features"),
                        seed=seed * 1000 + rnd_n,
                    )
                    picks["picks"][strategy][str(seed)][str(rnd_n)] = chosen
                    _write_json(picks_path, picks)
                annotator.reveal(chosen)
                rnd = Round(strategy, seed, rnd_n, out_dir / strategy / f"seed{seed}" / f"round{rnd_n}")
                record(rnd, train(rnd, annotator.labelled(), annotator.hidden(annotator.unlabelled_ids())), [strategy])
                state[seed, strategy] = (annotator, rnd)
                bar.update(1)
                flush()
    bar.close()
    curves = flush()
    return {"curves": curves, "rows": rows, "picks": picks, "out": str(out_dir)}


def main() -> None:
    """``python -m custom.tools.active_learning``: :func:`run_study` as a command (fire)."""
    import fire

    from custom.utils.cli import command, exit_on_error, without_stray_arguments
    from custom.utils.runtime import setup

    setup()

    def report(result: dict[str, Any]) -> None:
        print((Path(result["out"]) / RESULTS_MD).read_text(encoding="utf-8"))

    # the options are run_study's parameters; bad input and failed runs are one line
    active_learning = exit_on_error((RuntimeError,), status=1)(
        exit_on_error((ValueError, OSError, KeyError))(without_stray_arguments(command(run_study, report)))
    )

    fire.Fire(active_learning)


if __name__ == "__main__":
    main()
