"""``pvdm``: PVDM-AE, the per-chunk triplane autoencoder baseline (Yu et al. 2023; CoordTok supp. C.1, Table 7).

A 16-frame chunk is patchified (``patch_size`` x ``patch_size`` per frame, no
temporal patching) and encoded by a TimeSformer (divided space-time attention:
temporal attention across frames at each patch position, then spatial
attention within each frame, then an MLP). The feature volume
``[T, H', W']`` is projected onto three planes by attention pooling: for each
line along one axis a small transformer reads the line with a learned summary
token prepended and keeps the summary token's output, so

* ``xy`` ``[B, C, H', W']`` pools over time,
* ``xt`` ``[B, C, T, W']`` pools over height (y),
* ``yt`` ``[B, C, T, H']`` pools over width (x),

each projected to ``C = 4`` channels and bounded by ``tanh`` (the latent the
PVDM diffusion model trains on). The decoder lifts each plane back to the
model width, broadcasts the three to ``[T, H', W']`` and *sums* them, runs a
TimeSformer decoder and maps every token to a pixel patch with a transposed
convolution, then ``2 * sigmoid - 1``.

At 128x128 with ``patch_size = 8`` the planes are 16x16 each: (16x16)x3 = 768
tokens per 16-frame chunk, 6144 for a 128-frame video (Table 7). (PVDM's code
uses patch 4 at 128x128 but reshapes the encoder output at ``res / 8``; the
planes of Table 7 are 16x16, which patch 8 gives directly.)

Positions: fixed sine-cosine embeddings (time, and 2D space; the
``"transformer"`` convention of :func:`harness_core.layers.sincos_pos_embed`)
computed from the input's size, so one model takes any chunk size divisible by the patch; PVDM
uses rotary embeddings in attention instead (a detail we do not reproduce).

Objective: the ``"pvdm"`` recipe of :mod:`video_tokenizers.losses` (L1 x4,
LPIPS x4 on a random frame, hinge GAN with 2D + 3D PatchGANs, feature
matching x4). Recommended optimizer (PVDM): Adam, lr 1e-4.
"""
from __future__ import annotations

from typing import Any, Mapping

import torch
from einops import rearrange
from timm.layers import Mlp
from torch import Tensor, nn

from harness_core.api import Tokens, VideoTokenizer, check_video
from harness_core.registry import SizeConfig, register_size_presets, register_tokenizer
from harness_core.layers import PLANES, SelfAttention, TransformerBlock, sincos_pos_embed
from video_tokenizers.losses import AutoencoderLoss, LossConfig


class DividedSpaceTimeBlock(nn.Module):
    """TimeSformer block (Bertasius et al. 2021, "divided space-time attention"), pre-LN.

    ``forward(x)``: ``x`` ``[B, T, N, D]`` (``N`` patches per frame) -> same shape.
    Temporal self-attention over ``T`` at each patch, spatial self-attention over
    ``N`` in each frame, then an MLP (GELU, ratio ``mlp_ratio``); each residual.
    """

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0) -> None:
        super().__init__()
        self.norm_t = nn.LayerNorm(dim, eps=1e-6)
        self.attn_t = SelfAttention(dim, num_heads)
        self.norm_s = nn.LayerNorm(dim, eps=1e-6)
        self.attn_s = SelfAttention(dim, num_heads)
        self.norm_mlp = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), act_layer=nn.GELU)

    def forward(self, x: Tensor) -> Tensor:
        b, t, n, _ = x.shape
        xt = rearrange(x, "b t n d -> (b n) t d")
        xt = xt + self.attn_t(self.norm_t(xt))
        xs = rearrange(xt, "(b n) t d -> (b t) n d", b=b)
        xs = xs + self.attn_s(self.norm_s(xs))
        x = rearrange(xs, "(b t) n d -> b t n d", b=b)
        return x + self.mlp(self.norm_mlp(x))


class LinePooling(nn.Module):
    """Attention pooling of lines into one vector each (PVDM's plane projection).

    ``forward(lines)``: ``[M, L, D]`` (``M`` lines of length ``L``) -> ``[M, D]``:
    a learned summary token is prepended, a sine-cosine position along the line
    is added, ``depth`` transformer blocks run, and the summary token's output is kept.
    """

    def __init__(self, dim: int, depth: int, num_heads: int) -> None:
        super().__init__()
        self.token = nn.Parameter(torch.randn(1, 1, dim) * 0.02)
        self.blocks = nn.ModuleList(TransformerBlock(dim, num_heads) for _ in range(depth))

    def forward(self, lines: Tensor) -> Tensor:
        m, length, dim = lines.shape
        pos = sincos_pos_embed((length + 1,), dim, convention="transformer", device=lines.device)
        x = torch.cat([self.token.expand(m, -1, -1), lines], dim=1) + pos
        for block in self.blocks:
            x = block(x)
        return x[:, 0]


@register_tokenizer("pvdm")
class PVDMAutoencoder(VideoTokenizer):
    """PVDM-AE triplane autoencoder: ``[B, 3, 16, H, W] -> {"xy", "xt", "yt"}`` planes in ``(-1, 1)``.

    Args:
        size: a key of :data:`PVDM_SIZES` giving the defaults of the next six arguments.
        dim, depth, num_heads: TimeSformer width, blocks (encoder and decoder each), heads.
        proj_depth: transformer blocks of each plane projection (PVDM: 4).
        patch_size: spatial patch (8: 16x16 planes at 128x128).
        plane_channels: channels of each plane (PVDM ``embed_dim`` 4).
        recipe, loss: loss recipe of :data:`video_tokenizers.losses.RECIPES` (``"pvdm"``) and overrides.
        chunk_frames: native chunk length (16; the temporal planes have one row per frame).

    Tokens: ``latents`` ``{"xy": [B, C, H/p, W/p], "xt": [B, C, T, W/p], "yt": [B, C, T, H/p]}``
    (``float32``, tanh-bounded), ``tokens_per_video = (H/p)(W/p) + T(W/p) + T(H/p)``.

    Raises:
        ValueError: frame sizes not divisible by ``patch_size``, unknown loss options.
    """

    #: where the recipe comes from (``python -m harness protocol`` shows it; conformance in docs/fidelity.md)
    recipe_source = "PVDM-AE: sihyun-yu/PVDM 793172f (docs/fidelity.md section 10; remaining differences: issue 26)"

    continuous = True

    @property
    def unused_parameters(self) -> bool:
        """``True`` only while a discriminator waits for ``disc_start`` (:class:`harness_core.api.VideoTokenizer`)."""
        return self.objective.discriminator_waits(self.discriminator)

    def __init__(self, size: str | None = "tiny", dim: int | None = None, depth: int | None = None,
                 num_heads: int | None = None, proj_depth: int | None = None, patch_size: int | None = None,
                 plane_channels: int | None = None, recipe: str = "pvdm", loss: Mapping[str, Any] | None = None,
                 chunk_frames: int | None = 16) -> None:
        super().__init__()
        preset = PVDM_SIZES[size or "base"]
        self.dim = dim or preset["dim"]
        self.depth = depth or preset["depth"]
        self.num_heads = num_heads or preset["num_heads"]
        self.proj_depth = proj_depth or preset["proj_depth"]
        self.patch_size = patch_size or preset["patch_size"]
        self.plane_channels = plane_channels or preset["plane_channels"]
        self.chunk_frames = chunk_frames
        p, d = self.patch_size, self.dim
        self.patch_embed = nn.Linear(3 * p * p, d)
        self.encoder = nn.ModuleList(DividedSpaceTimeBlock(d, self.num_heads) for _ in range(self.depth))
        self.encoder_norm = nn.LayerNorm(d, eps=1e-6)
        self.pool = nn.ModuleDict({k: LinePooling(d, self.proj_depth, self.num_heads) for k in PLANES})
        self.pre = nn.ModuleDict({k: nn.Linear(d, self.plane_channels) for k in PLANES})
        self.post = nn.ModuleDict({k: nn.Linear(self.plane_channels, d) for k in PLANES})
        self.decoder = nn.ModuleList(DividedSpaceTimeBlock(d, self.num_heads) for _ in range(self.depth))
        self.decoder_norm = nn.LayerNorm(d, eps=1e-6)
        self.to_pixel = nn.ConvTranspose2d(d, 3, kernel_size=p, stride=p)
        self.loss_config = LossConfig.from_recipe(recipe, loss)
        self.objective = AutoencoderLoss(self.loss_config)
        self.discriminator = self.objective.build_discriminator()

    # --- geometry

    def plane_shapes(self, frames: int, height: int, width: int) -> dict[str, tuple[int, int]]:
        """Spatial shapes of the three planes of a chunk; raises ``ValueError`` for sizes not divisible by the patch."""
        p = self.patch_size
        if height % p or width % p:
            raise ValueError(f"height and width must be multiples of patch_size={p}, got {height}x{width}")
        h, w = height // p, width // p
        return {"xy": (h, w), "xt": (frames, w), "yt": (frames, h)}

    def tokens_per_video(self, frames: int, height: int, width: int) -> int:
        chunk = self.chunk_frames or frames
        chunks = -(-frames // chunk)
        return chunks * sum(a * b for a, b in self.plane_shapes(chunk, height, width).values())

    def _positions(self, t: int, h: int, w: int, device: torch.device) -> Tensor:
        """``[1, T, h*w, D]`` sum of a temporal and a 2D spatial sine-cosine embedding."""
        time = sincos_pos_embed((t,), self.dim, convention="transformer", device=device)
        space = sincos_pos_embed((h, w), self.dim, convention="transformer", axis_dims=(self.dim // 2, self.dim - self.dim // 2),
                                 device=device)
        return (time[:, None] + space[None])[None]

    # --- encoder / decoder

    def encode_planes(self, video: Tensor) -> dict[str, Tensor]:
        """``[B, 3, T, H, W]`` -> tanh-bounded planes (see the class docstring for shapes)."""
        check_video(video)
        b, _, t, height, width = video.shape
        shapes = self.plane_shapes(t, height, width)
        h, w = shapes["xy"]
        x = rearrange(video, "b c t (h p1) (w p2) -> b t (h w) (p1 p2 c)", p1=self.patch_size, p2=self.patch_size)
        x = self.patch_embed(x) + self._positions(t, h, w, video.device)
        for block in self.encoder:
            x = block(x)
        x = rearrange(self.encoder_norm(x), "b t (h w) d -> b t h w d", h=h)
        lines = {
            "xy": rearrange(x, "b t h w d -> (b h w) t d"),
            "xt": rearrange(x, "b t h w d -> (b t w) h d"),
            "yt": rearrange(x, "b t h w d -> (b t h) w d"),
        }
        layouts = {"xy": "(b h w) c -> b c h w", "xt": "(b t w) c -> b c t w", "yt": "(b t h) c -> b c t h"}
        sizes = {"xy": dict(h=h, w=w), "xt": dict(t=t, w=w), "yt": dict(t=t, h=h)}
        planes = {}
        for key in PLANES:
            pooled = torch.tanh(self.pre[key](self.pool[key](lines[key])))
            planes[key] = rearrange(pooled, layouts[key], b=b, **sizes[key])
        return planes

    def decode_planes(self, planes: dict[str, Tensor]) -> Tensor:
        """Planes -> video ``float32 [B, 3, T, H, W]`` in ``(-1, 1)``."""
        missing = [k for k in PLANES if k not in planes]
        if missing:
            raise ValueError(f"pvdm planes {missing} missing; expected keys {PLANES}")
        xy = self.post["xy"](rearrange(planes["xy"], "b c h w -> b h w c"))
        xt = self.post["xt"](rearrange(planes["xt"], "b c t w -> b t w c"))
        yt = self.post["yt"](rearrange(planes["yt"], "b c t h -> b t h c"))
        b, h, w, _ = xy.shape
        t = xt.shape[1]
        x = xy[:, None] + xt[:, :, None] + yt[:, :, :, None]  # [B, T, h, w, D]
        x = rearrange(x, "b t h w d -> b t (h w) d") + self._positions(t, h, w, x.device)
        for block in self.decoder:
            x = block(x)
        x = rearrange(self.decoder_norm(x), "b t (h w) d -> (b t) d h w", h=h)
        frames = 2 * torch.sigmoid(self.to_pixel(x)) - 1
        return rearrange(frames, "(b t) c h w -> b c t h w", b=b)

    # --- contract

    def encode(self, video: Tensor, budget: int | None = None) -> Tokens:
        planes = self.encode_planes(video)
        count = sum(int(v[0, 0].numel()) for v in planes.values())
        if budget is not None and budget != count:
            raise ValueError(f"pvdm has a fixed budget of {count} tokens per chunk, got budget={budget}")
        return Tokens(latents=planes, tokens_per_video=count, info={"shape": tuple(video.shape[2:])})

    def decode(self, tokens: Tokens) -> Tensor:
        if not isinstance(tokens.latents, dict):
            raise ValueError("pvdm tokens must carry a dict of planes {'xy', 'xt', 'yt'}")
        return self.decode_planes(tokens.latents)

    def last_layer(self) -> Tensor:
        return self.to_pixel.weight

    def training_losses(self, video: Tensor, step: int) -> dict[str, Tensor]:
        """The ``loss_config`` objective (``"loss"``, and ``"disc_loss"`` once the GAN is active)."""
        recon = self.decode_planes(self.encode_planes(video))
        return self.objective(video, recon, step, self.discriminator, self.last_layer())


# --------------------------------------------------------------------------------------------------
# Sizes and presets
# --------------------------------------------------------------------------------------------------

#: sizes: width, TimeSformer depth (encoder and decoder), heads, projection depth, patch size, plane channels
PVDM_SIZES: dict[str, SizeConfig] = {
    # PVDM-AE (autoencoder_vit.py): width 384, depth 8, 4-layer projection transformers, 4-channel planes
    "base": SizeConfig(dim=384, depth=8, num_heads=6, proj_depth=4, patch_size=8, plane_channels=4),
    # CPU
    "tiny": SizeConfig(dim=64, depth=2, num_heads=4, proj_depth=1, patch_size=8, plane_channels=4),
}

register_size_presets("pvdm", PVDM_SIZES, source="PVDM autoencoder_vit.py; CoordTok Table 7")
