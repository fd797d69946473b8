"""The tokenizer contract (SPEC.md, "The contract every tokenizer keeps").

Every tokenizer in the harness, built in or plugged in, subclasses
:class:`VideoTokenizer` and exchanges :class:`Tokens` with the engine.

Conventions, everywhere in the engine:

* video tensors are ``float32 [B, C, T, H, W]``, RGB, values in ``[-1, 1]``;
* decoded data on disk and in caches is ``uint8 [T, H, W, C]``.

A tokenizer that handles only short chunks natively (16 or 17 frames) sets
``chunk_frames``; the engine then splits long videos into chunks, encodes and
decodes each chunk and concatenates the reconstructions, exactly as CoordTok
supplementary B.1 describes for the baselines (see :func:`harness.chunks.reconstruct_video`).
A *chunk* is a tokenizer's temporal unit; a *clip* is a dataset sample.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np
import torch
from torch import Tensor, nn

Latents = Tensor | dict[str, Tensor]


@dataclass
class Tokens:
    """What ``encode`` returns and ``decode`` consumes.

    Attributes:
        latents: the continuous latents: one tensor (for example a 3D grid
            ``float32 [B, C', T', H', W']``) or a dict of named tensors (for
            example CoordTok's three planes ``{"xy", "xt", "yt"}``). For a
            quantizing tokenizer these are the quantized latents.
        tokens_per_video: tokens per video (one row of the batch; one chunk
            when the engine encodes chunks), the number that the leaderboard
            reports. For a flexible tokenizer it counts only the kept prefix.
        indices: discrete codes when the tokenizer quantizes (``int64``, any
            layout the tokenizer documents), else ``None``.
        info: whatever decode needs besides the latents: the video shape
            ``(T, H, W)`` under ``"shape"``, the kept prefix length under
            ``"keep"``, chunk boundaries, and so on. Values must be tensors,
            plain Python values or nested dicts of those.
        bits: exact size of each row's stored representation in bits,
            ``float64 [B]``, when the tokenizer knows it (a classical codec:
            8 x its bitstream bytes, container overhead excluded); ``None``
            for tokenizers whose rate the harness derives from ``indices``
            (``tokens x log2(codebook size)``, or the empirical entropy) or
            from the latents' stored dtype (issue 27, ``bpp``).
    """

    latents: Latents
    tokens_per_video: int
    indices: Tensor | dict[str, Tensor] | None = None
    info: dict[str, Any] = field(default_factory=dict)
    bits: Tensor | None = None

    def to(self, device: torch.device | str) -> "Tokens":
        """Return a copy with every tensor moved to ``device``."""
        return Tokens(
            latents=move_to(self.latents, device),
            tokens_per_video=self.tokens_per_video,
            indices=move_to(self.indices, device),
            info=move_to(self.info, device),
            bits=move_to(self.bits, device),
        )

    @property
    def batch_size(self) -> int:
        first = self.latents if isinstance(self.latents, Tensor) else next(iter(self.latents.values()))
        return int(first.shape[0])


def move_to(value: Any, device: torch.device | str) -> Any:
    """``value`` with every tensor (also inside mappings) moved to ``device``; other values as they are."""
    if isinstance(value, Tensor):
        return value.to(device)
    if isinstance(value, Mapping):
        return {k: move_to(v, device) for k, v in value.items()}
    return value


class VideoTokenizer(nn.Module):
    """Base class of every tokenizer.

    Class attributes a subclass may override:

    * ``chunk_frames``: native chunk length in frames, or ``None`` when the
      tokenizer takes whole videos of any supported length (it may chunk them
      itself, as VideoFlexTok's overlapping ``chunk_size`` chunks). The engine
      splits longer videos into independent chunks of this length (CoordTok
      supp. B.1). ``clip_frames`` before issue 25.
    * ``continuous``: ``True`` when the latents are continuous (SiT generators),
      ``False`` when ``Tokens.indices`` carries discrete codes (autoregressive
      generators).
    * ``flexible``: ``True`` when ``encode`` accepts a ``budget`` (a prefix
      length, VideoFlexTok); the suite can then sweep token budgets.
    * ``frozen_stage0``: ``True`` when the tokenizer starts with a frozen,
      deterministic front end (VideoFlexTok's stage-0 VAE) and implements
      ``stage0_features`` and ``stage0_losses`` with
      ``training_losses(v, s) == stage0_losses(stage0_features(v), s)``. The
      engine can then compute the front end once per training clip
      (``train.stage0_cache_clips``) instead of at every step, as DiT-style
      trainers do with precomputed VAE latents.
    * ``unused_parameters``: ``True`` when some trainable parameters may get
      no gradient at some training step (a discriminator before its start
      step, a module one stage skips). Under DDP the engine then has DDP search
      the autograd graph for them at every step (``find_unused_parameters``,
      https://pytorch.org/docs/stable/generated/torch.nn.parallel.DistributedDataParallel.html),
      an extra traversal per step and a warning when none is found; with
      ``False``, an unused parameter stops the next step with DDP's error. The
      default ``True`` is the safe one for plugins; the harness's families
      declare what holds for them (checked in ``tests/test_engine.py``).

    * ``variable_length``: ``True`` when ``encode`` and ``training_losses``
      take ``n_frames`` (``int64 [B]``, real frames of each video; frames at
      and after ``n_frames[b]`` are padding, ``data.short_videos: pad``) as a
      keyword argument (CoordTok, whose official loader pads videos shorter
      than 128 frames). The engine passes it only to such tokenizers
      (:func:`harness.chunks.length_kwargs`); others see padded videos.

    Subclasses implement the four methods below. ``training_losses`` returns a
    dict of scalar tensors that must hold ``"loss"`` (what the optimizer
    minimizes); it may hold ``"disc_loss"`` when the tokenizer has an
    adversarial ``discriminator`` sub-module, whose parameters the engine then
    optimizes with a second optimizer. The engine backpropagates
    ``loss + disc_loss`` once (one forward, one backward: safe under DDP), so
    the generator's adversarial term must not send gradients into the
    discriminator (evaluate it with detached discriminator parameters, e.g.
    ``torch.func.functional_call``) and ``disc_loss`` must use detached
    reconstructions. Other entries are logged.
    """

    chunk_frames: int | None = None
    continuous: bool = True
    flexible: bool = False
    frozen_stage0: bool = False
    unused_parameters: bool = True
    variable_length: bool = False
    #: where the family's architecture and training recipe come from (paper section, official repository and commit),
    #: shown by ``python -m harness protocol``; plugins may set it
    recipe_source: str = ""
    #: ``False`` for tokenizers a generator cannot be trained on (classical codecs, whose tokens are a bitstream):
    #: a suite entry of such a tokenizer must set ``generation: {enabled: false}`` (checked when the suite loads)
    generative: bool = True
    #: parameter counts the family's paper or official repository publishes, by ``size`` kwarg:
    #: ``{size: (count, source)}``; ``python -m harness list --params`` prints them next to the measured counts
    published_parameters: dict[str, tuple[float, str]] = {}

    def encode(self, video: Tensor, budget: int | None = None) -> Tokens:
        """Encode ``video`` ``float32 [B, 3, T, H, W]`` in ``[-1, 1]`` into tokens.

        ``budget`` is a prefix length (tokens per latent timestep for
        VideoFlexTok; ``None``: the full set); fixed-budget tokenizers raise
        ``ValueError`` when it is given and differs from their budget.
        """
        raise NotImplementedError

    def decode(self, tokens: Tokens) -> Tensor:
        """Decode ``tokens`` into ``float32 [B, 3, T, H, W]`` in ``[-1, 1]``."""
        raise NotImplementedError

    def training_losses(self, video: Tensor, step: int) -> dict[str, Tensor]:
        """Losses for one optimization step on ``video`` ``float32 [B, 3, T, H, W]``.

        ``step`` is the global optimizer step (0-based), so that multi-stage
        recipes (CoordTok's two stages, GAN start steps) switch on it and
        resume correctly.
        """
        raise NotImplementedError

    def stage0_features(self, video: Tensor) -> Tensor:
        """Frozen front-end output for ``video`` ``float32 [B, 3, T, H, W]``: a tensor ``[B, ...]``, one row per video.

        Only for tokenizers with ``frozen_stage0 = True``; no gradients flow through it.
        """
        raise NotImplementedError(f"{type(self).__name__} has no frozen stage 0")

    def stage0_losses(self, features: Tensor, step: int) -> dict[str, Tensor]:
        """``training_losses`` from ``stage0_features`` output ``[B, ...]`` (same dict contract)."""
        raise NotImplementedError(f"{type(self).__name__} has no frozen stage 0")

    def fresh_optimizer_at(self, steps: int) -> list[int]:
        """Steps (of a ``steps``-step schedule) before which training restarts its optimizers, for a tokenizer
        whose official recipe runs a later stage as a new run (CoordTok's stage 2); default none."""
        return []

    def tokens_per_video(self, frames: int, height: int, width: int) -> int:
        """Tokens for one video of ``frames x height x width`` pixels.

        Counted over every chunk when the tokenizer works on chunks.
        """
        raise NotImplementedError

    def token_budgets(self) -> list[int]:
        """Budgets (prefix lengths) that ``encode(budget=...)`` accepts (flexible tokenizers)."""
        return []

    @torch.no_grad()
    def reconstruct(self, video: Tensor, budget: int | None = None) -> Tensor:
        """``decode(encode(video))`` for one video or chunk the tokenizer handles natively."""
        return self.decode(self.encode(video, budget=budget))

    def codebook_size(self) -> int | None:
        """Number of discrete codes, or ``None`` for continuous tokenizers."""
        return None

    def generator_batch(self, tokens: Tokens) -> Tokens:
        """Tokens in the layout a generator trains on; identity by default."""
        return tokens

    #: whether :meth:`set_tiling` can switch tiled encoding/decoding on and off (the tiling check,
    #: :func:`harness.chunks.tiling_consistency`); pretrained VAEs that tile override it
    supports_tiling: bool = False

    @property
    def tiling_enabled(self) -> bool:
        """Whether tiled encoding/decoding is on."""
        return False

    def set_tiling(self, on: bool) -> None:
        """Switch tiled encoding/decoding on or off (tokenizers with ``supports_tiling``).

        Raises:
            ValueError: the tokenizer does not tile.
        """
        raise ValueError(f"{type(self).__name__} has no switchable tiling")

    def temporal_boundaries(self, frames: int) -> list[int]:
        """First frames of the independently coded pieces of a ``frames``-frame video (chunks, tiles) after
        the first, where reconstructions may jump (the boundary-jump metrics, ``metrics.temporal``).

        Default: every ``chunk_frames`` frames (the engine's chunks, :mod:`harness.chunks`); none for whole-video
        tokenizers.
        """
        chunk = self.chunk_frames
        return list(range(chunk, frames, chunk)) if chunk else []


def check_video(video: Tensor, name: str = "video") -> None:
    """Raise ``ValueError`` unless ``video`` is ``float [B, 3, T, H, W]``."""
    if not isinstance(video, Tensor) or video.ndim != 5 or video.shape[1] != 3:
        shape = tuple(video.shape) if isinstance(video, Tensor) else type(video).__name__
        raise ValueError(f"{name}: expected float tensor [B, 3, T, H, W], got {shape}")
    if not video.is_floating_point():
        raise ValueError(f"{name}: expected a float tensor in [-1, 1], got dtype {video.dtype}")


def to_model_range(clip: np.ndarray | Tensor) -> Tensor:
    """Stored frames to the engine's video convention: ``uint8 [..., T, H, W, 3]`` -> ``float32 [..., 3, T, H, W]``
    in ``[-1, 1]`` (``x / 127.5 - 1``)."""
    x = torch.as_tensor(clip)
    x = x.movedim(-1, -4).float()
    return x / 127.5 - 1.0


def to_uint8(video: Tensor) -> np.ndarray:
    """The engine's video convention to stored frames: ``float [..., 3, T, H, W]`` in ``[-1, 1]`` ->
    ``uint8 [..., T, H, W, 3]`` (clamped to ``[-1, 1]``, then ``(x + 1) * 127.5`` rounded half to even)."""
    x = ((video.detach().float().cpu().clamp(-1, 1) + 1.0) * 127.5).round().to(torch.uint8)
    return x.movedim(-4, -1).contiguous().numpy()
