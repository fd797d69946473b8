"""``tats``: TATS-AE, the 3D VQGAN of TATS (Ge et al., ECCV 2022; CoordTok supp. C.1, Table 7) with its own network.

The network of songweige/TATS@03bbce1 ``tats/tats_vqgan.py`` (``Encoder``, ``Decoder``, ``ResBlock``,
``SamePadConv3d``, ``SamePadConvTranspose3d``), as its README trains it on UCF-101 at 128x128
(``--n_hiddens 32 --downsample 4 8 8 --embedding_dim 256 --n_codes 16384 --norm_type batch``):

* every convolution pads its input to keep ``size / stride`` positions, ``kernel - stride`` in total, the extra
  one in front, by *replication* (``padding_type='replicate'``, TATS' "time-agnostic" padding);
* encoder: a 3x3x3 convolution to ``n_hiddens``, then per halving a kernel-4 convolution with stride 2 on every
  axis still to be downsampled (time: the first two of three) doubling the width, and a residual block; then
  normalization and SiLU; a 1x1x1 convolution to the code dimension (``pre_vq_conv``);
* decoder: a 1x1x1 convolution back (``post_vq_conv``), normalization and SiLU, then per doubling a kernel-4
  transposed convolution (input replicate-padded) and two residual blocks, halving the width from the second
  on, and a 3x3x3 convolution to RGB;
* residual block: norm, SiLU, 3x3x3 conv, norm, SiLU, 3x3x3 conv, plus the input;
* normalization: BatchNorm (``--norm_type batch``; TATS synchronises it over GPUs with ``--sync_batchnorm``,
  the engine's DDP keeps per-process batch statistics) or GroupNorm (32 groups, TATS' default).

A 16x128x128 chunk becomes a 4x16x16 grid of codes: 1024 tokens per chunk, 8192 per 128-frame video (Table 7).
Quantization and objective are :class:`video_tokenizers.grid3d_vq.VQAutoencoderMixin`'s with the ``"tats"``
recipe (L1 x4, LPIPS x4 on a random frame, hinge 2D + 3D PatchGANs from step 10,000 with feature matching x4).
TATS' codebook is an EMA codebook initialised from the first batch without random restarts (README
``--no_random_restart``): ``threshold_ema_dead_code=0`` here, k-means initialisation on the first batch.
Optimizer (README, ``configure_optimizers``): Adam betas (0.5, 0.9), lr 3e-5, gradients clipped at norm 1.0
(``--gradient_clip_val 1.0``): suite ``train: {lr: 3.0e-5, betas: [0.5, 0.9], grad_clip: 1.0}``.
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import torch.nn.functional as F
from torch import Tensor, nn

from harness_core.api import VideoTokenizer
from harness_core.registry import SizeConfig, register_size_presets, register_tokenizer
from video_tokenizers.grid3d_vq import VQAutoencoderMixin


def _same_pads(kernel: Sequence[int], stride: Sequence[int]) -> tuple[int, ...]:
    """``F.pad`` amounts (last axis first) of TATS' 'same' padding: ``kernel - stride`` per axis, the odd one in front."""
    pads: list[int] = []
    for k, s in reversed(list(zip(kernel, stride))):
        total = k - s
        pads += [total // 2 + total % 2, total // 2]
    return tuple(pads)


def _triple(value: int | Sequence[int]) -> tuple[int, int, int]:
    return (value,) * 3 if isinstance(value, int) else tuple(value)


class SamePadConv3d(nn.Module):
    """3D convolution on an input padded by ``kernel - stride`` per axis (``padding`` mode, TATS: replicate).

    ``[B, C, T, H, W] -> [B, out_ch, T/st, H/sh, W/sw]`` for sizes divisible by the stride.
    """

    def __init__(self, in_ch: int, out_ch: int, kernel: int | Sequence[int], stride: int | Sequence[int] = 1,
                 padding: str = "replicate") -> None:
        super().__init__()
        kernel, stride = _triple(kernel), _triple(stride)
        self.pads, self.padding = _same_pads(kernel, stride), padding
        self.conv = nn.Conv3d(in_ch, out_ch, kernel, stride=stride)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.pad(x, self.pads, mode=self.padding))


class SamePadConvTranspose3d(nn.Module):
    """TATS' upsampling: the input padded as :class:`SamePadConv3d` pads it, then a transposed convolution with
    padding ``kernel - 1``: ``[B, C, t, h, w] -> [B, out_ch, t*st, h*sh, w*sw]``."""

    def __init__(self, in_ch: int, out_ch: int, kernel: int | Sequence[int], stride: int | Sequence[int],
                 padding: str = "replicate") -> None:
        super().__init__()
        kernel, stride = _triple(kernel), _triple(stride)
        self.pads, self.padding = _same_pads(kernel, stride), padding
        self.convt = nn.ConvTranspose3d(in_ch, out_ch, kernel, stride=stride, padding=tuple(k - 1 for k in kernel))

    def forward(self, x: Tensor) -> Tensor:
        return self.convt(F.pad(x, self.pads, mode=self.padding))


def tats_norm(channels: int, kind: str) -> nn.Module:
    """TATS' ``Normalize``: ``"batch"`` (BatchNorm3d) or ``"group"`` (GroupNorm, 32 groups, eps 1e-6).

    Raises:
        ValueError: another ``kind``.
    """
    if kind == "batch":
        return nn.BatchNorm3d(channels)
    if kind == "group":
        return nn.GroupNorm(32, channels, eps=1e-6)
    raise ValueError(f"norm must be 'batch' or 'group', got {kind!r}")


class TATSResBlock(nn.Module):
    """norm -> SiLU -> 3x3x3 conv, twice, plus the input (TATS ``ResBlock``, equal widths, no dropout)."""

    def __init__(self, channels: int, norm: str, padding: str) -> None:
        super().__init__()
        self.block = nn.Sequential(
            tats_norm(channels, norm), nn.SiLU(), SamePadConv3d(channels, channels, 3, padding=padding),
            tats_norm(channels, norm), nn.SiLU(), SamePadConv3d(channels, channels, 3, padding=padding),
        )

    def forward(self, x: Tensor) -> Tensor:
        return x + self.block(x)


def _halvings(factors: Sequence[int]) -> list[tuple[int, int, int]]:
    """The per-block strides of a ``(t, h, w)`` factor (powers of two): 2 on the axes still to be halved."""
    counts = [int(f).bit_length() - 1 for f in factors]
    strides = []
    for _ in range(max(counts)):
        strides.append(tuple(2 if c > 0 else 1 for c in counts))
        counts = [c - 1 for c in counts]
    return strides


class TATSEncoder(nn.Module):
    """``[B, 3, T, H, W] -> [B, n_hiddens * 2^L, T/ft, H/fh, W/fw]`` (L halvings; TATS ``Encoder``)."""

    def __init__(self, n_hiddens: int, downsample: Sequence[int], norm: str, padding: str) -> None:
        super().__init__()
        self.conv_first = SamePadConv3d(3, n_hiddens, 3, padding=padding)
        blocks, width = [], n_hiddens
        for stride in _halvings(downsample):
            blocks.append(nn.Sequential(SamePadConv3d(width, width * 2, 4, stride, padding),
                                        TATSResBlock(width * 2, norm, padding)))
            width *= 2
        self.blocks = nn.Sequential(*blocks)
        self.final = nn.Sequential(tats_norm(width, norm), nn.SiLU())
        self.out_channels = width

    def forward(self, x: Tensor) -> Tensor:
        return self.final(self.blocks(self.conv_first(x)))


class TATSDecoder(nn.Module):
    """``[B, n_hiddens * 2^L, t, h, w] -> [B, 3, T, H, W]`` (TATS ``Decoder``)."""

    def __init__(self, n_hiddens: int, upsample: Sequence[int], norm: str, padding: str) -> None:
        super().__init__()
        strides = _halvings(upsample)
        levels = len(strides)
        width = n_hiddens * 2 ** levels
        self.first = nn.Sequential(tats_norm(width, norm), nn.SiLU())
        blocks = []
        for i, stride in enumerate(strides):
            out = n_hiddens * 2 ** (levels - i)
            blocks.append(nn.Sequential(SamePadConvTranspose3d(width, out, 4, stride, padding),
                                        TATSResBlock(out, norm, padding), TATSResBlock(out, norm, padding)))
            width = out
        self.blocks = nn.Sequential(*blocks)
        self.conv_last = SamePadConv3d(width, 3, 3, padding=padding)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv_last(self.blocks(self.first(x)))


@register_tokenizer("tats")
class TATSAutoencoder(VQAutoencoderMixin, VideoTokenizer):
    """TATS-AE: ``[B, 3, 16, H, W] -> int64 [B, 4, H/8, W/8]`` codes (module docstring for the network).

    Args:
        size: a key of :data:`TATS_SIZES` giving the defaults of the next four arguments.
        n_hiddens: width of the first level (TATS README: 32); doubled at every halving.
        downsample: ``(t, h, w)`` compression factors, powers of two (``(4, 8, 8)``).
        latent_channels: code dimension (``--embedding_dim`` 256); codebook_size: ``--n_codes`` (16384).
        norm: ``"batch"`` (README ``--norm_type batch``) or ``"group"``.
        padding: padding mode of every convolution (``"replicate"``, TATS' default).
        commitment_weight, ema_decay, kmeans_init, threshold_ema_dead_code, rotation_trick: ``VectorQuantize``
            options (TATS: commitment 0.25, EMA decay 0.99, no random restarts).
        recipe, loss: loss recipe (``"tats"``) and overrides; weight_ema: EMA of the weights (TATS keeps none).
        chunk_frames: native chunk length (16); the engine splits longer videos into chunks (supp. B.1).

    Raises:
        ValueError: sizes the factors do not divide, unknown ``norm`` or loss options.
    """

    #: where the recipe comes from (``python -m harness protocol`` shows it; conformance in docs/fidelity.md)
    recipe_source = "TATS-AE: songweige/TATS 03bbce1 tats/tats_vqgan.py network and README recipe (docs/baselines.md)"

    def __init__(self, size: str | None = "tiny", n_hiddens: int | None = None, downsample: Sequence[int] | None = None,
                 latent_channels: int | None = None, codebook_size: int | None = None, norm: str = "batch",
                 padding: str = "replicate", commitment_weight: float = 0.25, ema_decay: float = 0.99,
                 kmeans_init: bool = True, threshold_ema_dead_code: float = 0.0, rotation_trick: bool = False,
                 recipe: str = "tats", loss: Mapping[str, Any] | None = None, weight_ema: float | None = None,
                 chunk_frames: int | None = 16) -> None:
        super().__init__()
        preset = TATS_SIZES[size or "base"]
        self.n_hiddens = n_hiddens or preset["n_hiddens"]
        self.factors = tuple(downsample or preset["downsample"])
        if len(self.factors) != 3 or any(f < 1 or f & (f - 1) for f in self.factors):
            raise ValueError(f"downsample must be three powers of two (t, h, w), got {self.factors}")
        self.latent_channels = latent_channels or preset["latent_channels"]
        self.chunk_frames = chunk_frames
        self.encoder = TATSEncoder(self.n_hiddens, self.factors, norm, padding)
        self.pre_vq_conv = SamePadConv3d(self.encoder.out_channels, self.latent_channels, 1, padding=padding)
        self.post_vq_conv = SamePadConv3d(self.latent_channels, self.encoder.out_channels, 1, padding=padding)
        self.decoder = TATSDecoder(self.n_hiddens, self.factors, norm, padding)
        self._init_vq(self.latent_channels, codebook_size or preset["codebook_size"], commitment_weight, ema_decay,
                      kmeans_init, threshold_ema_dead_code, rotation_trick, recipe, loss, weight_ema)

    def latent_shape(self, frames: int, height: int, width: int) -> tuple[int, int, int]:
        """Code grid ``(T/ft, H/fh, W/fw)`` of a chunk; raises ``ValueError`` for sizes the factors do not divide."""
        sizes = (frames, height, width)
        if any(n % f for n, f in zip(sizes, self.factors)):
            raise ValueError(f"frames, height and width must be multiples of {self.factors}, got {sizes}")
        return tuple(n // f for n, f in zip(sizes, self.factors))

    def tokens_per_video(self, frames: int, height: int, width: int) -> int:
        chunk = self.chunk_frames or frames
        t, h, w = self.latent_shape(chunk, height, width)
        return -(-frames // chunk) * t * h * w

    def encode_grid(self, video: Tensor) -> Tensor:
        self.latent_shape(*video.shape[2:])
        return self.pre_vq_conv(self.encoder(video))

    def decode_grid(self, latents: Tensor) -> Tensor:
        return self.decoder(self.post_vq_conv(latents))

    def last_layer(self) -> Tensor:
        return self.decoder.conv_last.conv.weight


#: sizes: first width, (t, h, w) factors, code dimension, codebook size
TATS_SIZES: dict[str, SizeConfig] = {
    # TATS README (UCF-101, 128x128, 16 frames): --n_hiddens 32 --downsample 4 8 8 --embedding_dim 256 --n_codes 16384
    "base": SizeConfig(n_hiddens=32, downsample=(4, 8, 8), latent_channels=256, codebook_size=16384),
    # CPU
    "tiny": SizeConfig(n_hiddens=8, downsample=(4, 8, 8), latent_channels=8, codebook_size=256),
}

register_size_presets("tats", TATS_SIZES, source="songweige/TATS README (train_vqgan.py command)")
