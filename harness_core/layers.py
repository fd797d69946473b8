"""Building blocks shared by the tokenizer families and the generators.

* Convolutional stacks for the grid tokenizers (3D VAE / VQ, MAGVIT and TATS
  style: GroupNorm + Swish residual blocks, strided downsampling, nearest
  upsampling) with an optional causal time axis (first frame on its own, as in
  VidTok's causal VAE used by VideoFlexTok).
* Attention blocks for the transformer tokenizers: self-attention (PyTorch
  SDPA), pre-LN blocks, CoordTok's cross-self block, and the adaLN-zero block
  and final layer of DiT (used by SiT and by VideoFlexTok's flow decoder).
* Fixed embeddings: sin-cos positions on 1D/2D/3D grids and the sinusoidal
  timestep embedding.
"""
from __future__ import annotations

import math
from functools import partial
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


class SelfAttention(nn.Module):
    """Multi-head self-attention ``[B, N, D] -> [B, N, D]`` (PyTorch SDPA), optionally causal with a KV cache.

    Args (forward):
        x: tokens ``[B, N, D]``.
        mask: optional boolean mask (``True`` = may attend): ``[N, N]`` (one
            query x key pattern for all), ``[B, N, N]`` (per video), or any 4D
            shape broadcastable to ``[B, heads, N, N]`` such as a key mask
            ``[B, 1, 1, N]``. Not with ``causal``.
        cache: with ``causal``, a dict filled in place with the keys and values
            seen so far (GPT-style incremental decoding); ``x`` then holds only
            the new positions, which attend to everything cached before them.

    Raises:
        ValueError: ``dim`` not divisible by ``num_heads``; a mask on a causal layer.
    """

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True, causal: bool = False) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads, self.causal = num_heads, causal
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor, mask: Tensor | None = None, cache: dict[str, Tensor] | None = None) -> Tensor:
        q, k, v = rearrange(self.qkv(x), "b n (three h d) -> three b h n d", three=3, h=self.num_heads)
        if self.causal:
            if mask is not None:
                raise ValueError("a causal SelfAttention takes no mask")
            out = self._causal(q, k, v, cache)
        else:
            if mask is not None and mask.ndim == 3:
                mask = mask[:, None]
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.proj(rearrange(out, "b h n d -> b n (h d)"))

    @staticmethod
    def _causal(q: Tensor, k: Tensor, v: Tensor, cache: dict[str, Tensor] | None) -> Tensor:
        if cache is not None:
            if "k" in cache:
                k = torch.cat([cache["k"], k], dim=2)
                v = torch.cat([cache["v"], v], dim=2)
            cache["k"], cache["v"] = k, v
        # with a cache, new queries are the last positions: a causal mask aligned to the end
        if q.shape[2] == k.shape[2]:
            return F.scaled_dot_product_attention(q, k, v, is_causal=True)
        if q.shape[2] == 1:
            return F.scaled_dot_product_attention(q, k, v)
        offset = k.shape[2] - q.shape[2]
        mask = torch.ones(q.shape[2], k.shape[2], dtype=torch.bool, device=q.device).tril(offset)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)


class TransformerBlock(nn.Module):
    """Pre-LN transformer block: self-attention then MLP (ratio ``mlp_ratio``), each residual.

    Defaults: LayerNorm eps 1e-6 and exact GELU (ViT / timm, the tokenizers'
    blocks). GPT-2 (the AR generator): ``norm_eps=1e-5, gelu="tanh",
    causal=True``. ``forward(x, mask=None, cache=None)`` as :class:`SelfAttention`.
    """

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, qkv_bias: bool = True, norm_eps: float = 1e-6,
                 gelu: str = "none", causal: bool = False) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=norm_eps)
        self.attn = SelfAttention(dim, num_heads, qkv_bias, causal)
        self.norm2 = nn.LayerNorm(dim, eps=norm_eps)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), act_layer=partial(nn.GELU, approximate=gelu))

    def forward(self, x: Tensor, mask: Tensor | None = None, cache: dict[str, Tensor] | None = None) -> Tensor:
        x = x + self.attn(self.norm1(x), mask, cache)
        return x + self.mlp(self.norm2(x))


class CrossSelfBlock(nn.Module):
    """CoordTok's cross-self block, as the official ``ConditionMaskBlock``.

    Source: huiwon-jang/CoordTok 8475272, ``models/coordtok/encoder_modules.py``
    (``ConditionMaskBlock`` built by ``TransformerDecoder`` with ``eps=1e-6``
    and ``use_attn_bias=False``):

    * ``x + cross_attn(norm1(x), context, context)``: pre-LN on the queries
      only, the context (video features) enters raw;
    * ``x + self_attn(norm2(x))``;
    * ``x + mlp(norm3(x))``: Linear -> exact GELU -> Linear, ratio
      ``mlp_ratio``, with biases.

    Both attentions are ``nn.MultiheadAttention(bias=False)``: no bias on the
    input projections *nor* on the output projection, and PyTorch's own
    initialization (Xavier-uniform over the stacked ``[3D, D]`` input
    projection, ``nn.Linear``'s default for the output projection). LayerNorms
    have eps ``norm_eps`` (1e-6).

    Args (forward):
        x: queries ``[B, N, D]``; context: keys/values ``[B, M, D]``.
        key_padding_mask: optional ``[B, M]`` for the cross-attention only, in
            ``nn.MultiheadAttention``'s convention: boolean ``True`` excludes a
            key; a float mask is *added* to the attention logits (the official
            code passes its 0/1 padding mask as floats, i.e. ``+1`` on padded keys).

    Returns:
        ``[B, N, D]``.
    """

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, norm_eps: float = 1e-6) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=norm_eps)
        self.cross_attn = nn.MultiheadAttention(dim, num_heads, bias=False, batch_first=True)
        self.norm2 = nn.LayerNorm(dim, eps=norm_eps)
        self.self_attn = nn.MultiheadAttention(dim, num_heads, bias=False, batch_first=True)
        self.norm3 = nn.LayerNorm(dim, eps=norm_eps)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: Tensor, context: Tensor, key_padding_mask: Tensor | None = None) -> Tensor:
        x = x + self.cross_attn(self.norm1(x), context, context, key_padding_mask=key_padding_mask, need_weights=False)[0]
        h = self.norm2(x)
        x = x + self.self_attn(h, h, h, need_weights=False)[0]
        return x + self.mlp(self.norm3(x))


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
        freqs = sincos_frequencies(self.freq_dim // 2, torch.float32, exp_log=True, device=t.device)
        args = self.scale * t.float()[..., None] * freqs
        return self.mlp(torch.cat([torch.cos(args), torch.sin(args)], dim=-1))


# --------------------------------------------------------------------------------------------------
# adaLN-zero conditioning (DiT)
# --------------------------------------------------------------------------------------------------

#: Names of the adaLN layers, in creation order, of the two code bases the models follow:
#: ``(block modulations, final-layer children)``. They are state_dict keys, and their order is the
#: parameter order of saved optimizer states, so each model keeps its own layout.
ADALN_LAYOUTS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    # facebookresearch/DiT models.py (DiTBlock.adaLN_modulation; FinalLayer: linear, then adaLN_modulation): SiT
    "dit": (("adaLN_modulation",), ("linear", "adaLN_modulation")),
    # FlexTok FlexBlockAdaLN: separate modulations of patches and registers; final layer: ada, then linear
    "flextok": (("ada_patches", "ada_registers"), ("ada", "linear")),
}


def modulate(x: Tensor, shift: Tensor, scale: Tensor) -> Tensor:
    """adaLN modulation ``x * (1 + scale) + shift`` (DiT); ``shift`` and ``scale`` broadcast to ``x`` ``[B, N, D]``."""
    return x * (1 + scale) + shift


def _adaln_modulation(dim: int, chunks: int) -> nn.Sequential:
    """SiLU -> Linear(dim, chunks * dim), the adaLN regression of the modulation vectors from the condition."""
    return nn.Sequential(nn.SiLU(), nn.Linear(dim, chunks * dim))


def _modulation(layers: Sequence[nn.Module], cond: Tensor, lengths: Sequence[int] | None) -> Tensor:
    """Per-token modulation ``[B, 1 | N, chunks * D]`` from ``cond`` (see :class:`AdaLNZeroBlock`)."""
    if lengths is None:
        if len(layers) != 1:
            raise ValueError(f"{len(layers)} modulation streams need the tokens per stream (lengths)")
        return layers[0](cond)[:, None]
    if len(lengths) != len(layers):
        raise ValueError(f"lengths {tuple(lengths)} do not match the {len(layers)} modulation streams")
    return torch.cat([layer(cond).repeat_interleave(n, dim=1) for layer, n in zip(layers, lengths)], dim=1)


class AdaLNZeroBlock(nn.Module):
    """Pre-LN transformer block with adaLN-zero conditioning (DiT, Peebles and Xie 2023, section 3.2).

    LayerNorm (no affine, eps 1e-6) -> :func:`modulate` -> self-attention (SDPA,
    qkv bias) -> gate, then the same around an MLP (tanh GELU, ``mlp_ratio``).
    The six vectors (shift, scale, gate for each half) are regressed from the
    condition by SiLU + Linear, zero-initialised so the block starts as the identity.

    Args:
        dim, num_heads, mlp_ratio: width, attention heads, MLP width over ``dim``.
        layout: a key of :data:`ADALN_LAYOUTS`. ``"dit"`` (SiT): one modulation
            ``adaLN_modulation`` for every token. ``"flextok"`` (VideoFlexTok's
            decoder): ``ada_patches`` and ``ada_registers``, separate modulations
            of patches and registers from the same condition (FlexTok: "AdaLN-zero
            conditions patches and registers separately on the timestep").

    Args (forward):
        x: tokens ``[B, N, D]``.
        cond: ``[B, D]``, one condition for all tokens (``lengths=None``, one
            stream); or ``[B, t, D]``, one per timestep, with ``lengths``.
        lengths: tokens per timestep of each stream, e.g. ``(P, R)``: ``x``
            holds the ``t * P`` tokens of stream 0 (timestep-major), then the
            ``t * R`` of stream 1.
        mask: optional boolean attention mask (:class:`SelfAttention`).
    """

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, layout: str = "dit") -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.attn = SelfAttention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), act_layer=partial(nn.GELU, approximate="tanh"))
        self.streams = ADALN_LAYOUTS[layout][0]
        for name in self.streams:
            self.add_module(name, _adaln_modulation(dim, 6))
        self.zero_init()

    def zero_init(self) -> None:
        """Zero the modulation layers (adaLN-zero: the block is the identity)."""
        for name in self.streams:
            nn.init.zeros_(getattr(self, name)[1].weight)
            nn.init.zeros_(getattr(self, name)[1].bias)

    def forward(self, x: Tensor, cond: Tensor, lengths: Sequence[int] | None = None, mask: Tensor | None = None) -> Tensor:
        mod = _modulation([getattr(self, name) for name in self.streams], cond, lengths)
        shift1, scale1, gate1, shift2, scale2, gate2 = mod.chunk(6, dim=-1)
        x = x + gate1 * self.attn(modulate(self.norm1(x), shift1, scale1), mask)
        return x + gate2 * self.mlp(modulate(self.norm2(x), shift2, scale2))


class AdaLNFinalLayer(nn.Module):
    """adaLN-modulated LayerNorm (no affine, eps 1e-6) and a linear head to ``out_dim`` values per token (DiT ``FinalLayer``).

    Modulation and head are zero-initialised (the model starts by predicting 0).
    ``layout`` (:data:`ADALN_LAYOUTS`) names the children: ``"dit"`` ``linear`` then
    ``adaLN_modulation``; ``"flextok"`` ``ada`` then ``linear``.

    Args (forward):
        x: ``[B, N, D]``; cond and lengths: as :class:`AdaLNZeroBlock` with one stream
        (``lengths=(n,)`` repeats a ``[B, t, D]`` condition over ``n`` tokens per timestep).

    Returns:
        ``[B, N, out_dim]``.
    """

    def __init__(self, dim: int, out_dim: int, layout: str = "dit") -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        children = ADALN_LAYOUTS[layout][1]
        for name in children:
            self.add_module(name, nn.Linear(dim, out_dim) if name == "linear" else _adaln_modulation(dim, 2))
        self.modulation_name = next(name for name in children if name != "linear")
        self.zero_init()

    def zero_init(self) -> None:
        """Zero the modulation and the head."""
        for layer in (getattr(self, self.modulation_name)[1], self.linear):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def forward(self, x: Tensor, cond: Tensor, lengths: Sequence[int] | None = None) -> Tensor:
        shift, scale = _modulation([getattr(self, self.modulation_name)], cond, lengths).chunk(2, dim=-1)
        return self.linear(modulate(self.norm(x), shift, scale))


# --------------------------------------------------------------------------------------------------
# Fixed sin-cos embeddings
# --------------------------------------------------------------------------------------------------

#: How the reference implementations compute sin-cos embeddings: the precision of the angles,
#: whether the frequency ladder is ``exp(-ln(10000) i / k)`` (else ``1 / 10000^(i / k)``), and the
#: channel order (``"axis"``: ``[sin, cos]`` per axis, axes concatenated; ``"sincos"``: the sines of
#: every axis, then the cosines). The results differ in the last bits, so each model keeps its own.
SINCOS_CONVENTIONS: dict[str, tuple[torch.dtype, bool, str]] = {
    # MAE / DiT get_2d_sincos_pos_embed (numpy, float64), generalised to n-D: SiT
    "mae": (torch.float64, False, "axis"),
    # Vaswani et al. 2017 as in the DiT timestep embedding (float32): PVDM
    "transformer": (torch.float32, True, "axis"),
    # timm build_sincos2d_pos_embed (float32, sines then cosines): VideoFlexTok's patch positions
    "timm": (torch.float32, False, "sincos"),
}


def sincos_frequencies(count: int, dtype: torch.dtype, exp_log: bool, device: torch.device | str | None = None) -> Tensor:
    """The frequency ladder ``10000^(-i / count)``, ``i = 0 .. count - 1``, ``[count]`` of ``dtype``.

    Computed as ``exp(-ln(10000) * i / count)`` when ``exp_log`` (Transformer,
    DiT timestep embedding), else as ``1 / 10000^(i / count)`` (MAE, timm).
    """
    i = torch.arange(count, device=device, dtype=dtype)
    if exp_log:
        return torch.exp(-math.log(10000.0) * i / count)
    return 1.0 / 10000.0 ** (i / count)


def sincos_pos_embed(grid: Sequence[int], dim: int, convention: str = "mae", axis_dims: Sequence[int] | None = None,
                     device: torch.device | str | None = None) -> Tensor:
    """Fixed sin-cos positions of an n-D grid, ``float32 [prod(grid), dim]``, row-major (last axis fastest).

    Axis ``a`` gets ``axis_dims[a]`` channels: sine and cosine of its integer
    coordinate times ``axis_dims[a] // 2`` frequencies (:func:`sincos_frequencies`),
    zero-padded to ``axis_dims[a]``; the default splits ``dim`` evenly
    (``dim // n`` rounded down to an even number). Channels left over are zero.
    ``convention`` (:data:`SINCOS_CONVENTIONS`) picks precision, frequencies and
    channel order of MAE / DiT (``"mae"``), the Transformer (``"transformer"``)
    or timm (``"timm"``).

    Raises:
        ValueError: when ``dim`` leaves no channels for an axis.
    """
    dtype, exp_log, order = SINCOS_CONVENTIONS[convention]
    if axis_dims is None:
        axis_dims = [(dim // len(grid)) // 2 * 2] * len(grid)
    if min(axis_dims) < 2:
        raise ValueError(f"dim {dim} is too small for a {len(grid)}-D sin-cos embedding")
    coords = torch.meshgrid(*[torch.arange(n, dtype=dtype, device=device) for n in grid], indexing="ij")
    sines, cosines = [], []
    for c, axis_dim in zip(coords, axis_dims):
        angles = c.reshape(-1, 1) * sincos_frequencies(axis_dim // 2, dtype, exp_log, device)[None]
        sines.append(torch.sin(angles))
        cosines.append(torch.cos(angles))
    if order == "sincos":
        parts = sines + cosines
    else:
        parts = [F.pad(torch.cat([s, c], dim=1), (0, d - 2 * (d // 2))) for s, c, d in zip(sines, cosines, axis_dims)]
    emb = torch.cat(parts, dim=1)
    return F.pad(emb, (0, dim - emb.shape[1])).float()
