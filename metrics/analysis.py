"""Per-video analysis features of CoordTok supplementary B.3.

Both are properties of the real (input) video, used to study where a
tokenizer breaks (quality against dynamics and against frequency). With
``n_frames`` (valid frames per video) both are computed on each video's
valid prefix: padded frames and the pair that joins the last real frame to
padding do not count.

* Dynamics magnitude: for each pair of consecutive frames, the mean over
  pixels of the L2 distance between the two RGB vectors (values in
  ``[0, 255]``), averaged over the pairs, then the natural logarithm
  (Eq. 3). Standardizing to 0-100 across a dataset is a report concern
  (:func:`standardize_0_100`).
* Frequency magnitude (Yan et al., via the supplement): horizontal and
  vertical Sobel filters on each frame (grayscale, ITU-R BT.601 luma of
  ``[0, 255]`` RGB, replicate padding), the gradient magnitude per pixel,
  averaged over pixels and frames.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from harness_core.registry import register_metric
from metrics.base import VideoMetric, frames_of, to_unit_range

_SOBEL_X = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]])
_LUMA_BT601 = torch.tensor([0.299, 0.587, 0.114])


def dynamics_magnitude(video: Tensor) -> Tensor:
    """Log mean consecutive-frame RGB L2 distance, ``float64 [B]``.

    Args:
        video: ``float [B, 3, T, H, W]`` in ``[-1, 1]``, ``T >= 2``.

    Raises:
        ValueError: when the video has fewer than two frames.
    """
    if video.shape[2] < 2:
        raise ValueError(f"dynamics magnitude needs at least 2 frames, got {video.shape[2]}")
    rgb = to_unit_range(video).double() * 255.0
    distance = (rgb[:, :, 1:] - rgb[:, :, :-1]).pow(2).sum(dim=1).sqrt()  # [B, T-1, H, W]
    return distance.mean(dim=(2, 3)).mean(dim=1).clamp_min(1e-12).log()


def frequency_magnitude(video: Tensor) -> Tensor:
    """Mean Sobel gradient magnitude of the grayscale frames, ``float64 [B]`` (``[0, 255]`` scale)."""
    b, _, t = video.shape[:3]
    frames = frames_of(to_unit_range(video).double() * 255.0)
    gray = torch.einsum("nchw,c->nhw", frames, _LUMA_BT601.to(frames)).unsqueeze(1)
    kernels = torch.stack([_SOBEL_X, _SOBEL_X.T]).unsqueeze(1).to(gray)
    grad = F.conv2d(F.pad(gray, (1, 1, 1, 1), mode="replicate"), kernels)
    magnitude = grad.pow(2).sum(dim=1).sqrt()
    return magnitude.mean(dim=(1, 2)).reshape(b, t).mean(dim=1)


def standardize_0_100(values: np.ndarray) -> np.ndarray:
    """Min-max rescale to ``[0, 100]`` (supplementary B.3, Figure 7a); constant input maps to 0."""
    values = np.asarray(values, dtype=np.float64)
    span = values.max() - values.min() if values.size else 0.0
    return np.zeros_like(values) if span == 0 else (values - values.min()) / span * 100.0


@register_metric("dynamics")
class DynamicsMagnitude(VideoMetric):
    """Dynamics magnitude of the real video (supplementary B.3, Eq. 3)."""

    name = "dynamics"
    title = "dynamics"
    higher_is_better = None  # a property of the real video, not a quality
    unit = "log RGB L2"
    digits = 3
    min_frames = 2

    def video_values(self, real: Tensor, fake: Tensor) -> Tensor:
        return dynamics_magnitude(real)

    def protocol(self) -> dict[str, Any]:
        return {"dynamics": "log of mean over consecutive frame pairs of mean per-pixel RGB L2 distance, RGB in [0,255] (CoordTok supp. B.3)"}


@register_metric("frequency")
class FrequencyMagnitude(VideoMetric):
    """Frequency magnitude (mean Sobel gradient magnitude) of the real video (supplementary B.3)."""

    name = "frequency"
    title = "frequency"
    higher_is_better = None  # a property of the real video, not a quality
    unit = "Sobel"
    digits = 2

    def video_values(self, real: Tensor, fake: Tensor) -> Tensor:
        return frequency_magnitude(real)

    def protocol(self) -> dict[str, Any]:
        return {"frequency": "mean Sobel gradient magnitude of BT.601 grayscale frames in [0,255], replicate padding (CoordTok supp. B.3)"}
