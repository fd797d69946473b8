"""Reports: bootstrap intervals, Pareto fronts, B.3 analysis, gallery, report.md/html, leaderboards across runs.

One tiny real suite (the samples dataset, 16 frames at 32x32, a 2-step grid3d)
is run once through the engine; every report test reads its run folder.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from PIL import Image
from scipy import stats

from harness.config import load_suite
from harness.report import display_frame, leaderboard_rows, load_records, render_leaderboard, sort_rows, write_reports
from harness.reports.browser import chromium_path, decoded_images, screenshot
from harness.reports.gallery import pick_clips
from harness.reports.stats import bootstrap_ci, pareto_front, spearman
from harness.records import RunRecord
from harness.runner import SuiteRunner
from harness_core.errors import ResultsError
from metrics.analysis import standardize_0_100

from conftest import run_cli


@pytest.fixture(scope="module")
def suite_dir(tmp_path_factory) -> Path:
    """Results folder of a tiny real suite: samples, 3 clips per video (9 clips), 16 frames at 32x32, grid3d 2 steps."""
    tmp = tmp_path_factory.mktemp("report_suite")
    suite = {
        "name": "tiny_report", "seed": 0, "output_dir": str(tmp / "results" / "tiny_report"),
        "data": {"dataset": "samples", "resolution": 32, "frames": 16, "eval_clips_per_video": 3},
        "train": {"steps": 2, "batch_size": 2, "checkpoint_every": 2},
        "evaluate": {"metrics": ["psnr", "ssim", "dynamics", "frequency"], "batch_size": 9},
        "tokenizers": [{"id": "grid3d_tiny", "name": "grid3d", "kwargs": {"size": "tiny", "channels": 8}}],
    }
    path = tmp / "suite.yaml"
    path.write_text(yaml.safe_dump(suite))
    return SuiteRunner(load_suite(path), show_progress=False).run()  # ends with write_reports, as `harness run` does


# --------------------------------------------------------------------------- statistics


def test_bootstrap_interval_of_normal_sample_matches_theory():
    rng = np.random.default_rng(123)
    sigma, n = 2.0, 2000
    sample = rng.normal(5.0, sigma, size=n)
    ci = bootstrap_ci(sample, confidence=0.95, resamples=10_000, seed=0)
    expected = 1.959964 * sample.std(ddof=1) / np.sqrt(n)  # normal-theory half-width of the mean
    assert ci.n == n and ci.value == pytest.approx(sample.mean())
    assert ci.low < ci.value < ci.high
    assert ci.half_width == pytest.approx(expected, rel=0.06)
    assert abs((ci.low + ci.high) / 2 - ci.value) < 0.1 * expected  # symmetric for a normal mean
    assert bootstrap_ci(sample, seed=0) == ci  # seeded: reports are reproducible
    assert bootstrap_ci(sample[:1]) == (sample[0], sample[0], sample[0], 1)
    with pytest.raises(ValueError, match="finite"):
        bootstrap_ci([float("nan")])


def test_bootstrap_interval_agrees_with_scipy_percentile_bootstrap():
    sample = np.random.default_rng(7).exponential(1.0, size=40)  # skewed: the percentile interval is not symmetric
    ours = bootstrap_ci(sample, resamples=10_000, seed=1)
    theirs = stats.bootstrap((sample,), np.mean, n_resamples=10_000, method="percentile", confidence_level=0.95,
                             random_state=np.random.default_rng(2)).confidence_interval
    assert ours.low == pytest.approx(theirs.low, abs=0.03) and ours.high == pytest.approx(theirs.high, abs=0.03)


def test_pareto_front_of_known_points():
    tokens = [64, 128, 128, 256, 512, 512]
    psnr = [20.0, 19.0, 23.0, 22.0, 25.0, 25.0]
    assert pareto_front(tokens, psnr).tolist() == [0, 2, 4]
    lpips = [0.30, 0.35, 0.20, 0.25, 0.20, 0.10]
    assert pareto_front(tokens, lpips, lower_better=True).tolist() == [0, 2, 5]
    with pytest.raises(ValueError, match="same length"):
        pareto_front([1, 2], [1.0])


def test_spearman_degenerate_inputs_are_nan():
    assert np.isnan(spearman([1, 2], [3, 4])[0])
    assert np.isnan(spearman([1, 1, 1], [3, 4, 5])[0])
    assert spearman([1, 2, 3, 4], [10, 20, 30, 40])[0] == pytest.approx(1.0)


def test_fvd_with_groups_shows_pooled_value_and_group_mean_std():
    row = {"row": "x", "tokenizer": "grid3d", "tokens_per_video": 64, "pixels_per_token": 4.0, "parameters": 1e6,
           "fvd_16f": 123.45, "fvd_16f_n": 300, "fvd_16f_mean": 130.0, "fvd_16f_std": 4.5, "fvd_16f_groups": 4}
    text = display_frame([row], ["fvd_16f"], extras=False).iloc[0]["rFVD 16f ↓"]
    assert text == "123.5 (N=300); 4 groups: 130.0 ± 4.5"
    assert "not comparable" in display_frame([{**row, "fvd_16f_n": 32}], ["fvd_16f"], extras=False).iloc[0]["rFVD 16f ↓"]


def test_a_record_written_before_the_issue_25_renames_reads_back_under_the_new_names():
    old = {"row": "grid3d", "tokenizer_id": "grid3d", "tokenizer": "grid3d", "tokens_per_video": 64,
           "compression_ratio": 256.0, "metrics": {"psnr": 20.0}, "protocol": {"frames": 16, "clip_frames": 16}}
    record = RunRecord.from_json(old)
    assert record.pixels_per_token == 256.0 and "compression_ratio" not in record.extra
    assert record.protocol.chunk_frames == 16 and "clip_frames" not in record.protocol.extra
    written = record.to_json()
    assert written["pixels_per_token"] == 256.0 and "compression_ratio" not in written
    assert written["protocol"]["chunk_frames"] == 16 and "clip_frames" not in written["protocol"]
    assert RunRecord.from_json(written) == record
    rows = leaderboard_rows([record], intervals=False)
    assert rows[0]["pixels_per_token"] == 256.0 and "compression_ratio" not in rows[0]


def test_cost_table_of_the_profile_is_plotted_and_missing_results_are_reported(tmp_path):
    folder = tmp_path / "cost_vs_length"
    folder.mkdir()
    # the columns `harness profile` writes (harness/profile.py profile_costs)
    pd.DataFrame({"label": ["coordtok"] * 3 + ["grid3d"] * 3, "tokenizer": ["coordtok"] * 3 + ["grid3d"] * 3,
                  "frames": [16, 32, 64] * 2, "train_gflops": [10.0, 12.0, 15.0, 8.0, 16.0, 32.0],
                  "peak_memory_mb": [100.0, 110.0, 130.0, 90.0, 180.0, 360.0]}).to_csv(folder / "cost_vs_length.csv", index=False)
    paths = write_reports(folder)
    assert folder / "cost_vs_length.png" in paths and (folder / "report.html").is_file()
    with Image.open(folder / "cost_vs_length.png") as image:
        assert image.format == "PNG"
    assert "## Training cost vs video length" in (folder / "report.md").read_text()
    with pytest.raises(ResultsError, match="run a suite first"):
        write_reports(tmp_path / "empty")


# --------------------------------------------------------------------------- suite report


@pytest.mark.slow
def test_report_files_exist_after_a_suite_run(suite_dir):
    assert "cost vs video length not measured" in (suite_dir / "report.md").read_text()
    for name in ("report.md", "report.html", "leaderboard.md", "quality_vs_tokens.png", "analysis.png", "analysis_correlations.csv",
                 "loss_curves.png", "per_frame_curves.png"):
        assert (suite_dir / name).is_file(), name
    for name in ("quality_vs_tokens.png", "analysis.png", "loss_curves.png", "per_frame_curves.png"):
        with Image.open(suite_dir / name) as image:
            assert image.format == "PNG" and image.width > 300 and image.height > 200
    text = (suite_dir / "report.md").read_text()
    for section in ("## Leaderboard", "## Protocol", "## Quality vs tokens per video", "## Analysis", "## Training loss curves", "## Per-frame quality", "## Gallery",
                    "- dataset: samples", "- clips: 16 frames at stride 1, 32x32",
                    "- evaluation clips: 9 clips, 3 per video at seeded positions", "- metric PSNR: higher is better; per frame"):
        assert section in text, section
    page = (suite_dir / "report.html").read_text()
    assert page.count("src='data:image/png;base64,") == 5 and page.count("src='data:image/gif;base64,") == 3
    assert "file://" not in page and "<img src='/" not in page  # self-contained, viewable offline


@pytest.mark.slow
def test_spearman_in_report_is_recomputed_from_per_video_table(suite_dir):
    table = pd.read_csv(suite_dir / "grid3d_tiny" / "per_video.csv")
    assert len(table) == 9 and {"psnr", "ssim", "dynamics", "frequency"} <= set(table.columns)
    dynamics = standardize_0_100(table["dynamics"].to_numpy())
    assert dynamics.min() == 0 and dynamics.max() == 100
    expected = {"dynamics": stats.spearmanr(dynamics, table["psnr"]).statistic,
                "frequency": stats.spearmanr(table["frequency"], table["psnr"]).statistic}
    line = next(line for line in (suite_dir / "report.md").read_text().splitlines()
                if line.startswith("| grid3d_tiny") and "| PSNR " in line)
    cells = [c.strip() for c in line.strip("|").split("|")]
    header = next(line for line in (suite_dir / "report.md").read_text().splitlines() if "ρ vs dynamics" in line)
    names = [c.strip() for c in header.strip("|").split("|")]
    shown = dict(zip(names, cells))
    assert float(shown["ρ vs dynamics (0-100)"]) == pytest.approx(expected["dynamics"], abs=5e-4)
    assert float(shown["ρ vs frequency"]) == pytest.approx(expected["frequency"], abs=5e-4)
    legend = pd.read_csv(suite_dir / "analysis_correlations.csv")  # the numbers the plot legend shows
    psnr_dyn = legend[(legend["metric"] == "psnr") & (legend["feature"] == "dynamics_0_100")]["rho"].item()
    assert psnr_dyn == pytest.approx(expected["dynamics"], abs=1e-12)


@pytest.mark.slow
def test_leaderboard_shows_bootstrap_half_width_from_per_video_table(suite_dir):
    table = pd.read_csv(suite_dir / "grid3d_tiny" / "per_video.csv")
    metrics = json.loads((suite_dir / "grid3d_tiny" / "metrics.json").read_text())["metrics"]
    ci = bootstrap_ci(table["psnr"].to_numpy(), confidence=0.95, resamples=10_000, seed=0)
    assert ci.value == pytest.approx(metrics["psnr"], abs=1e-9) and ci.half_width > 0
    board = (suite_dir / "leaderboard.md").read_text()
    assert f"{metrics['psnr']:.2f} ± {ci.half_width:.2f}" in board
    assert f"{metrics['psnr']:.2f} ± {ci.half_width:.2f}" in (suite_dir / "report.md").read_text()


@pytest.mark.slow
def test_gallery_holds_best_median_worst_side_by_side(suite_dir):
    table = pd.read_csv(suite_dir / "grid3d_tiny" / "per_video.csv")
    picks = pick_clips(table)
    ordered = table.sort_values("psnr", ascending=False)["clip"].tolist()
    assert [picks[r][0] for r in ("best", "median", "worst")] == [ordered[0], ordered[4], ordered[-1]]
    report = (suite_dir / "report.md").read_text()
    real_index = {e["clip"]: e for e in json.loads((suite_dir / "eval_clips.json").read_text())}
    for rank, (clip, psnr) in picks.items():
        gif = suite_dir / "gallery" / f"grid3d_tiny_{rank}.gif"
        assert f"{clip}, {psnr:.2f} dB" in report
        with Image.open(gif) as image:
            assert image.n_frames == 16 and image.size == ((32 * 2 + 4) * 4, 32 * 4)  # upscaled x4 to 128 px
            first = np.asarray(image.convert("RGB"))
        real = np.load(real_index[clip]["cached"])[0].repeat(4, 0).repeat(4, 1).astype(float)
        recon = np.load(suite_dir / "grid3d_tiny" / "recon" / f"{clip}.npy")[0].repeat(4, 0).repeat(4, 1).astype(float)
        assert np.abs(first[:, :128] - real).mean() < 8  # left: the real clip (GIF palette error only)
        assert np.abs(first[:, -128:] - recon).mean() < 8  # right: the reconstruction
        assert np.abs(first[:, :128] - recon).mean() > np.abs(first[:, :128] - real).mean()


@pytest.mark.slow
def test_leaderboard_cli_across_suites_and_report_rebuild(suite_dir, tmp_path):
    many = tmp_path / "many"
    for name in ("run_a", "run_b"):
        shutil.copytree(suite_dir, many / name / "tiny_report", ignore=shutil.ignore_patterns("*.npy", "*.pt", "*.gif"))
    rows = sort_rows(leaderboard_rows(load_records(many)), "psnr")
    assert sorted(r["suite"] for r in rows) == ["run_a/tiny_report", "run_b/tiny_report"]
    assert "suite" in render_leaderboard(rows, ["psnr"], "markdown")
    out = run_cli("leaderboard", str(many), "--metric", "psnr,ssim", "--sort", "ssim", "--format", "json")
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    assert len(data) == 2 and {"psnr", "psnr_ci_low", "psnr_ci_high", "ssim_ci_half_width"} <= set(data[0])
    assert data[0]["psnr_ci_low"] < data[0]["psnr"] < data[0]["psnr_ci_high"] and "lpips" not in data[0]
    with pytest.raises(ResultsError, match="fvd_16f.*available: psnr, ssim"):
        sort_rows(rows, "fvd_16f")
    with pytest.raises(ResultsError, match="unknown metric"):
        render_leaderboard(rows, ["lpips"], "csv")
    target = many / "run_a" / "tiny_report"
    (target / "report.md").unlink()
    out = run_cli("report", str(target))
    assert out.returncode == 0, out.stderr
    text = (target / "report.md").read_text()
    assert "## Leaderboard" in text and "## Analysis" in text and "reconstruction" in text and "not kept" in text


# --------------------------------------------------------------------------- browser check


@pytest.mark.slow
@pytest.mark.skipif(chromium_path() is None, reason="needs Debian's chromium (/usr/bin/chromium; apt-get install chromium)")
def test_html_report_renders_in_headless_chromium(suite_dir, tmp_path):
    """The report opens offline in Chromium: every embedded image (5 plots, 3 GIFs) decodes; the screenshot is not blank."""
    assert decoded_images(suite_dir / "report.html") == (8, 8)
    shot = screenshot(suite_dir / "report.html", tmp_path / "report.png", 1400, 3000)
    with Image.open(shot) as image:
        pixels = np.asarray(image.convert("L"), dtype=float)
    assert pixels.shape == (3000, 1400) and pixels.std() > 10  # text, tables and images, not an empty page
    if os.environ.get("REPORT_SCREENSHOT"):  # keep it to look at
        shutil.copy(shot, os.environ["REPORT_SCREENSHOT"])
