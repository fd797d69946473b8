"""The ``train`` stage: train (or resume) a tokenizer; evaluation-only entries record their weights' identity.

Before anything runs for an entry, :meth:`TrainStage.begin` writes the run
folder's ``config.json`` (resolved configuration, code version and the
training fingerprint) and refuses a folder that holds results of a different
training configuration. The model is built under ``derive_seed(suite seed,
id, "init")`` (nested: :meth:`harness.stages.context.RunContext.tokenizer_seed`)
and trained by :func:`harness.train.train_tokenizer` with the tokenizer's
seed; ``train.json`` records steps, step time, the stage's own peak memory
(:class:`harness.memory.StageMemory`), last losses and the environment card;
``losses.csv`` the per-step history. The stage is done when ``train.json``
exists; later stages load the model from ``checkpoint.pt``
(:meth:`harness.stages.context.RunContext.tokenizer`). A tokenizer that keeps
an EMA of its weights (``weight_ema_decay``, MAGVIT) is evaluated with the
EMA's weights, both when the trained model is handed on here and when it is
loaded from the checkpoint (:func:`harness.train.load_evaluated_weights`).
"""
from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

from harness.config import TokenizerEntry
from harness_core.errors import ResultsError
from harness.fit import resolve_mixed_precision, write_history
from harness_core.io import write_json_atomic
from harness.memory import StageMemory
from harness.records import TrainRecord
from harness_core.registry import register_stage
from harness.results import code_version, fingerprint
from harness_core.seeding import derive_seed, seeded
from harness.stages.base import Stage, Work
from harness.stages.base import Backend
from harness.stages.context import RunContext
from harness.train import train_tokenizer

log = logging.getLogger("harness.runner")

#: train settings added after results may already exist, with the value that behaves as before: left out of the
#: fingerprint at that value, so that existing result folders stay reusable.
LATER_TRAIN_FIELDS = {"stage0_cache_clips": 0, "tf32": None}
#: data settings added after results may already exist, with the value that behaves as before (as above)
LATER_DATA_FIELDS = {"resize": "bilinear_antialias", "short_videos": "drop", "eval_clips": None, "eval_list": None}
#: data settings that say how clips are supplied or evaluated, not which clips train the model
SUPPLY_DATA_FIELDS = ("max_eval_videos", "num_workers", "cache_dir", "memory_cache", "store", "eval_clips", "eval_list")
#: tokenizer kwargs renamed in issue 25 (new name -> old name): the fingerprint spells them as results written before
#: the rename did, so that those folders stay reusable
FINGERPRINT_KWARG_NAMES = {"chunk_frames": "clip_frames"}


def train_fingerprint(suite, entry: TokenizerEntry) -> dict[str, Any]:
    """What a trained model depends on: tokenizer name and kwargs, the training schedule, the data protocol of its
    training clips and the seed (not where curves are logged nor how clips are supplied)."""
    data = suite.data.model_dump(mode="json")
    for key in SUPPLY_DATA_FIELDS:
        data.pop(key, None)
    for key, neutral in LATER_DATA_FIELDS.items():
        if data.get(key, neutral) == neutral:
            data.pop(key, None)
    train = suite.train_config(entry).model_dump(mode="json")
    train.pop("log_with")  # where curves are logged does not change the model
    for key, neutral in LATER_TRAIN_FIELDS.items():
        if train.get(key) == neutral:
            del train[key]
    kwargs = {FINGERPRINT_KWARG_NAMES.get(key, key): value for key, value in entry.kwargs.items()}
    payload = {"name": entry.name, "kwargs": kwargs, "train": train, "data": data, "seed": suite.seed}
    if entry.pretrained:  # evaluation-only: no schedule
        payload.update(train=None, pretrained=True)
    return payload


def write_config(suite, entry: TokenizerEntry, path: Path) -> None:
    """Write ``config.json`` at ``path``; refuse to mix results of a different training configuration.

    Raises:
        ResultsError: ``path`` holds a ``config.json`` with another training fingerprint.
    """
    resolved = {
        "suite": suite.name, "tokenizer": entry.model_dump(mode="json"), "train_fingerprint": fingerprint(train_fingerprint(suite, entry)),
        "train": suite.train_config(entry).model_dump(mode="json"), "data": suite.data.model_dump(mode="json"),
        "evaluate": suite.evaluate.model_dump(mode="json"), "seed": suite.seed, "code_version": code_version(),
    }
    if path.is_file():
        previous = json.loads(path.read_text())
        if previous.get("train_fingerprint") != resolved["train_fingerprint"]:
            raise ResultsError(f"{path.parent} holds results of a different configuration of {entry.id!r} "
                               f"(tokenizer kwargs, training schedule, data protocol or seed changed); "
                               f"delete that folder or set another output_dir to start it afresh")
    write_json_atomic(path, resolved)


@register_stage("train")
class TrainStage(Stage):
    """Train ``entry`` (resuming from its checkpoint), or record an evaluation-only entry's weights."""

    name = "train"
    scope = "tokenizer"
    order = 10.0

    def backend(self, ctx: RunContext, work: Work) -> Backend:
        cfg = ctx.suite.train_config(work.entry)
        if work.entry.pretrained:
            return Backend()
        return Backend(tf32=cfg.tf32, mixed_precision=resolve_mixed_precision(cfg.mixed_precision, ctx.device.type))

    def begin(self, ctx: RunContext, work: Work) -> None:
        if ctx.is_main:
            write_config(ctx.suite, work.entry, ctx.run_folder(work.entry).config)
        ctx.barrier()

    def outputs(self, ctx: RunContext, work: Work) -> list[Path]:
        return [ctx.run_folder(work.entry).train]

    def run(self, ctx: RunContext, work: Work) -> None:
        entry = work.entry
        if entry.pretrained:
            return self._record_pretrained(ctx, entry)
        folder = ctx.run_folder(entry)
        ctx.train_clips.preload()
        cfg = ctx.suite.train_config(entry)
        ctx.load_dependencies(entry)
        with StageMemory(ctx.device) as memory:
            with seeded(derive_seed(ctx.tokenizer_seed(entry), "init")):
                tokenizer = ctx.build_tokenizer(entry)
            if folder.checkpoint.is_file():
                log.info("train: resuming from %s", folder.checkpoint)
            started = time.perf_counter()
            result = train_tokenizer(tokenizer, ctx.train_clips, cfg, folder.checkpoint, ctx.tokenizer_seed(entry),
                                     show_progress=ctx.show_progress, label=entry.id)
            write_history(folder.losses, result.history)
            TrainRecord(steps=result.steps, resumed_from=result.resumed_from, train_step_time_s=result.step_time_s,
                        peak_memory_mb=memory.current_peak_mb(), memory_kind=memory.kind, last_losses=result.last_losses,
                        wall_time_s=time.perf_counter() - started, batch_size=cfg.batch_size,
                        environment=ctx.environment()).write(folder.train)
        ctx.models[entry.id] = tokenizer

    def _record_pretrained(self, ctx: RunContext, entry: TokenizerEntry) -> None:
        """An evaluation-only entry: built (it loads its own weights), not trained; ``train.json`` records the
        weights' identity (``weights_identity()``: source, revision, sha256 of the weight files) when it has one."""
        with StageMemory(ctx.device) as memory:
            tokenizer = ctx.tokenizer(entry)
        identity = tokenizer.weights_identity() if hasattr(tokenizer, "weights_identity") else None
        TrainRecord(pretrained=True, weights=identity, peak_memory_mb=memory.peak_mb, memory_kind=memory.kind,
                    environment=ctx.environment()).write(ctx.run_folder(entry).train)
