"""Temporal-fidelity metrics (metrics/temporal.py) on the real sample clips.

Corruptions of the real clips, each compared with a static Gaussian blur of the
same mean per-frame PSNR (per video, within 0.5 dB; the blur's sigma and the
flicker's amplitude are found by bisection):

* ``swap``: consecutive frames swapped within pairs (0<->1, 2<->3, ...);
* ``flicker``: an alternating +/- brightness offset on every frame.

Every per-frame metric is blind to the order of frames; the temporal metrics are not.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from harness_core.errors import WeightsError
from harness_core.registry import METRICS
from metrics.base import frames_of
from metrics.lpips import lpips_distance
from metrics.quality import per_frame_psnr
from metrics.temporal import (FARNEBACK_DEFAULTS, TOF, TDiff, TLP, EWarp, EWarpReal, boundary_jump,
                              optical_flow, per_frame_curves, warp)

TEMPORAL = ("tlp", "tof", "warp_error", "tdiff")
#: "clearly worse": at least this factor above the matched blur on every video
CLEARLY_WORSE = 1.5
BLUR_RADIUS = 15  # Gaussian taps within 3 sigma, at most 15 px (sigma up to 5 px)


def _swap_pairs(video: torch.Tensor) -> torch.Tensor:
    out = video.clone()
    t = video.shape[2] - video.shape[2] % 2
    out[:, :, 0:t:2], out[:, :, 1:t:2] = video[:, :, 1:t:2], video[:, :, 0:t:2]
    return out


def _blur(video: torch.Tensor, sigma: float) -> torch.Tensor:
    """The same Gaussian blur on every frame (separable, reflect padding)."""
    b, c, t, h, w = video.shape
    pad = min(math.ceil(3 * sigma), BLUR_RADIUS)
    x = torch.arange(-pad, pad + 1, dtype=video.dtype)
    kernel = torch.exp(-0.5 * (x / sigma) ** 2)
    kernel = (kernel / kernel.sum()).view(1, 1, 1, -1)
    frames = video.permute(0, 2, 1, 3, 4).reshape(b * t * c, 1, h, w)
    frames = F.conv2d(F.pad(frames, (pad, pad, 0, 0), mode="reflect"), kernel)
    frames = F.conv2d(F.pad(frames, (0, 0, pad, pad), mode="reflect"), kernel.transpose(2, 3))
    return frames.reshape(b, t, c, h, w).permute(0, 2, 1, 3, 4).contiguous()


def _flicker(video: torch.Tensor, amplitude: float) -> torch.Tensor:
    """Frame t gets ``+amplitude`` (even t) or ``-amplitude`` (odd t) on the [0, 1] scale, clamped."""
    sign = torch.tensor([1.0 if i % 2 == 0 else -1.0 for i in range(video.shape[2])]).view(1, 1, -1, 1, 1)
    return (video + 2.0 * amplitude * sign).clamp(-1.0, 1.0)


def _mean_psnr(real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
    return per_frame_psnr(real, fake).mean(dim=1)


def _quick_psnr(real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
    """Mean per-frame PSNR (dB, [0, 1] RGB) per video: per_frame_psnr's value without its overhead (bisection only)."""
    mse = ((fake - real) / 2).clamp(-1, 1).pow(2).mean(dim=(1, 3, 4))  # both clamped to [-1, 1] already
    return (-10 * torch.log10(mse.double())).mean(dim=1)


def _match_psnr(real: torch.Tensor, make, target_db: float, lo: float, hi: float, steps: int = 12) -> torch.Tensor:
    """``make(real, p)`` with ``p`` in ``[lo, hi]`` bisected (log scale) so that its mean PSNR is ``target_db``."""
    for _ in range(steps):
        mid = math.sqrt(lo * hi)
        if float(_quick_psnr(real, make(real, mid))) > target_db:
            lo = mid  # still too good: stronger corruption
        else:
            hi = mid
    return make(real, math.sqrt(lo * hi))


@pytest.fixture(scope="module")
def variants(sample_videos):
    """``{"real", "swap", "flicker", "blur"}`` of the 3 real clips; blur and flicker matched to swap's PSNR per video."""
    real = sample_videos
    swap = _swap_pairs(real)
    target = _mean_psnr(real, swap)
    blur = torch.cat([_match_psnr(real[i:i + 1], _blur, float(target[i]), 0.2, 5.0) for i in range(len(real))])
    flicker = torch.cat([_match_psnr(real[i:i + 1], _flicker, float(target[i]), 1e-3, 0.5) for i in range(len(real))])
    return {"real": real, "swap": swap, "flicker": flicker, "blur": blur}


@pytest.fixture(scope="module")
def scores(variants):
    """Per-video values ``{metric: {variant: float64 [3]}}`` through ``update``/``last_values``, as the engine reads them."""
    out = {}
    for name in (*TEMPORAL, "warp_error_real"):
        metric = METRICS.create(name)
        out[name] = {}
        for variant, fake in variants.items():
            if name == "warp_error_real" and variant not in ("real", "swap"):
                continue  # measures the real video only: two variants show it
            metric.reset()
            metric.update(variants["real"], fake)
            out[name][variant] = metric.last_values.clone()
    return out


def test_corruptions_match_the_blur_in_psnr(variants):
    real = variants["real"]
    psnr = {k: _mean_psnr(real, v) for k, v in variants.items() if k != "real"}
    assert torch.all(psnr["swap"] < 40), psnr  # the corruptions are visible per frame
    for corruption in ("swap", "flicker"):
        gap = (psnr[corruption] - psnr["blur"]).abs()
        assert torch.all(gap < 0.5), f"{corruption}: mean per-frame PSNR {psnr[corruption]} vs blur {psnr['blur']} dB"


@pytest.mark.parametrize("name", ["tlp", "tof", "tdiff"])
def test_zero_for_a_video_against_itself(scores, name):
    assert torch.allclose(scores[name]["real"], torch.zeros(3, dtype=torch.float64), atol=1e-9, rtol=0), scores[name]["real"]


def test_warp_error_of_a_video_against_itself_is_its_floor(scores):
    floor = scores["warp_error_real"]["real"]
    assert torch.all(floor > 0)
    assert torch.equal(scores["warp_error"]["real"], floor)
    assert torch.equal(scores["warp_error_real"]["swap"], floor)  # the floor depends on the real video only


@pytest.mark.parametrize("name", TEMPORAL)
def test_swapped_frames_score_clearly_worse_than_matched_blur(scores, name):
    swap, blur = scores[name]["swap"], scores[name]["blur"]
    assert torch.all(swap > CLEARLY_WORSE * blur), f"{name}: swap {swap.tolist()} vs blur {blur.tolist()}"


_FLICKER_BLIND = ("known blind spot: an additive brightness offset hardly changes Farneback flow (its polynomial "
                  "expansion puts a uniform offset into the constant term) or LPIPS between consecutive frames; on "
                  "these clips tOF of flicker is 7-56x below the matched blur's and tLP is below it on one clip "
                  "(docs/temporal.md, blind spots)")


@pytest.mark.parametrize("name", [
    pytest.param("tlp", marks=pytest.mark.xfail(strict=True, raises=AssertionError, reason=_FLICKER_BLIND)),
    pytest.param("tof", marks=pytest.mark.xfail(strict=True, raises=AssertionError, reason=_FLICKER_BLIND)),
    "warp_error",
    "tdiff",
])
def test_flicker_scores_clearly_worse_than_matched_blur(scores, name):
    flicker, blur = scores[name]["flicker"], scores[name]["blur"]
    assert torch.all(flicker > CLEARLY_WORSE * blur), f"{name}: flicker {flicker.tolist()} vs blur {blur.tolist()}"


def test_tof_is_blind_to_additive_flicker(scores):
    """The documented blind spot, pinned: flicker's tOF is tiny (pixels) while the blur's is not."""
    assert torch.all(scores["tof"]["flicker"] < 0.05)
    assert torch.all(scores["tof"]["flicker"] < 0.3 * scores["tof"]["blur"])


def test_update_compute_over_batches(sample_videos, scores, variants):
    metric = TDiff()
    metric.update(sample_videos[:2], variants["swap"][:2])
    metric.update(sample_videos[2:], variants["swap"][2:])
    out = metric.compute()
    assert out["tdiff_n"] == 3
    assert out["tdiff"] == pytest.approx(float(scores["tdiff"]["swap"].mean()), rel=1e-12)
    with pytest.raises(ValueError, match="at least 2 frames"):
        metric.update(sample_videos[:, :, :1], sample_videos[:, :, :1])


def test_class_attributes_and_protocols():
    for name in (*TEMPORAL, "warp_error_real"):
        cls = METRICS.get(name)
        assert cls.name == name and cls.per_video is True and cls.higher_is_better is False
        assert isinstance(cls.title, str) and cls.title and isinstance(cls.unit, str) and isinstance(cls.digits, int)
        protocol = METRICS.create(name).protocol()
        assert list(protocol) == [name] and protocol[name]["method"]
    assert TOF.unit == "px" and TOF.title == "tOF" and TLP.title == "tLP"

    for cls in (TOF, EWarp, EWarpReal):
        flow = cls().protocol()[cls.name]["flow"]
        assert flow["method"] == "farneback" and "OpenCV" in flow["implementation"]
        assert {k: flow[k] for k in FARNEBACK_DEFAULTS} == FARNEBACK_DEFAULTS
        assert FARNEBACK_DEFAULTS == {"pyr_scale": 0.5, "levels": 3, "winsize": 15, "iterations": 3, "poly_n": 5,
                                      "poly_sigma": 1.2, "flags": 0}  # TecoGAN metrics.py
    custom = TOF(winsize=21, levels=2, norm="l1").protocol()["tof"]
    assert custom["flow"]["winsize"] == 21 and custom["flow"]["levels"] == 2 and custom["norm"] == "l1"
    assert EWarp(motion_boundaries=True).protocol()["warp_error"]["motion_boundaries"]
    assert TLP().protocol()["tlp"]["lpips_net"] == "alex"
    with pytest.raises(ValueError, match="window"):
        TOF(window=3)  # neither a Farneback parameter nor a torchmetrics option
    with pytest.raises(ValueError, match="raft_weights given"):
        TOF(flow="farneback", raft_weights="x.pth")
    with pytest.raises(ValueError, match="norm"):
        TOF(norm="l2")


def test_flow_direction_and_warping_on_a_real_pan(sample_videos):
    """A 48x48 window panning right over a real frame: content moves 1 px left per frame."""
    image = sample_videos[1, :, 0]
    pan = torch.stack([image[:, 8:56, 4 + t:52 + t] for t in range(6)], dim=1)[None]  # [1, 3, 6, 48, 48]
    prev, cur = pan[0, :, :-1].transpose(0, 1), pan[0, :, 1:].transpose(0, 1)
    back = optical_flow(cur, prev)  # t -> t-1: frame t at x is frame t-1 at x + 1
    interior = back[:, :, 8:-8, 8:-8].mean(dim=(0, 2, 3))
    assert interior[0] == pytest.approx(1.0, abs=0.25) and abs(float(interior[1])) < 0.1, interior
    assert back.dtype == torch.float32 and back.shape == (5, 2, 48, 48)
    # an integer flow makes warp an exact shift
    shifted = warp(prev, torch.tensor([1.0, 0.0]).view(1, 2, 1, 1).expand(5, 2, 48, 48))
    assert torch.allclose(shifted[..., :-1], cur[..., :-1], atol=1e-5)
    # the warping error of the pan is far below the unwarped frame difference
    metric = EWarpReal()
    metric.update(pan, pan)
    unwarped = ((pan[:, :, 1:] - pan[:, :, :-1]) / 2).pow(2).mean()
    assert float(metric.last_values[0]) < 0.2 * float(unwarped)


def test_raft_flow_from_a_weights_file(tmp_path, sample_videos):
    from torchvision.models.optical_flow import raft_small

    torch.manual_seed(0)
    path = tmp_path / "raft_small_random.pth"
    torch.save(raft_small(weights=None).state_dict(), path)  # random weights: checks the plumbing, not flow quality
    metric = TOF(raft_weights=path, raft_iters=1)
    clip = sample_videos[:1, :, :2]  # one pair (64x64: upsampled to 128 inside)
    metric.update(clip, clip.flip(2))
    assert torch.isfinite(metric.last_values).all()
    flow = metric.protocol()["tof"]["flow"]
    assert flow["method"] == "raft" and flow["raft_model"] == "small" and flow["raft_iters"] == 1
    assert flow["raft_weights"] == path.name and len(flow["weights_sha256"]) == 64
    assert optical_flow(clip[:, :, 0], clip[:, :, 1], "raft", raft_weights=path, raft_iters=1).shape == (1, 2, 64, 64)

    with pytest.raises(WeightsError, match="missing.pth"):
        TOF(flow="raft", raft_weights=tmp_path / "missing.pth")
    (tmp_path / "garbage.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(WeightsError, match="garbage.pth"):
        TOF(flow="raft", raft_weights=tmp_path / "garbage.pth")
    with pytest.raises(WeightsError, match="raft_large"):
        TOF(flow="raft", raft_weights=path, raft_model="large")  # small weights, large model
    with pytest.raises(ValueError, match="raft_weights"):
        optical_flow(clip[:, :, 0], clip[:, :, 1], "raft")


@pytest.fixture(scope="module")
def seam(sample_videos):
    """A reconstruction with mild noise everywhere (``uniform``) and a clip seam at frame 8 (frames 7 and 8 blurred)."""
    generator = torch.Generator().manual_seed(0)
    uniform = (sample_videos + 0.02 * torch.randn(sample_videos.shape, generator=generator)).clamp(-1, 1)
    seam = uniform.clone()
    seam[:, :, 7:9] = _blur(uniform[:, :, 7:9], 1.5)
    return {"uniform": uniform, "seam": seam, "curves": per_frame_curves(sample_videos, seam)}


def test_per_frame_curves(sample_videos, seam):
    curves = seam["curves"]
    assert set(curves) == {"psnr", "ssim", "lpips"}
    for values in curves.values():
        assert values.shape == (3, 16) and values.dtype == torch.float64
    assert torch.equal(curves["psnr"], per_frame_psnr(sample_videos, seam["seam"]))
    assert torch.all(curves["ssim"] <= 1.0)
    lpips = METRICS.create("lpips")
    lpips.update(sample_videos, seam["seam"])
    assert torch.allclose(curves["lpips"].mean(dim=1), lpips.last_values, atol=1e-6)


def test_boundary_jump_finds_a_discontinuity_at_frame_8(sample_videos, seam):
    curves = seam["curves"]
    jump = boundary_jump(curves["lpips"], [8])
    assert torch.all(jump > 0.05), jump  # error up at the seam
    assert torch.all(boundary_jump(curves["psnr"], [8]) < -3.0)  # quality down, dB
    assert torch.equal(boundary_jump(curves["lpips"], []), torch.zeros(3, dtype=torch.float64))
    assert torch.equal(boundary_jump(curves["lpips"], [0, 16]), torch.zeros(3, dtype=torch.float64))  # not between frames
    # the same noise without a seam: no jump
    flat = lpips_distance(frames_of(sample_videos), frames_of(seam["uniform"])).double().reshape(3, 16)
    assert torch.all(boundary_jump(flat, [8]).abs() < 0.1 * jump)
    # exact arithmetic: frames 3, 4 and 7, 8 adjacent (boundaries 4 and 8), the others interior
    ramp = torch.arange(10, dtype=torch.float64).expand(2, 10)
    expected = (3 + 4 + 7 + 8) / 4 - (0 + 1 + 2 + 5 + 6 + 9) / 6
    assert torch.allclose(boundary_jump(ramp, [4, 8]), torch.full((2,), expected, dtype=torch.float64))
    assert torch.isnan(boundary_jump(ramp[:, :2], [1])).all()


# --------------------------------------------------------------------------- boundary jumps through the engine


@pytest.fixture(scope="module")
def long_clips(sample_paths) -> torch.Tensor:
    """Three real 32-frame 32x32 clips ``float32 [3, 3, 32, 32, 32]`` in ``[-1, 1]`` (two 16-frame clips each)."""
    from harness.data.decode import decode_frames, to_model_range

    return to_model_range(np.stack([decode_frames(p, start=8, num_frames=32, resolution=32) for p in sample_paths]))


def test_boundary_jump_sees_a_seam_at_frame_16_only_for_a_16_frame_clip_tokenizer(long_clips):
    """Perfect reconstructions but for frame 16: a 16-frame-clip tokenizer (boundary 16) reports the jump,
    a whole-video tokenizer (no boundary) reports none; the boundaries are recorded in the protocol."""
    from harness_core.registry import create_tokenizer
    from harness.scoring import Scorer

    seam = long_clips.clone()
    noise = 0.3 * torch.randn(seam[:, :, 16].shape, generator=torch.Generator().manual_seed(0))
    seam[:, :, 16] = (seam[:, :, 16] + noise).clamp(-1, 1)
    chunk_tokenizer = create_tokenizer("grid3d", size="tiny", channels=8)  # chunk_frames 16 (supp. B.1)
    whole_video = create_tokenizer("coordtok", size="tiny", frames=32, resolution=32)
    results = {}
    for name, tokenizer in (("grid3d", chunk_tokenizer), ("coordtok", whole_video)):
        scorer = Scorer(["psnr", "psnr_jump", "tdiff_jump"], boundaries=tokenizer.temporal_boundaries(32), label=name)
        scorer.update(long_clips, seam, [{"clip": str(i)} for i in range(3)])
        results[name] = scorer.compute()
    summary, protocol = results["grid3d"]
    assert protocol["psnr_jump"]["boundaries"] == [16] and protocol["tdiff_jump"]["boundaries"] == [16]
    assert summary["psnr_jump"] < -20.0  # frames 15 | 16 average far below the 100 dB cap of the other frames
    assert summary["tdiff_jump"] > 0.05
    summary, protocol = results["coordtok"]
    assert protocol["psnr_jump"]["boundaries"] == []
    assert summary["psnr_jump"] == 0.0 and summary["tdiff_jump"] == 0.0
    assert results["grid3d"][0]["psnr"] == summary["psnr"]  # the same frames, the same per-frame PSNR


def test_videoflextok_boundaries_are_its_chunk_starts():
    """17-frame chunks overlapping by one frame: chunk i > 0 adds frames 16 i + 1 .. 16 i + 16."""
    from harness_core.registry import create_tokenizer

    vae = {"name": "grid3d", "kwargs": {"size": "tiny", "channels": 8, "causal": True, "latent_channels": 16, "chunk_frames": 17}}
    model = create_tokenizer("videoflextok", size="tiny", vae=vae, n_max=4, enc_depth=1, enc_dim=32, enc_heads=2,
                             dec_depth=1, dec_dim=32, dec_heads=2)
    assert model.temporal_boundaries(17) == [] and model.temporal_boundaries(32) == [17]
    assert model.temporal_boundaries(81) == [17, 33, 49, 65]


def test_per_frame_metrics_give_the_scorer_their_frame_values(sample_videos, seam):
    """PSNR, SSIM and LPIPS are means of their per-frame values; the scorer keeps those as the per-frame curves."""
    from harness.scoring import Scorer

    scorer = Scorer(["psnr", "ssim", "lpips", "tdiff"], label="curves")
    scorer.update(sample_videos, seam["seam"], [{"clip": str(i)} for i in range(3)])
    assert len(scorer.frame_rows) == 3 * 16 and set(scorer.frame_rows[0]) == {"clip", "frame", "psnr", "ssim", "lpips"}
    curves = seam["curves"]
    for key in ("psnr", "ssim", "lpips"):
        table = torch.tensor([[r[key] for r in scorer.frame_rows if r["clip"] == str(i)] for i in range(3)], dtype=torch.float64)
        assert torch.equal(table, curves[key])
        assert torch.allclose(table.mean(dim=1), torch.tensor([r[key] for r in scorer.rows], dtype=torch.float64), rtol=0, atol=1e-12)


@pytest.mark.slow
def test_a_suite_writes_per_frame_curves_and_the_boundary_jump_of_its_tokenizer(tmp_path):
    """Through the engine: the runner passes the tokenizer's boundaries (16 for grid3d's 16-frame clips on
    32-frame videos), writes ``per_frame.csv``, and the leaderboard shows the temporal table with directions."""
    import json

    import pandas as pd
    import yaml

    from harness.config import load_suite
    from harness.runner import SuiteRunner

    suite = {
        "name": "temporal", "seed": 0, "output_dir": str(tmp_path / "results"),
        "data": {"dataset": "samples", "resolution": 32, "frames": 32},
        "train": {"steps": 1, "batch_size": 2},
        "evaluate": {"metrics": ["psnr", "ssim", "tdiff", "psnr_jump", "tdiff_jump"], "batch_size": 3},
        "tokenizers": [{"id": "grid3d_tiny", "name": "grid3d", "kwargs": {"size": "tiny", "channels": 8}}],
    }
    (tmp_path / "suite.yaml").write_text(yaml.safe_dump(suite))
    results = SuiteRunner(load_suite(tmp_path / "suite.yaml"), show_progress=False).run()
    record = json.loads((results / "grid3d_tiny" / "metrics.json").read_text())
    assert record["temporal_boundaries"] == [16] and record["per_frame"] == "per_frame.csv"
    assert record["protocol"]["metrics"]["psnr_jump"]["boundaries"] == [16]
    frames = pd.read_csv(results / "grid3d_tiny" / "per_frame.csv")
    per_video = pd.read_csv(results / "grid3d_tiny" / "per_video.csv")
    assert list(frames.columns) == ["clip", "frame", "psnr", "ssim"] and len(frames) == 32 * len(per_video)
    means = frames.groupby("clip", sort=False)["psnr"].mean()
    assert np.allclose(means.loc[per_video["clip"]].to_numpy(), per_video["psnr"].to_numpy(), rtol=0, atol=1e-9)
    board = (results / "leaderboard.md").read_text()
    temporal = board[board.index("## Temporal fidelity"):board.index("## Costs")]
    assert "PSNR jump ↑" in temporal and "tDiff jump ↓" in temporal and "tDiff ↓" in temporal
    assert "PSNR jump" not in board[:board.index("## Temporal fidelity")]  # not in the main table
    assert (results / "per_frame_curves.png").is_file() and "## Per-frame quality" in (results / "report.md").read_text()
    times = pd.read_csv(results / "stage_times.csv").set_index("tokenizer")  # the run's wall time per stage
    assert list(times.columns) == ["train", "reconstruct", "evaluate", "generate", "report", "total"]
    assert times.loc["grid3d_tiny", "evaluate"] > 0 and times.loc["(suite)", "report"] > 0
