"""PSNR and SSIM per frame, averaged per video, then over videos.

Protocol (CoordTok supplementary B.1, "we follow the setup of MAGVIT": PSNR,
LPIPS and SSIM per frame, then averaged; docs/research/eval_anchors.md fact 5):
frames are mapped from ``[-1, 1]`` to ``[0, 1]`` and clamped (MAGVIT clips its
reconstructions to ``[0, 1]`` the same way, ``videogvt/trainers/vqgan_trainer.py``
``eval_step``; neither side is quantised), each frame is scored on its own with
data range 1, and a video's value is the mean over its (valid) frames. The
summary is the mean over videos.

Two SSIM definitions are registered, side by side (both: Wang, Bovik, Sheikh &
Simoncelli, IEEE TIP 13(4), 2004; Gaussian window 11, sigma 1.5, k1 = 0.01,
k2 = 0.03, population local statistics, the SSIM map averaged over the *valid*
region, i.e. the window positions wholly inside the frame, a border of
(11 - 1) / 2 = 5 pixels excluded):

============  =====================================  ==================================================
metric        colour and statistics                  used by
============  =====================================  ==================================================
``ssim``      RGB: the map of each channel, mean     TokenBench: ``skimage.metrics.structural_similarity(x, y,
              over the three channels; local         channel_axis=-1, gaussian_weights=True, sigma=1.5,
              statistics as computed                 use_sample_covariance=False, data_range=1)``
``ssim_gray`` luma ``0.2125 R + 0.7154 G + 0.0721    MAGVIT (google-research/magvit 05e8cfd,
              B`` (one channel); variances clipped   ``videogvt/train_lib/image_quality_metrics.py``
              at 0 and the covariance clipped to     ``ssim`` -> ``compute_ssim``, run by
              ``+-sqrt(var_x var_y)``                ``eval_utils.eval_step_get_features``), hence the
                                                     CoordTok paper protocol (supp. B.1)
============  =====================================  ==================================================

The two differ by the colour handling: on the sample clips (64-256 px) by
3e-4 to 8e-3 per frame for a spatial blur, and by 0.07 to 0.13 for independent
per-channel noise, which luma averages out. The clipping only matters where
rounding makes a local variance negative. The map
is computed here in float64 over the valid region only, the separable Gaussian
window applied as two band-matrix products (BLAS; CPU 2D convolutions in
float64, as in ``torchmetrics``' SSIM, are about 20x slower, and float32 moves
per-frame values by up to 3e-5; MAGVIT computes in float32). Averaging
``torchmetrics``' whole reflect-padded map instead (its default, and this
harness's protocol before issue 9) gives a different value.

PSNR is computed by ``torchmetrics`` with a per-frame reduction (not the
pooled-MSE PSNR of torchmetrics' default or of CoordTok's training monitor),
``-10 log10(MSE)`` per frame as MAGVIT's ``image_quality_metrics.psnr``, capped
at 100 dB (MAGVIT does not cap: identical frames give it ``inf``).
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torchmetrics.functional.image import peak_signal_noise_ratio

from harness_core.registry import register_metric
from metrics.base import VideoMetric, frames_of, to_unit_range

#: identical frames have infinite PSNR; a frame's PSNR is capped here (dB), as common_metrics_on_video_quality does
PSNR_CAP_DB = 100.0
#: SSIM Gaussian window side and standard deviation (Wang et al. 2004)
SSIM_WINDOW = 11
SSIM_SIGMA = 1.5
#: pixels on each side excluded from the SSIM mean: window positions not wholly inside the frame
SSIM_BORDER = (SSIM_WINDOW - 1) // 2
#: frames whose SSIM maps are computed at once (bounds memory at high resolutions)
SSIM_CHUNK = 64


def per_frame_psnr(real: Tensor, fake: Tensor) -> Tensor:
    """PSNR in dB of every frame, ``float64 [B, T]``, capped at :data:`PSNR_CAP_DB`.

    Args:
        real, fake: ``float [B, 3, T, H, W]`` in ``[-1, 1]``.
    """
    b, _, t = real.shape[:3]
    x, y = frames_of(to_unit_range(fake)).double(), frames_of(to_unit_range(real)).double()
    psnr = peak_signal_noise_ratio(x, y, data_range=1.0, reduction="none", dim=(1, 2, 3))
    return psnr.clamp(max=PSNR_CAP_DB).nan_to_num(PSNR_CAP_DB).reshape(b, t)


def per_frame_ssim(real: Tensor, fake: Tensor) -> Tensor:
    """RGB SSIM of every frame over the valid region, ``float64 [B, T]``, at most 1.

    Gaussian window 11, sigma 1.5, k1 0.01, k2 0.03, data range 1 on frames
    mapped to ``[0, 1]`` (clamped); the SSIM map of each channel is averaged over
    the frame without its 5-pixel border, then over the 3 channels (Wang et al.
    2004; equal to ``skimage.metrics.structural_similarity(x, y, channel_axis=-1,
    gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=1)``
    per frame).

    Args:
        real, fake: ``float [B, 3, T, H, W]`` in ``[-1, 1]``, ``H, W >= 11``.

    Raises:
        ValueError: frames smaller than the 11x11 window.
    """
    return _per_frame_ssim(real, fake, gray=False)


def per_frame_ssim_gray(real: Tensor, fake: Tensor) -> Tensor:
    """MAGVIT's SSIM of every frame, ``float64 [B, T]``, at most 1.

    Frames mapped to ``[0, 1]`` (clamped), converted to luma ``0.2125 R + 0.7154 G + 0.0721 B``
    (MAGVIT ``rgb2gray``), then the SSIM map (Gaussian window 11, sigma 1.5, k1 0.01, k2 0.03, data range 1,
    valid region) with MAGVIT's clipping of the local statistics: ``var = max(var, 0)`` for both frames and
    ``cov = sign(cov) min(sqrt(var_x var_y), |cov|)``; the frame's value is the map's mean. Source:
    google-research/magvit 05e8cfd, ``videogvt/train_lib/image_quality_metrics.py``, ``ssim`` and
    ``compute_ssim`` (float32 JAX there, float64 here).

    Args:
        real, fake: ``float [B, 3, T, H, W]`` in ``[-1, 1]``, ``H, W >= 11``.

    Raises:
        ValueError: frames smaller than the 11x11 window.
    """
    return _per_frame_ssim(real, fake, gray=True)


def _luma(frames: Tensor) -> Tensor:
    """MAGVIT ``rgb2gray``: ``0.2125 R + 0.7154 G + 0.0721 B``, ``[N, 3, H, W]`` -> ``[N, 1, H, W]``."""
    return 0.2125 * frames[:, 0:1] + 0.7154 * frames[:, 1:2] + 0.0721 * frames[:, 2:3]


def _per_frame_ssim(real: Tensor, fake: Tensor, gray: bool) -> Tensor:
    """Per-frame SSIM ``float64 [B, T]``: RGB (mean over channels, statistics as computed) or MAGVIT's luma with
    clipped statistics."""
    b, _, t, h, w = real.shape
    if min(h, w) < SSIM_WINDOW:
        raise ValueError(f"SSIM needs frames of at least {SSIM_WINDOW}x{SSIM_WINDOW} (its Gaussian window), got {h}x{w}")
    x, y = frames_of(to_unit_range(fake)).double(), frames_of(to_unit_range(real)).double()  # [B * T, 3, H, W]
    if gray:
        x, y = _luma(x), _luma(y)
    rows, cols = _gaussian_band(h, x.device), _gaussian_band(w, x.device)
    values = [_ssim_map(x[i : i + SSIM_CHUNK], y[i : i + SSIM_CHUNK], rows, cols, clip_statistics=gray)
              .mean(dim=(2, 3)).mean(dim=1) for i in range(0, x.shape[0], SSIM_CHUNK)]
    return torch.cat(values).reshape(b, t)


def _gaussian_band(n: int, device: torch.device) -> Tensor:
    """``float64 [n - 10, n]``: row ``i`` holds the normalized 11-tap Gaussian (sigma 1.5) over pixels ``i..i+10``, so
    ``band @ x`` filters ``x`` along that axis at the window positions wholly inside the frame (the valid region)."""
    offsets = torch.arange(SSIM_WINDOW, dtype=torch.float64) - SSIM_BORDER
    window = torch.exp(-offsets**2 / (2 * SSIM_SIGMA**2))
    window = window / window.sum()
    band = torch.stack([F.pad(window, (i, n - SSIM_WINDOW - i)) for i in range(n - SSIM_WINDOW + 1)])
    return band.to(device)


def _ssim_map(x: Tensor, y: Tensor, rows: Tensor, cols: Tensor, clip_statistics: bool = False) -> Tensor:
    """The SSIM map of Wang et al. 2004 (k1 0.01, k2 0.03, data range 1, population statistics) over the valid
    region, ``float64 [N, C, H - 10, W - 10]``, for frames ``float64 [N, C, H, W]`` in ``[0, 1]``.

    ``clip_statistics``: clip the local variances at 0 and the covariance to ``+-sqrt(var_x var_y)`` before the
    formula (MAGVIT ``compute_ssim``)."""
    def blur(z: Tensor) -> Tensor:  # separable Gaussian as two matrix products: float64 BLAS instead of a 2D convolution
        return rows @ z @ cols.T

    c1, c2 = 0.01**2, 0.03**2
    mu_x, mu_y = blur(x), blur(y)
    var_x, var_y, cov = blur(x * x) - mu_x**2, blur(y * y) - mu_y**2, blur(x * y) - mu_x * mu_y
    if clip_statistics:
        var_x, var_y = var_x.clamp_min(0.0), var_y.clamp_min(0.0)
        cov = cov.sign() * torch.minimum((var_x * var_y).sqrt(), cov.abs())
    return ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2))


@register_metric("psnr")
class PSNR(VideoMetric):
    """Mean over videos of the per-video mean of per-frame PSNR (dB, higher is better)."""

    name = "psnr"
    title = "PSNR"
    higher_is_better = True
    unit = "dB"
    digits = 2
    per_frame = True

    def frame_values(self, real: Tensor, fake: Tensor) -> Tensor:
        return per_frame_psnr(real, fake)

    def protocol(self) -> dict[str, Any]:
        return {"psnr": f"per frame on [0,1] RGB, data range 1, mean over frames then videos, capped at {PSNR_CAP_DB:g} dB (torchmetrics)"}


@register_metric("ssim")
class SSIM(VideoMetric):
    """Mean over videos of the per-video mean of per-frame RGB SSIM (higher is better).

    Per frame: the SSIM map of Wang et al. 2004 (IEEE TIP 13(4); Gaussian window
    11, sigma 1.5, k1 0.01, k2 0.03, data range 1 on ``[0, 1]``) averaged over the
    valid region (5-pixel border excluded) and the 3 channels, equal to
    ``skimage.metrics.structural_similarity(x, y, channel_axis=-1,
    gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=1)``
    (TokenBench); see :func:`per_frame_ssim`. MAGVIT's (and so the CoordTok paper's) SSIM is
    the grayscale ``ssim_gray``.

    ``update(real, fake)`` takes ``float32 [B, 3, T, H, W]`` in ``[-1, 1]`` with
    ``H, W >= 11`` (``ValueError`` otherwise); ``last_values`` holds the batch's
    per-video values ``float64 [B]``.
    """

    name = "ssim"
    title = "SSIM"
    higher_is_better = True
    digits = 4
    per_frame = True

    def frame_values(self, real: Tensor, fake: Tensor) -> Tensor:
        return per_frame_ssim(real, fake)

    def protocol(self) -> dict[str, Any]:
        return {"ssim": "per frame, RGB (mean over channels), Gaussian window 11 sigma 1.5, k1 0.01 k2 0.03, data range 1 "
                        "on [0,1], valid region, 5-pixel border excluded, equal to scikit-image "
                        "structural_similarity(gaussian_weights=True, sigma=1.5, use_sample_covariance=False), "
                        "mean over frames then videos (Wang et al. 2004; float64 valid-region SSIM map)"}


@register_metric("ssim_gray")
class SSIMGray(VideoMetric):
    """Mean over videos of the per-video mean of per-frame SSIM on luma, as MAGVIT computes it (higher is better).

    Per frame (:func:`per_frame_ssim_gray`): RGB in ``[0, 1]`` to luma ``0.2125 R + 0.7154 G + 0.0721 B``, the
    SSIM map of Wang et al. 2004 (Gaussian window 11, sigma 1.5, k1 0.01, k2 0.03, data range 1) over the valid
    region with variances clipped at 0 and the covariance clipped to ``+-sqrt(var_x var_y)``, averaged. Source:
    google-research/magvit 05e8cfd, ``videogvt/train_lib/image_quality_metrics.py`` ``ssim``/``compute_ssim``,
    called per frame and averaged over T per video by ``run_models`` (from ``eval_utils.eval_step_get_features``
    with ``is_tf_function=False``). CoordTok supp. B.1 follows MAGVIT's setup.

    ``update(real, fake, n_frames=None)`` takes ``float32 [B, 3, T, H, W]`` in ``[-1, 1]`` with ``H, W >= 11``
    (``ValueError`` otherwise); ``last_values`` holds the batch's per-video values ``float64 [B]``.
    """

    name = "ssim_gray"
    title = "SSIM (gray)"
    higher_is_better = True
    digits = 4
    per_frame = True

    def frame_values(self, real: Tensor, fake: Tensor) -> Tensor:
        return per_frame_ssim_gray(real, fake)

    def protocol(self) -> dict[str, Any]:
        return {"ssim_gray": "per frame, luma 0.2125 R + 0.7154 G + 0.0721 B of [0,1] RGB, Gaussian window 11 sigma 1.5, "
                             "k1 0.01 k2 0.03, data range 1, valid region (5-pixel border excluded), variances clipped "
                             "at 0 and covariance to +-sqrt(var_x var_y), mean over frames then videos (MAGVIT "
                             "google-research/magvit 05e8cfd videogvt/train_lib/image_quality_metrics.py "
                             "compute_ssim; float64 here, float32 there)"}
