"""``grid3d_vq``: the 3D VQGAN grid baseline (TATS-AE / MAGVIT-AE, CoordTok supp. C.1, Table 7).

A 16x128x128 chunk is compressed x4 in time and x8 in space by the 3D
convolutional stacks of :mod:`video_tokenizers.grid3d` (GroupNorm + Swish
residual blocks, MAGVIT's ``channel_multipliers (1, 2, 2, 4)`` and
``temporal_downsample (True, True, False)``) to a 4x16x16 grid, and every grid
vector is quantized to one of ``codebook_size`` codes (1024 for MAGVIT, 16384
for TATS). 1024 tokens per 16-frame chunk, so 8192 for a 128-frame video split into
eight 16-frame chunks (supp. B.1; the engine does the splitting).

Vector quantization is ``vector_quantize_pytorch.VectorQuantize``: EMA codebook
(decay 0.99), k-means initialization on the first training batch, dead-code
replacement (codes whose EMA cluster size falls below
``threshold_ema_dead_code`` are re-seeded from the batch, cf. TATS' random
restarts), commitment weight 0.25 (MAGVIT, TATS), straight-through gradients.

:class:`VQAutoencoderMixin` holds what every VQ tokenizer of this family
shares (quantization, encode / decode from indices, the VQGAN objective of
:mod:`video_tokenizers.losses`); ``frame2d_vq`` reuses it.
"""
from __future__ import annotations

from typing import Any, Mapping

import torch
from torch import Tensor
from vector_quantize_pytorch import VectorQuantize

from harness_core.api import Tokens, check_video
from harness_core.registry import SizeConfig, register_preset, register_tokenizer
from video_tokenizers.grid3d import Grid3dAutoencoder
from video_tokenizers.losses import AutoencoderLoss, LossConfig


class VQAutoencoderMixin:
    """Quantization, tokens and training objective shared by the VQ grid tokenizers.

    A subclass implements ``encode_grid(video) -> [B, D, t, h, w]`` (continuous,
    before quantization), ``decode_grid(latents [B, D, t, h, w]) -> video``,
    ``latent_shape(frames, height, width) -> (t, h, w)`` and
    ``last_layer() -> Tensor`` (the weight the adaptive GAN weight is measured
    at), and calls :meth:`_init_vq` in ``__init__``.

    Tokens: ``latents`` the quantized grid ``float32 [B, D, t, h, w]``,
    ``indices`` ``int64 [B, t, h, w]`` in ``[0, codebook_size)``; ``decode``
    works from either (indices alone when ``latents`` is ``None``).
    """

    continuous = False

    @property
    def unused_parameters(self) -> bool:
        """``True`` only while a discriminator waits for ``disc_start`` (:class:`harness_core.api.VideoTokenizer`)."""
        return self.objective.discriminator_waits(self.discriminator)

    def _init_vq(self, dim: int, codebook_size: int, commitment_weight: float, ema_decay: float, kmeans_init: bool,
                 threshold_ema_dead_code: float, rotation_trick: bool, recipe: str,
                 loss: Mapping[str, Any] | None) -> None:
        self.quantizer = VectorQuantize(
            dim=dim, codebook_size=codebook_size, decay=ema_decay, commitment_weight=commitment_weight,
            kmeans_init=kmeans_init, threshold_ema_dead_code=threshold_ema_dead_code,
            rotation_trick=rotation_trick, accept_3d_fmap=True, sync_codebook=None,
        )
        self.loss_config = LossConfig.from_recipe(recipe, loss)
        self.objective = AutoencoderLoss(self.loss_config)
        self.discriminator = self.objective.build_discriminator()

    # --- tokens

    def codebook_size(self) -> int:
        return self.quantizer.codebook_size

    def quantize(self, grid: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """``[B, D, t, h, w]`` -> quantized grid (same shape), indices ``int64 [B, t, h, w]``, commitment loss."""
        quantized, indices, commit = self.quantizer(grid)
        return quantized, indices, commit

    def encode(self, video: Tensor, budget: int | None = None) -> Tokens:
        check_video(video)
        grid = self.encode_grid(video)
        quantized, indices, _ = self.quantize(grid)
        count = int(indices[0].numel())
        if budget is not None and budget != count:
            raise ValueError(f"{type(self).__name__} has a fixed budget of {count} tokens per chunk, "
                             f"got budget={budget}")
        return Tokens(latents=quantized, tokens_per_video=count, indices=indices, info={"shape": tuple(video.shape[2:])})

    def indices_to_latents(self, indices: Tensor) -> Tensor:
        """Codebook vectors of ``indices`` ``int64 [B, t, h, w]`` as a grid ``float32 [B, D, t, h, w]``."""
        if indices.ndim != 4 or indices.dtype not in (torch.int64, torch.int32):
            raise ValueError(f"indices: expected int64 [B, t, h, w], got {indices.dtype} {tuple(indices.shape)}")
        return self.quantizer.get_output_from_indices(indices.long())

    def decode_indices(self, indices: Tensor) -> Tensor:
        """Decode codes ``int64 [B, t, h, w]`` to a video ``float32 [B, 3, T, H, W]``."""
        return self.decode_grid(self.indices_to_latents(indices))

    def decode(self, tokens: Tokens) -> Tensor:
        if tokens.latents is None:
            if tokens.indices is None:
                raise ValueError("tokens carry neither latents nor indices")
            return self.decode_indices(tokens.indices)
        return self.decode_grid(tokens.latents)

    # --- training

    def training_losses(self, video: Tensor, step: int) -> dict[str, Tensor]:
        """VQGAN objective of ``loss_config`` plus the commitment loss (weight in the quantizer).

        Returns ``"loss"`` and, once ``step >= loss_config.disc_start`` and a
        discriminator exists, ``"disc_loss"`` (see :mod:`video_tokenizers.losses`
        for how the engine optimizes the two).
        """
        check_video(video)
        grid = self.encode_grid(video)
        quantized, indices, commit = self.quantize(grid)
        recon = self.decode_grid(quantized)
        out = self.objective(video, recon, step, self.discriminator, self.last_layer())
        out["loss"] = out["loss"] + commit
        out["commitment"] = commit.detach()
        with torch.no_grad():
            counts = torch.bincount(indices.flatten(), minlength=self.codebook_size()).float()
            probs = counts / counts.sum()
            out["batch_perplexity"] = torch.exp(-(probs[probs > 0] * probs[probs > 0].log()).sum())
        return out


@register_tokenizer("grid3d_vq")
class Grid3dVQ(VQAutoencoderMixin, Grid3dAutoencoder):
    """3D VQGAN grid tokenizer: ``[B, 3, 16, H, W] -> int64 [B, 4, H/8, W/8]`` codes.

    Args:
        size: convolutional stack preset of :data:`video_tokenizers.grid3d.GRID3D_SIZES`.
        latent_channels: code dimension (256 in MAGVIT and TATS).
        codebook_size: number of codes (MAGVIT 1024, TATS 16384).
        commitment_weight: VQ commitment weight (0.25, MAGVIT / TATS).
        ema_decay, kmeans_init, threshold_ema_dead_code, rotation_trick: ``VectorQuantize`` options.
        recipe: loss recipe of :data:`video_tokenizers.losses.RECIPES` (``"magvit"`` or ``"tats"``).
        loss: overrides of the recipe's :class:`~video_tokenizers.losses.LossConfig` fields.
        chunk_frames: native chunk length (16); the engine splits longer videos into chunks (supp. B.1).
        **kwargs: forwarded to :class:`~video_tokenizers.grid3d.Grid3dAutoencoder`
            (``channels``, ``channel_mult``, ``num_res_blocks``, ``time_down``).

    Recommended optimizer (not set here; the suite sets one per entry):
    MAGVIT Adam betas (0, 0.99), lr 1e-4; TATS Adam betas (0.5, 0.9), lr 3e-5.

    Raises:
        ValueError: chunk sizes the grid does not divide (``latent_shape``), unknown loss options.
    """

    #: where the recipe comes from (``python -m harness protocol`` shows it; conformance in docs/fidelity.md)
    recipe_source = "MAGVIT-AE (google-research/magvit 05e8cfd) and TATS-AE (songweige/TATS 03bbce1) recipes (docs/fidelity.md sections 7-8; remaining differences: issue 26)"

    def __init__(self, size: str | None = "tiny", latent_channels: int = 8, codebook_size: int = 1024,
                 commitment_weight: float = 0.25, ema_decay: float = 0.99, kmeans_init: bool = True,
                 threshold_ema_dead_code: float = 2.0, rotation_trick: bool = False, recipe: str = "magvit",
                 loss: Mapping[str, Any] | None = None, chunk_frames: int | None = 16, **kwargs: Any) -> None:
        super().__init__(size=size, latent_channels=latent_channels, moments=1, chunk_frames=chunk_frames, **kwargs)
        self._init_vq(latent_channels, codebook_size, commitment_weight, ema_decay, kmeans_init,
                      threshold_ema_dead_code, rotation_trick, recipe, loss)

    @classmethod
    def from_preset(cls, preset: str, **overrides: Any) -> "Grid3dVQ":
        """Build a :data:`GRID3D_VQ_PRESETS` configuration (``overrides`` win)."""
        return cls(**{**GRID3D_VQ_PRESETS[preset], **overrides})

    def encode_grid(self, video: Tensor) -> Tensor:
        self.latent_shape(*video.shape[2:])
        return self.encoder(video)

    def decode_grid(self, latents: Tensor) -> Tensor:
        return self.decoder(latents)

    def last_layer(self) -> Tensor:
        return self.decoder.body[-1].conv.weight


# --------------------------------------------------------------------------------------------------
# Sizes and presets
# --------------------------------------------------------------------------------------------------

#: paper-scale and CPU configurations: Grid3dAutoencoder size, latent (code) dim, codebook size, loss recipe
GRID3D_VQ_PRESETS: dict[str, SizeConfig] = {
    # MAGVIT-AE-L (google-research/magvit vqgan3d_ucf101_config.py): filters 128, 2 res blocks, dim 256, 1024 codes
    "magvit_l": SizeConfig(size="large", latent_channels=256, codebook_size=1024, recipe="magvit"),
    "magvit_b": SizeConfig(size="base", latent_channels=256, codebook_size=1024, recipe="magvit"),
    # TATS-AE (songweige/TATS README): --embedding_dim 256 --n_codes 16384 --downsample 4 8 8
    "tats": SizeConfig(size="base", latent_channels=256, codebook_size=16384, recipe="tats"),
    # CPU: 16 filters, 8-dim codes, 256 codes, L2 + LPIPS (no GAN: too few steps for one to help)
    "tiny": SizeConfig(size="tiny", latent_channels=8, codebook_size=256, recipe="magvit", loss={"gan": None}),
}


def _register_presets() -> None:
    """``grid3d_vq_<name>`` for the configurations of :data:`GRID3D_VQ_PRESETS`."""
    for name, config in GRID3D_VQ_PRESETS.items():
        register_preset(f"grid3d_vq_{name}", "grid3d_vq", config, summary=config.summary(),
                        source="MAGVIT vqgan3d_ucf101_config.py / TATS README")


_register_presets()
