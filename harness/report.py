"""Leaderboards, plots and the per-suite report, built from run folders.

Everything here reads only the files the runner wrote (``metrics.json`` and
``per_video.csv`` of every evaluated row, ``generation/metrics.json`` of every
tokenizer, ``eval_clips.json`` and ``recon/*.npy`` for the gallery, and
``cost_vs_length*.csv`` tables of the cost profile), never a model, so
reports can be rebuilt at any time (``python -m harness report results/<suite>``).

Public entry points:

* :func:`write_reports` (end of ``harness run``): leaderboard, plots, ``report.md`` and ``report.html``;
* :func:`write_leaderboard`, :func:`write_plot`: the leaderboard and the quality-vs-tokens plot alone;
* :func:`leaderboard_rows` / :func:`render_leaderboard`: numbers and text of a leaderboard over any
  number of suites and runs (``python -m harness leaderboard results/ --metric ... --sort ... --format ...``).

Intervals: PSNR, SSIM and LPIPS show ``mean ± half-width`` of a 95%
percentile-bootstrap interval over videos (10,000 resamples, seed 0,
:func:`harness.reports.stats.bootstrap_ci`); FVD with ``groups = K > 1`` shows
the pooled value plus the mean ± std over the K disjoint groups (MAGVIT).
"""
from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any, Iterable

import pandas as pd

from harness.data.cache import write_text_atomic
from harness.reports.stats import BOOTSTRAP_METRICS, lower_is_better, quality_intervals

log = logging.getLogger("harness.report")

#: FVD values from fewer videos than this are marked not comparable (common_metrics issue 26; eval_anchors A.5 item 8)
FVD_MIN_COMPARABLE_N = 256
#: bootstrap settings of every leaderboard interval
CI_CONFIDENCE, CI_RESAMPLES, CI_SEED = 0.95, 10_000, 0

QUALITY_COLUMNS = [("psnr", "PSNR ↑"), ("ssim", "SSIM ↑"), ("lpips", "LPIPS ↓"), ("lpips_vgg", "LPIPS-VGG ↓")]
_FVD_SUFFIXES = ("_n", "_n_real", "_std", "_mean", "_comparable")
IDENTITY = ["suite", "row", "tokenizer_id", "tokenizer", "budget", "tokens_per_video", "compression_ratio", "parameters"]


# ----------------------------------------------------------------------------- records


def _suite_dir(folder: Path, root: Path) -> Path:
    """The nearest folder at or above ``folder`` (not above ``root``'s parent) holding ``suite.json``."""
    for parent in [folder, *folder.parents]:
        if (parent / "suite.json").is_file():
            return parent
        if parent == root.parent:
            break
    return root


def load_records(results: Path) -> list[dict[str, Any]]:
    """Every row's ``metrics.json`` under ``results`` (recursively), with its generation results joined.

    Each record gains ``_folder`` (its run folder), ``_suite_dir`` (the folder
    holding its ``suite.json``) and ``suite`` (a label unique over ``results``).
    """
    results = Path(results)
    records = []
    for path in sorted(results.rglob("metrics.json")):
        if path.parent.name == "generation":
            continue
        record = json.loads(path.read_text())
        if not isinstance(record, dict) or "row" not in record or "metrics" not in record:
            continue
        record["_folder"] = str(path.parent)
        record["_suite_dir"] = str(_suite_dir(path.parent, results))
        generation = path.parent / "generation" / "metrics.json"
        if record.get("budget") is not None:
            generation = path.parents[2] / "generation" / "metrics.json"
        if generation.is_file():
            record["generation"] = json.loads(generation.read_text())
        records.append(record)
    names: dict[str, set[str]] = {}
    for record in records:
        names.setdefault(Path(record["_suite_dir"]).name, set()).add(record["_suite_dir"])
    for record in records:
        folder = Path(record["_suite_dir"])
        unique = len(names[folder.name]) == 1
        if unique or folder == results:
            record["suite"] = folder.name
        else:
            record["suite"] = str(folder.relative_to(results)) if folder.is_relative_to(results) else str(folder)
    return records


def fvd_columns(records: list[dict[str, Any]]) -> list[str]:
    """Names of the reconstruction FVD metrics (``fvd_16f``...) any record holds."""
    names = set()
    for record in records:
        names |= {k for k in record["metrics"] if k.startswith("fvd_") and not k.endswith(_FVD_SUFFIXES)
                  and isinstance(record["metrics"][k], (int, float))}
    return sorted(names)


def _gfvd_columns(records: list[dict[str, Any]]) -> list[str]:
    names = set()
    for record in records:
        for key, value in (record.get("generation") or {}).items():
            if key.startswith("gfvd_") and not key.endswith(_FVD_SUFFIXES) and isinstance(value, (int, float)):
                names.add(key)
    return sorted(names)


# ----------------------------------------------------------------------------- numbers


def leaderboard_rows(records: list[dict[str, Any]], intervals: bool = True) -> list[dict[str, Any]]:
    """One flat dict of numbers per evaluated row (JSON/CSV friendly).

    Keys: :data:`IDENTITY`; per quality metric ``m`` (psnr, ssim, lpips,
    lpips_vgg) ``m``, ``m_ci_low``, ``m_ci_high``, ``m_ci_half_width`` (95%
    bootstrap over videos from ``per_video.csv``; ``intervals=False`` skips
    them); per FVD ``f`` ``f``, ``f_n``, ``f_comparable`` and with groups
    ``f_mean``, ``f_std``, ``f_groups``; generation ``gfvd_*`` likewise; codebook
    usage; training and throughput costs.
    """
    fvds, gfvds = fvd_columns(records), _gfvd_columns(records)
    rows = []
    for record in records:
        metrics, costs = record["metrics"], record.get("costs", {})
        row: dict[str, Any] = {key: record.get(key) for key in IDENTITY}
        cis = quality_intervals(record, BOOTSTRAP_METRICS, confidence=CI_CONFIDENCE, resamples=CI_RESAMPLES,
                                seed=CI_SEED) if intervals else {}
        for key, _ in QUALITY_COLUMNS:
            if metrics.get(key) is None:
                continue
            row[key] = metrics[key]
            if key in cis:
                row.update({f"{key}_ci_low": cis[key].low, f"{key}_ci_high": cis[key].high,
                            f"{key}_ci_half_width": cis[key].half_width, f"{key}_n": cis[key].n})
        generation = record.get("generation") or {}
        conventions = {**record.get("protocol", {}).get("metrics", {}),
                       **{f"g{k}": v for k, v in (generation.get("gfvd_protocol") or {}).items()}}
        for source, names in ((metrics, fvds), (generation, gfvds)):
            for name in names:
                if source.get(name) is None:
                    continue
                row[name] = source[name]
                n = source.get(f"{name}_n")
                if n is not None:
                    row[f"{name}_n"] = n
                    row[f"{name}_comparable"] = n >= FVD_MIN_COMPARABLE_N
                if f"{name}_std" in source:
                    row[f"{name}_mean"] = source.get(f"{name}_mean")
                    row[f"{name}_std"] = source[f"{name}_std"]
                    groups = (conventions.get(name) or {}).get("groups") if isinstance(conventions.get(name), dict) else None
                    if groups:
                        row[f"{name}_groups"] = groups
        gen = (record.get("generation") or {}).get("generator") or {}
        if gen:
            row.update({"generator": gen.get("name"), "generator_params": gen.get("params"),
                        "generator_train_step_time_s": gen.get("train_step_time_s"), "generator_peak_memory_mb": gen.get("peak_memory_mb")})
        if record.get("codebook"):
            row["codebook_usage"] = record["codebook"].get("codebook_usage")
            row["codebook_perplexity"] = record["codebook"].get("codebook_perplexity")
        for key in ("train_step_time_s", "peak_memory_mb", "encode_videos_per_s", "decode_videos_per_s"):
            if costs.get(key) is not None:
                row[key] = costs[key]
        # a NaN or inf (e.g. an interval of one video, or a file written before the finite checks) is shown as missing
        rows.append({k: v for k, v in row.items() if _finite(v) or not isinstance(v, float)})
    return rows


def metric_keys(rows: list[dict[str, Any]]) -> list[str]:
    """Headline metric names present in ``rows``, in display order (quality, rFVD, gFVD)."""
    present = set().union(*(row.keys() for row in rows)) if rows else set()
    quality = [key for key, _ in QUALITY_COLUMNS if key in present]
    fvds = sorted(k for k in present if k.startswith("fvd_") and not k.endswith(_FVD_SUFFIXES + ("_groups",)))
    gfvds = sorted(k for k in present if k.startswith("gfvd_") and not k.endswith(_FVD_SUFFIXES + ("_groups",)))
    return quality + fvds + gfvds


def sort_rows(rows: list[dict[str, Any]], metric: str | None = None) -> list[dict[str, Any]]:
    """Best first by ``metric`` (direction from :func:`lower_is_better`; rows without it last), else by suite, tokens, row.

    Raises:
        KeyError: when no row has ``metric``.
    """
    if metric is None:
        return sorted(rows, key=lambda r: (r.get("suite") or "", r.get("tokens_per_video") or 0, r["row"]))
    if not any(_finite(r.get(metric)) for r in rows):
        raise KeyError(f"no row has metric {metric!r}; available: {', '.join(metric_keys(rows)) or 'none'}")
    sign = 1 if lower_is_better(metric) else -1
    return sorted(rows, key=lambda r: (0, sign * r[metric]) if _finite(r.get(metric)) else (1, 0))


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


# ----------------------------------------------------------------------------- text


def _number(value: Any, spec: str, suffix: str = "") -> str:
    """``value`` formatted with ``spec``, or "–" when it is missing, NaN or infinite (never shown as a value)."""
    return f"{value:{spec}}{suffix}" if _finite(value) else "–"


def _quality_text(row: dict[str, Any], key: str) -> str:
    value = row.get(key)
    if not _finite(value):
        return "–"
    digits = 2 if key == "psnr" else 4
    if _finite(row.get(f"{key}_ci_half_width")):
        return f"{value:.{digits}f} ± {row[f'{key}_ci_half_width']:.{digits}f}"
    return f"{value:.{digits}f}"


def _fvd_text(row: dict[str, Any], name: str) -> str:
    value = row.get(name)
    if not _finite(value):
        return "–"
    text = f"{value:.1f}"
    n = row.get(f"{name}_n")
    if n is not None:
        text += f" (N={n:g}{'' if n >= FVD_MIN_COMPARABLE_N else ', not comparable'})"
    if _finite(row.get(f"{name}_std")):
        groups = row.get(f"{name}_groups")
        text += f"; {groups or 'K'} groups: {_number(row.get(f'{name}_mean'), '.1f')} ± {row[f'{name}_std']:.1f}"
    return text


def _fvd_title(name: str) -> str:
    if name.startswith("gfvd_"):
        return f"gFVD {name[5:]} ↓"
    return f"rFVD {name[4:]} ↓"


def render_leaderboard(rows: list[dict[str, Any]], metrics: Iterable[str] | None = None, fmt: str = "markdown") -> str:
    """Render leaderboard ``rows`` (:func:`leaderboard_rows`, already sorted) as markdown, CSV or JSON.

    Args:
        rows: numeric rows.
        metrics: headline metrics to show (default: all present, plus costs).
        fmt: ``"markdown"`` (value ± half-width text), ``"csv"`` or ``"json"`` (numbers,
            with each shown metric's companions such as ``psnr_ci_low``).

    Raises:
        ValueError: unknown ``fmt`` or unknown metric names.
    """
    available = metric_keys(rows)
    chosen = list(metrics) if metrics else available
    unknown = [m for m in chosen if m not in available]
    if unknown:
        raise ValueError(f"unknown metric(s) {unknown}; available: {', '.join(available) or 'none'}")
    multi_suite = len({r.get("suite") for r in rows}) > 1
    if fmt in ("csv", "json"):
        keep = [k for k in IDENTITY if multi_suite or k != "suite"]
        records = []
        for row in rows:
            out = {k: row.get(k) for k in keep}
            for metric in chosen:
                out.update({k: v for k, v in row.items() if _belongs_to(k, metric, available)})
            if not metrics:
                out.update({k: v for k, v in row.items() if k not in out and k not in IDENTITY})
            records.append(out)
        if fmt == "json":
            return json.dumps(records, indent=2, default=str) + "\n"
        return pd.DataFrame(records).to_csv(index=False)
    if fmt != "markdown":
        raise ValueError(f"format must be markdown, csv or json, got {fmt!r}")
    return display_frame(rows, chosen, extras=not metrics, suite=multi_suite).to_markdown(index=False)


def _belongs_to(key: str, metric: str, available: list[str]) -> bool:
    """Whether ``key`` is ``metric`` or one of its companions (``psnr_ci_low``), not another metric's (``lpips_vgg``)."""
    owner = max((m for m in available if key == m or key.startswith(f"{m}_")), key=len, default=None)
    return owner == metric


def display_frame(rows: list[dict[str, Any]], metrics: list[str] | None = None, extras: bool = True,
                  suite: bool = False) -> pd.DataFrame:
    """Formatted leaderboard (strings) of ``rows``: identity, ``metrics`` (value ± half-width), costs when ``extras``."""
    metrics = metric_keys(rows) if metrics is None else metrics
    titles = dict(QUALITY_COLUMNS)
    out = []
    for row in rows:
        line = {"suite": row.get("suite")} if suite else {}
        line.update({"tokenizer": row["row"], "model": row["tokenizer"], "tokens/video": row["tokens_per_video"],
                     "pixels/token": f"{row['compression_ratio']:.1f}" if row.get("compression_ratio") else "–",
                     "params (M)": f"{row['parameters'] / 1e6:.2f}" if row.get("parameters") else "–"})
        for metric in metrics:
            if metric in titles:
                line[titles[metric]] = _quality_text(row, metric)
            else:
                line[_fvd_title(metric)] = _fvd_text(row, metric)
        if extras:
            if row.get("generator"):
                line["generator"] = (f"{row['generator']} {(row.get('generator_params') or 0) / 1e6:.1f}M, "
                                     f"{_number(row.get('generator_train_step_time_s'), '.3f', ' s/step')}, "
                                     f"{_number(row.get('generator_peak_memory_mb'), '.0f', ' MB')}")
            if _finite(row.get("codebook_usage")):
                line["codebook use"] = f"{row['codebook_usage']:.1%} (ppl {_number(row.get('codebook_perplexity'), '.0f')})"
            line["train s/step"] = f"{row['train_step_time_s']:.3f}" if row.get("train_step_time_s") else "–"
            line["train peak mem (MB)"] = _number(row.get("peak_memory_mb"), ".0f")
            line["enc videos/s"] = f"{row['encode_videos_per_s']:.2f}" if row.get("encode_videos_per_s") else "–"
            line["dec videos/s"] = f"{row['decode_videos_per_s']:.2f}" if row.get("decode_videos_per_s") else "–"
        out.append(line)
    return pd.DataFrame(out).fillna("–")


def leaderboard_frame(records: list[dict[str, Any]]) -> pd.DataFrame:
    """One formatted row per evaluated tokenizer configuration (sorted by tokens per video)."""
    rows = sort_rows(leaderboard_rows(records))
    return display_frame(rows, suite=len({r.get("suite") for r in rows}) > 1)


def protocol_lines(records: list[dict[str, Any]]) -> list[str]:
    """The evaluation protocol shared by the rows (or each distinct one), as markdown list items."""
    lines, seen = [], set()
    for record in records:
        p = record["protocol"]
        text = (f"dataset `{p['dataset']}`" + (f" fold {p['fold']}" if p.get("fold") else "") + f" ({p['split']}), "
                f"{p['num_videos']} evaluation clips of {p['frames']} frames (stride {p['frame_stride']}) at "
                f"{p['resolution']}x{p['resolution']}, seed {p['seed']}, code {p['code_version']}")
        if text not in seen:
            seen.add(text)
            lines.append(f"- {text}")
    conventions: dict[str, str] = {}
    for record in records:
        for key, value in record["protocol"].get("metrics", {}).items():
            conventions.setdefault(key, value if isinstance(value, str) else json.dumps(value, sort_keys=True))
    lines += [f"- {key}: {value}" for key, value in sorted(conventions.items())]
    padded = sorted({(r["tokenizer_id"], (r.get("token_info") or {}).get("padded_frames")) for r in records
                     if (r.get("token_info") or {}).get("padded_frames")})
    lines += [f"- {tid}: videos padded by {n} repeated last frame(s) to the tokenizer's native length and the reconstruction "
              f"cropped back before scoring" for tid, n in padded]
    kinds = sorted({(r.get("costs") or {}).get("memory_kind") for r in records} - {None})
    lines += [f"- train peak mem (MB): {kind}" for kind in kinds]
    cards = {json.dumps(r["environment"], sort_keys=True) for r in records if r.get("environment")}
    lines += ["- environment: " + ", ".join(f"{k} {v}" for k, v in sorted(json.loads(card).items())) for card in sorted(cards)]
    lines += [f"- values sha256 of {r['row']}: metrics `{r['metrics_sha256'][:16]}`"
              + (f", generation `{r['generation']['gfvd_values_sha256'][:16]}`" if (r.get("generation") or {}).get("gfvd_values_sha256") else "")
              for r in records if r.get("metrics_sha256")]
    return lines


def leaderboard_markdown(records: list[dict[str, Any]], title: str) -> str:
    """The leaderboard page: table, interval note, protocol."""
    table = leaderboard_frame(records).to_markdown(index=False)
    return "\n".join([f"# Leaderboard: {title}", "", table, "", interval_note(), "", "## Protocol", "", *protocol_lines(records),
                      f"- FVD values from fewer than {FVD_MIN_COMPARABLE_N} videos are marked not comparable.", ""])


def interval_note() -> str:
    return (f"PSNR, SSIM and LPIPS: mean over videos ± half-width of the {CI_CONFIDENCE:.0%} percentile-bootstrap "
            f"interval over videos ({CI_RESAMPLES:,} resamples, seed {CI_SEED}). FVD with groups: pooled value; "
            f"mean ± std over disjoint groups.")


def write_leaderboard(results: Path) -> Path:
    """Write ``<results>/leaderboard.md`` (every run under ``results``, recursively); returns its path.

    Raises:
        FileNotFoundError: when ``results`` holds no ``metrics.json``.
    """
    results = Path(results)
    records = load_records(results)
    if not records:
        raise FileNotFoundError(f"no metrics.json under {results}: run a suite first")
    path = results / "leaderboard.md"
    write_text_atomic(path, leaderboard_markdown(records, results.name))
    return path


# ----------------------------------------------------------------------------- plots


def quality_points(records: list[dict[str, Any]], intervals: bool = True) -> pd.DataFrame:
    """Long table (row, tokenizer, tokens, metric, value, low, high) of PSNR, SSIM, LPIPS and rFVD for the Pareto plot.

    ``low``/``high`` are the 95% bootstrap interval over videos (NaN without ``per_video.csv`` or ``intervals``).
    """
    points = []
    keys = ["psnr", "ssim", "lpips", *fvd_columns(records)]
    for record in records:
        cis = quality_intervals(record, ("psnr", "ssim", "lpips"), confidence=CI_CONFIDENCE, resamples=CI_RESAMPLES,
                                seed=CI_SEED) if intervals else {}
        for key in keys:
            if record["metrics"].get(key) is not None:
                ci = cis.get(key)
                points.append({"row": record["row"], "tokenizer": record["tokenizer_id"], "tokens": record["tokens_per_video"],
                               "metric": key, "value": record["metrics"][key],
                               "low": ci.low if ci else float("nan"), "high": ci.high if ci else float("nan")})
    return pd.DataFrame(points, columns=["row", "tokenizer", "tokens", "metric", "value", "low", "high"])


def write_plot(results: Path) -> Path:
    """Write ``<results>/quality_vs_tokens.png``: quality vs tokens per video, Pareto front marked; returns its path.

    Raises:
        FileNotFoundError: when ``results`` holds no quality metrics.
    """
    from harness.reports.plots import write_pareto_plot

    results = Path(results)
    frame = quality_points(load_records(results))
    if frame.empty:
        raise FileNotFoundError(f"no quality metrics under {results}: run a suite first")
    path, _ = write_pareto_plot(frame, results / "quality_vs_tokens.png",
                                f"{results.name}: quality vs tokens per video (bars: 95% bootstrap CI; circled: Pareto front)")
    return path


def analysis_metrics(records: list[dict[str, Any]]) -> list[str]:
    """Per-video metrics of the B.3 analysis: PSNR and LPIPS (SSIM when LPIPS was not measured)."""
    present = set().union(*(r["metrics"].keys() for r in records)) if records else set()
    chosen = [m for m in ("psnr", "lpips") if m in present]
    if "lpips" not in present and "ssim" in present:
        chosen.append("ssim")
    return chosen


def write_analysis(results: Path, records: list[dict[str, Any]] | None = None) -> tuple[Path | None, pd.DataFrame]:
    """Write ``<results>/analysis.png`` and ``analysis_correlations.csv`` (Spearman rho per row, metric, feature).

    Returns ``(None, empty frame)`` when no per-video table holds dynamics or frequency.
    """
    from harness.reports.plots import write_analysis_plot
    from harness.reports.stats import analysis_table

    results = Path(results)
    records = load_records(results) if records is None else records
    points = analysis_table(records, analysis_metrics(records))
    if points.empty or not (points["dynamics_0_100"].notna().any() or points["frequency"].notna().any()):
        return None, pd.DataFrame()
    path, correlations = write_analysis_plot(points, results / "analysis.png",
                                             f"{results.name}: per-video quality vs dynamics and frequency (CoordTok supp. B.3)")
    write_text_atomic(results / "analysis_correlations.csv", correlations.to_csv(index=False))
    return path, correlations


def cost_tables(results: Path) -> list[Path]:
    """Cost-vs-length tables of a results folder: ``cost_vs_length*.csv`` there or in ``costs/`` (``harness profile``)."""
    results = Path(results)
    found = sorted(results.glob("cost_vs_length*.csv")) + sorted(results.glob("costs/*.csv"))
    return list(dict.fromkeys(found))


def write_cost_plots(results: Path) -> list[Path]:
    """A PNG for every cost table with a length column and FLOPs/memory columns.

    The profile's own ``<table>.png`` is reused when it is at least as new as
    its table; otherwise ``<results>/cost_vs_length*.png`` is drawn here.
    """
    from harness.reports.plots import write_cost_plot

    paths = []
    for table_path in cost_tables(results):
        try:
            table = pd.read_csv(table_path)
        except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
            log.warning("report: cannot read cost table %s: %s", table_path, err)
            continue
        name = table_path.stem if table_path.stem.startswith("cost_vs_length") else f"cost_vs_length_{table_path.stem}"
        own = table_path.with_suffix(".png")  # ``harness profile`` draws its own plot beside its table
        if own.is_file() and own.stat().st_mtime >= table_path.stat().st_mtime:
            paths.append(own)
            continue
        path = write_cost_plot(table, Path(results) / f"{name}.png", f"{Path(results).name}: training cost vs video length ({table_path.name})")
        if path is not None:
            paths.append(path)
        else:
            log.warning("report: %s has no length column or FLOPs/memory columns; not plotted", table_path)
    return paths


# ----------------------------------------------------------------------------- report


def write_reports(results: Path) -> list[Path]:
    """Leaderboard, plots, gallery, ``report.md`` and ``report.html`` of a suite's results folder; returns the paths.

    Raises:
        FileNotFoundError: when ``results`` holds neither run results nor cost tables.
    """
    from harness.reports.document import write_report

    return write_report(Path(results))
