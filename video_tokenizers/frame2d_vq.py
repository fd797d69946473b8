"""``frame2d_vq``: the per-frame 2D VQGAN baseline (MaskGIT-AE, CoordTok supp. C.1, Table 7).

Every frame is tokenized on its own by a 2D VQGAN (Esser et al. 2021, the
tokenizer of MaskGIT): 128x128 -> 8x8 codes (factor 16), codebook 1024,
MaskGIT's stacks (``channel_mult (1, 1, 2, 2, 4)``, filters 128, two residual
blocks per level, GroupNorm + Swish, code dimension 256), so 64 tokens per
frame and 8192 for 128 frames.

Which MaskGIT-AE CoordTok trained is not published (research notes section 4
and 5): seed 003 Table 7 gives 8x8 tokens per 128x128 frame, i.e. the f16
MaskGIT VQGAN, which is what this module builds by default; MAGVIT's own 2D
baseline (f8, 16x16 per frame) is the ``"magvit2d"`` preset. The objective is
taming's VQGAN recipe (``"maskgit"`` in :data:`video_tokenizers.losses.RECIPES`).

The engine feeds 16-frame chunks (``chunk_frames = 16``, the same chunking
as the 3D baselines); frames are folded into the batch, so the chunk length
changes nothing but throughput. Tokens: ``indices`` ``int64 [B, T, H/16, W/16]``,
``latents`` ``float32 [B, D, T, H/16, W/16]``.
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from harness_core.api import VideoTokenizer
from harness_core.registry import SizeConfig, register_size_presets, register_tokenizer
from video_tokenizers.grid3d_vq import VQAutoencoderMixin
from harness_core.layers import group_norm


class ResBlock2d(nn.Module):
    """GroupNorm -> Swish -> 3x3 conv, twice, with a residual connection (taming VQGAN)."""

    def __init__(self, in_ch: int, out_ch: int) -> None:
        super().__init__()
        self.block = nn.Sequential(
            group_norm(in_ch), nn.SiLU(), nn.Conv2d(in_ch, out_ch, 3, padding=1),
            group_norm(out_ch), nn.SiLU(), nn.Conv2d(out_ch, out_ch, 3, padding=1),
        )
        self.skip = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        return self.skip(x) + self.block(x)


class Encoder2d(nn.Module):
    """Image encoder ``[N, 3, H, W] -> [N, out_ch, H / 2^L, W / 2^L]`` with ``L = len(channel_mult) - 1``.

    ``downsample``: ``"conv"`` (strided 3x3 convolution, taming) or ``"avgpool"`` (2x2 average pooling, MaskGIT's
    and MAGVIT's ``conv_downsample=False``).
    """

    def __init__(self, out_ch: int, channels: int, channel_mult: Sequence[int], num_res_blocks: int,
                 downsample: str = "conv") -> None:
        super().__init__()
        widths = [channels * m for m in channel_mult]
        layers: list[nn.Module] = [nn.Conv2d(3, widths[0], 3, padding=1)]
        width = widths[0]
        for level, level_width in enumerate(widths):
            for _ in range(num_res_blocks):
                layers.append(ResBlock2d(width, level_width))
                width = level_width
            if level < len(widths) - 1:
                layers.append(nn.Conv2d(width, width, 3, stride=2, padding=1) if downsample == "conv"
                              else nn.AvgPool2d(2))
        layers += [ResBlock2d(width, width), group_norm(width), nn.SiLU(), nn.Conv2d(width, out_ch, 1)]
        self.body = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.body(x)


class _Upsample2d(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.interpolate(x, scale_factor=2, mode="nearest"))


class Decoder2d(nn.Module):
    """Mirror of :class:`Encoder2d`: ``[N, in_ch, h, w] -> [N, 3, h * 2^L, w * 2^L]``."""

    def __init__(self, in_ch: int, channels: int, channel_mult: Sequence[int], num_res_blocks: int) -> None:
        super().__init__()
        widths = [channels * m for m in channel_mult][::-1]
        width = widths[0]
        layers: list[nn.Module] = [nn.Conv2d(in_ch, width, 3, padding=1), ResBlock2d(width, width)]
        for level, level_width in enumerate(widths):
            for _ in range(num_res_blocks):
                layers.append(ResBlock2d(width, level_width))
                width = level_width
            if level < len(widths) - 1:
                layers.append(_Upsample2d(width))
        layers += [group_norm(width), nn.SiLU(), nn.Conv2d(width, 3, 3, padding=1)]
        self.body = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.body(x)


@register_tokenizer("frame2d_vq")
class Frame2dVQ(VQAutoencoderMixin, VideoTokenizer):
    """Per-frame 2D VQGAN (MaskGIT-AE): ``[B, 3, T, H, W] -> int64 [B, T, H/f, W/f]`` codes, ``f = 2^(levels-1)``.

    Args:
        size: a key of :data:`FRAME2D_VQ_SIZES` giving the defaults of the next five
            arguments (``"maskgit"``: the paper scale; ``"tiny"``: CPU), or ``None``.
        channels, channel_mult, num_res_blocks: convolutional stacks.
        latent_channels: code dimension; codebook_size: number of codes.
        commitment_weight, ema_decay, kmeans_init, threshold_ema_dead_code, rotation_trick:
            ``VectorQuantize`` options (commitment 0.25 as MaskGIT / taming).
        recipe, loss: loss recipe (default ``"maskgit"``: taming VQGAN) and overrides.
        weight_ema: decay of the EMA of the evaluated weights (``None``: the recipe's; ``0``: none).
        downsample: ``"conv"`` or ``"avgpool"`` (:class:`Encoder2d`); a model to inflate into ``grid3d_vq``
            uses the 3D model's (``video_tokenizers.grid3d_vq.inflate_2d_to_3d``).
        chunk_frames: chunk length the engine feeds (16, as the 3D baselines).

    Recommended optimizer (taming VQGAN): Adam betas (0.5, 0.9), lr 4.5e-6 x batch size.

    Raises:
        ValueError: frame sizes not divisible by ``f``, unknown loss options.
    """

    #: where the recipe comes from (``python -m harness protocol`` shows it; conformance in docs/fidelity.md)
    recipe_source = "MaskGIT-AE: taming-transformers 3ba01b2 VQGAN at f16 (docs/fidelity.md section 9; remaining differences: issue 26)"

    def __init__(self, size: str | None = "tiny", channels: int | None = None,
                 channel_mult: Sequence[int] | None = None, num_res_blocks: int | None = None,
                 latent_channels: int | None = None, codebook_size: int | None = None,
                 commitment_weight: float = 0.25, ema_decay: float = 0.99, kmeans_init: bool = True,
                 threshold_ema_dead_code: float = 2.0, rotation_trick: bool = False, recipe: str = "maskgit",
                 loss: Mapping[str, Any] | None = None, weight_ema: float | None = None, downsample: str = "conv",
                 chunk_frames: int | None = 16) -> None:
        super().__init__()
        if downsample not in ("conv", "avgpool"):
            raise ValueError(f"downsample must be 'conv' or 'avgpool', got {downsample!r}")
        preset = FRAME2D_VQ_SIZES[size or "maskgit"]
        self.channels = channels or preset["channels"]
        self.channel_mult = tuple(channel_mult or preset["channel_mult"])
        self.num_res_blocks = num_res_blocks or preset["num_res_blocks"]
        self.latent_channels = latent_channels or preset["latent_channels"]
        self.space_factor = 2 ** (len(self.channel_mult) - 1)
        self.chunk_frames = chunk_frames
        self.encoder = Encoder2d(self.latent_channels, self.channels, self.channel_mult, self.num_res_blocks, downsample)
        self.decoder = Decoder2d(self.latent_channels, self.channels, self.channel_mult, self.num_res_blocks)
        self._init_vq(self.latent_channels, codebook_size or preset["codebook_size"], commitment_weight, ema_decay,
                      kmeans_init, threshold_ema_dead_code, rotation_trick, recipe, loss, weight_ema)

    def latent_shape(self, frames: int, height: int, width: int) -> tuple[int, int, int]:
        """Token grid ``(T, H/f, W/f)`` of a chunk; raises ``ValueError`` for sizes not divisible by ``f``."""
        if height % self.space_factor or width % self.space_factor:
            raise ValueError(f"height and width must be multiples of {self.space_factor}, got {height}x{width}")
        return frames, height // self.space_factor, width // self.space_factor

    def tokens_per_video(self, frames: int, height: int, width: int) -> int:
        t, h, w = self.latent_shape(frames, height, width)
        return t * h * w

    def encode_grid(self, video: Tensor) -> Tensor:
        self.latent_shape(*video.shape[2:])
        frames = rearrange(video, "b c t h w -> (b t) c h w")
        return rearrange(self.encoder(frames), "(b t) d h w -> b d t h w", b=video.shape[0])

    def decode_grid(self, latents: Tensor) -> Tensor:
        frames = rearrange(latents, "b d t h w -> (b t) d h w")
        return rearrange(self.decoder(frames), "(b t) c h w -> b c t h w", b=latents.shape[0])

    def last_layer(self) -> Tensor:
        return self.decoder.body[-1].weight


# --------------------------------------------------------------------------------------------------
# Sizes and presets
# --------------------------------------------------------------------------------------------------

#: sizes: channels, channel_mult, num_res_blocks, code dim (latent_channels), codebook size
FRAME2D_VQ_SIZES: dict[str, SizeConfig] = {
    # MaskGIT VQGAN (f16): filters 128, channel_mult (1, 1, 2, 2, 4), 2 res blocks, 256-d codes, 1024 codes
    "maskgit": SizeConfig(channels=128, channel_mult=(1, 1, 2, 2, 4), num_res_blocks=2, latent_channels=256,
                          codebook_size=1024),
    # MAGVIT's 2D-VQ UCF baseline (vqgan2d_ucf101_config.py): f8, 16x16 per 128x128 frame (not Table 7's layout)
    "magvit2d": SizeConfig(channels=128, channel_mult=(1, 2, 2, 4), num_res_blocks=2, latent_channels=256,
                           codebook_size=1024),
    # CPU: f16 with 16 filters, 8-dim codes, 256 codes
    "tiny": SizeConfig(channels=16, channel_mult=(1, 1, 2, 2, 4), num_res_blocks=1, latent_channels=8, codebook_size=256),
}

register_size_presets("frame2d_vq", FRAME2D_VQ_SIZES, source="MaskGIT VQGAN / MAGVIT vqgan2d_ucf101_config.py")
