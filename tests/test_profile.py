"""Cost profiling (harness.profile): training cost vs video length and the encode/decode cost sweep; suite schema,
measurements in subprocesses, report files."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from harness.profile import (
    CODEC_COLUMNS,
    CodecCostSuite,
    ONEDNN_ALLOCATION_FAILURE,
    CodecCostTokenizer,
    codec_table,
    is_out_of_memory,
    load_profile_suite,
    profile_codec_costs,
    profile_costs,
    write_codec_report,
    write_cost_report,
)

REPO = Path(__file__).resolve().parents[1]


def test_shipped_suite_is_valid():
    suite = load_profile_suite(REPO / "suites" / "cost_vs_length.yaml")
    assert suite.lengths == [16, 32, 64, 128] and suite.resolution == 128 and suite.batch == 1
    assert "coordtok" in [t.name for t in suite.tokenizers] and "grid3d" in [t.name for t in suite.tokenizers]


def test_unknown_keys_are_rejected_by_name(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("lengths: [16]\nresolutoin: 64\ntokenizers: [{label: a, name: grid3d}]\n")
    with pytest.raises(ValueError, match="resolutoin"):
        load_profile_suite(path)
    path.write_text("tokenizers: [{label: a, name: grid3d, kwarg: {}}]\n")
    with pytest.raises(ValueError, match="kwarg"):
        load_profile_suite(path)


def test_profile_costs_grid_scales_with_clips_coordtok_does_not(tmp_path):
    messages = []
    entries = [
        ("coordtok", "coordtok", {"size": "tiny", "width": 32, "heads": 2, "points_per_video": 256}),
        ("grid3d", "grid3d", {"size": "tiny"}),
        ("missing", "no_such_tokenizer", {}),
    ]
    df = profile_costs(entries, lengths=(16, 32), resolution=32, batch=1, device="cpu", log=messages.append)
    assert any("no_such_tokenizer" in m and "not registered" in m for m in messages)
    assert set(df.label) == {"coordtok", "grid3d"} and len(df) == 4
    assert (df.train_gflops > 0).all() and (df.peak_memory_mb > 0).all()
    grid = df[df.label == "grid3d"].set_index("frames")
    coord = df[df.label == "coordtok"].set_index("frames")
    assert grid.loc[32, "chunks"] == 2 and grid.loc[32, "tokens"] == 2 * grid.loc[16, "tokens"]
    # two identical clips: exactly twice the FLOPs of one
    assert grid.loc[32, "train_gflops"] == pytest.approx(2 * grid.loc[16, "train_gflops"], rel=1e-6)
    # CoordTok decodes the same 256 sampled patches at any length; only the encoder grows
    assert coord.loc[32, "tokens"] == coord.loc[16, "tokens"] == 1280
    assert coord.loc[32, "train_gflops"] < 2 * coord.loc[16, "train_gflops"]
    paths = write_cost_report(df, tmp_path / "out")
    assert all(p.stat().st_size > 0 for p in paths.values())
    assert "Growth" in paths["md"].read_text()


def test_bench_train_measures_both_ends_of_a_two_stage_schedule(capsys):
    """scripts/bench_train.py times CoordTok at its first step (stage 1) and last step (stage 2, with LPIPS on whole
    frames), so the two rows differ in FLOPs."""
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "scripts" / "bench_train.py"
    spec = importlib.util.spec_from_file_location("bench_train", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    assert bench.main(["--only", "coordtok_tiny", "--steps", "1", "--warmup", "0"]) == 0
    rows = [line.split() for line in capsys.readouterr().out.splitlines() if line.startswith("coordtok_tiny")]
    assert [row[1] for row in rows] == ["0", "399"]
    stage1_gflop, stage2_gflop = (float(row[4]) for row in rows)
    assert stage2_gflop > 10 * stage1_gflop > 0


# ---------------------------------------------------------------------------------------------
# Encode/decode cost sweep (issue 27 item 5, ``sweep: codec``)
# ---------------------------------------------------------------------------------------------

#: a CogVideoX VAE small enough for tests (tests/test_diffusers_vae.py) with 16-pixel spatial tiles
TINY_COGVIDEOX = {
    "config": {"block_out_channels": [8, 8, 8, 8], "latent_channels": 4, "layers_per_block": 1, "norm_num_groups": 2,
               "sample_height": 32, "sample_width": 32},
    "tiling": {"tile_sample_min_height": 16, "tile_sample_min_width": 16,
               "tile_overlap_factor_height": 0.5, "tile_overlap_factor_width": 0.5},
}


def test_shipped_codec_suite_is_valid():
    suite = load_profile_suite(REPO / "suites" / "codec_cost.yaml")
    assert isinstance(suite, CodecCostSuite) and suite.tiling == [False, True]
    names = {t.name for t in suite.tokenizers}
    assert {"grid3d", "frame2d_vq", "coordtok", "videoflextok", "wan21_vae"} <= names
    assert next(t for t in suite.tokenizers if t.name == "coordtok").frames == [16, 32]


def test_codec_sweep_rows_times_and_memory_and_skipped_shapes(tmp_path):
    entries = [CodecCostTokenizer(label="f2d", name="frame2d_vq", kwargs={"size": "tiny"}),
               CodecCostTokenizer(label="coord", name="coordtok", kwargs={"size": "tiny"}, frames=[17], resolutions=[32]),
               ("missing", "no_such_tokenizer", {})]
    messages = []
    df = profile_codec_costs(entries, frames=[17], resolutions=[32, 64], device="cpu", log=messages.append)
    assert any("no_such_tokenizer" in m and "not registered" in m for m in messages)
    assert list(df.columns) == CODEC_COLUMNS
    assert len(df) == len(df.drop_duplicates(["label", "resolution", "frames", "tiling"])) == 3
    ok = df[df.label == "f2d"]
    assert list(ok.status) == ["ok", "ok"] and list(ok.tiling) == ["n/a", "n/a"]
    costs = ok[["encode_s", "decode_s", "encode_mb", "decode_mb"]].to_numpy(dtype=float)
    assert np.isfinite(costs).all() and (costs > 0).all()
    # the engine's chunking: 17 frames are two 16-frame chunks (the last padded), 64 px has 4x the tokens of 32 px
    assert list(ok.pieces) == [2, 2] and list(ok.coded_frames) == [32, 32]
    assert ok.tokens.iloc[1] == 4 * ok.tokens.iloc[0] and list(ok.pixels) == [17 * 32 * 32, 17 * 64 * 64]
    # CoordTok's encoder takes 8-frame patches: 17 frames is not a valid shape, skipped with the constructor's reason
    skipped = df[df.label == "coord"].iloc[0]
    assert skipped.status == "skipped" and "multiple of the patch size 8" in skipped.reason
    assert np.isnan(skipped.encode_s)
    paths = write_codec_report(df, tmp_path / "out", "test machine")
    assert all(p.stat().st_size > 0 for p in paths.values())
    text = paths["md"].read_text()
    assert "test machine" in text and "untrained" in text and "| skipped" in text
    assert pd.read_csv(paths["csv"]).shape == df.shape


def test_codec_sweep_tiled_and_untiled_rows_of_a_diffusers_vae():
    pytest.importorskip("diffusers")
    df = profile_codec_costs([("cog", "cogvideox_vae", TINY_COGVIDEOX)], frames=[9], resolutions=[32], device="cpu")
    assert list(df.tiling) == ["off", "on"] and list(df.status) == ["ok", "ok"]
    assert (df[["encode_s", "decode_s", "encode_mb", "decode_mb"]].to_numpy(dtype=float) > 0).all()
    # CogVideoX codes 1 + 8k frames: 9 frames in one piece, 3 latent frames of 4x4 (8x spatial compression)
    assert list(df.coded_frames) == [9, 9] and list(df.tokens) == [3 * 4 * 4] * 2


def test_codec_sweep_records_out_of_memory_under_a_cap():
    """A cap of 4 MiB is below what frame2d_vq tiny needs at 17x64x64 (about 10-20 MiB measured with no cap): the
    allocation really fails inside PyTorch's allocator and the cell is recorded as OOM, not raised."""
    df = profile_codec_costs([("f2d", "frame2d_vq", {"size": "tiny"})], frames=[17], resolutions=[64], device="cpu",
                             memory_cap_mb=4)
    row = df.iloc[0]
    assert row.status == "OOM" and ("allocate" in row.reason or ONEDNN_ALLOCATION_FAILURE in row.reason)
    assert np.isnan(row.encode_mb)
    assert codec_table(df).iloc[0]["encode MiB"] == "OOM"


def test_a_failing_measurement_is_an_error_row_and_the_sweep_goes_on():
    """The bare contract class implements nothing: its measurement process fails with NotImplementedError, which
    is neither a rejected shape nor out of memory; the row says so and the next tokenizer is still measured."""
    entries = [("bare", "harness_core.api:VideoTokenizer", {}), ("f2d", "frame2d_vq", {"size": "tiny"})]
    df = profile_codec_costs(entries, frames=[16], resolutions=[32], device="cpu")
    assert list(df.status) == ["error", "ok"] and "NotImplementedError" in df.reason.iloc[0]


def test_is_out_of_memory_tells_allocation_failures_from_other_errors():
    assert is_out_of_memory(torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"))
    assert is_out_of_memory(RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 8 bytes"))
    assert is_out_of_memory(MemoryError())
    assert not is_out_of_memory(RuntimeError("mat1 and mat2 shapes cannot be multiplied"))
    assert not is_out_of_memory(RuntimeError("could not create a primitive"))  # only under a CPU memory cap
    assert is_out_of_memory(RuntimeError("could not create a primitive"), capped=True)


@pytest.mark.parametrize("text, key", [
    ("sweep: codec\nresolution: [64]\ntokenizers: [{label: a, name: grid3d}]\n", "resolution"),
    ("sweep: codec\ntokenizers: [{label: a, name: grid3d, resolution: [64]}]\n", "resolution"),
    ("sweep: codec\nframes: []\ntokenizers: [{label: a, name: grid3d}]\n", "frames"),
    ("sweep: codec\ntiling: [true, true]\ntokenizers: [{label: a, name: grid3d}]\n", "tiling"),
    ("sweep: codec\nmemory_cap_mb: 0\ntokenizers: [{label: a, name: grid3d}]\n", "memory_cap_mb"),
    ("sweep: codec\ntokenizers: [{label: a, name: grid3d, kwargs: {sise: tiny}}]\n", "sise"),
    ("sweep: codec\nframes: [16]\ntokenizers: [{label: a, name: coordtok, kwargs: {frames: 32}}]\n", "frames"),
    ("sweep: codecs\ntokenizers: [{label: a, name: grid3d}]\n", "sweep"),
    ("lengths: [16]\nresolutions: [64]\ntokenizers: [{label: a, name: grid3d}]\n", "resolutions"),
])
def test_bad_codec_suite_keys_are_named(tmp_path, text, key):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ValueError, match=key):
        load_profile_suite(path)
