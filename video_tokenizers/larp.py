"""``larp``: LARP, a holistic learned-query video tokenizer with a learned autoregressive prior (Wang et al., ICLR 2025).

Architecture (official code ``hywang66/LARP`` at commit ``8aaed63``, ``models/larp_tokenizer.py``; docs/larp.md has
the recipe table with every source line and deviation):

* a 16-frame chunk in ``[0, 1]`` pixels (the official data range) is cut into ``4 x 8 x 8`` patches by a
  ``Conv3d`` patch embedding, plus fixed 3D sin-cos positions (2D MAE positions of the patch grid plus 1D
  positions of the time index, both at full width);
* **encoder**: ``N`` learned query tokens (Gaussian init, std 0.02) are appended to the patch tokens and one
  ViT stack (timm ``Block``, ``qkv_bias=False``, MLP ratio 4) runs full self-attention over both; the outputs at
  the query positions are the ``N`` holistic latent tokens (``transformer_encoder_parallel``);
* **bottleneck**: a linear projection to ``code_dim = 16``, l2-normalisation and **stochastic VQ** against an
  l2-normalised codebook of ``codebook_size = 8192``: in training a code is *sampled* from
  ``softmax(cos_sim / 0.03)``, in evaluation the most similar code is taken (the README's ``--det`` evaluation);
  straight-through gradients; commitment 0.25 and codebook 1.0, the sum weighted 0.1 (``loss_q_weight``);
* **decoder**: the codes are projected back to the width, given fixed 1D sin-cos positions, and one ViT stack runs
  over ``[latent tokens, patch queries]``, the patch queries being the fixed 3D sin-cos positions plus one learned
  token-type vector; the outputs at the patch-query positions go through LayerNorm and a zero-initialised linear
  head to ``4 x 8 x 8 x 3`` pixels per patch;
* **prior** (training only): a small causal GPT over the 1D code sequence (``gptc``, continuous input of the
  16-d codes, output a 16-d vector that is l2-normalised and scored against the detached codebook by cosine
  similarity); its next-code cross-entropy, averaged over two rounds with scheduled sampling, is added to the
  tokenizer loss with weight 0.06. Gradients of that loss reach the prior and, through the straight-through
  codes, the encoder (never the codebook), which is how the prior shapes the latent space.

Tokens: ``indices`` ``int64 [B, N]`` (one 1D sequence per 16-frame chunk; the harness's AR generator reads it in
order), ``latents`` the quantized l2-normalised codes ``float32 [B, N, code_dim]``. ``N = 1024`` for LARP-L-Long,
so a 128-frame video is 8 chunks x 1024 = 8192 tokens (CoordTok supp. Table 7: "LARP 16x128x128x3 -> 1024").

Objective (``cfgs/larp_tokenizer.yaml`` ``loss``; ``models/loss.py``): L1 + LPIPS-VGG on every frame (weights 1, 1,
in ``[0, 1]`` pixels) + 0.3 x the non-saturating GAN loss of a ViT discriminator (``TransformerDiscriminator``)
from step 0; the discriminator is trained every fifth step with one-sided random label smoothing (``ns_smooth``)
and LeCAM (weight 0.001, which the official loss multiplies in twice: effective 1e-6).
"""
from __future__ import annotations

import contextlib
from typing import ClassVar

import torch
import torch.nn.functional as F
from einops import rearrange
from timm.models.vision_transformer import Block
from torch import Tensor, nn
from torch.func import functional_call

from harness_core.api import Tokens, VideoTokenizer, check_video
from harness_core.layers import sincos_pos_embed
from harness_core.registry import SizeConfig, register_preset, register_tokenizer
from video_tokenizers.losses import AutoencoderLoss, LossConfig, non_saturating_g_loss

#: the official code this module follows (every recipe value in docs/larp.md cites a file of it)
LARP_REPO = "hywang66/LARP"
LARP_COMMIT = "8aaed63354c8c0fabcb8a86a2e31c34320e6db86"


# --------------------------------------------------------------------------------------------------
# Positions
# --------------------------------------------------------------------------------------------------


def video_sincos(frames: int, side: int, dim: int) -> Tensor:
    """Fixed positions of a ``frames x side x side`` patch grid, ``float32 [frames * side * side, dim]`` ((t, h, w) order).

    The official ``get_3d_sincos_pos_embed`` (``models/embed.py``): MAE's 2D embedding of the square grid (its first
    half encodes the column, its second the row) plus a 1D embedding of the time index, both ``dim`` wide.
    """
    rows_first = sincos_pos_embed((side, side), dim, convention="mae")
    spatial = torch.cat([rows_first[:, dim // 2:], rows_first[:, : dim // 2]], dim=1)  # column half first, as MAE
    temporal = sincos_pos_embed((frames,), dim, convention="mae")
    return (temporal[:, None] + spatial[None]).reshape(-1, dim)


def sequence_sincos(length: int, dim: int) -> Tensor:
    """Fixed 1D sin-cos positions ``float32 [length, dim]`` (the decoder's latent positions, scale 10000)."""
    return sincos_pos_embed((length,), dim, convention="mae")


# --------------------------------------------------------------------------------------------------
# Blocks
# --------------------------------------------------------------------------------------------------


class PatchEmbed3d(nn.Module):
    """``[B, 3, T, H, W] -> [B, (T/pt)(H/p)(W/p), dim]``: one ``Conv3d`` with kernel = stride = ``(pt, p, p)``."""

    def __init__(self, dim: int, patch_size: int, temporal_patch_size: int) -> None:
        super().__init__()
        size = (temporal_patch_size, patch_size, patch_size)
        self.proj = nn.Conv3d(3, dim, kernel_size=size, stride=size)

    def forward(self, video: Tensor) -> Tensor:
        return self.proj(video).flatten(2).transpose(1, 2)


def vit_blocks(dim: int, depth: int, heads: int) -> nn.ModuleList:
    """``depth`` timm ViT blocks as the official ``transformer_encoder_*`` (``qkv_bias=False``, MLP ratio 4, no dropout)."""
    return nn.ModuleList(Block(dim=dim, num_heads=heads, mlp_ratio=4, qkv_bias=False) for _ in range(depth))


class JointTransformer(nn.Module):
    """Full self-attention over ``[context, queries]``; returns the outputs at the query positions.

    The official ``TransformerEncoderParallel`` (``models/transformer.py``), LARP's encoder (context: patches,
    queries: the learned latent queries) and decoder (context: latent tokens, queries: patch queries).
    ``forward(context [B, M, D], queries [B, Q, D]) -> [B, Q, D]``.
    """

    def __init__(self, dim: int, depth: int, heads: int) -> None:
        super().__init__()
        self.blocks = vit_blocks(dim, depth, heads)

    def forward(self, context: Tensor, queries: Tensor) -> Tensor:
        h = torch.cat([context, queries], dim=1)
        for block in self.blocks:
            h = block(h)
        return h[:, -queries.shape[1]:]


class StochasticL2VQ(nn.Module):
    """l2-normalised VQ with stochastic code sampling (official ``SimpleVectorQuantizer``, ``models/bottleneck.py``).

    The codebook is an ``nn.Embedding`` (Kaiming-uniform init) used l2-normalised. ``forward(z)`` takes
    l2-normalised vectors ``float32 [B, N, dim]`` and returns

    * the straight-through codes ``z + (q - z).detach()`` ``float32 [B, N, dim]``;
    * the indices ``int64 [B, N]``: in training mode sampled from ``softmax(cos_sim / temperature)``, in eval mode
      the argmax (the official ``set_vq_eval_deterministic``, used by the README's evaluation with ``--det``);
    * the commitment loss ``mean((sg[q] - z)^2)`` and the codebook loss ``mean((q - sg[z])^2)`` (scalars).
    """

    def __init__(self, codebook_size: int, dim: int, temperature: float) -> None:
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"vq_temperature must be > 0, got {temperature}")
        self.temperature = temperature
        self.embedding = nn.Embedding(codebook_size, dim)
        nn.init.kaiming_uniform_(self.embedding.weight)

    @property
    def codebook_size(self) -> int:
        return self.embedding.num_embeddings

    def codes(self) -> Tensor:
        """The l2-normalised codebook ``float32 [codebook_size, dim]``."""
        return F.normalize(self.embedding.weight.float(), dim=-1)

    def lookup(self, indices: Tensor) -> Tensor:
        """Codes of ``indices`` ``int64 [B, N]``: ``float32 [B, N, dim]``."""
        return F.embedding(indices, self.codes())

    def forward(self, z: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        with _full_precision(z.device):  # the official quantizer runs outside autocast, in float32
            return self._quantize(z.float())

    def _quantize(self, z: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        codes = self.codes()
        similarity = z.flatten(0, 1) @ codes.t()
        if self.training:
            indices = torch.multinomial(F.softmax(similarity / self.temperature, dim=-1), 1).squeeze(-1)
        else:
            indices = similarity.argmax(dim=-1)
        quantized = F.embedding(indices, codes).view_as(z)
        commitment = F.mse_loss(z, quantized.detach())
        codebook = F.mse_loss(quantized, z.detach())
        return z + (quantized - z).detach(), indices.view(z.shape[:2]), commitment, codebook


def _full_precision(device: torch.device) -> contextlib.AbstractContextManager:
    """Autocast off on ``device`` (CUDA or CPU); nothing to switch on other devices (meta)."""
    return torch.autocast(device.type, enabled=False) if device.type in ("cuda", "cpu") else contextlib.nullcontext()


class CausalBlock(nn.Module):
    """Pre-LN GPT block with dropout (official ``models/gptc.py`` ``Block``: separate q/k/v projections with bias,
    causal attention with attention dropout, GELU MLP ratio 4, residual dropout). ``[B, L, D] -> [B, L, D]``."""

    def __init__(self, dim: int, heads: int, dropout: float) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"prior width {dim} is not divisible by its {heads} heads")
        self.heads, self.dropout = heads, dropout
        self.ln1, self.ln2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.query, self.key, self.value = nn.Linear(dim, dim), nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.proj = nn.Linear(dim, dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim), nn.Dropout(dropout))
        self.resid_drop = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        h = self.ln1(x)
        q, k, v = (rearrange(f(h), "b l (n d) -> b n l d", n=self.heads) for f in (self.query, self.key, self.value))
        attn = F.scaled_dot_product_attention(q, k, v, is_causal=True, dropout_p=self.dropout if self.training else 0.0)
        x = x + self.resid_drop(self.proj(rearrange(attn, "b n l d -> b l (n d)")))
        return x + self.mlp(self.ln2(x))


class CodePrior(nn.Module):
    """The jointly trained AR prior over code sequences (official ``GPTC``, ``models/gptc.py``).

    ``forward(codes float32 [B, L, code_dim]) -> float32 [B, L, code_dim]``, l2-normalised: position ``i`` predicts
    code ``i + 1`` from codes ``0..i`` (linear input projection, learned positions of ``max_len``, embedding
    dropout, causal blocks, final LayerNorm, linear head).
    """

    def __init__(self, code_dim: int, dim: int, depth: int, heads: int, max_len: int, dropout: float) -> None:
        super().__init__()
        self.input_proj = nn.Linear(code_dim, dim)
        self.pos_emb = nn.Parameter(torch.randn(1, max_len, dim) * 0.02)
        self.drop = nn.Dropout(dropout)
        self.blocks = nn.Sequential(*(CausalBlock(dim, heads, dropout) for _ in range(depth)))
        self.ln_f = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, code_dim)

    def forward(self, codes: Tensor) -> Tensor:
        x = self.drop(self.input_proj(codes) + self.pos_emb[:, : codes.shape[1]])
        return F.normalize(self.head(self.ln_f(self.blocks(x))), dim=-1)


class TransformerDiscriminator(nn.Module):
    """The official ViT discriminator (``models/loss.py`` ``TransformerDiscriminator``).

    ``forward(video float [B, 3, T, H, W] in [0, 1]) -> logits float [B, 1]``: ``4 x 8 x 8`` patch embedding plus
    fixed 3D sin-cos positions, a class token prepended, timm blocks, LayerNorm of the class token, linear to one
    logit. Holds the LeCAM EMAs of the mean real and fake logits as buffers ``lecam_ema_real``/``lecam_ema_fake``.
    """

    def __init__(self, dim: int, depth: int, heads: int, frames: int, resolution: int, patch_size: int,
                 temporal_patch_size: int) -> None:
        super().__init__()
        self.patch_embed = PatchEmbed3d(dim, patch_size, temporal_patch_size)
        grid = video_sincos(frames // temporal_patch_size, resolution // patch_size, dim)
        self.register_buffer("pos_embed", grid[None], persistent=False)
        self.cls_token = nn.Parameter(torch.empty(1, 1, dim))
        self.blocks = nn.Sequential(*vit_blocks(dim, depth, heads))
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.fc = nn.Linear(dim, 1)
        self.register_buffer("lecam_ema_real", torch.zeros(()))
        self.register_buffer("lecam_ema_fake", torch.zeros(()))
        self.apply(_xavier_linear)
        _init_patch_embed(self.patch_embed)
        nn.init.xavier_uniform_(self.cls_token)

    def forward(self, video: Tensor) -> Tensor:
        x = self.patch_embed(video) + self.pos_embed
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)
        return self.fc(self.norm(self.blocks(x)[:, 0]))


def _xavier_linear(module: nn.Module) -> None:
    """The official ``_basic_init``: Xavier-uniform weights and zero biases for every ``nn.Linear``."""
    if isinstance(module, nn.Linear):
        nn.init.xavier_uniform_(module.weight)
        if module.bias is not None:
            nn.init.zeros_(module.bias)


def _init_patch_embed(embed: PatchEmbed3d) -> None:
    """Patch embedding initialised like a linear layer (Xavier-uniform on the flattened kernel), zero bias."""
    weight = embed.proj.weight
    nn.init.xavier_uniform_(weight.view(weight.shape[0], -1))
    nn.init.zeros_(embed.proj.bias)


# --------------------------------------------------------------------------------------------------
# Official GAN pieces that video_tokenizers.losses does not have
# --------------------------------------------------------------------------------------------------


def ns_smooth_d_loss(real: Tensor, fake: Tensor) -> Tensor:
    """Official ``ns_d_loss_single_side_smooth``: logistic loss against noisy targets.

    Real targets ``1 - |N(0, 1)| x 0.15`` clamped to ``>= 0.7``, fake targets ``|N(0, 1)| x 0.15`` clamped to
    ``<= 0.3`` (draws from the global generator); ``BCE(real) + BCE(fake)``, each a mean.
    """
    real_target = (1.0 - torch.randn_like(real).abs() * 0.15).clamp_min(0.7)
    fake_target = (torch.randn_like(fake).abs() * 0.15).clamp_max(0.3)
    return (F.binary_cross_entropy_with_logits(real, real_target)
            + F.binary_cross_entropy_with_logits(fake, fake_target))


def lecam_regularizer(real_mean: Tensor, fake_mean: Tensor, ema_real: Tensor, ema_fake: Tensor) -> Tensor:
    """LeCAM (Tseng et al. 2021) as the official ``lecam_reg``: on the batch-mean logits (scalars),
    ``relu(mean D(x) - ema_fake)^2 + relu(ema_real - mean D(G(z)))^2``."""
    return F.relu(real_mean - ema_fake).pow(2) + F.relu(ema_real - fake_mean).pow(2)


# --------------------------------------------------------------------------------------------------
# The model
# --------------------------------------------------------------------------------------------------


@register_tokenizer("larp")
class LARP(VideoTokenizer):
    """LARP tokenizer: a ``[B, 3, 16, R, R]`` chunk in ``[-1, 1]`` -> ``int64 [B, N]`` codes of ``codebook_size``.

    Args:
        size: a key of :data:`LARP_SIZES` (encoder/decoder width, depth, heads, tokens ``N``, prior and
            discriminator sizes).
        resolution: frame side ``R`` in pixels (square frames, a multiple of ``patch_size``; the fixed positions are
            built for it); the engine fills it from ``data.resolution``.
        chunk_frames: frames per chunk (16, ``--frame_num 16``); a multiple of ``temporal_patch_size``.
        patch_size, temporal_patch_size: patch ``8`` x ``8`` pixels x ``4`` frames (encoder, decoder and discriminator).
        tokens: query tokens ``N`` per chunk; ``None`` takes the size's (1024 for ``L_long``).
        codebook_size: codes (8192); ``code_dim``: bottleneck width (16).
        vq_temperature: temperature of the stochastic code sampling in training (0.03).
        commitment_weight, codebook_weight: VQ loss terms (0.25, 1.0), summed and weighted by ``vq_loss_weight`` (0.1,
            the trainer's ``loss_q_weight``).
        latent_ce_weight: weight of the prior's latent cross-entropy (0.06).
        prior_rounds: prediction rounds of the prior, losses averaged (2); round ``r > 0`` sees the codes with a
            fraction of positions replaced by codes sampled from round ``r - 1`` (scheduled sampling).
        ss_max_ratio, ss_peak_fraction: the replaced fraction rises linearly from 0 to ``ss_max_ratio`` (0.5) at
            ``ss_peak_fraction`` (0.3) of ``max_steps`` and stays there.
        max_steps: the run's total optimizer steps (the official ``max_steps``); needed for training when
            ``prior_rounds > 1`` (set it to ``train.steps``).
        latent_ce_temperature: the prior logits are cosine similarities divided by this (1.0).
        prior_dropout: embedding, attention and residual dropout of the prior (0.1).
        l1_weight, perceptual_weight: L1 and LPIPS-VGG (every frame) weights in ``[0, 1]`` pixels (1.0, 1.0).
        disc_weight: weight of the generator's non-saturating GAN loss (0.3); 0 disables the discriminator.
        disc_start: first step of the GAN terms (0).
        d_update_every: the discriminator loss is returned (and the discriminator trained) every this many steps (5).
        lecam_weight: LeCAM weight (0.001), applied twice as in the official loss (effective ``lecam_weight ** 2``).
        lecam_decay: decay of the LeCAM EMAs (0.999).

    Recommended optimizer (set by the suite; ``cfgs/larp_tokenizer.yaml``): Adam lr 1e-4, betas (0.5, 0.9), no
    weight decay. The reproduction script also runs the prior at 50x and the discriminator at 0.3x that learning
    rate with a cosine schedule; the engine has one constant learning rate (docs/larp.md, deviations).

    Raises:
        ValueError: an unknown size, a geometry the patches do not divide, a bad weight (named); at use, videos
            that are not ``[B, 3, chunk_frames, resolution, resolution]``, bad indices or budgets.
    """

    chunk_frames = 16
    continuous = False
    recipe_source = (f"LARP (Wang et al., ICLR 2025), {LARP_REPO}@{LARP_COMMIT[:7]}: cfgs/larp_tokenizer.yaml, "
                     "scripts/train_larp_tokenizer_reproduce.sh, models/larp_tokenizer.py, models/bottleneck.py, "
                     "models/gptc.py, models/loss.py, trainers/larp_tokenizer_trainer.py (docs/larp.md)")
    published_parameters: ClassVar[dict[str, tuple[float, str]]] = {
        "L_long": (173e6, f"{LARP_REPO} README (LARP-L-Long-tokenizer, 173M); the measured count includes the "
                         "21.7M AR prior (172.2M without it)")}

    def __init__(self, size: str = "tiny", resolution: int = 128, chunk_frames: int = 16, patch_size: int = 8,
                 temporal_patch_size: int = 4, tokens: int | None = None, codebook_size: int = 8192, code_dim: int = 16,
                 vq_temperature: float = 0.03, commitment_weight: float = 0.25, codebook_weight: float = 1.0,
                 vq_loss_weight: float = 0.1, latent_ce_weight: float = 0.06, prior_rounds: int = 2,
                 ss_max_ratio: float = 0.5, ss_peak_fraction: float = 0.3, max_steps: int | None = None,
                 latent_ce_temperature: float = 1.0, prior_dropout: float = 0.1, l1_weight: float = 1.0,
                 perceptual_weight: float = 1.0, disc_weight: float = 0.3, disc_start: int = 0, d_update_every: int = 5,
                 lecam_weight: float = 0.001, lecam_decay: float = 0.999) -> None:
        super().__init__()
        if size not in LARP_SIZES:
            raise ValueError(f"size: unknown LARP size {size!r}; known: {', '.join(LARP_SIZES)}")
        cfg = LARP_SIZES[size]
        self.size, self.resolution, self.chunk_frames = size, resolution, chunk_frames
        self.patch_size, self.temporal_patch_size = patch_size, temporal_patch_size
        self.tokens = cfg.tokens if tokens is None else tokens
        _check_geometry(resolution, chunk_frames, patch_size, temporal_patch_size, self.tokens)
        for name, value in (("prior_rounds", prior_rounds), ("d_update_every", d_update_every)):
            if value < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        if max_steps is not None and max_steps < 1:
            raise ValueError(f"max_steps must be >= 1 or None, got {max_steps}")
        self.vq_weights = (vq_loss_weight * commitment_weight, vq_loss_weight * codebook_weight)
        self.latent_ce_weight, self.latent_ce_temperature = latent_ce_weight, latent_ce_temperature
        self.prior_rounds, self.ss_max_ratio, self.ss_peak_fraction = prior_rounds, ss_max_ratio, ss_peak_fraction
        self.max_steps = max_steps
        self.disc_weight, self.disc_start, self.d_update_every = disc_weight, disc_start, d_update_every
        self.lecam_weight, self.lecam_decay = lecam_weight, lecam_decay
        width, grid_t, side = cfg.width, chunk_frames // temporal_patch_size, resolution // patch_size

        # encoder: patches + fixed positions, learned queries, one joint stack
        self.patch_embed = PatchEmbed3d(width, patch_size, temporal_patch_size)
        self.register_buffer("patch_pe", video_sincos(grid_t, side, width)[None], persistent=False)
        self.queries = nn.Parameter(torch.empty(self.tokens, width))
        self.encoder = JointTransformer(width, cfg.depth, cfg.heads)
        # bottleneck
        self.to_code = nn.Linear(width, code_dim)
        self.quantizer = StochasticL2VQ(codebook_size, code_dim, vq_temperature)
        self.from_code = nn.Linear(code_dim, width)
        # decoder: latent tokens + fixed 1D positions, patch queries = fixed 3D positions + a learned type vector
        self.register_buffer("latent_pe", sequence_sincos(self.tokens, width)[None], persistent=False)
        self.patch_query_type = nn.Parameter(torch.empty(1, 1, width))
        self.decoder = JointTransformer(width, cfg.depth, cfg.heads)
        self.head_norm = nn.LayerNorm(width, eps=1e-6)
        self.head = nn.Linear(width, temporal_patch_size * patch_size * patch_size * 3)
        # training-only prior (its parameters are part of the tokenizer, as in the official module)
        prior = PRIOR_SIZES[cfg.prior]
        self.prior = CodePrior(code_dim, prior.width, prior.depth, prior.heads, self.tokens, prior_dropout)
        self._init_weights()
        self.discriminator = (TransformerDiscriminator(cfg.disc_width, cfg.disc_depth, cfg.disc_heads, chunk_frames,
                                                       resolution, patch_size, temporal_patch_size)
                              if disc_weight > 0 else None)
        # L1 on [-1, 1] is twice L1 on the official [0, 1] pixels; LPIPS takes [-1, 1] either way (normalize=True)
        self.objective = AutoencoderLoss(LossConfig(recon="l1", recon_weight=0.5 * l1_weight,
                                                    perceptual_weight=perceptual_weight, perceptual_frames="all"))

    def _init_weights(self) -> None:
        """Official ``initialize_weights``: Xavier linears (the prior's too), linear-like patch embedding,
        Gaussian queries and type vector (std 0.02), zero head."""
        self.apply(_xavier_linear)
        _init_patch_embed(self.patch_embed)
        nn.init.normal_(self.queries, std=0.02)
        nn.init.normal_(self.patch_query_type, std=0.02)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)

    # --- contract

    @property
    def unused_parameters(self) -> bool:
        """``True`` when the discriminator is idle at some steps (``d_update_every > 1`` or ``disc_start > 0``)."""
        return self.discriminator is not None and (self.d_update_every > 1 or self.disc_start > 0)

    def codebook_size(self) -> int:
        return self.quantizer.codebook_size

    def tokens_per_video(self, frames: int, height: int, width: int) -> int:
        self._check_frame_size(height, width)
        return -(-frames // self.chunk_frames) * self.tokens

    def encode(self, video: Tensor, budget: int | None = None) -> Tokens:
        """``video`` ``float32 [B, 3, chunk_frames, R, R]`` in ``[-1, 1]`` -> tokens: ``indices int64 [B, N]``,
        ``latents`` the codes ``float32 [B, N, code_dim]`` (sampled in training mode, argmax in eval mode)."""
        self._check_chunk(video)
        if budget is not None and budget != self.tokens:
            raise ValueError(f"budget: LARP has a fixed budget of {self.tokens} tokens per chunk, got {budget}")
        _, indices, _, _ = self.quantizer(self.encode_codes(video))
        return Tokens(latents=self.quantizer.lookup(indices), tokens_per_video=self.tokens, indices=indices,
                      info={"shape": tuple(video.shape[2:])})

    def decode(self, tokens: Tokens) -> Tensor:
        """Tokens (``latents`` codes, or ``indices`` alone when ``latents`` is ``None``) -> ``float32 [B, 3, 16, R, R]``
        clamped to ``[-1, 1]`` (the official evaluation clamps to ``[0, 1]``, ``eval/rfvd_evaluator.py``)."""
        if tokens.latents is None:
            if tokens.indices is None:
                raise ValueError("tokens carry neither latents nor indices")
            return self.decode_indices(tokens.indices)
        codes = tokens.latents
        if not isinstance(codes, Tensor) or codes.shape[1:] != (self.tokens, self.quantizer.embedding.embedding_dim):
            shape = tuple(codes.shape) if isinstance(codes, Tensor) else type(codes).__name__
            raise ValueError(f"tokens.latents: expected codes [B, {self.tokens}, "
                             f"{self.quantizer.embedding.embedding_dim}], got {shape}")
        return self.decode_codes(codes).clamp(-1.0, 1.0)

    def decode_indices(self, indices: Tensor) -> Tensor:
        """Codes ``int64 [B, N]`` in ``[0, codebook_size)`` -> video ``float32 [B, 3, 16, R, R]`` in ``[-1, 1]``."""
        if indices.ndim != 2 or indices.shape[1] != self.tokens or indices.dtype not in (torch.int64, torch.int32):
            raise ValueError(f"indices: expected int64 [B, {self.tokens}], got {indices.dtype} {tuple(indices.shape)}")
        if indices.device.type != "meta" and indices.numel() and (int(indices.min()) < 0
                                                                    or int(indices.max()) >= self.codebook_size()):
            raise ValueError(f"indices: codes must lie in [0, {self.codebook_size()})")
        return self.decode_codes(self.quantizer.lookup(indices.long())).clamp(-1.0, 1.0)

    # --- encoder / decoder

    def encode_codes(self, video: Tensor) -> Tensor:
        """``[B, 3, 16, R, R]`` in ``[-1, 1]`` -> l2-normalised pre-quantization codes ``float32 [B, N, code_dim]``."""
        patches = self.patch_embed((video + 1) / 2) + self.patch_pe
        latents = self.encoder(patches, self.queries.expand(video.shape[0], -1, -1))
        return F.normalize(self.to_code(latents).float(), dim=-1)

    def decode_codes(self, codes: Tensor) -> Tensor:
        """Codes ``float32 [B, N, code_dim]`` -> video ``float32 [B, 3, 16, R, R]`` in ``[-1, 1]`` (not clamped)."""
        latents = self.from_code(codes) + self.latent_pe
        queries = (self.patch_pe + self.patch_query_type).expand(codes.shape[0], -1, -1)
        patches = self.head(self.head_norm(self.decoder(latents, queries)))
        side = self.resolution // self.patch_size
        pixels = rearrange(patches, "b (t h w) (pt p1 p2 c) -> b c (t pt) (h p1) (w p2)", h=side, w=side,
                           pt=self.temporal_patch_size, p1=self.patch_size, p2=self.patch_size)
        return pixels * 2 - 1

    # --- training

    def training_losses(self, video: Tensor, step: int) -> dict[str, Tensor]:
        """The official generator objective and, every ``d_update_every`` steps from ``disc_start``, ``"disc_loss"``.

        ``loss = L1 + LPIPS + vq_loss_weight (0.25 commit + codebook) + 0.06 latent CE + 0.3 GAN``; the GAN term
        evaluates the discriminator with detached parameters and ``disc_loss`` sees detached reconstructions
        (:class:`harness_core.api.VideoTokenizer`).

        Raises:
            ValueError: ``max_steps`` is unset while scheduled sampling needs it; a bad video (see ``encode``).
        """
        self._check_chunk(video)
        codes, indices, commitment, codebook = self.quantizer(self.encode_codes(video))
        recon = self.decode_codes(codes)
        out = self.objective(video, recon, step)
        latent_ce, accuracy = self.prior_loss(codes, indices, step)
        loss = (out["loss"] + self.vq_weights[0] * commitment + self.vq_weights[1] * codebook
                + self.latent_ce_weight * latent_ce)
        out.update(commitment=commitment.detach(), codebook=codebook.detach(), latent_ce=latent_ce.detach(),
                   prior_top1=accuracy, batch_perplexity=_perplexity(indices, self.codebook_size()))
        if self.discriminator is not None and step >= self.disc_start:
            g_adv = non_saturating_g_loss(self._logits_with_detached_discriminator(recon))
            loss = loss + self.disc_weight * g_adv
            out["g_adv"] = g_adv.detach()
            if (step - self.disc_start) % self.d_update_every == 0:
                out.update(self.discriminator_loss(video, recon.detach()))
        out["loss"] = loss
        return out

    def scheduled_sampling_ratio(self, step: int) -> float:
        """Fraction of prior inputs replaced by sampled codes in rounds after the first (official ``use_mix_ss``)."""
        if self.prior_rounds == 1 or self.ss_max_ratio == 0:
            return 0.0
        if self.max_steps is None:
            raise ValueError("max_steps: LARP's scheduled sampling needs the run's total steps; set the tokenizer "
                             "kwarg max_steps to train.steps")
        return min(step / (self.max_steps * self.ss_peak_fraction) * self.ss_max_ratio, self.ss_max_ratio)

    def prior_loss(self, codes: Tensor, indices: Tensor, step: int) -> tuple[Tensor, Tensor]:
        """The prior's latent cross-entropy (official ``calculate_prior_loss_with_pred``) and its round-0 top-1 accuracy.

        ``codes`` ``float32 [B, N, d]`` are the straight-through codes (gradients reach the encoder), ``indices``
        ``int64 [B, N]`` the targets. Logits are cosine similarities of the prior's output with the *detached*
        codebook over ``latent_ce_temperature``; the cross-entropy of code ``i`` from codes ``< i`` is averaged over
        positions ``1..N-1`` and over ``prior_rounds`` rounds.
        """
        codebook = self.quantizer.codes().detach()
        batch, count, _ = codes.shape
        replace = (torch.rand(batch, count - 1, 1, device=codes.device) < self.scheduled_sampling_ratio(step))
        inputs, rounds = codes, []
        for r in range(self.prior_rounds):
            logits = F.linear(self.prior(inputs[:, :-1]), codebook) / self.latent_ce_temperature
            rounds.append(logits)
            if r < self.prior_rounds - 1:
                sampled = torch.multinomial(F.softmax(logits.detach().float(), dim=-1).flatten(0, 1), 1)
                mixed = torch.where(replace, F.embedding(sampled.view(batch, count - 1), codebook), codes[:, 1:])
                inputs = torch.cat([codes[:, :1], mixed], dim=1)
        logits = torch.stack(rounds)
        targets = indices[:, 1:].expand(len(rounds), -1, -1)
        latent_ce = F.cross_entropy(logits.flatten(0, 2).float(), targets.flatten())
        accuracy = (rounds[0].detach().argmax(-1) == indices[:, 1:]).float().mean()
        return latent_ce, accuracy

    def _logits_with_detached_discriminator(self, recon: Tensor) -> Tensor:
        params = {name: p.detach() for name, p in self.discriminator.named_parameters()}
        return functional_call(self.discriminator, params, ((recon + 1) / 2,), strict=False)

    def discriminator_loss(self, video: Tensor, recon: Tensor) -> dict[str, Tensor]:
        """Official discriminator objective on ``[0, 1]`` pixels: ``ns_smooth`` + LeCAM (its weight applied twice,
        as ``models/loss.py`` does: ``lecam_loss = w * reg`` then ``total = d + w * lecam_loss``); the LeCAM EMAs
        are updated after use, in training mode with gradients enabled. Returns ``"disc_loss"`` and logs."""
        real = self.discriminator((video.detach() + 1) / 2)
        fake = self.discriminator((recon.detach() + 1) / 2)
        d_loss = ns_smooth_d_loss(real, fake)
        disc = self.discriminator
        lecam = lecam_regularizer(real.mean(), fake.mean(), disc.lecam_ema_real, disc.lecam_ema_fake)
        if self.training and torch.is_grad_enabled():
            with torch.no_grad():
                disc.lecam_ema_real.lerp_(real.detach().float().mean(), 1 - self.lecam_decay)
                disc.lecam_ema_fake.lerp_(fake.detach().float().mean(), 1 - self.lecam_decay)
        return {"disc_loss": d_loss + self.lecam_weight * self.lecam_weight * lecam, "d_loss": d_loss.detach(),
                "lecam": lecam.detach(), "logits_real": real.detach().mean(), "logits_fake": fake.detach().mean()}

    # --- checks

    def _check_frame_size(self, height: int, width: int) -> None:
        if (height, width) != (self.resolution, self.resolution):
            raise ValueError(f"video: LARP was built for {self.resolution}x{self.resolution} frames (resolution), "
                             f"got {height}x{width}")

    def _check_chunk(self, video: Tensor) -> None:
        check_video(video)
        if video.shape[2] != self.chunk_frames:
            raise ValueError(f"video: LARP encodes chunks of {self.chunk_frames} frames (chunk_frames), got "
                             f"{video.shape[2]}; the engine splits longer videos")
        self._check_frame_size(*video.shape[3:])


def _check_geometry(resolution: int, chunk_frames: int, patch_size: int, temporal_patch_size: int, tokens: int) -> None:
    if resolution < patch_size or resolution % patch_size:
        raise ValueError(f"resolution must be a positive multiple of patch_size={patch_size}, got {resolution}")
    if chunk_frames < temporal_patch_size or chunk_frames % temporal_patch_size:
        raise ValueError(f"chunk_frames must be a positive multiple of temporal_patch_size={temporal_patch_size}, "
                         f"got {chunk_frames}")
    if tokens < 2:
        raise ValueError(f"tokens must be >= 2 (the prior predicts codes 1..N-1), got {tokens}")


def _perplexity(indices: Tensor, codebook_size: int) -> Tensor:
    """Perplexity of the code histogram of a batch (a log entry)."""
    counts = torch.bincount(indices.detach().flatten(), minlength=codebook_size).float()
    probs = counts[counts > 0] / counts.sum()
    return torch.exp(-(probs * probs.log()).sum())


# --------------------------------------------------------------------------------------------------
# Sizes and presets
# --------------------------------------------------------------------------------------------------

#: the prior sizes of ``models/gptc.py`` (``gptc-S`` is the one cfgs/larp_tokenizer.yaml uses) plus ``tiny`` for CPU
PRIOR_SIZES: dict[str, SizeConfig] = {
    "L": SizeConfig(depth=24, heads=16, width=1024),
    "B": SizeConfig(depth=12, heads=12, width=768),
    "M": SizeConfig(depth=12, heads=8, width=512),
    "S": SizeConfig(depth=12, heads=6, width=384),
    "XS": SizeConfig(depth=6, heads=6, width=384),
    "XXS": SizeConfig(depth=6, heads=4, width=256),
    "tiny": SizeConfig(depth=2, heads=2, width=32),
}

#: encoder/decoder width, depth and heads, query tokens, prior size and discriminator width/depth/heads
LARP_SIZES: dict[str, SizeConfig] = {
    # LARP-L-Long: scripts/train_larp_tokenizer_reproduce.sh (reproduces hywang66/LARP-L-long-tokenizer): encoder and
    # decoder 768 wide, 12 deep, 12 heads, 1024 tokens, gptc-S prior, discriminator 512 wide, 12 deep, 8 heads
    "L_long": SizeConfig(width=768, depth=12, heads=12, tokens=1024, prior="S", disc_width=512, disc_depth=12,
                         disc_heads=8),
    # CPU tests and the demo suite
    "tiny": SizeConfig(width=64, depth=2, heads=4, tokens=64, prior="tiny", disc_width=32, disc_depth=1,
                       disc_heads=2),
}

#: the named configurations: the paper's LARP-L-Long (1024 tokens, 8192 codes) and a CPU one
LARP_PRESETS: dict[str, SizeConfig] = {
    "L_long": SizeConfig(size="L_long"),
    "tiny": SizeConfig(size="tiny", codebook_size=512),
}


def larp_param_counts(include_prior: bool = False, resolution: int = 128) -> dict[str, int]:
    """Parameters of each preset of :data:`LARP_PRESETS`, built on the meta device (no memory), at ``resolution``.

    Without the discriminator, which only training uses. ``include_prior=False`` (default) also leaves out the
    training-only AR prior, so the count is the tokenizer that encodes and decodes (what the README's 173M
    for LARP-L-Long describes, to the rounding: see docs/larp.md).
    """
    counts = {}
    for name, kwargs in LARP_PRESETS.items():
        with torch.device("meta"):
            model = LARP(**kwargs, resolution=resolution)
        skip = {id(p) for module in (model.discriminator, None if include_prior else model.prior) if module is not None
                for p in module.parameters()}
        counts[name] = sum(p.numel() for p in model.parameters() if id(p) not in skip)
    return counts


def _register_presets() -> None:
    """``larp_<name>`` for every configuration of :data:`LARP_PRESETS`."""
    for name, kwargs in LARP_PRESETS.items():
        register_preset(f"larp_{name}", "larp", kwargs, summary=", ".join(
            [f"{k}={v}" for k, v in LARP_SIZES[kwargs["size"]].items()] + [f"{k}={v}" for k, v in kwargs.items()
                                                                           if k != "size"]),
            source=f"{LARP_REPO}@{LARP_COMMIT[:7]} scripts/train_larp_tokenizer_reproduce.sh")


_register_presets()
