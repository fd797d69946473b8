"""Per-video token layouts for generators, and decoding generated tokens.

``harness.clips.encode_video`` returns one :class:`~harness_core.api.Tokens` per
group of clips (clip-based tokenizers such as the grid baselines with
``clip_frames = 16``) or one for the whole video. A generator models the
tokens of the **whole video** at once (CoordTok supp. B.2 generates the
128-frame tokens all at once), so the clip tokens are packed per video:

* continuous 3D grids ``[(B n), C, t, h, w]`` are stacked along time:
  ``[B, C, n t, h, w]`` (one long latent video);
* continuous planes (a dict, e.g. PVDM-AE's per-clip triplanes) are stacked
  along channels per plane: ``[(B n), C, H, W] -> [B, n C, H, W]``;
* discrete indices ``[(B n), ...]`` become one sequence per video, clip after
  clip, each clip row-major; flexible coarse-to-fine indices ``[(B n), t, k]``
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
from harness.clips import merge_clips
from harness.generation.ar import from_sequence, to_sequence



@dataclass
class TokenLayout:
    """How one video's tokens were packed (see the module docstring).

    Attributes:
        continuous: latents (SiT) or indices (autoregressive).
        clips: clips per video (1 for whole-video tokenizers).
        clip_frames: frames per clip given to the tokenizer (``None``: whole video).
        pad: frames added to complete the last clip (cropped after decoding).
        frames: frames per video.
        clip_tokens: ``Tokens.tokens_per_video`` of one clip (or video).
        info: decode ``info`` of one clip row.
        clip_shape: continuous: per-clip latent shape(s) without batch;
            discrete: per-clip index shape(s) without batch.
        coarse_to_fine: discrete flexible ``[t, k]`` indices ordered by register then timestep.
    """

    continuous: bool
    clips: int
    clip_frames: int | None
    pad: int
    frames: int
    clip_tokens: int
    info: dict[str, Any] = field(default_factory=dict)
    clip_shape: Any = None
    coarse_to_fine: bool = False

    @property
    def tokens_per_video(self) -> int:
        return self.clip_tokens * self.clips

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)

    @classmethod
    def from_dict(cls, state: Mapping[str, Any]) -> "TokenLayout":
        return cls(**state)


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
    """Pack the clip-group tokens of ``batch`` videos into per-video tensors.

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
        raise ValueError(f"{rows} clip rows do not split into {batch} videos")
    n = rows // batch
    clip = tokenizer.clip_frames if n > 1 or (tokenizer.clip_frames and tokenizer.clip_frames != frames) else None
    pad = (-frames) % clip if clip else 0
    layout = TokenLayout(continuous=bool(tokenizer.continuous), clips=n, clip_frames=clip, pad=pad, frames=frames,
                         clip_tokens=int(groups[0].tokens_per_video),
                         info=_generated_info(_info_template(groups[0].info, groups[0].batch_size), clip or frames))
    if tokenizer.continuous:
        first = groups[0].latents
        if isinstance(first, dict):
            lat = {k: torch.cat([g.latents[k] for g in groups]) for k in first}
            layout.clip_shape = {k: tuple(v.shape[1:]) for k, v in lat.items()}
            return {k: rearrange(v, "(b n) c h w -> b (n c) h w", n=n) for k, v in lat.items()}, layout
        if not isinstance(first, Tensor):
            raise ValueError(f"continuous tokens must carry a tensor or a dict of tensors, got {type(first).__name__}")
        lat = torch.cat([g.latents for g in groups])
        layout.clip_shape = tuple(lat.shape[1:])
        if lat.ndim != 5:
            if n > 1:
                raise ValueError(f"cannot stack {n} clips of latents {tuple(lat.shape[1:])}: only [C, t, h, w] grids")
            return lat, layout
        return rearrange(lat, "(b n) c t h w -> b c (n t) h w", n=n), layout
    first = groups[0].indices
    if first is None:
        raise ValueError(f"{type(tokenizer).__name__} is discrete (continuous=False) but its Tokens carry no indices")
    if isinstance(first, dict):
        idx = {k: torch.cat([g.indices[k] for g in groups]) for k in sorted(first)}
        layout.clip_shape = {k: tuple(v.shape[1:]) for k, v in idx.items()}
        seq = torch.cat([rearrange(v, "(b n) ... -> b (n ...)", n=n) for v in idx.values()], dim=1)
        return seq.long(), layout
    idx = torch.cat([g.indices for g in groups]).long()
    layout.clip_shape = tuple(idx.shape[1:])
    layout.coarse_to_fine = bool(tokenizer.flexible) and idx.ndim == 3
    if layout.coarse_to_fine:
        return to_sequence(rearrange(idx, "(b n) t k -> b (n t) k", n=n), coarse_to_fine=True), layout
    return rearrange(idx, "(b n) ... -> b (n ...)", n=n), layout


def unpack(packed: Latents, layout: TokenLayout) -> Latents:
    """Inverse of :func:`pack`: per-video tensors -> clip rows ``[(B n), ...]`` (latents or indices)."""
    n = layout.clips
    if layout.continuous:
        if isinstance(packed, dict):
            return {k: rearrange(v, "b (n c) h w -> (b n) c h w", n=n) for k, v in packed.items()}
        if packed.ndim == 5:
            return rearrange(packed, "b c (n t) h w -> (b n) c t h w", n=n)
        return packed
    if isinstance(layout.clip_shape, dict):
        sizes = [n * math.prod(s) for s in layout.clip_shape.values()]
        parts = packed.split(sizes, dim=1)
        return {k: p.reshape(-1, *s) for (k, s), p in zip(layout.clip_shape.items(), parts)}
    if layout.coarse_to_fine:
        t = layout.clip_shape[0]
        idx = from_sequence(packed, (n * t, layout.clip_shape[1]), coarse_to_fine=True)
        return rearrange(idx, "b (n t) k -> (b n) t k", n=n)
    return packed.reshape(packed.shape[0] * n, *layout.clip_shape)


@torch.no_grad()
def decode(tokenizer: VideoTokenizer, packed: Latents, layout: TokenLayout, clip_batch: int = 8) -> Tensor:
    """Decode per-video latents or index sequences into ``float32 [B, 3, T, H, W]`` in ``[-1, 1]``.

    Clip-based tokenizers decode clip by clip (``clip_batch`` clips per
    call), the clips are concatenated in time and the padding is cropped
    (CoordTok supp. B.1). Discrete tokens are decoded from indices alone
    (``Tokens(latents=None, indices=...)``); a flexible sequence stopped early
    decodes with ``info["keep"]`` set to the generated prefix.
    """
    rows = unpack(packed, layout)
    leaves = list(rows.values()) if isinstance(rows, dict) else [rows]
    total = leaves[0].shape[0]
    batch = total // layout.clips
    parts = []
    for start in range(0, total, clip_batch):
        sl = slice(start, min(total, start + clip_batch))
        chunk = {k: v[sl] for k, v in rows.items()} if isinstance(rows, dict) else rows[sl]
        size = sl.stop - sl.start
        info = _info_expand(layout.info, size, leaves[0].device)
        if layout.continuous:
            tokens = Tokens(latents=chunk, tokens_per_video=layout.clip_tokens, info=info)
        else:
            count = layout.clip_tokens
            if layout.coarse_to_fine:
                keep = int(chunk.shape[-1])
                if isinstance(info, dict) and "keep" in info:
                    info = {**info, "keep": keep}
                count = int(chunk.shape[1]) * keep
            tokens = Tokens(latents=None, indices=chunk, tokens_per_video=count, info=info)
        parts.append(tokenizer.decode(tokens).float())
    clips = torch.cat(parts)
    if layout.clips > 1 or layout.clip_frames:
        video = merge_clips(clips, batch, layout.pad)
    else:
        video = clips
    return video[:, :, : layout.frames].clamp(-1, 1)
