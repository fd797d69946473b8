"""``videoflextok``: coarse-to-fine, variable-length video tokens with a rectified-flow decoder.

VideoFlexTok (Atanov, Allardice, Bachmann et al., arXiv 2604.12887; research
notes ``docs/research/tokenizers.md`` sections 2 and 3) tokenizes a video
in three stages:

* **stage 0**, a frozen continuous causal VAE (VidTok KL 4x8x8, 16 channels in
  the paper; here any registered continuous tokenizer, by default the project's
  ``grid3d`` with ``causal=True, latent_channels=16``) maps a 17-frame chunk to
  ``1 + 4 = 5`` latent timesteps;
* an **encoder**: a transformer over the 2x2 patches of every latent timestep
  plus ``n_max`` learnable register tokens per latent timestep
  (``RegistersTemporal2D``: a ``(t_max, n_max, dim)`` table), with a
  time-block-causal attention mask (:func:`encoder_attention_mask`), whose
  register outputs are quantized by **FSQ** (levels ``[8, 8, 8, 5, 5, 5]``,
  64,000 codes, 2 bytes per token; notes 2.4, 3) in float32;
* a **decoder**: a rectified-flow transformer with adaLN-zero timestep
  conditioning (separate modulations for patches and registers, FlexTok) over
  the noised latent patches plus the kept registers, predicting the velocity
  ``noise - clean`` (notes 2.5), followed by the frozen VAE decoder.

Training uses **nested dropout** per latent timestep (``TemporalMaskedNestedDropout``,
notes 2.4): for every timestep independently ``k`` is drawn uniformly from the
powers of two ``1 .. n_max`` and the registers ``>= k`` are replaced by a
learned mask token, so that every prefix of the register sequence is a valid
code; **null-condition dropout** of all registers (a learned null token) for
classifier-free guidance; **logit-normal** timestep sampling ``sigma =
sigmoid(N(0, 1))`` (``MinRFNoiseModule``), optionally SD3-shifted
(``noise_shift``); and, with probability
``prefix_prob``, a clean first latent timestep whose registers are masked
(``PrefixMinRFNoiseModule`` + ``MaskedPrefixDropout``), which is what lets a
chunk be decoded conditioned on the previous chunk's last frame.

Long videos (notes 2.2, ``VideoChunkTokenizerWrapper``): 17-frame chunks that
overlap by one frame (stride 16); a video of ``T = 1 + 16K`` frames gives
``1 + 4K`` token timesteps (the first token timestep of every chunk after the
first is dropped). Decoding is sequential: chunk ``i > 0`` is generated with the
VAE latent of the last decoded frame of chunk ``i - 1`` as a clean prefix and
the duplicate frame is dropped. Other lengths are padded by repeating the last
frame and cropped back; ``Tokens.info["padded_frames"]`` says how many frames
were added.

Token budgets: ``encode(video, budget=k)`` keeps the first ``k`` registers
of every latent timestep; ``Tokens.tokens_per_video = timesteps x k``. The paper's
81-frame, 672-token setting is ``k = 32`` on ``21`` timesteps
(:data:`PAPER_81F_672`).
"""
from __future__ import annotations

import math
import operator
from typing import Any, Mapping

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn
from vector_quantize_pytorch import FSQ

from harness_core.api import Tokens, VideoTokenizer, check_video
from harness_core.registry import SizeConfig, create_tokenizer, register_size_presets, register_tokenizer
from harness_core.layers import AdaLNFinalLayer, AdaLNZeroBlock, TimestepEmbedder, TransformerBlock, sincos_pos_embed

#: FSQ levels of FlexTok / VideoFlexTok: 8*8*8*5*5*5 = 64,000 codes, 16 bits per token (notes 2.1, 3).
FSQ_LEVELS = (8, 8, 8, 5, 5, 5)

#: the stage-0 VAE built when none is given: the project's causal 4x8x8, 16-channel grid VAE (untrained).
DEFAULT_VAE = {"name": "grid3d", "kwargs": {"size": "tiny", "causal": True, "latent_channels": 16, "chunk_frames": 17}}


# --------------------------------------------------------------------------------------------------
# Attention masks (True = the query may attend to the key)
# --------------------------------------------------------------------------------------------------

def encoder_attention_mask(timesteps: int, patches: int, registers: int, device: torch.device | str | None = None) -> Tensor:
    """Time-block-causal mask of the encoder, ``bool [N, N]`` with ``N = timesteps * (patches + registers)``.

    Token order: all patches (timestep-major, ``patches`` per timestep), then
    all registers (timestep-major, ``registers`` per timestep). Rules
    (a reading of ``time_block_causal`` in VideoFlexTok's ``flex_seq_packing.py``,
    notes 2.3; the released mode is unknown):

    * a patch of timestep ``j`` sees the patches of timesteps ``<= j`` (the patch
      stream is a causal-in-time ViT of the latent; it never reads registers);
    * register ``r`` of timestep ``j`` sees the patches of timesteps ``<= j`` and
      the registers ``0 .. r`` of its own timestep (causal among registers, so
      that a prefix is meaningful on its own). It does not read registers of
      earlier timesteps: they carry nothing beyond those timesteps' patches,
      which it already sees, and they may be dropped at a small budget.

    So no token ever attends to a later timestep.
    """
    tp = torch.arange(timesteps, device=device).repeat_interleave(patches)
    tr = torch.arange(timesteps, device=device).repeat_interleave(registers)
    ir = torch.arange(registers, device=device).repeat(timesteps)
    pp = tp[None, :] <= tp[:, None]
    pr = torch.zeros(len(tp), len(tr), dtype=torch.bool, device=device)
    rp = tp[None, :] <= tr[:, None]
    rr = (tr[None, :] == tr[:, None]) & (ir[None, :] <= ir[:, None])
    return torch.cat([torch.cat([pp, pr], 1), torch.cat([rp, rr], 1)], 0)


def decoder_attention_mask(timesteps: int, patches: int, registers: int, device: torch.device | str | None = None) -> Tensor:
    """Block-causal mask of the flow decoder, ``bool [N, N]``, same token order as the encoder.

    Every token (noised patch or register) of timestep ``j`` sees every token of
    timesteps ``<= j``, so a chunk's first latent timestep can serve as a clean
    prefix for the next chunk (notes 2.2, 2.5).
    """
    time = torch.cat([torch.arange(timesteps, device=device).repeat_interleave(patches),
                      torch.arange(timesteps, device=device).repeat_interleave(registers)])
    return time[None, :] <= time[:, None]


# --------------------------------------------------------------------------------------------------
# Guidance, noise levels and training helpers
# --------------------------------------------------------------------------------------------------

def apg_guidance(cond: Tensor, uncond: Tensor, scale: float, norm_threshold: float = 0.0, eta: float = 0.0) -> Tensor:
    """Adaptive projected guidance (APG, arXiv 2410.02416, Alg. 1 without momentum), per sample.

    ``cond + (scale - 1) * (d_orth + eta * d_par)`` where ``d = cond - uncond``
    (its norm clipped to ``norm_threshold`` when positive) is split into the
    components orthogonal and parallel to ``cond``. FlexTok/VideoFlexTok decode
    with it (``perform_norm_guidance=True``, notes 2.5); here it is applied to
    the velocity prediction.
    """
    diff = cond - uncond
    flat = diff.flatten(1)
    if norm_threshold > 0:
        norm = flat.norm(dim=1, keepdim=True).clamp_min(1e-12)
        flat = flat * (norm_threshold / norm).clamp(max=1.0)
    unit = F.normalize(cond.flatten(1), dim=1)
    parallel = (flat * unit).sum(dim=1, keepdim=True) * unit
    update = (flat - parallel) + eta * parallel
    return cond + (scale - 1.0) * update.view_as(cond)


def shift_sigma(sigma: Tensor, shift: float) -> Tensor:
    """SD3 noise shift ``shift * sigma / (1 + (shift - 1) * sigma)`` of noise levels in ``[0, 1]`` (identity at ``shift = 1``).

    A shift above 1 moves training and sampling toward high noise, where the
    decoder must take the content from the registers rather than from the noised
    input (SD3, arXiv 2403.03206 section 5.3.2; VideoFlexTok's released
    ``MultiResFlowMatchingNoiseModule`` has the same option, notes 2.5).
    """
    return shift * sigma / (1 + (shift - 1) * sigma)


def latent_mosaic(clean: Tensor, prob: float) -> Tensor:
    """Spatial mosaics of a batch of latents, a CutMix-style augmentation (Yun et al., arXiv 1905.04899).

    With probability ``prob`` per chunk, the chunk keeps its own top-left
    rectangle and takes the other three rectangles, cut at one random row and
    column in ``[2, h - 2] x [2, w - 2]``, from three random chunks of the batch
    at the same positions, for every channel and latent timestep (so every
    region stays a coherent video). Not in VideoFlexTok: it stands in for data
    variety when a suite trains on a few videos, where one register per
    timestep can otherwise index the whole training pool and later registers
    get no gradient signal (docs/videoflextok.md).

    Args:
        clean: latents ``float [N, C, t, h, w]`` with ``h, w >= 4``.
        prob: probability in ``[0, 1]`` that a chunk becomes a mosaic.

    Returns:
        ``float [N, C, t, h, w]``; chunks not drawn are unchanged. Draws from
        torch's global generator on ``clean``'s device.

    Raises:
        ValueError: if the latent grid is smaller than 4 x 4.
    """
    n, _, _, h, w = clean.shape
    if h < 4 or w < 4:
        raise ValueError(f"latent_mosaic needs latent grids of at least 4 x 4, got {h} x {w}")
    device = clean.device
    sources = torch.randint(n, (n, 4), device=device)
    sources[:, 0] = torch.arange(n, device=device)
    mixed = torch.rand(n, device=device) < prob
    sources = torch.where(mixed[:, None], sources, sources[:, :1])
    cut_y = torch.randint(2, h - 1, (n, 1, 1), device=device)
    cut_x = torch.randint(2, w - 1, (n, 1, 1), device=device)
    rows = torch.arange(h, device=device)[None, :, None] >= cut_y
    cols = torch.arange(w, device=device)[None, None, :] >= cut_x
    region = rows.long() * 2 + cols.long()  # [n, h, w]: 0 top-left (own), 1 top-right, 2 bottom-left, 3 bottom-right
    source = sources.gather(1, region.flatten(1)).view(n, 1, 1, h, w).expand_as(clean)
    return clean.gather(0, source)


def powers_of_two(n_max: int) -> list[int]:
    """``[1, 2, 4, ..., n_max]``; raises ``ValueError`` unless ``n_max`` is a power of two."""
    if n_max < 1 or n_max & (n_max - 1):
        raise ValueError(f"n_max must be a power of two, got {n_max}")
    return [2 ** i for i in range(int(math.log2(n_max)) + 1)]


# --------------------------------------------------------------------------------------------------
# Encoder and flow decoder
# --------------------------------------------------------------------------------------------------

class LatentPatchSequence(nn.Module):
    """What the encoder and the decoder share: 2x2 patches of the VAE latent and their positions.

    Token order of both transformers: all patches (timestep-major), then all
    registers (timestep-major). Needs ``patch_size``, ``n_max``, ``t_max`` and
    a ``_masks`` cache dict (set by :class:`VideoFlexTok`).
    """

    patch_size: int
    n_max: int
    t_max: int
    _masks: dict[tuple, Tensor]

    def _mask(self, kind: str, t: int, patches: int, registers: int, device: torch.device) -> Tensor:
        """The cached ``bool [N, N]`` mask of :func:`encoder_attention_mask` (``"enc"``) or :func:`decoder_attention_mask`."""
        key = (kind, t, patches, registers, str(device))
        if key not in self._masks:
            build = encoder_attention_mask if kind == "enc" else decoder_attention_mask
            self._masks[key] = build(t, patches, registers, device)
        return self._masks[key]

    def _patchify(self, latents: Tensor) -> Tensor:
        """``[B, C, t, h, w] -> [B, t * (h/p) * (w/p), C * p * p]``."""
        p = self.patch_size
        return rearrange(latents, "b c t (h p) (w q) -> b (t h w) (c p q)", p=p, q=p)

    def _patch_pos(self, time_pos: Tensor, t: int, hp: int, wp: int) -> Tensor:
        """Learned time position plus the fixed 2D sin-cos position (timm convention) of every patch, ``[t * hp * wp, D]``."""
        space = sincos_pos_embed((hp, wp), time_pos.shape[-1], convention="timm", device=time_pos.device)
        return (time_pos[:t, None, :] + space[None].to(time_pos.dtype)).flatten(0, 1)


class RegisterEncoder(LatentPatchSequence):
    """VideoFlexTok's encoder (notes 2.3, 2.4): latent patches and ``n_max`` registers per
    timestep -> time-block-causal transformer -> FSQ codes of the registers.

    A part of :class:`VideoFlexTok`, which inherits it (with :class:`FlowDecoder`)
    instead of holding it as a child module: its layers (``enc_*``, ``registers``,
    ``fsq``) stay attributes of the tokenizer, so the state_dict keys and the
    parameter order of saved optimizer states are those of existing checkpoints.
    """

    def _build_encoder(self, patch_dim: int, fsq_levels: tuple[int, ...] | list[int], dim: int, depth: int, heads: int,
                       mlp_ratio: float) -> None:
        with torch.device("cpu"):  # FSQ reads its level buffer with .item(): it cannot be built on the meta device
            self.fsq = FSQ(list(fsq_levels))
        self.enc_patch_in = nn.Linear(patch_dim, dim)
        self.enc_time_pos = nn.Parameter(torch.zeros(self.t_max, dim))
        self.registers = nn.Parameter(torch.zeros(self.t_max, self.n_max, dim))  # RegistersTemporal2D
        self.enc_blocks = nn.ModuleList(TransformerBlock(dim, heads, mlp_ratio) for _ in range(depth))
        self.enc_norm = nn.LayerNorm(dim, eps=1e-6)
        self.enc_to_code = nn.Linear(dim, len(fsq_levels))

    def encode_latents(self, latents: Tensor) -> tuple[Tensor, Tensor]:
        """Registers of normalized latents ``[B, C, t, h, w]`` (``t <= t_max``), quantized.

        Returns:
            FSQ codes ``float32 [B, t, n_max, 6]`` in ``[-1, 1]`` (straight-through
            gradients) and indices ``int64 [B, t, n_max]`` in ``[0, 64000)``.
        """
        b, _, t, h, w = latents.shape
        hp, wp = h // self.patch_size, w // self.patch_size
        x = self.enc_patch_in(self._patchify(latents)) + self._patch_pos(self.enc_time_pos, t, hp, wp)
        regs = self.registers[:t].flatten(0, 1).expand(b, -1, -1)
        seq = torch.cat([x, regs], dim=1)
        mask = self._mask("enc", t, hp * wp, self.n_max, seq.device)
        for block in self.enc_blocks:
            seq = block(seq, mask)
        z = self.enc_to_code(self.enc_norm(seq[:, t * hp * wp:]))
        with torch.autocast(device_type=z.device.type, enabled=False):
            codes, indices = self.fsq(z.float())  # FSQ in float32 (notes 2.4)
        return codes.view(b, t, self.n_max, -1), indices.long().view(b, t, self.n_max)


class FlowDecoder(LatentPatchSequence):
    """VideoFlexTok's rectified-flow decoder (notes 2.5): noised latent patches plus the kept
    registers -> block-causal adaLN-zero transformer (FlexTok layout) -> velocity, and its Euler sampler.

    A part of :class:`VideoFlexTok` for the same reason as :class:`RegisterEncoder`
    (layers ``dec_*``, ``mask_token``, ``null_token``, ``t_embed``, ``final``).
    Needs the tokenizer's ``latent_channels`` and sampler settings.
    """

    def _build_decoder(self, patch_dim: int, code_dim: int, dim: int, depth: int, heads: int, mlp_ratio: float) -> None:
        self.dec_patch_in = nn.Linear(patch_dim, dim)
        self.dec_time_pos = nn.Parameter(torch.zeros(self.t_max, dim))
        self.dec_code_in = nn.Linear(code_dim, dim)
        self.dec_register_pos = nn.Parameter(torch.zeros(self.t_max, self.n_max, dim))
        self.mask_token = nn.Parameter(torch.zeros(dim))  # nested-dropout mask token
        self.null_token = nn.Parameter(torch.zeros(dim))  # CFG null condition
        self.t_embed = TimestepEmbedder(dim, scale=1000.0)
        self.dec_blocks = nn.ModuleList(AdaLNZeroBlock(dim, heads, mlp_ratio, layout="flextok") for _ in range(depth))
        self.final = AdaLNFinalLayer(dim, patch_dim, layout="flextok")

    def velocity(self, noised: Tensor, sigma: Tensor, codes: Tensor, keep: Tensor, null: Tensor) -> Tensor:
        """Predicted velocity ``noise - clean`` ``[B, C, t, h, w]``.

        Args:
            noised: ``x_sigma = sigma * noise + (1 - sigma) * clean``, ``[B, C, t, h, w]``.
            sigma: noise level per latent timestep ``[B, t]`` in ``[0, 1]`` (0 on a clean prefix).
            codes: register codes ``[B, t, n_max, 6]``.
            keep: ``bool [B, t, n_max]``; registers where ``False`` become the mask token.
            null: ``bool [B]``; rows where ``True`` have every register replaced by the null token.
        """
        b, c, t, h, w = noised.shape
        hp, wp = h // self.patch_size, w // self.patch_size
        x = self.dec_patch_in(self._patchify(noised)) + self._patch_pos(self.dec_time_pos, t, hp, wp)
        r = self.dec_code_in(codes.to(x.dtype))
        r = torch.where(keep[..., None], r, self.mask_token.to(r.dtype))
        r = torch.where(null[:, None, None, None], self.null_token.to(r.dtype), r)
        r = (r + self.dec_register_pos[:t]).flatten(1, 2)
        cond = self.t_embed(sigma.flatten()).view(b, t, -1)
        seq = torch.cat([x, r], dim=1)
        mask = self._mask("dec", t, hp * wp, self.n_max, seq.device)
        for block in self.dec_blocks:
            seq = block(seq, cond, (hp * wp, self.n_max), mask)
        out = self.final(seq[:, : t * hp * wp], cond, (hp * wp,))
        p = self.patch_size
        return rearrange(out, "b (t h w) (c p q) -> b c t (h p) (w q)", t=t, h=hp, w=wp, p=p, q=p).float()

    def _guided_velocity(self, x: Tensor, sigma: Tensor, codes: Tensor, keep: Tensor) -> Tensor:
        b = x.shape[0]
        if self.guidance_scale == 1.0:
            return self.velocity(x, sigma, codes, keep, torch.zeros(b, dtype=torch.bool, device=x.device))
        null = torch.cat([torch.zeros(b, dtype=torch.bool), torch.ones(b, dtype=torch.bool)]).to(x.device)
        both = self.velocity(torch.cat([x, x]), torch.cat([sigma, sigma]), torch.cat([codes, codes]), torch.cat([keep, keep]), null)
        cond, uncond = both.chunk(2)
        if self.guidance == "cfg":
            return uncond + self.guidance_scale * (cond - uncond)
        return apg_guidance(cond, uncond, self.guidance_scale, self.apg_norm_threshold)

    @torch.no_grad()
    def sample_latents(self, codes: Tensor, keep: Tensor, latent_hw: tuple[int, int], prefix: Tensor | None = None,
                       generator: torch.Generator | None = None) -> Tensor:
        """Euler sampler of the rectified flow from ``sigma = 1`` (noise) to ``0`` (notes 2.5).

        Args:
            codes: ``[B, t, n_max, 6]``; keep: ``bool [B, t, n_max]``.
            latent_hw: latent ``(h, w)``.
            prefix: clean normalized latents ``[B, C, p, h, w]`` held fixed for the first ``p`` timesteps.
            generator: CPU generator of the initial noise (reproducible decoding).

        Returns:
            normalized latents ``float32 [B, C, t, h, w]``.
        """
        b, t = codes.shape[:2]
        device = codes.device
        x = torch.randn((b, self.latent_channels, t, *latent_hw), generator=generator).to(device)
        p = 0 if prefix is None else prefix.shape[2]
        sigma_mask = torch.ones(b, t, device=device)
        if p:
            x[:, :, :p] = prefix
            sigma_mask[:, :p] = 0
        levels = shift_sigma(torch.linspace(1.0, 0.0, self.sample_steps + 1, device=device), self.noise_shift)
        for s, s_next in zip(levels[:-1], levels[1:]):
            v = self._guided_velocity(x, sigma_mask * s, codes, keep)
            x = x + (s_next - s) * v
            if p:
                x[:, :, :p] = prefix
        return x


# --------------------------------------------------------------------------------------------------
# The model
# --------------------------------------------------------------------------------------------------

@register_tokenizer("videoflextok")
class VideoFlexTok(RegisterEncoder, FlowDecoder, VideoTokenizer):
    """VideoFlexTok: register tokens with nested dropout, FSQ, and a rectified-flow decoder.

    Composed of the frozen stage-0 ``vae``, a :class:`RegisterEncoder` and a
    :class:`FlowDecoder` (mixed in, see :class:`RegisterEncoder`); this class
    adds chunking, the training objective and the token contract.

    Args:
        size: a key of :data:`VIDEOFLEXTOK_SIZES`; explicit arguments override it.
        vae: the frozen stage-0 compressor: a built continuous :class:`VideoTokenizer`
            (the suite's trained causal ``grid3d``, resolved by the runner from
            ``"run:<id>"``), a dict ``{"name": ..., "kwargs": {...}}`` to build an
            untrained one, or ``None`` for :data:`DEFAULT_VAE`. It must be causal
            in time (``1 + 4k`` frames -> ``1 + k`` latents) and expose
            ``encode(video).latents`` ``[B, C, t, h, w]`` and ``decode(Tokens)``.
        n_max: registers per latent timestep (256 in the paper).
        enc_depth, enc_dim, enc_heads, dec_depth, dec_dim, dec_heads: the two transformers.
        patch_size: spatial patch of the VAE latent (2, as FlexTok; notes 2.3).
        fsq_levels: FSQ levels (default :data:`FSQ_LEVELS`, 64,000 codes).
        chunk_size: frames per chunk (17; chunks overlap by one frame), the name of
            ``VideoChunkTokenizerWrapper.__init__(chunk_size, overlap_size_frames)`` (stipefrkovic/ml-videoflextok
            4fd72ec ``videoflextok/wrappers.py``). The tokenizer chunks whole videos itself, so the engine's
            ``chunk_frames`` is ``None`` (``chunk_frames`` was this kwarg's name before issue 25).
        cfg_dropout: probability of replacing all registers by the null token in training.
        prefix_prob: probability of a clean first latent timestep in training
            (conditioning on the previous chunk; the released value is unknown).
        noise_shift: SD3 shift of the logit-normal training noise levels and of the
            sampler's schedule (:func:`shift_sigma`); ``1`` is plain MinRF.
        latent_mosaic: probability that a training chunk becomes a spatial mosaic of
            four chunks of the batch (:func:`latent_mosaic`; not in the paper, for
            suites with few training videos); ``0`` is the paper's training.
        sample_steps: Euler steps of the sampler (FlexTok README: 20-25; VideoFlexTok: 30).
        guidance_scale: guidance scale (FlexTok README: 7.5); ``1`` disables guidance.
        guidance: ``"apg"`` (normalized guidance, as released) or ``"cfg"``.
        apg_norm_threshold: APG norm clipping (``0`` = off).
        sample_seed: seed of the initial noise, so that decoding is reproducible.
        t_max: latent timesteps per chunk; derived from ``chunk_size`` by default.

    Tokens: ``latents`` ``float32 [B, t, k, 6]`` (FSQ codes in ``[-1, 1]``),
    ``indices`` ``int64 [B, t, k]`` in ``[0, 64000)``, ``tokens_per_video = t * k``
    with ``t = 1 + 4K`` for a (padded) video of ``1 + 16K`` frames.
    """

    #: where the recipe comes from (``python -m harness protocol`` shows it; conformance in docs/fidelity.md)
    recipe_source = "VideoFlexTok (arXiv 2604.12887); apple/ml-videoflextok 4fd72ec, inference code only (docs/fidelity.md section 12)"
    published_parameters = {
        "k600": (570e6, "VideoFlexTok project page: 570M excluding adaLN (the measured count includes it)"),
        "d18_d28": (1.3e9, "VideoFlexTok project page (Panda model): 1.3B excluding adaLN"),
    }

    chunk_frames = None
    continuous = False
    flexible = True
    frozen_stage0 = True
    unused_parameters = False  # mask and null tokens enter through torch.where at every step

    def __init__(self, size: str | None = "tiny", vae: VideoTokenizer | Mapping[str, Any] | None = None,
                 n_max: int | None = None, enc_depth: int | None = None, enc_dim: int | None = None,
                 enc_heads: int | None = None, dec_depth: int | None = None, dec_dim: int | None = None,
                 dec_heads: int | None = None, patch_size: int = 2, fsq_levels: tuple[int, ...] | list[int] = FSQ_LEVELS,
                 chunk_size: int = 17, cfg_dropout: float = 0.1, prefix_prob: float = 0.25, noise_shift: float = 1.0,
                 latent_mosaic: float = 0.0,
                 sample_steps: int = 25, guidance_scale: float = 7.5, guidance: str = "apg",
                 apg_norm_threshold: float = 0.0, sample_seed: int = 0, mlp_ratio: float = 4.0) -> None:
        super().__init__()
        if size is not None and size not in VIDEOFLEXTOK_SIZES:
            raise ValueError(f"unknown videoflextok size {size!r}; known: {', '.join(VIDEOFLEXTOK_SIZES)}")
        preset = dict(VIDEOFLEXTOK_SIZES[size or "tiny"])
        given = dict(n_max=n_max, enc_depth=enc_depth, enc_dim=enc_dim, enc_heads=enc_heads,
                     dec_depth=dec_depth, dec_dim=dec_dim, dec_heads=dec_heads)
        preset.update({k: v for k, v in given.items() if v is not None})
        if guidance not in ("apg", "cfg"):
            raise ValueError(f"guidance must be 'apg' or 'cfg', got {guidance!r}")
        self.n_max = preset["n_max"]
        self.budgets = powers_of_two(self.n_max)
        self.patch_size = patch_size
        self.chunk_size = chunk_size
        if noise_shift <= 0:
            raise ValueError(f"noise_shift must be positive, got {noise_shift}")
        if not 0.0 <= latent_mosaic <= 1.0:
            raise ValueError(f"latent_mosaic is a probability in [0, 1], got {latent_mosaic}")
        self.cfg_dropout, self.prefix_prob, self.noise_shift = cfg_dropout, prefix_prob, noise_shift
        self.latent_mosaic = latent_mosaic
        self.sample_steps, self.guidance_scale, self.guidance = sample_steps, guidance_scale, guidance
        self.apg_norm_threshold, self.sample_seed = apg_norm_threshold, sample_seed

        self.vae = self._build_vae(vae)
        self.latent_channels, self.time_factor, self.space_factor = self._vae_geometry()
        if (chunk_size - 1) % self.time_factor:
            raise ValueError(f"chunk_size must be 1 + {self.time_factor}k for the VAE, got {chunk_size}")
        self.t_max = 1 + (chunk_size - 1) // self.time_factor
        self.chunk_stride = chunk_size - 1
        patch_dim = self.latent_channels * patch_size * patch_size
        self._build_encoder(patch_dim, fsq_levels, preset["enc_dim"], preset["enc_depth"], preset["enc_heads"], mlp_ratio)
        self._build_decoder(patch_dim, len(fsq_levels), preset["dec_dim"], preset["dec_depth"], preset["dec_heads"], mlp_ratio)
        # the learned tokens are drawn once both halves exist (the RNG order of existing seeds and checkpoints)
        for p in (self.enc_time_pos, self.registers, self.dec_time_pos, self.dec_register_pos, self.mask_token, self.null_token):
            nn.init.trunc_normal_(p, std=0.02)
        # latent normalisation (per channel), set from the first training batch and saved in checkpoints
        self.register_buffer("latent_mean", torch.zeros(self.latent_channels))
        self.register_buffer("latent_std", torch.ones(self.latent_channels))
        self.register_buffer("latent_stats_ready", torch.tensor(False))
        self._masks: dict[tuple, Tensor] = {}

    # ---------------------------------------------------------------- stage 0
    @staticmethod
    def _build_vae(vae: VideoTokenizer | Mapping[str, Any] | None) -> VideoTokenizer:
        if vae is None:
            vae = DEFAULT_VAE
        if isinstance(vae, str):
            raise ValueError(f"vae={vae!r}: the runner must resolve 'run:<id>' to a built tokenizer; "
                             "pass a VideoTokenizer instance or a dict {'name': ..., 'kwargs': {...}}")
        if isinstance(vae, Mapping):
            if "name" not in vae:
                raise ValueError(f"vae dict needs a 'name' (and optional 'kwargs'), got keys {sorted(vae)}")
            vae = create_tokenizer(vae["name"], **dict(vae.get("kwargs") or {}))
        if not isinstance(vae, VideoTokenizer):
            raise ValueError(f"vae must be a VideoTokenizer, a dict or None, got {type(vae).__name__}")
        if not vae.continuous:
            raise ValueError(f"the stage-0 VAE must be continuous, got {type(vae).__name__} with continuous=False")
        if getattr(vae, "causal", True) is False:
            raise ValueError("VideoFlexTok needs a causal VAE (first frame on its own, 1 + 4k frames -> 1 + k latents); "
                             "build grid3d with causal=True")
        vae.requires_grad_(False)
        return vae.eval()

    def _vae_geometry(self) -> tuple[int, int, int]:
        """``(latent_channels, time_factor, space_factor)`` from the VAE's attributes, else by probing it."""
        names = ("latent_channels", "time_factor", "space_factor")
        if all(hasattr(self.vae, n) for n in names):
            return tuple(int(getattr(self.vae, n)) for n in names)  # type: ignore[return-value]
        with torch.no_grad():
            lat = self.vae.encode(torch.zeros(1, 3, 17, 64, 64)).latents
        return int(lat.shape[1]), 16 // (lat.shape[2] - 1), 64 // lat.shape[3]

    def train(self, mode: bool = True) -> "VideoFlexTok":
        super().train(mode)
        self.vae.eval()  # stage 0 stays frozen
        return self

    @torch.no_grad()
    def vae_latents(self, video: Tensor) -> Tensor:
        """Normalized VAE latents ``float32 [B, C, t, h, w]`` of ``video`` ``[B, 3, 1 + 4m, H, W]``."""
        return self.normalize(self.vae.encode(video).latents.float())

    def normalize(self, latents: Tensor) -> Tensor:
        """Per-channel standardisation of raw VAE latents ``[B, C, t, h, w]`` (statistics of the first training batch)."""
        return (latents - self.latent_mean.view(1, -1, 1, 1, 1)) / self.latent_std.view(1, -1, 1, 1, 1)

    @torch.no_grad()
    def vae_decode(self, latents: Tensor, frames: int) -> Tensor:
        """Pixels ``[B, 3, frames, H, W]`` from normalized latents ``[B, C, t, h, w]``."""
        lat = latents * self.latent_std.view(1, -1, 1, 1, 1) + self.latent_mean.view(1, -1, 1, 1, 1)
        shape = (frames, lat.shape[3] * self.space_factor, lat.shape[4] * self.space_factor)
        return self.vae.decode(Tokens(latents=lat, tokens_per_video=lat[0, 0].numel(), info={"shape": shape})).float()

    @torch.no_grad()
    def _init_latent_stats(self, latents: Tensor) -> None:
        """Per-channel mean and std of the raw VAE latents of the first training batch."""
        lat = latents.transpose(0, 1).flatten(1)
        self.latent_mean.copy_(lat.mean(dim=1))
        self.latent_std.copy_(lat.std(dim=1).clamp_min(1e-4))
        self.latent_stats_ready.fill_(True)

    # ---------------------------------------------------------------- chunks
    def chunk_layout(self, frames: int) -> tuple[int, int]:
        """``(chunks, padded_frames)`` for a video of ``frames`` frames (``1 + 16K`` after padding, ``K >= 1``)."""
        if frames < 1:
            raise ValueError(f"a video needs at least one frame, got {frames}")
        chunks = max(1, -(-(frames - 1) // self.chunk_stride))
        return chunks, 1 + self.chunk_stride * chunks - frames

    def timesteps(self, frames: int) -> int:
        """Token timesteps of a video: ``1 + 4K`` for ``K`` chunks."""
        chunks, _ = self.chunk_layout(frames)
        return self.t_max + (chunks - 1) * (self.t_max - 1)

    def _chunks(self, video: Tensor) -> tuple[Tensor, int, int]:
        """``[B, 3, T, H, W] -> [(B K), 3, 17, H, W]`` (overlap one frame), chunks, padded frames."""
        check_video(video)
        h, w = video.shape[3:]
        if h % (self.space_factor * self.patch_size) or w % (self.space_factor * self.patch_size):
            raise ValueError(f"height and width must be multiples of {self.space_factor * self.patch_size}, got {h}x{w}")
        chunks, pad = self.chunk_layout(video.shape[2])
        if pad:
            video = torch.cat([video, video[:, :, -1:].expand(-1, -1, pad, -1, -1)], dim=2)
        pieces = video.unfold(2, self.chunk_size, self.chunk_stride)  # [B, 3, K, H, W, 17]
        return rearrange(pieces, "b c k h w t -> (b k) c t h w").contiguous(), chunks, pad

    # ---------------------------------------------------------------- contract
    def _budget(self, budget: int | None) -> int:
        if budget is None:
            return self.n_max
        try:
            k = operator.index(budget)
        except TypeError:
            k = None
        if k is None or isinstance(budget, bool) or not 1 <= k <= self.n_max:
            raise ValueError(f"budget is registers per latent timestep, an int in [1, {self.n_max}]; got {budget!r}")
        return k

    @torch.no_grad()
    def encode(self, video: Tensor, budget: int | None = None) -> Tokens:
        """Tokens of ``video`` ``float32 [B, 3, T, H, W]`` in ``[-1, 1]``.

        ``budget`` is the register prefix kept per latent timestep
        (``1 .. n_max``, default ``n_max``). The video is padded to ``1 + 16K``
        frames by repeating its last frame (``info["padded_frames"]``).
        ``H`` and ``W`` must be multiples of 16 (VAE x8, 2x2 patches).

        Raises:
            ValueError: bad video shape or budget.
        """
        check_video(video)
        k = self._budget(budget)
        batch, frames = video.shape[0], video.shape[2]
        chunk_videos, chunks, pad = self._chunks(video)
        latents = self.vae_latents(chunk_videos)
        codes, indices = self.encode_latents(latents)
        codes, indices = codes[:, :, :k], indices[:, :, :k]

        def stitch(x: Tensor) -> Tensor:  # drop the overlapping first timestep of every chunk after the first
            x = rearrange(x, "(b k) t ... -> b k t ...", b=batch)
            return torch.cat([x[:, 0], x[:, 1:, 1:].flatten(1, 2)], dim=1)

        codes, indices = stitch(codes), stitch(indices)
        info = {"shape": (frames, *video.shape[3:]), "keep": k, "chunks": chunks, "padded_frames": pad,
                "latent_hw": tuple(latents.shape[3:])}
        return Tokens(latents=codes, tokens_per_video=codes.shape[1] * k, indices=indices, info=info)

    @torch.no_grad()
    def decode(self, tokens: Tokens) -> Tensor:
        """Reconstruct ``float32 [B, 3, T, H, W]`` (clamped to ``[-1, 1]``) from :class:`Tokens`.

        Uses the first ``info["keep"]`` registers of ``latents`` ``[B, t, n, 6]``
        (or of the FSQ codes of ``indices`` ``int64 [B, t, n]`` when ``latents`` is
        ``None``, e.g. tokens sampled by a generator) per timestep (the rest, if any, are masked and have no effect) and
        decodes chunk by chunk; the initial noise comes from ``sample_seed``.
        """
        codes = tokens.latents
        if codes is None and isinstance(tokens.indices, Tensor):
            indices = tokens.indices.long()  # e.g. generated indices [B, t, k]; flattened so FSQ keeps the code axis last
            codes = self.fsq.indices_to_codes(indices.flatten(1)).float().reshape(*indices.shape, -1)
        if not isinstance(codes, Tensor) or codes.ndim != 4:
            raise ValueError("videoflextok tokens: expected latents [B, t, k, 6] or indices [B, t, k] from VideoFlexTok.encode")
        info = tokens.info
        keep_k, chunks = int(info.get("keep", codes.shape[2])), int(info["chunks"])
        frames = int(info["shape"][0])
        b, t_total, n = codes.shape[:3]
        if t_total != self.t_max + (chunks - 1) * (self.t_max - 1):
            raise ValueError(f"tokens have {t_total} timesteps, expected {self.timesteps(frames)} for {chunks} chunks")
        if n < self.n_max:
            codes = torch.cat([codes, codes.new_zeros(b, t_total, self.n_max - n, codes.shape[3])], dim=2)
        codes = codes[:, :, : self.n_max].float()
        keep = (torch.arange(self.n_max, device=codes.device) < min(keep_k, n)).expand(b, self.t_max, -1).clone()
        generator = torch.Generator().manual_seed(self.sample_seed)
        parts, last = [], None
        for c in range(chunks):
            if c == 0:
                chunk_codes, chunk_keep, prefix = codes[:, : self.t_max], keep, None
            else:
                start = self.t_max + (c - 1) * (self.t_max - 1)
                chunk_codes = torch.cat([torch.zeros_like(codes[:, :1]), codes[:, start: start + self.t_max - 1]], dim=1)
                chunk_keep = keep.clone()
                chunk_keep[:, 0] = False  # registers of the clean prefix are masked (MaskedPrefixDropout)
                prefix = self.vae_latents(last)
            latents = self.sample_latents(chunk_codes, chunk_keep, tuple(info["latent_hw"]), prefix, generator)
            video = self.vae_decode(latents, self.chunk_size).clamp(-1, 1)
            last = video[:, :, -1:]
            parts.append(video if c == 0 else video[:, :, 1:])
        return torch.cat(parts, dim=2)[:, :, :frames]

    def training_losses(self, video: Tensor, step: int) -> dict[str, Tensor]:
        """Rectified-flow loss on ``video`` ``float32 [B, 3, T, H, W]`` (padded to ``1 + 16K`` frames, chunked):
        ``stage0_losses(stage0_features(video))``."""
        return self.stage0_losses(self.stage0_features(video), step)

    @torch.no_grad()
    def stage0_features(self, video: Tensor) -> Tensor:
        """Raw (unnormalized) VAE latents of the chunks of ``video``: ``float32 [B, K, C, t_max, h, w]``."""
        chunk_videos, chunks, _ = self._chunks(video)
        latents = self.vae.encode(chunk_videos).latents.float()
        return rearrange(latents, "(b k) c t h w -> b k c t h w", k=chunks)

    def stage0_losses(self, features: Tensor, step: int) -> dict[str, Tensor]:
        """:meth:`flow_loss` on raw VAE latents ``[B, K, C, t_max, h, w]``; the per-channel latent statistics
        are set from the first batch seen."""
        latents = features.flatten(0, 1).float()
        if not bool(self.latent_stats_ready):
            self._init_latent_stats(latents)
        return self.flow_loss(self.normalize(latents))

    def flow_loss(self, clean: Tensor) -> dict[str, Tensor]:
        """Training objective on normalized VAE latents ``clean`` ``float32 [N, C, t_max, h, w]`` of N chunks.

        Optional :func:`latent_mosaic` -> encoder -> FSQ -> nested dropout (per
        latent timestep, ``k`` uniform over powers of two) -> null-condition
        dropout -> logit-normal ``sigma`` -> MSE between predicted and true
        velocity ``noise - clean``, averaged over the non-prefix timesteps
        (notes 2.4, 2.5).
        """
        if self.latent_mosaic:
            clean = latent_mosaic(clean, self.latent_mosaic)
        n, _, t = clean.shape[:3]
        device = clean.device
        codes, _ = self.encode_latents(clean)
        budgets = torch.tensor(self.budgets, device=device)
        k = budgets[torch.randint(len(self.budgets), (n, t), device=device)]
        keep = torch.arange(self.n_max, device=device) < k[..., None]
        prefix = torch.rand(n, device=device) < self.prefix_prob
        keep[:, 0] &= ~prefix[:, None]
        null = torch.rand(n, device=device) < self.cfg_dropout
        sigma = shift_sigma(torch.sigmoid(torch.randn(n, device=device)), self.noise_shift)[:, None].expand(n, t).clone()
        small = 0.02 * torch.rand(n, device=device) * (torch.rand(n, device=device) < 0.5)
        sigma[:, 0] = torch.where(prefix, small, sigma[:, 0])
        noise = torch.randn_like(clean)
        s = sigma[:, None, :, None, None]
        noised = s * noise + (1 - s) * clean
        pred = self.velocity(noised, sigma, codes, keep, null)
        err = (pred - (noise - clean)).pow(2).mean(dim=(1, 3, 4))  # [n, t]
        weight = torch.ones(n, t, device=device)
        weight[:, 0] = (~prefix).float()
        rf_loss = (err * weight).sum() / weight.sum()
        return {"loss": rf_loss, "rf_loss": rf_loss.detach(), "mean_keep": keep.float().sum(-1).mean().detach(),
                "prefix_frac": prefix.float().mean().detach()}

    def tokens_per_video(self, frames: int, height: int, width: int) -> int:
        """Full-budget tokens of one video: ``timesteps(frames) x n_max``."""
        return self.timesteps(frames) * self.n_max

    def temporal_boundaries(self, frames: int) -> list[int]:
        """First frames of chunks 2, 3, ...: chunk ``i > 0`` adds frames ``16 i + 1 .. 16 i + 16`` (17-frame chunks
        overlapping by one frame, decoded conditioned on the previous chunk), so boundaries are 17, 33, ..."""
        return list(range(self.chunk_size, frames, self.chunk_stride))

    def token_budgets(self) -> list[int]:
        """Registers per timestep that a suite sweeps: ``1, 2, 4, ..., n_max``."""
        return list(self.budgets)

    def codebook_size(self) -> int:
        return int(self.fsq.codebook_size)


# --------------------------------------------------------------------------------------------------
# Sizes and presets
# --------------------------------------------------------------------------------------------------

#: presets: encoder depth/width, decoder depth/width, heads (encoder, decoder), registers per timestep.
#: ``k600`` is the VideoFlexTok-K600 shape (18-layer encoder and decoder, 17 frames at 128x128,
#: n_max 256; project page). Widths are inferred: FlexTok's ``d{N}`` models use width 64 N
#: (1152 for d18), which gives 36 x 12 x 1152^2 = 573M parameters without adaLN, the 570M the
#: project page reports. ``d18_d28`` (the 256x256 Panda model, ``videoflextok_d18_d28``):
#: 18 x 1152 encoder, 28 x 1792 decoder = 1.37B without adaLN (page: 1.3B).
VIDEOFLEXTOK_SIZES: dict[str, SizeConfig] = {
    "tiny": SizeConfig(enc_depth=2, enc_dim=128, dec_depth=4, dec_dim=128, enc_heads=4, dec_heads=4, n_max=16),
    "small": SizeConfig(enc_depth=6, enc_dim=384, dec_depth=6, dec_dim=384, enc_heads=6, dec_heads=6, n_max=64),
    "k600": SizeConfig(enc_depth=18, enc_dim=1152, dec_depth=18, dec_dim=1152, enc_heads=18, dec_heads=18, n_max=256),
    "d18_d28": SizeConfig(enc_depth=18, enc_dim=1152, dec_depth=28, dec_dim=1792, enc_heads=18, dec_heads=28, n_max=256),
}

#: The paper's long-video setting (notes 2.2): 81 frames (10 s at 8 fps) = 1 + 16 x 5 frames ->
#: 21 latent timesteps; 32 tokens per timestep -> 21 x 32 = 672 tokens (8x fewer than the
#: 21 x 256 = 5376 of a comparable 3D grid). Use as ``frames`` and ``budget`` of a suite.
PAPER_81F_672 = {"frames": 81, "budget": 32, "tokens_per_video": 672, "size": "d18_d28", "resolution": 256}

register_size_presets("videoflextok", VIDEOFLEXTOK_SIZES, source="VideoFlexTok project page; FlexTok d{N} widths")
