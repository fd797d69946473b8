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
is computed by ``torchmetrics`` (``return_full_image=True``) in float64 and
cropped; averaging torchmetrics' whole reflect-padded map instead (its
default, and this harness's protocol before) gives a different value.

PSNR is computed by ``torchmetrics`` with a per-frame reduction (not the
pooled-MSE PSNR of torchmetrics' default or of CoordTok's training monitor).
"""
from __future__ import annotations

from typing import Any

from torch import Tensor
from torchmetrics.functional.image import peak_signal_noise_ratio, structural_similarity_index_measure

from harness.registry import register_metric
from metrics.base import VideoMetric, frames_of, to_unit_range

#: identical frames have infinite PSNR; a frame's PSNR is capped here (dB), as common_metrics_on_video_quality does
PSNR_CAP_DB = 100.0
#: SSIM Gaussian window side and standard deviation (Wang et al. 2004)
SSIM_WINDOW = 11
SSIM_SIGMA = 1.5
#: pixels on each side excluded from the SSIM mean: window positions not wholly inside the frame
SSIM_BORDER = (SSIM_WINDOW - 1) // 2


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
    x, y = frames_of(to_unit_range(fake)).double(), frames_of(to_unit_range(real)).double()
    _, ssim_map = structural_similarity_index_measure(
        x, y, gaussian_kernel=True, sigma=SSIM_SIGMA, kernel_size=SSIM_WINDOW, data_range=1.0, k1=0.01, k2=0.03,
        reduction="none", return_full_image=True,
    )
    border = SSIM_BORDER
    valid = ssim_map[..., border:h - border, border:w - border]  # [B * T, 3, H - 10, W - 10]
    return valid.mean(dim=(2, 3)).mean(dim=1).reshape(b, t)


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
                        "mean over frames then videos (Wang et al. 2004; SSIM map by torchmetrics)"}
