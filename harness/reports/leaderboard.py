"""Leaderboard numbers and text, the cost table and the protocol card, from :class:`ReportData`.

Every metric column, its title, direction, decimals, interval and
"not comparable below N" come from the metric's metadata through the registry
(:class:`harness_core.registry.MetricSpec`); nothing here knows a metric by name.

Intervals: per-video metrics show ``mean ± half-width`` of a 95%
percentile-bootstrap interval over videos (10,000 resamples, seed 0,
:func:`harness.reports.stats.bootstrap_ci`); set metrics with ``groups = K > 1``
(FVD) show the pooled value plus the mean ± std over the K disjoint groups (MAGVIT).
"""
from __future__ import annotations

import json
import math
from typing import Any, Iterable

import pandas as pd

from harness.records import RunRecord
from harness_core.errors import ResultsError
from harness_core.registry import MetricSpec
from harness.reports.data import CI_CONFIDENCE, CI_RESAMPLES, CI_SEED, ReportData
from metrics.rate import BitsPerPixel, rate_text

#: the rate columns of a row (:mod:`metrics.rate`): bits per pixel, its kind, and for discrete tokens the entropy rate
RATE_COLUMNS = ("bpp", "bpp_kind", "bpp_entropy")
IDENTITY = ["suite", "row", "tokenizer_id", "tokenizer", "budget", "tokens_per_video", *RATE_COLUMNS, "pixels_per_token",
            "parameters"]
#: companions of a metric value in the numeric rows (``psnr_ci_low``, ``fvd_16f_n``...)
COMPANIONS = ("_ci_low", "_ci_high", "_ci_half_width", "_n", "_n_real", "_comparable", "_mean", "_std", "_groups")
#: the main table's rate column: value and kind (``0.03125 nominal, 0.02871 entropy``), :class:`metrics.rate.BitsPerPixel`
BPP_HEADER = f"{BitsPerPixel.title} ({BitsPerPixel.unit})"
COST_KEYS = ("train_step_time_s", "peak_memory_mb", "encode_videos_per_s", "decode_videos_per_s")


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


# ----------------------------------------------------------------------------- numbers


def leaderboard_rows(records: "list[RunRecord] | ReportData", intervals: bool = True) -> list[dict[str, Any]]:
    """One flat dict of numbers per evaluated row (JSON/CSV friendly).

    Keys: :data:`IDENTITY`; per metric column ``m`` (every metric with a direction,
    see :attr:`ReportData.ranked`) ``m`` and, per-video, ``m_ci_low``,
    ``m_ci_high``, ``m_ci_half_width``, ``m_n`` (95% bootstrap over videos;
    ``intervals=False`` skips them) or, set-level, ``m_n``, ``m_comparable``
    and with groups ``m_mean``, ``m_std``, ``m_groups``; generation columns
    ``g<name>`` likewise; codebook usage; generator, training and throughput costs.
    """
    data = ReportData.of(records)
    rows = []
    for record in data.records:
        row: dict[str, Any] = {"suite": record.suite}
        row.update({key: getattr(record, key) for key in IDENTITY[1:] if key not in RATE_COLUMNS})
        row.update(rate_columns(record))
        generation = record.generation.values if record.generation else {}
        conventions = {**record.protocol.metrics, **{f"g{k}": v for k, v in (record.generation.protocol if record.generation else {}).items()}}
        for spec in data.ranked:
            source = generation if spec.generation else record.metrics
            if source.get(spec.key) is None:
                continue
            row[spec.key] = source[spec.key]
            if spec.per_video and intervals:
                ci = data.interval(record, spec.key)
                if ci is not None:
                    row.update({f"{spec.key}_ci_low": ci.low, f"{spec.key}_ci_high": ci.high,
                                f"{spec.key}_ci_half_width": ci.half_width, f"{spec.key}_n": ci.n})
            if not spec.per_video:
                n = source.get(f"{spec.key}_n")
                if n is not None:
                    row[f"{spec.key}_n"] = n
                    row[f"{spec.key}_comparable"] = spec.comparable(n)
                if f"{spec.key}_std" in source:
                    row[f"{spec.key}_mean"] = source.get(f"{spec.key}_mean")
                    row[f"{spec.key}_std"] = source[f"{spec.key}_std"]
                    convention = conventions.get(spec.key)
                    groups = convention.get("groups") if isinstance(convention, dict) else None
                    if groups:
                        row[f"{spec.key}_groups"] = groups
        if record.latent_values and record.protocol.frames and record.protocol.resolution:
            # input values / latent values (3 T H W / (tokens x latent channels)), as video VAEs are compared
            row["value_compression"] = 3 * record.protocol.frames * record.protocol.resolution ** 2 / record.latent_values
        if record.pretrained:
            row["pretrained"] = True
            row["weights"] = _weights_text(record.weights)
        gen = record.generation.generator if record.generation else {}
        if gen:
            row.update({"generator": gen.get("name"), "generator_params": gen.get("params"),
                        "generator_train_step_time_s": gen.get("train_step_time_s"), "generator_peak_memory_mb": gen.get("peak_memory_mb")})
        if record.codebook:
            row["codebook_usage"] = record.codebook.get("codebook_usage")
            row["codebook_perplexity"] = record.codebook.get("codebook_perplexity")
        for key in COST_KEYS:
            if getattr(record.costs, key) is not None:
                row[key] = getattr(record.costs, key)
        # a NaN or inf (e.g. an interval of one video, or a file written before the finite checks) is shown as missing
        rows.append({k: v for k, v in row.items() if _finite(v) or not isinstance(v, float)})
    return rows


def rate_columns(record: RunRecord) -> dict[str, Any]:
    """``{"bpp", "bpp_kind"[, "bpp_entropy"]}`` of a record with a rate (:mod:`metrics.rate`), else ``{}``."""
    rate = record.rate or {}
    if not _finite(rate.get("bpp")):
        return {}
    out = {"bpp": rate["bpp"], "bpp_kind": rate.get("kind")}
    if _finite(rate.get("bpp_entropy")):
        out["bpp_entropy"] = rate["bpp_entropy"]
    return out


def row_specs(rows: list[dict[str, Any]], specs: Iterable[MetricSpec]) -> list[MetricSpec]:
    """The metric columns present in ``rows``, in display order."""
    present = set().union(*(row.keys() for row in rows)) if rows else set()
    return [s for s in specs if s.key in present]


def sort_rows(rows: list[dict[str, Any]], metric: str | None = None,
              specs: Iterable[MetricSpec] | None = None) -> list[dict[str, Any]]:
    """Best first by ``metric`` in that metric's own direction (rows without it last), else by suite, tokens, row.

    Args:
        specs: the metric columns (default: looked up through the registry from the rows' keys).

    Raises:
        ResultsError: when no row has ``metric``, or the metric has no direction.
    """
    if metric is None:
        return sorted(rows, key=lambda r: (r.get("suite") or "", r.get("tokens_per_video") or 0, r["row"]))
    specs = list(specs) if specs is not None else _specs_of_rows(rows)
    if not any(_finite(r.get(metric)) for r in rows):
        raise ResultsError(f"no row has metric {metric!r}; available: {', '.join(s.key for s in row_specs(rows, specs)) or 'none'}")
    spec = next((s for s in specs if s.key == metric), None)
    if spec is None or spec.higher_is_better is None:
        raise ResultsError(f"metric {metric!r} has no direction (higher_is_better) to sort by")
    sign = -1 if spec.higher_is_better else 1
    return sorted(rows, key=lambda r: (0, sign * r[metric]) if _finite(r.get(metric)) else (1, 0))


def _specs_of_rows(rows: list[dict[str, Any]]) -> list[MetricSpec]:
    """Metric columns of numeric rows without their records: each key that names a metric in the registry."""
    from harness.reports.data import _spec

    out: dict[str, MetricSpec] = {}
    for row in rows:
        for key in row:
            if key in out or key in IDENTITY:
                continue
            spec = _spec(key, key)
            if spec is None and key.startswith("g"):
                base = _spec(key[1:], key[1:])
                spec = base.for_generation() if base is not None and not base.per_video else None
            if spec is not None and spec.ranked:
                out[key] = spec
    return list(out.values())


# ----------------------------------------------------------------------------- text


def _number(value: Any, spec: str, suffix: str = "") -> str:
    """``value`` formatted with ``spec``, or "–" when it is missing, NaN or infinite (never shown as a value)."""
    return f"{value:{spec}}{suffix}" if _finite(value) else "–"


def metric_text(row: dict[str, Any], spec: MetricSpec) -> str:
    """A metric cell: ``value ± half-width`` (per video), ``value (N=n[, not comparable]); K groups: mean ± std`` (set)."""
    value = row.get(spec.key)
    if not _finite(value):
        return "–"
    d = spec.digits
    text = f"{value:.{d}f}"
    if spec.per_video:
        if _finite(row.get(f"{spec.key}_ci_half_width")):
            text += f" ± {row[f'{spec.key}_ci_half_width']:.{d}f}"
        return text
    n = row.get(f"{spec.key}_n")
    if n is not None:
        text += f" (N={n:g}{'' if spec.comparable(n) else ', not comparable'})"
    if _finite(row.get(f"{spec.key}_std")):
        groups = row.get(f"{spec.key}_groups")
        text += f"; {groups or 'K'} groups: {_number(row.get(f'{spec.key}_mean'), f'.{d}f')} ± {row[f'{spec.key}_std']:.{d}f}"
    return text


def display_frame(rows: list[dict[str, Any]], metrics: list[str] | None = None, extras: bool = True, suite: bool = False,
                  specs: Iterable[MetricSpec] | None = None, identity: bool = True) -> pd.DataFrame:
    """Formatted main leaderboard (strings): identity, tokens per video and the metric columns.

    ``extras`` appends the cost columns (:func:`cost_frame`), for callers that want one wide table;
    ``identity=False`` keeps only the row name before the metrics (the second tables, so they fit the page).
    """
    specs = list(specs) if specs is not None else _specs_of_rows(rows)
    chosen = row_specs(rows, specs) if metrics is None else [next(s for s in specs if s.key == m) for m in metrics]
    out = []
    for row in rows:
        line = {"suite": row.get("suite")} if suite else {}
        line["tokenizer"] = row["row"]
        if identity:
            line.update({"model": row["tokenizer"] + _model_note(row),
                         "tokens/video": row["tokens_per_video"],
                         BPP_HEADER: rate_text({"bpp": row.get("bpp"), "kind": row.get("bpp_kind"),
                                                "bpp_entropy": row.get("bpp_entropy")}),
                         "pixels/token": f"{row['pixels_per_token']:.1f}" if row.get("pixels_per_token") else "–",
                         "compression (values)": f"{row['value_compression']:.0f}x" if row.get("value_compression") else "–",
                         "params (M)": f"{row['parameters'] / 1e6:.2f}" if row.get("parameters") else "–"})
        for spec in chosen:
            line[spec.header] = metric_text(row, spec)
        if extras:
            line.update({k: v for k, v in _cost_line(row).items() if k != "tokenizer"})
        out.append(line)
    return pd.DataFrame(out).fillna("–")


def _model_note(row: dict[str, Any]) -> str:
    """`` (classical codec)`` for a row whose rate is a measured bitstream, `` (pretrained)`` for other
    evaluation-only rows, else nothing."""
    if row.get("bpp_kind") == "bitstream":
        return " (classical codec)"
    return " (pretrained)" if row.get("pretrained") else ""


def _weights_text(weights: dict[str, Any] | None) -> str:
    """``source@revision sha256:<12 hex>[, ...]`` of a pretrained row's weights (``weights_identity``)."""
    if not weights:
        return "weights not recorded"
    source = f"{weights.get('source')}" + (f"@{weights['revision']}" if weights.get("revision") else "")
    hashes = ", ".join(f"{name} sha256:{digest[:12]}" for name, digest in sorted((weights.get("sha256") or {}).items()))
    return f"{source} ({hashes})" if hashes else source


def _cost_line(row: dict[str, Any]) -> dict[str, str]:
    line = {"tokenizer": row["row"]}
    line["train s/step"] = f"{row['train_step_time_s']:.3f}" if row.get("train_step_time_s") else "–"
    line["train peak mem (MB)"] = _number(row.get("peak_memory_mb"), ".0f")
    line["enc videos/s"] = f"{row['encode_videos_per_s']:.2f}" if row.get("encode_videos_per_s") else "–"
    line["dec videos/s"] = f"{row['decode_videos_per_s']:.2f}" if row.get("decode_videos_per_s") else "–"
    if row.get("generator"):
        line["generator"] = (f"{row['generator']} {(row.get('generator_params') or 0) / 1e6:.1f}M, "
                             f"{_number(row.get('generator_train_step_time_s'), '.3f', ' s/step')}, "
                             f"{_number(row.get('generator_peak_memory_mb'), '.0f', ' MB')}")
    if _finite(row.get("codebook_usage")):
        line["codebook use"] = f"{row['codebook_usage']:.1%} (ppl {_number(row.get('codebook_perplexity'), '.0f')})"
    return line


def cost_frame(rows: list[dict[str, Any]], suite: bool = False) -> pd.DataFrame:
    """The second table: training, throughput, generator and codebook costs per row."""
    out = [({"suite": row.get("suite")} if suite else {}) | _cost_line(row) for row in rows]
    return pd.DataFrame(out).fillna("–")


def render_leaderboard(rows: list[dict[str, Any]], metrics: Iterable[str] | None = None, fmt: str = "markdown",
                       specs: Iterable[MetricSpec] | None = None) -> str:
    """Render leaderboard ``rows`` (:func:`leaderboard_rows`, already sorted) as markdown, CSV or JSON.

    Args:
        rows: numeric rows.
        metrics: metric columns to show (default: all present; markdown then adds the cost table).
        fmt: ``"markdown"`` (value ± half-width text), ``"csv"`` or ``"json"`` (numbers,
            with each shown metric's companions such as ``psnr_ci_low``).
        specs: the metric columns (default: looked up through the registry from the rows' keys).

    Raises:
        ResultsError: metric names the rows do not have.
        ValueError: unknown ``fmt``.
    """
    specs = list(specs) if specs is not None else _specs_of_rows(rows)
    available = [s.key for s in row_specs(rows, specs)]
    chosen = list(metrics) if metrics else available
    unknown = [m for m in chosen if m not in available]
    if unknown:
        raise ResultsError(f"unknown metric(s) {unknown}; available: {', '.join(available) or 'none'}")
    multi_suite = len({r.get("suite") for r in rows}) > 1
    if fmt in ("csv", "json"):
        keep = [k for k in IDENTITY if multi_suite or k != "suite"]
        out_rows = []
        for row in rows:
            out = {k: row.get(k) for k in keep}
            for metric in chosen:
                out.update({k: v for k, v in row.items() if _belongs_to(k, metric, available)})
            if not metrics:
                out.update({k: v for k, v in row.items() if k not in out and k not in IDENTITY})
            out_rows.append(out)
        if fmt == "json":
            return json.dumps(out_rows, indent=2, default=str) + "\n"
        return pd.DataFrame(out_rows).to_csv(index=False)
    if fmt != "markdown":
        raise ValueError(f"format must be markdown, csv or json, got {fmt!r}")
    text = display_frame(rows, chosen, extras=False, suite=multi_suite, specs=specs).to_markdown(index=False)
    if not metrics:
        text += "\n\nCosts:\n\n" + cost_frame(rows, suite=multi_suite).to_markdown(index=False)
    return text


def _belongs_to(key: str, metric: str, available: list[str]) -> bool:
    """Whether ``key`` is ``metric`` or one of its companions (``psnr_ci_low``), not another metric's (``lpips_vgg``)."""
    owner = max((m for m in available if key == m or (key.startswith(f"{m}_") and key[len(m):] in COMPANIONS)),
                key=len, default=None)
    return owner == metric


def interval_note(specs: Iterable[MetricSpec]) -> str:
    """What the ± and the N of the shown columns mean."""
    specs = list(specs)
    per_video = [s.title for s in specs if s.per_video]
    parts = []
    if per_video:
        parts.append(f"{', '.join(per_video)}: mean over videos ± half-width of the {CI_CONFIDENCE:.0%} percentile-bootstrap "
                     f"interval over videos ({CI_RESAMPLES:,} resamples, seed {CI_SEED}).")
    sets = [s for s in specs if not s.per_video]
    if sets:
        parts.append("Set metrics: value (N = samples); with groups: pooled value; mean ± std over disjoint groups.")
        for n in sorted({s.min_comparable_n for s in sets if s.min_comparable_n}):
            names = ", ".join(s.title for s in sets if s.min_comparable_n == n)
            parts.append(f"{names}: values from fewer than {n} samples are marked not comparable.")
    return " ".join(parts)


# ----------------------------------------------------------------------------- protocol card


def _distinct(values: list[Any]) -> str:
    seen = list(dict.fromkeys(str(v) for v in values if v is not None and v != ""))
    return ", ".join(seen) if seen else "–"


def _eval_rule(protocol) -> str:
    """How the evaluation clips were chosen, from a record's protocol."""
    extra = protocol.extra or {}
    if extra.get("eval_list"):
        return f"the given list {extra['eval_list']}"
    if extra.get("eval_clips"):
        return "drawn from the suite seed: a video uniformly with replacement, then a start inside it"
    return f"{protocol.eval_clips_per_video or 1} per video at seeded positions"


def _tokenizer_line(record: RunRecord) -> str:
    bpp = rate_text(record.rate)
    parts = [record.tokenizer, f"{record.tokens_per_video} tokens/video" if record.tokens_per_video else "",
             f"{bpp} bits/pixel" if bpp != "–" else "",
             f"chunks of {record.protocol.chunk_frames} frames" if record.protocol.chunk_frames else "whole video"]
    padded = (record.token_info or {}).get("padded_frames")
    if padded:
        parts.append(f"videos padded by {padded} repeated last frame(s) to its native length, cropped back before scoring")
    if (record.rate or {}).get("kind") == "bitstream":  # a classical codec: its settings, as its tokens recorded them
        settings = {k: v for k, v in (record.token_info or {}).items() if k != "padded_frames"}
        parts.append("classical codec" + (f" ({', '.join(f'{k} {v}' for k, v in settings.items())})" if settings else ""))
    elif record.pretrained:
        parts.append(f"pretrained weights {_weights_text(record.weights)}")
    if record.tiling_consistency:
        parts.append("tiling check " + ", ".join(f"{k} {v:.2f} dB" for k, v in record.tiling_consistency.items()))
    sha_gen = record.generation.values_sha256 if record.generation else None
    if record.metrics_sha256:
        parts.append(f"values sha256 {record.metrics_sha256[:16]}" + (f", generation {sha_gen[:16]}" if sha_gen else ""))
    return "; ".join(p for p in parts if p)


def _set_sizes(data: ReportData, spec: MetricSpec) -> str:
    """``N = n fake / m real`` of a set metric over the rows (comparability marked), or ``""``."""
    sizes = []
    for record in data.records:
        source = (record.generation.values if record.generation else {}) if spec.generation else record.metrics
        n = source.get(f"{spec.key}_n")
        if n is None:
            continue
        sizes.append(f"N = {n} {'generated' if spec.generation else 'fake'} / {source.get(f'{spec.key}_n_real', '?')} real"
                     + ("" if spec.comparable(n) else f" (N < {spec.min_comparable_n}: not comparable)"))
    return _distinct(sizes) if sizes else ""


def _environment_text(environment: dict[str, Any]) -> str:
    """The environment card in one line; the per-stage backend flags (``stage_backends``) as ``stage: flags``."""
    base = ", ".join(f"{k} {v}" for k, v in sorted(environment.items()) if k != "stage_backends")
    stages = environment.get("stage_backends") or {}
    flags = "; ".join(f"{stage}: " + ", ".join(f"{k} {v}" for k, v in sorted(values.items()) if v is not None)
                      for stage, values in stages.items())
    return base + (f"; stage backends: {flags}" if flags else "")


def protocol_card(data: ReportData) -> list[tuple[str, str]]:
    """The protocol as a card a person reads: ``(label, text)`` lines, one for the suite, the dataset, the clips and
    the evaluation clips, one per tokenizer row, one per metric (its settings as it recorded them, N of set
    metrics), one for generation, then seeds, code version, environment and the kind of the memory figures. Values
    that differ between rows are listed comma-separated."""
    from harness.protocol import metric_settings_text

    records, suite = data.records, data.suite
    protocols = [r.protocol for r in records]
    card: list[tuple[str, str]] = []
    if suite:
        card.append(("suite", suite.get("name", "") + (f": {suite['description']}" if suite.get("description") else "")))
    card.append(("dataset", _distinct([p.dataset + (f" fold {p.fold}" if p.fold else "") + f"; split: {p.split}"
                                       for p in protocols if p.dataset])))
    card.append(("clips", _distinct([f"{p.frames} frames at stride {p.frame_stride}, {p.resolution}x{p.resolution}"
                                     + (f", resize {p.extra['resize']}" if p.extra.get("resize") else "")
                                     + (f", short videos {p.extra['short_videos']} ({p.extra.get('padded_clips', 0)} padded"
                                        f" clips scored on their real frames)" if p.extra.get("short_videos") else "")
                                     for p in protocols])))
    card.append(("evaluation clips", _distinct([f"{p.num_videos} clips, {_eval_rule(p)}" for p in protocols])))
    card += [(f"tokenizer {r.row}", _tokenizer_line(r)) for r in records]
    card.append((f"rate ({BitsPerPixel.title})", f"{BitsPerPixel.definition}. {BitsPerPixel.comparability}"))
    settings: dict[str, Any] = {}
    for record in records:
        for key, value in record.protocol.metrics.items():
            settings.setdefault(key, value)
        for key, value in (record.generation.protocol if record.generation else {}).items():
            settings.setdefault(f"g{key}", value)
    for spec in data.columns:
        text = metric_settings_text(settings.get(spec.key, settings.get(spec.name, "")))
        sizes = "" if spec.per_video else _set_sizes(data, spec)
        direction = {True: "higher is better", False: "lower is better"}.get(spec.higher_is_better, "analysis feature, not ranked")
        card.append((f"metric {spec.title}", "; ".join(t for t in (direction, sizes, text) if t)))
    generation = settings.get("ggeneration")
    if isinstance(generation, dict):
        card.append(("generation", metric_settings_text(generation)))
    seeds = _distinct([p.seed for p in protocols])
    card.append(("seeds", f"suite seed {seeds} (clip choice, training); bootstrap seed {CI_SEED}"))
    card.append(("code version", _distinct([p.code_version for p in protocols])))
    environments = [r.environment for r in records if r.environment]
    if environments:
        card.append(("environment", _distinct([_environment_text(e) for e in environments])))
    kinds = [r.costs.memory_kind for r in records if r.costs.memory_kind]
    if kinds:
        card.append(("train peak mem (MB)", _distinct(kinds)))
    return card


def card_markdown(card: list[tuple[str, str]]) -> list[str]:
    """Markdown list items ``- key: value``."""
    return [f"- {key}: {value}" for key, value in card]


#: the leaderboard's metric tables after the main one (a metric class's ``table``), with their titles
SECOND_TABLES = {"temporal": "Temporal fidelity"}


def table_specs(data: ReportData, table: str = "quality") -> list[MetricSpec]:
    """The ranked metric columns of one leaderboard table (``MetricSpec.table``; unknown tables join the main one)."""
    known = set(SECOND_TABLES)
    return [s for s in data.ranked if (s.table if s.table in known else "quality") == table]


def leaderboard_markdown(data: ReportData, title: str) -> str:
    """The leaderboard page: main table, interval note, temporal table, cost table, protocol card."""
    rows = sort_rows(leaderboard_rows(data), specs=data.ranked)
    multi = len({r.get("suite") for r in rows}) > 1
    main = table_specs(data)
    lines = [f"# Leaderboard: {title}", "", display_frame(rows, extras=False, suite=multi, specs=main).to_markdown(index=False),
             "", interval_note(row_specs(rows, main)), ""]
    for table, heading in SECOND_TABLES.items():
        specs = row_specs(rows, table_specs(data, table))
        if specs:
            lines += [f"## {heading}", "", display_frame(rows, extras=False, suite=multi, specs=specs, identity=False).to_markdown(index=False),
                      "", interval_note(specs), ""]
    return "\n".join([*lines, "## Costs", "", cost_frame(rows, suite=multi).to_markdown(index=False), "",
                      "## Protocol", "", *card_markdown(protocol_card(data)), ""])
