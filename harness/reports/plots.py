"""PNG plots of a suite: B.3 analysis, quality vs tokens with the Pareto front, cost vs video length.

All plots use matplotlib's Agg backend (no display needed) and are written
atomically (temporary file, then rename).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from harness.reports.stats import analysis_correlations, lower_is_better, pareto_front

FEATURE_TITLES = {"dynamics_0_100": "dynamics magnitude (standardized 0-100)", "frequency": "frequency magnitude (mean Sobel)"}
METRIC_TITLES = {"psnr": "PSNR (dB) ↑", "ssim": "SSIM ↑", "lpips": "LPIPS ↓", "lpips_vgg": "LPIPS-VGG ↓",
                 "fvd_16f": "rFVD 16f ↓", "fvd_128f": "rFVD 128f ↓", "fvd_16f_chunks": "rFVD 16f chunks ↓"}


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> Path:
    plt = _pyplot()
    tmp = path.with_name(f".{path.stem}.tmp.png")
    fig.savefig(tmp, dpi=110, bbox_inches="tight")
    plt.close(fig)
    tmp.replace(path)
    return path


def _colors(labels: list[str]) -> dict[str, Any]:
    plt = _pyplot()
    cmap = plt.get_cmap("tab10" if len(labels) <= 10 else "tab20")
    return {label: cmap(i % cmap.N) for i, label in enumerate(labels)}


def write_analysis_plot(points: pd.DataFrame, path: Path, title: str = "") -> tuple[Path, pd.DataFrame]:
    """Per-video quality against dynamics (0-100) and frequency magnitude (CoordTok supp. B.3, Fig. 7).

    One panel per (metric, feature), one colour per leaderboard row, a
    least-squares trend line per row and Spearman's rho in the legend.

    Args:
        points: :func:`harness.reports.stats.analysis_table` output.
        path: PNG file to write.

    Returns:
        ``(path, correlations)`` with the :func:`analysis_correlations` table the legend shows.

    Raises:
        ValueError: when ``points`` is empty.
    """
    if points.empty:
        raise ValueError("no per-video points to plot (per_video.csv without psnr/lpips?)")
    plt = _pyplot()
    correlations = analysis_correlations(points)
    metrics = list(dict.fromkeys(points["metric"]))
    features = [f for f in FEATURE_TITLES if points[f].notna().any()]
    rows = list(dict.fromkeys(points["row"]))
    colors = _colors(rows)
    fig, axes = plt.subplots(len(metrics), max(len(features), 1), figsize=(5.2 * max(len(features), 1), 3.6 * len(metrics)),
                             squeeze=False)
    for i, metric in enumerate(metrics):
        for j, feature in enumerate(features):
            ax = axes[i][j]
            for row in rows:
                group = points[(points["row"] == row) & (points["metric"] == metric)]
                group = group[np.isfinite(group[feature]) & np.isfinite(group["value"])]
                if group.empty:
                    continue
                rho = correlations[(correlations["row"] == row) & (correlations["metric"] == metric)
                                   & (correlations["feature"] == feature)]["rho"].iloc[0]
                ax.scatter(group[feature], group["value"], s=14, alpha=0.7, color=colors[row],
                           label=f"{row} (Spearman ρ = {rho:+.2f})" if np.isfinite(rho) else f"{row} (ρ n/a)")
                if len(group) >= 2 and np.ptp(group[feature]) > 0:
                    slope, intercept = np.polyfit(group[feature], group["value"], 1)
                    xs = np.linspace(group[feature].min(), group[feature].max(), 20)
                    ax.plot(xs, slope * xs + intercept, color=colors[row], linewidth=1.5)
            ax.set_xlabel(FEATURE_TITLES[feature])
            ax.set_ylabel(METRIC_TITLES.get(metric, metric))
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7, loc="best")
    fig.suptitle(title or "per-video quality vs dynamics and frequency (CoordTok supp. B.3)")
    fig.tight_layout()
    return _save(fig, path), correlations


def write_pareto_plot(points: pd.DataFrame, path: Path, title: str = "") -> tuple[Path, pd.DataFrame]:
    """Quality vs tokens per video of every row (tokenizers and budgets) with the Pareto front per metric.

    Args:
        points: columns ``row, tokenizer, tokens, metric, value`` (one line per row and metric), optionally
            ``low, high`` (confidence interval, drawn as error bars).
        path: PNG file to write.

    Returns:
        ``(path, front)``: the points with a boolean ``pareto`` column.

    Raises:
        ValueError: when ``points`` is empty.
    """
    if points.empty:
        raise ValueError("no quality metrics to plot")
    plt = _pyplot()
    points = points.copy()
    points["pareto"] = False
    metrics = list(dict.fromkeys(points["metric"]))
    tokenizers = list(dict.fromkeys(points["tokenizer"]))
    colors = _colors(tokenizers)
    fig, axes = plt.subplots(1, len(metrics), figsize=(4.6 * len(metrics), 3.8), squeeze=False)
    for ax, metric in zip(axes[0], metrics):
        group = points[points["metric"] == metric]
        front = group.index[pareto_front(group["tokens"], group["value"], lower_is_better(metric))]
        points.loc[front, "pareto"] = True
        for tokenizer in tokenizers:
            mine = group[group["tokenizer"] == tokenizer].sort_values("tokens")
            if mine.empty:
                continue
            ax.plot(mine["tokens"], mine["value"], marker="o", color=colors[tokenizer], label=tokenizer,
                    linewidth=1 if len(mine) > 1 else 0)
            if {"low", "high"} <= set(mine.columns) and mine["low"].notna().any():
                err = np.vstack([mine["value"] - mine["low"], mine["high"] - mine["value"]])
                ax.errorbar(mine["tokens"], mine["value"], yerr=np.nan_to_num(err), fmt="none", ecolor=colors[tokenizer],
                            capsize=3, linewidth=1)
        on_front = points.loc[front].sort_values("tokens")
        ax.step(on_front["tokens"], on_front["value"], where="post", color="black", linestyle="--", linewidth=1,
                label="Pareto front")
        ax.scatter(on_front["tokens"], on_front["value"], s=120, facecolors="none", edgecolors="black", linewidths=1.2)
        ax.set_xscale("log")
        ax.set_xlabel("tokens per video")
        ax.set_ylabel(METRIC_TITLES.get(metric, metric))
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=7)
    fig.suptitle(title or "reconstruction quality vs tokens per video (circled: Pareto front)")
    fig.tight_layout()
    return _save(fig, path), points


LENGTH_COLUMNS = ("frames", "video_length", "num_frames", "length", "clip_frames")
GROUP_COLUMNS = ("label", "row", "id", "tokenizer", "model", "name")


def cost_columns(table: pd.DataFrame) -> tuple[str | None, str | None, list[str]]:
    """``(length column, tokenizer column, cost columns)`` of a cost-vs-length table.

    Cost columns are the numeric ones whose name mentions FLOPs or memory
    (``flops``, ``gflops``, ``memory_mb``, ``peak_mem``...).
    """
    length = next((c for c in LENGTH_COLUMNS if c in table), None)
    group = next((c for c in GROUP_COLUMNS if c in table), None)
    costs = [c for c in table.columns if ("flop" in c.lower() or "mem" in c.lower()) and pd.api.types.is_numeric_dtype(table[c])]
    return length, group, costs


def write_cost_plot(table: pd.DataFrame, path: Path, title: str = "") -> Path | None:
    """Training FLOPs and memory vs video length, one panel per cost column (CoordTok Fig. 1a / supp. Fig. 9).

    Returns ``None`` (nothing written) when the table has no length column or no cost column.
    """
    length, group, costs = cost_columns(table)
    if length is None or not costs:
        return None
    plt = _pyplot()
    groups = list(dict.fromkeys(table[group])) if group else [None]
    colors = _colors([str(g) for g in groups])
    fig, axes = plt.subplots(1, len(costs), figsize=(4.6 * len(costs), 3.8), squeeze=False)
    for ax, cost in zip(axes[0], costs):
        for g in groups:
            mine = (table[table[group] == g] if group else table).dropna(subset=[cost]).sort_values(length)
            if mine.empty:
                continue
            ax.plot(mine[length], mine[cost], marker="o", color=colors[str(g)], label=str(g) if g is not None else None)
        lengths = sorted(table[length].dropna().unique())
        if len(lengths) > 1 and min(lengths) > 0:
            ax.set_xscale("log", base=2)
            ax.set_xticks(lengths, [f"{v:g}" for v in lengths])
            ax.minorticks_off()
        ax.set_xlabel(f"video length ({length})")
        ax.set_ylabel(cost)
        ax.set_yscale("log")
        ax.grid(alpha=0.3, which="both")
        if group:
            ax.legend(fontsize=7)
    fig.suptitle(title or "training cost vs video length")
    fig.tight_layout()
    return _save(fig, path)
