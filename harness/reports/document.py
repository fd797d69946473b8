"""``report.md`` and ``report.html`` of a suite: leaderboard, protocol card, plots, correlations, gallery.

The HTML file embeds every image (PNG plots, GIF gallery) as base64 data
URIs, so it opens offline in any browser and can be mailed as one file; the
markdown file links the same images by relative path.
"""
from __future__ import annotations

import base64
import html
import json
import logging
import math
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pandas as pd

from harness.data.cache import write_text_atomic
from harness.reports.gallery import GalleryItem, write_gallery

log = logging.getLogger("harness.report")

RANKS = ("best", "median", "worst")
FEATURE_NAMES = {"dynamics_0_100": "dynamics (0-100)", "frequency": "frequency"}


def _distinct(values: list[Any]) -> str:
    seen = list(dict.fromkeys(json.dumps(v, sort_keys=True, default=str) if isinstance(v, (dict, list)) else str(v)
                              for v in values if v is not None))
    return ", ".join(seen) if seen else "–"


def protocol_card(records: list[dict[str, Any]], suite: dict[str, Any] | None = None) -> dict[str, str]:
    """Field -> text of the evaluation protocol; values that differ between rows are listed comma-separated.

    Fields: suite, dataset, split, clip length, resolution, number of videos,
    FVD protocol and N, weights sha256 (I3D and LPIPS), seeds, code version.
    """
    protocols = [r.get("protocol", {}) for r in records]
    card: dict[str, str] = {}
    if suite:
        card["suite"] = suite.get("name", "") + (f": {suite['description']}" if suite.get("description") else "")
    card["dataset"] = _distinct([p.get("dataset") + (f" fold {p['fold']}" if p.get("fold") else "") for p in protocols if p.get("dataset")])
    card["split"] = _distinct([p.get("split") for p in protocols])
    card["clip length"] = _distinct([f"{p.get('frames')} frames, stride {p.get('frame_stride')}" for p in protocols])
    card["tokenizer clip length"] = _distinct([f"{r['row']}: {r['protocol'].get('clip_frames') or 'whole video'}" for r in records])
    card["resolution"] = _distinct([f"{p.get('resolution')}x{p.get('resolution')}" for p in protocols])
    card["number of videos"] = _distinct([f"{p.get('num_videos')} clips ({p.get('eval_clips_per_video', 1)} per video)" for p in protocols])
    fvd, sha, lpips = [], [], []
    for record in records:
        metrics = record.get("metrics", {})
        for name, conv in record["protocol"].get("metrics", {}).items():
            if not isinstance(conv, dict):
                continue
            if name.startswith("fvd"):
                groups = conv.get("groups", 1)
                fvd.append(f"{name}: {conv.get('clip', conv.get('protocol', ''))}; N = {metrics.get(f'{name}_n', '?')} fake / "
                           f"{metrics.get(f'{name}_n_real', '?')} real" + (f"; {groups} disjoint groups" if groups and groups > 1 else "")
                           + (f"; N < {conv['min_comparable_n']} not comparable" if conv.get("min_comparable_n") else ""))
                if conv.get("weights_sha256"):
                    sha.append(f"I3D {conv['weights_sha256']}")
            if name.startswith("lpips"):
                lpips.append(f"{name} {conv.get('net', '')}: lin {conv.get('lin_sha256', '?')}, backbone {conv.get('backbone_sha256', '?')}")
    for record in records:
        gen = record.get("generation") or {}
        for conv in (gen.get("gfvd_protocol") or {}).values():
            if isinstance(conv, dict) and conv.get("weights_sha256"):
                sha.append(f"I3D {conv['weights_sha256']}")
        for key, value in gen.items():
            if key.startswith("gfvd_") and key.endswith("_n") and not key.endswith("_n_real"):
                fvd.append(f"{key[:-2]} (generation): N = {value} generated / {gen.get(key[:-2] + '_n_real', '?')} real")
    card["FVD protocol and N"] = _distinct(fvd) if fvd else "not measured"
    card["weights sha256"] = _distinct(sha + lpips) if sha or lpips else "no pretrained metric network used"
    seeds = _distinct([p.get("seed") for p in protocols])
    card["seeds"] = f"suite seed {seeds} (clip choice, training); bootstrap seed 0"
    card["code version"] = _distinct([p.get("code_version") for p in protocols])
    environments = [r["environment"] for r in records if r.get("environment")]
    if environments:
        card["environment"] = _distinct([", ".join(f"{k} {v}" for k, v in sorted(e.items())) for e in environments])
    kinds = [(r.get("costs") or {}).get("memory_kind") for r in records]
    if any(kinds):
        card["train peak memory"] = _distinct([k for k in kinds if k])
    hashes = [f"{r['row']}: {r['metrics_sha256'][:16]}" + (f" / gFVD {r['generation']['gfvd_values_sha256'][:16]}"
              if (r.get("generation") or {}).get("gfvd_values_sha256") else "") for r in records if r.get("metrics_sha256")]
    if hashes:
        card["values sha256"] = _distinct(hashes)
    return card


def _b64(path: Path, mime: str) -> str:
    return f"data:{mime};base64,{base64.b64encode(path.read_bytes()).decode()}"


def correlation_frame(correlations: pd.DataFrame) -> pd.DataFrame:
    """One line per (row, metric): Spearman rho (3 decimals) against dynamics and frequency, and n."""
    if correlations.empty:
        return pd.DataFrame()
    lines = []
    for (row, metric), group in correlations.groupby(["row", "metric"], sort=False):
        line = {"tokenizer": row, "metric": metric.upper()}
        for _, entry in group.iterrows():
            rho = entry["rho"]
            line[f"ρ vs {FEATURE_NAMES[entry['feature']]}"] = f"{rho:+.3f}" if math.isfinite(rho) else "n/a"
        line["videos"] = int(group["n"].max())
        lines.append(line)
    return pd.DataFrame(lines)


def _html_table(frame: pd.DataFrame) -> str:
    return frame.to_html(index=False, escape=True, border=0, classes="table")


CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px;color:#222;max-width:1400px}
h1{font-size:24px} h2{font-size:19px;margin-top:28px;border-bottom:1px solid #ddd;padding-bottom:4px}
table.table{border-collapse:collapse;font-size:13px;margin:8px 0}
table.table th,table.table td{border:1px solid #ccc;padding:4px 8px;text-align:left;white-space:nowrap}
table.table th{background:#f3f3f3}
table.card td:first-child{font-weight:600;white-space:nowrap;padding-right:12px;vertical-align:top}
table.card td{padding:3px 6px;font-size:13px;word-break:break-all}
img.plot{max-width:100%;border:1px solid #eee;margin:6px 0}
table.gallery td{padding:6px;text-align:center;vertical-align:top;font-size:12px}
table.gallery img{image-rendering:pixelated;border:1px solid #ddd}
.note{color:#666;font-size:13px}
"""


def write_report(results: Path) -> list[Path]:
    """Write leaderboard, plots, gallery, ``report.md`` and ``report.html`` under ``results``; returns the paths.

    A section that cannot be built (no per-video dynamics, reconstructions not
    kept, no cost table) is left out with a note in the report; a section that
    fails is logged and noted, so a finished suite run never loses its report.

    Raises:
        FileNotFoundError: when ``results`` holds neither run results nor cost tables.
    """
    from harness import report as rep

    results = Path(results)
    records = rep.load_records(results)
    costs = rep.cost_tables(results)
    if not records and not costs:
        raise FileNotFoundError(f"no metrics.json and no cost_vs_length*.csv under {results}: run a suite first")
    suite_path = results / "suite.json"
    suite = json.loads(suite_path.read_text()) if suite_path.is_file() else None
    written: list[Path] = []
    notes: list[str] = []
    plots: list[tuple[str, Path, str]] = []  # (title, path, caption)
    correlations = pd.DataFrame()
    gallery: list[GalleryItem] = []

    def attempt(what: str, fn):
        try:
            return fn()
        except Exception as err:  # a broken section must not lose the rest of the report
            log.warning("report: %s failed: %s", what, err, exc_info=True)
            notes.append(f"{what} failed: {type(err).__name__}: {err}")
            return None

    if records:
        written.append(rep.write_leaderboard(results))
        path = attempt("quality vs tokens plot", lambda: rep.write_plot(results))
        if path:
            written.append(path)
            plots.append(("Quality vs tokens per video", path, "Every tokenizer and budget; circled points and the dashed "
                          "staircase are the Pareto front (fewer tokens, better quality)."))
        result = attempt("analysis plot", lambda: rep.write_analysis(results, records))
        if result and result[0] is not None:
            path, correlations = result
            written += [path, results / "analysis_correlations.csv"]
            plots.append(("Analysis: quality vs dynamics and frequency (CoordTok supp. B.3)", path,
                          "Per-video quality against dynamics magnitude (log mean consecutive-frame RGB L2 distance, "
                          "min-max standardized to 0-100 over the evaluation clips) and frequency magnitude (mean Sobel "
                          "gradient magnitude); lines are least-squares trends, legends give Spearman's ρ."))
        elif result is not None:
            notes.append("analysis plot skipped: add `dynamics` and `frequency` to evaluate.metrics")
        result = attempt("gallery", lambda: write_gallery(results, records))
        if result:
            gallery, gallery_notes = result
            written += [item.path for item in gallery]
            notes += gallery_notes
    for path in attempt("cost plots", lambda: rep.write_cost_plots(results)) or []:
        written.append(path)
        plots.append(("Training cost vs video length", path, "FLOPs and peak memory of one training step (harness profile)."))
    if not costs:
        notes.append("cost vs video length not measured for this folder (run `python -m harness profile` to add it)")

    title = suite.get("name") if suite else results.name
    card = protocol_card(records, suite) if records else {}
    board = rep.leaderboard_frame(records) if records else pd.DataFrame()
    corr = correlation_frame(correlations)
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")

    md = write_markdown(results, title, stamp, board, card, plots, corr, gallery, notes)
    page = write_html(results, title, stamp, board, card, plots, corr, gallery, notes)
    return written + [md, page]


def write_markdown(results: Path, title: str, stamp: str, board: pd.DataFrame, card: dict[str, str],
                         plots: list[tuple[str, Path, str]], corr: pd.DataFrame, gallery: list[GalleryItem],
                         notes: list[str]) -> Path:
    """``<results>/report.md`` (images linked by relative path)."""
    from harness.report import interval_note

    lines = [f"# Report: {title}", "", f"Built {stamp} from the files in this folder (`python -m harness report {results}`).", ""]
    if not board.empty:
        lines += ["## Leaderboard", "", board.to_markdown(index=False), "", interval_note(), ""]
    if card:
        lines += ["## Protocol", "", "| field | value |", "|---|---|"]
        lines += [f"| {k} | {v.replace('|', '/')} |" for k, v in card.items()]
        lines.append("")
    for name, path, caption in plots:
        lines += [f"## {name}", "", f"![{name}]({path.relative_to(results).as_posix()})", "", caption, ""]
    if not corr.empty:
        lines += ["## Spearman correlations (per-video quality vs analysis features)", "", corr.to_markdown(index=False), ""]
    if gallery:
        lines += ["## Gallery", "", "Each GIF: original (left) | reconstruction (right); best, median and worst clip by PSNR.", "",
                  "| tokenizer | " + " | ".join(RANKS) + " |", "|---|" + "---|" * len(RANKS)]
        for row, items in _gallery_rows(gallery).items():
            cells = [f"![{i.clip}]({i.path.relative_to(results).as_posix()})<br>{i.clip}, {i.psnr:.2f} dB" if i else "–"
                     for i in (items.get(r) for r in RANKS)]
            lines.append(f"| {row} | " + " | ".join(cells) + " |")
        lines.append("")
    if notes:
        lines += ["## Notes", "", *[f"- {n}" for n in notes], ""]
    path = results / "report.md"
    write_text_atomic(path, "\n".join(lines))
    return path


def _gallery_rows(gallery: list[GalleryItem]) -> dict[str, dict[str, GalleryItem]]:
    rows: dict[str, dict[str, GalleryItem]] = {}
    for item in gallery:
        rows.setdefault(item.row, {})[item.rank] = item
    return rows


def write_html(results: Path, title: str, stamp: str, board: pd.DataFrame, card: dict[str, str],
               plots: list[tuple[str, Path, str]], corr: pd.DataFrame, gallery: list[GalleryItem], notes: list[str]) -> Path:
    """``<results>/report.html``: one self-contained page, every image embedded as a base64 data URI."""
    from harness.report import interval_note

    e = html.escape
    parts = [f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>Report: {e(title)}</title>",
             f"<style>{CSS}</style></head><body>", f"<h1>Report: {e(title)}</h1>",
             f"<p class='note'>Built {e(stamp)} from the run folders in <code>{e(str(results))}</code>.</p>"]
    if not board.empty:
        parts += ["<h2 id='leaderboard'>Leaderboard</h2>", _html_table(board), f"<p class='note'>{e(interval_note())}</p>"]
    if card:
        parts += ["<h2 id='protocol'>Protocol</h2><table class='card'>"]
        parts += [f"<tr><td>{e(k)}</td><td>{e(v)}</td></tr>" for k, v in card.items()]
        parts.append("</table>")
    for name, path, caption in plots:
        parts += [f"<h2>{e(name)}</h2>", f"<img class='plot' alt='{e(name)}' src='{_b64(path, 'image/png')}'>",
                  f"<p class='note'>{e(caption)}</p>"]
    if not corr.empty:
        parts += ["<h2 id='correlations'>Spearman correlations (per-video quality vs analysis features)</h2>", _html_table(corr)]
    if gallery:
        parts += ["<h2 id='gallery'>Gallery</h2>",
                  "<p class='note'>Each GIF: <b>original (left) | reconstruction (right)</b>; best, median and worst "
                  "evaluation clip by per-video PSNR.</p>",
                  "<table class='gallery table'><tr><th>tokenizer</th>" + "".join(f"<th>{r}</th>" for r in RANKS) + "</tr>"]
        for row, items in _gallery_rows(gallery).items():
            cells = []
            for rank in RANKS:
                item = items.get(rank)
                cells.append("<td>–</td>" if item is None else
                             f"<td><img alt='{e(row)} {rank}' src='{_b64(item.path, 'image/gif')}'><br>{e(item.clip)}, {item.psnr:.2f} dB</td>")
            parts.append(f"<tr><td><b>{e(row)}</b></td>{''.join(cells)}</tr>")
        parts.append("</table>")
    if notes:
        parts += ["<h2>Notes</h2><ul>", *[f"<li>{e(n)}</li>" for n in notes], "</ul>"]
    parts.append("</body></html>")
    path = results / "report.html"
    write_text_atomic(path, "\n".join(parts))
    return path
