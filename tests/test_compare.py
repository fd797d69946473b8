"""``harness compare`` on folders of real videos: against itself (FVD 0, PSNR at its cap) and against a noised copy."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import av
import numpy as np
import pytest

from harness.compare import CompareError, add_parser, main, match_videos, run_compare
from metrics.quality import PSNR_CAP_DB


def write_video(path: Path, frames: np.ndarray, fps: int = 8) -> None:
    """Write ``uint8 [T, H, W, 3]`` losslessly (FFV1, bgr0) with PyAV."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream("ffv1", rate=fps)
        stream.height, stream.width = frames.shape[1:3]
        stream.pix_fmt = "bgr0"
        for frame in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24").reformat(format="bgr0")))
        container.mux(stream.encode())


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """Two real 16-frame 64x64 clips (sample videos) and a copy with Gaussian noise (std 20 grey levels)."""
    from harness.data.decode import decode_frames
    from harness.data.samples import sample_video_paths

    root = tmp_path_factory.mktemp("compare")
    real, noisy = root / "real", root / "noisy"
    real.mkdir(), noisy.mkdir()
    rng = np.random.default_rng(0)
    for path in sample_video_paths()[1:]:
        clip = decode_frames(path, start=8, num_frames=16, resolution=64)
        write_video(real / f"{path.stem}.mkv", clip)
        noised = np.clip(clip.astype(np.float64) + rng.normal(0, 20, clip.shape), 0, 255).round().astype(np.uint8)
        write_video(noisy / f"{path.stem}.mkv", noised)
    (noisy / "extra.mkv").write_bytes((noisy / f"{sample_video_paths()[1].stem}.mkv").read_bytes())
    return real, noisy


def test_lossless_writer_round_trips(folders):
    from harness.data.decode import decode_frames
    from harness.data.samples import sample_video_paths

    real, _ = folders
    path = sample_video_paths()[1]
    assert np.array_equal(decode_frames(real / f"{path.stem}.mkv"), decode_frames(path, start=8, num_frames=16, resolution=64))


def test_against_itself_fvd_zero_and_psnr_at_cap(folders, tmp_path, capsys):
    real, _ = folders
    out = tmp_path / "self.json"
    result = run_compare(real, real, "fvd_16f,psnr,ssim,lpips", out=out)
    metrics = result["metrics"]
    assert result["num_videos"] == 2 and metrics["fvd_16f_n"] == 2
    assert metrics["fvd_16f"] == pytest.approx(0.0, abs=1e-6)
    assert metrics["psnr"] == PSNR_CAP_DB and metrics["ssim"] == pytest.approx(1.0, abs=1e-6)
    assert metrics["lpips"] == pytest.approx(0.0, abs=1e-6)
    saved = json.loads(out.read_text())
    assert saved["metrics"] == pytest.approx(metrics)
    assert saved["protocol"]["fvd_16f"]["protocol"] == "fvd_16f" and len(saved["protocol"]["fvd_16f"]["weights_sha256"]) == 64
    assert "lpips" in saved["protocol"] and saved["protocol"]["compare"]["matching"].startswith("file name")
    printed = capsys.readouterr().out
    assert "fvd_16f" in printed and "not comparable" in printed


def test_against_noised_copy_positive_fvd(folders):
    real, noisy = folders
    result = run_compare(real, noisy, ["fvd_16f", "psnr"], show=False)
    assert result["metrics"]["fvd_16f"] > 1.0
    assert 15 < result["metrics"]["psnr"] < 30  # std 20 grey levels: about 22 dB
    assert [row["video"] for row in result["per_video"]] == ["bikes", "carphone_pristine"]
    assert result["unmatched_reconstructions"] == ["extra"]


def test_command_line(folders, tmp_path, capsys):
    """The sub-command as ``python -m harness`` mounts it (``add_parser``), and ``python -m harness.compare``."""
    real, noisy = folders
    parser = argparse.ArgumentParser(prog="harness")
    add_parser(parser.add_subparsers(dest="command", required=True))
    out = tmp_path / "cli.json"
    args = parser.parse_args(["compare", str(real), str(noisy), "--metrics", "psnr,ssim", "--frames", "4", "--out", str(out)])
    assert args.func(args) == 0
    saved = json.loads(out.read_text())
    assert saved["num_videos"] == 2 and all(row["frames"] == 4 for row in saved["per_video"])
    assert set(saved["metrics"]) == {"psnr", "psnr_n", "ssim", "ssim_n"}
    assert main([str(noisy), str(real), "--metrics", "psnr"]) == 2  # "extra" has no reconstruction
    assert "no reconstruction" in capsys.readouterr().err


def test_errors_name_the_problem(folders, tmp_path):
    real, _ = folders
    with pytest.raises(CompareError, match="no videos"):
        match_videos(real, tmp_path)
    with pytest.raises(CompareError, match="unknown metrics"):
        run_compare(real, real, "fvd_17f", show=False)


def test_temporal_metrics_and_boundaries_from_the_command_line(folders, tmp_path):
    """The temporal metrics are registered metrics: compare scores them; ``--boundaries`` feeds the jump metrics,
    and the per-frame values of PSNR come back under ``per_frame``."""
    real, noisy = folders
    out = tmp_path / "temporal.json"
    assert main([str(real), str(real), "--metrics", "psnr,tlp,tof,warp_error,tdiff,psnr_jump,tdiff_jump",
                 "--boundaries", "8", "--out", str(out)]) == 0
    itself = json.loads(out.read_text())
    assert itself["protocol"]["compare"]["boundaries"] == [8] and itself["protocol"]["psnr_jump"]["boundaries"] == [8]
    for name in ("tlp", "tof", "tdiff", "psnr_jump", "tdiff_jump"):
        assert itself["metrics"][name] == 0.0, name  # a video against itself
    assert itself["protocol"]["tof"]["flow"]["method"] == "farneback"
    assert len(itself["per_frame"]) == 2 * 16 and set(itself["per_frame"][0]) == {"video", "frame", "psnr"}
    noised = run_compare(real, noisy, "tdiff,tdiff_jump", boundaries=[8], show=False)
    assert noised["metrics"]["tdiff"] > 0.01 and noised["protocol"]["tdiff_jump"]["boundaries"] == [8]
    with pytest.raises(SystemExit):
        main([str(real), str(real), "--boundaries", "eight"])
