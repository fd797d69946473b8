"""Training objectives of the grid and triplane baselines (VQGAN family), in one place.

Pieces, each configurable through :class:`LossConfig`:

* reconstruction: L1 (TATS, PVDM, taming VQGAN) or L2 (MAGVIT), mean over pixels;
* perceptual: LPIPS with its real weights (``metrics.lpips.load_lpips``), on
  one random frame per video (TATS / PVDM: "LPIPS on a random frame") or on
  every frame; the LPIPS network is frozen, loaded lazily, moved to the
  input's device on first use and kept out of every ``state_dict``;
* adversarial: hinge (taming, TATS, PVDM) or non-saturating (MAGVIT / StyleGAN)
  losses, a 2D PatchGAN on one random frame per video and/or a 3D PatchGAN on
  the whole clip (TATS / PVDM), or a deeper StyleGAN-style 3D residual
  discriminator (MAGVIT, CoordTok supp. C.1), switched on at ``disc_start``;
  optional taming adaptive weight (Esser et al. 2021, eq. 7), GAN feature
  matching (TATS), LeCAM regularization (Tseng et al. 2021) and the R1
  gradient penalty (Mescheder et al. 2018, MAGVIT's form ``r1 * E||grad D(x)||^2``).

Recipes (research notes section 4, ``RECIPES``):

===========  ======  ==============  =====================================================
recipe       recon   perceptual      adversarial
===========  ======  ==============  =====================================================
``tats``     L1 x4   LPIPS x4, 1 fr  hinge, 2D + 3D PatchGAN x1 each, FM x4, from 10k steps
``pvdm``     L1 x4   LPIPS x4, 1 fr  hinge, 2D + 3D PatchGAN x1 each, FM x4, from 10k steps
``magvit``   L2 x1   LPIPS x0.1 *    non-saturating, StyleGAN 3D x0.1, R1 10, LeCAM 0 (opt.)
``maskgit``  L1 x1   LPIPS x1        hinge, 2D PatchGAN x0.8 with the adaptive weight (taming)
===========  ======  ==============  =====================================================

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

from dataclasses import asdict, dataclass, fields
from typing import Any, Callable, Mapping

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
        feature_matching_weight: L1 between discriminator features of real and reconstructed clips (TATS).
        lecam_weight, lecam_decay: LeCAM regularization of the discriminator and its EMA decay.
        r1_weight: R1 gradient penalty on real inputs (MAGVIT: 10).
        disc_channels, disc_layers: width and depth of the discriminators.
        disc_norm: ``"batch"`` (taming / TATS PatchGAN), ``"group"`` or ``"none"`` for the PatchGANs.
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
    "tats": dict(recon="l1", recon_weight=4.0, perceptual_weight=4.0, perceptual_frames="random", gan="hinge",
                 disc_2d=True, disc_3d="patch", disc_weight=1.0, disc_start=10_000, feature_matching_weight=4.0),
    # PVDM configs/autoencoder/base_gan.yaml, losses/perceptual.py: same structure as TATS
    "pvdm": dict(recon="l1", recon_weight=4.0, perceptual_weight=4.0, perceptual_frames="random", gan="hinge",
                 disc_2d=True, disc_3d="patch", disc_weight=1.0, disc_start=10_000, feature_matching_weight=4.0),
    # MAGVIT vqgan3d_ucf101_config.py: L2, perceptual 0.1, non-saturating GAN 0.1, StyleGAN 3D disc, R1 10
    "magvit": dict(recon="l2", recon_weight=1.0, perceptual_weight=0.1, perceptual_frames="random",
                   gan="non_saturating", disc_3d="stylegan", disc_weight=0.1, disc_start=0, r1_weight=10.0,
                   lecam_weight=0.0),
    # taming VQGAN (Esser et al. 2021), MaskGIT's tokenizer [CoordTok ref 8]: L1 + LPIPS 1, hinge PatchGAN
    # with the adaptive weight, disc_weight 0.8 (taming's ImageNet f16 config); start step as TATS
    "maskgit": dict(recon="l1", recon_weight=1.0, perceptual_weight=1.0, perceptual_frames="all", gan="hinge",
                    disc_2d=True, disc_weight=0.8, disc_start=10_000, adaptive_weight=True),
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
    stride 2 for the first ``layers`` convolutions (time strided too in 3D
    while it is at least 4 long), then two stride-1 convolutions; LeakyReLU 0.2.

    Returns ``(logits, features)``: patch logits ``[N, 1, ...]`` and the
    intermediate activations (for feature matching).
    """

    def __init__(self, dims: int = 2, channels: int = 64, layers: int = 3, norm: str = "batch") -> None:
        super().__init__()
        if dims not in (2, 3):
            raise ValueError(f"dims must be 2 or 3, got {dims}")
        conv = nn.Conv2d if dims == 2 else nn.Conv3d
        self.dims = dims
        blocks: list[nn.Module] = [nn.Sequential(conv(3, channels, 4, 2, 1), nn.LeakyReLU(0.2))]
        width = channels
        for i in range(1, layers + 1):
            out = channels * min(2 ** i, 8)
            stride = 2 if i < layers else 1
            blocks.append(nn.Sequential(conv(width, out, 4, stride, 1, bias=norm != "batch"),
                                        _norm(norm, out, dims), nn.LeakyReLU(0.2)))
            width = out
        self.blocks = nn.ModuleList(blocks)
        self.head = conv(width, 1, 4, 1, 1)

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
    """A StyleGAN-style 3D residual discriminator (MAGVIT; CoordTok supp. C.1: "deeper 3D discriminator").

    Input ``[N, 3, T, H, W]``; ``levels`` residual blocks (LeakyReLU 0.2, no
    normalization, average-pool downsampling of space and, while ``T >= 2``,
    time; skip branch 1x1x1 convolution; sum scaled by ``1/sqrt(2)``), then a
    global average and a two-layer MLP to one logit per clip.

    Returns ``(logits [N, 1], features)``.
    """

    def __init__(self, channels: int = 64, levels: int = 3) -> None:
        super().__init__()
        self.stem = nn.Conv3d(3, channels, 3, padding=1)
        blocks, width = [], channels
        for i in range(levels):
            out = channels * min(2 ** (i + 1), 8)
            blocks.append(_StyleGANBlock(width, out))
            width = out
        self.blocks = nn.ModuleList(blocks)
        self.head = nn.Sequential(nn.Linear(width, width), nn.LeakyReLU(0.2), nn.Linear(width, 1))

    def forward(self, x: Tensor) -> tuple[Tensor, list[Tensor]]:
        x = F.leaky_relu(self.stem(x), 0.2)
        features = []
        for block in self.blocks:
            x = block(x)
            features.append(x)
        return self.head(x.mean(dim=(2, 3, 4))), features


class _StyleGANBlock(nn.Module):
    def __init__(self, in_ch: int, out_ch: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv3d(in_ch, in_ch, 3, padding=1)
        self.conv2 = nn.Conv3d(in_ch, out_ch, 3, padding=1)
        self.skip = nn.Conv3d(in_ch, out_ch, 1, bias=False)

    @staticmethod
    def _down(x: Tensor) -> Tensor:
        return F.avg_pool3d(x, (2 if x.shape[2] >= 2 else 1, 2, 2))

    def forward(self, x: Tensor) -> Tensor:
        h = F.leaky_relu(self.conv1(x), 0.2)
        h = self._down(F.leaky_relu(self.conv2(h), 0.2))
        return (h + self._down(self.skip(x))) * 2 ** -0.5


class VideoDiscriminator(nn.Module):
    """The discriminators of one recipe: an optional 2D PatchGAN on frames and an optional 3D one on clips.

    ``forward(video, frame_index)`` with ``video`` ``float [B, 3, T, H, W]`` and
    ``frame_index`` ``int64 [B]`` (the frame the 2D discriminator sees per
    video) returns a dict ``{"2d" | "3d": (logits, features)}``. Holds the
    LeCAM EMAs of the real and fake logits as buffers, one pair per discriminator.
    """

    def __init__(self, config: LossConfig) -> None:
        super().__init__()
        self.image = (PatchDiscriminator(2, config.disc_channels, config.disc_layers, config.disc_norm)
                      if config.disc_2d else None)
        if config.disc_3d == "patch":
            self.video = PatchDiscriminator(3, config.disc_channels, config.disc_layers, config.disc_norm)
        elif config.disc_3d == "stylegan":
            self.video = StyleGANDiscriminator3d(config.disc_channels, config.disc_layers)
        else:
            self.video = None
        self.register_buffer("lecam_ema", torch.zeros(2, 2))  # [2d, 3d] x [real, fake]

    def forward(self, video: Tensor, frame_index: Tensor) -> dict[str, tuple[Tensor, list[Tensor]]]:
        out = {}
        if self.image is not None:
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
        _, g_fn = _GAN_LOSSES[cfg.gan]
        frame_index = torch.randint(video.shape[2], (video.shape[0],), device=video.device)
        params = {name: p.detach() for name, p in discriminator.named_parameters()}
        fake = functional_call(discriminator, params, (recon, frame_index), strict=False)
        g_loss = sum(g_fn(logits) for logits, _ in fake.values())
        fm = None
        if cfg.feature_matching_weight > 0:
            with torch.no_grad():
                real = functional_call(discriminator, params, (video, frame_index), strict=False)
            fm = sum(
                sum(F.l1_loss(f, r) for f, r in zip(fake[key][1], real[key][1])) / len(fake[key][1])
                for key in fake
            )
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

