"""The ``generate`` stage: a generator trained on one tokenizer's tokens, samples and gFVD.

The protocol lives in :mod:`harness.generation.stage` (CoordTok supp. A.2 and
B.2, StyleGAN-V); this module adapts it to the stage loop: the stage's seed
is ``derive_seed(suite seed, id, "generation")``, the real clips for gFVD
come from ``derive_seed(suite seed, "generation", "real")`` (the same for
every tokenizer), training clips from the suite's seeded source. It runs when
the entry's generation block is enabled and is done when
``generation/metrics.json`` exists. Backend: TF32 on, as CoordTok-SiT trains
(huiwon-jang/CoordTok 8475272 ``train_sit.py`` sets ``allow_tf32``; a no-op
on the CPU), ``generation.cpu_threads`` threads on the CPU; both restored
after the stage (:meth:`harness.stages.context.RunContext.stage`).
"""
from __future__ import annotations

import logging
from pathlib import Path

from harness.config.schema import generation_config
from harness_core.registry import register_stage
from harness_core.seeding import derive_seed
from harness.stages.base import Stage, Work
from harness.stages.base import Backend
from harness.stages.context import RunContext

log = logging.getLogger("harness.runner")


@register_stage("generate")
class GenerateStage(Stage):
    """Train a generator on the tokenizer's tokens and score its samples with gFVD (when the suite enables it)."""

    name = "generate"
    scope = "tokenizer"
    order = 40.0
    needs_model = True

    def backend(self, ctx: RunContext, work: Work) -> Backend:
        cfg = generation_config(ctx.suite, work.entry)
        return Backend(tf32=True, threads=getattr(cfg, "cpu_threads", None), mixed_precision="no")

    def outputs(self, ctx: RunContext, work: Work) -> list[Path]:
        return [ctx.run_folder(work.entry).generation_metrics]

    def done(self, ctx: RunContext, work: Work) -> bool:
        cfg = generation_config(ctx.suite, work.entry)
        return cfg is None or not getattr(cfg, "enabled", True) or super().done(ctx, work)

    def run(self, ctx: RunContext, work: Work) -> None:
        from harness.generation.stage import run_generation_stage

        entry = work.entry
        cfg = generation_config(ctx.suite, entry)
        log.info("generate: %s", entry.id)
        tokenizer = ctx.tokenizer(entry)

        def train_clips(n: int, seed: int):
            # sample indices drawn from the batch seed: disjoint from the tokenizers' training indices 0, 1, 2, ...
            return ctx.train_clips.batch([derive_seed(seed, "clip", i) for i in range(n)])

        run_generation_stage(tokenizer, train_clips, cfg, ctx.results / entry.id, ctx.device,
                             num_classes=len(ctx.dataset.classes), seed=derive_seed(ctx.suite.seed, entry.id, "generation"),
                             real_seed=derive_seed(ctx.suite.seed, "generation", "real"), label=entry.id,
                             deterministic=ctx.deterministic, log_with=ctx.suite.train_config(entry).log_with,
                             train_videos=ctx.train_clips, environment=ctx.environment())
