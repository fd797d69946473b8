"""``omnitokenizer``: OmniTokenizer (Wang et al., NeurIPS 2024), the joint image-video transformer tokenizer.

Official code: ``FoundationVision/OmniTokenizer`` at commit 701b619003b3e941e769269c7626dbf111d0377e
(``OmniTokenizer/omnitokenizer.py`` model and losses, ``OmniTokenizer/modules/attention.py`` blocks,
``OmniTokenizer/modules/codebook.py`` quantizer, ``OmniTokenizer/base.py`` discriminators,
``scripts/recons/train.sh`` the three training stages, ``scripts/recons/eval_video.sh`` the released
configuration, ``vqgan_train.py`` the stage hand-over). CoordTok's baselines (supp. C.1, Table 7) use it in two
variants: ``dv`` (VQ, discrete tokens) and ``cv`` (KL, continuous latents). ``docs/omnitokenizer.md`` has the
recipe table (official value, source, project value) and every deviation with its reason.

Architecture (encoder; the decoder mirrors it in reverse order):

* a (1 + 4k)-frame chunk (17 frames: ``chunk_frames = 17``): the first frame is cut into 8x8 patches on its own
  (image patch embedding, LayerNorm -> Linear -> LayerNorm), the other frames into 4x8x8 patches (video patch
  embedding), so 17x128x128 -> (1 + 4)x16x16 tokens (Table 7), and an image is a 1-frame chunk;
* a spatial transformer over the tokens of each latent frame: blocks ``"ttww"`` (two full-attention blocks with 2D
  RoPE, then two window-attention blocks, window 8, Swin-style relative position bias), then a temporal transformer
  over the latent frames of each position: four causal full-attention blocks; every full-attention block starts
  with a PEG (depthwise 3x3x3 convolution, causal in time);
* attention is cosine attention (l2-normalized queries and keys times learned per-dimension scales, softmax scale
  8), feed-forward is GEGLU (inner width 2/3 x 4 x width, no biases); width 512, 8 heads of 64;
* the decoder: temporal transformer (causal) then spatial transformer (``"tttt"``), then linear layers back to
  pixels (8x8 for the first frame, 4x8x8 for the others), no output activation.

Bottlenecks: ``dv`` projects each token to 8 dimensions, l2-normalizes it and quantizes it with an EMA codebook of
8192 codes (commitment 0.25: the official ``Codebook`` hard-codes it; ``--commitment_weight 1.0`` only reaches
the unused external quantizer); ``cv`` projects to 2 x 8 moments of a diagonal Gaussian, KL weight 1e-6.

Training (official ``scripts/recons/train.sh``), as a two-stage schedule on one video dataset:

1. image stage (``step < image_steps``): frames of the training clips as single images (``images_per_clip``
   random frames per clip); the official stage 1 trains on ImageNet images only;
2. video stage: 17-frame chunks, alternating with image batches (official ``--force_alternation`` over a video
   and an image dataset, ``alternate_images``); at its first step the video patch embedding and the video
   pixel head are inflated from the image ones (official ``--init_vgen average``, ``inflate_video_patches``),
   and the optimizers restart (``fresh_optimizer_at``: stage 2 is a new run from stage 1's weights).

Losses (TATS-style, official ``VQGAN.forward``): L1 x 4, LPIPS (VGG) x 4 on one random frame, hinge GAN with a 2D
PatchGAN on one random frame (image batches) and a 3D PatchGAN on the chunk (video batches), GAN feature matching
x 4 summed over the discriminator layers, from step 0; GAN weights 0.01 (the image GAN in the image stage, the video GAN in
the video stage; the image GAN weight is 0 in the video stage), plus the commitment loss (``dv``) or the KL
(``cv``). ``cv`` in the official code is stage 3: the ``dv`` model fine-tuned with KL (``init_from``).
"""
from __future__ import annotations

from dataclasses import fields
from typing import Any, Mapping

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn
from vector_quantize_pytorch import VectorQuantize

from harness_core.api import Tokens, VideoTokenizer, check_video
from harness_core.layers import DiagonalGaussian
from harness_core.registry import SizeConfig, register_preset, register_tokenizer
from video_tokenizers.losses import AutoencoderLoss, LossConfig, PatchDiscriminator

#: the official repository and commit every recipe value of this module is read from
OFFICIAL = "FoundationVision/OmniTokenizer@701b619003b3e941e769269c7626dbf111d0377e"

# ----------------------------------------------------------------------------------------------------------------
# Blocks (official OmniTokenizer/modules/attention.py)
# ----------------------------------------------------------------------------------------------------------------


def rope_angles(height: int, width: int, dim_head: int, device: torch.device | None = None,
                theta: float = 10000.0) -> Tensor:
    """2D rotary angles ``float32 [height * width, dim_head / 2]`` of a row-major token grid.

    As the official ``precompute_freqs_cis_2d``: ``dim_head / 4`` frequencies ``theta ** (-4i / dim_head)``;
    rotation pair ``2i`` turns by ``column x freq_i``, pair ``2i + 1`` by ``row x freq_i``.

    Raises:
        ValueError: ``dim_head`` not a multiple of 4.
    """
    if dim_head % 4:
        raise ValueError(f"2D RoPE needs dim_head divisible by 4, got {dim_head}")
    freqs = theta ** (-torch.arange(0, dim_head, 4, device=device, dtype=torch.float32) / dim_head)
    rows, cols = torch.meshgrid(torch.arange(height, device=device), torch.arange(width, device=device), indexing="ij")
    x_angles = cols.reshape(-1, 1).float() * freqs
    y_angles = rows.reshape(-1, 1).float() * freqs
    return torch.stack([x_angles, y_angles], dim=-1).flatten(1)


def apply_rope(x: Tensor, angles: Tensor) -> Tensor:
    """Rotate consecutive channel pairs of ``x`` ``[B, heads, N, dim_head]`` by ``angles`` ``[N, dim_head / 2]``."""
    pairs = x.float().unflatten(-1, (-1, 2))
    cos, sin = angles.cos(), angles.sin()
    a, b = pairs[..., 0], pairs[..., 1]
    return torch.stack([a * cos - b * sin, a * sin + b * cos], dim=-1).flatten(-2).type_as(x)


class PEG(nn.Module):
    """Positional encoding generator: a depthwise 3x3x3 convolution over the token grid, causal in time.

    ``forward(x, grid, layout)`` with ``grid = (B, t, h, w)`` and ``x`` ``[B t, h w, D]`` (``layout="spatial"``)
    or ``[B h w, t, D]`` (``"temporal"``) returns the convolution in the same layout. The official code reshapes
    the temporal layout as if it were the spatial one (its ``# TO FIX`` note), which mixes positions and breaks
    causality; this module rearranges it correctly (docs/omnitokenizer.md, deviations).
    """

    def __init__(self, dim: int, causal: bool = True) -> None:
        super().__init__()
        self.causal = causal
        self.conv = nn.Conv3d(dim, dim, 3, groups=dim)

    def forward(self, x: Tensor, grid: tuple[int, int, int, int], layout: str) -> Tensor:
        b, t, h, w = grid
        pattern = "(b t) (h w) d" if layout == "spatial" else "(b h w) t d"
        volume = rearrange(x, f"{pattern} -> b d t h w", b=b, t=t, h=h, w=w)
        time_pad = (2, 0) if self.causal else (1, 1)
        volume = self.conv(F.pad(volume, (1, 1, 1, 1, *time_pad)))
        return rearrange(volume, f"b d t h w -> {pattern}")


class CosineAttention(nn.Module):
    """Official ``Attention``: pre-LayerNorm (no bias), bias-free projections, l2-normalized queries and keys times
    learned per-dimension scales, softmax scale 8; 2D RoPE on spatial tokens; causal on temporal tokens.

    ``forward(x, rope=None)``: ``x`` ``[N, L, D]``, ``rope`` angles ``[L, dim_head / 2]`` or ``None``.
    """

    def __init__(self, dim: int, heads: int, dim_head: int, causal: bool = False, scale: float = 8.0) -> None:
        super().__init__()
        self.heads, self.causal, self.scale = heads, causal, scale
        inner = heads * dim_head
        self.norm = nn.LayerNorm(dim, bias=False)
        self.to_q = nn.Linear(dim, inner, bias=False)
        self.to_kv = nn.Linear(dim, 2 * inner, bias=False)
        self.q_scale = nn.Parameter(torch.ones(dim_head))
        self.k_scale = nn.Parameter(torch.ones(dim_head))
        self.to_out = nn.Linear(inner, dim, bias=False)

    def forward(self, x: Tensor, rope: Tensor | None = None) -> Tensor:
        x = self.norm(x)
        q, k, v = (rearrange(t, "n l (h d) -> n h l d", h=self.heads) for t in (self.to_q(x), *self.to_kv(x).chunk(2, -1)))
        if rope is not None:
            q, k = apply_rope(q, rope), apply_rope(k, rope)
        q = F.normalize(q, dim=-1) * self.q_scale
        k = F.normalize(k, dim=-1) * self.k_scale
        out = F.scaled_dot_product_attention(q, k, v, is_causal=self.causal, scale=self.scale)
        return self.to_out(rearrange(out, "n h l d -> n l (h d)"))


class WindowAttention(nn.Module):
    """Official ``WindowAttention`` (Swin): attention inside non-overlapping ``window x window`` token windows with a
    learned relative position bias per head; pre-LayerNorm (no bias), bias-free qkv, softmax scale ``head_dim ** -0.5``.

    ``forward(x, h, w)``: ``x`` ``[N, h w, D]`` with ``h`` and ``w`` multiples of ``window``.
    """

    def __init__(self, dim: int, heads: int, window: int) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"width {dim} is not divisible by heads {heads}")
        self.heads, self.window = heads, window
        self.norm = nn.LayerNorm(dim, bias=False)
        self.qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.proj = nn.Linear(dim, dim)
        self.relative_bias = nn.Parameter(torch.zeros((2 * window - 1) ** 2, heads))
        nn.init.trunc_normal_(self.relative_bias, std=0.02)
        coords = torch.stack(torch.meshgrid(torch.arange(window), torch.arange(window), indexing="ij")).flatten(1)
        rel = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0) + (window - 1)
        self.register_buffer("relative_index", rel[..., 0] * (2 * window - 1) + rel[..., 1], persistent=False)

    def forward(self, x: Tensor, h: int, w: int) -> Tensor:
        n, s = x.shape[0], self.window
        windows = rearrange(self.norm(x), "n (hb hs wb ws) d -> (n hb wb) (hs ws) d", hb=h // s, hs=s, wb=w // s, ws=s)
        q, k, v = rearrange(self.qkv(windows), "m l (three h d) -> three m h l d", three=3, h=self.heads)
        bias = self.relative_bias[self.relative_index].permute(2, 0, 1)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias.unsqueeze(0).to(q.dtype))
        out = self.proj(rearrange(out, "m h l d -> m l (h d)"))
        return rearrange(out, "(n hb wb) (hs ws) d -> n (hb hs wb ws) d", n=n, hb=h // s, wb=w // s, hs=s)


class GEGLUFeedForward(nn.Module):
    """Official ``FeedForward``: LayerNorm, bias-free Linear to 2 x inner, GELU-gated, bias-free Linear back;
    ``inner = int(mult * 2/3 * dim)``."""

    def __init__(self, dim: int, mult: float = 4.0) -> None:
        super().__init__()
        inner = int(mult * (2 / 3) * dim)
        self.norm = nn.LayerNorm(dim)
        self.up = nn.Linear(dim, 2 * inner, bias=False)
        self.down = nn.Linear(inner, dim, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        value, gate = self.up(self.norm(x)).chunk(2, dim=-1)
        return self.down(F.gelu(gate) * value)


class TransformerBlock(nn.Module):
    """One block of the official ``Transformer``: kind ``"t"`` (PEG, cosine attention, feed-forward) or ``"w"``
    (window attention, feed-forward), each a residual branch."""

    def __init__(self, kind: str, dim: int, heads: int, dim_head: int, window: int, causal: bool, ff_mult: float) -> None:
        super().__init__()
        if kind not in ("t", "w"):
            raise ValueError(f"block kind must be 't' (full attention) or 'w' (window attention), got {kind!r}")
        self.kind = kind
        self.peg = PEG(dim, causal=True) if kind == "t" else None
        self.attn = (CosineAttention(dim, heads, dim_head, causal=causal) if kind == "t"
                     else WindowAttention(dim, heads, window))
        self.ff = GEGLUFeedForward(dim, ff_mult)

    def forward(self, x: Tensor, grid: tuple[int, int, int, int], layout: str, rope: Tensor | None) -> Tensor:
        if self.kind == "t":
            x = x + self.peg(x, grid, layout)
            x = x + self.attn(x, rope)
        else:
            x = x + self.attn(x, grid[2], grid[3])
        return x + self.ff(x)


class FactorizedTransformer(nn.Module):
    """A stack of :class:`TransformerBlock` over one axis of the token grid, then a LayerNorm (no bias).

    ``layout="spatial"``: attention over the ``h x w`` tokens of each latent frame (2D RoPE in ``"t"`` blocks);
    ``"temporal"``: over the ``t`` latent frames of each position (causal when ``causal``).
    ``forward(tokens)`` maps ``[B, t, h, w, D]`` to the same shape.
    """

    def __init__(self, blocks: str, layout: str, dim: int, heads: int, dim_head: int, window: int,
                 causal: bool = False, ff_mult: float = 4.0) -> None:
        super().__init__()
        if layout not in ("spatial", "temporal"):
            raise ValueError(f"layout must be 'spatial' or 'temporal', got {layout!r}")
        if layout == "temporal" and "w" in blocks:
            raise ValueError(f"temporal transformers take full-attention blocks only, got {blocks!r}")
        self.layout, self.dim_head = layout, dim_head
        self.blocks = nn.ModuleList(TransformerBlock(kind, dim, heads, dim_head, window, causal, ff_mult) for kind in blocks)
        self.norm_out = nn.LayerNorm(dim, bias=False)

    def forward(self, tokens: Tensor) -> Tensor:
        b, t, h, w, _ = tokens.shape
        grid = (b, t, h, w)
        pattern = "(b t) (h w) d" if self.layout == "spatial" else "(b h w) t d"
        x = rearrange(tokens, f"b t h w d -> {pattern}")
        rope = rope_angles(h, w, self.dim_head, tokens.device) if self.layout == "spatial" else None
        for block in self.blocks:
            x = block(x, grid, self.layout, rope)
        return rearrange(self.norm_out(x), f"{pattern} -> b t h w d", b=b, t=t, h=h, w=w)


class PatchEmbed(nn.Module):
    """Official linear patch embedding: ``pt x p x p`` patches flattened, LayerNorm -> Linear -> LayerNorm.

    ``[B, 3, pt n, H, W] -> [B, n, H/p, W/p, D]``. Patch features are ordered ``(pt, c, p, p)`` so that the
    official ``average`` inflation from the image embedding (``pt = 1``) gives each frame its own block.
    """

    def __init__(self, patch: int, temporal_patch: int, dim: int, channels: int = 3) -> None:
        super().__init__()
        self.patch, self.temporal_patch = patch, temporal_patch
        features = channels * temporal_patch * patch * patch
        self.norm_in = nn.LayerNorm(features)
        self.proj = nn.Linear(features, dim)
        self.norm_out = nn.LayerNorm(dim)

    def forward(self, video: Tensor) -> Tensor:
        patches = rearrange(video, "b c (t pt) (h p1) (w p2) -> b t h w (pt c p1 p2)",
                            pt=self.temporal_patch, p1=self.patch, p2=self.patch)
        return self.norm_out(self.proj(self.norm_in(patches)))


class PixelHead(nn.Module):
    """Official ``to_pixels``: a Linear from each token to its ``pt x p x p`` patch, ``[B, n, h, w, D] -> [B, 3, pt n, p h, p w]``."""

    def __init__(self, patch: int, temporal_patch: int, dim: int, channels: int = 3) -> None:
        super().__init__()
        self.patch, self.temporal_patch = patch, temporal_patch
        self.proj = nn.Linear(dim, channels * temporal_patch * patch * patch)

    def forward(self, tokens: Tensor) -> Tensor:
        return rearrange(self.proj(tokens), "b t h w (pt c p1 p2) -> b c (t pt) (h p1) (w p2)",
                         pt=self.temporal_patch, p1=self.patch, p2=self.patch)


class OmniEncoder(nn.Module):
    """Official ``OmniTokenizer_Encoder``: first frame and 4-frame groups embedded, spatial then causal temporal
    transformer. ``[B, 3, 1 + pt k, H, W] -> [B, D, 1 + k, H/p, W/p]``."""

    def __init__(self, dim: int, heads: int, dim_head: int, blocks: str, temporal_depth: int, window: int,
                 patch: int, temporal_patch: int, ff_mult: float) -> None:
        super().__init__()
        self.image_patches = PatchEmbed(patch, 1, dim)
        self.video_patches = PatchEmbed(patch, temporal_patch, dim)
        self.spatial = FactorizedTransformer(blocks, "spatial", dim, heads, dim_head, window, ff_mult=ff_mult)
        self.temporal = FactorizedTransformer("t" * temporal_depth, "temporal", dim, heads, dim_head, window,
                                              causal=True, ff_mult=ff_mult)

    def forward(self, video: Tensor) -> Tensor:
        tokens = self.image_patches(video[:, :, :1])
        if video.shape[2] > 1:
            tokens = torch.cat([tokens, self.video_patches(video[:, :, 1:])], dim=1)
        return rearrange(self.temporal(self.spatial(tokens)), "b t h w d -> b d t h w")


class OmniDecoder(nn.Module):
    """Official ``OmniTokenizer_Decoder``: causal temporal then spatial transformer, then pixels per patch.
    ``[B, D, 1 + k, h, w] -> [B, 3, 1 + pt k, p h, p w]``."""

    def __init__(self, dim: int, heads: int, dim_head: int, blocks: str, temporal_depth: int, window: int,
                 patch: int, temporal_patch: int, ff_mult: float) -> None:
        super().__init__()
        self.temporal = FactorizedTransformer("t" * temporal_depth, "temporal", dim, heads, dim_head, window,
                                              causal=True, ff_mult=ff_mult)
        self.spatial = FactorizedTransformer(blocks, "spatial", dim, heads, dim_head, window, ff_mult=ff_mult)
        self.image_pixels = PixelHead(patch, 1, dim)
        self.video_pixels = PixelHead(patch, temporal_patch, dim)

    def forward(self, latents: Tensor) -> Tensor:
        tokens = self.spatial(self.temporal(rearrange(latents, "b d t h w -> b t h w d")))
        frames = self.image_pixels(tokens[:, :1])
        if tokens.shape[1] > 1:
            frames = torch.cat([frames, self.video_pixels(tokens[:, 1:])], dim=2)
        return frames


class OmniDiscriminator(nn.Module):
    """The two official discriminators (``base.py`` ``NLayerDiscriminator`` / ``NLayerDiscriminator3D``, 3 layers,
    64 filters, BatchNorm, padding 2) as :class:`video_tokenizers.losses.PatchDiscriminator` s.

    ``forward(video, frame_index)`` in the :class:`video_tokenizers.losses.VideoDiscriminator` contract: a
    one-frame input (an image batch) goes to the 2D discriminator (``{"2d": ...}``), a chunk to the 3D one
    (``{"3d": ...}``), as the official loss does (the video discriminator is skipped for images, the image one
    has weight 0 on video batches after stage 1).
    """

    def __init__(self, channels: int = 64, layers: int = 3, norm: str = "batch", padding: int = 2) -> None:
        super().__init__()
        self.image = PatchDiscriminator(2, channels, layers, norm, padding)
        self.video = PatchDiscriminator(3, channels, layers, norm, padding)
        self.register_buffer("lecam_ema", torch.zeros(2, 2))  # read by AutoencoderLoss only when lecam_weight > 0

    def forward(self, video: Tensor, frame_index: Tensor) -> dict[str, tuple[Tensor, list[Tensor]]]:
        if video.shape[2] == 1:
            return {"2d": self.image(video[:, :, 0])}
        return {"3d": self.video(video)}


# ----------------------------------------------------------------------------------------------------------------
# Model
# ----------------------------------------------------------------------------------------------------------------


def official_loss_config(gan_weight: float, disc_2d: bool, overrides: Mapping[str, Any] | None) -> LossConfig:
    """The official generator objective for one kind of batch (``OmniTokenizer/omnitokenizer.py`` ``VQGAN.forward``,
    ``base.py`` argument defaults, ``scripts/recons/train.sh``), with ``overrides`` (``LossConfig`` fields) applied.

    L1 x 4 (``--l1_weight`` default 4), LPIPS x 4 on one random frame, hinge GAN x ``gan_weight`` from step 0
    (``--discriminator_iter_start 0``) with the 2D (``disc_2d``) or the 3D PatchGAN (3 layers, 64 filters,
    BatchNorm, padding ``ceil((4 - 1) / 2) = 2``), feature matching: ``--gan_feat_weight 4`` times
    ``4 / (3 + 1) = 1`` per intermediate feature map, summed over the maps (as
    :class:`~video_tokenizers.losses.AutoencoderLoss` sums them), not scaled by the GAN weight.
    ``gan_weight`` 0 turns the GAN off (the official code then adds no adversarial or feature term).

    Raises:
        ValueError: an unknown override key (named).
    """
    known = {f.name for f in fields(LossConfig)}
    unknown = sorted(set(overrides or {}) - known)
    if unknown:
        raise ValueError(f"loss: unknown option(s) {', '.join(map(repr, unknown))}; known: {', '.join(sorted(known))}")
    values: dict[str, Any] = dict(
        recon="l1", recon_weight=4.0, perceptual_weight=4.0, perceptual_net="vgg", perceptual_frames="random",
        gan="hinge" if gan_weight > 0 else None, disc_2d=disc_2d, disc_3d=None if disc_2d else "patch",
        disc_weight=gan_weight, disc_start=0, feature_matching_weight=4.0, disc_channels=64, disc_layers=3,
        disc_norm="batch", disc_padding=2,
    )
    values.update(overrides or {})
    return LossConfig(**values)


@register_tokenizer("omnitokenizer")
class OmniTokenizer(VideoTokenizer):
    """OmniTokenizer: ``[B, 3, 1 + 4k, H, W] -> [B, 1 + k, H/8, W/8]`` tokens (17x128x128 -> (1 + 4)x16x16).

    Args:
        variant: ``"dv"`` (VQ: ``indices`` ``int64 [B, 1 + k, H/8, W/8]``, ``latents`` the quantized codes
            ``float32 [B, code_dim, 1 + k, H/8, W/8]``) or ``"cv"`` (KL: ``latents`` the posterior mean
            ``float32 [B, code_dim, 1 + k, H/8, W/8]``, no indices; SiT generators consume them).
        size: a key of :data:`OMNITOKENIZER_SIZES` giving the defaults of ``width`` .. ``ff_mult``.
        width, heads, dim_head, encoder_blocks, decoder_blocks, temporal_depth, window, ff_mult: the transformers
            (``"t"`` full-attention, ``"w"`` window-attention blocks of the spatial stacks).
        patch, temporal_patch: 8 and 4 (official ``--patch_size 8 --temporal_patch_size 4``).
        code_dim: bottleneck channels (official ``--codebook_dim 8``).
        codebook_size: ``dv`` codes (official ``--n_codes 8192``).
        commitment_weight, ema_decay: ``dv`` quantizer (official ``Codebook``: 0.25, EMA 0.99, initialized from a
            random draw of the first batch's vectors, no random restarts with ``--no_random_restart``).
        kl_weight: ``cv`` KL weight (official ``--kl_weight 1e-6``; KL summed over latent elements, mean over the batch).
        image_steps: optimizer steps of the image stage (0: none); the video stage starts at this step.
        images_per_clip: random frames of each training clip used as images in image batches.
        alternate_images: in the video stage, every second step trains on an image batch (official
            ``--force_alternation`` over a video and an image dataset).
        image_gan_weight: 2D GAN weight of the image stage (official stage 1 ``--image_gan_weight 0.01``);
            image batches of the video stage have none (official stages 2-3 ``--image_gan_weight 0``).
        video_gan_weight: 3D GAN weight of video batches (official stages 2-3 ``--video_gan_weight 0.01``).
        loss: overrides of the :class:`~video_tokenizers.losses.LossConfig` fields of every batch kind
            (``official_loss_config``), e.g. ``{"disc_start": 5}``.
        init_from: a trained ``omnitokenizer`` (a ``run:<id>`` of the suite) whose encoder, decoder, decoder-side
            projection and discriminators this model starts from, as the official stage 3 turns the VQ model into
            the VAE (``vqgan_train.py --pretrained``, ``--init_vgen keep --init_vdis keep``); the encoder-side
            projection is new, as there.
        chunk_frames: native chunk (17 = 1 + 16); the engine splits longer videos into chunks (supp. B.1).

    Raises:
        ValueError: unknown variant or size, inconsistent sizes, an ``init_from`` of another shape, unknown loss options.
    """

    recipe_source = (f"OmniTokenizer (Wang et al., NeurIPS 2024), {OFFICIAL}: OmniTokenizer/omnitokenizer.py, "
                     "OmniTokenizer/modules/attention.py, OmniTokenizer/modules/codebook.py, OmniTokenizer/base.py, "
                     "scripts/recons/train.sh, scripts/recons/eval_video.sh, vqgan_train.py (docs/omnitokenizer.md)")

    def __init__(self, variant: str = "dv", size: str = "tiny", width: int | None = None, heads: int | None = None,
                 dim_head: int | None = None, encoder_blocks: str | None = None, decoder_blocks: str | None = None,
                 temporal_depth: int | None = None, window: int | None = None, ff_mult: float | None = None,
                 patch: int = 8, temporal_patch: int = 4, code_dim: int = 8, codebook_size: int = 8192,
                 commitment_weight: float = 0.25, ema_decay: float = 0.99, kl_weight: float = 1e-6,
                 image_steps: int = 0, images_per_clip: int = 2, alternate_images: bool = True,
                 image_gan_weight: float = 0.01, video_gan_weight: float = 0.01, loss: Mapping[str, Any] | None = None,
                 init_from: "OmniTokenizer | None" = None, chunk_frames: int = 17) -> None:
        super().__init__()
        if variant not in ("dv", "cv"):
            raise ValueError(f"variant must be 'dv' (VQ) or 'cv' (KL), got {variant!r}")
        if size not in OMNITOKENIZER_SIZES:
            raise ValueError(f"size must be one of {', '.join(OMNITOKENIZER_SIZES)}, got {size!r}")
        if image_steps < 0 or images_per_clip < 1:
            raise ValueError(f"image_steps must be >= 0 and images_per_clip >= 1, got {image_steps} and {images_per_clip}")
        if (chunk_frames - 1) % temporal_patch:
            raise ValueError(f"chunk_frames must be 1 + a multiple of temporal_patch {temporal_patch}, got {chunk_frames}")
        preset = OMNITOKENIZER_SIZES[size]
        self.variant, self.size = variant, size
        self.continuous = variant == "cv"
        self.width = width or preset.width
        self.window = window or preset.window
        self.patch, self.temporal_patch, self.code_dim = patch, temporal_patch, code_dim
        self.chunk_frames = chunk_frames
        self.kl_weight = kl_weight
        self.image_steps, self.images_per_clip, self.alternate_images = image_steps, images_per_clip, alternate_images
        stacks = dict(dim=self.width, heads=heads or preset.heads, dim_head=dim_head or preset.dim_head,
                      temporal_depth=temporal_depth or preset.temporal_depth, window=self.window, patch=patch,
                      temporal_patch=temporal_patch, ff_mult=ff_mult or preset.ff_mult)
        self.encoder = OmniEncoder(blocks=encoder_blocks or preset.encoder_blocks, **stacks)
        self.decoder = OmniDecoder(blocks=decoder_blocks or preset.decoder_blocks, **stacks)
        self.pre_quant = nn.Linear(self.width, code_dim * (2 if self.continuous else 1))
        self.post_quant = nn.Linear(code_dim, self.width)
        self.encoder.apply(_vit_init)
        self.decoder.apply(_vit_init)
        self.quantizer = None if self.continuous else VectorQuantize(
            dim=code_dim, codebook_size=codebook_size, decay=ema_decay, commitment_weight=commitment_weight,
            kmeans_init=True, kmeans_iters=1, threshold_ema_dead_code=0, accept_3d_fmap=True, sync_codebook=None)
        self.objectives = {
            "image": AutoencoderLoss(official_loss_config(image_gan_weight, True, loss)),
            "video": AutoencoderLoss(official_loss_config(video_gan_weight, False, loss)),
            "joint_image": AutoencoderLoss(official_loss_config(0.0, True, loss)),
        }
        for objective in self.objectives.values():  # one frozen LPIPS network, loaded on first use
            objective.lpips = self.objectives["image"].lpips
        uses_gan = any(o.config.gan for o in self.objectives.values())
        first = self.objectives["image"].config if self.objectives["image"].config.gan else self.objectives["video"].config
        self.discriminator = OmniDiscriminator(first.disc_channels, first.disc_layers, first.disc_norm,
                                               first.disc_padding) if uses_gan else None
        #: whether the video patch layers were inflated from the image ones (once, at the first video-stage step)
        self.register_buffer("video_patches_inflated", torch.tensor(False))
        if init_from is not None:
            self._start_from(init_from)

    # --- geometry

    def latent_shape(self, frames: int, height: int, width: int) -> tuple[int, int, int]:
        """Latent grid ``(1 + (frames - 1) / 4, height / 8, width / 8)`` of a chunk.

        Raises:
            ValueError: ``frames`` not ``1 + 4k``, or a token grid side not a multiple of the attention window.
        """
        if frames < 1 or (frames - 1) % self.temporal_patch:
            raise ValueError(f"frames must be 1 + a multiple of {self.temporal_patch} (image, or first frame then "
                             f"{self.temporal_patch}-frame patches), got {frames}")
        side = self.patch * self.window
        if height % side or width % side:
            raise ValueError(f"height and width must be multiples of {side} (patch {self.patch} x window "
                             f"{self.window}), got {height}x{width}")
        return 1 + (frames - 1) // self.temporal_patch, height // self.patch, width // self.patch

    def tokens_per_video(self, frames: int, height: int, width: int) -> int:
        chunks = -(-frames // self.chunk_frames)
        t, h, w = self.latent_shape(self.chunk_frames, height, width)
        return chunks * t * h * w

    def codebook_size(self) -> int | None:
        return None if self.quantizer is None else self.quantizer.codebook_size

    @property
    def unused_parameters(self) -> bool:
        """``True`` when some step leaves parameters without a gradient: the 2D discriminator on video batches and
        the 3D one on image batches, the video patch layers on image batches (image stage, alternation)."""
        return self.discriminator is not None or self.image_steps > 0 or self.alternate_images

    # --- tokens

    def encode_features(self, video: Tensor) -> Tensor:
        """Encoder output after the bottleneck projection, ``float [B, code_dim (x2 for cv), 1 + k, h, w]``;
        l2-normalized over channels for ``dv`` (official ``--l2_code``)."""
        check_video(video)
        self.latent_shape(*video.shape[2:])
        features = rearrange(self.pre_quant(rearrange(self.encoder(video), "b d t h w -> b t h w d")),
                             "b t h w d -> b d t h w")
        return features if self.continuous else F.normalize(features, dim=1)

    def quantize(self, features: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """``dv``: normalized features ``[B, code_dim, t, h, w]`` -> codes (same shape), ``int64 [B, t, h, w]``
        indices and the commitment loss (EMA codebook update in training mode)."""
        quantized, indices, commit = self.quantizer(features)
        return quantized, indices, commit

    def decode_latents(self, latents: Tensor) -> Tensor:
        """``float [B, code_dim, t, h, w]`` codes or latents -> video ``float32 [B, 3, 1 + 4(t - 1), 8h, 8w]``."""
        projected = rearrange(self.post_quant(rearrange(latents, "b d t h w -> b t h w d")), "b t h w d -> b d t h w")
        return self.decoder(projected)

    def indices_to_latents(self, indices: Tensor) -> Tensor:
        """Codebook vectors of ``indices`` ``int64 [B, t, h, w]`` as ``float32 [B, code_dim, t, h, w]`` (``dv``)."""
        if self.quantizer is None:
            raise ValueError("indices: the cv variant is continuous and has no codebook")
        if indices.ndim != 4 or indices.dtype not in (torch.int64, torch.int32):
            raise ValueError(f"indices: expected int64 [B, t, h, w], got {indices.dtype} {tuple(indices.shape)}")
        return self.quantizer.get_output_from_indices(indices.long())

    def encode(self, video: Tensor, budget: int | None = None) -> Tokens:
        features = self.encode_features(video)
        if self.continuous:
            latents, indices = DiagonalGaussian(features).mean, None
        else:
            latents, indices, _ = self.quantize(features)
        count = latents.shape[2] * latents.shape[3] * latents.shape[4]
        if budget is not None and budget != count:
            raise ValueError(f"omnitokenizer has a fixed budget of {count} tokens per chunk, got budget={budget}")
        return Tokens(latents=latents, tokens_per_video=count, indices=indices, info={"shape": tuple(video.shape[2:])})

    def decode(self, tokens: Tokens) -> Tensor:
        if tokens.latents is None:
            if tokens.indices is None:
                raise ValueError("tokens carry neither latents nor indices")
            return self.decode_latents(self.indices_to_latents(tokens.indices))
        return self.decode_latents(tokens.latents)

    # --- training

    def in_image_stage(self, step: int) -> bool:
        return step < self.image_steps

    def fresh_optimizer_at(self, steps: int) -> list[int]:
        """The video stage is a new official run (``vqgan_train.py --pretrained``: weights only, new optimizers)."""
        return [self.image_steps] if 0 < self.image_steps < steps else []

    def frames_as_images(self, video: Tensor) -> Tensor:
        """``images_per_clip`` random frames of each clip ``[B, 3, T, H, W]`` as one-frame chunks ``[B k, 3, 1, H, W]``
        (draws from the global generator, which the engine seeds per step)."""
        index = torch.randint(video.shape[2], (video.shape[0], self.images_per_clip), device=video.device)
        frames = video[torch.arange(video.shape[0], device=video.device)[:, None], :, index]  # [B, k, 3, H, W]
        return rearrange(frames, "b k c h w -> (b k) c 1 h w")

    def batch_kind(self, step: int) -> str:
        """``"image"`` (image stage), ``"joint_image"`` (image batch of the video stage) or ``"video"``."""
        if self.in_image_stage(step):
            return "image"
        if self.alternate_images and (step - self.image_steps) % 2 == 1:
            return "joint_image"
        return "video"

    def training_losses(self, video: Tensor, step: int) -> dict[str, Tensor]:
        """The official objective for step ``step`` on ``video`` ``float32 [B, 3, 17, H, W]`` in ``[-1, 1]``.

        Returns ``"loss"`` (reconstruction, perceptual, adversarial and feature-matching terms of the batch kind,
        plus ``commitment`` or ``kl_weight x kl``), ``"disc_loss"`` when a GAN is active for the batch kind, and
        detached entries to log (``"image_batch"`` is 1 on image batches).
        """
        check_video(video)
        kind = self.batch_kind(step)
        if kind == "video":
            self.inflate_video_patches()
            batch = video
        else:
            batch = self.frames_as_images(video)
        features = self.encode_features(batch)
        if self.continuous:
            posterior = DiagonalGaussian(features)
            latents = posterior.sample()
            kl = posterior.kl()
            extra = {"kl": kl.detach()}
            penalty = self.kl_weight * kl
        else:
            latents, indices, penalty = self.quantize(features)
            extra = {"commitment": penalty.detach(), "batch_perplexity": _perplexity(indices, self.codebook_size())}
        recon = self.decode_latents(latents)
        pixels = self.decoder.image_pixels if kind != "video" else self.decoder.video_pixels
        out = self.objectives[kind](batch, recon, step, self.discriminator, pixels.proj.weight)
        out["loss"] = out["loss"] + penalty
        out["image_batch"] = torch.tensor(float(kind != "video"), device=video.device)
        out.update(extra)
        return out

    @torch.no_grad()
    def inflate_video_patches(self) -> bool:
        """At the first video-stage step after an image stage, set the video patch embedding and pixel head from the
        image ones (official ``OmniTokenizer/utils.py`` ``inflate_gen``, strategy ``average``: the image weights
        divided by ``pt`` and repeated ``pt`` times). Returns whether it inflated now (once per model)."""
        if self.image_steps == 0 or bool(self.video_patches_inflated):
            return False
        pt = self.temporal_patch
        image, video = self.encoder.image_patches, self.encoder.video_patches
        video.norm_in.weight.copy_((image.norm_in.weight / pt).repeat(pt))
        video.norm_in.bias.copy_((image.norm_in.bias / pt).repeat(pt))
        video.proj.weight.copy_((image.proj.weight / pt).repeat(1, pt))
        video.proj.bias.copy_(image.proj.bias)
        video.norm_out.load_state_dict(image.norm_out.state_dict())
        heads = self.decoder
        heads.video_pixels.proj.weight.copy_((heads.image_pixels.proj.weight / pt).repeat(pt, 1))
        heads.video_pixels.proj.bias.copy_((heads.image_pixels.proj.bias / pt).repeat(pt))
        self.video_patches_inflated.fill_(True)
        return True

    def _start_from(self, source: "OmniTokenizer") -> None:
        if not isinstance(source, OmniTokenizer):
            raise ValueError(f"init_from: expected a trained omnitokenizer, got {type(source).__name__}")
        parts = ["encoder", "decoder", "post_quant"] + (["discriminator"] if self.discriminator is not None
                                                        and source.discriminator is not None else [])
        try:
            for name in parts:
                getattr(self, name).load_state_dict(getattr(source, name).state_dict())
        except RuntimeError as error:
            raise ValueError(f"init_from: the source model's {name} has another shape ({error})") from None
        self.video_patches_inflated.copy_(source.video_patches_inflated)


def _vit_init(module: nn.Module) -> None:
    """Official ``--initialize_vit`` (stage 1): Linear weights truncated normal (std 0.02), zero biases; LayerNorm 1 / 0."""
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        if module.weight is not None:
            nn.init.ones_(module.weight)
        if module.bias is not None:
            nn.init.zeros_(module.bias)


def _perplexity(indices: Tensor, codebook_size: int) -> Tensor:
    with torch.no_grad():
        counts = torch.bincount(indices.flatten(), minlength=codebook_size).float()
        probs = counts[counts > 0] / counts.sum()
        return torch.exp(-(probs * probs.log()).sum())


# ----------------------------------------------------------------------------------------------------------------
# Sizes and presets
# ----------------------------------------------------------------------------------------------------------------

#: transformer sizes: ``paper`` is the released configuration (scripts/recons/eval_video.sh: --embedding_dim 512
#: --heads 8 --dim_head 64 --enc_block ttww --dec_block tttt --temporal_depth 4 --twod_window_size 8, ff_mult 4);
#: ``tiny`` for CPU tests and suites (32x32 or 64x64 frames: window 4 over 4x4 or 8x8 tokens)
OMNITOKENIZER_SIZES: dict[str, SizeConfig] = {
    "paper": SizeConfig(width=512, heads=8, dim_head=64, encoder_blocks="ttww", decoder_blocks="tttt",
                        temporal_depth=4, window=8, ff_mult=4.0),
    "tiny": SizeConfig(width=64, heads=4, dim_head=16, encoder_blocks="tw", decoder_blocks="tt",
                       temporal_depth=1, window=4, ff_mult=2.0),
}

#: named configurations: CoordTok Table 7's OmniTokenizer-DV / -CV (17x128x128 -> (1 + 4)x16x16) and tiny CPU ones
OMNITOKENIZER_PRESETS: dict[str, SizeConfig] = {
    "dv": SizeConfig(variant="dv", size="paper", codebook_size=8192, code_dim=8),
    "cv": SizeConfig(variant="cv", size="paper", code_dim=8),
    "dv_tiny": SizeConfig(variant="dv", size="tiny", codebook_size=256, code_dim=8),
    "cv_tiny": SizeConfig(variant="cv", size="tiny", code_dim=8),
}


def omnitokenizer_param_counts() -> dict[str, int]:
    """Parameters of each :data:`OMNITOKENIZER_PRESETS` configuration (preset name ``omnitokenizer_<name>``), built
    on the meta device, without the discriminators (training only; papers do not count them). No memory is used."""
    counts = {}
    for name, config in OMNITOKENIZER_PRESETS.items():
        with torch.device("meta"):
            model = OmniTokenizer(**config)
        skip = {id(p) for p in model.discriminator.parameters()} if model.discriminator is not None else set()
        counts[f"omnitokenizer_{name}"] = sum(p.numel() for p in model.parameters() if id(p) not in skip)
    return counts


def _register_presets() -> None:
    for name, config in OMNITOKENIZER_PRESETS.items():
        register_preset(f"omnitokenizer_{name}", "omnitokenizer", config, summary=config.summary(),
                        source=f"{OFFICIAL} scripts/recons/eval_video.sh; CoordTok supp. Table 7")


_register_presets()
