"""The ``report`` stage: leaderboard, plots and report of the suite's results folder (main process, once at the end).

Reports read only the files the other stages wrote (:mod:`harness.report`), so
they can be rebuilt at any time with ``python -m harness report``; the stage
always runs (it is cheap and reflects every row present).
"""
from __future__ import annotations

from harness_core.registry import register_stage
from harness.stages.base import Stage, Work
from harness.stages.context import RunContext


@register_stage("report")
class ReportStage(Stage):
    """Write ``leaderboard.md``, the plots, ``report.md`` and ``report.html``."""

    name = "report"
    scope = "suite"
    order = 90.0

    def done(self, ctx: RunContext, work: Work) -> bool:
        return not ctx.is_main  # the main process writes the reports; the others have nothing to do

    def run(self, ctx: RunContext, work: Work) -> None:
        from harness.report import write_reports

        write_reports(ctx.results)
