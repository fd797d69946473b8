"""PSNR and SSIM (metrics/quality.py) against independent references, on real frames.

SSIM must equal scikit-image's ``structural_similarity(x, y, channel_axis=-1,
gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=1)``
(TokenBench's call; the reference definition of Wang et al. 2004 with its
valid-region mean) per frame within 1e-5; ``ssim_gray`` must equal MAGVIT's
``compute_ssim`` on ``rgb2gray`` frames, written here in float64 with
``scipy.signal.convolve2d``, within 1e-6; PSNR must equal
``10 log10(1 / MSE)`` per frame computed in numpy.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.ndimage import gaussian_filter
from scipy.signal import convolve2d
from torchmetrics.functional.image import structural_similarity_index_measure

from harness.data.decode import decode_frames
from harness_core.registry import METRICS
from metrics.base import frames_of, to_unit_range
from metrics.quality import PSNR_CAP_DB, SSIM, SSIM_WINDOW, SSIMGray, per_frame_psnr, per_frame_ssim, per_frame_ssim_gray

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


def _magvit_ssim(x: np.ndarray, y: np.ndarray) -> float:
    """MAGVIT's SSIM of one frame pair ``float64 [H, W, 3]`` in ``[0, 1]``, written from its definition
    (google-research/magvit 05e8cfd, ``videogvt/train_lib/image_quality_metrics.py`` ``ssim`` -> ``compute_ssim``):
    ``rgb2gray``, a normalized 11-tap Gaussian (sigma 1.5) convolved 'valid' along the width then the height,
    variances clipped at 0, covariance clipped to ``+-sqrt(var_x var_y)``, mean of the map."""
    def gray(frame: np.ndarray) -> np.ndarray:
        return 0.2125 * frame[..., 0] + 0.7154 * frame[..., 1] + 0.0721 * frame[..., 2]

    taps = np.exp(-0.5 * ((np.arange(11) - 5) / 1.5) ** 2)
    taps /= taps.sum()

    def blur(z: np.ndarray) -> np.ndarray:
        return convolve2d(convolve2d(z, taps[None, :], mode="valid"), taps[:, None], mode="valid")

    a, b = gray(x), gray(y)
    mu_a, mu_b = blur(a), blur(b)
    var_a = np.maximum(0.0, blur(a * a) - mu_a * mu_a)
    var_b = np.maximum(0.0, blur(b * b) - mu_b * mu_b)
    cov = blur(a * b) - mu_a * mu_b
    cov = np.sign(cov) * np.minimum(np.sqrt(var_a * var_b), np.abs(cov))
    c1, c2 = 0.01**2, 0.03**2
    ssim_map = (2 * mu_a * mu_b + c1) * (2 * cov + c2) / ((mu_a * mu_a + mu_b * mu_b + c1) * (var_a + var_b + c2))
    return float(ssim_map.mean())


def test_ssim_gray_equals_magvit_formula_on_real_frames(pairs):
    real, fakes = pairs
    x = _unit_frames(real)
    for kind, fake in fakes.items():
        y = _unit_frames(fake)
        expected = np.array([[_magvit_ssim(x[b, t], y[b, t]) for t in range(real.shape[2])] for b in range(real.shape[0])])
        ours = per_frame_ssim_gray(real, fake)
        assert ours.dtype == torch.float64 and ours.shape == expected.shape
        diff = np.abs(ours.numpy() - expected).max()
        assert diff < 1e-6, f"{kind} at {real.shape[-1]}px: max |SSIM gray - MAGVIT formula| {diff:.2e}"
        assert (expected > 0.05).all() and (expected < 0.999).all()  # a real, non-trivial comparison
        # a different definition from the RGB one: not a relabelled `ssim`
        assert np.abs(ours.numpy() - per_frame_ssim(real, fake).numpy()).max() > 1e-3


def test_ssim_gray_metric_averages_frames_and_records_its_protocol(sample_videos):
    real = sample_videos[:, :, :4]
    fake = _blurred(real, seed=11)
    metric = METRICS.create("ssim_gray")
    assert isinstance(metric, SSIMGray) and metric.per_frame and metric.higher_is_better
    metric.update(real, fake)
    frames = per_frame_ssim_gray(real, fake)
    assert torch.equal(metric.last_frame_values, frames) and torch.equal(metric.last_values, frames.mean(dim=1))
    assert metric.compute()["ssim_gray"] == pytest.approx(float(frames.mean(dim=1).mean()), rel=1e-12)
    text = metric.protocol()["ssim_gray"]
    assert "0.2125 R + 0.7154 G + 0.0721 B" in text and "clipped" in text and "magvit" in text
    assert torch.allclose(per_frame_ssim_gray(real, real), torch.ones(3, 4, dtype=torch.float64), atol=1e-12)
