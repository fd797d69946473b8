"""``coordtok``: CoordTok, coordinate-based patch reconstruction for long videos.

Jang, Yu, Shin, Abbeel, Seo, "Efficient Long Video Tokenization via
Coordinate-based Patch Reconstruction" (arXiv 2411.14762, CVPR 2025); the
architecture follows supplementary A.1 and Table 5, the facts read from the
official code are in ``docs/research/tokenizers.md`` section 1.

A whole video (128 frames at 128x128 in the paper) is encoded into a factorized
triplane ``z = (z^xy, z^xt, z^yt)``:

1. *transformer encoder*: Conv3D patch embedding (kernel = stride =
   ``(8, 16, 16)``: 128x128x128 -> 16x8x8 = 1024 video tokens), a learnable
   positional embedding and self-attention blocks;
2. *cross-self encoder*: learnable triplane parameters ``z^xy [C, R_xy, R_xy]``,
   ``z^xt, z^yt [C, R_t, R_xy]``, each patchified by its own Conv2D into query
   tokens, blocks of cross-attention (queries -> video features),
   self-attention and MLP, then plane-wise linear projectors back to the
   three planes (no quantization and no KL, as in the official code);
3. *transformer decoder*: for each sampled ``(t, x, y)`` patch coordinate,
   bilinear lookups in the three planes, concatenated (3C values), a linear
   patch embedding plus a learned positional embedding indexed by the integer
   patch index, self-attention blocks over the sampled coordinates and a
   linear projector to one 1-frame 8x8 RGB patch (192 values).

Training (supplementary A.1) has two stages that are just steps of the
schedule: stage 1 reconstructs ``N = 1024`` random patch coordinates per video
with l2; stage 2 (``step >= stage1_steps``) reconstructs 16 random whole
frames with l2 + LPIPS (VGG, equal weights). Evaluation (supplementary B.1)
decodes every patch coordinate of the video in one pass.

Axis conventions: ``x`` is the height axis and ``y`` the width axis (as in
the official code), so ``z^xt`` is indexed ``[t, x]`` and ``z^yt`` ``[t, y]``;
latents are channel-first: ``xy [B, C, R_xy, R_xy]``, ``xt``/``yt``
``[B, C, R_t, R_xy]``.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from harness.api import Tokens, VideoTokenizer, check_video
from harness.registry import SizeConfig, register_preset, register_size_presets, register_tokenizer
from video_tokenizers.layers import PLANES, CrossSelfBlock, TransformerBlock
from video_tokenizers.losses import LazyLPIPS


# --------------------------------------------------------------------------------------------
# Triplane lookups
# --------------------------------------------------------------------------------------------

def bilinear_lookup(plane: Tensor, a: Tensor, b: Tensor) -> Tensor:
    """Bilinear interpolation of ``plane`` at fractional grid positions (align_corners=True).

    Args:
        plane: ``[B, C, Ra, Rb]``.
        a, b: positions in grid units, ``float [B, N]`` in ``[0, Ra - 1]`` and
            ``[0, Rb - 1]`` (node ``i`` sits at position ``i``, the
            ``align_corners=True`` convention of the official decoder).

    Returns:
        ``[B, N, C]``. At integer positions the weights are exactly 1 and 0,
        so the result equals the node value bit for bit.
    """
    batch, channels, size_a, size_b = plane.shape
    a = a.to(plane.dtype).clamp(0, size_a - 1)
    b = b.to(plane.dtype).clamp(0, size_b - 1)
    a0, b0 = a.floor(), b.floor()
    wa, wb = a - a0, b - b0
    a0, b0 = a0.long(), b0.long()
    a1, b1 = (a0 + 1).clamp(max=size_a - 1), (b0 + 1).clamp(max=size_b - 1)
    flat = plane.flatten(2)  # [B, C, Ra * Rb]

    def at(ia: Tensor, ib: Tensor) -> Tensor:
        index = (ia * size_b + ib)[:, None, :].expand(-1, channels, -1)
        return flat.gather(2, index)  # [B, C, N]

    wa, wb = wa[:, None, :], wb[:, None, :]
    out = ((1 - wa) * (1 - wb)) * at(a0, b0) + ((1 - wa) * wb) * at(a0, b1) \
        + (wa * (1 - wb)) * at(a1, b0) + (wa * wb) * at(a1, b1)
    return out.transpose(1, 2)


def _grid_position(index: Tensor, patches: int, resolution: int) -> Tensor:
    """Plane position of integer patch ``index`` (of ``patches``) on a ``resolution`` grid.

    The official code normalizes ``index / (patches - 1)`` to [0, 1] and scales
    by ``resolution - 1``; here the product is formed in integers first and
    divided once (correctly rounded), so positions that fall on a node are
    exact integers.
    """
    if patches == 1:
        return torch.zeros_like(index, dtype=torch.float32)
    return (index * (resolution - 1)).float() / (patches - 1)


def triplane_features(planes: dict[str, Tensor], coords: Tensor, grid: tuple[int, int, int]) -> Tensor:
    """Concatenated plane features ``[B, N, 3C]`` (order xy, xt, yt) of integer patch coordinates.

    Args:
        planes: ``{"xy": [B, C, R_xy, R_xy], "xt": [B, C, R_t, R_xy], "yt": [B, C, R_t, R_xy]}``.
        coords: ``int64 [B, N, 3]`` patch indices ``(t, x, y)`` with
            ``0 <= t < grid[0]``, ``0 <= x < grid[1]``, ``0 <= y < grid[2]``.
        grid: the patch grid ``(T_p, X_p, Y_p)`` of the video (positions are
            normalized by it, as the official decoder does with the full
            128-frame grid).
    """
    planes = {k: v.float() for k, v in planes.items()}  # lookups in float32 (also under fp16 autocast)
    r_t, r_xy = planes["xt"].shape[2], planes["xy"].shape[2]
    t = _grid_position(coords[..., 0], grid[0], r_t)
    x = _grid_position(coords[..., 1], grid[1], r_xy)
    y = _grid_position(coords[..., 2], grid[2], r_xy)
    return torch.cat([bilinear_lookup(planes["xy"], x, y),
                      bilinear_lookup(planes["xt"], t, x),
                      bilinear_lookup(planes["yt"], t, y)], dim=-1)


# --------------------------------------------------------------------------------------------
# Blocks
# --------------------------------------------------------------------------------------------

class VideoEncoder(nn.Module):
    """Transformer encoder: Conv3D patch embedding + learnable positional embedding + self-attention.

    ``[B, 3, T, H, W] -> [B, (T/pt)(H/ps)(W/ps), D]`` (final LayerNorm). The
    official ViT3D also carries a cls token that is dropped at the output; it
    is omitted here.
    """

    def __init__(self, frames: int, resolution: int, patch_t: int, patch_xy: int, dim: int, depth: int, heads: int) -> None:
        super().__init__()
        self.grid = (frames // patch_t, resolution // patch_xy, resolution // patch_xy)
        self.patch_t = patch_t
        self.embed = nn.Conv3d(3, dim, kernel_size=(patch_t, patch_xy, patch_xy), stride=(patch_t, patch_xy, patch_xy))
        self.pos_embed = nn.Parameter(torch.randn(1, math.prod(self.grid), dim) * 0.02)
        self.blocks = nn.ModuleList(TransformerBlock(dim, heads, qkv_bias=False) for _ in range(depth))
        self.norm = nn.LayerNorm(dim, eps=1e-6)

    def forward(self, video: Tensor, key_mask: Tensor | None) -> Tensor:
        x = rearrange(self.embed(video), "b d t h w -> b (t h w) d") + self.pos_embed
        mask = key_mask[:, None, None, :] if key_mask is not None else None
        for block in self.blocks:
            x = block(x, mask)
        return self.norm(x)


class CrossSelfEncoder(nn.Module):
    """Learnable triplane queries -> cross/self-attention over video features -> triplane.

    Each plane ``[C, Ra, Rb]`` is patchified by its own Conv2D (patch
    ``(pa, pb)``) into ``(Ra/pa)(Rb/pb)`` query tokens of width D; the three
    query sequences are concatenated, processed by :class:`CrossSelfBlock`s and
    a final LayerNorm, split again and projected per plane by a linear layer to
    ``pa * pb * C`` values that are folded back onto the plane grid.
    """

    def __init__(self, channels: int, res_xy: int, res_t: int, patch_xy: int, patch_t: int,
                 video_tokens: int, dim: int, depth: int, heads: int) -> None:
        super().__init__()
        self.shapes = {"xy": (res_xy, res_xy), "xt": (res_t, res_xy), "yt": (res_t, res_xy)}
        self.patches = {"xy": (patch_xy, patch_xy), "xt": (patch_t, patch_xy), "yt": (patch_t, patch_xy)}
        self.planes = nn.ParameterDict({k: nn.Parameter(torch.randn(1, channels, *s)) for k, s in self.shapes.items()})
        self.embed = nn.ModuleDict({k: nn.Conv2d(channels, dim, kernel_size=p, stride=p) for k, p in self.patches.items()})
        self.context_pos_embed = nn.Parameter(torch.randn(1, video_tokens, dim) * 0.02)
        self.blocks = nn.ModuleList(CrossSelfBlock(dim, heads) for _ in range(depth))
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.proj = nn.ModuleDict({k: nn.Linear(dim, p[0] * p[1] * channels) for k, p in self.patches.items()})

    def query_grid(self, name: str) -> tuple[int, int]:
        (ra, rb), (pa, pb) = self.shapes[name], self.patches[name]
        return ra // pa, rb // pb

    def forward(self, context: Tensor, key_mask: Tensor | None) -> dict[str, Tensor]:
        batch = context.shape[0]
        queries = [rearrange(self.embed[k](self.planes[k]), "1 d ga gb -> 1 (ga gb) d") for k in PLANES]
        lengths = [q.shape[1] for q in queries]
        x = torch.cat(queries, dim=1).expand(batch, -1, -1)
        context = context + self.context_pos_embed
        for block in self.blocks:
            x = block(x, context, key_mask)
        x = self.norm(x)
        out = {}
        for name, part in zip(PLANES, x.split(lengths, dim=1)):
            (pa, pb), (ga, gb) = self.patches[name], self.query_grid(name)
            out[name] = rearrange(self.proj[name](part), "b (ga gb) (pa pb c) -> b c (ga pa) (gb pb)",
                                  ga=ga, gb=gb, pa=pa, pb=pb)
        return out


class CoordinateDecoder(nn.Module):
    """Transformer decoder over sampled patch coordinates.

    For each coordinate: triplane features ``[3C]`` -> Linear -> ``D``, plus a
    learned positional embedding looked up by the exact integer patch index
    ``(t, x, y)`` (table ``[T_p * X_p * Y_p, D]``; the official code truncates
    ``coord * (n - 1)`` from floats, which can be off by one), then
    self-attention blocks over the N coordinates, a final LayerNorm and a
    Linear to one patch of ``patch_t * patch_xy^2 * 3`` values.

    Padded frames: coordinates whose frame ``t >= n_frames`` are excluded as
    attention keys with a boolean mask, so the output at a valid coordinate
    does not depend on padded frames at all. The official code passes a
    *float* ``key_padding_mask`` (0/1), which attention adds to the logits
    (+1 for padded keys) instead of masking them; we mask properly.
    """

    def __init__(self, channels: int, grid: tuple[int, int, int], patch_values: int, dim: int, depth: int, heads: int) -> None:
        super().__init__()
        self.grid = grid
        self.embed = nn.Linear(3 * channels, dim)
        self.pos_embed = nn.Parameter(torch.randn(math.prod(grid), dim) * dim ** -0.5)
        self.blocks = nn.ModuleList(TransformerBlock(dim, heads, qkv_bias=True) for _ in range(depth))
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.head = nn.Linear(dim, patch_values)

    def forward(self, planes: dict[str, Tensor], coords: Tensor, key_mask: Tensor | None = None) -> Tensor:
        """``coords int64 [B, N, 3]``, ``key_mask bool [B, N]`` (True = valid) -> patches ``[B, N, P]``."""
        _, gx, gy = self.grid
        flat = (coords[..., 0] * gx + coords[..., 1]) * gy + coords[..., 2]
        x = self.embed(triplane_features(planes, coords, self.grid)) + self.pos_embed[flat]
        mask = key_mask[:, None, None, :] if key_mask is not None else None
        for block in self.blocks:
            x = block(x, mask)
        return self.head(self.norm(x))


# --------------------------------------------------------------------------------------------
# The tokenizer
# --------------------------------------------------------------------------------------------

@register_tokenizer("coordtok")
class CoordTok(VideoTokenizer):
    """CoordTok (arXiv 2411.14762): whole video -> triplane; patch coordinates -> patches.

    Args:
        size: ``"tiny"``, ``"S"``, ``"B"`` or ``"L"`` (:data:`COORDTOK_SIZES`,
            supplementary Table 5).
        encoder_layers, cross_layers, decoder_layers, width, heads: explicit
            overrides of the size preset.
        frames, resolution: the video geometry the positional tables are built
            for (128 and 128 in the paper). Shorter videos are padded to
            ``frames`` and masked; ``resolution`` must match exactly.
        latent_resolution_xy, latent_resolution_t, latent_channels: the
            triplane ``(R_xy, R_t, C)``; ``(16, 32, 8)`` gives 1280 tokens and
            ``(32, 32, 8)`` 3072 (:data:`COORDTOK_BUDGETS`).
        latent_patch_xy, latent_patch_t: Conv2D patch of the triplane queries;
            default ``R // 2`` (2x2 query tokens per plane, as the official
            configs 16/8, 32/16 and t 32/16).
        encoder_patch_t, encoder_patch_xy: Conv3D patch of the video (8, 16).
        decoder_patch_t, decoder_patch_xy: decoded patch (1 frame, 8x8 pixels).
        stage1_steps: optimizer steps of stage 1; later steps are stage 2
            (paper: 1M then 50K fine-tuning steps, supplementary A.1).
        points_per_video: stage-1 coordinates per video (N = 1024).
        stage2_frames: whole frames per video in stage 2 (16, i.e. 4096 coordinates at 128x128).
        lpips_weight: weight of LPIPS in stage 2 (1.0: "equal weights").
        decode_chunk: default coordinates per decoder pass (``None``: all at once, supp. B.1).

    Raises:
        ValueError: for an unknown size, or geometry that the patch sizes do not divide.
    """

    clip_frames = None
    continuous = True
    unused_parameters = False  # both stages train every parameter

    def __init__(self, size: str = "tiny", encoder_layers: int | None = None, cross_layers: int | None = None,
                 decoder_layers: int | None = None, width: int | None = None, heads: int | None = None,
                 frames: int = 128, resolution: int = 128,
                 latent_resolution_xy: int = 16, latent_resolution_t: int = 32, latent_channels: int = 8,
                 latent_patch_xy: int | None = None, latent_patch_t: int | None = None,
                 encoder_patch_t: int = 8, encoder_patch_xy: int = 16,
                 decoder_patch_t: int = 1, decoder_patch_xy: int = 8,
                 stage1_steps: int = 1_000_000, points_per_video: int = 1024, stage2_frames: int = 16,
                 lpips_weight: float = 1.0, decode_chunk: int | None = None) -> None:
        super().__init__()
        if size not in COORDTOK_SIZES:
            raise ValueError(f"unknown CoordTok size {size!r}; expected one of {sorted(COORDTOK_SIZES)}")
        preset = COORDTOK_SIZES[size]
        self.size = size
        self.width = width or preset.width
        self.heads = heads or preset.heads
        if self.width % self.heads:
            raise ValueError(f"width {self.width} must be a multiple of heads {self.heads}")
        self.frames, self.resolution = frames, resolution
        for name, value, patch in (("frames", frames, encoder_patch_t), ("resolution", resolution, encoder_patch_xy),
                                   ("frames", frames, decoder_patch_t), ("resolution", resolution, decoder_patch_xy)):
            if value % patch:
                raise ValueError(f"{name}={value} must be a multiple of the patch size {patch}")
        self.latent_resolution_xy, self.latent_resolution_t = latent_resolution_xy, latent_resolution_t
        self.latent_channels = latent_channels
        latent_patch_xy = latent_patch_xy or max(1, latent_resolution_xy // 2)
        latent_patch_t = latent_patch_t or max(1, latent_resolution_t // 2)
        if latent_resolution_xy % latent_patch_xy or latent_resolution_t % latent_patch_t:
            raise ValueError(f"latent patch ({latent_patch_t}, {latent_patch_xy}) must divide the triplane "
                             f"(R_t={latent_resolution_t}, R_xy={latent_resolution_xy})")
        self.encoder_patch_t = encoder_patch_t
        self.decoder_patch_t, self.decoder_patch_xy = decoder_patch_t, decoder_patch_xy
        self.decoder_grid = (frames // decoder_patch_t, resolution // decoder_patch_xy, resolution // decoder_patch_xy)
        self.stage1_steps, self.points_per_video, self.stage2_frames = stage1_steps, points_per_video, stage2_frames
        self.lpips_weight, self.decode_chunk = lpips_weight, decode_chunk
        self.perceptual = LazyLPIPS("vgg")  # frozen VGG LPIPS for stage 2, kept out of the state dict

        self.encoder = VideoEncoder(frames, resolution, encoder_patch_t, encoder_patch_xy, self.width,
                                    encoder_layers or preset.encoder_layers, self.heads)
        self.cross_encoder = CrossSelfEncoder(latent_channels, latent_resolution_xy, latent_resolution_t,
                                              latent_patch_xy, latent_patch_t, math.prod(self.encoder.grid),
                                              self.width, cross_layers or preset.cross_layers, self.heads)
        self.decoder = CoordinateDecoder(latent_channels, self.decoder_grid, 3 * decoder_patch_t * decoder_patch_xy ** 2,
                                         self.width, decoder_layers or preset.decoder_layers, self.heads)

    # ---- geometry ---------------------------------------------------------------------------

    def num_tokens(self, frames: int, height: int, width: int) -> int:
        """Triplane positions ``R_xy^2 + 2 R_t R_xy`` (1280 for (16, 32, 8)), whatever the video size.

        Raises ``ValueError`` when the video does not fit the model's geometry.
        """
        self._check_geometry(frames, height, width)
        return self.latent_resolution_xy ** 2 + 2 * self.latent_resolution_t * self.latent_resolution_xy

    def _check_geometry(self, frames: int, height: int, width: int) -> None:
        if height != self.resolution or width != self.resolution:
            raise ValueError(f"CoordTok built for {self.resolution}x{self.resolution} frames, got {height}x{width}")
        if not 1 <= frames <= self.frames:
            raise ValueError(f"CoordTok built for videos of up to {self.frames} frames, got {frames}")
        if frames % self.decoder_patch_t:
            raise ValueError(f"frames must be a multiple of the decoder patch {self.decoder_patch_t}, got {frames}")

    def _prepare(self, video: Tensor, n_frames: Tensor | list[int] | None) -> tuple[Tensor, Tensor]:
        """Zero frames ``>= n_frames``, pad ``video`` to ``frames`` with zeros; return it and the lengths ``int64 [B]``.

        Zeroing (instead of the official loader's constant -3 padding) makes the
        content of padded frames irrelevant even inside a partially valid
        8-frame encoder patch, which stays unmasked (``ceil(n_frames / 8)``
        valid temporal tokens; the official mask uses ``floor``).
        """
        check_video(video)
        batch, _, frames, height, width = video.shape
        self._check_geometry(frames, height, width)
        if n_frames is None:
            n_frames = torch.full((batch,), frames, dtype=torch.long, device=video.device)
        n_frames = torch.as_tensor(n_frames, dtype=torch.long, device=video.device).reshape(-1)
        if n_frames.shape[0] != batch or bool((n_frames < 1).any()) or bool((n_frames > frames).any()):
            raise ValueError(f"n_frames must hold {batch} lengths in [1, {frames}], got {n_frames.tolist()}")
        if bool((n_frames < frames).any()):  # padded frames are zeroed: their content never matters
            valid = torch.arange(frames, device=video.device)[None, :] < n_frames[:, None]
            video = video * valid[:, None, :, None, None].to(video.dtype)
        if frames < self.frames:
            video = F.pad(video, (0, 0, 0, 0, 0, self.frames - frames))
        return video, n_frames

    def _video_key_mask(self, n_frames: Tensor) -> Tensor | None:
        """``bool [B, video tokens]``: a token is valid when its frames include a valid one (ceil)."""
        gt, gh, gw = self.encoder.grid
        valid_t = (n_frames + self.encoder_patch_t - 1) // self.encoder_patch_t
        mask = torch.arange(gt, device=n_frames.device)[None, :] < valid_t[:, None]
        if bool(mask.all()):
            return None  # no padding: unmasked attention (and the fast SDPA kernels)
        return mask[:, :, None].expand(-1, -1, gh * gw).reshape(mask.shape[0], -1)

    def _coord_key_mask(self, coords: Tensor, n_frames: Tensor) -> Tensor | None:
        """``bool [B, N]``: coordinate ``(t, x, y)`` may be attended when its frames start before ``n_frames``."""
        mask = coords[..., 0] * self.decoder_patch_t < n_frames[:, None]
        return None if bool(mask.all()) else mask

    def patchify(self, video: Tensor) -> Tensor:
        """``[B, 3, T, H, W] -> [B, T_p * X_p * Y_p, P]`` decoder targets, flat index ``(t * X_p + x) * Y_p + y``."""
        p, q = self.decoder_patch_t, self.decoder_patch_xy
        return rearrange(video, "b c (t p) (x q) (y r) -> b (t x y) (p q r c)", p=p, q=q, r=q)

    def unpatchify(self, patches: Tensor, frames: int) -> Tensor:
        """``[B, (frames / p_t) * X_p * Y_p, P] -> [B, 3, frames, H, W]`` (t-major patches)."""
        p, q = self.decoder_patch_t, self.decoder_patch_xy
        _, gx, gy = self.decoder_grid
        return rearrange(patches, "b (t x y) (p q r c) -> b c (t p) (x q) (y r)", x=gx, y=gy, p=p, q=q, r=q, c=3)

    def all_coords(self, frames: int, device: torch.device | str) -> Tensor:
        """Every patch coordinate of the first ``frames`` frames, ``int64 [frames/p_t * X_p * Y_p, 3]``, t-major."""
        _, gx, gy = self.decoder_grid
        axes = [torch.arange(n, device=device) for n in (frames // self.decoder_patch_t, gx, gy)]
        return torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1).reshape(-1, 3)

    # ---- contract ---------------------------------------------------------------------------

    def encode_planes(self, video: Tensor, n_frames: Tensor) -> dict[str, Tensor]:
        """Padded ``[B, 3, frames, H, W]`` and lengths -> triplane dict (see module docstring)."""
        key_mask = self._video_key_mask(n_frames)
        return self.cross_encoder(self.encoder(video, key_mask), key_mask)

    def encode(self, video: Tensor, num_tokens: int | None = None, n_frames: Tensor | list[int] | None = None) -> Tokens:
        """Encode whole videos ``float32 [B, 3, T, H, W]`` in ``[-1, 1]`` into a triplane.

        ``T <= frames``: shorter videos are padded with zeros and masked.
        ``n_frames`` (``int [B]``) gives the true lengths when the batch holds
        videos padded to ``T`` already (frames at and after ``n_frames[b]`` are
        ignored). ``num_tokens`` must be ``None`` or the fixed budget.

        Returns:
            :class:`Tokens` with ``latents = {"xy": [B, C, R_xy, R_xy], "xt": [B, C, R_t, R_xy],
            "yt": [B, C, R_t, R_xy]}`` and ``info = {"shape": (T, H, W), "n_frames": int64 [B]}``.
        """
        count = self.num_tokens(*video.shape[2:])
        if num_tokens is not None and num_tokens != count:
            raise ValueError(f"coordtok has a fixed budget of {count} tokens per video, got num_tokens={num_tokens}")
        frames = video.shape[2]
        padded, n_frames = self._prepare(video, n_frames)
        planes = self.encode_planes(padded, n_frames)
        return Tokens(latents=planes, num_tokens=count, info={"shape": (frames, *video.shape[3:]), "n_frames": n_frames})

    def decode(self, tokens: Tokens, decode_chunk: int | None = None) -> Tensor:
        """Decode every patch coordinate of the video (supplementary B.1) -> ``float32 [B, 3, T, H, W]``.

        By default all ``T * (H/8) * (W/8)`` coordinates go through the decoder
        in one pass, as in the paper. ``decode_chunk`` (or the constructor's)
        decodes that many coordinates per pass (t-major order, like the
        official ``decode_video`` slices) to bound memory on small devices; the
        result is *not* identical, since the decoder attends across the
        coordinates of a pass. Coordinates of padded frames (``t >=
        n_frames[b]``) are decoded but never attended as keys. Output is not
        clamped.
        """
        planes = tokens.latents
        if not isinstance(planes, dict) or set(planes) != set(PLANES):
            raise ValueError(f"coordtok tokens must hold the planes {PLANES}, got {type(planes).__name__}")
        frames = tokens.info.get("shape", (self.frames,))[0]
        batch = planes["xy"].shape[0]
        device = planes["xy"].device
        n_frames = tokens.info.get("n_frames")
        n_frames = torch.full((batch,), frames, device=device, dtype=torch.long) if n_frames is None \
            else torch.as_tensor(n_frames, device=device, dtype=torch.long)
        coords = self.all_coords(frames, device)[None].expand(batch, -1, -1)
        chunk = decode_chunk or self.decode_chunk or coords.shape[1]
        parts = []
        for part in coords.split(chunk, dim=1):
            parts.append(self.decoder(planes, part, self._coord_key_mask(part, n_frames)))
        return self.unpatchify(torch.cat(parts, dim=1), frames)

    def decode_coords(self, tokens: Tokens, coords: Tensor) -> Tensor:
        """Patches ``[B, N, 3 * p_t * p_xy^2]`` at ``coords int64 [B, N, 3]`` decoded together in one pass."""
        n_frames = tokens.info.get("n_frames")
        if n_frames is None:
            return self.decoder(tokens.latents, coords)
        return self.decoder(tokens.latents, coords, self._coord_key_mask(coords, torch.as_tensor(n_frames, device=coords.device)))

    # ---- training (supplementary A.1) -------------------------------------------------------

    def stage(self, step: int) -> int:
        """1 for ``step < stage1_steps`` (l2 on random patches), else 2 (l2 + LPIPS on whole frames)."""
        return 1 if step < self.stage1_steps else 2

    def sample_coords(self, n_frames: Tensor, stage: int) -> tuple[Tensor, list[int] | None]:
        """Training coordinates ``int64 [B, N, 3]`` (and, in stage 2, the sampled frame count).

        Stage 1: ``points_per_video`` coordinates per video, ``t``, ``x``, ``y``
        drawn independently and uniformly with replacement over valid frames.
        Stage 2: ``min(stage2_frames, shortest video)`` distinct random frames
        per video (not consecutive, as the official sampler), all their patches.
        """
        batch, device = n_frames.shape[0], n_frames.device
        _, gx, gy = self.decoder_grid
        valid_t = n_frames // self.decoder_patch_t
        if stage == 1:
            n = self.points_per_video
            t = (torch.rand(batch, n, device=device) * valid_t[:, None]).long().clamp(max=valid_t[:, None] - 1)
            x = torch.randint(0, gx, (batch, n), device=device)
            y = torch.randint(0, gy, (batch, n), device=device)
            return torch.stack([t, x, y], dim=-1), None
        k = min(self.stage2_frames, int(valid_t.min()))
        frames = torch.stack([torch.randperm(int(v), device=device)[:k] for v in valid_t.tolist()])  # [B, k]
        grid = self.all_coords(self.decoder_patch_t, device)[:, 1:]  # [X_p * Y_p, 2] of one frame
        t = frames[:, :, None].expand(-1, -1, grid.shape[0])
        xy = grid[None, None].expand(batch, k, -1, -1)
        return torch.cat([t[..., None], xy], dim=-1).reshape(batch, -1, 3), k

    def training_losses(self, video: Tensor, step: int, n_frames: Tensor | list[int] | None = None) -> dict[str, Tensor]:
        """Loss of one step on whole videos ``float32 [B, 3, T, H, W]`` in ``[-1, 1]`` (supp. A.1).

        Stage 1: ``loss = l2`` over ``points_per_video`` random patches per
        video. Stage 2: ``loss = l2 + lpips_weight * LPIPS`` over
        ``stage2_frames`` random whole frames (LPIPS-VGG per frame, averaged).
        l2 is the mean squared error over coordinates and patch values, averaged
        over the batch (the official code sums the per-video means over the
        per-GPU batch).

        Returns ``{"loss", "l2", "stage"}`` plus ``"lpips"`` in stage 2.
        """
        padded, n_frames = self._prepare(video, n_frames)
        stage = self.stage(step)
        planes = self.encode_planes(padded, n_frames)
        coords, frames = self.sample_coords(n_frames, stage)
        _, gx, gy = self.decoder_grid
        flat = (coords[..., 0] * gx + coords[..., 1]) * gy + coords[..., 2]
        target = self.patchify(padded).gather(1, flat[..., None].expand(-1, -1, 3 * self.decoder_patch_t * self.decoder_patch_xy ** 2))
        pred = self.decoder(planes, coords)  # every sampled coordinate lies in a valid frame: no mask needed
        l2 = F.mse_loss(pred.float(), target.float())
        out = {"l2": l2.detach(), "stage": torch.tensor(float(stage), device=video.device)}
        if stage == 1:
            out["loss"] = l2
            return out
        per_frame = self.decoder_patch_t * frames
        pred_frames = rearrange(self.unpatchify(pred, per_frame), "b c t h w -> (b t) c h w")
        target_frames = rearrange(self.unpatchify(target, per_frame), "b c t h w -> (b t) c h w")
        lpips = self.perceptual(pred_frames, target_frames)
        out["lpips"] = lpips.detach()
        out["loss"] = l2 + self.lpips_weight * lpips
        return out


def coordtok_param_counts(sizes: tuple[str, ...] = ("S", "B", "L"), **kwargs) -> dict[str, int]:
    """Parameters of each size at the paper geometry (128x128x128, 1280 tokens), built on the meta device.

    ``kwargs`` override the geometry or budget (e.g. ``latent_resolution_xy=32`` for 3072 tokens).
    No memory is allocated.
    """
    counts = {}
    for size in sizes:
        with torch.device("meta"):
            model = CoordTok(size=size, **kwargs)
        counts[size] = sum(p.numel() for p in model.parameters())
    return counts


# --------------------------------------------------------------------------------------------
# Sizes and presets
# --------------------------------------------------------------------------------------------

#: layers and width of each size: Table 5 of the supplementary (S, B, L) plus ``tiny`` for CPU tests and suites
COORDTOK_SIZES: dict[str, SizeConfig] = {
    "tiny": SizeConfig(encoder_layers=2, cross_layers=2, decoder_layers=2, width=64, heads=4),
    "S": SizeConfig(encoder_layers=8, cross_layers=8, decoder_layers=8, width=512, heads=8),
    "B": SizeConfig(encoder_layers=8, cross_layers=12, decoder_layers=12, width=768, heads=12),
    "L": SizeConfig(encoder_layers=8, cross_layers=24, decoder_layers=24, width=1024, heads=16),
}

#: triplane budgets of the paper: tokens -> (R_xy, R_t, C) (abstract, Table 8; research notes 1.3)
COORDTOK_BUDGETS = {1280: (16, 32, 8), 3072: (32, 32, 8)}


def _register_presets() -> None:
    """``coordtok_<size>`` (the default 1280-token triplane) and ``coordtok_L_<tokens>`` for the paper's budgets."""
    register_size_presets("coordtok", COORDTOK_SIZES, source="CoordTok supp. Table 5")
    for tokens, (xy, t, c) in COORDTOK_BUDGETS.items():
        register_preset(f"coordtok_L_{tokens}", "coordtok",
                        dict(size="L", latent_resolution_xy=xy, latent_resolution_t=t, latent_channels=c),
                        summary=f"{COORDTOK_SIZES['L'].summary()}, triplane R_xy={xy} R_t={t} C={c} ({tokens} tokens)",
                        source="CoordTok abstract, Table 8, Fig. 5 (notes 1.3)")


_register_presets()
