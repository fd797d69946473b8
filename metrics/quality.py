"""PSNR and SSIM per frame, averaged per video, then over videos.

Protocol (CoordTok supplementary B.1, MAGVIT setup; docs/research/eval_anchors.md fact 5):
frames are mapped from ``[-1, 1]`` to ``[0, 1]`` and clamped, each frame is
scored on its own with data range 1, and a video's value is the mean over its
frames. The summary is the mean over videos.

SSIM follows the reference definition (Wang, Bovik, Sheikh & Simoncelli, "Image
Quality Assessment: From Error Visibility to Structural Similarity", IEEE TIP
13(4), 2004): Gaussian window of size 11 and sigma 1.5, k1 = 0.01, k2 = 0.03,
population (biased) local statistics, and the SSIM map averaged over the
*valid* region only, i.e. the window positions that lie wholly inside the frame
(a border of (11 - 1) / 2 = 5 pixels excluded). This is ``tf.image.ssim``'s
VALID filtering, which MAGVIT uses, and scikit-image's
``skimage.metrics.structural_similarity(x, y, channel_axis=-1,
gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=1)``,
which TokenBench uses; RGB SSIM is the mean over the three channels. The map
is computed here in float64 over the valid region only, the separable Gaussian
window applied as two band-matrix products (BLAS; CPU 2D convolutions in
float64, as in ``torchmetrics``' SSIM, are about 20x slower, and float32 moves
per-frame values by up to 3e-5). Averaging ``torchmetrics``' whole
reflect-padded map instead (its default, and this harness's protocol before
issue 9) gives a different value.

PSNR is computed by ``torchmetrics`` with a per-frame reduction (not the
pooled-MSE PSNR of torchmetrics' default or of CoordTok's training monitor).
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torchmetrics.functional.image import peak_signal_noise_ratio

from harness.registry import register_metric
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
    b, _, t, h, w = real.shape
    if min(h, w) < SSIM_WINDOW:
        raise ValueError(f"SSIM needs frames of at least {SSIM_WINDOW}x{SSIM_WINDOW} (its Gaussian window), got {h}x{w}")
    x, y = frames_of(to_unit_range(fake)).double(), frames_of(to_unit_range(real)).double()  # [B * T, 3, H, W]
    rows, cols = _gaussian_band(h, x.device), _gaussian_band(w, x.device)
    values = [_ssim_map(x[i : i + SSIM_CHUNK], y[i : i + SSIM_CHUNK], rows, cols).mean(dim=(2, 3)).mean(dim=1)
              for i in range(0, x.shape[0], SSIM_CHUNK)]
    return torch.cat(values).reshape(b, t)


def _gaussian_band(n: int, device: torch.device) -> Tensor:
    """``float64 [n - 10, n]``: row ``i`` holds the normalized 11-tap Gaussian (sigma 1.5) over pixels ``i..i+10``, so
    ``band @ x`` filters ``x`` along that axis at the window positions wholly inside the frame (the valid region)."""
    offsets = torch.arange(SSIM_WINDOW, dtype=torch.float64) - SSIM_BORDER
    window = torch.exp(-offsets**2 / (2 * SSIM_SIGMA**2))
    window = window / window.sum()
    band = torch.stack([F.pad(window, (i, n - SSIM_WINDOW - i)) for i in range(n - SSIM_WINDOW + 1)])
    return band.to(device)


def _ssim_map(x: Tensor, y: Tensor, rows: Tensor, cols: Tensor) -> Tensor:
    """The SSIM map of Wang et al. 2004 (k1 0.01, k2 0.03, data range 1, population statistics) over the valid
    region, ``float64 [N, 3, H - 10, W - 10]``, for frames ``float64 [N, 3, H, W]`` in ``[0, 1]``."""
    def blur(z: Tensor) -> Tensor:  # separable Gaussian as two matrix products: float64 BLAS instead of a 2D convolution
        return rows @ z @ cols.T

    c1, c2 = 0.01**2, 0.03**2
    mu_x, mu_y = blur(x), blur(y)
    var_x, var_y, cov = blur(x * x) - mu_x**2, blur(y * y) - mu_y**2, blur(x * y) - mu_x * mu_y
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
    (TokenBench) and ``tf.image.ssim`` (MAGVIT); see :func:`per_frame_ssim`.

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
