"""Leaderboards, plots and the per-suite report, built from run folders (the public entry points).

Everything reads only the files the runner wrote (each row's
:class:`harness.records.RunRecord` in ``metrics.json`` and its
``per_video.csv``, ``generation/metrics.json``, ``eval_clips.json`` and
``recon/*.npy`` for the gallery, ``cost_vs_length*.csv`` of the cost
profile), never a model, so reports can be rebuilt at any time
(``python -m harness report results/<suite>``).

The work is done in :mod:`harness.reports` (load once -> sections -> markdown/HTML;
plots registered in :mod:`harness.reports.plots`); this module only re-exports
and never is imported by it, so there is no import cycle.

* :func:`write_reports` (end of ``harness run``): leaderboard, plots, ``report.md`` and ``report.html``;
* :func:`write_leaderboard`, :func:`write_plots`: the leaderboard and the plots alone;
* :func:`leaderboard_rows` / :func:`sort_rows` / :func:`render_leaderboard`: numbers and text of a leaderboard
  over any number of suites and runs (``python -m harness leaderboard results/ --metric ... --sort ... --format ...``).
"""
from __future__ import annotations

from pathlib import Path

from harness_core.errors import ResultsError
from harness.records import RunRecord, load_records
from harness.reports import document, plots
from harness.reports.data import CI_CONFIDENCE, CI_RESAMPLES, CI_SEED, ReportData
from harness.reports.leaderboard import (
    IDENTITY,
    cost_frame,
    display_frame,
    interval_note,
    leaderboard_markdown,
    leaderboard_rows,
    protocol_card,
    render_leaderboard,
    sort_rows,
)
from harness.reports.plots import PLOTS, Figure, register_plot
from metrics.base import MIN_COMPARABLE_N

__all__ = ["CI_CONFIDENCE", "CI_RESAMPLES", "CI_SEED", "IDENTITY", "MIN_COMPARABLE_N", "PLOTS", "Figure", "ReportData",
           "RunRecord", "cost_frame", "display_frame", "interval_note", "leaderboard_markdown", "leaderboard_rows",
           "load_records", "protocol_card", "register_plot", "render_leaderboard", "sort_rows", "write_leaderboard",
           "write_plots", "write_reports"]


def _data(results: Path) -> ReportData:
    data = ReportData.load(Path(results))
    if not data.records:
        raise ResultsError(f"no metrics.json under {results}: run a suite first")
    return data


def write_leaderboard(results: Path | ReportData) -> Path:
    """Write ``<results>/leaderboard.md`` (every run under ``results``, recursively); returns its path.

    Raises:
        ResultsError: when ``results`` holds no ``metrics.json``.
    """
    return document.write_leaderboard(results if isinstance(results, ReportData) else _data(results))


def write_plots(results: Path | ReportData) -> list[Path]:
    """Draw every registered plot (:data:`harness.reports.plots.PLOTS`) of a results folder; returns the PNG paths."""
    data = results if isinstance(results, ReportData) else ReportData.load(Path(results))
    return [figure.path for _, plot in plots.PLOTS for figure in plot(data)]


def write_reports(results: Path) -> list[Path]:
    """Leaderboard, plots, gallery, ``report.md`` and ``report.html`` of a suite's results folder; returns the paths.

    Raises:
        ResultsError: when ``results`` holds neither run results nor cost tables.
    """
    return document.write_report(ReportData.load(Path(results)))
