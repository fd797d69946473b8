"""Valid-frame counts (``n_frames``) through every metric, on real clips.

A batch in which one video's last frames are replaced by garbage, with
``n_frames`` saying so, must give exactly the values of the clean prefix for
every registered per-video metric (per-frame, temporal, boundary-jump and
analysis metrics), NaN per-frame values at the padded frames, and per-frame
rows of the :class:`harness.scoring.Scorer` for valid frames only. The FVD
protocols must select exactly the clips of the clean prefixes (chunks wholly in
the valid frames, 16-frame clips of videos with at least 16 valid frames, whole
clips without padding), feed I3D exactly their features, and record the videos
they skipped. ``n_frames`` equal to ``T`` everywhere gives the values of
``n_frames=None`` bit for bit.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from harness_core.registry import METRICS
from harness.scoring import Scorer
from metrics.fvd import FVD16, FVD128, FVD16Chunks, i3d_logits

#: every registered per-video metric (set-level FVD is tested through its clips and features below)
PER_VIDEO = ("psnr", "ssim", "ssim_gray", "lpips", "lpips_vgg", "tlp", "tof", "warp_error", "warp_error_real",
             "tdiff", "psnr_jump", "tdiff_jump", "dynamics", "frequency")
#: the padded video of the batch and its valid frames (of 16)
PADDED, VALID = 1, 10
#: a boundary inside the valid prefix, so the boundary-jump metrics measure something on it
BOUNDARIES = [8]


def _metric(name: str):
    extra = {"boundaries": BOUNDARIES} if getattr(METRICS.get(name), "uses_boundaries", False) else {}
    return METRICS.create(name, **extra)


def _garbage(video: torch.Tensor, start: int, seed: int) -> torch.Tensor:
    """``video`` with its frames from ``start`` on replaced by seeded uniform noise in ``[-1, 1]``."""
    out = video.clone()
    generator = torch.Generator().manual_seed(seed)
    out[:, :, start:] = torch.rand(out[:, :, start:].shape, generator=generator) * 2 - 1
    return out


@pytest.fixture(scope="module")
def batch(sample_videos):
    """Real clips ``[3, 3, 16, 64, 64]``, a degraded reconstruction (blur + noise), the same pair with video 1's
    frames 10.. replaced by garbage, and ``n_frames = [16, 10, 16]``."""
    real = sample_videos
    generator = torch.Generator().manual_seed(5)
    fake = (torch.nn.functional.avg_pool3d(real, (1, 3, 3), 1, (0, 1, 1), count_include_pad=False)
            + 0.03 * torch.randn(real.shape, generator=generator)).clamp(-1, 1)
    padded_real, padded_fake = real.clone(), fake.clone()
    padded_real[PADDED : PADDED + 1] = _garbage(real[PADDED : PADDED + 1], VALID, seed=1)
    padded_fake[PADDED : PADDED + 1] = _garbage(fake[PADDED : PADDED + 1], VALID, seed=2)
    n_frames = torch.tensor([16, VALID, 16], dtype=torch.int64)
    return real, fake, padded_real, padded_fake, n_frames


@pytest.mark.parametrize("name", PER_VIDEO)
def test_padded_frames_give_the_values_of_the_clean_prefix(batch, name):
    real, fake, padded_real, padded_fake, n_frames = batch
    metric = _metric(name)
    metric.update(padded_real, padded_fake, n_frames=n_frames)
    got, got_frames = metric.last_values, metric.last_frame_values
    full = [0, 2]
    reference = _metric(name)
    reference.update(real[full], fake[full])
    expected_full, frames_full = reference.last_values, reference.last_frame_values
    reference.update(real[PADDED : PADDED + 1, :, :VALID], fake[PADDED : PADDED + 1, :, :VALID])
    expected_prefix, frames_prefix = reference.last_values, reference.last_frame_values
    assert torch.equal(got[full], expected_full) and torch.equal(got[PADDED : PADDED + 1], expected_prefix), name
    assert metric.compute()[name] == pytest.approx(float(torch.cat([expected_full, expected_prefix]).mean()), rel=1e-12)
    if metric.per_frame:
        assert got_frames.shape == (3, 16)
        assert torch.equal(got_frames[full], frames_full)
        assert torch.equal(got_frames[PADDED, :VALID], frames_prefix[0])
        assert torch.isnan(got_frames[PADDED, VALID:]).all()
    # the garbage is visible without n_frames (the test can fail) ...
    blind = _metric(name)
    blind.update(padded_real, padded_fake)
    assert not math.isclose(float(blind.last_values[PADDED]), float(expected_prefix[0]), rel_tol=1e-6), name
    # ... and n_frames == T everywhere is n_frames=None, bit for bit
    whole = _metric(name)
    whole.update(padded_real, padded_fake, n_frames=torch.full((3,), 16))
    assert torch.equal(whole.last_values, blind.last_values), name


def test_n_frames_is_checked(batch):
    real, fake, *_ = batch
    metric = METRICS.create("psnr")
    for bad, what in ((torch.tensor([16.0, 10.0, 16.0]), "integer tensor"), (torch.tensor([16, 10]), r"\[B=3\]"),
                      (torch.tensor([16, 0, 16]), r"\[1, T=16\]"), (torch.tensor([17, 10, 16]), r"\[1, T=16\]")):
        with pytest.raises(ValueError, match=what):
            metric.update(real, fake, n_frames=bad)
    with pytest.raises(ValueError, match="tdiff needs at least 2 frames, got 1"):
        METRICS.create("tdiff").update(real, fake, n_frames=torch.tensor([16, 1, 16]))


def test_scorer_writes_frame_rows_for_valid_frames_only(batch):
    real, fake, padded_real, padded_fake, n_frames = batch
    scorer = Scorer(["psnr", "ssim_gray", "tdiff"])
    rows = [{"clip": i} for i in range(3)]
    scorer.update(padded_real, padded_fake, rows, n_frames=n_frames)
    summary, _ = scorer.compute()
    assert [sum(1 for r in scorer.frame_rows if r["clip"] == i) for i in range(3)] == [16, VALID, 16]
    assert all(math.isfinite(r["psnr"]) and math.isfinite(r["ssim_gray"]) for r in scorer.frame_rows)
    clean = Scorer(["psnr", "ssim_gray", "tdiff"])
    clean.update(real[[0, 2]], fake[[0, 2]], [{"clip": 0}, {"clip": 2}])
    clean.update(real[1:2, :, :VALID], fake[1:2, :, :VALID], [{"clip": 1}])
    by_clip = {r["clip"]: r for r in clean.rows}
    assert [r for r in scorer.rows] == [by_clip[i] for i in range(3)]
    expected_frames = sorted(clean.frame_rows, key=lambda r: (r["clip"], r["frame"]))
    assert sorted(scorer.frame_rows, key=lambda r: (r["clip"], r["frame"])) == expected_frames


# ------------------------------------------------------------------------------------------------ FVD


@pytest.fixture(scope="module")
def long_videos(sample_paths) -> torch.Tensor:
    """Two real 32-frame 64x64 clips ``float32 [2, 3, 32, 64, 64]`` in ``[-1, 1]``."""
    from harness.data.decode import decode_frames, to_model_range

    return to_model_range(np.stack([decode_frames(p, start=8, num_frames=32, resolution=64) for p in sample_paths[:2]]))


def test_fvd_protocols_select_the_clips_of_the_clean_prefixes():
    video = torch.arange(40, dtype=torch.float32).reshape(1, 1, 40, 1, 1).expand(3, 3, 40, 4, 4) / 40
    video = video + torch.arange(3, dtype=torch.float32).reshape(3, 1, 1, 1, 1)  # tell the videos apart
    n_frames = torch.tensor([40, 20, 12])
    chunks = FVD16Chunks().clips(video, n_frames)
    expected = torch.cat([FVD16Chunks().clips(video[b : b + 1, :, : int(n)]) for b, n in enumerate(n_frames) if n >= 16])
    assert chunks.shape == (3, 3, 16, 4, 4) and torch.equal(chunks, expected)  # 2 chunks of video 0, 1 of video 1
    assert torch.equal(FVD16().clips(video, n_frames), video[:2, :, :16])
    assert torch.equal(FVD128().clips(video, n_frames), video[:1])
    assert torch.equal(FVD16Chunks().clips(video, torch.full((3,), 40)), FVD16Chunks().clips(video))


def test_fvd_features_and_skipped_videos_with_n_frames(long_videos):
    """I3D sees exactly the clean prefixes' chunks (the feature sums equal those of their logits bit for bit);
    videos without a whole sample are counted in the protocol; whole-clip FVD keeps only unpadded videos."""
    padded = _garbage(long_videos, 20, seed=3)
    padded[0] = long_videos[0]
    n_frames = torch.tensor([32, 20])
    chunks = FVD16Chunks()
    chunks.update(real=padded, n_frames=n_frames)
    features = i3d_logits(torch.cat([FVD16Chunks().clips(long_videos[:1]), long_videos[1:, :, :16]]))
    reference = FVD16Chunks()
    reference.update_features(real=features)
    for state in ("real_sum", "real_outer", "real_n"):
        assert torch.equal(getattr(chunks, state), getattr(reference, state)), state
    assert chunks.protocol()["fvd_16f_chunks"]["skipped_videos"] == {"fake": 0, "real": 0}

    whole = FVD128()
    whole.update_real(padded, n_frames=n_frames)
    assert int(whole.real_n.sum()) == 1
    assert torch.equal(whole.real_sum[0], i3d_logits(long_videos[:1])[0])
    whole.update_features(fake=i3d_logits(long_videos[:1]))
    proto = whole.protocol()["fvd_128f"]
    assert proto["skipped_videos"] == {"fake": 0, "real": 1} and proto["clip_frames"] == [32]
    # the title names the frames scored, not the paper's 128 (issue: "rFVD 128f" on 32-frame clips)
    assert FVD128().scored_title() == "rFVD 128f" and whole.scored_title() == "rFVD 32f"
    assert proto["title"] == "rFVD 32f" and proto["generation_title"] == "gFVD 32f"
    assert "n_frames == T" in proto["valid_frames"]
    first = FVD16()
    first.update_fake(padded[:, :, :16], n_frames=torch.tensor([16, 12]))
    assert int(first.fake_n.sum()) == 1 and first.protocol()["fvd_16f"]["skipped_videos"] == {"fake": 1, "real": 0}
    assert first.protocol()["fvd_16f"]["title"] == "rFVD 16f"
