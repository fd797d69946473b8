"""Stages of a suite run as parts: one module per stage, one ordered list the driver loops over.

A stage is a class with

* ``name``: its key in ``stage_times.csv``, logs and the environment card;
* ``scope``: ``"tokenizer"`` (once per tokenizer entry: train, generate),
  ``"variant"`` (once per evaluated row, i.e. per token budget: reconstruct,
  evaluate) or ``"suite"`` (once at the end, on the main process: report);
* ``order``: its place in the run (train 10, reconstruct 20, evaluate 30,
  generate 40, report 90; a plugin stage defaults to 50, after generation and
  before the reports);
* ``backend(ctx, work)``: the :class:`harness.stages.context.Backend` flags
  (TF32, cuDNN benchmark, threads) the context sets for it and restores after;
* ``outputs(ctx, work)``: the files it writes; ``done(ctx, work)``: whether they
  exist and are current (the stage is then skipped); ``run(ctx, work)``;
  ``begin(ctx, work)``: called for each entry before its stages, done or not.

:class:`Work` names what a stage works on (a tokenizer entry and, for variant
stages, one evaluated row). Built-in stages register in :data:`STAGES`
(``harness_core.registry``) from ``harness.stages.{train,reconstruct,evaluate,
generate,report}``; a plugin stage is a class named in the suite's ``stages``
block by entry point (group ``harness.stages``) or ``module:Class``, with its
own settings under that name (validated by its ``Config``, a pydantic model,
when it has one). Adding a stage is one module plus its config block; the
driver (:mod:`harness.runner`) and the stage-time table need no edit.
"""
from harness.stages.base import BUILTIN_STAGES, Backend, Stage, Variant, Work, stage_config_problem, suite_stages
from harness.stages import evaluate, generate, reconstruct, report, train  # noqa: E402,F401  (register the built-ins)

__all__ = ["BUILTIN_STAGES", "Backend", "Stage", "Variant", "Work", "stage_config_problem", "suite_stages"]
