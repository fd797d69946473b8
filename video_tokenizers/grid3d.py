"""``grid3d``: a 3D-convolutional VAE with a continuous latent grid.

The de-facto standard spatiotemporal grid tokenizer (MAGVIT / TATS layout,
CoordTok supplementary C.1 and Table 7): a 16x128x128 chunk is compressed
x4 in time and x8 in space to a 4x16x16 grid, one token per grid position.
The latent is a KL-regularized diagonal Gaussian (mean at evaluation, a
sample in training). With ``causal=True`` the time axis is causal and the
first frame is encoded on its own, so ``T = 1 + 4k`` frames map to ``1 + k``
latent timesteps, the layout of VidTok's causal 4x8x8 VAE that VideoFlexTok
uses as its stage-0 compressor (research notes 2.2).

Downsampling is a strided 3x3x3 convolution by default; ``downsample="avgpool"``
is MAGVIT's ``conv_downsample=False`` (google-research/magvit@05e8cfd
``videogvt/models/enc_dec_3dcnn.py`` ``Encoder``: ``model_utils.downsample``,
2x2x2 or 1x2x2 average pooling, no parameters).

Objective of the continuous VAE: L2 + KL by default; ``recipe="vidtok"`` is
VidTok's (microsoft/VidTok@d6ad92d ``configs/vidtok_kl_causal_488_16chn.yaml``,
``vidtok/modules/losses.py``): L1 + LPIPS on every frame + a 2D PatchGAN on
every frame from step 20,001 (hinge discriminator, non-saturating generator,
adaptive weight x0.2, LeCAM 0.005) + KL, for VideoFlexTok's stage 0
(``docs/videoflextok.md``).
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import torch.nn.functional as F
from torch import Tensor, nn

from harness_core.api import Tokens, VideoTokenizer, check_video
from harness_core.registry import SizeConfig, register_size_presets, register_tokenizer
from harness_core.layers import Decoder3d, DiagonalGaussian, Downsample3d, Encoder3d
from video_tokenizers.losses import AutoencoderLoss, LossConfig, same_avg_pool3d


class PoolDownsample3d(nn.Module):
    """MAGVIT's parameter-free downsampling (``conv_downsample=False``): 2x2x2 average pooling, 1x2x2 when
    ``time`` is off (:func:`video_tokenizers.losses.same_avg_pool3d`). ``[B, C, T, H, W] -> [B, C, T', H/2, W/2]``."""

    def __init__(self, time: bool) -> None:
        super().__init__()
        self.time = time

    def forward(self, x: Tensor) -> Tensor:
        return same_avg_pool3d(x, self.time)


def pool_downsampling(encoder: Encoder3d) -> None:
    """Replace every strided-convolution downsampling of ``encoder`` by :class:`PoolDownsample3d` (in place)."""
    for index, layer in enumerate(encoder.body):
        if isinstance(layer, Downsample3d):
            encoder.body[index] = PoolDownsample3d(layer.conv.conv.stride[0] == 2)


class Grid3dAutoencoder(VideoTokenizer):
    """Shared body of the 3D grid tokenizers: encoder, decoder and the grid geometry.

    Args:
        size: a key of :data:`GRID3D_SIZES` giving the defaults of the next three arguments
            (``None``: those of ``"small"``).
        channels, channel_mult, num_res_blocks: the convolutional stacks.
        time_down: per downsampling, whether it halves time (default: the first two).
        latent_channels: channels of the latent grid (one token per position).
        chunk_frames: native chunk length; the engine splits longer videos into chunks (supp. B.1).
        causal: causal time axis, first frame on its own.
        downsample: ``"conv"`` (strided 3x3x3 convolutions) or ``"avgpool"`` (MAGVIT's
            ``conv_downsample=False``: average pooling; not with ``causal``).

    Raises:
        ValueError: an unknown ``downsample``, or ``"avgpool"`` with ``causal``.
    """

    unused_parameters = False  # no stage skips a module (the VQ subclass's discriminator: VQAutoencoderMixin)

    def __init__(self, size: str | None = "tiny", channels: int | None = None, channel_mult: Sequence[int] | None = None,
                 num_res_blocks: int | None = None, time_down: Sequence[bool] | None = None, latent_channels: int = 8,
                 moments: int = 1, chunk_frames: int | None = 16, causal: bool = False,
                 downsample: str = "conv") -> None:
        super().__init__()
        if downsample not in ("conv", "avgpool"):
            raise ValueError(f"downsample must be 'conv' or 'avgpool', got {downsample!r}")
        if downsample == "avgpool" and causal:
            raise ValueError("downsample='avgpool' pools pairs of frames, which a causal time axis does not allow")
        preset = GRID3D_SIZES[size or "small"]
        self.channels = channels or preset.channels
        self.channel_mult = tuple(channel_mult or preset.channel_mult)
        self.num_res_blocks = num_res_blocks or preset.num_res_blocks
        levels = len(self.channel_mult) - 1
        self.time_down = tuple(time_down) if time_down is not None else tuple(i < 2 for i in range(levels))
        self.time_factor = 2 ** sum(self.time_down)
        self.space_factor = 2 ** levels
        self.latent_channels = latent_channels
        self.causal = causal
        self.chunk_frames = chunk_frames
        stacks = dict(channels=self.channels, channel_mult=self.channel_mult, time_down=self.time_down,
                      num_res_blocks=self.num_res_blocks, causal=causal)
        self.encoder = Encoder3d(3, latent_channels * moments, **stacks)
        self.downsample = downsample
        if downsample == "avgpool":
            pool_downsampling(self.encoder)
        self.decoder = Decoder3d(latent_channels, 3, **stacks)

    def latent_shape(self, frames: int, height: int, width: int) -> tuple[int, int, int]:
        """Latent grid ``(t, h, w)`` of a chunk; raises ``ValueError`` for unsupported sizes."""
        if height % self.space_factor or width % self.space_factor:
            raise ValueError(f"height and width must be multiples of {self.space_factor}, got {height}x{width}")
        if self.causal:
            if (frames - 1) % self.time_factor:
                raise ValueError(f"a causal grid needs 1 + {self.time_factor}k frames, got {frames}")
            return 1 + (frames - 1) // self.time_factor, height // self.space_factor, width // self.space_factor
        if frames % self.time_factor:
            raise ValueError(f"frames must be a multiple of {self.time_factor}, got {frames}")
        return frames // self.time_factor, height // self.space_factor, width // self.space_factor

    def tokens_per_video(self, frames: int, height: int, width: int) -> int:
        chunk = self.chunk_frames or frames
        chunks = -(-frames // chunk)
        t, h, w = self.latent_shape(chunk, height, width)
        return chunks * t * h * w

    def decode_latents(self, latents: Tensor) -> Tensor:
        return self.decoder(latents)


@register_tokenizer("grid3d")
class Grid3dVAE(Grid3dAutoencoder):
    """Continuous 3D grid VAE (KL-regularized).

    Objectives:

    * ``recipe=None`` (default): L2 + ``kl_weight`` x KL (KL summed over the latent, mean over the batch).
    * ``recipe="vidtok"`` (VideoFlexTok's stage 0 as VidTok trains it): the ``"vidtok"`` recipe of
      :data:`video_tokenizers.losses.RECIPES` (L1 + LPIPS x1 on every frame, 2D PatchGAN on every frame from
      step 20,001, hinge discriminator / non-saturating generator, adaptive weight x0.2, LeCAM 0.005), with
      ``loss`` overrides, plus ``kl_weight / (3 H W)`` x KL: VidTok's reconstruction term is a sum over each
      frame's ``3 H W`` values and its KL weight (1e-6) multiplies the KL of a whole clip, so with the
      per-value mean used here the KL is divided by ``3 H W`` to keep VidTok's balance. VidTok's learned
      log-variance on the reconstruction term (``learn_logvar``) is not reproduced (docs/videoflextok.md).

    Tokens: ``latents`` ``float32 [B, latent_channels, T/4, H/8, W/8]`` (the
    posterior mean), one token per grid position.

    Raises:
        KeyError: an unknown ``recipe``; ValueError: unknown ``loss`` options, or ``loss`` without a recipe.
    """

    #: where the recipe comes from (``python -m harness protocol`` shows it; conformance in docs/fidelity.md)
    recipe_source = "MAGVIT / TATS 3D-grid layout with a KL bottleneck; microsoft/VidTok d6ad92d as VideoFlexTok's stage 0 (docs/fidelity.md section 11)"

    def __init__(self, kl_weight: float = 1e-6, recipe: str | None = None, loss: Mapping[str, Any] | None = None,
                 **kwargs) -> None:
        super().__init__(moments=2, **kwargs)
        self.kl_weight = kl_weight
        if recipe is None and loss:
            raise ValueError("grid3d: loss overrides need a recipe (recipe: vidtok)")
        self.loss_config = LossConfig.from_recipe(recipe, loss) if recipe is not None else None
        self.objective = AutoencoderLoss(self.loss_config) if recipe is not None else None
        self.discriminator = self.objective.build_discriminator() if recipe is not None else None

    @property
    def unused_parameters(self) -> bool:
        """``True`` only while a discriminator waits for its start step (:class:`harness_core.api.VideoTokenizer`)."""
        return self.objective is not None and self.objective.discriminator_waits(self.discriminator)

    def last_layer(self) -> Tensor:
        """The decoder's output convolution weight (where the adaptive GAN weight is measured)."""
        return self.decoder.body[-1].conv.weight

    def posterior(self, video: Tensor) -> DiagonalGaussian:
        check_video(video)
        self.latent_shape(*video.shape[2:])
        return DiagonalGaussian(self.encoder(video))

    def encode(self, video: Tensor, budget: int | None = None) -> Tokens:
        latents = self.posterior(video).mean
        count = latents.shape[2] * latents.shape[3] * latents.shape[4]
        if budget is not None and budget != count:
            raise ValueError(f"grid3d has a fixed budget of {count} tokens per chunk, got budget={budget}")
        return Tokens(latents=latents, tokens_per_video=count, info={"shape": tuple(video.shape[2:])})

    def decode(self, tokens: Tokens) -> Tensor:
        return self.decode_latents(tokens.latents)

    def training_losses(self, video: Tensor, step: int) -> dict[str, Tensor]:
        """``"loss"`` (and ``"disc_loss"`` once a recipe's GAN is active) with detached terms for logging."""
        posterior = self.posterior(video)
        recon = self.decode_latents(posterior.sample())
        kl = posterior.kl()
        if self.objective is None:
            l2 = F.mse_loss(recon, video)
            return {"loss": l2 + self.kl_weight * kl, "l2": l2.detach(), "kl": kl.detach()}
        out = self.objective(video, recon, step, self.discriminator, self.last_layer())
        values_per_frame = video.shape[1] * video.shape[3] * video.shape[4]
        out["loss"] = out["loss"] + self.kl_weight / values_per_frame * kl
        out["kl"] = kl.detach()
        return out


# --------------------------------------------------------------------------------------------------
# Sizes and presets
# --------------------------------------------------------------------------------------------------

#: sizes of the convolutional stacks (shared by ``grid3d`` and ``grid3d_vq``); time is halved on the
#: first two downsamplings
GRID3D_SIZES: dict[str, SizeConfig] = {
    "tiny": SizeConfig(channels=16, channel_mult=(1, 2, 2, 4), num_res_blocks=1),
    "small": SizeConfig(channels=64, channel_mult=(1, 2, 2, 4), num_res_blocks=1),
    "base": SizeConfig(channels=64, channel_mult=(1, 2, 2, 4), num_res_blocks=2),  # MAGVIT-B 3D-VQ: filters 64, (1, 2, 2, 4)
    "large": SizeConfig(channels=128, channel_mult=(1, 2, 2, 4), num_res_blocks=2),  # MAGVIT-L: filters 128
}

register_size_presets("grid3d", GRID3D_SIZES, source="MAGVIT 3D-VQ stacks (CoordTok supp. C.1)")
