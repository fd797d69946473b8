"""Wrong numbers never reach a leaderboard, bad files end with one error line, memory is per stage (issue 9).

Each test runs a real suite on the installed sample videos through ``python -m harness`` with plugin
tokenizers defined in a module written to ``tmp_path`` (named by ``module:Class``, as users do).
"""
from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest
import torch

from conftest import REPO
from test_engine import GRID3D, run_cli, tiny_suite

PLUGINS = '''
import torch
import torch.nn.functional as F

from linear_patch_tokenizer import LinearPatchTokenizer


class NaNDecode(LinearPatchTokenizer):
    """Trains like the linear patch tokenizer, but its decode (used for evaluation) returns NaN."""

    def training_losses(self, video, step):
        return {"loss": F.mse_loss(LinearPatchTokenizer.decode(self, self.encode(video)), video)}

    def decode(self, tokens):
        return super().decode(tokens) * float("nan")


class NaNLoss(LinearPatchTokenizer):
    """Its training loss becomes NaN from step ``bad_step`` on."""

    def __init__(self, bad_step: int = 3, **kwargs):
        super().__init__(**kwargs)
        self.bad_step = bad_step

    def training_losses(self, video, step):
        loss = super().training_losses(video, step)["loss"]
        return {"loss": loss * float("nan") if step >= self.bad_step else loss}


class BigBuffer(LinearPatchTokenizer):
    """Allocates a temporary ``buffer_mb`` MiB tensor in every training step (a stand-in for a memory-hungry model)."""

    def __init__(self, buffer_mb: int = 0, **kwargs):
        super().__init__(**kwargs)
        self.buffer_mb = buffer_mb

    def training_losses(self, video, step):
        loss = super().training_losses(video, step)["loss"]
        if self.buffer_mb:
            buffer = torch.ones(self.buffer_mb * 2**18)  # float32: 4 bytes each
            loss = loss + 0.0 * buffer[:1].sum()
        return {"loss": loss}
'''


@pytest.fixture
def plugin_env(tmp_path) -> dict[str, str]:
    folder = tmp_path / "plugins"
    folder.mkdir()
    (folder / "failing_tokenizers.py").write_text(textwrap.dedent(PLUGINS))
    return {"PYTHONPATH": f"{folder}:{REPO / 'examples' / 'plugin'}"}


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("error:")]


def assert_one_error_line(result, *needles: str) -> str:
    assert result.returncode == 2, result.stderr[-3000:]
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    lines = error_lines(result.stderr)
    assert len(lines) == 1, result.stderr[-3000:]
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def assert_no_nan_on_leaderboards(results: Path) -> None:
    for path in list(results.rglob("leaderboard*")) + list(results.rglob("report.*")):
        text = path.read_text().lower()
        assert "nan" not in text.replace("nanos", "") and "inf" not in text.replace("info", ""), path


def test_nan_reconstruction_stops_the_stage_and_keeps_earlier_results(tmp_path, plugin_env):
    nan = {"id": "nan_decode", "name": "failing_tokenizers:NaNDecode", "kwargs": {"channels": 8}}
    path = tiny_suite(tmp_path, [GRID3D, nan])
    result = run_cli("run", str(path), "-q", env=plugin_env)
    line = assert_one_error_line(result, "nan_decode", "non-finite reconstruction", "clip")
    results = tmp_path / "results"
    assert (results / "grid3d_tiny" / "metrics.json").is_file()  # what was computed before is kept
    assert not (results / "nan_decode" / "metrics.json").exists()
    board = run_cli("leaderboard", str(results))
    assert board.returncode == 0 and "grid3d_tiny" in board.stdout and "nan_decode" not in board.stdout, line
    assert_no_nan_on_leaderboards(results)


def test_nan_training_loss_names_the_step_and_keeps_the_last_good_checkpoint(tmp_path, plugin_env):
    bad = {"id": "nan_loss", "name": "failing_tokenizers:NaNLoss", "kwargs": {"channels": 8, "bad_step": 3}}
    path = tiny_suite(tmp_path, [bad], train={"steps": 6, "batch_size": 2, "checkpoint_every": 1})
    result = run_cli("run", str(path), "-q", env=plugin_env)
    assert_one_error_line(result, "nan_loss", "non-finite training loss at step 3", "checkpoint")
    run_dir = tmp_path / "results" / "nan_loss"
    checkpoint = torch.load(run_dir / "checkpoint.pt", map_location="cpu", weights_only=True)
    assert checkpoint["step"] == 3 and all(torch.isfinite(v).all() for v in checkpoint["model"].values())
    assert not (run_dir / "train.json").exists() and not (run_dir / "metrics.json").exists()
    assert_no_nan_on_leaderboards(tmp_path / "results")


def test_corrupt_i3d_weights_from_the_environment_give_one_error_line(tmp_path):
    corrupt = tmp_path / "i3d-kinetics-400.ckpt"
    corrupt.write_bytes(b"\x80\x04this is not a checkpoint" + bytes(range(256)))
    path = tiny_suite(tmp_path, [GRID3D], evaluate={"metrics": ["psnr", "fvd_16f"], "batch_size": 3})
    result = run_cli("run", str(path), "-q", env={"HARNESS_I3D_WEIGHTS": str(corrupt)})
    assert_one_error_line(result, str(corrupt), "HARNESS_I3D_WEIGHTS")
    assert (tmp_path / "results" / "grid3d_tiny" / "train.json").is_file()  # training is kept
    assert_no_nan_on_leaderboards(tmp_path / "results")


@pytest.mark.parametrize("order", ["small_first", "big_first"])
def test_peak_memory_belongs_to_each_tokenizer_whichever_runs_first(tmp_path, plugin_env, order):
    small = {"id": "small", "name": "failing_tokenizers:BigBuffer", "kwargs": {"channels": 8, "buffer_mb": 0}}
    big = {"id": "big", "name": "failing_tokenizers:BigBuffer", "kwargs": {"channels": 8, "buffer_mb": 512}}
    path = tiny_suite(tmp_path, [small, big] if order == "small_first" else [big, small])
    result = run_cli("run", str(path), "-q", env=plugin_env)
    assert result.returncode == 0, result.stderr[-3000:]
    peak = {tid: json.loads((tmp_path / "results" / tid / "train.json").read_text())["peak_memory_mb"]
            for tid in ("small", "big")}
    assert peak["big"] > peak["small"] + 400, peak  # the 512 MiB buffer is seen by the big one only
    assert peak["small"] < 400, peak
    board = (tmp_path / "results" / "leaderboard.md").read_text()
    assert "train peak mem (MB)" in board and "resident memory added at the stage's peak" in board
