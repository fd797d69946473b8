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
:mod:`video_tokenizers.losses`, MAGVIT's entropy loss, the EMA of the weights);
``frame2d_vq`` and ``tats`` reuse it.

MAGVIT's recipe pieces (google-research/magvit@05e8cfd ``videogvt/configs/vqgan2d_ucf101_config.py``,
``vqgan3d_ucf101_config.py``, ``videogvt/train_lib/vqgan_train_lib.py``):

* entropy loss 0.1 at temperature 0.01 (``LossConfig.entropy_weight``; :func:`video_tokenizers.losses.entropy_loss`
  on the negative squared distances of the encoder's vectors to the codebook);
* an EMA of the weights (``polyak_decay`` 0.999), the weights that are evaluated: ``weight_ema`` (the engine keeps
  it, ``harness/train.py``);
* average-pooling downsampling (``conv_downsample=False``): ``downsample="avgpool"``;
* 2D->3D inflation (``init_from.inflation = '2d->3d'``, central by default): ``init_from`` a trained
  ``frame2d_vq`` of the same stacks, :func:`inflate_2d_to_3d`.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import torch
from torch import Tensor, nn
from vector_quantize_pytorch import VectorQuantize

from harness_core.api import Tokens, check_video
from harness_core.registry import SizeConfig, register_preset, register_tokenizer
from video_tokenizers.grid3d import Grid3dAutoencoder
from video_tokenizers.losses import AutoencoderLoss, LossConfig, entropy_loss

#: each recipe's EMA decay of the weights (``weight_ema=None`` takes it): MAGVIT ``polyak_decay`` 0.999
#: (google-research/magvit@05e8cfd ``vqgan2d_ucf101_config.py``); the other recipes keep no EMA
RECIPE_WEIGHT_EMA: dict[str, float] = {"magvit": 0.999}


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
                 loss: Mapping[str, Any] | None, weight_ema: float | None = None) -> None:
        self.quantizer = VectorQuantize(
            dim=dim, codebook_size=codebook_size, decay=ema_decay, commitment_weight=commitment_weight,
            kmeans_init=kmeans_init, threshold_ema_dead_code=threshold_ema_dead_code,
            rotation_trick=rotation_trick, accept_3d_fmap=True, sync_codebook=None,
        )
        self.loss_config = LossConfig.from_recipe(recipe, loss)
        self.objective = AutoencoderLoss(self.loss_config)
        self.discriminator = self.objective.build_discriminator()
        if weight_ema is None:
            weight_ema = RECIPE_WEIGHT_EMA.get(recipe, 0.0)
        if not 0.0 <= weight_ema < 1.0:
            raise ValueError(f"weight_ema must be in [0, 1) (0: no EMA of the weights), got {weight_ema!r}")
        #: decay of the EMA of the weights that the engine keeps and evaluates (``None``: no EMA)
        self.weight_ema_decay = weight_ema or None

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

    def codebook_entropy(self, grid: Tensor) -> Tensor:
        """MAGVIT's entropy loss of the continuous grid ``[B, D, t, h, w]`` against the codebook (scalar): the
        affinity of each vector to each code is its negative squared distance, at ``loss_config.entropy_temperature``.
        The codebook here is an EMA buffer, so the gradient reaches the encoder only (MAGVIT's learned codebook gets
        one too)."""
        vectors = grid.movedim(1, -1).reshape(-1, grid.shape[1]).float()
        codebook = self.quantizer.codebook.float()
        distances = (vectors.pow(2).sum(1, keepdim=True) - 2 * vectors @ codebook.t()
                     + codebook.pow(2).sum(1)[None])
        return entropy_loss(-distances, self.loss_config.entropy_temperature)

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
        if self.loss_config.entropy_weight > 0:
            entropy = self.codebook_entropy(grid)
            out["loss"] = out["loss"] + self.loss_config.entropy_weight * entropy
            out["entropy"] = entropy.detach()
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
        recipe: loss recipe of :data:`video_tokenizers.losses.RECIPES` (``"magvit"``; ``"tats"`` on this
            network is an ablation, TATS-AE proper is the ``tats`` family).
        loss: overrides of the recipe's :class:`~video_tokenizers.losses.LossConfig` fields.
        weight_ema: decay of the EMA of the weights that are evaluated (``None``: the recipe's,
            :data:`RECIPE_WEIGHT_EMA`, MAGVIT 0.999; ``0``: none).
        init_from: path of a trained ``frame2d_vq`` with the same stacks (a ``state_dict`` file, or an engine
            ``checkpoint.pt``, whose EMA weights are taken when it keeps an EMA), inflated into this model
            (:func:`inflate_2d_to_3d`, mode ``inflation``); ``None``: random initialization.
        inflation: ``"central"`` (MAGVIT's ``'2d->3d'`` default) or ``"average"``.
        chunk_frames: native chunk length (16); the engine splits longer videos into chunks (supp. B.1).
        **kwargs: forwarded to :class:`~video_tokenizers.grid3d.Grid3dAutoencoder`
            (``channels``, ``channel_mult``, ``num_res_blocks``, ``time_down``, ``downsample``).

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
                 loss: Mapping[str, Any] | None = None, weight_ema: float | None = None,
                 init_from: str | Path | None = None, inflation: str = "central", chunk_frames: int | None = 16,
                 **kwargs: Any) -> None:
        super().__init__(size=size, latent_channels=latent_channels, moments=1, chunk_frames=chunk_frames, **kwargs)
        self._init_vq(latent_channels, codebook_size, commitment_weight, ema_decay, kmeans_init,
                      threshold_ema_dead_code, rotation_trick, recipe, loss, weight_ema)
        if init_from is not None:
            inflate_2d_to_3d(load_2d_weights(init_from), self, inflation)

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
# 2D -> 3D inflation (MAGVIT)
# --------------------------------------------------------------------------------------------------


def load_2d_weights(path: str | Path) -> dict[str, Tensor]:
    """The weights in ``path``: a ``state_dict`` file, or an engine checkpoint (``{"model": ..., "ema": ...}``,
    ``harness/train.py``), whose evaluated weights are the EMA's when it keeps one.

    Raises:
        FileNotFoundError: ``path`` does not exist.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"init_from: {path} does not exist (a frame2d_vq state_dict or checkpoint.pt)")
    state = torch.load(path, map_location="cpu", weights_only=True)
    if "model" not in state:
        return state
    weights = dict(state["model"])
    for key, value in state.get("ema", {}).items():  # timm ModelEmaV3 keys: "module.<name>"
        name = key.removeprefix("module.")
        if name in weights and not name.startswith("discriminator."):
            weights[name] = value
    return weights


def inflate_kernel(kernel_2d: Tensor, shape_3d: torch.Size, mode: str = "central") -> Tensor:
    """A 2D convolution kernel ``[O, I, kh, kw]`` as a 3D one of ``shape_3d`` ``[O, I, kt, KH, KW]``.

    ``"central"`` (MAGVIT ``inflate_2d_to_3d``, its default for ``'2d->3d'``): the 2D kernel at the middle time
    tap, zeros elsewhere, so each output frame is the 2D convolution of the matching input frame; a smaller
    spatial kernel sits at the spatial centre (a 1x1 kernel inside a 3x3 one acts the same with 'same'
    padding). ``"average"``: the 2D kernel divided by ``kt`` at every time tap (equal spatial size only).

    Raises:
        ValueError: an unknown mode, or shapes that do not inflate.
    """
    out_ch, in_ch, kt, height, width = shape_3d
    o, i, kh, kw = kernel_2d.shape
    if (o, i) != (out_ch, in_ch) or kh > height or kw > width or (height - kh) % 2 or (width - kw) % 2:
        raise ValueError(f"cannot inflate a {tuple(kernel_2d.shape)} kernel to {tuple(shape_3d)}")
    if mode == "average":
        if (kh, kw) != (height, width):
            raise ValueError(f"average inflation needs equal spatial kernels, got {tuple(kernel_2d.shape)} -> {tuple(shape_3d)}")
        return kernel_2d[:, :, None].expand(shape_3d) / kt
    if mode != "central":
        raise ValueError(f"inflation must be 'central' or 'average', got {mode!r}")
    kernel = kernel_2d.new_zeros(shape_3d)
    top, left = (height - kh) // 2, (width - kw) // 2
    kernel[:, :, kt // 2, top : top + kh, left : left + kw] = kernel_2d
    return kernel


def inflate_2d_to_3d(weights_2d: Mapping[str, Tensor], model: nn.Module, mode: str = "central") -> None:
    """Initialize ``model`` (a ``grid3d_vq``) from the weights of a ``frame2d_vq`` with the same stacks (in place).

    The encoder and decoder tensors are matched in order (both stacks register the same layers in the same
    order); 2D kernels are inflated by :func:`inflate_kernel`, other tensors (normalization, biases) copied.
    The quantizer's state (codebook) is copied by name. The discriminator is not inflated (the 2D model's is a
    PatchGAN, MAGVIT inflates a 2D StyleGAN one) and keeps its initialization.

    With ``"central"`` inflation, a static video (one frame repeated) gives, frame by frame, the 2D model's output
    on that frame: every convolution then acts per frame, GroupNorm statistics over a static clip equal the
    frame's, and average pooling, strided convolution and nearest upsampling in time keep a clip static.

    Raises:
        ValueError: the two models' stacks do not match (count or shapes), or a bad mode.
    """
    def stack(names: list[str]) -> list[str]:
        return [n for n in names if n.split(".")[0] in ("encoder", "decoder")]

    target = model.state_dict()
    source_keys = stack(list(weights_2d))
    target_keys = stack(list(target))
    if len(source_keys) != len(target_keys):
        raise ValueError(f"init_from: the 2D model has {len(source_keys)} encoder/decoder tensors, this model "
                         f"{len(target_keys)}; build both with the same channels, channel_mult, num_res_blocks and "
                         f"downsample")
    inflated = {}
    for source, name in zip(source_keys, target_keys):
        value, shape = weights_2d[source], target[name].shape
        if value.shape == shape:
            inflated[name] = value
        elif value.ndim == 4 and len(shape) == 5:
            inflated[name] = inflate_kernel(value, shape, mode)
        else:
            raise ValueError(f"init_from: {source} {tuple(value.shape)} does not match {name} {tuple(shape)}")
    for name in target:
        if name.startswith("quantizer.") and name in weights_2d:
            inflated[name] = weights_2d[name]
    model.load_state_dict(inflated, strict=False)


# --------------------------------------------------------------------------------------------------
# Sizes and presets
# --------------------------------------------------------------------------------------------------

#: paper-scale and CPU configurations: Grid3dAutoencoder size, latent (code) dim, codebook size, loss recipe
GRID3D_VQ_PRESETS: dict[str, SizeConfig] = {
    # MAGVIT-AE-L (google-research/magvit vqgan3d_ucf101_config.py): filters 128, 2 res blocks, dim 256, 1024 codes
    # conv_downsample=False (average pooling), EMA 0.999 (the recipe's), entropy loss 0.1 (the recipe's)
    "magvit_l": SizeConfig(size="large", latent_channels=256, codebook_size=1024, recipe="magvit", downsample="avgpool"),
    "magvit_b": SizeConfig(size="base", latent_channels=256, codebook_size=1024, recipe="magvit", downsample="avgpool",
                           loss={"disc_channels": 64}),
    # CPU: 16 filters, 8-dim codes, 256 codes, L2 + LPIPS (no GAN: too few steps for one to help)
    "tiny": SizeConfig(size="tiny", latent_channels=8, codebook_size=256, recipe="magvit", loss={"gan": None}),
}


def _register_presets() -> None:
    """``grid3d_vq_<name>`` for the configurations of :data:`GRID3D_VQ_PRESETS`."""
    for name, config in GRID3D_VQ_PRESETS.items():
        register_preset(f"grid3d_vq_{name}", "grid3d_vq", config, summary=config.summary(),
                        source="MAGVIT vqgan3d_ucf101_config.py")


_register_presets()
