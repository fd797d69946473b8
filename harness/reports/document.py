"""``report.md`` and ``report.html`` of a suite: one list of sections, two renderers.

:func:`build_sections` turns the report data (records loaded once, intervals
computed once) into a list of :class:`Section` (leaderboard, costs, protocol
card, one per plot and its table, gallery, notes); :func:`render_markdown` and
:func:`render_html` (Jinja2 template ``templates/report.html.j2``) render the
same list. The HTML file embeds every image (PNG plots, GIF gallery) as base64
data URIs, so it opens offline and can be mailed as one file; the markdown
file links the same images by relative path.
"""
from __future__ import annotations

import base64
import logging
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

import pandas as pd

from harness_core.errors import ResultsError
from harness_core.io import write_text_atomic
from harness.reports import leaderboard as lb
from harness.reports.data import ReportData
from harness.reports.gallery import GalleryItem, write_gallery
from harness.reports import plots

log = logging.getLogger("harness.report")

RANKS = ("best", "median", "worst")
TEMPLATES = Path(__file__).resolve().parent / "templates"


@dataclass
class Section:
    """One part of the report. Exactly one of ``table``, ``card``, ``image``, ``gallery``, ``items`` is the body."""

    title: str
    anchor: str = ""
    note: str = ""
    table: pd.DataFrame | None = None
    card: list[tuple[str, str]] | None = None
    image: Path | None = None
    gallery: dict[str, dict[str, GalleryItem]] | None = None
    items: list[str] = field(default_factory=list)


def _gallery_rows(gallery: list[GalleryItem]) -> dict[str, dict[str, GalleryItem]]:
    rows: dict[str, dict[str, GalleryItem]] = {}
    for item in gallery:
        rows.setdefault(item.row, {})[item.rank] = item
    return rows


def build_sections(data: ReportData) -> tuple[list[Section], list[Path]]:
    """The report's sections and the files written on the way (leaderboard.md, plots, GIFs).

    A section that cannot be built (no per-video dynamics, reconstructions not
    kept, no cost table) is left out with a note; a section that fails is
    logged and noted, so a finished suite run never loses its report.
    """
    notes = data.notes
    written: list[Path] = []
    sections: list[Section] = []

    def attempt(what: str, fn: Callable[[], Any]) -> Any:
        try:
            return fn()
        except Exception as err:  # a broken section must not lose the rest of the report
            log.warning("report: %s failed: %s", what, err, exc_info=True)
            notes.append(f"{what} failed: {type(err).__name__}: {err}")
            return None

    if data.records:
        written.append(write_leaderboard(data))
        rows = lb.sort_rows(lb.leaderboard_rows(data), specs=data.ranked)
        multi = len({r.get("suite") for r in rows}) > 1
        main = lb.table_specs(data)
        sections.append(Section("Leaderboard", "leaderboard", lb.interval_note(lb.row_specs(rows, main)),
                                table=lb.display_frame(rows, extras=False, suite=multi, specs=main)))
        for table, heading in lb.SECOND_TABLES.items():
            specs = lb.row_specs(rows, lb.table_specs(data, table))
            if specs:
                sections.append(Section(heading, table, lb.interval_note(specs),
                                        table=lb.display_frame(rows, extras=False, suite=multi, specs=specs, identity=False)))
        sections.append(Section("Costs", "costs", "Training (per step, peak memory added by the stage), reconstruction "
                                 "throughput, generator and codebook use.", table=lb.cost_frame(rows, suite=multi)))
        sections.append(Section("Protocol", "protocol", card=lb.protocol_card(data)))
    figures = []
    for name, plot in plots.PLOTS:
        if not data.records and name != "cost_vs_length":
            continue
        figures += attempt(f"{name.replace('_', ' ')} plot", lambda plot=plot: plot(data)) or []
    for figure in figures:
        written += [figure.path, *figure.files]
        sections.append(Section(figure.title, note=figure.caption, image=figure.path))
        if figure.table is not None and not figure.table.empty:
            sections.append(Section(figure.table_title, figure.table_anchor, figure.table_note, table=figure.table))
    if data.records:
        result = attempt("gallery", lambda: write_gallery(data))
        if result:
            gallery, gallery_notes = result
            notes += gallery_notes
            if gallery:
                written += [item.path for item in gallery]
                sections.append(Section("Gallery", "gallery", "Each GIF: original (left) | reconstruction (right); best, "
                                        "median and worst evaluation clip by per-video PSNR.", gallery=_gallery_rows(gallery)))
    if notes:
        sections.append(Section("Notes", "notes", items=list(notes)))
    return sections, written


# ----------------------------------------------------------------------------- renderers


def render_markdown(title: str, stamp: str, results: Path, sections: list[Section]) -> str:
    """Markdown: tables as pipe tables, the card as ``- key: value`` lines, images linked by relative path."""
    lines = [f"# Report: {title}", "", f"Built {stamp} from the files in this folder (`python -m harness report {results}`).", ""]
    for section in sections:
        lines += [f"## {section.title}", ""]
        if section.table is not None:
            lines += [section.table.to_markdown(index=False), ""]
        if section.card is not None:
            lines += [*lb.card_markdown(section.card), ""]
        if section.image is not None:
            lines += [f"![{section.title}]({section.image.relative_to(results).as_posix()})", ""]
        if section.gallery is not None:
            lines += ["| tokenizer | " + " | ".join(RANKS) + " |", "|---|" + "---|" * len(RANKS)]
            for row, items in section.gallery.items():
                cells = [f"![{i.clip}]({i.path.relative_to(results).as_posix()})<br>{i.clip}, {i.psnr:.2f} dB" if i else "–"
                         for i in (items.get(r) for r in RANKS)]
                lines.append(f"| {row} | " + " | ".join(cells) + " |")
            lines.append("")
        if section.items:
            lines += [*[f"- {item}" for item in section.items], ""]
        if section.note:
            lines += [section.note, ""]
    return "\n".join(lines)


def _b64(path: Path, mime: str) -> str:
    return f"data:{mime};base64,{base64.b64encode(path.read_bytes()).decode()}"


def render_html(title: str, stamp: str, results: Path, sections: list[Section]) -> str:
    """One self-contained page (Jinja2, autoescaped), every image embedded as a base64 data URI."""
    import jinja2

    env = jinja2.Environment(loader=jinja2.FileSystemLoader(TEMPLATES), autoescape=True, trim_blocks=True, lstrip_blocks=True)
    env.filters["png"] = lambda path: _b64(path, "image/png")
    env.filters["gif"] = lambda path: _b64(path, "image/gif")
    env.filters["html_table"] = lambda frame: jinja2.utils.markupsafe.Markup(
        frame.to_html(index=False, escape=True, border=0, classes="table"))
    return env.get_template("report.html.j2").render(title=title, stamp=stamp, results=str(results), sections=sections,
                                                     ranks=RANKS)


# ----------------------------------------------------------------------------- files


def write_leaderboard(data: ReportData) -> Path:
    """Write ``<results>/leaderboard.md`` (every run under the folder); returns its path."""
    path = data.results / "leaderboard.md"
    write_text_atomic(path, lb.leaderboard_markdown(data, data.results.name))
    return path


def write_report(data: ReportData) -> list[Path]:
    """Write leaderboard, plots, gallery, ``report.md`` and ``report.html``; returns the paths.

    Raises:
        ResultsError: when the folder holds neither run results nor cost tables.
    """
    if not data.records and not plots.cost_tables(data.results):
        raise ResultsError(f"no metrics.json and no cost_vs_length*.csv under {data.results}: run a suite first")
    sections, written = build_sections(data)
    title = data.suite.get("name") if data.suite else data.results.name
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    md = write_text_atomic(data.results / "report.md", render_markdown(title, stamp, data.results, sections))
    page = write_text_atomic(data.results / "report.html", render_html(title, stamp, data.results, sections))
    return written + [Path(md), Path(page)]


__all__ = ["Section", "build_sections", "render_html", "render_markdown", "write_leaderboard", "write_report"]
