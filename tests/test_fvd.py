"""FVD: identity, symmetry, monotonicity in noise, near-singular statistics, streaming, the real-statistics
cache, and two gloo processes against one. I3D runs on the three real sample clips (module-scoped cache).

Run as a script under torchrun, this file is the distributed worker of
``test_two_processes_equal_one`` (see ``_ddp_worker``).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import REPO, free_port
from metrics.fvd import (FVD16, FVD128, FVD16Chunks, frechet_distance, gaussian_fit, i3d_logits, preprocess,
                         trace_sqrt_product)

NOISE_LEVELS = (0.05, 0.15, 0.4)


@pytest.fixture(scope="module")
def features(sample_videos):
    """I3D logits ``float64 [3, 400]`` of the real clips and of noised copies (one entry per noise std)."""
    out = {0.0: i3d_logits(FVD16().clips(sample_videos))}
    gen = torch.Generator().manual_seed(0)
    for sigma in NOISE_LEVELS:
        noisy = (sample_videos + sigma * torch.randn(sample_videos.shape, generator=gen)).clamp(-1, 1)
        out[sigma] = i3d_logits(FVD16().clips(noisy))
    return out


def fvd_of(real: torch.Tensor, fake: torch.Tensor, **kwargs) -> dict:
    metric = FVD16(**kwargs)
    metric.update_features(real=real, fake=fake)
    return metric.compute()


def _scale(real: torch.Tensor, fake: torch.Tensor) -> float:
    """Trace of both covariances: the natural scale of an FVD between the two sets."""
    traces = [np.trace(gaussian_fit(f.sum(0).numpy(), (f.T @ f).numpy(), len(f))[1]) for f in (real, fake)]
    return float(sum(traces))


def test_self_distance_is_zero_through_the_video_path(sample_videos, features):
    metric = FVD16()
    metric.update_real(sample_videos)  # I3D on the videos, as the runner calls it
    metric.update_features(fake=features[0.0])
    result = metric.compute()
    assert result["fvd_16f_n"] == 3 and result["fvd_16f_n_real"] == 3
    assert abs(result["fvd_16f"]) <= 1e-6 * _scale(features[0.0], features[0.0])
    real = features[0.0].numpy()
    mu, sigma = gaussian_fit(real.sum(0), real.T @ real, 3)
    raw, _ = frechet_distance(mu, sigma, mu, sigma, clamp=False)
    assert abs(raw) <= 1e-6 * 2 * np.trace(sigma)


@pytest.fixture(scope="module")
def noise_fvds(features):
    """FVD of the real clips against each noised copy."""
    return [fvd_of(features[0.0], features[sigma])["fvd_16f"] for sigma in NOISE_LEVELS]


def test_symmetric(features, noise_fvds):
    reverse = fvd_of(features[0.15], features[0.0])["fvd_16f"]
    assert noise_fvds[1] > 0 and reverse == pytest.approx(noise_fvds[1], rel=1e-9)


def test_rises_monotonically_with_noise(noise_fvds):
    assert all(np.isfinite(noise_fvds)) and noise_fvds[0] > 0
    assert noise_fvds == sorted(noise_fvds) and len(set(noise_fvds)) == len(noise_fvds), noise_fvds


def test_near_singular_covariances_stay_finite_real_and_nonnegative(features):
    real = features[0.0]  # 3 samples in 400 dimensions: rank-2 covariance
    rng = np.random.default_rng(0)
    cases = {
        "rank-deficient, nearly identical sets": (real, real + 1e-7 * torch.from_numpy(rng.standard_normal(real.shape))),
        "one sample each (zero covariance)": (real[:1], real[1:2]),
        "duplicated rows": (real[[0, 0, 1, 1]], real[[0, 1, 1, 1]]),
        "huge scale": (real * 1e6, features[0.4] * 1e6),
    }
    for name, (a, b) in cases.items():
        value = fvd_of(a, b)["fvd_16f"]
        assert isinstance(value, float) and np.isfinite(value) and value >= 0.0, (name, value)
    assert fvd_of(*cases["rank-deficient, nearly identical sets"])["fvd_16f"] <= 1e-6 * _scale(real, real)
    # commuting rank-deficient covariances with a known answer: Tr sqrtm(A B) = sum sqrt(lambda_i mu_i);
    # rounding gives the product tiny negative eigenvalues, the case where sqrtm turns complex
    q, _ = np.linalg.qr(rng.standard_normal((50, 50)))
    lam, mu = np.zeros(50), np.zeros(50)
    lam[:10], mu[5:15] = rng.uniform(1, 100, 10), rng.uniform(1, 100, 10)
    a, b = (q * lam) @ q.T, (q * mu) @ q.T
    trace, _ = trace_sqrt_product(a, b)
    assert trace == pytest.approx(float(np.sqrt(lam * mu).sum()), rel=1e-6)
    value, _ = frechet_distance(np.zeros(50), a, np.zeros(50), a, clamp=False)
    assert abs(value) <= 1e-9 * np.trace(a)


def test_sqrtm_and_eigenvalue_paths_agree_on_well_conditioned_statistics():
    rng = np.random.default_rng(1)
    x, y = rng.standard_normal((600, 20)), rng.standard_normal((600, 20)) @ rng.standard_normal((20, 20))
    s1, s2 = np.cov(x.T), np.cov(y.T)
    trace, method = trace_sqrt_product(s1, s2)
    assert method == "sqrtm"
    vals = np.linalg.eigvals(s1 @ s2)
    assert trace == pytest.approx(float(np.sqrt(np.clip(vals.real, 0, None)).sum()), rel=1e-9)


def test_streaming_batches_groups_and_covariance(features):
    real = torch.cat([features[0.0], features[0.05]])
    fake = torch.cat([features[0.15], features[0.4]])
    whole = fvd_of(real, fake)
    metric = FVD16()
    for i in range(len(real)):
        metric.update_features(real=real[i : i + 1], fake=fake[i : i + 1])
    assert metric.compute()["fvd_16f"] == pytest.approx(whole["fvd_16f"], rel=1e-9)
    grouped = fvd_of(real, fake, groups=2)
    assert grouped["fvd_16f"] == pytest.approx(whole["fvd_16f"], rel=1e-9)
    assert grouped["fvd_16f_std"] >= 0 and grouped["fvd_16f_mean"] > 0
    x = np.random.default_rng(2).standard_normal((7, 5))
    for unbiased, ddof in ((False, 0), (True, 1)):
        mu, sigma = gaussian_fit(x.sum(0), x.T @ x, 7, unbiased=unbiased)
        assert np.allclose(mu, x.mean(0)) and np.allclose(sigma, np.cov(x.T, ddof=ddof))
    assert FVD16(covariance="unbiased").protocol()["fvd_16f"]["covariance"].startswith("unbiased")
    with pytest.raises(ValueError, match="covariance"):
        FVD16(covariance="sample")
    with pytest.raises(RuntimeError, match="no fake samples"):
        empty = FVD16()
        empty.update_features(real=real)
        empty.compute()


def test_clip_protocols():
    video = torch.arange(40, dtype=torch.float32).reshape(1, 1, 40, 1, 1).expand(2, 3, 40, 4, 4) / 40
    assert torch.equal(FVD16().clips(video), video[:, :, :16])
    chunks = FVD16Chunks().clips(video)
    assert chunks.shape == (4, 3, 16, 4, 4)  # 2 videos x 2 full chunks; frames 32..39 dropped
    assert torch.equal(chunks[1], video[0, :, 16:32]) and torch.equal(chunks[2], video[1, :, :16])
    assert FVD128().clips(video).shape[2] == 40
    with pytest.raises(ValueError, match="at least 16 frames"):
        FVD16().clips(video[:, :, :12])
    with pytest.raises(ValueError, match="at least 9 frames"):
        FVD128().clips(video[:, :, :8])
    protocol = FVD16Chunks().protocol()["fvd_16f_chunks"]
    assert protocol["covariance"].startswith("population") and len(protocol["weights_sha256"]) == 64


def test_preprocess_quantises_resizes_and_scales():
    video = torch.linspace(-1, 1, 2 * 3 * 2 * 8 * 8).reshape(2, 3, 2, 8, 8)
    out = preprocess(video)
    assert out.shape == (2, 3, 2, 224, 224) and out.dtype == torch.float32
    assert out.min() >= -1 and out.max() <= 1
    same = preprocess(torch.full((1, 3, 1, 224, 224), 0.3))  # no resize: only uint8 quantisation
    assert torch.allclose(same, torch.full_like(same, round(1.3 * 127.5) / 127.5 - 1))


def test_real_statistics_cache(features, tmp_path):
    key = {"dataset": "samples", "clips": 3}
    first = FVD16()
    assert first.use_real_cache(key, tmp_path) is False
    first.update_features(real=features[0.0], fake=features[0.4])
    expected = first.compute()["fvd_16f"]
    path = first.save_real_cache()
    assert path.is_file() and [p.name for p in tmp_path.iterdir()] == [path.name]  # no temporary file left
    second = FVD16()
    assert second.use_real_cache(key, tmp_path) is True and second.real_is_cached
    second.update_features(real=features[0.05], fake=features[0.4])  # real batches are skipped
    assert second.compute()["fvd_16f"] == pytest.approx(expected, rel=1e-12)
    second.reset()  # the cached real statistics survive a reset
    second.update_features(fake=features[0.4])
    assert second.compute()["fvd_16f"] == pytest.approx(expected, rel=1e-12)
    assert FVD16().use_real_cache({"dataset": "other"}, tmp_path) is False
    assert FVD16(groups=2).use_real_cache(key, tmp_path) is False


@pytest.mark.slow
def test_two_processes_equal_one(features, tmp_path):
    real = torch.cat([features[0.0], features[0.05], features[0.15]])  # 9 samples
    fake = torch.cat([features[0.4], features[0.15], features[0.0]])
    torch.save({"real": real, "fake": fake}, tmp_path / "features.pt")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={free_port()}",
           str(Path(__file__).resolve()), str(tmp_path)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}
    result = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=600, env=env)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    report = json.loads((tmp_path / "ddp_report.json").read_text())
    assert report["world_size"] == 2 and report["backend"] == "gloo" and report["local_n"] == [5, 4]
    single = fvd_of(real, fake)
    assert report["fvd_16f_n"] == 9 and report["fvd_16f_n_real"] == 9
    assert report["cache_hits"] == {"shared": [True, True], "node_local": [False, False]}
    assert report["fvd_16f"] == pytest.approx(single["fvd_16f"], rel=1e-9, abs=1e-9)
    # the real statistics written by the distributed run are those of the whole set
    cached = FVD16()
    assert cached.use_real_cache({"test": "ddp"}, tmp_path / "cache")
    cached.update_features(fake=fake)
    assert cached.compute()["fvd_16f"] == pytest.approx(single["fvd_16f"], rel=1e-9, abs=1e-9)


def _ddp_worker(folder: Path) -> None:
    """Each rank adds an uneven shard of the features; torchmetrics sums the states over gloo."""
    import torch.distributed as dist
    from accelerate import PartialState

    PartialState(cpu=True)  # the process group as the harness starts it (gloo on the CPU), which its Scorer gathers over
    rank, world = dist.get_rank(), dist.get_world_size()
    data = torch.load(folder / "features.pt", weights_only=True)
    shard = slice(0, 5) if rank == 0 else slice(5, None)
    metric = FVD16()
    metric.use_real_cache({"test": "ddp"}, folder / "cache")
    metric.update_features(real=data["real"][shard], fake=data["fake"][shard])
    result = metric.compute()
    metric.save_real_cache()
    sizes = [None] * world
    dist.all_gather_object(sizes, int(data["real"][shard].shape[0]))
    # a Scorer uses a cache only when every process finds the file: each node may have its own cache folder
    from harness.scoring import Scorer

    hits = {}
    for case, cache in (("shared", folder / "cache"), ("node_local", folder / ("cache" if rank == 0 else "empty"))):
        hits[case] = [None] * world
        dist.all_gather_object(hits[case], Scorer(["fvd_16f"], synchronize=True).use_real_cache({"test": "ddp"}, cache))
    if rank == 0:
        report = {"world_size": world, "backend": dist.get_backend(), "local_n": sizes, "cache_hits": hits, **result}
        (folder / "ddp_report.json").write_text(json.dumps(report))
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    _ddp_worker(Path(sys.argv[1]))


def test_reports_title_a_set_metric_by_the_frames_it_scored():
    """A leaderboard column takes the title the metric recorded for what it scored (rFVD 32f for whole 32-frame
    clips), for reconstruction and generation; rows that scored different frame counts show both."""
    from harness.records import GenerationResult, Protocol, RunRecord
    from harness.reports.data import ReportData

    def record(row: str, frames: int) -> RunRecord:
        protocol = {"fvd_128f": {"title": f"rFVD {frames}f", "generation_title": f"gFVD {frames}f"}, "psnr": "per frame"}
        rec = RunRecord(row=row, tokenizer_id=row, tokenizer="t", metrics={"fvd_128f": 10.0, "fvd_128f_n": 300, "psnr": 30.0},
                        metric_refs=[{"name": "fvd_128f", "metric": "fvd_128f"}, {"name": "psnr", "metric": "psnr"}],
                        protocol=Protocol(metrics=protocol))
        rec.generation = GenerationResult({"gfvd_128f": 50.0, "gfvd_128f_n": 300, "gfvd_protocol": protocol})
        return rec

    titles = {spec.key: spec.header for spec in ReportData.of([record("a", 32)]).columns}
    assert titles == {"psnr": "PSNR ↑", "fvd_128f": "rFVD 32f ↓", "gfvd_128f": "gFVD 32f ↓"}
    mixed = {spec.key: spec.title for spec in ReportData.of([record("a", 32), record("b", 128), record("c", 32)]).columns}
    assert mixed["fvd_128f"] == "rFVD 32f / rFVD 128f" and mixed["gfvd_128f"] == "gFVD 32f / gFVD 128f"
    legacy = record("old", 128)
    legacy.protocol = Protocol(metrics={"fvd_128f": {"clip": "whole video"}})  # written before titles were recorded
    assert {s.key: s.title for s in ReportData.of([legacy]).columns}["fvd_128f"] == "rFVD 128f"
