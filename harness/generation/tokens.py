"""Per-video token layouts for generators, and decoding generated tokens.

``harness.chunks.encode_video`` returns one :class:`~harness_core.api.Tokens` per
group of chunks (chunk-based tokenizers such as the grid baselines with
``chunk_frames = 16``) or one for the whole video. A generator models the
tokens of the **whole video** at once (CoordTok supp. B.2 generates the
128-frame tokens all at once), so the chunk tokens are packed per video:

* continuous 3D grids ``[(B n), C, t, h, w]`` are stacked along time:
  ``[B, C, n t, h, w]`` (one long latent video);
* continuous planes (a dict, e.g. PVDM-AE's per-chunk triplanes) are stacked
  along channels per plane: ``[(B n), C, H, W] -> [B, n C, H, W]``;
* discrete indices ``[(B n), ...]`` become one sequence per video, chunk after
  chunk, each chunk row-major; flexible coarse-to-fine indices ``[(B n), t, k]``
  become ``[B, n t, k]`` and are ordered by register then timestep (see
  :mod:`harness.generation.ar`); dicts of indices are flattened per key
  (sorted) and concatenated.

:class:`TokenLayout` remembers what is needed to invert the packing and to
build the :class:`Tokens` that ``tokenizer.decode`` takes (the ``info`` of the
first encoded group; batch-sized tensors in it are broadcast from their first
row, except ``n_frames``, CoordTok's real-frame count, which is the full
length: generated videos have no padding).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Mapping

import torch
from einops import rearrange
from torch import Tensor

from harness_core.api import Latents, Tokens, VideoTokenizer
from harness.chunks import merge_chunks
from harness.generation.ar import from_sequence, to_sequence



@dataclass
class TokenLayout:
    """How one video's tokens were packed (see the module docstring).

    Attributes:
        continuous: latents (SiT) or indices (autoregressive).
        chunks: chunks per video (1 for whole-video tokenizers).
        chunk_frames: frames per chunk given to the tokenizer (``None``: whole video).
        pad: frames added to complete the last chunk (cropped after decoding).
        frames: frames per video.
        chunk_tokens: ``Tokens.tokens_per_video`` of one chunk (or video).
        info: decode ``info`` of one chunk row.
        chunk_shape: continuous: per-chunk latent shape(s) without batch;
            discrete: per-chunk index shape(s) without batch.
        coarse_to_fine: discrete flexible ``[t, k]`` indices ordered by register then timestep.
    """

    continuous: bool
    chunks: int
    chunk_frames: int | None
    pad: int
    frames: int
    chunk_tokens: int
    info: dict[str, Any] = field(default_factory=dict)
    chunk_shape: Any = None
    coarse_to_fine: bool = False

    @property
    def tokens_per_video(self) -> int:
        return self.chunk_tokens * self.chunks

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)

    @classmethod
    def from_dict(cls, state: Mapping[str, Any]) -> "TokenLayout":
        """The layout of :meth:`to_dict`; token caches and generator checkpoints written before issue 25 spell the
        chunk fields ``clips``, ``clip_frames``, ``clip_tokens``, ``clip_shape`` (:data:`RENAMED_LAYOUT_FIELDS`)."""
        return cls(**{RENAMED_LAYOUT_FIELDS.get(key, key): value for key, value in state.items()})


#: :class:`TokenLayout` fields renamed in issue 25 (old -> new), read back from caches written before
RENAMED_LAYOUT_FIELDS = {"clips": "chunks", "clip_frames": "chunk_frames", "clip_tokens": "chunk_tokens",
                         "clip_shape": "chunk_shape"}


def _info_template(info: Any, rows: int) -> Any:
    if isinstance(info, Tensor):
        return info[:1].cpu() if info.ndim and info.shape[0] == rows else info.cpu()
    if isinstance(info, Mapping):
        return {k: _info_template(v, rows) for k, v in info.items()}
    return info


def _generated_info(info: Any, frames: int) -> Any:
    """A decode ``info`` template for generated videos, which have no padding: its ``n_frames`` (the real
    frames of the first encoded row, which may be a padded short video) becomes the full length ``frames``,
    as CoordTok-SiT decodes every coordinate of its samples (huiwon-jang/CoordTok 8475272 ``sample_sit.py``
    ``decode_video``)."""
    if isinstance(info, Mapping) and "n_frames" in info:
        return {**info, "n_frames": torch.full((1,), frames, dtype=torch.long)}
    return info


def _info_expand(info: Any, rows: int, device: torch.device) -> Any:
    if isinstance(info, Tensor):
        return info.to(device).expand(rows, *info.shape[1:]) if info.ndim and info.shape[0] == 1 else info.to(device)
    if isinstance(info, Mapping):
        return {k: _info_expand(v, rows, device) for k, v in info.items()}
    return info


def pack(groups: list[Tokens], batch: int, tokenizer: VideoTokenizer, frames: int) -> tuple[Latents, TokenLayout]:
    """Pack the chunk-group tokens of ``batch`` videos into per-video tensors.

    Returns:
        continuous: latents ``[B, ...]`` (tensor or dict of planes);
        discrete: the generation-order sequence ``int64 [B, L]``;
        and the :class:`TokenLayout`.

    Raises:
        ValueError: for token layouts that cannot be packed (named in the message).
    """
    groups = [tokenizer.generator_batch(g) for g in groups]
    rows = sum(g.batch_size for g in groups)
    if rows % batch:
        raise ValueError(f"{rows} chunk rows do not split into {batch} videos")
    n = rows // batch
    chunk = tokenizer.chunk_frames if n > 1 or (tokenizer.chunk_frames and tokenizer.chunk_frames != frames) else None
    pad = (-frames) % chunk if chunk else 0
    layout = TokenLayout(continuous=bool(tokenizer.continuous), chunks=n, chunk_frames=chunk, pad=pad, frames=frames,
                         chunk_tokens=int(groups[0].tokens_per_video),
                         info=_generated_info(_info_template(groups[0].info, groups[0].batch_size), chunk or frames))
    if tokenizer.continuous:
        first = groups[0].latents
        if isinstance(first, dict):
            lat = {k: torch.cat([g.latents[k] for g in groups]) for k in first}
            layout.chunk_shape = {k: tuple(v.shape[1:]) for k, v in lat.items()}
            return {k: rearrange(v, "(b n) c h w -> b (n c) h w", n=n) for k, v in lat.items()}, layout
        if not isinstance(first, Tensor):
            raise ValueError(f"continuous tokens must carry a tensor or a dict of tensors, got {type(first).__name__}")
        lat = torch.cat([g.latents for g in groups])
        layout.chunk_shape = tuple(lat.shape[1:])
        if lat.ndim != 5:
            if n > 1:
                raise ValueError(f"cannot stack {n} chunks of latents {tuple(lat.shape[1:])}: only [C, t, h, w] grids")
            return lat, layout
        return rearrange(lat, "(b n) c t h w -> b c (n t) h w", n=n), layout
    first = groups[0].indices
    if first is None:
        raise ValueError(f"{type(tokenizer).__name__} is discrete (continuous=False) but its Tokens carry no indices")
    if isinstance(first, dict):
        idx = {k: torch.cat([g.indices[k] for g in groups]) for k in sorted(first)}
        layout.chunk_shape = {k: tuple(v.shape[1:]) for k, v in idx.items()}
        seq = torch.cat([rearrange(v, "(b n) ... -> b (n ...)", n=n) for v in idx.values()], dim=1)
        return seq.long(), layout
    idx = torch.cat([g.indices for g in groups]).long()
    layout.chunk_shape = tuple(idx.shape[1:])
    layout.coarse_to_fine = bool(tokenizer.flexible) and idx.ndim == 3
    if layout.coarse_to_fine:
        return to_sequence(rearrange(idx, "(b n) t k -> b (n t) k", n=n), coarse_to_fine=True), layout
    return rearrange(idx, "(b n) ... -> b (n ...)", n=n), layout


def unpack(packed: Latents, layout: TokenLayout) -> Latents:
    """Inverse of :func:`pack`: per-video tensors -> chunk rows ``[(B n), ...]`` (latents or indices)."""
    n = layout.chunks
    if layout.continuous:
        if isinstance(packed, dict):
            return {k: rearrange(v, "b (n c) h w -> (b n) c h w", n=n) for k, v in packed.items()}
        if packed.ndim == 5:
            return rearrange(packed, "b c (n t) h w -> (b n) c t h w", n=n)
        return packed
    if isinstance(layout.chunk_shape, dict):
        sizes = [n * math.prod(s) for s in layout.chunk_shape.values()]
        parts = packed.split(sizes, dim=1)
        return {k: p.reshape(-1, *s) for (k, s), p in zip(layout.chunk_shape.items(), parts)}
    if layout.coarse_to_fine:
        t = layout.chunk_shape[0]
        idx = from_sequence(packed, (n * t, layout.chunk_shape[1]), coarse_to_fine=True)
        return rearrange(idx, "b (n t) k -> (b n) t k", n=n)
    return packed.reshape(packed.shape[0] * n, *layout.chunk_shape)


@torch.no_grad()
def decode(tokenizer: VideoTokenizer, packed: Latents, layout: TokenLayout, chunk_batch: int = 8) -> Tensor:
    """Decode per-video latents or index sequences into ``float32 [B, 3, T, H, W]`` in ``[-1, 1]``.

    Chunk-based tokenizers decode chunk by chunk (``chunk_batch`` chunks per
    call), the chunks are concatenated in time and the padding is cropped
    (CoordTok supp. B.1). Discrete tokens are decoded from indices alone
    (``Tokens(latents=None, indices=...)``); a flexible sequence stopped early
    decodes with ``info["keep"]`` set to the generated prefix.
    """
    rows = unpack(packed, layout)
    leaves = list(rows.values()) if isinstance(rows, dict) else [rows]
    total = leaves[0].shape[0]
    batch = total // layout.chunks
    parts = []
    for start in range(0, total, chunk_batch):
        sl = slice(start, min(total, start + chunk_batch))
        group = {k: v[sl] for k, v in rows.items()} if isinstance(rows, dict) else rows[sl]
        size = sl.stop - sl.start
        info = _info_expand(layout.info, size, leaves[0].device)
        if layout.continuous:
            tokens = Tokens(latents=group, tokens_per_video=layout.chunk_tokens, info=info)
        else:
            count = layout.chunk_tokens
            if layout.coarse_to_fine:
                keep = int(group.shape[-1])
                if isinstance(info, dict) and "keep" in info:
                    info = {**info, "keep": keep}
                count = int(group.shape[1]) * keep
            tokens = Tokens(latents=None, indices=group, tokens_per_video=count, info=info)
        parts.append(tokenizer.decode(tokens).float())
    chunks = torch.cat(parts)
    if layout.chunks > 1 or layout.chunk_frames:
        video = merge_chunks(chunks, batch, layout.pad)
    else:
        video = chunks
    return video[:, :, : layout.frames].clamp(-1, 1)
