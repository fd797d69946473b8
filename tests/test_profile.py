"""Cost-vs-length profiling (harness.profile): suite schema, measurements in subprocesses, report files."""
from __future__ import annotations

from pathlib import Path

import pytest

from harness.profile import load_profile_suite, profile_costs, write_cost_report

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
