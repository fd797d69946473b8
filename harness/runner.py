"""The suite driver: a short loop over the registered stages (:mod:`harness.stages`).

For every tokenizer entry, in suite order, the stages run in their order
(train -> reconstruct -> evaluate -> generate, then plugin stages), variant
stages (reconstruct, evaluate) once per evaluated row (a flexible tokenizer
has one row per token budget, each under ``budgets/<k>/``), and at the end the
suite stages (report). Each stage is skipped when its outputs exist and are
current (``Stage.done``), so a rerun reuses everything finished, an
interrupted training resumes from its last checkpoint and an interrupted
reconstruction from its last batch. A stage runs inside
:meth:`harness.stages.context.RunContext.stage`, which sets its backend flags,
times it and restores the flags after it; the wall times go to
``stage_times.csv`` with one column per stage of the run.

Under ``torchrun`` / ``accelerate launch`` every process runs every stage:
each trains (DDP), reconstructs, scores and samples a disjoint share of the
clips (:mod:`harness.shards`), the main process writes the summaries and
reports and the others wait at barriers
(:data:`harness.stages.context.STAGE_WAIT_TIMEOUT`). The results folder must
be on a file system every process shares. Folder layout: :mod:`harness.records`.
"""
from __future__ import annotations

import logging
import time
from itertools import groupby
from pathlib import Path

import torch

from harness.config import Suite, TokenizerEntry
from harness.data.sampling import EVAL_LIST_FILE, write_eval_list
from harness_core.io import write_json_atomic
from harness.records import EVAL_CLIPS_FILE, STAGE_MEMORY_FILE, STAGE_TIMES_FILE, SUITE_FILE
from harness_core.seeding import configure_determinism
from harness.stages.base import Stage, Work, suite_stages
from harness.stages.context import RunContext

log = logging.getLogger("harness.runner")


class SuiteRunner:
    """Runs a validated :class:`Suite`; :attr:`context` holds what the stages share."""

    def __init__(self, suite: Suite, device: torch.device | None = None, show_progress: bool = True) -> None:
        self.suite = suite
        self.context = RunContext(suite, device, show_progress)
        self.stages = suite_stages(suite.stages)

    def run(self) -> Path:
        """Run every stage of every tokenizer, then the suite stages; returns the results folder."""
        ctx = self.context
        configure_determinism(ctx.deterministic)
        ctx.prepare_store()
        if ctx.is_main:
            ctx.results.mkdir(parents=True, exist_ok=True)
            write_json_atomic(ctx.results / SUITE_FILE, self.suite.model_dump(mode="json"))
            write_eval_clip_index(ctx)
        for entry in self.suite.tokenizers:
            started = time.perf_counter()
            log.info("== %s (%s)", entry.id, entry.name)
            self.run_entry(entry)
            ctx.release(entry)
            log.info("== %s done in %.1f s", entry.id, time.perf_counter() - started)
        for stage in self.stages:
            if stage.scope == "suite":
                self.run_stage(stage, Work())
        if ctx.is_main:
            ctx.write_stage_times(ctx.results / STAGE_TIMES_FILE, ctx.results / STAGE_MEMORY_FILE, self.stages)
        return ctx.results

    def run_entry(self, entry: TokenizerEntry) -> None:
        """The entry's stages in order; consecutive variant stages run together for each row in turn (so a row's
        reconstructions can be scored, and deleted, before the next row's are made)."""
        stages = [s for s in self.stages if s.scope != "suite"]
        for stage in stages:
            stage.begin(self.context, Work(entry))
        for scope, group in groupby(stages, key=lambda s: s.scope):
            group = list(group)
            works = [Work(entry, v) for v in self.context.variants(entry)] if scope == "variant" else [Work(entry)]
            for work in works:
                for stage in group:
                    self.run_stage(stage, work)

    def run_stage(self, stage: Stage, work: Work) -> None:
        """Run ``stage`` on ``work`` unless it is done."""
        if stage.done(self.context, work):
            reused = [p for p in stage.outputs(self.context, work) if p.exists()]
            if reused:
                log.info("%s: reusing %s", stage.name, reused[0])
            return
        if stage.needs_model:  # loaded outside the stage's time and memory, as a model already in place
            self.context.tokenizer(work.entry)
        with self.context.stage(stage, work):
            stage.run(self.context, work)


def write_eval_clip_index(ctx: RunContext) -> None:
    """``eval_clips.json``: every evaluation clip's id, source and cached ``uint8 [T, H, W, 3]`` file (for reports;
    ``null`` with the clip store, whose frames reports decode again for the few clips they show) and real frame count
    when padded; ``eval_list.txt``: the same clips as ``relpath start end`` lines, which ``data.eval_list`` reads
    back (:func:`harness.data.sampling.write_eval_list`)."""
    index = []
    cache = ctx.clip_cache
    for clip in ctx.eval_clips:
        path = cache.path(clip)
        if path is not None and not path.is_file():
            cache.load(clip)
        index.append({"clip": clip.clip_id, "video": str(clip.record.path), "start": clip.start, "frames": clip.frames,
                      "stride": clip.stride, "resolution": clip.resolution, "label": clip.record.label,
                      "cached": None if path is None else str(path), **({"n_frames": clip.n_frames} if clip.length else {})})
    write_json_atomic(ctx.results / EVAL_CLIPS_FILE, index)
    write_eval_list(ctx.results / EVAL_LIST_FILE, ctx.eval_clips, ctx.suite.data.root)
