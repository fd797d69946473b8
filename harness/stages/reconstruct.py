"""The ``reconstruct`` stage: every evaluation clip through a tokenizer, batch by batch, into ``recon/``.

Batch ``k`` (the evaluation clips in fixed batches of ``evaluate.batch_size``)
runs under ``derive_seed(suite seed, id, "reconstruct", budget, k)`` and is
done when ``recon/batch_<k>.json`` and its clips' ``.npy`` files exist, so a
killed stage resumes to the same files. Padded short clips pass their real
frame counts to ``variable_length`` tokenizers (:func:`harness.chunks.length_kwargs`).
Every process reconstructs its share of the batches
(:func:`harness.shards.my_share`); the main process then writes
``reconstruct.json``: tokens per video, the rate in bits per pixel
(:mod:`metrics.rate`: codec bitstream bits, discrete indices at ``log2 K`` and at
their entropy, continuous latents at fp16), encode/decode throughput, codebook
usage, the largest peak memory of the processes and, when asked, the tiling
check. Non-finite latents or reconstructions stop the stage
(:class:`harness_core.errors.NonFiniteError`) naming the tokenizer and clips. The
stage is skipped when the row's evaluation is current (its reconstructions
are then not needed) or every batch and ``reconstruct.json`` exist.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from harness_core.api import Tokens, VideoTokenizer
from harness.chunks import reconstruct_video, tiling_consistency
from harness.data.decode import to_model_range, to_uint8
from harness.data.sampling import Clip, clip_lengths
from harness_core.errors import NonFiniteError
from harness.generation.tree import tree_leaves
from harness_core.io import save_numpy_atomic, write_json_atomic
from harness.memory import StageMemory
from harness.records import ReconstructRecord
from harness_core.registry import register_stage
from harness_core.seeding import derive_seed, seeded
from harness.shards import gather_lists, my_share
from harness.stages.base import Stage, Variant, Work
from harness.stages.context import RunContext

log = logging.getLogger("harness.runner")


@register_stage("reconstruct")
class ReconstructStage(Stage):
    """Reconstruct every evaluation clip of one row into ``recon/<clip>.npy`` (``uint8 [T, H, W, 3]``)."""

    name = "reconstruct"
    scope = "variant"
    order = 20.0
    needs_model = True

    def outputs(self, ctx: RunContext, work: Work) -> list[Path]:
        return [work.variant.files.reconstruct]

    def done(self, ctx: RunContext, work: Work) -> bool:
        from harness.stages.evaluate import evaluation_current

        if evaluation_current(ctx, work.variant):
            return True
        recon_dir = work.variant.files.recon
        return work.variant.files.reconstruct.is_file() and all(
            batch_done(recon_dir, k, group) for k, group in enumerate(ctx.eval_batches()))

    @torch.no_grad()
    def run(self, ctx: RunContext, work: Work) -> None:
        entry, variant = work.entry, work.variant
        tokenizer = ctx.tokenizer(entry)
        recon_dir = variant.files.recon
        recon_dir.mkdir(parents=True, exist_ok=True)
        seed = derive_seed(ctx.suite.seed, entry.id, "reconstruct", variant.budget)
        batches = ctx.eval_batches()
        todo = [k for k in my_share(len(batches), "reconstruction batches") if not batch_done(recon_dir, k, batches[k])]
        log.info("reconstruct: %s (%d of %d batches to do)", variant.folder, len(todo), len(batches))
        with StageMemory(ctx.device) as memory:
            for k in todo:
                with seeded(derive_seed(seed, k)):
                    reconstruct_batch(ctx, work, tokenizer, batches[k], recon_dir / f"batch_{k:05d}.json")
        peaks = [peak for worked, peak in gather_lists([(bool(todo), memory.peak_mb)]) if worked]
        if ctx.is_main:
            summarize(ctx, tokenizer, variant, batches, seed, max(peaks) if peaks else None, memory.kind)
        ctx.barrier()


def reconstruct_batch(ctx: RunContext, work: Work, tokenizer: VideoTokenizer, group: list[Clip], record_path: Path) -> None:
    """Reconstruct one batch of clips, check it is finite, write its files and then its record."""
    label = work.label
    names = [c.clip_id for c in group]
    tally = TokenTally(label, names)
    timings: dict[str, float] = {}
    real = to_model_range(np.stack([ctx.clip_cache.load(c) for c in group])).to(ctx.device)
    recon, tokens_per_video = reconstruct_video(tokenizer, real, budget=work.variant.budget,
                                                chunk_batch=ctx.suite.evaluate.chunk_batch, on_tokens=tally, timings=timings,
                                                n_frames=clip_lengths(group, ctx.device))
    for clip, video in zip(group, recon):
        if not torch.isfinite(video).all():
            raise NonFiniteError(f"{label}: non-finite reconstruction of clip {clip.clip_id} "
                                 f"({clip.record.path.name}, frame {clip.start})")
    recon_dir = record_path.parent
    for clip, video in zip(group, to_uint8(recon)):
        save_numpy_atomic(recon_dir / f"{clip.clip_id}.npy", video)
    write_json_atomic(record_path, {"clips": names, "tokens_per_video": int(tokens_per_video), **tally.record(),
                                    "encode_s": timings.get("encode_s", 0.0), "decode_s": timings.get("decode_s", 0.0)})


class TokenTally:
    """The ``on_tokens`` callback of a batch's :func:`harness.chunks.reconstruct_video`: checks every
    :class:`~harness_core.api.Tokens` is finite and tallies what the batch record keeps of them (codes, codec bits,
    latent values, scalar token info), over every ``encode`` call (all chunks).

    Raises (when called):
        NonFiniteError: non-finite latents, naming ``label`` and the clips.
    """

    def __init__(self, label: str, names: list[str]) -> None:
        self.label, self.names = label, names
        self.codes: list[Tensor] = []
        self.bits: list[float | None] = []
        self.latent_values = 0
        self.info: dict[str, Any] = {}

    def __call__(self, tokens: Tokens) -> None:
        if not all_finite(tokens.latents):
            raise NonFiniteError(f"{self.label}: non-finite latents while encoding clip(s) {', '.join(self.names)}")
        if tokens.indices is not None:
            self.codes.extend(v.detach().flatten().long().cpu() for v in tree_leaves(tokens.indices))
        self.bits.append(None if tokens.bits is None else float(tokens.bits.double().sum()))
        self.latent_values += count_latent_values(tokens.latents)
        self.info.update({k: v for k, v in tokens.info.items() if isinstance(v, (int, float, str, bool))})

    def record(self) -> dict[str, Any]:
        """The batch record's ``codes`` (``[values, counts]`` of every index, or ``[]``), ``bits`` (total
        ``Tokens.bits`` or ``None``), ``latent_values`` (total floating-point latent values) and ``info``.

        Raises:
            ValueError: some ``encode`` calls gave ``Tokens.bits`` and others not (:func:`total_bits`).
        """
        counts: list[list[int]] = []
        if self.codes:
            values, numbers = torch.cat(self.codes).unique(return_counts=True)
            counts = [values.tolist(), numbers.tolist()]
        return {"codes": counts, "bits": total_bits(self.bits, self.label), "latent_values": self.latent_values,
                "info": self.info}


def summarize(ctx: RunContext, tokenizer: VideoTokenizer, variant: Variant, batches: list[list[Clip]], seed: int,
              peak_memory_mb: float | None, memory_kind: str) -> None:
    """``reconstruct.json`` from every batch record (main process), and the tiling check when asked."""
    recon_dir = variant.files.recon
    data = ctx.suite.data
    records = [json.loads((recon_dir / f"batch_{k:05d}.json").read_text()) for k in range(len(batches))]
    videos = sum(len(r["clips"]) for r in records)
    encode_s, decode_s = sum(r["encode_s"] for r in records), sum(r["decode_s"] for r in records)
    size = tokenizer.codebook_size()
    usage = code_usage(size, records) if size is not None and any(r["codes"] for r in records) else None
    tokens_per_video = records[0]["tokens_per_video"] if records else tokenizer.tokens_per_video(data.frames, data.resolution, data.resolution)
    summary = ReconstructRecord(
        tokens_per_video=tokens_per_video,
        videos_timed=videos, encode_videos_per_s=videos / max(encode_s, 1e-9), decode_videos_per_s=videos / max(decode_s, 1e-9),
        peak_memory_mb=peak_memory_mb, memory_kind=memory_kind if peak_memory_mb is not None else None,
        codebook=usage.compute() if usage is not None else None,
        token_info={key: value for r in records for key, value in r["info"].items()} or None,
        rate=row_rate(records, tokens_per_video, data.frames * data.resolution ** 2, size,
                      None if usage is None else usage.counts.cpu().numpy(), variant.folder))
    if ctx.suite.evaluate.tiling_check and tokenizer.supports_tiling and batches:
        real = to_model_range(np.stack([ctx.clip_cache.load(c) for c in batches[0]])).to(ctx.device)
        with seeded(derive_seed(seed, "tiling_check")):
            summary.tiling_consistency = tiling_consistency(tokenizer, real, ctx.suite.evaluate.chunk_batch)
        log.info("tiling check %s: %s", variant.folder, summary.tiling_consistency)
    summary.write(variant.files.reconstruct)


def count_latent_values(latents: Tensor | dict[str, Tensor] | None) -> int:
    """Floating-point values in ``latents`` (every row; a dict's tensors together): the continuous rate's count."""
    if latents is None:
        return 0
    return sum(v.numel() for v in tree_leaves(latents) if isinstance(v, Tensor) and v.is_floating_point())


def total_bits(bits: list[float | None], label: str) -> float | None:
    """Sum of ``Tokens.bits`` over every ``encode`` call of a batch (all rows, all chunks) or over batches' sums;
    ``None`` when none has bits.

    Raises:
        ValueError: some gave bits and others did not (the rate would silently drop chunks or batches).
    """
    if all(b is None for b in bits):
        return None
    if any(b is None for b in bits):
        raise ValueError(f"{label}: Tokens.bits set for some chunks or batches and not for others; a codec sets it "
                         f"on every encode call")
    return float(sum(bits))


def row_rate(records: list[dict[str, Any]], tokens_per_video: int | None, pixels_per_video: int,
             codebook_size: int | None, code_counts: np.ndarray | None, label: str) -> dict[str, Any] | None:
    """The row's rate (:func:`metrics.rate.rate_summary`) over every evaluation video, from the batch records' codec
    bits and latent values and the index histogram ``code_counts`` (``float64 [K]``, :func:`code_usage`). Batch
    records written before the rate existed (no ``latent_values`` key) give ``None``: the row is then shown without
    bpp, not with a wrong one."""
    from metrics.rate import rate_summary

    videos = sum(len(r["clips"]) for r in records)
    if not records or videos == 0 or any("latent_values" not in r for r in records):
        return None
    return rate_summary(tokens_per_video, pixels_per_video, videos, codebook_size=codebook_size, code_counts=code_counts,
                        bits=total_bits([r["bits"] for r in records], label),
                        latent_values=sum(r["latent_values"] for r in records))


def all_finite(latents: Tensor | dict[str, Tensor] | None) -> bool:
    if latents is None:
        return True
    return all(torch.isfinite(v).all() for v in tree_leaves(latents) if isinstance(v, Tensor) and v.is_floating_point())


def batch_done(recon_dir: Path, k: int, group: list[Clip]) -> bool:
    return (recon_dir / f"batch_{k:05d}.json").is_file() and all((recon_dir / f"{c.clip_id}.npy").is_file() for c in group)


def code_usage(size: int, records: list[dict[str, Any]]):
    """:class:`metrics.codebook.CodebookUsage` filled with the batch records' ``[codes, counts]``: the histogram of
    every index over the evaluation set (its ``counts``, ``float64 [size]``), codebook usage and perplexity."""
    from metrics.codebook import CodebookUsage

    usage = CodebookUsage(size, sync_on_compute=False)
    for record in records:
        if record["codes"]:
            codes, counts = record["codes"]
            usage.update(torch.tensor(codes), counts=torch.tensor(counts, dtype=torch.float64))
    return usage


def codebook_summary(size: int, records: list[dict[str, Any]]) -> dict[str, float]:
    """Codebook usage and perplexity from the batch records' ``[codes, counts]`` (:mod:`metrics.codebook`)."""
    return code_usage(size, records).compute()
