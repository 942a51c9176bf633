"""The active-learning study's outputs (``custom.tools.active_learning``): the learning curves
per strategy, the labels each strategy needs to reach random's Dice, the video blocks its picks
span, the Markdown results and the plot."""

from __future__ import annotations

import textwrap
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["summarise", "labels_to_reach", "groups_spanned", "results_markdown", "study_plot"]


def summarise(rows: Sequence[Mapping[str, Any]], split: str) -> dict[str, list[dict[str, Any]]]:
    """Per strategy, per round: ``n_labelled``, mean and std (``ddof=1``; 0 with one seed) over
    seeds of the test mean Dice on ``split``, and the seeds it is over."""
    out: dict[str, list[dict[str, Any]]] = {}
    for strategy in dict.fromkeys(r["strategy"] for r in rows):
        points = []
        for rnd in sorted({int(r["round"]) for r in rows if r["strategy"] == strategy}):
            vals = [r for r in rows if r["strategy"] == strategy and int(r["round"]) == rnd and r["list"] == split]
            dice = [float(r["dice"]) for r in vals]
            points.append(
                {
                    "round": rnd,
                    "n_labelled": int(vals[0]["n_labelled"]),
                    "dice": float(np.mean(dice)),
                    "std": float(np.std(dice, ddof=1)) if len(dice) > 1 else 0.0,
                    "seeds": sorted(int(r["seed"]) for r in vals),
                }
            )
        out[strategy] = points
    return out


def labels_to_reach(curves: Mapping[str, Sequence[Mapping[str, Any]]], reference: str = "random") -> dict[str, Any]:
    """Per strategy, the fewest labelled frames at which its mean Dice reaches ``reference``'s final
    mean Dice (None if it never does), and the frames saved against the reference's final count."""
    if reference not in curves or not curves[reference]:
        return {}
    final = curves[reference][-1]
    out = {}
    for strategy, points in curves.items():
        reached = next((p["n_labelled"] for p in points if p["dice"] >= final["dice"]), None)
        out[strategy] = {
            "target": final["dice"],
            "n_labelled": reached,
            "saved": None if reached is None else final["n_labelled"] - reached,
        }
    return out


def groups_spanned(picks: Mapping[str, Any], groups: Mapping[str, str]) -> dict[str, float]:
    """Per strategy, the mean over seeds and rounds of how many groups (PSFHS video blocks, HC18
    subjects) one round's batch spans: a ranking that picks neighbouring frames spans few."""
    out = {}
    for strategy, seeds in picks.get("picks", {}).items():
        spans = [len({groups[i] for i in ids}) for rounds in seeds.values() for ids in rounds.values()]
        if spans:
            out[strategy] = float(np.mean(spans))
    return out


def results_markdown(
    curves: Mapping[str, Sequence[Mapping[str, Any]]],
    split: str,
    settings: Mapping[str, Any],
    command: str,
    pool_size: int,
    seconds: Mapping[str, float],
    spans: Mapping[str, float] | None = None,
) -> str:
    rounds = sorted({p["round"] for pts in curves.values() for p in pts})
    counts = {p["round"]: p["n_labelled"] for pts in curves.values() for p in pts}
    lines = [
        "# Simulated active learning",
        "",
        f"Command: `{command}`",
        "",
        f"Dataset `{settings['dataset_dir']}`, pool of {pool_size} frames; seed labels {counts.get(0)} frames, "
        f"+{settings['batch']} per round; every round trained from scratch ({settings['scale']}). "
        f"Test mean Dice on `{split}` ({settings['n_test']} frames), mean ± std over seeds.",
        "",
        "| Strategy | " + " | ".join(f"round {r} ({counts[r]} labelled)" for r in rounds) + " |",
        "|---|" + "---|" * len(rounds),
    ]
    for strategy, points in curves.items():
        by_round = {p["round"]: p for p in points}
        cells = [
            f"{by_round[r]['dice']:.3f} ± {by_round[r]['std']:.3f} (n={len(by_round[r]['seeds'])})"
            if r in by_round
            else "n/a"
            for r in rounds
        ]
        lines.append(f"| {strategy} | " + " | ".join(cells) + " |")
    reach = labels_to_reach(curves)
    if reach:
        target = next(iter(reach.values()))["target"]
        lines += [
            "",
            f"Labels needed to reach random's final mean Dice ({target:.3f} at {counts[max(rounds)]} frames) "
            "at the rounds measured:",
            "",
            "| Strategy | labelled frames | saved |",
            "|---|---|---|",
        ]
        for strategy, r in reach.items():
            n = "not reached" if r["n_labelled"] is None else str(r["n_labelled"])
            saved = "n/a" if r["saved"] is None else str(r["saved"])
            if strategy == "random":  # the reference: a noisy curve may pass its own final value earlier
                n, saved = f"{counts[max(rounds)]} (reference; its own curve is there first at {n})", "0"
            lines.append(f"| {strategy} | {n} | {saved} |")
    if spans:
        lines += [
            "",
            f"Groups (video blocks or subjects) one batch of {settings['batch']} frames spans, mean over seeds "
            "and rounds: " + ", ".join(f"{k} {v:.1f}" for k, v in spans.items()) + ".",
        ]
    lines += [
        "",
        "Time: " + ", ".join(f"{k} {v / 60:.1f} min" for k, v in seconds.items()) + ".",
        "",
    ]
    return "\n".join(lines)


def study_plot(curves: Mapping[str, Sequence[Mapping[str, Any]]], path: Path, title: str) -> None:
    """Test Dice against labelled frames (Agg backend): one line per strategy, the band ± std over seeds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for strategy, points in curves.items():
        x = np.array([p["n_labelled"] for p in points])
        y = np.array([p["dice"] for p in points])
        s = np.array([p["std"] for p in points])
        (line,) = ax.plot(x, y, marker="o", label=strategy)
        ax.fill_between(x, y - s, y + s, color=line.get_color(), alpha=0.15)
    ax.set_xlabel("labelled frames")
    ax.set_ylabel("test mean Dice (UNeXt)")
    ax.set_title(textwrap.fill(title, 80), fontsize=8)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    from custom.utils.atomic import atomic_write

    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=120, format="png"))
    plt.close(fig)
