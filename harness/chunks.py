"""Long videos through chunk-based tokenizers (CoordTok supplementary B.1).

A tokenizer that declares a native ``chunk_frames`` (16 for the grid
baselines) sees a long video as consecutive, non-overlapping chunks: each
chunk is tokenized and reconstructed on its own and the reconstructions are
concatenated in time. Tokens per video are counted over all chunks (8192 for
TATS / MAGVIT / MaskGIT-AE and 6144 for PVDM-AE on 128x128x128, Table 7).

Words: a *chunk* is a tokenizer's native temporal unit (VideoFlexTok's term);
a *clip* is a dataset sample (an evaluation or training clip), which this
module splits into chunks. Until issue 25 this module was ``harness.clips``.
"""
from __future__ import annotations

import time
from typing import Callable

import torch
from einops import rearrange
from torch import Tensor

from harness_core.api import Tokens, VideoTokenizer, check_video


def split_into_chunks(video: Tensor, chunk_frames: int) -> tuple[Tensor, int]:
    """``[B, C, T, H, W] -> [B * n, C, chunk_frames, H, W]`` plus the padding added.

    When ``T`` is not a multiple of ``chunk_frames`` the last chunk is completed
    by repeating the last frame; the caller crops the reconstruction back.
    """
    frames = video.shape[2]
    pad = (-frames) % chunk_frames
    if pad:
        video = torch.cat([video, video[:, :, -1:].expand(-1, -1, pad, -1, -1)], dim=2)
    return rearrange(video, "b c (n t) h w -> (b n) c t h w", t=chunk_frames), pad


def merge_chunks(chunks: Tensor, batch: int, pad: int) -> Tensor:
    """Inverse of :func:`split_into_chunks` (crops the ``pad`` frames again)."""
    video = rearrange(chunks, "(b n) c t h w -> b c (n t) h w", b=batch)
    return video[:, :, : video.shape[2] - pad] if pad else video


def length_kwargs(tokenizer: VideoTokenizer, n_frames: Tensor | None) -> dict[str, Tensor]:
    """``{"n_frames": n_frames}`` for a ``variable_length`` tokenizer given real frame counts, else ``{}``: the
    engine's one rule for passing ``n_frames`` (``int64 [B]``) to ``encode`` and ``training_losses``."""
    return {"n_frames": n_frames} if n_frames is not None and tokenizer.variable_length else {}


@torch.no_grad()
def encode_video(tokenizer: VideoTokenizer, video: Tensor, budget: int | None = None,
                 chunk_batch: int = 8, n_frames: Tensor | None = None) -> list[Tokens]:
    """Tokens of a whole video batch, one :class:`Tokens` per group of ``chunk_batch`` chunks.

    Tokenizers without ``chunk_frames`` get the whole video in one call (with ``n_frames``, ``int64 [B]`` real
    frames per video, when the tokenizer is ``variable_length``); chunk tokenizers encode padded chunks too.
    """
    check_video(video)
    if not tokenizer.chunk_frames or tokenizer.chunk_frames == video.shape[2]:
        return [tokenizer.encode(video, budget=budget, **length_kwargs(tokenizer, n_frames))]
    chunks, _ = split_into_chunks(video, tokenizer.chunk_frames)
    return [tokenizer.encode(group, budget=budget) for group in chunks.split(chunk_batch)]


@torch.no_grad()
def reconstruct_video(tokenizer: VideoTokenizer, video: Tensor, budget: int | None = None,
                      chunk_batch: int = 8, on_tokens: Callable[[Tokens], None] | None = None,
                      timings: dict[str, float] | None = None, n_frames: Tensor | None = None) -> tuple[Tensor, int]:
    """Reconstruct ``video`` ``float32 [B, 3, T, H, W]`` in ``[-1, 1]``, chunk by chunk when needed
    (``chunk_batch`` chunks per ``encode`` call).

    ``on_tokens`` is called with every :class:`Tokens` produced (for example to
    count codebook usage); ``timings`` accumulates wall-clock seconds spent in
    ``encode_s`` and ``decode_s``. ``n_frames`` (``int64 [B]``, real frames of
    padded videos) goes to ``variable_length`` whole-video tokenizers; others
    reconstruct the padding too (scores exclude it).

    Returns:
        the reconstruction (same shape, clamped to ``[-1, 1]``) and the number
        of tokens per video, counted over all chunks.
    """
    check_video(video)
    timings = timings if timings is not None else {}
    batch, frames = video.shape[0], video.shape[2]
    chunk = tokenizer.chunk_frames
    whole = not chunk or chunk == frames
    chunks, pad = (video, 0) if whole else split_into_chunks(video, chunk)
    parts, per_chunk = [], 0
    for group in [chunks] if whole else chunks.split(chunk_batch):
        began = time.perf_counter()
        tokens = tokenizer.encode(group, budget=budget, **(length_kwargs(tokenizer, n_frames) if whole else {}))
        _synchronize(group.device)
        middle = time.perf_counter()
        parts.append(tokenizer.decode(tokens))
        _synchronize(group.device)
        timings["encode_s"] = timings.get("encode_s", 0.0) + middle - began
        timings["decode_s"] = timings.get("decode_s", 0.0) + time.perf_counter() - middle
        per_chunk = tokens.tokens_per_video
        if on_tokens:
            on_tokens(tokens)
    if whole:
        return parts[0].clamp(-1, 1), per_chunk
    recon = merge_chunks(torch.cat(parts), batch, pad).clamp(-1, 1)
    return recon, per_chunk * (chunks.shape[0] // batch)


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.no_grad()
def tiling_consistency(tokenizer: VideoTokenizer, video: Tensor, chunk_batch: int = 8) -> dict[str, float]:
    """Reconstruct ``video`` with tiling off and on and compare (the tiling check of issue 16: a temporal-tiling
    blend bug cost one project 13 dB of round-trip PSNR, FastVideo issue 1181).

    Args:
        tokenizer: a tokenizer with ``supports_tiling`` (its own tile settings are used when on).
        video: ``float32 [B, 3, T, H, W]`` in ``[-1, 1]``, split into the tokenizer's chunks as in evaluation.
        chunk_batch: chunks per ``encode`` call.

    Returns:
        ``{"psnr_tiled_vs_untiled", "psnr_untiled", "psnr_tiled", "psnr_drop"}`` in dB, each the mean over frames
        and videos of ``metrics.quality.per_frame_psnr`` (capped at ``PSNR_CAP_DB``);
        ``psnr_drop = psnr_untiled - psnr_tiled``. The tokenizer's tiling state is restored.

    Raises:
        ValueError: the tokenizer cannot switch tiling.
    """
    from metrics.quality import per_frame_psnr

    if not tokenizer.supports_tiling:
        raise ValueError(f"tiling check: {type(tokenizer).__name__} has no switchable tiling")
    check_video(video)
    was_on = tokenizer.tiling_enabled
    try:
        tokenizer.set_tiling(False)
        untiled, _ = reconstruct_video(tokenizer, video, chunk_batch=chunk_batch)
        tokenizer.set_tiling(True)
        tiled, _ = reconstruct_video(tokenizer, video, chunk_batch=chunk_batch)
    finally:
        tokenizer.set_tiling(was_on)
    video = video.to(untiled.device)
    off, on = per_frame_psnr(video, untiled).mean().item(), per_frame_psnr(video, tiled).mean().item()
    return {"psnr_tiled_vs_untiled": per_frame_psnr(untiled, tiled).mean().item(), "psnr_untiled": off,
            "psnr_tiled": on, "psnr_drop": off - on}
