"""Leaderboards (markdown, via pandas + tabulate) and plots (seaborn) from run folders.

Everything here reads only the files the runner wrote (``metrics.json`` of
every evaluated row, ``generation/metrics.json`` of every tokenizer), never a
model, so reports can be rebuilt at any time.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd

from harness.data.cache import write_text_atomic

#: FVD values from fewer videos than this are marked not comparable (common_metrics issue 26; eval_anchors A.5 item 8)
FVD_MIN_COMPARABLE_N = 256

QUALITY_COLUMNS = [("psnr", "PSNR ↑"), ("ssim", "SSIM ↑"), ("lpips", "LPIPS ↓")]


def load_records(results: Path) -> list[dict[str, Any]]:
    """Every row's ``metrics.json`` under ``results`` (recursively), with its generation results joined."""
    records = []
    for path in sorted(Path(results).rglob("metrics.json")):
        if path.parent.name == "generation":
            continue
        record = json.loads(path.read_text())
        record["_folder"] = str(path.parent)
        generation = path.parent / "generation" / "metrics.json"
        if record.get("budget") is not None:
            generation = path.parents[2] / "generation" / "metrics.json"
        if generation.is_file():
            record["generation"] = json.loads(generation.read_text())
        records.append(record)
    return records


def fvd_columns(records: list[dict[str, Any]]) -> list[str]:
    names = set()
    for record in records:
        names |= {k for k in record["metrics"] if k.startswith("fvd_") and not k.endswith(("_n", "_n_real", "_std", "_mean"))
                  and isinstance(record["metrics"][k], (int, float))}
    return sorted(names)


def _format_fvd(metrics: dict[str, Any], name: str) -> str:
    value = metrics.get(name)
    if value is None:
        return "–"
    n = metrics.get(f"{name}_n")
    text = f"{value:.1f}"
    if f"{name}_std" in metrics:
        text += f" ± {metrics[f'{name}_std']:.1f}"
    if n is not None:
        text += f" (N={n}{'' if n >= FVD_MIN_COMPARABLE_N else ', not comparable'})"
    return text


def _quality_text(metrics: dict[str, Any], key: str) -> str:
    value = metrics.get(key)
    if value is None:
        return "–"
    low, high = metrics.get(f"{key}_ci_low"), metrics.get(f"{key}_ci_high")
    digits = 2 if key == "psnr" else 4
    if low is not None and high is not None:
        return f"{value:.{digits}f} ± {(high - low) / 2:.{digits}f}"
    return f"{value:.{digits}f}"


def leaderboard_frame(records: list[dict[str, Any]]) -> pd.DataFrame:
    """One row per evaluated tokenizer configuration, formatted for display."""
    fvds = fvd_columns(records)
    rows = []
    for record in sorted(records, key=lambda r: (r["tokens_per_video"], r["row"])):
        metrics, costs = record["metrics"], record["costs"]
        row = {"tokenizer": record["row"], "model": record["tokenizer"], "tokens/video": record["tokens_per_video"],
               "pixels/token": f"{record['compression_ratio']:.1f}" if record.get("compression_ratio") else "–",
               "params (M)": f"{record['parameters'] / 1e6:.2f}"}
        for key, title in QUALITY_COLUMNS:
            row[title] = _quality_text(metrics, key)
        for name in fvds:
            row[f"r{name.upper().replace('_', ' ', 1)} ↓"] = _format_fvd(metrics, name)
        generation = record.get("generation")
        if generation:
            for key, value in generation.items():
                if key.startswith("gfvd_") and not key.endswith(("_n", "_n_real", "_std", "comparable")) and isinstance(value, (int, float)):
                    n = generation.get(f"{key}_n")
                    mark = "" if n is None or n >= FVD_MIN_COMPARABLE_N else ", not comparable"
                    row[f"{key.replace('gfvd_', 'gFVD ')} ↓"] = f"{value:.1f}" + (f" (N={n}{mark})" if n is not None else "")
            gen = generation.get("generator", {})
            if gen:
                row["generator"] = f"{gen.get('name', '?')} {gen.get('params', 0) / 1e6:.1f}M, {gen.get('train_step_time_s', float('nan')):.3f} s/step, {gen.get('peak_memory_mb', float('nan')):.0f} MB"
        if record.get("codebook"):
            usage = record["codebook"]
            row["codebook use"] = f"{usage.get('codebook_usage', float('nan')):.1%} (ppl {usage.get('codebook_perplexity', float('nan')):.0f})"
        row["train s/step"] = f"{costs['train_step_time_s']:.3f}" if costs.get("train_step_time_s") else "–"
        row["peak mem (MB)"] = f"{costs['peak_memory_mb']:.0f}" if costs.get("peak_memory_mb") else "–"
        row["enc videos/s"] = f"{costs['encode_videos_per_s']:.2f}" if costs.get("encode_videos_per_s") else "–"
        row["dec videos/s"] = f"{costs['decode_videos_per_s']:.2f}" if costs.get("decode_videos_per_s") else "–"
        rows.append(row)
    return pd.DataFrame(rows).fillna("–")


def protocol_lines(records: list[dict[str, Any]]) -> list[str]:
    """The evaluation protocol shared by the rows (or each distinct one)."""
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
    return lines


def write_leaderboard(results: Path) -> Path:
    """Write ``<results>/leaderboard.md``; returns its path."""
    results = Path(results)
    records = load_records(results)
    if not records:
        raise FileNotFoundError(f"no metrics.json under {results}: run a suite first")
    table = leaderboard_frame(records).to_markdown(index=False)
    text = "\n".join([f"# Leaderboard: {results.name}", "", table, "", "## Protocol", "", *protocol_lines(records),
                      f"- FVD values from fewer than {FVD_MIN_COMPARABLE_N} videos are marked not comparable.", ""])
    path = results / "leaderboard.md"
    write_text_atomic(path, text)
    return path


def quality_points(records: list[dict[str, Any]]) -> pd.DataFrame:
    """Long table (tokenizer, tokens/video, metric, value) of the quality metrics for plots."""
    points = []
    for record in records:
        for key in ("psnr", "ssim", "lpips"):
            if record["metrics"].get(key) is not None:
                points.append({"tokenizer": record["tokenizer_id"], "tokens per video": record["tokens_per_video"],
                               "metric": key.upper(), "value": record["metrics"][key]})
    return pd.DataFrame(points)


def write_plot(results: Path) -> Path:
    """Write ``<results>/quality_vs_tokens.png`` (one panel per quality metric); returns its path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import seaborn as sns

    results = Path(results)
    frame = quality_points(load_records(results))
    if frame.empty:
        raise FileNotFoundError(f"no quality metrics under {results}: run a suite first")
    grid = sns.relplot(data=frame, x="tokens per video", y="value", hue="tokenizer", col="metric", kind="line",
                       marker="o", facet_kws={"sharey": False}, height=3.2, aspect=1.1)
    grid.set(xscale="log")
    grid.figure.suptitle(f"{results.name}: reconstruction quality vs tokens per video", y=1.04)
    path = results / "quality_vs_tokens.png"
    tmp = path.with_suffix(".tmp.png")
    grid.figure.savefig(tmp, dpi=120, bbox_inches="tight")
    plt.close(grid.figure)
    tmp.replace(path)
    return path


def write_reports(results: Path) -> list[Path]:
    """Leaderboard and plots of a suite's results folder."""
    return [write_leaderboard(results), write_plot(results)]
