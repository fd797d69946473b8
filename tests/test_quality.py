"""PSNR and SSIM (metrics/quality.py) against independent references, on real frames.

SSIM must equal scikit-image's ``structural_similarity(x, y, channel_axis=-1,
gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=1)``
(TokenBench's call; the reference definition of Wang et al. 2004 with its
valid-region mean) per frame within 1e-5; PSNR must equal
``10 log10(1 / MSE)`` per frame computed in numpy.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.ndimage import gaussian_filter
from torchmetrics.functional.image import structural_similarity_index_measure

from harness.data.decode import decode_frames
from harness.registry import METRICS
from metrics.base import frames_of, to_unit_range
from metrics.quality import PSNR_CAP_DB, SSIM, SSIM_WINDOW, per_frame_psnr, per_frame_ssim

skimage_metrics = pytest.importorskip("skimage.metrics", reason="scikit-image (the `test` extra) is the SSIM reference")

FRAMES = 2
RESOLUTIONS = (64, 128, 256)


def _skimage_ssim(x: np.ndarray, y: np.ndarray) -> float:
    """TokenBench's SSIM of one frame pair ``float64 [H, W, 3]`` in ``[0, 1]``."""
    return float(skimage_metrics.structural_similarity(x, y, channel_axis=-1, gaussian_weights=True, sigma=1.5,
                                                       use_sample_covariance=False, data_range=1))


def _unit_frames(video: torch.Tensor) -> np.ndarray:
    """The frames the metric scores: ``float [B, 3, T, H, W]`` in ``[-1, 1]`` -> ``float64 [B, T, H, W, 3]`` in ``[0, 1]``."""
    b, _, t, h, w = video.shape
    return frames_of(to_unit_range(video)).double().permute(0, 2, 3, 1).reshape(b, t, h, w, 3).numpy()


def _blurred(real: torch.Tensor, seed: int) -> torch.Tensor:
    """A spatial Gaussian blur (sigma 1.2 px) of ``real`` with mild seeded noise, clamped to ``[-1, 1]``."""
    generator = torch.Generator().manual_seed(seed)
    fake = torch.from_numpy(gaussian_filter(real.numpy(), sigma=(0, 0, 0, 1.2, 1.2))).float()
    return (fake + 0.02 * torch.randn(real.shape, generator=generator)).clamp(-1, 1)


def _skimage_per_frame(real: torch.Tensor, fake: torch.Tensor) -> np.ndarray:
    x, y = _unit_frames(real), _unit_frames(fake)
    return np.array([[_skimage_ssim(x[b, t], y[b, t]) for t in range(real.shape[2])] for b in range(real.shape[0])])


@pytest.fixture(scope="module", params=RESOLUTIONS, ids=lambda r: f"{r}px")
def pairs(request, sample_paths):
    """Real clips ``float32 [3, 3, T, R, R]`` in ``[-1, 1]`` (one per sample video) and two reconstructions:
    seeded Gaussian noise (sigma 0.1 on [-1, 1]) and a spatial Gaussian blur (sigma 1.2 px) with mild noise."""
    resolution = request.param
    clips = np.stack([decode_frames(p, start=8, num_frames=FRAMES, resolution=resolution) for p in sample_paths])
    real = torch.from_numpy(clips).float().div(127.5).sub(1.0).permute(0, 4, 1, 2, 3).contiguous()
    generator = torch.Generator().manual_seed(1234 + resolution)
    noisy = (real + 0.1 * torch.randn(real.shape, generator=generator)).clamp(-1, 1)
    return real, {"noise": noisy, "blur": _blurred(real, seed=4321 + resolution)}


def test_ssim_equals_skimage_on_real_frames(pairs):
    real, fakes = pairs
    for kind, fake in fakes.items():
        ours = per_frame_ssim(real, fake)
        assert ours.dtype == torch.float64 and ours.shape == real.shape[:1] + real.shape[2:3]
        expected = _skimage_per_frame(real, fake)
        diff = np.abs(ours.numpy() - expected).max()
        assert diff < 1e-5, f"{kind} at {real.shape[-1]}px: max |SSIM - skimage| {diff:.2e}"
        assert (expected > 0.05).all() and (expected < 0.999).all()  # a real, non-trivial comparison


def test_ssim_is_not_the_reflect_padded_mean(sample_videos):
    """The whole-frame mean of torchmetrics' reflect-padded map (the old protocol) misses skimage; the valid region does not."""
    real = sample_videos[:, :, :2]
    fake = _blurred(real, seed=7)
    x, y = frames_of(to_unit_range(fake)).double(), frames_of(to_unit_range(real)).double()
    padded = structural_similarity_index_measure(x, y, gaussian_kernel=True, sigma=1.5, kernel_size=11, data_range=1.0,
                                                 reduction="none").reshape(real.shape[0], real.shape[2]).numpy()
    expected = _skimage_per_frame(real, fake)
    assert np.abs(per_frame_ssim(real, fake).numpy() - expected).max() < 1e-5
    assert np.abs(padded - expected).max() > 1e-4


def test_ssim_on_non_square_frames_crops_both_axes(sample_videos):
    real = sample_videos[:, :, :2, :23, :40]
    generator = torch.Generator().manual_seed(8)
    fake = (real + 0.1 * torch.randn(real.shape, generator=generator)).clamp(-1, 1)
    assert np.abs(per_frame_ssim(real, fake).numpy() - _skimage_per_frame(real, fake)).max() < 1e-5


def test_ssim_identity_small_frames_and_protocol(sample_videos):
    real = sample_videos[:2, :, :4]
    assert torch.allclose(per_frame_ssim(real, real), torch.ones(2, 4, dtype=torch.float64), atol=1e-12)
    small = real[..., : SSIM_WINDOW - 1, :]
    with pytest.raises(ValueError, match="at least 11x11"):
        per_frame_ssim(small, small)
    assert per_frame_ssim(real[..., :SSIM_WINDOW, :SSIM_WINDOW], real.flip(2)[..., :SSIM_WINDOW, :SSIM_WINDOW]).shape == (2, 4)
    metric = METRICS.create("ssim")
    assert isinstance(metric, SSIM)
    metric.update(real, real.flip(2))
    assert torch.allclose(metric.last_values, per_frame_ssim(real, real.flip(2)).mean(dim=1))
    text = metric.protocol()["ssim"]
    assert "valid region, 5-pixel border excluded" in text
    assert "structural_similarity(gaussian_weights=True, sigma=1.5, use_sample_covariance=False)" in text


def test_psnr_equals_numpy_formula(pairs):
    real, fakes = pairs
    x = _unit_frames(real)
    for kind, fake in fakes.items():
        y = _unit_frames(fake)
        mse = ((x - y) ** 2).mean(axis=(2, 3, 4))  # [B, T]
        expected = 10.0 * np.log10(1.0 / mse)
        ours = per_frame_psnr(real, fake)
        assert ours.dtype == torch.float64
        # 1e-5 dB: torchmetrics converts ln to log10 with a float32 constant (10 / ln 10 to ~5e-8 relative, ~1e-6 dB here)
        assert np.abs(ours.numpy() - expected).max() < 1e-5, f"{kind}: max |d PSNR| {np.abs(ours.numpy() - expected).max():.2e}"
    capped = per_frame_psnr(real, real)
    assert torch.equal(capped, torch.full_like(capped, PSNR_CAP_DB))
