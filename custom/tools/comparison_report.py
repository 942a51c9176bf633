"""The comparison's outputs (``custom.tools.compare``): a run's rows per list, the per-method
aggregates over seeds, the share of the labelled-only-to-fully-supervised gap, the Markdown
sections (every list, then each list with its per-seed values) and the bar plot."""

from __future__ import annotations

import csv
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from custom.utils.atomic import atomic_open
from custom.utils.paths import DEFAULT_METHOD

__all__ = [
    "METRICS",
    "HC_STATS",
    "scale_line",
    "list_view",
    "aggregate",
    "gap_shares",
    "robustness_markdown",
    "list_markdown",
    "comparison_markdown",
    "comparison_plot",
    "write_csv",
    "run_row",
    "hc_of",
]

# the per-list metrics of a run (mean over images and classes)
METRICS: tuple[str, ...] = ("dice", "hd95", "asd")


# the head-circumference error statistics over a list's images (custom.evaluation.evaluate)
HC_STATS = ("abs_diff_median", "abs_diff_p90", "abs_diff_max", "bias")


def hc_of(summary: Mapping[str, Any]) -> dict[str, Any] | None:
    """The head-circumference part of a list's summary (``head_circumference``, as evaluation
    writes it; a record of an earlier comparison kept ``hc_abs_diff_mean``/``_std``/``hc_unit``)."""
    if "head_circumference" in summary:
        return summary["head_circumference"]
    if "hc_abs_diff_mean" in summary:
        return {
            "abs_diff_mean": summary["hc_abs_diff_mean"],
            "abs_diff_std": summary["hc_abs_diff_std"],
            "unit": summary.get("hc_unit", "mm"),
        }
    return None


def scale_line(scale: Mapping[str, Any]) -> str:
    c = scale["counts"]
    size = "x".join(str(s) for s in scale["image_size"])
    return (
        f"{size} px input, {scale['max_iterations']} iterations, batch {scale['batch_size']} "
        f"({scale['labeled_bs']} labelled), lr {scale['learning_rate']}, "
        f"UNeXt channels {tuple(scale['unext_channels'])}, "
        f"Swin-Unet embed {scale['swin_embed_dim']} depths {scale['swin_depths']} heads {scale['swin_num_heads']} "
        f"window {scale['swin_window_size']}; {c['training']} labelled / {c['unlabeled']} unlabelled / "
        f"{c['validation']} validation / {c['test']} test images"
    )


# ---------------------------------------------------------------------------------- outputs


def list_view(record: Mapping[str, Any], name: str) -> dict[str, Any]:
    """One run's results on one list, in the shape :func:`aggregate` and the tables read."""
    part = record["lists"][name]
    return {**{k: v for k, v in record.items() if k != "lists"}, "list": name, **part}


def run_row(done: Mapping[str, Any]) -> dict[str, Any]:
    overall, classes = done["summary"]["overall"], done["summary"]["classes"]
    row = {
        "method": done["method"],
        "seed": done["seed"],
        "list": done["list"],
        "n_images": done["summary"]["n_images"],
        "unit": done["summary"]["unit"],
    }
    for m in METRICS + ("hd95_monai",):
        row[m] = overall[f"{m}_mean"]
    for name, entry in classes.items():
        row[f"dice_{name}"] = entry["dice_mean"]
    hc = hc_of(done["summary"])
    if hc is not None:
        row["hc_abs_diff"] = hc["abs_diff_mean"]
        for key in HC_STATS:
            row[f"hc_{key}"] = hc.get(key, float("nan"))
    row["n_empty_pred"] = overall["n_empty_pred"]
    for name, entry in classes.items():
        row[f"n_empty_pred_{name}"] = entry["n_empty_pred"]
    row.update(
        {
            "max_iterations": done["scale"]["max_iterations"],
            "train_seconds": done.get("train_seconds"),
            "eval_seconds": done.get("eval_seconds"),
            "config_hash": done["config_hash"],
        }
    )
    return row


def write_csv(path: Path, rows: Sequence[Mapping[str, Any]]) -> None:
    fields: list[str] = []
    for r in rows:
        fields += [k for k in r if k not in fields]

    with atomic_open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)


def aggregate(runs: Sequence[Mapping[str, Any]], methods: Sequence[str]) -> dict[str, dict[str, Any]]:
    """Per method: mean and std over seeds of each run's mean over images (``ddof=1``); with a
    single seed, the std over test images of that run instead (``spread`` says which)."""
    out: dict[str, dict[str, Any]] = {}
    for method in methods:
        done = [r for r in runs if r["method"] == method]
        if not done:
            continue
        entry: dict[str, Any] = {"n_seeds": len(done), "unit": done[0]["summary"]["unit"]}
        keys = list(METRICS) + [f"dice_{n}" for n in done[0]["summary"]["classes"]]
        for key in keys:
            if key.startswith("dice_"):
                vals = [r["summary"]["classes"][key[5:]]["dice_mean"] for r in done]
                single_std = done[0]["summary"]["classes"][key[5:]]["dice_std"]
            else:
                vals = [r["summary"]["overall"][f"{key}_mean"] for r in done]
                single_std = done[0]["summary"]["overall"][f"{key}_std"]
            entry[key] = float(np.mean(vals))
            entry[f"{key}_std"] = float(np.std(vals, ddof=1)) if len(vals) > 1 else float(single_std)
        entry["dice_per_seed"] = [float(r["summary"]["overall"]["dice_mean"]) for r in done]
        for name in done[0]["summary"]["classes"]:  # frames whose prediction misses the class, mean over seeds
            entry[f"empty_{name}"] = float(np.mean([r["summary"]["classes"][name]["n_empty_pred"] for r in done]))
        hcs = [hc_of(r["summary"]) for r in done]
        if all(h is not None for h in hcs):
            hc = [h["abs_diff_mean"] for h in hcs]
            entry["hc_abs_diff"] = float(np.mean(hc))
            entry["hc_abs_diff_std"] = float(np.std(hc, ddof=1)) if len(hc) > 1 else float(hcs[0]["abs_diff_std"])
            entry["hc_unit"] = hcs[0].get("unit", "mm")
            for key in HC_STATS:  # mean over seeds of each run's statistic over images
                entry[f"hc_{key}"] = float(np.mean([h.get(key, float("nan")) for h in hcs]))
        entry["spread"] = "std over seeds (ddof=1)" if len(done) > 1 else "std over test images (one seed)"
        out[method] = entry
    return out


def gap_shares(
    table: Mapping[str, Mapping[str, Any]], lower: str = "labeled_only", upper: str = "fully_supervised"
) -> dict[str, dict[str, float | bool]]:
    """Per method, against the labelled-only (A) and fully supervised (C) rows: ``gap_share``
    ``(B - A) / (C - A)`` of mean Dice (1: as good as full supervision, 0: no gain, < 0: worse
    than labelled only) and ``never_below``: ``mean - std >= A's mean`` (std over seeds). Empty
    unless both reference rows are in the table and ``C > A``."""
    if lower not in table or upper not in table:
        return {}
    a, c = table[lower]["dice"], table[upper]["dice"]
    if not c > a:
        return {}
    return {
        method: {"gap_share": (e["dice"] - a) / (c - a), "never_below": e["dice"] - e["dice_std"] >= a}
        for method, e in table.items()
        if method not in (lower, upper)
    }


def robustness_markdown(
    tables: Mapping[str, Mapping[str, Mapping[str, Any]]], class_names: Mapping[int, str]
) -> list[str]:
    """One row per method, one column per list: mean Dice ± std, and the frames whose prediction
    misses a class the reference contains (mean over seeds, per class)."""
    lists = list(tables)
    methods = list(dict.fromkeys(m for t in tables.values() for m in t))
    names = list(class_names.values())
    lines = [
        "| Method | "
        + " | ".join(f"{name} Dice" for name in lists)
        + " | "
        + " | ".join(f"{name} empty ({' / '.join(names)})" for name in lists)
        + " |",
        "|---|" + "---|" * (2 * len(lists)),
    ]
    for m in methods:
        dice = [
            f"{tables[n][m]['dice']:.3f} ± {tables[n][m]['dice_std']:.3f}" if m in tables[n] else "n/a" for n in lists
        ]
        empty = [
            " / ".join(f"{tables[n][m][f'empty_{c}']:g}" for c in names) if m in tables[n] else "n/a" for n in lists
        ]
        lines.append(f"| {m} | " + " | ".join(dice + empty) + " |")
    return lines


def list_markdown(
    table: Mapping[str, Mapping[str, Any]], name: str, n_images: int, class_names: Mapping[int, str]
) -> list[str]:
    """One list's section: mean ± std per method with the per-seed values, and the gap shares."""
    unit = next(iter(table.values()))["unit"] if table else "px"
    spreads = sorted({e["spread"] for e in table.values()})
    with_hc = any("hc_abs_diff" in e for e in table.values())
    hc_unit = next((e["hc_unit"] for e in table.values() if "hc_unit" in e), "mm")
    lines = [
        f"## `{name}` ({n_images} images)",
        "",
        f"| Method | Dice | per seed | HD95 ({unit}) | ASD ({unit}) | "
        + " | ".join(f"Dice {n}" for n in class_names.values())
        + " | "
        + " | ".join(f"empty {n}" for n in class_names.values())
        + " |"
        + (f" HC abs. error ({hc_unit}) | HC median / p90 / max / bias ({hc_unit}) |" if with_hc else ""),
        "|---|---|---|---|---|" + "---|" * (2 * len(class_names) + 2 * with_hc),
    ]
    for method, e in table.items():
        cells = [f"{e['dice']:.3f} ± {e['dice_std']:.3f}", " / ".join(f"{v:.4f}" for v in e["dice_per_seed"])]
        cells += [f"{e[m]:.2f} ± {e[m + '_std']:.2f}" for m in METRICS[1:]]
        cells += [f"{e[f'dice_{n}']:.3f} ± {e[f'dice_{n}_std']:.3f}" for n in class_names.values()]
        cells += [f"{e[f'empty_{n}']:g}" for n in class_names.values()]
        if with_hc:
            cells.append(f"{e['hc_abs_diff']:.2f} ± {e['hc_abs_diff_std']:.2f}" if "hc_abs_diff" in e else "n/a")
            cells.append(
                " / ".join(f"{e.get(f'hc_{k}', float('nan')):.1f}" for k in HC_STATS) if "hc_abs_diff" in e else "n/a"
            )
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    lines += [
        "",
        f"Mean over classes and images per run; ± is the {' / '.join(spreads)}; empty: frames whose prediction of "
        "the class is empty while the reference contains it (mean over seeds).",
    ]
    shares = gap_shares(table)
    if shares:
        a, c = table["labeled_only"]["dice"], table["fully_supervised"]["dice"]
        lines += [
            "",
            f"Against labelled-only (A, Dice {a:.3f}) and fully supervised (C, {c:.3f}): the share of the A-to-C "
            "gap each method closes, (B - A) / (C - A), and whether its mean minus one std stays at or above A.",
            "",
            "| Method | Dice | gap closed | mean - std >= A |",
            "|---|---|---|---|",
        ]
        lines += [
            f"| {m} | {table[m]['dice']:.3f} ± {table[m]['dice_std']:.3f} | {v['gap_share']:.0%} | "
            f"{'yes' if v['never_below'] else 'no'} |"
            for m, v in shares.items()
        ]
    return lines + [""]


def comparison_markdown(
    tables: Mapping[str, Mapping[str, Mapping[str, Any]]],
    scale: Mapping[str, Any],
    command: str,
    dataset_dir: str,
    seeds: Sequence[int],
    class_names: Mapping[int, str],
    counts: Mapping[str, int],
    failed: Sequence[str] = (),
) -> str:
    """The Markdown report: the command, the scale, the robustness table over every list, then
    one section per list (mean ± std per method, per-seed values, gap shares)."""
    first = next(iter(tables.values()), {})
    unit = next(iter(first.values()))["unit"] if first else "px"
    lines = [
        "# Method comparison",
        "",
        f"Command: `{command}`",
        "",
        f"Data: `{dataset_dir}` (one datalist, the same splits for every run); evaluated on the lists "
        f"{', '.join(f'`{n}`' for n in tables)} at the original image size (UNeXt argmax at the training size, "
        "resized back with nearest neighbour).",
        "",
        f"Scale: {scale_line(scale)}; seeds {', '.join(str(s) for s in seeds)}.",
        "",
    ]
    if len(tables) > 1:
        lines += ["## Every list", ""] + robustness_markdown(tables, class_names) + [""]
    for name, table in tables.items():
        lines += list_markdown(table, name, counts.get(name, 0), class_names)
    lines += [
        f"Distances in {unit}"
        + (" (pixel spacing from the datalist)" if unit == "mm" else " (no pixel spacing in the datalist)")
        + ". HD95: 95th percentile of the pooled surface distances of both directions; "
        "ASD: mean of the two directed means. "
        "Empty predictions score Dice 0 and the image diagonal as distance (metrics.md). "
        "HC abs. diff (where given): |head circumference of the ellipse fitted to the predicted head - reference HC| "
        "(the HC18 challenge's score).",
    ]
    if failed:
        lines += ["", f"Failed runs (not in the tables): {', '.join(failed)}."]
    return "\n".join(lines) + "\n"


def comparison_plot(table: Mapping[str, Mapping[str, Any]], path: Path, title: str = "") -> None:
    """Bar chart (Agg backend): one panel per metric, one bar per method, error bars = the table's ±."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    methods = list(table)
    unit = next(iter(table.values()))["unit"] if table else "px"
    fig, axes = plt.subplots(1, len(METRICS), figsize=(4 + 0.9 * len(methods) * len(METRICS) / 2, 4), squeeze=False)
    for ax, metric in zip(axes[0], METRICS):
        means = [table[m][metric] for m in methods]
        stds = [table[m][f"{metric}_std"] for m in methods]
        colors = ["tab:red" if m == DEFAULT_METHOD else "tab:blue" for m in methods]
        ax.bar(range(len(methods)), means, yerr=stds, capsize=3, color=colors)
        ax.set_xticks(range(len(methods)))
        ax.set_xticklabels(methods, rotation=45, ha="right", fontsize=8)
        ax.set_title(
            "Dice (higher is better)" if metric == "dice" else f"{metric.upper()} (lower is better)", fontsize=10
        )
        if metric != "dice":
            ax.set_ylabel(unit)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    from custom.utils.atomic import atomic_write

    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=120, format="png"))
    plt.close(fig)
