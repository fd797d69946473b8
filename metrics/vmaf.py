"""VMAF (Netflix's Video Multi-method Assessment Fusion) per frame, averaged per video: ``vmaf`` and ``vmaf_neg``.

Computed by ``vmaf-torch`` (PyPI ``vmaf-torch`` 1.1.0: VMAF v0.6.1 in PyTorch, its SVM model embedded; features
VIF at 4 scales, ADM, motion2), batched on the metric's device:

* **colour**: each frame is quantized to uint8 RGB levels (``round((x + 1) * 127.5)``, clamped: a saved video) and
  converted to luma exactly as FFmpeg's default ``rgb24 -> yuv420p`` conversion does (swscale, BT.601 matrix,
  limited range 16-235, its 15-bit fixed-point coefficients and rounding, :func:`luma_bt601`): equal to swscale's
  ``Y`` for all 2^24 RGB colours (checked against PyAV's and the imageio-ffmpeg binary's swscale). Only luma enters
  VMAF. A float BT.601 formula rounded differs on 0.4% of colours by one level, which moved per-frame VMAF by up to
  1.1 at 64 px.
* **model**: v0.6.1 (``vmaf_v0.6.1`` of libvmaf), scores clipped to ``[0, 100]`` as libvmaf does by default;
  ``vmaf_neg`` is v0.6.1 NEG ("no enhancement gain": VIF and ADM enhancement gain limits 1, libvmaf
  ``vmaf_v0.6.1neg``). Motion: frame 0 has ``motion2 = 0``, as in libvmaf. So a video scored against itself gets
  per frame the model's prediction for perfect VIF and ADM at its motion, clipped at 100; frame 0 (no motion) gets
  97.428.
* **one correction to vmaf-torch**: its ADM computes the excluded border of each wavelet band as
  ``floor(0.1 n - 0.5)``, libvmaf (C) as the truncation ``(int)(0.1 n - 0.5)``; they differ when a band is narrower
  than 5 coefficients (frames of 64 px or less at the fourth scale), where vmaf-torch then pools over a 6x6 instead
  of a 4x4 area in the ADM's constant term and scored 0.12-0.17 VMAF above libvmaf per video at 64 px.
  :class:`LibvmafBorderADM` replaces that term; with it the per-video score equals libvmaf's float model
  (``vmaf_float_v0.6.1``) within 0.002 at 32, 64 and 256 px on the sample clips (docs/codecs.md).
* **parity**: against libvmaf's default ``vmaf_v0.6.1`` (integer fixed-point features) through FFmpeg's
  ``libvmaf`` filter, on the three 16-frame 64x64 sample clips H.264-coded at CRF 23 and 40: per frame within 0.19,
  per video within 0.036 (NEG: 0.17, 0.014; ``tests/test_vmaf.py``). libvmaf's integer and float paths themselves differ by up to 0.12
  per video at 256 px and by up to 7 at 32 px, where the integer features break down; the value here follows the
  float path.
* **resolution**: VMAF is computed at the evaluation resolution (no upscaling). v0.6.1 was trained on 1080p video
  viewed at three picture heights; at 64-256 px the absolute values are not those a viewer would give the clip on
  a display, but upscaling to 1080p would score the upscaler along with the tokenizer, so the harness compares
  tokenizers and codecs with one another at their native evaluation size, like PSNR and SSIM. Frames must be at
  least 17x17 (vmaf-torch's reflection padding of the coarsest VIF scale).

``update(real, fake)`` takes ``float32 [B, 3, T, H, W]`` in ``[-1, 1]``; ``last_values`` holds per-video values
``float64 [B]`` and ``last_frame_values`` ``float64 [B, T]``.
"""
from __future__ import annotations

import functools
import math
from typing import Any

import torch
from torch import Tensor
from vmaf_torch import ADM, VMAF as VMAFModule

from harness_core.registry import register_metric
from metrics.base import VideoMetric, frames_of

#: swscale's fixed-point precision for RGB -> YUV (``RGB2YUV_SHIFT``, libswscale) and its BT.601 limited-range luma
#: coefficients ``round(k * 219 / 255 * 2^15)`` for k = 0.299, 0.587, 0.114
RGB2YUV_SHIFT = 15
LUMA_COEFFICIENTS = tuple(round(k * 219 / 255 * (1 << RGB2YUV_SHIFT)) for k in (0.299, 0.587, 0.114))
#: smallest frame side vmaf-torch can score
MIN_SIDE = 17
#: frames whose VIF and ADM features are computed at once (bounds memory at high resolutions)
FRAMES_PER_BATCH = 64
#: ADM's border factor (libvmaf ``ADM_BORDER_FACTOR``)
ADM_BORDER_FACTOR = 0.1


def luma_bt601(video: Tensor) -> Tensor:
    """Luma of ``float [B, 3, T, H, W]`` videos in ``[-1, 1]`` as FFmpeg's ``rgb24 -> yuv420p`` computes it.

    Frames are first quantized to uint8 levels (round, clamp), then ``Y = (((ry R + gy G + by B + 16 * 2^15 + 2^8)
    >> 9) + 32) >> 6`` with swscale's BT.601 limited-range coefficients (:data:`LUMA_COEFFICIENTS`); integer
    arithmetic on the input's device.

    Returns:
        ``float32 [B * T, 1, H, W]`` with integer values in ``[16, 235]`` (frame-major within each video).
    """
    levels = ((video.detach().float().clamp(-1, 1) + 1.0) * 127.5).round().to(torch.int64)
    rgb = frames_of(levels)  # [B * T, 3, H, W]
    ry, gy, by = LUMA_COEFFICIENTS
    shift = RGB2YUV_SHIFT
    acc = ry * rgb[:, 0:1] + gy * rgb[:, 1:2] + by * rgb[:, 2:3] + (16 << shift) + (1 << (shift - 7))
    return (((acc >> (shift - 6)) + 32) >> 6).to(torch.float32)


def _c_border(n: int) -> int:
    """libvmaf's ADM border: ``(int)(n * ADM_BORDER_FACTOR - 0.5)``, truncated toward zero as C does."""
    return int(n * ADM_BORDER_FACTOR - 0.5)


def _floor_border(n: int) -> int:
    """vmaf-torch's ADM border: ``floor(n * ADM_BORDER_FACTOR - 0.5)``."""
    return math.floor(n * ADM_BORDER_FACTOR - 0.5)


class LibvmafBorderADM(ADM):
    """vmaf-torch's ADM with libvmaf's border for bands narrower than 5 coefficients.

    The border only enters the ADM through the masked coefficients (none either way for such bands) and the
    constant ``3 * cbrt(area / 32)`` added to each scale's numerator and denominator, where ``area`` is the band
    without its border; this replaces vmaf-torch's constant with libvmaf's. Identical to vmaf-torch for bands of 5
    or more coefficients.
    """

    def adm_num_den(self, X_ref: Tensor, X_dst: Tensor) -> tuple[Tensor, Tensor]:
        num, den = super().adm_num_den(X_ref, X_dst)
        height, width = X_ref.shape[-2:]
        corrections = []
        for scale in self.scales:
            band_h, band_w = math.ceil(height / 2 ** (scale + 1)), math.ceil(width / 2 ** (scale + 1))

            def area(border) -> int:
                return (band_h - 2 * border(band_h)) * (band_w - 2 * border(band_w))

            corrections.append(3 * ((area(_c_border) / 32) ** (1 / 3) - (area(_floor_border) / 32) ** (1 / 3)))
        correction = torch.tensor(corrections, dtype=num.dtype, device=num.device)
        return num + correction, den + correction


@functools.lru_cache(maxsize=None)
def vmaf_model(neg: bool, device: str) -> VMAFModule:
    """The v0.6.1 (``neg``: v0.6.1 NEG) model with libvmaf's ADM border, scores clipped to [0, 100], on ``device``
    (one instance per process and device)."""
    model = VMAFModule(temporal_pooling=False, enable_motion=True, clip_score=True, NEG=neg)
    model.adm = LibvmafBorderADM(NEG=neg)
    return model.to(device).eval().requires_grad_(False)


@torch.no_grad()
def per_frame_vmaf(real: Tensor, fake: Tensor, neg: bool = False) -> Tensor:
    """VMAF v0.6.1 (``neg``: NEG) of every frame, ``float64 [B, T]`` in ``[0, 100]``.

    VIF and ADM of all frames in batches of :data:`FRAMES_PER_BATCH`, motion2 of each reference video on its own.

    Args:
        real, fake: ``float [B, 3, T, H, W]`` in ``[-1, 1]`` (reference and distorted), ``H, W >= 17``.

    Raises:
        ValueError: frames smaller than :data:`MIN_SIDE`.
    """
    b, _, t, h, w = real.shape
    if min(h, w) < MIN_SIDE:
        raise ValueError(f"VMAF needs frames of at least {MIN_SIDE}x{MIN_SIDE}, got {h}x{w}")
    model = vmaf_model(neg, str(real.device))
    ref, dist = luma_bt601(real), luma_bt601(fake)
    adm = torch.cat([model.compute_adm_score(r, d) for r, d in zip(ref.split(FRAMES_PER_BATCH), dist.split(FRAMES_PER_BATCH))])
    vif = torch.cat([model.compute_vif_features(r, d) for r, d in zip(ref.split(FRAMES_PER_BATCH), dist.split(FRAMES_PER_BATCH))])
    motion = torch.cat([model.compute_motion2(video) for video in ref.split(t)])
    return model.predict(adm, motion, vif).reshape(b, t).double()


@register_metric("vmaf")
class VMAF(VideoMetric):
    """Mean over videos of the per-video mean of per-frame VMAF v0.6.1 on BT.601 luma (higher is better, 0-100).

    See the module docstring for the colour conversion, the model, the resolution and the libvmaf parity.
    ``update(real, fake)`` takes ``float32 [B, 3, T, H, W]`` in ``[-1, 1]`` with ``H, W >= 17`` (``ValueError``
    otherwise).
    """

    name = "vmaf"
    title = "VMAF"
    higher_is_better = True
    unit = ""
    digits = 2
    per_frame = True
    #: the NEG variant (no enhancement gain)
    neg = False

    def frame_values(self, real: Tensor, fake: Tensor) -> Tensor:
        return per_frame_vmaf(real, fake, neg=self.neg)

    def protocol(self) -> dict[str, Any]:
        import importlib.metadata

        return {self.name: {
            "model": "vmaf_v0.6.1neg" if self.neg else "vmaf_v0.6.1",
            "implementation": f"vmaf-torch {importlib.metadata.version('vmaf-torch')}, float features, libvmaf's ADM border",
            "input": "uint8 RGB levels -> luma by FFmpeg's rgb24->yuv420p (BT.601, limited range, swscale fixed point)",
            "resolution": "the evaluation resolution, no upscaling (v0.6.1 was trained for 1080p viewing)",
            "pooling": "mean of per-frame scores (clipped to [0, 100]) per video, then over videos; motion2 = 0 at frame 0",
        }}


@register_metric("vmaf_neg")
class VMAFNEG(VMAF):
    """VMAF v0.6.1 NEG (no enhancement gain; libvmaf ``vmaf_v0.6.1neg``), same conversion and pooling as ``vmaf``."""

    name = "vmaf_neg"
    title = "VMAF NEG"
    neg = True
