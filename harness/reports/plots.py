"""The plots of a report, each one function registered in :data:`PLOTS`.

A plot function takes the report's :class:`harness.reports.data.ReportData`
(records loaded once, intervals computed once) and returns a list of
:class:`Figure` (PNG path, section title, caption, optionally a table the
report shows under it), or an empty list when it has nothing to draw. Adding a
plot is one function here decorated with :func:`register_plot`; the report,
``python -m harness plot`` and ``report.html`` pick it up.

Axis labels, directions and the Pareto side come from each metric's
metadata (:class:`harness_core.registry.MetricSpec`). All plots use matplotlib's
Agg backend (no display needed) and are written atomically (:mod:`harness_core.io`).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd

from harness_core.io import write_png_atomic, write_text_atomic
from harness_core.registry import MetricSpec
from harness.reports.data import ReportData
from harness.reports.stats import analysis_correlations, analysis_table, bootstrap_band, pareto_front

log = logging.getLogger("harness.report")

FEATURE_TITLES = {"dynamics_0_100": "dynamics magnitude (standardized 0-100)", "frequency": "frequency magnitude (mean Sobel)"}


@dataclass
class Figure:
    """One drawn plot: its PNG, the report section title and caption, and an optional table shown below it."""

    path: Path
    title: str
    caption: str = ""
    table: pd.DataFrame | None = None
    table_title: str = ""
    files: tuple[Path, ...] = ()
    #: the table section's HTML anchor and the note shown under it
    table_anchor: str = ""
    table_note: str = ""


PlotFunction = Callable[[ReportData], list[Figure]]
#: every plot of a report, in report order
PLOTS: list[tuple[str, PlotFunction]] = []


def register_plot(name: str) -> Callable[[PlotFunction], PlotFunction]:
    """Decorator: add a plot function to :data:`PLOTS` under ``name`` (report order = registration order)."""

    def decorator(fn: PlotFunction) -> PlotFunction:
        PLOTS.append((name, fn))
        return fn

    return decorator


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> Path:
    plt = _pyplot()
    write_png_atomic(path, lambda handle: fig.savefig(handle, format="png", dpi=110, bbox_inches="tight"))
    plt.close(fig)
    return path


#: public names of the helpers a new plot uses (README "Adding a plot")
pyplot = _pyplot
save_figure = _save


def _colors(labels: list[str]) -> dict[str, Any]:
    plt = _pyplot()
    cmap = plt.get_cmap("tab10" if len(labels) <= 10 else "tab20")
    return {label: cmap(i % cmap.N) for i, label in enumerate(labels)}


def write_analysis_plot(points: pd.DataFrame, path: Path, title: str = "",
                        labels: dict[str, str] | None = None) -> tuple[Path, pd.DataFrame]:
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
            ax.set_ylabel((labels or {}).get(metric, metric))
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7, loc="best")
    fig.suptitle(title or "per-video quality vs dynamics and frequency (CoordTok supp. B.3)")
    fig.tight_layout()
    return _save(fig, path), correlations


def write_pareto_plot(points: pd.DataFrame, path: Path, title: str = "",
                      specs: dict[str, MetricSpec] | None = None) -> tuple[Path, pd.DataFrame]:
    """Quality vs tokens per video of every row (tokenizers and budgets) with the Pareto front per metric.

    Args:
        specs: metric key -> its metadata (axis label, direction of the front); without one, larger is better.
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
        spec = (specs or {}).get(metric)
        front = group.index[pareto_front(group["tokens"], group["value"], spec is not None and spec.higher_is_better is False)]
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
        ax.set_ylabel(spec.axis_label if spec else metric)
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


# ----------------------------------------------------------------------------- the registered plots


def quality_points(data: ReportData, intervals: bool = True) -> pd.DataFrame:
    """Long table (row, tokenizer, tokens, metric, value, low, high) of every ranked reconstruction metric.

    ``low``/``high`` are the 95% bootstrap interval over videos of per-video metrics (NaN otherwise).
    """
    points = []
    specs = [s for s in data.ranked if not s.generation]
    for record in data.records:
        for spec in specs:
            value = record.metrics.get(spec.key)
            if value is None:
                continue
            ci = data.interval(record, spec.key) if intervals and spec.per_video else None
            points.append({"row": record.row, "tokenizer": record.tokenizer_id, "tokens": record.tokens_per_video,
                           "metric": spec.key, "value": value,
                           "low": ci.low if ci else float("nan"), "high": ci.high if ci else float("nan")})
    return pd.DataFrame(points, columns=["row", "tokenizer", "tokens", "metric", "value", "low", "high"])


@register_plot("quality_vs_tokens")
def quality_vs_tokens(data: ReportData) -> list[Figure]:
    """Every ranked reconstruction metric against tokens per video, Pareto front marked."""
    frame = quality_points(data)
    if frame.empty:
        return []
    path, _ = write_pareto_plot(frame, data.results / "quality_vs_tokens.png",
                                f"{data.results.name}: quality vs tokens per video (bars: 95% bootstrap CI; circled: Pareto front)",
                                {s.key: s for s in data.columns})
    return [Figure(path, "Quality vs tokens per video", "Every tokenizer and budget; circled points and the dashed staircase "
                   "are the Pareto front (fewer tokens, better quality).")]


@register_plot("per_frame_curves")
def per_frame_curves(data: ReportData) -> list[Figure]:
    """PSNR, SSIM and LPIPS against the frame index: one line per row (mean over videos) with its 95% bootstrap
    band over videos; dotted lines mark each tokenizer's clip / chunk boundaries."""
    tables = {record.row: (record, data.per_frame(record)) for record in data.records}
    tables = {row: (record, table) for row, (record, table) in tables.items() if table is not None and len(table)}
    if not tables:
        return []
    keys = [k for k in dict.fromkeys(c for _, t in tables.values() for c in t.columns[2:]) if data.spec(k) is not None]
    if not keys:
        return []
    plt = _pyplot()
    colors = _colors(list(tables))
    fig, axes = plt.subplots(1, len(keys), figsize=(4.8 * len(keys), 3.6), squeeze=False)
    for ax, key in zip(axes[0], keys):
        for row, (record, table) in tables.items():
            if key not in table:
                continue
            curves = table.pivot(index=table.columns[0], columns="frame", values=key)  # [videos, frames]
            mean, low, high = bootstrap_band(curves.to_numpy())
            frames = curves.columns.to_numpy()
            ax.plot(frames, mean, color=colors[row], label=row, linewidth=1.2)
            ax.fill_between(frames, low, high, color=colors[row], alpha=0.15, linewidth=0)
            for boundary in record.temporal_boundaries or []:
                ax.axvline(boundary - 0.5, color=colors[row], linestyle=":", linewidth=0.8, alpha=0.6)
        ax.set_xlabel("frame")
        ax.set_ylabel(data.spec(key).axis_label)
    axes[0][-1].legend(fontsize=7, loc="best")
    fig.tight_layout()
    path = _save(fig, data.results / "per_frame_curves.png")
    return [Figure(path, "Per-frame quality", "Mean over evaluation videos per frame index, shaded: 95% bootstrap band "
                   "over videos; dotted: first frame of each clip / chunk after the first (the tokenizer's boundaries).")]


#: the anchor curve of the BD-rate table: rows of the registered tokenizer ``h265`` (the H.265 codec baseline)
BD_ANCHOR = "h265"
#: line style of a curve by rate kind: a classical codec's measured bitstream dashed, tokenizers solid
_RD_STYLES = {"bitstream": "--"}


def rd_metrics(data: ReportData) -> list[MetricSpec]:
    """The quality axes of the rate-distortion plot: ranked per-video reconstruction metrics of the main table
    (PSNR, SSIM, LPIPS, VMAF when scored, plugins), from their metadata."""
    return [s for s in data.ranked if s.per_video and not s.generation and s.table == "quality"]


def rd_points(data: ReportData) -> pd.DataFrame:
    """Long table (curve, suite, row, tokenizer, kind, bpp, metric, value) of every row with a rate.

    A *curve* is a family with a rate knob: the rows of one registered tokenizer name in one suite (a codec's CRFs,
    CoordTok's configurations, VideoFlexTok's budgets), split by rate kind when the family's rows have several
    (OmniTokenizer-DV's nominal and -CV's uncompressed rates are not one curve); a family with one row is one point. ``bpp`` is the row's
    primary rate (:mod:`metrics.rate`: nominal for discrete tokens, uncompressed fp16 for continuous latents, the
    bitstream for codecs).
    """
    multi = len({r.suite for r in data.records}) > 1
    kinds: dict[tuple[str, str], set[str]] = {}
    for record in data.records:
        kinds.setdefault((record.suite, record.tokenizer), set()).add((record.rate or {}).get("kind", ""))
    points = []
    for record in data.records:
        rate = record.rate or {}
        bpp = rate.get("bpp")
        if not isinstance(bpp, (int, float)) or not np.isfinite(bpp) or bpp <= 0:
            continue
        curve = f"{record.suite}/{record.tokenizer}" if multi else record.tokenizer
        if len(kinds[record.suite, record.tokenizer]) > 1:  # rates of different kinds do not lie on one curve
            curve = f"{curve} ({rate.get('kind', '')})"
        for spec in rd_metrics(data):
            value = record.metrics.get(spec.key)
            if isinstance(value, (int, float)) and np.isfinite(value):
                points.append({"curve": curve, "suite": record.suite, "row": record.row, "tokenizer": record.tokenizer,
                               "kind": rate.get("kind", ""), "bpp": float(bpp), "metric": spec.key, "value": float(value)})
    return pd.DataFrame(points, columns=["curve", "suite", "row", "tokenizer", "kind", "bpp", "metric", "value"])


def bd_rate_frame(points: pd.DataFrame, specs: list[MetricSpec], anchor: str = BD_ANCHOR) -> pd.DataFrame:
    """BD-rate (:func:`metrics.rate.bd_rate`, PCHIP) of every curve against the ``anchor`` rows of its suite: one
    line per curve (its points and rate kind), one column per quality metric, ``+12.3%`` or ``n/a (reason)``.
    Empty when no row is of the anchor tokenizer."""
    from metrics.rate import BDRate, bd_rate

    anchors = points[points["tokenizer"] == anchor]
    if anchors.empty:
        return pd.DataFrame()
    lines = []
    for curve, mine in points.groupby("curve", sort=False):
        if mine["tokenizer"].iloc[0] == anchor:
            continue
        line = {"curve": curve, "rate kind": ", ".join(dict.fromkeys(mine["kind"])), "points": mine["row"].nunique()}
        for spec in specs:
            test = mine[mine["metric"] == spec.key]
            ref = anchors[(anchors["metric"] == spec.key) & (anchors["suite"] == mine["suite"].iloc[0])]
            result = (BDRate(None, f"no {anchor} rows") if ref.empty else BDRate(None, "not scored") if test.empty
                      else bd_rate(ref["bpp"], ref["value"], test["bpp"], test["value"]))
            line[spec.header] = str(result)
        lines.append(line)
    return pd.DataFrame(lines)


def _log_bpp_axis(ax) -> None:
    """A log x axis labelled in plain numbers at 1, 2 and 5 x powers of ten (bpp spans a few decades)."""
    from matplotlib.ticker import FuncFormatter, LogLocator

    ax.set_xscale("log")
    plain = FuncFormatter(lambda value, _: f"{value:g}")
    ax.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    ax.xaxis.set_major_formatter(plain)
    ax.xaxis.set_minor_formatter(FuncFormatter(lambda value, _: ""))


@register_plot("rate_distortion")
def rate_distortion(data: ReportData) -> list[Figure]:
    """Quality against bits per pixel (log axis), one curve per family with a rate knob, and the BD-rate table
    against H.265 (:data:`BD_ANCHOR`)."""
    from metrics.rate import MIN_BD_POINTS, rate_spec

    points = rd_points(data)
    missing = sorted({r.row for r in data.records if not (r.rate or {}).get("bpp")})
    if missing:
        data.notes.append(f"rows without a recorded rate (evaluated before bpp existed, issue 27), left out of the "
                          f"rate-distortion plot: {', '.join(missing)}")
    if points.empty:
        return []
    specs = [s for s in rd_metrics(data) if s.key in set(points["metric"])]
    plt = _pyplot()
    curves = list(dict.fromkeys(points["curve"]))
    colors = _colors(curves)
    fig, axes = plt.subplots(1, len(specs), figsize=(4.6 * len(specs), 3.8), squeeze=False)
    for ax, spec in zip(axes[0], specs):
        for curve in curves:
            mine = points[(points["curve"] == curve) & (points["metric"] == spec.key)].sort_values("bpp")
            if mine.empty:
                continue
            kind = ", ".join(dict.fromkeys(mine["kind"]))
            label = curve if curve.endswith(f"({kind})") else f"{curve} ({kind})"  # split curves carry their kind
            ax.plot(mine["bpp"], mine["value"], marker="o", color=colors[curve], label=label,
                    linestyle=_RD_STYLES.get(kind, "-"), linewidth=1.2 if len(mine) > 1 else 0)
        _log_bpp_axis(ax)
        ax.set_xlabel(rate_spec().axis_label.replace(" ↓", ""))
        ax.set_ylabel(spec.axis_label)
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=7)
    fig.suptitle(f"{data.results.name}: rate-distortion (quality vs bits per pixel; dashed: classical codecs)")
    fig.tight_layout()
    path = _save(fig, data.results / "rate_distortion.png")
    table = bd_rate_frame(points, specs)
    if table.empty:
        data.notes.append(f"BD-rate table skipped: no {BD_ANCHOR} (H.265) rows to compare against")
    csv = (write_text_atomic(data.results / "bd_rate.csv", table.to_csv(index=False)),) if not table.empty else ()
    return [Figure(path, "Rate-distortion", "Reconstruction quality against bits per pixel (log axis): one line per "
                   "family with a rate knob (rows of one registered tokenizer: codec CRFs, configurations, token budgets), "
                   "a point otherwise. bpp is the row's primary rate: nominal tokens x log2(codebook size) for discrete "
                   "tokens (the entropy rate is in the leaderboard), latent values x 16 bits (uncompressed fp16) for "
                   "continuous latents, the measured bitstream for classical codecs (dashed).",
                   table=table, table_title=f"BD-rate against H.265 ({BD_ANCHOR})", files=csv, table_anchor="bd-rate",
                   table_note=(f"Bjontegaard delta rate (VCEG-M33, VCEG-AM91) with piecewise cubic Hermite (PCHIP) "
                               f"interpolation of log10(bpp) as a function of quality, integrated over the quality range "
                               f"both curves cover, as in the JCT-VC/JVET common test conditions sheets "
                               f"(JCTVC-L1100, JVET-T2010) and the AOM CTC: the mean bit-rate difference at equal quality, "
                               f"negative = fewer bits than H.265. PCHIP needs {MIN_BD_POINTS}+ points per curve (2 points: "
                               f"a straight line in log-rate; the classic cubic fit needs 4); 'n/a' where a curve has fewer, "
                               f"repeats a quality value or the quality ranges do not overlap."))]


def analysis_metrics(data: ReportData) -> list[MetricSpec]:
    """Per-video ranked metrics plotted against the B.3 features (at most :data:`MAX_ANALYSIS_METRICS`)."""
    return [s for s in data.ranked if s.per_video and not s.generation][:MAX_ANALYSIS_METRICS]


#: rows of panels of the analysis plot
MAX_ANALYSIS_METRICS = 3


def correlation_frame(correlations: pd.DataFrame, titles: dict[str, str]) -> pd.DataFrame:
    """One line per (row, metric): Spearman rho (3 decimals) against dynamics and frequency, and n."""
    if correlations.empty:
        return pd.DataFrame()
    names = {"dynamics_0_100": "dynamics (0-100)", "frequency": "frequency"}
    lines = []
    for (row, metric), group in correlations.groupby(["row", "metric"], sort=False):
        line = {"tokenizer": row, "metric": titles.get(metric, metric)}
        for _, entry in group.iterrows():
            rho = entry["rho"]
            line[f"ρ vs {names[entry['feature']]}"] = f"{rho:+.3f}" if np.isfinite(rho) else "n/a"
        line["videos"] = int(group["n"].max())
        lines.append(line)
    return pd.DataFrame(lines)


@register_plot("analysis")
def analysis(data: ReportData) -> list[Figure]:
    """Per-video quality against dynamics and frequency (CoordTok supp. B.3), with Spearman's rho per row."""
    specs = analysis_metrics(data)
    tables = {r.row: data.per_video(r) for r in data.records}
    points = analysis_table({row: t for row, t in tables.items() if t is not None}, [s.key for s in specs])
    if points.empty or not (points["dynamics_0_100"].notna().any() or points["frequency"].notna().any()):
        data.notes.append("analysis plot skipped: add `dynamics` and `frequency` to evaluate.metrics")
        return []
    path, correlations = write_analysis_plot(points, data.results / "analysis.png",
                                             f"{data.results.name}: per-video quality vs dynamics and frequency (CoordTok supp. B.3)",
                                             {s.key: s.axis_label for s in specs})
    csv = write_text_atomic(data.results / "analysis_correlations.csv", correlations.to_csv(index=False))
    return [Figure(path, "Analysis: quality vs dynamics and frequency (CoordTok supp. B.3)",
                   "Per-video quality against dynamics magnitude (log mean consecutive-frame RGB L2 distance, min-max "
                   "standardized to 0-100 over the evaluation clips) and frequency magnitude (mean Sobel gradient "
                   "magnitude); lines are least-squares trends, legends give Spearman's ρ.",
                   table=correlation_frame(correlations, {s.key: s.title for s in specs}),
                   table_title="Spearman correlations (per-video quality vs analysis features)", files=(csv,),
                   table_anchor="correlations")]


def cost_tables(results: Path) -> list[Path]:
    """Cost-vs-length tables of a results folder: ``cost_vs_length*.csv`` there or in ``costs/`` (``harness profile``)."""
    results = Path(results)
    found = sorted(results.glob("cost_vs_length*.csv")) + sorted(results.glob("costs/*.csv"))
    return list(dict.fromkeys(found))


@register_plot("cost_vs_length")
def cost_vs_length(data: ReportData) -> list[Figure]:
    """A PNG for every cost table with a length column and FLOPs/memory columns.

    The profile's own ``<table>.png`` is reused when it is at least as new as
    its table; otherwise ``<results>/cost_vs_length*.png`` is drawn here.
    """
    results = data.results
    tables = cost_tables(results)
    if not tables:
        data.notes.append("cost vs video length not measured for this folder (run `python -m harness profile` to add it)")
    figures = []
    for table_path in tables:
        try:
            table = pd.read_csv(table_path)
        except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
            log.warning("report: cannot read cost table %s: %s", table_path, err)
            continue
        name = table_path.stem if table_path.stem.startswith("cost_vs_length") else f"cost_vs_length_{table_path.stem}"
        own = table_path.with_suffix(".png")  # ``harness profile`` draws its own plot beside its table
        if own.is_file() and own.stat().st_mtime >= table_path.stat().st_mtime:
            path = own
        else:
            path = write_cost_plot(table, results / f"{name}.png", f"{results.name}: training cost vs video length ({table_path.name})")
        if path is None:
            log.warning("report: %s has no length column or FLOPs/memory columns; not plotted", table_path)
            continue
        figures.append(Figure(path, "Training cost vs video length", "FLOPs and peak memory of one training step (harness profile)."))
    return figures


def loss_histories(data: ReportData) -> dict[str, pd.DataFrame]:
    """``{label: losses.csv table}`` of every tokenizer and generator of the records (each run folder once)."""
    histories: dict[str, pd.DataFrame] = {}
    for record in data.records:
        if record.folder is None:
            continue
        files = record.run_folder
        for label, path in ((record.tokenizer_id, files.losses), (f"{record.tokenizer_id} generator", files.generation_losses)):
            if label not in histories and path.is_file():
                table = pd.read_csv(path)
                if len(table):
                    histories[label] = table
    return histories


@register_plot("loss_curves")
def loss_curves(data: ReportData) -> list[Figure]:
    """One panel per tokenizer and generator: every training loss against the step (log scale when positive)."""
    histories = loss_histories(data)
    if not histories:
        data.notes.append("no loss curves: the run folders hold no losses.csv (written by training since 2026-12)")
        return []
    plt = _pyplot()
    columns = min(3, len(histories))
    rows = -(-len(histories) // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(4.4 * columns, 3.0 * rows), squeeze=False)
    for ax, (label, table) in zip(axes.flat, histories.items()):
        losses = [c for c in table.columns if c not in ("step", "lr")]
        for name in losses:
            ax.plot(table["step"], table[name], label=name, linewidth=1.0)
        if all((table[c].dropna() > 0).all() for c in losses):
            ax.set_yscale("log")
        ax.set_title(label, fontsize=9)
        ax.set_xlabel("step")
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(histories):]:
        ax.axis("off")
    fig.tight_layout()
    path = _save(fig, data.results / "loss_curves.png")
    return [Figure(path, "Training loss curves", "Per-step training losses of every tokenizer and generator "
                   "(losses.csv in each run folder; averaged over processes).")]
