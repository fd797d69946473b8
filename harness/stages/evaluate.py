"""The ``evaluate`` stage: score one row's reconstructions against the real clips; write ``metrics.json``
(the row's :class:`harness.records.RunRecord`), ``per_video.csv`` and ``per_frame.csv``.

Every process scores its share of the evaluation batches
(:func:`harness.shards.my_share`) through :class:`harness.scoring.Scorer`;
the summary reduces over all of them (metric states with their
``dist_reduce_fx``, per-video rows gathered in rank order) and the main
process writes the files, with ``shards`` (which rank scored which clips) when
there are several processes. Padded short clips are scored on their real
frames only (``n_frames``). A NaN or infinite metric value stops the stage
(:class:`harness_core.errors.NonFiniteError`) before anything is written. The
stage is done while ``metrics.json`` carries today's
:func:`evaluation_fingerprint` (metric names, settings and protocol texts, the
evaluation clips); reconstructions are deleted after scoring unless
``evaluate.keep_reconstructions``.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from harness_core.api import VideoTokenizer
from harness.data.decode import to_model_range
from harness.data.sampling import clip_lengths
from harness_core.io import write_csv_atomic, write_json_atomic
from harness.records import PER_FRAME_FILE, PER_VIDEO_FILE, Costs, Protocol, ReconstructRecord, RunRecord, TrainRecord
from harness_core.registry import METRICS, MetricSpec, register_stage
from harness.results import code_version, fingerprint, values_sha256
from harness.scoring import Scorer
from harness.shards import my_share, shard_record, world_size
from harness.stages.base import Stage, Variant, Work
from harness.stages.context import RunContext
from harness.train import count_parameters

log = logging.getLogger("harness.runner")


def evaluation_fingerprint(ctx: RunContext) -> str:
    """Hash of what an evaluation result depends on besides the reconstructions: the metric names, their settings
    and protocol texts, and the evaluation clips. A change (e.g. the SSIM fix) makes existing ``metrics.json``
    files stale."""
    cached = ctx._evaluation_fingerprint
    if cached is None:
        evaluate = ctx.suite.evaluate
        protocols = {name: METRICS.create(name, **evaluate.metric_kwargs.get(name, {})).protocol() for name in evaluate.metrics}
        cached = fingerprint({"metrics": evaluate.metrics, "kwargs": evaluate.metric_kwargs, "protocols": protocols,
                              "clips": [c.clip_id for c in ctx.eval_clips]})
        ctx._evaluation_fingerprint = cached
    return cached


def evaluation_current(ctx: RunContext, variant: Variant) -> bool:
    """Whether ``metrics.json`` exists and was computed under today's :func:`evaluation_fingerprint`."""
    path = variant.files.metrics
    if not path.is_file():
        return False
    current = json.loads(path.read_text()).get("evaluation_fingerprint") == evaluation_fingerprint(ctx)
    if not current:
        log.info("evaluate: %s was computed under another metric protocol; recomputing", path)
    return current


def scorer(ctx: RunContext, label: str, boundaries: list[int]) -> Scorer:
    """The suite's metrics as a :class:`harness.scoring.Scorer` for a tokenizer with these temporal boundaries,
    real FVD statistics cached per dataset, seed and evaluation clips."""
    evaluate = ctx.suite.evaluate
    scores = Scorer(evaluate.metrics, ctx.device, evaluate.metric_kwargs, label, boundaries, synchronize=world_size() > 1)
    key = {"dataset": ctx.dataset.fingerprint(), "seed": ctx.suite.seed, "clips": len(ctx.eval_clips)}
    if ctx.suite.data.eval_clips or ctx.suite.data.eval_list:  # a drawn or given list: key by the clips themselves
        key["clip_list"] = fingerprint([(str(c.record.path), c.start, c.n_frames) for c in ctx.eval_clips])
    scores.use_real_cache(key, ctx.dataset.cache_dir / "fvd")
    return scores


@register_stage("evaluate")
class EvaluateStage(Stage):
    """Score the reconstructions of one row and write its record and tables."""

    name = "evaluate"
    scope = "variant"
    order = 30.0
    needs_model = True

    def outputs(self, ctx: RunContext, work: Work) -> list[Path]:
        return [work.variant.files.metrics, work.variant.files.per_video]

    def done(self, ctx: RunContext, work: Work) -> bool:
        return evaluation_current(ctx, work.variant)

    @torch.no_grad()
    def run(self, ctx: RunContext, work: Work) -> None:
        entry, variant = work.entry, work.variant
        tokenizer = ctx.tokenizer(entry)
        log.info("evaluate: %s", variant.folder)
        scores = scorer(ctx, work.label, tokenizer.temporal_boundaries(ctx.suite.data.frames))
        recon_dir = variant.files.recon
        batches = ctx.eval_batches()
        mine = [batches[k] for k in my_share(len(batches), "evaluation batches")]
        for group in mine:
            real = to_model_range(np.stack([ctx.clip_cache.load(c) for c in group])).to(ctx.device)
            fake = to_model_range(np.stack([np.load(recon_dir / f"{c.clip_id}.npy") for c in group])).to(ctx.device)
            n_frames = clip_lengths(group, ctx.device)
            scores.update(real, fake, [{"clip": c.clip_id, "video": str(c.record.path.name), "start": c.start,
                                        "label": c.record.label} for c in group],
                          **({} if n_frames is None else {"n_frames": n_frames}))
        summary, protocol = scores.compute()  # collective: reduces over every process's share
        shards = shard_record([c.clip_id for group in mine for c in group])
        if ctx.is_main:
            write_csv_atomic(variant.files.per_video, pd.DataFrame(scores.rows))
            frames = scores.frame_table()
            if len(frames):
                write_csv_atomic(variant.files.per_frame, frames)
            else:  # no per-frame metric now: a table of an earlier evaluation must not be read as this one's
                variant.files.per_frame.unlink(missing_ok=True)
            record = result_record(ctx, work, tokenizer, summary, protocol, scores.specs(),
                                   shards if shards["world_size"] > 1 else None)
            write_json_atomic(variant.files.metrics, record)
            if not ctx.suite.evaluate.keep_reconstructions:
                for path in recon_dir.glob("*.npy"):
                    path.unlink()
        ctx.barrier()


def result_record(ctx: RunContext, work: Work, tokenizer: VideoTokenizer, summary: dict[str, Any],
                  protocol: dict[str, Any], specs: list[MetricSpec], shards: dict[str, Any] | None = None) -> dict[str, Any]:
    """The row's :class:`harness.records.RunRecord` as written to ``metrics.json``, with each metric's metadata
    (``specs``) so that reports of the folder need no metric code."""
    entry, variant = work.entry, work.variant
    data = ctx.suite.data
    folder = variant.files
    recon = ReconstructRecord.read(folder.reconstruct)
    train = TrainRecord.read(folder.train)
    tokens = recon.tokens_per_video
    dataset = ctx.dataset.protocol()  # dataset, fold, split: the dataset describes its own protocol
    extra = {k: v for k, v in dataset.items() if k not in ("dataset", "fold", "split")}
    extra.update(_clip_protocol(ctx))
    record = RunRecord(
        row=work.label, tokenizer_id=entry.id, tokenizer=entry.name, budget=variant.budget,
        tokens_per_video=tokens,
        pixels_per_token=data.frames * data.resolution * data.resolution / tokens if tokens else None,
        parameters=count_parameters(tokenizer), metrics=summary, metrics_sha256=values_sha256(summary),
        evaluation_fingerprint=evaluation_fingerprint(ctx),
        environment=ctx.environment(),
        protocol=Protocol(
            dataset=dataset.get("dataset", data.dataset), fold=dataset.get("fold"), frames=data.frames,
            frame_stride=data.frame_stride, resolution=data.resolution, num_videos=len(ctx.eval_clips),
            eval_clips_per_video=data.eval_clips_per_video, seed=ctx.suite.seed, split=dataset.get("split"),
            chunk_frames=tokenizer.chunk_frames, code_version=code_version(), metrics=protocol, extra=extra),
        costs=Costs(
            train_steps=train.steps, train_step_time_s=train.train_step_time_s, train_batch_size=train.batch_size,
            peak_memory_mb=train.peak_memory_mb, memory_kind=train.memory_kind,
            reconstruct_peak_memory_mb=recon.peak_memory_mb,
            encode_videos_per_s=recon.encode_videos_per_s, decode_videos_per_s=recon.decode_videos_per_s),
        codebook=recon.codebook,
        token_info=recon.token_info,
        pretrained=train.pretrained, weights=train.weights,
        latent_values=_latent_values(tokenizer, tokens),
        tiling_consistency=recon.tiling_consistency,
        rate=recon.rate,
        metric_specs=[spec.to_dict() for spec in specs],
        per_video=PER_VIDEO_FILE,
        per_frame=PER_FRAME_FILE if folder.per_frame.is_file() else None,
        temporal_boundaries=tokenizer.temporal_boundaries(data.frames),
        shards=shards,
    )
    return record.to_json()


def _clip_protocol(ctx: RunContext) -> dict[str, Any]:
    """The clip rules that differ from the defaults (resize, short videos, drawn or given lists), for the record."""
    data = ctx.suite.data
    out: dict[str, Any] = {}
    if data.resize != "bilinear_antialias":
        out["resize"] = data.resize
    if data.short_videos != "drop":
        out["short_videos"] = data.short_videos
        out["padded_clips"] = sum(1 for c in ctx.eval_clips if c.length is not None)
    if data.eval_list:
        out["eval_list"] = str(data.eval_list)
    elif data.eval_clips:
        out["eval_clips"] = data.eval_clips
    return out


def _latent_values(tokenizer: VideoTokenizer, tokens: int | None) -> int | None:
    """Latent values per video (tokens x latent channels) of a continuous tokenizer that names its
    ``latent_channels``; ``None`` for discrete tokens (their values are code indices: pixels/token says it)."""
    channels = getattr(tokenizer, "latent_channels", None)
    if not tokenizer.continuous or not tokens or not isinstance(channels, int) or isinstance(channels, bool):
        return None
    return int(tokens) * channels
