"""PSNR and SSIM per frame, averaged per video, then over videos.

Protocol (CoordTok supplementary B.1, MAGVIT setup; eval_anchors.md fact 5):
frames are mapped from ``[-1, 1]`` to ``[0, 1]`` and clamped, each frame is
scored on its own with data range 1, and a video's value is the mean over its
frames. The summary is the mean over videos. SSIM is computed on RGB with a
Gaussian window of size 11 and sigma 1.5 (k1 = 0.01, k2 = 0.03) by
``torchmetrics``; PSNR by ``torchmetrics`` with a per-frame reduction (not the
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
    """RGB SSIM of every frame, ``float64 [B, T]`` (Gaussian window 11, sigma 1.5, data range 1)."""
    b, _, t = real.shape[:3]
    x, y = frames_of(to_unit_range(fake)).double(), frames_of(to_unit_range(real)).double()
    ssim = structural_similarity_index_measure(
        x, y, gaussian_kernel=True, sigma=1.5, kernel_size=11, data_range=1.0, k1=0.01, k2=0.03, reduction="none"
    )
    return ssim.reshape(b, t)


@register_metric("psnr")
class PSNR(VideoMetric):
    """Mean over videos of the per-video mean of per-frame PSNR (dB, higher is better)."""

    name = "psnr"
    higher_is_better = True

    def video_values(self, real: Tensor, fake: Tensor) -> Tensor:
        return per_frame_psnr(real, fake).mean(dim=1)

    def protocol(self) -> dict[str, Any]:
        return {"psnr": f"per frame on [0,1] RGB, data range 1, mean over frames then videos, capped at {PSNR_CAP_DB:g} dB (torchmetrics)"}


@register_metric("ssim")
class SSIM(VideoMetric):
    """Mean over videos of the per-video mean of per-frame RGB SSIM (higher is better)."""

    name = "ssim"
    higher_is_better = True

    def video_values(self, real: Tensor, fake: Tensor) -> Tensor:
        return per_frame_ssim(real, fake).mean(dim=1)

    def protocol(self) -> dict[str, Any]:
        return {"ssim": "per frame, RGB, Gaussian window 11 sigma 1.5, k1 0.01 k2 0.03, data range 1 on [0,1], mean over frames then videos (torchmetrics)"}
