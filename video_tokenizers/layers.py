"""Building blocks shared by the tokenizer families.

Convolutional stacks for the grid tokenizers (3D VAE / VQ, MAGVIT and TATS
style: GroupNorm + Swish residual blocks, strided downsampling, nearest
upsampling) with an optional causal time axis (first frame on its own, as in
VidTok's causal VAE used by VideoFlexTok), and attention blocks for the
transformer tokenizers (self-attention from ``timm``; cross-attention here).
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from einops import rearrange
from timm.layers import Mlp
from torch import Tensor, nn

#: the planes of a triplane latent (CoordTok, PVDM): one spatial (xy) and two space-time (xt, yt)
PLANES = ("xy", "xt", "yt")


def group_norm(channels: int) -> nn.GroupNorm:
    """GroupNorm with up to 32 groups that divide ``channels``."""
    groups = next(g for g in (32, 16, 8, 4, 2, 1) if channels % g == 0)
    return nn.GroupNorm(groups, channels, eps=1e-6)


class Conv3d(nn.Module):
    """3D convolution with 'same' output size (stride 1) or halving (stride 2).

    With ``causal=True`` the time axis is padded only on the past side by
    repeating the first frame, so output frame ``t`` sees input frames ``<= t``
    and, with stride 2 in time on ``T = 1 + 2m`` frames, the first output
    frame depends on the first input frame alone (``1 + 2m -> 1 + m``).
    Space is zero-padded symmetrically (``kernel // 2``).
    """

    def __init__(self, in_ch: int, out_ch: int, kernel: int = 3, stride: Sequence[int] = (1, 1, 1), causal: bool = False) -> None:
        super().__init__()
        self.causal = causal
        self.kernel = kernel
        self.time_pad = (kernel - 1, 0) if causal else (kernel // 2, kernel // 2)
        self.conv = nn.Conv3d(in_ch, out_ch, kernel, stride=tuple(stride), padding=(0, kernel // 2, kernel // 2))

    def forward(self, x: Tensor) -> Tensor:
        before, after = self.time_pad
        if before or after:
            mode = "replicate" if self.causal else "constant"
            x = F.pad(x, (0, 0, 0, 0, before, after), mode=mode)
        return self.conv(x)


class ResBlock3d(nn.Module):
    """GroupNorm -> Swish -> conv, twice, with a residual connection."""

    def __init__(self, in_ch: int, out_ch: int, causal: bool = False) -> None:
        super().__init__()
        self.block = nn.Sequential(
            group_norm(in_ch), nn.SiLU(), Conv3d(in_ch, out_ch, causal=causal),
            group_norm(out_ch), nn.SiLU(), Conv3d(out_ch, out_ch, causal=causal),
        )
        self.skip = nn.Conv3d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        return self.skip(x) + self.block(x)


class Downsample3d(nn.Module):
    """Strided 3x3x3 convolution halving space, and time when ``time`` is set."""

    def __init__(self, channels: int, time: bool, causal: bool = False) -> None:
        super().__init__()
        self.conv = Conv3d(channels, channels, stride=(2 if time else 1, 2, 2), causal=causal)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(x)


class Upsample3d(nn.Module):
    """Nearest upsampling (space x2, time x2 when ``time``) followed by a 3x3x3 convolution.

    In causal mode the first frame is not repeated: ``1 + m -> 1 + 2m`` frames.
    """

    def __init__(self, channels: int, time: bool, causal: bool = False) -> None:
        super().__init__()
        self.time, self.causal = time, causal
        self.conv = Conv3d(channels, channels, causal=causal)

    def forward(self, x: Tensor) -> Tensor:
        x = F.interpolate(x, scale_factor=(1, 2, 2), mode="nearest")
        if self.time:
            if self.causal:
                x = torch.cat([x[:, :, :1], x[:, :, 1:].repeat_interleave(2, dim=2)], dim=2)
            else:
                x = x.repeat_interleave(2, dim=2)
        return self.conv(x)


class Encoder3d(nn.Module):
    """Convolutional video encoder: ``[B, in_ch, T, H, W] -> [B, out_ch, T / 2^k, H / 2^L, W / 2^L]``.

    Args:
        channels: width of the first level; level ``i`` has ``channels * channel_mult[i]``.
        channel_mult: one entry per level; every level but the last halves space.
        time_down: per downsampling level, whether it also halves time.
        num_res_blocks: residual blocks per level.
        causal: causal time axis (``T = 1 + 2^k m`` frames map to ``1 + m``).
    """

    def __init__(self, in_ch: int, out_ch: int, channels: int, channel_mult: Sequence[int],
                 time_down: Sequence[bool], num_res_blocks: int, causal: bool = False) -> None:
        super().__init__()
        if len(time_down) != len(channel_mult) - 1:
            raise ValueError(f"time_down needs {len(channel_mult) - 1} entries (one per downsampling), got {len(time_down)}")
        widths = [channels * m for m in channel_mult]
        self.stem = Conv3d(in_ch, widths[0], causal=causal)
        layers: list[nn.Module] = []
        width = widths[0]
        for level, level_width in enumerate(widths):
            for _ in range(num_res_blocks):
                layers.append(ResBlock3d(width, level_width, causal))
                width = level_width
            if level < len(widths) - 1:
                layers.append(Downsample3d(width, time_down[level], causal))
        layers += [ResBlock3d(width, width, causal), group_norm(width), nn.SiLU(), Conv3d(width, out_ch, causal=causal)]
        self.body = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.body(self.stem(x))


class Decoder3d(nn.Module):
    """Mirror of :class:`Encoder3d`: ``[B, in_ch, t, h, w] -> [B, out_ch, T, H, W]``."""

    def __init__(self, in_ch: int, out_ch: int, channels: int, channel_mult: Sequence[int],
                 time_down: Sequence[bool], num_res_blocks: int, causal: bool = False) -> None:
        super().__init__()
        widths = [channels * m for m in channel_mult][::-1]
        time_up = list(time_down)[::-1]
        width = widths[0]
        layers: list[nn.Module] = [Conv3d(in_ch, width, causal=causal), ResBlock3d(width, width, causal)]
        for level, level_width in enumerate(widths):
            for _ in range(num_res_blocks):
                layers.append(ResBlock3d(width, level_width, causal))
                width = level_width
            if level < len(widths) - 1:
                layers.append(Upsample3d(width, time_up[level], causal))
        layers += [group_norm(width), nn.SiLU(), Conv3d(width, out_ch, causal=causal)]
        self.body = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.body(x)


class DiagonalGaussian:
    """Diagonal Gaussian posterior from ``[B, 2C, ...]`` moments (mean, log-variance)."""

    def __init__(self, moments: Tensor) -> None:
        self.mean, logvar = moments.chunk(2, dim=1)
        self.logvar = logvar.clamp(-30.0, 20.0)

    def sample(self) -> Tensor:
        return self.mean + torch.randn_like(self.mean) * (0.5 * self.logvar).exp()

    def kl(self) -> Tensor:
        """KL to the standard normal, summed over latent elements, mean over the batch."""
        kl = 0.5 * (self.mean.pow(2) + self.logvar.exp() - 1.0 - self.logvar)
        return kl.flatten(1).sum(dim=1).mean()


class CrossAttention(nn.Module):
    """Multi-head cross-attention (queries attend to a context), PyTorch SDPA.

    Args (forward):
        x: queries ``[B, N, D]``; context: keys/values ``[B, M, D]``;
        key_mask: optional boolean ``[B, M]``, ``True`` where a key may be attended.
    """

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = False) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.q = nn.Linear(dim, dim, bias=qkv_bias)
        self.kv = nn.Linear(dim, 2 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor, context: Tensor, key_mask: Tensor | None = None) -> Tensor:
        q = rearrange(self.q(x), "b n (h d) -> b h n d", h=self.num_heads)
        k, v = rearrange(self.kv(context), "b m (two h d) -> two b h m d", two=2, h=self.num_heads)
        mask = key_mask[:, None, None, :] if key_mask is not None else None
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.proj(rearrange(out, "b h n d -> b n (h d)"))


class SelfAttention(nn.Module):
    """Multi-head self-attention with an optional boolean mask (``True`` = may attend).

    ``mask`` is ``[N, N]`` (one query x key pattern for all), ``[B, N, N]`` (per
    video), or any 4D shape broadcastable to ``[B, heads, N, N]`` such as a key
    mask ``[B, 1, 1, N]``.
    """

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        q, k, v = rearrange(self.qkv(x), "b n (three h d) -> three b h n d", three=3, h=self.num_heads)
        if mask is not None and mask.ndim == 3:
            mask = mask[:, None]
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.proj(rearrange(out, "b h n d -> b n (h d)"))


class TransformerBlock(nn.Module):
    """Pre-LN transformer block: self-attention then MLP (GELU, ratio 4), LayerNorm eps 1e-6."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, qkv_bias: bool = True) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = SelfAttention(dim, num_heads, qkv_bias)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), act_layer=nn.GELU)

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        x = x + self.attn(self.norm1(x), mask)
        return x + self.mlp(self.norm2(x))


class CrossSelfBlock(nn.Module):
    """Pre-LN cross-attention -> self-attention -> MLP (CoordTok's ``ConditionMaskBlock``)."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0) -> None:
        super().__init__()
        self.norm_q = nn.LayerNorm(dim, eps=1e-6)
        self.norm_ctx = nn.LayerNorm(dim, eps=1e-6)
        self.cross = CrossAttention(dim, num_heads)
        self.self_block = TransformerBlock(dim, num_heads, mlp_ratio, qkv_bias=False)

    def forward(self, x: Tensor, context: Tensor, key_mask: Tensor | None = None) -> Tensor:
        x = x + self.cross(self.norm_q(x), self.norm_ctx(context), key_mask)
        return self.self_block(x)


class TimestepEmbedder(nn.Module):
    """Diffusion / flow time ``float [...]`` -> ``[..., dim]`` (DiT's ``TimestepEmbedder``).

    Sinusoidal features of ``freq_dim`` frequencies (max period 10000) of
    ``scale * t``, followed by a two-layer SiLU MLP. SiT feeds ``t`` in ``[0, 1]``
    unscaled (``scale=1``); FlexTok-style rectified flows scale ``sigma`` by 1000.
    """

    def __init__(self, dim: int, freq_dim: int = 256, scale: float = 1.0) -> None:
        super().__init__()
        self.freq_dim, self.scale = freq_dim, scale
        self.mlp = nn.Sequential(nn.Linear(freq_dim, dim), nn.SiLU(), nn.Linear(dim, dim))

    def forward(self, t: Tensor) -> Tensor:
        half = self.freq_dim // 2
        freqs = torch.exp(-math.log(10000.0) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
        args = self.scale * t.float()[..., None] * freqs
        return self.mlp(torch.cat([torch.cos(args), torch.sin(args)], dim=-1))
