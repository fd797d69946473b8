"""Rate in bits per pixel and the BD-rate (issue 27, items 2 and 3; :mod:`metrics.rate`).

* the reconstruct stage's tally (``TokenTally`` as ``on_tokens`` of ``reconstruct_video``, then ``row_rate``) on
  tiny real tokenizers and real sample clips split into chunks: discrete bpp = tokens x log2(K) / pixels, the
  entropy rate from the real indices and at most the nominal rate; continuous latents at 16 bits per value;
* a Tokens with ``bits`` gives that rate, summed over chunks;
* BD-rate against the formula's known answers (itself 0, twice the bits +100%, a quality shift on a linear curve)
  and "n/a" without overlap or with too few points;
* the rate-distortion plot, the BD-rate table, and the bpp column of the leaderboard (markdown and CSV);
* one tiny suite through the engine (slow): reconstruct.json and metrics.json hold the rate.
"""
from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from PIL import Image

from harness.chunks import reconstruct_video
from harness.records import RunRecord
from harness.reports.data import ReportData
from harness.reports.leaderboard import BPP_HEADER, display_frame, leaderboard_rows, render_leaderboard
from harness.reports.plots import PLOTS, rate_distortion
from harness.stages.reconstruct import TokenTally, code_usage, row_rate
from harness_core.api import Tokens
from harness_core.registry import metric_spec
from metrics.rate import LATENT_BITS, MIN_BD_POINTS, bd_rate, entropy_bits, rate_summary, rate_text
from video_tokenizers.grid3d import Grid3dVAE
from video_tokenizers.grid3d_vq import Grid3dVQ
from video_tokenizers.pvdm import PVDMAutoencoder

NO_GAN = {"gan": None, "perceptual_weight": 0.0}


@pytest.fixture(scope="module")
def long_videos(sample_videos) -> torch.Tensor:
    """Three real 32-frame 32x32 clips (each sample clip twice in time): two 16-frame chunks per video."""
    return torch.cat([sample_videos, sample_videos.flip(2)], dim=2)[..., :32, :32]


def stage_rate(tokenizer, videos: torch.Tensor) -> tuple[dict, dict, int, list[torch.Tensor]]:
    """The rate as the reconstruct stage computes it (one batch record, then the summary), with the raw indices."""
    seen: list[torch.Tensor] = []
    tally = TokenTally("test", [f"clip{i}" for i in range(len(videos))])

    def on_tokens(tokens: Tokens) -> None:
        tally(tokens)
        if tokens.indices is not None:
            seen.append(tokens.indices.flatten())

    _, tokens_per_video = reconstruct_video(tokenizer.eval(), videos, chunk_batch=4, on_tokens=on_tokens)
    record = {"clips": tally.names, "tokens_per_video": tokens_per_video, **tally.record()}
    size = tokenizer.codebook_size()
    counts = code_usage(size, [record]).counts.numpy() if size else None
    pixels = videos.shape[2] * videos.shape[3] * videos.shape[4]
    return row_rate([record], tokens_per_video, pixels, size, counts, "test"), record, tokens_per_video, seen


# --------------------------------------------------------------------------- rate of each kind


def test_discrete_rate_is_tokens_times_log2_codebook_and_entropy_is_at_most_that(long_videos):
    torch.manual_seed(0)
    tok = Grid3dVQ(size="tiny", codebook_size=64, loss=NO_GAN)
    rate, _, tokens, seen = stage_rate(tok, long_videos)
    pixels = 32 * 32 * 32
    assert tokens == tok.tokens_per_video(32, 32, 32) == 2 * 4 * 4 * 4  # both chunks counted
    assert rate["kind"] == "nominal"
    assert rate["bpp"] == pytest.approx(tokens * math.log2(64) / pixels, rel=1e-12)
    indices = torch.cat(seen)
    assert indices.numel() == tokens * len(long_videos)  # one index per token, every chunk of every video
    histogram = torch.bincount(indices, minlength=64).double()
    p = histogram[histogram > 0] / histogram.sum()
    entropy = float(-(p * p.log2()).sum())
    assert rate["entropy_bits_per_token"] == pytest.approx(entropy, rel=1e-12)
    assert rate["bpp_entropy"] == pytest.approx(tokens * entropy / pixels, rel=1e-12)
    assert 0 <= rate["bpp_entropy"] <= rate["bpp"]


def test_continuous_latents_at_16_bits_per_value_over_every_chunk(long_videos):
    torch.manual_seed(0)
    grid = Grid3dVAE(size="tiny", channels=8, latent_channels=4)
    rate, record, tokens, _ = stage_rate(grid, long_videos)
    assert rate["kind"] == f"uncompressed fp{LATENT_BITS}" and LATENT_BITS == 16
    assert record["latent_values"] == len(long_videos) * tokens * 4  # tokens x latent channels, every chunk
    assert rate["bpp"] == pytest.approx(tokens * 4 * 16 / (32 * 32 * 32), rel=1e-12)
    planes = PVDMAutoencoder(size="tiny", loss=NO_GAN)  # a dict of latents (three planes) counts every plane
    rate, record, tokens, _ = stage_rate(planes, long_videos)
    channels = planes.encode(long_videos[:1, :, :16]).latents["xy"].shape[1]
    assert rate["latent_values_per_video"] == tokens * channels
    assert rate["bpp"] == pytest.approx(tokens * channels * 16 / (32 * 32 * 32), rel=1e-12)


def test_tokens_with_bits_give_that_rate_summed_over_chunks(sample_videos):
    tally = TokenTally("codec", ["a", "b"])
    latents = sample_videos[:2, :, :8]
    tally(Tokens(latents=latents, tokens_per_video=800, bits=torch.tensor([800.0, 1200.0], dtype=torch.float64)))
    tally(Tokens(latents=latents, tokens_per_video=400, bits=torch.tensor([400.0, 600.0], dtype=torch.float64)))
    record = {"clips": ["a", "b"], "tokens_per_video": 1500, **tally.record()}
    assert record["bits"] == 3000.0
    pixels = 16 * 64 * 64
    rate = row_rate([record], 1500, pixels, None, None, "codec")
    assert rate["kind"] == "bitstream" and rate["bits_per_video"] == 1500.0 and rate["bpp"] == 1500.0 / pixels
    mixed = TokenTally("codec", ["a", "b"])
    mixed(Tokens(latents=latents, tokens_per_video=1, bits=torch.tensor([1.0, 1.0], dtype=torch.float64)))
    mixed(Tokens(latents=latents, tokens_per_video=1))
    with pytest.raises(ValueError, match="Tokens.bits set for some"):
        mixed.record()


def test_a_codec_rate_is_its_bitstream_through_the_stage_tally(sample_videos):
    from harness_core.registry import TOKENIZERS

    h264 = TOKENIZERS.get("h264")(crf=30)
    videos = sample_videos[:2, :, :8]
    rate, record, _, _ = stage_rate(h264, videos)
    exact = float(h264.encode(videos).bits.sum())  # 8 x bitstream bytes of both rows (deterministic encoder)
    assert rate["kind"] == "bitstream" and record["bits"] == exact
    assert rate["bpp"] == pytest.approx(exact / 2 / (8 * 64 * 64), rel=1e-12)


def test_rate_summary_rules_and_errors():
    assert rate_summary(64, 1024, 2) is None  # nothing to measure
    assert row_rate([{"clips": ["a"], "tokens_per_video": 4, "codes": [], "bits": None}], 4, 16, None, None, "old") is None
    assert entropy_bits([5, 5]) == 1.0 and entropy_bits([3, 0, 0]) == 0.0
    four_codes = rate_summary(10, 100, 1, codebook_size=16, code_counts=[1, 1, 1, 1])  # 2 of log2(16) = 4 bits
    assert four_codes["bpp"] == pytest.approx(0.4) and four_codes["bpp_entropy"] == pytest.approx(0.2)
    with pytest.raises(ValueError, match="positive"):
        rate_summary(10, 0, 1, bits=5.0)
    with pytest.raises(ValueError, match="counts"):
        entropy_bits([0, 0])
    assert rate_text({"bpp": 0.0390625, "kind": "nominal", "bpp_entropy": 0.0286}) == "0.03906 nominal, 0.0286 entropy"
    assert rate_text(None) == "–"


# --------------------------------------------------------------------------- BD-rate


ANCHOR_BPP = np.array([0.02, 0.05, 0.1, 0.2, 0.4])
ANCHOR_PSNR = np.array([28.0, 31.0, 33.5, 35.0, 36.2])  # concave, as a real RD curve


def test_bd_rate_of_a_curve_against_itself_is_zero_and_twice_the_bits_is_plus_100_percent():
    assert bd_rate(ANCHOR_BPP, ANCHOR_PSNR, ANCHOR_BPP, ANCHOR_PSNR).percent == pytest.approx(0.0, abs=1e-9)
    assert bd_rate(ANCHOR_BPP, ANCHOR_PSNR, 2 * ANCHOR_BPP, ANCHOR_PSNR).percent == pytest.approx(100.0, abs=1e-9)
    assert bd_rate(ANCHOR_BPP, ANCHOR_PSNR, 0.5 * ANCHOR_BPP, ANCHOR_PSNR).percent == pytest.approx(-50.0, abs=1e-9)
    shuffled = [3, 0, 4, 1, 2]  # the order of the points does not matter
    assert bd_rate(ANCHOR_BPP[shuffled], ANCHOR_PSNR[shuffled], 2 * ANCHOR_BPP, ANCHOR_PSNR).percent == pytest.approx(100.0)
    lpips = 0.5 - ANCHOR_PSNR / 100  # lower is better: the rates are compared at equal values all the same
    assert bd_rate(ANCHOR_BPP, lpips, 2 * ANCHOR_BPP, lpips).percent == pytest.approx(100.0, abs=1e-9)


def test_bd_rate_of_a_quality_shift_on_a_linear_curve():
    # log10(rate) = a + b * psnr; the test curve reaches each rate's quality + delta dB, so at equal quality it needs
    # rate * 10 ** (-b * delta): BD-rate = 10 ** (-b * delta) - 1 (PCHIP reproduces the line exactly)
    a, b, delta = -6.0, 0.15, 1.0
    psnr = np.array([30.0, 32.0, 34.0, 36.0])
    rates = 10 ** (a + b * psnr)
    expected = (10 ** (-b * delta) - 1) * 100
    assert bd_rate(rates, psnr, rates, psnr + delta).percent == pytest.approx(expected, abs=1e-9)
    assert bd_rate(rates[:2], psnr[:2], rates[:2], psnr[:2] + 0.5).percent == pytest.approx(
        (10 ** (-b * 0.5) - 1) * 100, abs=1e-9)  # MIN_BD_POINTS = 2: a straight line through two points


def test_bd_rate_matches_dense_integration_of_the_pchip_curves():
    from scipy.interpolate import pchip_interpolate

    test_bpp, test_psnr = np.array([0.03, 0.08, 0.15, 0.5]), np.array([27.0, 30.5, 33.0, 35.5])
    low, high = 28.0, 35.5
    grid = np.linspace(low, high, 200_001)
    diff = pchip_interpolate(test_psnr, np.log10(test_bpp), grid) - pchip_interpolate(ANCHOR_PSNR, np.log10(ANCHOR_BPP), grid)
    expected = (10 ** (np.trapezoid(diff, grid) / (high - low)) - 1) * 100
    assert bd_rate(ANCHOR_BPP, ANCHOR_PSNR, test_bpp, test_psnr).percent == pytest.approx(expected, abs=1e-6)


def test_bd_rate_is_not_available_without_overlap_or_points():
    assert str(bd_rate(ANCHOR_BPP, ANCHOR_PSNR, [0.5, 1.0], [40.0, 42.0])) == "n/a (no overlap)"
    assert bd_rate(ANCHOR_BPP, ANCHOR_PSNR, [0.1], [33.0]).reason == f"fewer than {MIN_BD_POINTS} points"
    assert bd_rate(ANCHOR_BPP, ANCHOR_PSNR, [0.1, 0.2], [33.0, 33.0]).reason == "repeated quality value"
    with pytest.raises(ValueError, match="positive"):
        bd_rate(ANCHOR_BPP, ANCHOR_PSNR, [0.0, 0.2], [30.0, 33.0])
    with pytest.raises(ValueError, match="one length"):
        bd_rate(ANCHOR_BPP, ANCHOR_PSNR, [0.1, 0.2], [30.0])


# --------------------------------------------------------------------------- report


def _record(tmp_path, row: str, tokenizer: str, rate: dict, psnr: float, lpips: float) -> RunRecord:
    specs = [metric_spec("psnr").to_dict(), metric_spec("lpips").to_dict()]
    return RunRecord(row=row, tokenizer_id=row, tokenizer=tokenizer, tokens_per_video=64, metrics={"psnr": psnr, "lpips": lpips},
                     metric_specs=specs, rate=rate, per_video=None, folder=tmp_path / row, suite_dir=tmp_path, suite="s")


def test_rate_distortion_plot_bd_table_and_bpp_column(tmp_path):
    # report-level values (no model): three H.265 CRFs, a codec at half their bits, a two-point tokenizer family
    # and a one-point one
    def codec(bpp):
        return {"bpp": bpp, "kind": "bitstream"}

    records = [_record(tmp_path, f"h265_crf{c}", "h265", codec(b), p, l)
               for c, b, p, l in ((40, 0.02, 28.0, 0.30), (32, 0.06, 31.5, 0.20), (24, 0.2, 35.0, 0.10))]
    records += [_record(tmp_path, f"h264_crf{c}", "h264", codec(b / 2), p, l)
                for c, b, p, l in ((40, 0.02, 28.0, 0.30), (32, 0.06, 31.5, 0.20), (24, 0.2, 35.0, 0.10))]
    records += [_record(tmp_path, "grid3d_c4", "grid3d", {"bpp": 0.25, "kind": "uncompressed fp16"}, 30.0, 0.25),
                _record(tmp_path, "grid3d_c8", "grid3d", {"bpp": 0.5, "kind": "uncompressed fp16"}, 33.0, 0.15),
                _record(tmp_path, "magvit", "grid3d_vq", {"bpp": 0.04, "kind": "nominal", "bpp_entropy": 0.03}, 29.0, 0.28),
                # one family, two rate kinds (OmniTokenizer-DV and -CV): two one-point curves, not one line
                _record(tmp_path, "omni_dv", "omnitokenizer", {"bpp": 0.04, "kind": "nominal"}, 29.5, 0.27),
                _record(tmp_path, "omni_cv", "omnitokenizer", {"bpp": 0.6, "kind": "uncompressed fp16"}, 34.0, 0.12)]
    data = ReportData(tmp_path, records)
    assert "rate_distortion" in [name for name, _ in PLOTS]
    [figure] = rate_distortion(data)
    with Image.open(figure.path) as image:
        assert image.format == "PNG" and image.width > 600
    table = figure.table.set_index("curve")
    assert set(table.index) == {"h264", "grid3d", "grid3d_vq", "omnitokenizer (nominal)",
                                "omnitokenizer (uncompressed fp16)"}  # the anchor is not compared with itself
    assert table.loc["omnitokenizer (nominal)", "points"] == 1
    assert table.loc["h264", "PSNR ↑"] == "-50.0%" and table.loc["h264", "LPIPS ↓"] == "-50.0%"
    assert table.loc["grid3d_vq", "PSNR ↑"] == "n/a (fewer than 2 points)"
    assert table.loc["grid3d", "points"] == 2 and table.loc["grid3d", "PSNR ↑"].endswith("%")
    assert (tmp_path / "bd_rate.csv").is_file()
    rows = leaderboard_rows(data, intervals=False)
    shown = display_frame(rows, extras=False).set_index("tokenizer")
    assert shown.loc["magvit", BPP_HEADER] == "0.04 nominal, 0.03 entropy"
    assert shown.loc["h265_crf40", BPP_HEADER] == "0.02 bitstream"
    csv = pd.read_csv(pd.io.common.StringIO(render_leaderboard(rows, ["psnr"], "csv")))
    assert list(csv.columns[:8]) == ["row", "tokenizer_id", "tokenizer", "budget", "tokens_per_video", "bpp", "bpp_kind",
                                     "bpp_entropy"]


def test_no_anchor_rows_no_bd_table(tmp_path):
    data = ReportData(tmp_path, [_record(tmp_path, "a", "grid3d", {"bpp": 0.25, "kind": "uncompressed fp16"}, 30.0, 0.2)])
    [figure] = rate_distortion(data)
    assert figure.table.empty and any("no h265" in note for note in data.notes)


# --------------------------------------------------------------------------- through the engine


@pytest.mark.slow
def test_suite_records_the_rate(tmp_path):
    from harness.config import load_suite
    from harness.runner import SuiteRunner

    suite = {"name": "tiny_rate", "seed": 0, "output_dir": str(tmp_path / "results"),
             "data": {"dataset": "samples", "resolution": 32, "frames": 16, "eval_clips_per_video": 1},
             "train": {"steps": 1, "batch_size": 2, "checkpoint_every": 1},
             "evaluate": {"metrics": ["psnr"], "batch_size": 3},
             "tokenizers": [{"id": "vq", "name": "grid3d_vq", "kwargs": {"size": "tiny", "codebook_size": 64, "loss": NO_GAN}}]}
    path = tmp_path / "suite.yaml"
    path.write_text(yaml.safe_dump(suite))
    results = SuiteRunner(load_suite(path), show_progress=False).run()
    rate = json.loads((results / "vq" / "reconstruct.json").read_text())["rate"]
    assert rate["kind"] == "nominal" and rate["bpp"] == 64 * 6 / (16 * 32 * 32) and rate["bpp_entropy"] <= rate["bpp"]
    assert json.loads((results / "vq" / "metrics.json").read_text())["rate"] == rate
    assert "0.02344 nominal" in (results / "leaderboard.md").read_text() and (results / "rate_distortion.png").is_file()


def test_protocol_card_states_the_rate_definition():
    from conftest import REPO
    from harness.config import load_suite
    from harness.protocol import protocol_card

    card = protocol_card(load_suite(REPO / "suites" / "samples_cpu.yaml"))
    section = card[card.index("rate (bits per pixel"):]
    for text in ("bits per video / (frames x height x width)", "tokens x log2(codebook size)", "ideal memoryless entropy coder",
                 "x 16 bits (fp16)", "8 x bytes, container overhead excluded", "PCHIP"):
        assert text in " ".join(section.split()), text
