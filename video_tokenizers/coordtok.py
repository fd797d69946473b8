"""``coordtok``: CoordTok, coordinate-based patch reconstruction for long videos.

Jang, Yu, Shin, Abbeel, Seo, "Efficient Long Video Tokenization via
Coordinate-based Patch Reconstruction" (arXiv 2411.14762, CVPR 2025); the
architecture follows supplementary A.1 and Table 5, the facts read from the
official code are in ``docs/research/tokenizers.md`` section 1.

A whole video (128 frames at 128x128 in the paper) is encoded into a factorized
triplane ``z = (z^xy, z^xt, z^yt)``:

1. *transformer encoder*: Conv3D patch embedding (kernel = stride =
   ``(8, 16, 16)``: 128x128x128 -> 16x8x8 = 1024 video tokens), a learnable
   positional embedding, a cls token (dropped at the output) and
   self-attention blocks;
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
frames with l2 + LPIPS (VGG, equal weights; per video the official loss is the
l2 plus the *sum* of the 16 frames' LPIPS). Evaluation (supplementary B.1)
decodes every patch coordinate of the video in one pass.

Every architectural and recipe choice follows the official code
(huiwon-jang/CoordTok at commit 8475272; the files are named where used);
``docs/coordtok.md`` lists each choice against the paper and that code.

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

from harness_core.api import Tokens, VideoTokenizer, check_video
from harness_core.registry import SizeConfig, register_preset, register_size_presets, register_tokenizer
from harness_core.layers import PLANES, CrossSelfBlock, TransformerBlock
from video_tokenizers.losses import LazyLPIPS

#: LayerNorm eps of the official ViT3D and decoder blocks and their final norms: ``nn.LayerNorm``'s default, which
#: timm ``Block`` used as its ``norm_layer`` until timm 1.0.15 (timm >= 1.0.16 defaults to its own LayerNorm, eps 1e-6);
#: the official model was trained in November 2024 (timm 1.0.11 was current)
TIMM_BLOCK_NORM_EPS = 1e-5
#: LayerNorm eps of the official cross-self encoder (``TransformerDecoder(eps=1e-6)`` in encoder_modules.py)
CROSS_NORM_EPS = 1e-6
#: value of padded frames with ``padding="official"``: tools/datasets.py appends frames of -1 in [0, 1] and
#: ``collate_fn`` maps videos by ``x * 2 - 1``
OFFICIAL_PAD_VALUE = -3.0
#: ``padding`` modes of :class:`CoordTok`
PADDING_MODES = ("masked", "official")
#: ``decoder_pos_index`` modes of :class:`CoordTok`
POS_INDEX_MODES = ("official", "exact")


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


def official_patch_index(index: Tensor, patches: int) -> Tensor:
    """The official decoder's positional-table index of integer patch ``index`` (of ``patches``), ``int64``.

    The official loader (tools/datasets.py) normalizes ``index / (patches - 1)``
    in float32 and ``Transformer.forward`` (models/coordtok/coordtok_decoder.py)
    multiplies by ``patches - 1`` and truncates with ``.long()``. Rounding makes
    that ``index - 1`` for some indices of some grids (none of 2-22 patches nor
    any power of two, so none of the paper's 128-frame or 16-patch axes; e.g.
    23, 24 and 30 patches, measured); this function reproduces it. A single
    patch maps to 0 (the official code divides by zero there).
    """
    if patches == 1:
        return torch.zeros_like(index)
    return (index / (patches - 1) * (patches - 1)).long()


# --------------------------------------------------------------------------------------------
# Blocks
# --------------------------------------------------------------------------------------------

class VideoEncoder(nn.Module):
    """Transformer encoder, the official ``ViT3D`` (models/coordtok/encoder_modules.py).

    ``[B, 3, T, H, W] -> [B, (T/pt)(H/ps)(W/ps), D]``: Conv3D patch embedding,
    plus a positional embedding (``torch.randn``, std 1); a learnable cls token
    (``torch.randn``, no positional embedding) is put in front; timm-``Block``
    layers (no qkv bias, LayerNorm eps :data:`TIMM_BLOCK_NORM_EPS`); a final
    LayerNorm (same eps); the cls token is dropped. The cls token takes part in
    every block's self-attention, so it changes the video tokens' outputs.

    ``forward(video, key_mask)``: ``key_mask`` is ``None`` (no mask, as the
    official ViT3D) or ``bool [B, N]`` (``True`` = the video token may be
    attended; the cls token always may).
    """

    def __init__(self, frames: int, resolution: int, patch_t: int, patch_xy: int, dim: int, depth: int, heads: int) -> None:
        super().__init__()
        self.grid = (frames // patch_t, resolution // patch_xy, resolution // patch_xy)
        self.patch_t = patch_t
        self.embed = nn.Conv3d(3, dim, kernel_size=(patch_t, patch_xy, patch_xy), stride=(patch_t, patch_xy, patch_xy))
        self.cls_token = nn.Parameter(torch.randn(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.randn(1, math.prod(self.grid), dim))
        self.blocks = nn.ModuleList(TransformerBlock(dim, heads, qkv_bias=False, norm_eps=TIMM_BLOCK_NORM_EPS)
                                    for _ in range(depth))
        self.norm = nn.LayerNorm(dim, eps=TIMM_BLOCK_NORM_EPS)

    def forward(self, video: Tensor, key_mask: Tensor | None) -> Tensor:
        x = rearrange(self.embed(video), "b d t h w -> b (t h w) d") + self.pos_embed
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)
        mask = F.pad(key_mask, (1, 0), value=True)[:, None, None, :] if key_mask is not None else None
        for block in self.blocks:
            x = block(x, mask)
        return self.norm(x[:, 1:])


class CrossSelfEncoder(nn.Module):
    """Learnable triplane queries -> cross/self-attention over video features -> triplane.

    As the official ``Encoder`` (models/coordtok/coordtok_encoder.py) and the
    triplane parameters of ``CoordTok`` (coordtok_model.py): the planes
    ``[C, Ra, Rb]`` are ``torch.randn`` parameters, each patchified by its own
    Conv2D (patch ``(pa, pb)``) into ``(Ra/pa)(Rb/pb)`` query tokens of width D;
    the video features get a positional embedding (``torch.randn``, std 1)
    after the transformer encoder's final norm; the three query sequences are
    concatenated, processed by :class:`CrossSelfBlock`s (LayerNorm eps
    :data:`CROSS_NORM_EPS`) and a final LayerNorm (same eps), split again and
    projected per plane by a linear layer to ``pa * pb * C`` values folded
    back onto the plane grid. The official sequence order is xy, yt, xt
    (here xy, xt, yt): the queries carry no position, so the order is a
    relabelling that changes nothing.

    ``forward(context, key_padding_mask)``: see :class:`CrossSelfBlock`.
    """

    def __init__(self, channels: int, res_xy: int, res_t: int, patch_xy: int, patch_t: int,
                 video_tokens: int, dim: int, depth: int, heads: int) -> None:
        super().__init__()
        self.shapes = {"xy": (res_xy, res_xy), "xt": (res_t, res_xy), "yt": (res_t, res_xy)}
        self.patches = {"xy": (patch_xy, patch_xy), "xt": (patch_t, patch_xy), "yt": (patch_t, patch_xy)}
        self.planes = nn.ParameterDict({k: nn.Parameter(torch.randn(1, channels, *s)) for k, s in self.shapes.items()})
        self.embed = nn.ModuleDict({k: nn.Conv2d(channels, dim, kernel_size=p, stride=p) for k, p in self.patches.items()})
        self.context_pos_embed = nn.Parameter(torch.randn(1, video_tokens, dim))
        self.blocks = nn.ModuleList(CrossSelfBlock(dim, heads, norm_eps=CROSS_NORM_EPS) for _ in range(depth))
        self.norm = nn.LayerNorm(dim, eps=CROSS_NORM_EPS)
        self.proj = nn.ModuleDict({k: nn.Linear(dim, p[0] * p[1] * channels) for k, p in self.patches.items()})

    def query_grid(self, name: str) -> tuple[int, int]:
        (ra, rb), (pa, pb) = self.shapes[name], self.patches[name]
        return ra // pa, rb // pb

    def forward(self, context: Tensor, key_padding_mask: Tensor | None) -> dict[str, Tensor]:
        batch = context.shape[0]
        queries = [rearrange(self.embed[k](self.planes[k]), "1 d ga gb -> 1 (ga gb) d") for k in PLANES]
        lengths = [q.shape[1] for q in queries]
        x = torch.cat(queries, dim=1).expand(batch, -1, -1)
        context = context + self.context_pos_embed
        for block in self.blocks:
            x = block(x, context, key_padding_mask)
        x = self.norm(x)
        out = {}
        for name, part in zip(PLANES, x.split(lengths, dim=1)):
            (pa, pb), (ga, gb) = self.patches[name], self.query_grid(name)
            out[name] = rearrange(self.proj[name](part), "b (ga gb) (pa pb c) -> b c (ga pa) (gb pb)",
                                  ga=ga, gb=gb, pa=pa, pb=pb)
        return out


class CoordinateDecoder(nn.Module):
    """Transformer decoder over sampled patch coordinates (official ``Decoder`` / ``Transformer``,
    models/coordtok/coordtok_decoder.py).

    For each coordinate: triplane features ``[3C]`` -> Linear -> ``D``, plus a
    learned positional embedding (``D^-0.5 * torch.randn``, table
    ``[T_p * X_p * Y_p, D]``) looked up by the patch index ``(t, x, y)``
    (``pos_index="official"``: :func:`official_patch_index` per axis;
    ``"exact"``: the integer index itself), then timm-``Block`` layers (qkv
    bias, LayerNorm eps :data:`TIMM_BLOCK_NORM_EPS`) over the N coordinates, a
    final LayerNorm (same eps) and a Linear to one patch of
    ``patch_t * patch_xy^2 * 3`` values.

    ``forward(planes, coords, key_mask=None)``: ``key_mask bool [B, N]``
    (``True`` = the coordinate may be attended) excludes coordinates of padded
    frames as keys, so outputs at valid coordinates equal those of decoding
    the valid coordinates alone, which is what the official evaluation does
    (``decode_video`` is called with the video's own length).
    """

    def __init__(self, channels: int, grid: tuple[int, int, int], patch_values: int, dim: int, depth: int, heads: int,
                 pos_index: str = "official") -> None:
        super().__init__()
        self.grid = grid
        self.pos_index = pos_index
        self.embed = nn.Linear(3 * channels, dim)
        self.pos_embed = nn.Parameter(torch.randn(math.prod(grid), dim) * dim ** -0.5)
        self.blocks = nn.ModuleList(TransformerBlock(dim, heads, qkv_bias=True, norm_eps=TIMM_BLOCK_NORM_EPS)
                                    for _ in range(depth))
        self.norm = nn.LayerNorm(dim, eps=TIMM_BLOCK_NORM_EPS)
        self.head = nn.Linear(dim, patch_values)

    def table_index(self, coords: Tensor) -> Tensor:
        """Row of the positional table ``int64 [B, N]`` for patch coordinates ``int64 [B, N, 3]``."""
        t, x, y = coords.unbind(-1)
        if self.pos_index == "official":
            t, x, y = (official_patch_index(i, n) for i, n in zip((t, x, y), self.grid))
        _, gx, gy = self.grid
        return (t * gx + x) * gy + y

    def forward(self, planes: dict[str, Tensor], coords: Tensor, key_mask: Tensor | None = None) -> Tensor:
        """``coords int64 [B, N, 3]``, ``key_mask bool [B, N]`` (True = valid) -> patches ``[B, N, P]``."""
        x = self.embed(triplane_features(planes, coords, self.grid)) + self.pos_embed[self.table_index(coords)]
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
            ``frames`` (see ``padding``); ``resolution`` must match exactly.
            Patch coordinates are normalized by the full ``frames`` grid, short
            videos included, as the official loader does.
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
        lpips_weight: weight of the per-video *sum* of the stage-2 frames'
            LPIPS (1.0: official ``--lpips_loss_scale 1.0``; ``1 / stage2_frames``
            gives the mean over frames instead).
        lpips_dropout: run LPIPS's dropout (p = 0.5 before each linear layer)
            in training mode, as the official stage 2 does (its LPIPS is a
            submodule of the model, which the trainer puts in train mode every
            step); ``False``: the deterministic eval-mode LPIPS, the same in
            expectation.
        padding: how frames at and after ``n_frames`` enter the encoder.
            ``"masked"`` (default): zeroed, and the video tokens made only of
            padded frames (``t >= ceil(n_frames / 8)``) are excluded as keys
            of the transformer encoder and of the cross-attention, so padded
            content never reaches the triplane. ``"official"``: as the official
            code, filled with -3 (:data:`OFFICIAL_PAD_VALUE`), no mask in the
            transformer encoder, and in the cross-attention the 0/1 float
            ``key_padding_mask`` of the tokens ``t >= floor(n_frames / 8)``,
            which ``nn.MultiheadAttention`` *adds* to the logits (+1 on those
            keys, which stay attended). The decoder masks coordinates of padded
            frames in both modes (see :class:`CoordinateDecoder`).
        decoder_pos_index: ``"official"`` (:func:`official_patch_index`) or
            ``"exact"`` positional-table indices; equal at the paper's grids.
        decode_chunk: default coordinates per decoder pass (``None``: all at once, supp. B.1).
        stage2_fresh_optimizer: start stage 2 with fresh optimizers (Adam moments and step counts cleared, a new
            fp16 gradient scaler), as the official stage 2 is a new run that loads only the stage-1 weights
            (huiwon-jang/CoordTok 8475272 ``train_coordtok.py --is_second_step``, ``tools/trainer_coordtok.py``
            ``train`` builds a new AdamW and GradScaler); ``False`` carries the optimizer state across.

    Raises:
        ValueError: for an unknown size, padding or index mode, or geometry that the patch sizes do not divide.
    """

    #: where the recipe comes from (``python -m harness protocol`` shows it; conformance in docs/fidelity.md)
    recipe_source = "CoordTok supp. A.1; huiwon-jang/CoordTok 8475272 train_coordtok.py, tools/trainer_coordtok.py, models/coordtok/* (docs/fidelity.md section 3)"

    chunk_frames = None
    continuous = True
    unused_parameters = False  # both stages train every parameter
    variable_length = True  # the engine passes n_frames to encode and training_losses

    def __init__(self, size: str = "tiny", encoder_layers: int | None = None, cross_layers: int | None = None,
                 decoder_layers: int | None = None, width: int | None = None, heads: int | None = None,
                 frames: int = 128, resolution: int = 128,
                 latent_resolution_xy: int = 16, latent_resolution_t: int = 32, latent_channels: int = 8,
                 latent_patch_xy: int | None = None, latent_patch_t: int | None = None,
                 encoder_patch_t: int = 8, encoder_patch_xy: int = 16,
                 decoder_patch_t: int = 1, decoder_patch_xy: int = 8,
                 stage1_steps: int = 1_000_000, points_per_video: int = 1024, stage2_frames: int = 16,
                 lpips_weight: float = 1.0, lpips_dropout: bool = True, padding: str = "masked",
                 decoder_pos_index: str = "official", decode_chunk: int | None = None,
                 stage2_fresh_optimizer: bool = True) -> None:
        super().__init__()
        if size not in COORDTOK_SIZES:
            raise ValueError(f"unknown CoordTok size {size!r}; expected one of {sorted(COORDTOK_SIZES)}")
        for name, value, allowed in (("padding", padding, PADDING_MODES), ("decoder_pos_index", decoder_pos_index, POS_INDEX_MODES)):
            if value not in allowed:
                raise ValueError(f"CoordTok {name} must be one of {allowed}, got {value!r}")
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
        self.lpips_weight, self.lpips_dropout = lpips_weight, lpips_dropout
        self.stage2_fresh_optimizer = stage2_fresh_optimizer
        self.padding, self.decode_chunk = padding, decode_chunk
        self.perceptual = LazyLPIPS("vgg")  # frozen VGG LPIPS for stage 2, kept out of the state dict

        self.encoder = VideoEncoder(frames, resolution, encoder_patch_t, encoder_patch_xy, self.width,
                                    encoder_layers or preset.encoder_layers, self.heads)
        self.cross_encoder = CrossSelfEncoder(latent_channels, latent_resolution_xy, latent_resolution_t,
                                              latent_patch_xy, latent_patch_t, math.prod(self.encoder.grid),
                                              self.width, cross_layers or preset.cross_layers, self.heads)
        self.decoder = CoordinateDecoder(latent_channels, self.decoder_grid, 3 * decoder_patch_t * decoder_patch_xy ** 2,
                                         self.width, decoder_layers or preset.decoder_layers, self.heads,
                                         pos_index=decoder_pos_index)

    # ---- geometry ---------------------------------------------------------------------------

    def tokens_per_video(self, frames: int, height: int, width: int) -> int:
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
        """Fill frames ``>= n_frames`` and pad ``video`` to ``frames``; return it and the lengths ``int64 [B]``.

        The fill is 0 with ``padding="masked"`` (so the content of padded frames
        is irrelevant even inside a partially valid 8-frame encoder patch, which
        stays unmasked) and -3 with ``padding="official"`` (the official loader's
        padding frames).
        """
        check_video(video)
        batch, _, frames, height, width = video.shape
        self._check_geometry(frames, height, width)
        if n_frames is None:
            n_frames = torch.full((batch,), frames, dtype=torch.long, device=video.device)
        n_frames = torch.as_tensor(n_frames, dtype=torch.long, device=video.device).reshape(-1)
        if n_frames.shape[0] != batch or bool((n_frames < 1).any()) or bool((n_frames > frames).any()):
            raise ValueError(f"n_frames must hold {batch} lengths in [1, {frames}], got {n_frames.tolist()}")
        fill = OFFICIAL_PAD_VALUE if self.padding == "official" else 0.0
        if bool((n_frames < frames).any()):
            valid = torch.arange(frames, device=video.device)[None, :] < n_frames[:, None]
            video = torch.where(valid[:, None, :, None, None], video, torch.tensor(fill, dtype=video.dtype, device=video.device))
        if frames < self.frames:
            video = F.pad(video, (0, 0, 0, 0, 0, self.frames - frames), value=fill)
        return video, n_frames

    def _encoder_masks(self, n_frames: Tensor) -> tuple[Tensor | None, Tensor | None]:
        """``(key mask of the transformer encoder, key_padding_mask of the cross-attention)`` for lengths ``int64 [B]``.

        ``padding="masked"``: ``bool [B, video tokens]`` ``True`` for tokens whose
        frames include a valid one (``t < ceil(n_frames / 8)``), and its negation
        in ``nn.MultiheadAttention``'s convention. ``padding="official"``: no
        encoder mask, and ``float32 [B, video tokens]`` 1.0 for tokens with
        ``t >= floor(n_frames / 8)`` (``ViT3D.forward`` with ``Encoder.forward``'s
        ``n_frames // patch_size_t``), 0.0 elsewhere. ``None`` where nothing is padded.
        """
        gt, gh, gw = self.encoder.grid
        steps = torch.arange(gt, device=n_frames.device)[None, :]
        if self.padding == "official":
            padded = steps >= (n_frames // self.encoder_patch_t)[:, None]
            if not bool(padded.any()):
                return None, None  # an all-zero additive mask changes nothing
            return None, padded.float().repeat_interleave(gh * gw, dim=1)
        valid = steps < ((n_frames + self.encoder_patch_t - 1) // self.encoder_patch_t)[:, None]
        if bool(valid.all()):
            return None, None  # no padding: unmasked attention (and the fast SDPA kernels)
        valid = valid.repeat_interleave(gh * gw, dim=1)
        return valid, ~valid

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
        """Padded ``[B, 3, frames, H, W]`` (from :meth:`_prepare`) and lengths -> triplane dict (see module docstring)."""
        encoder_mask, key_padding = self._encoder_masks(n_frames)
        return self.cross_encoder(self.encoder(video, encoder_mask), key_padding)

    def encode(self, video: Tensor, budget: int | None = None, n_frames: Tensor | list[int] | None = None) -> Tokens:
        """Encode whole videos ``float32 [B, 3, T, H, W]`` in ``[-1, 1]`` into a triplane.

        ``T <= frames``: shorter videos are padded (see ``padding``).
        ``n_frames`` (``int [B]``) gives the true lengths when the batch holds
        videos padded to ``T`` already (frames at and after ``n_frames[b]`` are
        padding). ``budget`` must be ``None`` or the fixed budget.

        Returns:
            :class:`Tokens` with ``latents = {"xy": [B, C, R_xy, R_xy], "xt": [B, C, R_t, R_xy],
            "yt": [B, C, R_t, R_xy]}`` and ``info = {"shape": (T, H, W), "n_frames": int64 [B]}``.
        """
        count = self.tokens_per_video(*video.shape[2:])
        if budget is not None and budget != count:
            raise ValueError(f"coordtok has a fixed budget of {count} tokens per video, got budget={budget}")
        frames = video.shape[2]
        padded, n_frames = self._prepare(video, n_frames)
        planes = self.encode_planes(padded, n_frames)
        return Tokens(latents=planes, tokens_per_video=count, info={"shape": (frames, *video.shape[3:]), "n_frames": n_frames})

    def decode(self, tokens: Tokens, decode_chunk: int | None = None) -> Tensor:
        """Decode every patch coordinate of the video (supplementary B.1) -> ``float32 [B, 3, T, H, W]``.

        By default all ``T * (H/8) * (W/8)`` coordinates go through the decoder
        in one pass, as in the paper (and the official README's
        ``decode_video(..., Nslice=1)``). ``decode_chunk`` (or the constructor's)
        decodes that many coordinates per pass (t-major order, like the
        official ``decode_video`` slices) to bound memory on small devices; the
        result is *not* identical, since the decoder attends across the
        coordinates of a pass. Coordinates of padded frames (``t >=
        n_frames[b]``) are decoded but never attended as keys, so valid frames
        are those of decoding the video's own length, as the official
        evaluation does. Output is not clamped.
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

    def fresh_optimizer_at(self, steps: int) -> list[int]:
        """``[stage1_steps]`` when a ``steps``-step schedule reaches stage 2 and ``stage2_fresh_optimizer`` is on."""
        return [self.stage1_steps] if self.stage2_fresh_optimizer and 0 < self.stage1_steps < steps else []

    def stage(self, step: int) -> int:
        """1 for ``step < stage1_steps`` (l2 on random patches), else 2 (l2 + LPIPS on whole frames)."""
        return 1 if step < self.stage1_steps else 2

    def sample_coords(self, n_frames: Tensor, stage: int) -> tuple[Tensor, int | None]:
        """Training coordinates ``int64 [B, N, 3]`` (and, in stage 2, the number of frames per video).

        As the official samplers (tools/datasets.py), video by video, from the
        global torch generator. Stage 1 (``VideoTimeWrapperPatchMultiGPU``):
        ``points_per_video`` coordinates, ``t``, ``x``, ``y`` drawn in that order,
        each uniform with replacement (``torch.randint``), ``t`` over the valid
        frames. Stage 2 (``VideoTimeWrapperFrameMultiGPU``): the first ``k`` of
        a ``torch.randperm`` of the valid frames (distinct, in random order, not
        consecutive), all their patches (x-major); ``k = stage2_frames``, or the
        shortest video's frame count when that is smaller (the official loader
        then fails to batch the videos).
        """
        device = n_frames.device
        _, gx, gy = self.decoder_grid
        valid_t = (n_frames // self.decoder_patch_t).tolist()
        if stage == 1:
            n = self.points_per_video
            return torch.stack([torch.stack([torch.randint(0, high, (n,), device=device) for high in (v, gx, gy)], dim=-1)
                                for v in valid_t]), None
        k = min(self.stage2_frames, min(valid_t))
        frames = torch.stack([torch.randperm(v, device=device)[:k] for v in valid_t])  # [B, k]
        grid = self.all_coords(self.decoder_patch_t, device)[:, 1:]  # [X_p * Y_p, 2] of one frame
        t = frames[:, :, None].expand(-1, -1, grid.shape[0])
        xy = grid[None, None].expand(len(valid_t), k, -1, -1)
        return torch.cat([t[..., None], xy], dim=-1).reshape(len(valid_t), -1, 3), k

    def training_losses(self, video: Tensor, step: int, n_frames: Tensor | list[int] | None = None) -> dict[str, Tensor]:
        """Loss of one step on whole videos ``float32 [B, 3, T, H, W]`` in ``[-1, 1]`` (supp. A.1).

        Per video, as the official ``Decoder.forward``: ``l2`` = mean squared
        error over the sampled coordinates and patch values; stage 1: ``loss =
        l2``; stage 2: ``loss = l2 + lpips_weight * sum over the k sampled
        frames of LPIPS-VGG(frame)`` (``k = stage2_frames``). The batch loss is
        the mean over videos; the official code sums over the per-GPU batch, a
        constant factor that Adam normalizes away (``docs/coordtok.md``).

        Returns ``{"loss", "l2", "stage"}`` (``l2`` averaged over videos) plus,
        in stage 2, ``"lpips"``: the mean LPIPS per frame (``loss = l2 +
        lpips_weight * k * lpips``).
        """
        padded, n_frames = self._prepare(video, n_frames)
        stage = self.stage(step)
        planes = self.encode_planes(padded, n_frames)
        coords, frames = self.sample_coords(n_frames, stage)
        _, gx, gy = self.decoder_grid
        flat = (coords[..., 0] * gx + coords[..., 1]) * gy + coords[..., 2]
        target = self.patchify(padded).gather(1, flat[..., None].expand(-1, -1, 3 * self.decoder_patch_t * self.decoder_patch_xy ** 2))
        pred = self.decoder(planes, coords)  # every sampled coordinate lies in a valid frame: no mask needed
        l2 = (pred.float() - target.float()).pow(2).mean(dim=(1, 2))  # [B]
        out = {"l2": l2.mean().detach(), "stage": torch.tensor(float(stage), device=video.device)}
        if stage == 1:
            out["loss"] = l2.mean()
            return out
        per_frame = self.decoder_patch_t * frames
        pred_frames = rearrange(self.unpatchify(pred, per_frame), "b c t h w -> (b t) c h w")
        target_frames = rearrange(self.unpatchify(target, per_frame), "b c t h w -> (b t) c h w")
        lpips = self.perceptual.distances(pred_frames, target_frames, dropout=self.lpips_dropout).reshape(len(l2), -1)
        out["lpips"] = lpips.mean().detach()
        out["loss"] = (l2 + self.lpips_weight * lpips.sum(dim=1)).mean()
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
