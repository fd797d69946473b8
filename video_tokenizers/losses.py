"""Training objectives of the grid and triplane baselines (VQGAN family), in one place.

Pieces, each configurable through :class:`LossConfig`:

* reconstruction: L1 (TATS, PVDM, taming VQGAN) or L2 (MAGVIT), mean over pixels;
* perceptual: LPIPS with its real weights (``metrics.lpips.load_lpips``), on
  one random frame per video (TATS / PVDM: "LPIPS on a random frame") or on
  every frame; the LPIPS network is frozen, loaded lazily, moved to the
  input's device on first use and kept out of every ``state_dict``;
* adversarial: hinge (taming, TATS, PVDM) or non-saturating (MAGVIT / StyleGAN)
  losses (VidTok pairs a hinge discriminator with a non-saturating generator:
  ``gan_generator``), a 2D PatchGAN on one random frame per video (TATS / PVDM)
  or on every frame (VidTok) and/or a 3D PatchGAN on the whole clip (TATS /
  PVDM), or MAGVIT's StyleGAN 3D residual discriminator (CoordTok supp. C.1
  "deeper 3D discriminator"), switched on at ``disc_start``; optional taming
  adaptive weight (Esser et al. 2021, eq. 7), GAN feature matching (TATS /
  PVDM: the L1 distances of the intermediate discriminator features, summed),
  LeCAM regularization (Tseng et al. 2021) and the R1 gradient penalty
  (Mescheder et al. 2018, MAGVIT's form ``r1 * E||grad D(x)||^2``);
* quantizer: MAGVIT's entropy loss (:func:`entropy_loss`), which the VQ
  tokenizers add with ``entropy_weight`` (``video_tokenizers/grid3d_vq.py``).

Recipes (research notes section 4, ``RECIPES``):

===========  ======  ==============  =====================================================
recipe       recon   perceptual      adversarial
===========  ======  ==============  =====================================================
``tats``     L1 x4   LPIPS x4, 1 fr  hinge, 2D + 3D PatchGAN x1 each, FM x4, from 10k steps
``pvdm``     L1 x4   LPIPS x4, 1 fr  hinge, 2D + 3D PatchGAN x1 each, FM x4, from 10k steps
``magvit``   L2 x1   LPIPS x0.1 *    non-saturating, StyleGAN 3D (128, (2,4,4,4,4)) x0.1, R1 10; entropy 0.1
``maskgit``  L1 x1   LPIPS x1        hinge, 2D PatchGAN x0.8 with the adaptive weight (taming)
``vidtok``   L1 x1   LPIPS x1, all   hinge D / non-saturating G, 2D PatchGAN on all frames, adaptive x0.2,
                                     LeCAM 0.005, from step 20,001 (VideoFlexTok's stage-0 VAE)
===========  ======  ==============  =====================================================

Sources (every value is in the tables of ``docs/baselines.md`` and ``docs/videoflextok.md``):
google-research/magvit@05e8cfd ``videogvt/configs/vqgan2d_ucf101_config.py``,
``videogvt/models/stylegan_discriminator_3d.py``, ``videogvt/train_lib/losses.py``;
songweige/TATS@03bbce1 ``tats/tats_vqgan.py``, ``README.md``; sihyun-yu/PVDM@793172f
``losses/perceptual.py``; CompVis/taming-transformers ``configs/imagenet_vqgan.yaml``;
microsoft/VidTok@d6ad92d ``configs/vidtok_kl_causal_488_16chn.yaml``, ``vidtok/modules/losses.py``.

(*) MAGVIT's perceptual loss is computed on a pretrained image classifier's
logits; LPIPS stands in for it (same weight, 0.1).

How the engine trains a tokenizer that uses this module (``harness_core.api``):
the tokenizer owns ``self.discriminator`` (an ``nn.Module`` or ``None``);
``training_losses(video, step)`` returns ``"loss"`` (the generator objective,
adversarial term included once ``step >= disc_start``) and, only while the
GAN is active, ``"disc_loss"`` (the discriminator objective). The two are
isolated by construction: the generator's adversarial term evaluates the
discriminator with *detached* parameters (``torch.func.functional_call``), and
``disc_loss`` sees *detached* reconstructions. So one ``backward(loss +
disc_loss)`` (the engine's way, DDP-safe) or two separate backwards give the
same gradients: the autoencoder's from ``loss`` only, the discriminator's from
``disc_loss`` only. The engine puts ``discriminator.parameters()`` in a second
optimizer and steps both. Before ``disc_start`` no ``"disc_loss"`` is returned
and the discriminator gets no gradient (under DDP use
``find_unused_parameters=True`` or start the GAN at step 0).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from functools import partial
from typing import Any, Callable, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call

from harness_core.layers import group_norm

# ----------------------------------------------------------------------------- config


@dataclass
class LossConfig:
    """Weights and switches of the autoencoder objective (see the module docstring).

    Attributes:
        recon: ``"l1"`` or ``"l2"``; ``recon_weight`` its weight.
        perceptual_weight: LPIPS weight (0 disables LPIPS; no weights are loaded then).
        perceptual_net: LPIPS backbone, ``"vgg"`` (the LPIPS paper's default for losses) or ``"alex"``.
        perceptual_frames: ``"random"`` (one random frame per video, TATS / PVDM) or ``"all"``.
        gan: ``None`` (no discriminator), ``"hinge"`` or ``"non_saturating"``.
        disc_2d: 2D PatchGAN on one random frame per video; ``disc_3d``: 3D discriminator
            on the clip, ``"patch"`` (TATS / PVDM PatchGAN) or ``"stylegan"`` (MAGVIT) or ``None``.
        disc_weight: weight of the generator's adversarial term (per discriminator).
        disc_start: first optimizer step at which the GAN is active.
        adaptive_weight: multiply ``disc_weight`` by taming's ratio of gradient norms at the
            decoder's last layer, ``||dL_rec/dw|| / (||dL_adv/dw|| + 1e-4)`` clamped to ``[0, 1e4]``.
        feature_matching_weight: weight of the L1 distances between the discriminator features of real and
            reconstructed clips, summed over the intermediate features (TATS, PVDM).
        lecam_weight, lecam_decay: LeCAM regularization of the discriminator and its EMA decay.
        r1_weight: R1 gradient penalty on real inputs (MAGVIT: 10).
        disc_channels, disc_layers: width and depth of the discriminators.
        disc_norm: ``"batch"`` (taming / TATS PatchGAN), ``"group"`` or ``"none"`` for the PatchGANs.
        disc_padding: padding of the PatchGANs' kernel-4 convolutions: 1 (taming, pix2pix) or 2
            (TATS / PVDM ``NLayerDiscriminator``, pix2pixHD's ``ceil((4 - 1) / 2)``).
        disc_channel_mult: channel multipliers of the StyleGAN 3D discriminator's residual blocks
            (MAGVIT ``(2, 4, 4, 4, 4)``); ``None`` keeps the ``disc_layers`` rule ``min(2^(i+1), 8)``.
        disc_2d_frames: the frames the 2D discriminator sees: ``"random"`` (one per video, TATS / PVDM)
            or ``"all"`` (every frame, VidTok).
        gan_generator: the generator's adversarial loss when it differs from ``gan`` (VidTok:
            ``gan="hinge"`` for the discriminator, ``gan_generator="non_saturating"``); ``None``: as ``gan``.
        entropy_weight, entropy_temperature: MAGVIT's codebook entropy loss (:func:`entropy_loss`,
            softmax form) for the VQ tokenizers (MAGVIT: 0.1 at temperature 0.01; 0 disables it).
    """

    recon: str = "l1"
    recon_weight: float = 1.0
    perceptual_weight: float = 0.0
    perceptual_net: str = "vgg"
    perceptual_frames: str = "random"
    gan: str | None = None
    disc_2d: bool = False
    disc_3d: str | None = None
    disc_weight: float = 1.0
    disc_start: int = 0
    adaptive_weight: bool = False
    feature_matching_weight: float = 0.0
    lecam_weight: float = 0.0
    lecam_decay: float = 0.999
    r1_weight: float = 0.0
    disc_channels: int = 64
    disc_layers: int = 3
    disc_norm: str = "batch"
    disc_padding: int = 1
    disc_channel_mult: tuple[int, ...] | None = None
    disc_2d_frames: str = "random"
    gan_generator: str | None = None
    entropy_weight: float = 0.0
    entropy_temperature: float = 0.01

    def __post_init__(self) -> None:
        if self.recon not in ("l1", "l2"):
            raise ValueError(f"recon must be 'l1' or 'l2', got {self.recon!r}")
        if self.perceptual_frames not in ("random", "all"):
            raise ValueError(f"perceptual_frames must be 'random' or 'all', got {self.perceptual_frames!r}")
        if self.gan not in (None, "hinge", "non_saturating"):
            raise ValueError(f"gan must be None, 'hinge' or 'non_saturating', got {self.gan!r}")
        if self.disc_3d not in (None, "patch", "stylegan"):
            raise ValueError(f"disc_3d must be None, 'patch' or 'stylegan', got {self.disc_3d!r}")
        if self.disc_norm not in ("batch", "group", "none"):
            raise ValueError(f"disc_norm must be 'batch', 'group' or 'none', got {self.disc_norm!r}")
        if self.gan_generator not in (None, "hinge", "non_saturating"):
            raise ValueError(f"gan_generator must be None, 'hinge' or 'non_saturating', got {self.gan_generator!r}")
        if self.disc_2d_frames not in ("random", "all"):
            raise ValueError(f"disc_2d_frames must be 'random' or 'all', got {self.disc_2d_frames!r}")
        if self.disc_padding not in (1, 2):
            raise ValueError(f"disc_padding must be 1 or 2, got {self.disc_padding!r}")
        if self.disc_channel_mult is not None:
            self.disc_channel_mult = tuple(int(m) for m in self.disc_channel_mult)
            if not self.disc_channel_mult or min(self.disc_channel_mult) < 1:
                raise ValueError(f"disc_channel_mult must be positive integers, got {self.disc_channel_mult!r}")
        if self.entropy_weight < 0 or self.entropy_temperature <= 0:
            raise ValueError(f"entropy_weight must be >= 0 and entropy_temperature > 0, got "
                             f"{self.entropy_weight!r}, {self.entropy_temperature!r}")
        if self.gan and not (self.disc_2d or self.disc_3d):
            raise ValueError("gan is set but neither disc_2d nor disc_3d is enabled")

    @classmethod
    def from_recipe(cls, recipe: str, overrides: Mapping[str, Any] | None = None) -> "LossConfig":
        """The config of a named recipe (a key of :data:`RECIPES`) with ``overrides`` applied.

        Raises:
            KeyError: unknown recipe; ValueError: unknown override key (named).
        """
        if recipe not in RECIPES:
            raise KeyError(f"unknown loss recipe {recipe!r}; known: {', '.join(sorted(RECIPES))}")
        values = dict(RECIPES[recipe])
        known = {f.name for f in fields(cls)}
        for key, value in (overrides or {}).items():
            if key not in known:
                raise ValueError(f"unknown loss option {key!r}; known: {', '.join(sorted(known))}")
            values[key] = value
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


#: each baseline's own objective (research notes section 4; sources in the module docstring)
RECIPES: dict[str, dict[str, Any]] = {
    # TATS README / tats_vqgan.py: L1 4, LPIPS 4 on a random frame, hinge 2D + 3D from 10k steps, FM 4
    # (TATS / PVDM NLayerDiscriminator: pix2pixHD padding 2, BatchNorm; feature matching summed over the 4 features)
    "tats": dict(recon="l1", recon_weight=4.0, perceptual_weight=4.0, perceptual_frames="random", gan="hinge",
                 disc_2d=True, disc_3d="patch", disc_weight=1.0, disc_start=10_000, feature_matching_weight=4.0,
                 disc_padding=2),
    # PVDM configs/autoencoder/base_gan.yaml, losses/perceptual.py: same structure as TATS
    "pvdm": dict(recon="l1", recon_weight=4.0, perceptual_weight=4.0, perceptual_frames="random", gan="hinge",
                 disc_2d=True, disc_3d="patch", disc_weight=1.0, disc_start=10_000, feature_matching_weight=4.0,
                 disc_padding=2),
    # MAGVIT vqgan2d/3d_ucf101_config.py: L2, perceptual 0.1, non-saturating GAN 0.1, StyleGAN 3D disc (filters 128 for
    # L, multipliers (2, 4, 4, 4, 4)), R1 10, entropy loss 0.1 at temperature 0.01 (softmax)
    "magvit": dict(recon="l2", recon_weight=1.0, perceptual_weight=0.1, perceptual_frames="random",
                   gan="non_saturating", disc_3d="stylegan", disc_weight=0.1, disc_start=0, r1_weight=10.0,
                   lecam_weight=0.0, disc_channels=128, disc_channel_mult=(2, 4, 4, 4, 4), disc_norm="none",
                   entropy_weight=0.1, entropy_temperature=0.01),
    # taming VQGAN (Esser et al. 2021), MaskGIT's tokenizer [CoordTok ref 8]: L1 + LPIPS 1, hinge PatchGAN
    # with the adaptive weight, disc_weight 0.8 (taming's ImageNet f16 config); start step as TATS
    "maskgit": dict(recon="l1", recon_weight=1.0, perceptual_weight=1.0, perceptual_frames="all", gan="hinge",
                    disc_2d=True, disc_weight=0.8, disc_start=10_000, adaptive_weight=True),
    # VidTok vidtok_kl_causal_488_16chn.yaml + GeneralLPIPSWithDiscriminator: L1 + LPIPS 1 on every frame, 2D PatchGAN
    # (taming's, BatchNorm, padding 1) on every frame, hinge D and non-saturating G, adaptive weight x0.2, LeCAM 0.005
    # (decay 0.999), from step 20,001
    "vidtok": dict(recon="l1", recon_weight=1.0, perceptual_weight=1.0, perceptual_frames="all", gan="hinge",
                   gan_generator="non_saturating", disc_2d=True, disc_2d_frames="all", disc_weight=0.2,
                   disc_start=20_001, adaptive_weight=True, lecam_weight=0.005, lecam_decay=0.999),
    # plain reconstruction, for ablations and the fastest CPU runs
    "recon_l1": dict(recon="l1"),
    "recon_l2": dict(recon="l2"),
}


# ----------------------------------------------------------------------------- GAN losses


def hinge_d_loss(real: Tensor, fake: Tensor) -> Tensor:
    """Hinge discriminator loss ``mean(relu(1 - D(x))) + mean(relu(1 + D(G(z))))`` (taming: times 0.5)."""
    return 0.5 * (F.relu(1.0 - real).mean() + F.relu(1.0 + fake).mean())


def hinge_g_loss(fake: Tensor) -> Tensor:
    """Hinge generator loss ``-mean(D(G(z)))``."""
    return -fake.mean()


def non_saturating_d_loss(real: Tensor, fake: Tensor) -> Tensor:
    """Logistic discriminator loss ``softplus(-D(x)) + softplus(D(G(z)))`` (StyleGAN, MAGVIT)."""
    return F.softplus(-real).mean() + F.softplus(fake).mean()


def non_saturating_g_loss(fake: Tensor) -> Tensor:
    """Non-saturating generator loss ``softplus(-D(G(z)))``."""
    return F.softplus(-fake).mean()


_GAN_LOSSES: dict[str, tuple[Callable[[Tensor, Tensor], Tensor], Callable[[Tensor], Tensor]]] = {
    "hinge": (hinge_d_loss, hinge_g_loss),
    "non_saturating": (non_saturating_d_loss, non_saturating_g_loss),
}


def adaptive_weight(nll: Tensor, g_loss: Tensor, last_layer: Tensor, max_weight: float = 1e4) -> Tensor:
    """taming VQGAN's adaptive weight (Esser et al. 2021, eq. 7), detached.

    ``||grad_w nll|| / (||grad_w g_loss|| + 1e-4)`` at the decoder's last-layer
    weight ``w``, clamped to ``[0, max_weight]``. Needs both losses to depend
    on ``w`` through a graph (training mode).
    """
    nll_grad = torch.autograd.grad(nll, last_layer, retain_graph=True)[0]
    g_grad = torch.autograd.grad(g_loss, last_layer, retain_graph=True)[0]
    weight = nll_grad.norm() / (g_grad.norm() + 1e-4)
    return weight.clamp(0.0, max_weight).detach()


def entropy_loss(affinity: Tensor, temperature: float = 0.01) -> Tensor:
    """MAGVIT's codebook entropy loss, softmax form (google-research/magvit@05e8cfd ``videogvt/train_lib/losses.py``
    ``entropy_loss``, called by ``videogvt/models/vqvae.py`` with ``affinity = -squared distances``).

    ``affinity`` ``float [..., K]`` (one row per latent vector, ``K`` codes) is divided by ``temperature``; with
    ``p = softmax`` per row, the loss is the mean per-vector entropy minus the entropy of the mean ``p`` over all
    vectors: low when each vector is confidently assigned and all codes are used. Returns a scalar (``float32``;
    values in ``[-log K, log K]``).
    """
    logits = affinity.reshape(-1, affinity.shape[-1]).float() / temperature
    probs = logits.softmax(dim=-1)
    log_probs = (logits + 1e-5).log_softmax(dim=-1)
    sample_entropy = -(probs * log_probs).sum(dim=-1).mean()
    mean_probs = probs.mean(dim=0)
    batch_entropy = -(mean_probs * (mean_probs + 1e-5).log()).sum()
    return sample_entropy - batch_entropy


# ----------------------------------------------------------------------------- discriminators


def _norm(kind: str, channels: int, dims: int) -> nn.Module:
    if kind == "batch":
        return nn.BatchNorm2d(channels) if dims == 2 else nn.BatchNorm3d(channels)
    if kind == "group":
        return group_norm(channels)
    return nn.Identity()


class PatchDiscriminator(nn.Module):
    """PatchGAN (pix2pix / taming ``NLayerDiscriminator``; TATS uses a 2D and a 3D one).

    ``dims=2``: input ``[N, 3, H, W]``; ``dims=3``: ``[N, 3, T, H, W]``. Kernel 4,
    stride 2 for the first ``layers`` convolutions (time strided too in 3D), then
    two stride-1 convolutions; LeakyReLU 0.2. ``padding`` 1 is taming's, 2 is
    TATS' and PVDM's (pix2pixHD's ``ceil((4 - 1) / 2)``, so each stride-2
    convolution maps ``n`` positions to ``n / 2 + 1``).

    Returns ``(logits, features)``: patch logits ``[N, 1, ...]`` and the
    intermediate activations (for feature matching).
    """

    def __init__(self, dims: int = 2, channels: int = 64, layers: int = 3, norm: str = "batch",
                 padding: int = 1) -> None:
        super().__init__()
        if dims not in (2, 3):
            raise ValueError(f"dims must be 2 or 3, got {dims}")
        conv = partial(nn.Conv2d if dims == 2 else nn.Conv3d, kernel_size=4, padding=padding)
        self.dims = dims
        blocks: list[nn.Module] = [nn.Sequential(conv(3, channels, stride=2), nn.LeakyReLU(0.2))]
        width = channels
        for i in range(1, layers + 1):
            out = channels * min(2 ** i, 8)
            stride = 2 if i < layers else 1
            blocks.append(nn.Sequential(conv(width, out, stride=stride, bias=norm != "batch"),
                                        _norm(norm, out, dims), nn.LeakyReLU(0.2)))
            width = out
        self.blocks = nn.ModuleList(blocks)
        self.head = conv(width, 1, stride=1)

    def forward(self, x: Tensor) -> tuple[Tensor, list[Tensor]]:
        features = []
        for block in self.blocks:
            x = self._pad_small(x)
            x = block(x)
            features.append(x)
        return self.head(self._pad_small(x)), features

    def _pad_small(self, x: Tensor) -> Tensor:
        # kernel-4 convolutions need >= 3 positions per axis (with padding 1); pad short clips by replication
        if x.ndim == 5 and x.shape[2] < 3:
            x = F.pad(x, (0, 0, 0, 0, 0, 3 - x.shape[2]), mode="replicate")
        return x


class StyleGANDiscriminator3d(nn.Module):
    """MAGVIT's StyleGAN 3D discriminator (google-research/magvit@05e8cfd ``videogvt/models/stylegan_discriminator_3d.py``;
    CoordTok supp. C.1: "deeper 3D discriminator").

    Input ``[N, 3, T, H, W]`` in ``[-1, 1]``: a 3x3x3 convolution to ``channels``, LeakyReLU 0.2, then one
    residual block per entry of ``channel_mult`` (block ``i`` ends with ``channels * channel_mult[i]``
    channels): 3x3x3 convolution, LeakyReLU, 2x2x2 average pooling, 3x3x3 convolution, LeakyReLU; the skip
    branch pools, then a bias-free 1x1x1 convolution; the sum is scaled by ``1/sqrt(2)``. No normalization
    (MAGVIT's ``norm_type`` is unset). Then a 3x3x3 convolution, LeakyReLU, flatten, a dense layer of the
    last width, LeakyReLU and a dense layer to one logit per clip. Convolution and dense weights are
    Xavier-uniform, biases zero (Flax's ``xavier_uniform`` kernels there).

    The pooling averages over the positions inside the input (TensorFlow ``SAME`` pooling), so a time axis of
    length 1 stays 1. The flatten reads a ``1 x 4 x 4`` grid: a 16x128x128 clip gives exactly that after five
    blocks (the official flatten); other sizes are average-pooled to it (adaptive pooling), so one model
    takes any clip size.

    Args:
        channels: ``filters`` (MAGVIT: the autoencoder's, 128 for L, 64 for B).
        levels: number of blocks when ``channel_mult`` is ``None`` (multipliers ``min(2^(i+1), 8)``).
        channel_mult: MAGVIT's ``discriminator.channel_multipliers`` ``(2, 4, 4, 4, 4)``.

    Returns ``(logits [N, 1], features)`` (the block outputs).
    """

    #: the grid the last feature map is flattened from (MAGVIT's at 16x128x128 with five blocks)
    HEAD_GRID = (1, 4, 4)

    def __init__(self, channels: int = 64, levels: int = 3, channel_mult: Sequence[int] | None = None) -> None:
        super().__init__()
        mult = tuple(channel_mult) if channel_mult is not None else tuple(min(2 ** (i + 1), 8) for i in range(levels))
        self.stem = nn.Conv3d(3, channels, 3, padding=1)
        blocks, width = [], channels
        for m in mult:
            blocks.append(_StyleGANBlock(width, channels * m))
            width = channels * m
        self.blocks = nn.ModuleList(blocks)
        self.out_conv = nn.Conv3d(width, width, 3, padding=1)
        self.head = nn.Sequential(nn.Linear(width * math.prod(self.HEAD_GRID), width), nn.LeakyReLU(0.2),
                                  nn.Linear(width, 1))
        for module in self.modules():
            if isinstance(module, (nn.Conv3d, nn.Linear)):
                nn.init.xavier_uniform_(module.weight)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)

    def forward(self, x: Tensor) -> tuple[Tensor, list[Tensor]]:
        x = F.leaky_relu(self.stem(x), 0.2)
        features = []
        for block in self.blocks:
            x = block(x)
            features.append(x)
        x = F.leaky_relu(self.out_conv(x), 0.2)
        if tuple(x.shape[2:]) != self.HEAD_GRID:
            x = F.adaptive_avg_pool3d(x, self.HEAD_GRID)
        return self.head(x.flatten(1)), features


def same_avg_pool3d(x: Tensor, time: bool = True) -> Tensor:
    """2x2x2 average pooling (1x2x2 with ``time=False``) over the positions inside the input, as TensorFlow's
    ``SAME`` pooling (MAGVIT ``model_utils.downsample``): ``[N, C, T, H, W] -> [N, C, ceil(T/2), ceil(H/2), ceil(W/2)]``."""
    window = (2 if time else 1, 2, 2)
    # an odd axis: the last window holds one position, whose mean is itself, as after replicating it once
    pads = [0 if n % w == 0 else 1 for n, w in zip(x.shape[2:], window)]
    if any(pads):
        x = F.pad(x, (0, pads[2], 0, pads[1], 0, pads[0]), mode="replicate")
    return F.avg_pool3d(x, window, stride=window)


class _StyleGANBlock(nn.Module):
    def __init__(self, in_ch: int, out_ch: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv3d(in_ch, in_ch, 3, padding=1)
        self.conv2 = nn.Conv3d(in_ch, out_ch, 3, padding=1)
        self.skip = nn.Conv3d(in_ch, out_ch, 1, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        h = same_avg_pool3d(F.leaky_relu(self.conv1(x), 0.2))
        h = F.leaky_relu(self.conv2(h), 0.2)
        return (h + self.skip(same_avg_pool3d(x))) * 2 ** -0.5


class VideoDiscriminator(nn.Module):
    """The discriminators of one recipe: an optional 2D PatchGAN on frames and an optional 3D one on clips.

    ``forward(video, frame_index)`` with ``video`` ``float [B, 3, T, H, W]`` and
    ``frame_index`` ``int64 [B]`` (the frame the 2D discriminator sees per
    video) returns a dict ``{"2d" | "3d": (logits, features)}``. Holds the
    LeCAM EMAs of the real and fake logits as buffers, one pair per discriminator.
    """

    def __init__(self, config: LossConfig) -> None:
        super().__init__()
        patch = partial(PatchDiscriminator, channels=config.disc_channels, layers=config.disc_layers,
                        norm=config.disc_norm, padding=config.disc_padding)
        self.image = patch(2) if config.disc_2d else None
        self.all_frames = config.disc_2d_frames == "all"
        if config.disc_3d == "patch":
            self.video = patch(3)
        elif config.disc_3d == "stylegan":
            self.video = StyleGANDiscriminator3d(config.disc_channels, config.disc_layers, config.disc_channel_mult)
        else:
            self.video = None
        self.register_buffer("lecam_ema", torch.zeros(2, 2))  # [2d, 3d] x [real, fake]

    def forward(self, video: Tensor, frame_index: Tensor) -> dict[str, tuple[Tensor, list[Tensor]]]:
        """``frame_index`` is ignored by a 2D discriminator that sees every frame (``disc_2d_frames="all"``)."""
        out = {}
        if self.image is not None:
            if self.all_frames:
                frames = _frames(video)
            else:
                frames = video[torch.arange(video.shape[0], device=video.device), :, frame_index]
            out["2d"] = self.image(frames)
        if self.video is not None:
            out["3d"] = self.video(video)
        return out


# ----------------------------------------------------------------------------- LPIPS


class LazyLPIPS:
    """Frozen LPIPS (``metrics.lpips.load_lpips``), loaded on first use, kept off ``state_dict``.

    A plain object (not an ``nn.Module``), so a tokenizer holding it does not
    register the LPIPS weights; it follows the input's device lazily.
    ``__call__(x, y)`` takes frames ``float [N, 3, H, W]`` in ``[-1, 1]`` and
    returns the mean LPIPS distance (a scalar with gradients to ``x``);
    :meth:`distances` returns the ``N`` distances.
    """

    def __init__(self, net: str = "vgg") -> None:
        self.net_name = net
        self._net: nn.Module | None = None

    def _load(self, device: torch.device) -> nn.Module:
        if self._net is None:
            from metrics.lpips import load_lpips

            # building the network draws random initial weights (then overwritten): keep the caller's CPU stream
            # untouched, so later draws (LPIPS dropout, sampling) do not depend on whether it was loaded before
            with torch.random.fork_rng(devices=[]):
                net = load_lpips(net=self.net_name)
            net.eval().requires_grad_(False)
            self._net = net
        if next(self._net.parameters()).device != device:
            self._net = self._net.to(device)
        return self._net

    def distances(self, x: Tensor, y: Tensor, dropout: bool = False) -> Tensor:
        """LPIPS of each pair of frames ``float [N, 3, H, W]`` in ``[-1, 1]``: ``float32 [N]``, gradients to ``x``.

        ``dropout=True`` runs the dropout (p = 0.5) that the lpips package puts
        before each linear layer (``use_dropout=True``, as taming's LPIPS) in
        training mode, as it runs when the loss network is a submodule of a
        model in training mode (CoordTok's official stage 2: ``Decoder.lpips_loss``
        under ``model.train()``). The draws come from the global torch
        generator; the expectation over them is the eval-mode distance. The
        shared network is back in eval mode when the call returns.
        """
        net = self._load(x.device)
        net.lins.train(dropout)
        try:
            return net(x.float(), y.float()).reshape(-1)
        finally:
            net.lins.eval()

    def __call__(self, x: Tensor, y: Tensor) -> Tensor:
        return self.distances(x, y).mean()

    def __getstate__(self) -> dict[str, Any]:  # deepcopy / pickle (EMA copies) without the weights
        return {"net_name": self.net_name, "_net": None}


# ----------------------------------------------------------------------------- objective


class AutoencoderLoss:
    """The objective of :class:`LossConfig` (a plain object; the tokenizer owns the discriminator).

    Call ``losses(video, recon, step, discriminator, last_layer)`` with
    ``video`` / ``recon`` ``float [B, 3, T, H, W]`` in ``[-1, 1]``; returns a
    dict with ``"loss"`` (generator objective, without the tokenizer's own
    quantizer terms), ``"disc_loss"`` while the GAN is active, and detached
    entries for logging (``"recon"``, ``"perceptual"``, ``"g_adv"``, ``"disc_weight"``, ...).
    """

    def __init__(self, config: LossConfig) -> None:
        self.config = config
        self.lpips = LazyLPIPS(config.perceptual_net) if config.perceptual_weight > 0 else None

    def build_discriminator(self) -> VideoDiscriminator | None:
        """A fresh :class:`VideoDiscriminator`, or ``None`` when the recipe has no GAN."""
        return VideoDiscriminator(self.config) if self.config.gan else None

    def gan_active(self, discriminator: nn.Module | None, step: int) -> bool:
        return discriminator is not None and self.config.gan is not None and step >= self.config.disc_start

    def discriminator_waits(self, discriminator: nn.Module | None) -> bool:
        """Whether ``discriminator`` gets no gradient at the first steps (``disc_start > 0``): the tokenizer's
        ``unused_parameters`` (:class:`harness_core.api.VideoTokenizer`)."""
        return self.gan_active(discriminator, self.config.disc_start) and self.config.disc_start > 0

    def perceptual(self, video: Tensor, recon: Tensor) -> Tensor:
        """LPIPS between ``recon`` and ``video`` on one random frame per video, or on all frames."""
        if self.config.perceptual_frames == "all":
            return self.lpips(_frames(recon), _frames(video))
        index = torch.randint(video.shape[2], (video.shape[0],), device=video.device)
        rows = torch.arange(video.shape[0], device=video.device)
        return self.lpips(recon[rows, :, index], video[rows, :, index])

    def __call__(self, video: Tensor, recon: Tensor, step: int, discriminator: nn.Module | None = None,
                 last_layer: Tensor | None = None) -> dict[str, Tensor]:
        cfg = self.config
        if cfg.recon == "l1":
            rec = (recon - video).abs().mean()
        else:
            rec = (recon - video).pow(2).mean()
        nll = cfg.recon_weight * rec
        out: dict[str, Tensor] = {"recon": rec.detach()}
        if self.lpips is not None:
            p = self.perceptual(video, recon)
            nll = nll + cfg.perceptual_weight * p
            out["perceptual"] = p.detach()
        loss = nll
        if self.gan_active(discriminator, step):
            g_loss, fm = self._generator_adversarial(discriminator, video, recon)
            weight = torch.tensor(cfg.disc_weight, device=video.device)
            if cfg.adaptive_weight and last_layer is not None and torch.is_grad_enabled() and recon.requires_grad:
                weight = weight * adaptive_weight(nll, g_loss, last_layer)
            loss = loss + weight * g_loss
            out.update(g_adv=g_loss.detach(), disc_weight=weight.detach())
            if fm is not None:
                loss = loss + cfg.feature_matching_weight * fm
                out["feature_matching"] = fm.detach()
            disc = self.discriminator_loss(discriminator, video, recon.detach())
            out.update({k: v for k, v in disc.items() if k != "disc_loss"})
            out["disc_loss"] = disc["disc_loss"]
        out["loss"] = loss
        return out

    def _generator_adversarial(self, discriminator: nn.Module, video: Tensor,
                               recon: Tensor) -> tuple[Tensor, Tensor | None]:
        """Adversarial (and feature-matching) terms for the generator, with detached discriminator parameters."""
        cfg = self.config
        _, g_fn = _GAN_LOSSES[cfg.gan_generator or cfg.gan]
        frame_index = torch.randint(video.shape[2], (video.shape[0],), device=video.device)
        params = {name: p.detach() for name, p in discriminator.named_parameters()}
        fake = functional_call(discriminator, params, (recon, frame_index), strict=False)
        g_loss = sum(g_fn(logits) for logits, _ in fake.values())
        fm = None
        if cfg.feature_matching_weight > 0:  # TATS / PVDM: the L1 of every intermediate feature, summed
            with torch.no_grad():
                real = functional_call(discriminator, params, (video, frame_index), strict=False)
            fm = sum(sum(F.l1_loss(f, r) for f, r in zip(fake[key][1], real[key][1])) for key in fake)
        return g_loss, fm

    def discriminator_loss(self, discriminator: nn.Module, video: Tensor, recon: Tensor) -> dict[str, Tensor]:
        """Discriminator objective on real ``video`` and *detached* ``recon`` (plus LeCAM and R1 when set)."""
        cfg = self.config
        d_fn, _ = _GAN_LOSSES[cfg.gan]
        recon = recon.detach()
        frame_index = torch.randint(video.shape[2], (video.shape[0],), device=video.device)
        real_in = video.detach().requires_grad_(cfg.r1_weight > 0 and torch.is_grad_enabled())
        real = discriminator(real_in, frame_index)
        fake = discriminator(recon, frame_index)
        total = video.new_zeros(())
        out: dict[str, Tensor] = {}
        for slot, key in enumerate(("2d", "3d")):
            if key not in real:
                continue
            r_logits, f_logits = real[key][0], fake[key][0]
            d_loss = d_fn(r_logits, f_logits)
            total = total + d_loss
            out[f"d_{key}"] = d_loss.detach()
            out[f"logits_real_{key}"] = r_logits.detach().mean()
            out[f"logits_fake_{key}"] = f_logits.detach().mean()
            if cfg.lecam_weight > 0:
                ema = discriminator.lecam_ema
                if torch.is_grad_enabled():
                    with torch.no_grad():
                        ema[slot, 0].lerp_(r_logits.mean(), 1 - cfg.lecam_decay)
                        ema[slot, 1].lerp_(f_logits.mean(), 1 - cfg.lecam_decay)
                lecam = F.relu(r_logits - ema[slot, 1]).pow(2).mean() + F.relu(ema[slot, 0] - f_logits).pow(2).mean()
                total = total + cfg.lecam_weight * lecam
                out[f"lecam_{key}"] = lecam.detach()
        if cfg.r1_weight > 0 and real_in.requires_grad:
            logits_sum = sum(r[0].sum() for r in real.values())
            grad = torch.autograd.grad(logits_sum, real_in, create_graph=True)[0]
            r1 = grad.pow(2).flatten(1).sum(1).mean()
            total = total + cfg.r1_weight * r1
            out["r1"] = r1.detach()
        out["disc_loss"] = total
        return out


def _frames(video: Tensor) -> Tensor:
    """``[B, C, T, H, W] -> [B * T, C, H, W]``."""
    return video.transpose(1, 2).flatten(0, 1)

