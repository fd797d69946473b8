"""Wrong numbers never reach a leaderboard, expected errors end with one error line, anything else with its traceback,
memory is per stage (issues 9 and 25 item 7).

The error paths call ``harness.__main__.main([...])`` in-process (stderr through ``capsys``) on real suites of the
installed sample videos, with plugin tokenizers defined in a module written to ``tmp_path`` (named by
``module:Class``, as users do); one test runs ``python -m harness`` as a subprocess to check the process's own exit
code and traceback end to end.
"""
from __future__ import annotations

import importlib
import json
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from conftest import REPO, cli, run_cli
from harness.__main__ import main
from harness_core.errors import EXPECTED_EXIT, UNEXPECTED_EXIT
from test_engine import GRID3D, tiny_suite

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


class DividesByZero(LinearPatchTokenizer):
    """A bug in a plugin: its training loss divides by zero (an unexpected error, not the user's input)."""

    def training_losses(self, video, step):
        return {"loss": super().training_losses(video, step)["loss"] * (1 / 0)}


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
DIVIDES_BY_ZERO = {"id": "divides_by_zero", "name": "failing_tokenizers:DividesByZero", "kwargs": {"channels": 8}}


@pytest.fixture
def plugin_folder(tmp_path) -> Path:
    """``failing_tokenizers.py`` (the plugins above) in a folder of its own."""
    folder = tmp_path / "plugins"
    folder.mkdir()
    (folder / "failing_tokenizers.py").write_text(textwrap.dedent(PLUGINS))
    return folder


@pytest.fixture
def plugins(plugin_folder, monkeypatch):
    """The plugin modules importable in this process (``module:Class`` names resolve), removed afterwards."""
    monkeypatch.syspath_prepend(str(REPO / "examples" / "plugin"))
    monkeypatch.syspath_prepend(str(plugin_folder))
    yield
    sys.modules.pop("failing_tokenizers", None)


@pytest.fixture
def plugin_env(plugin_folder) -> dict[str, str]:
    """The environment of a ``python -m harness`` subprocess that imports the plugins."""
    return {"PYTHONPATH": f"{plugin_folder}:{REPO / 'examples' / 'plugin'}:{REPO}"}


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("error:")]


def assert_one_error_line(code: int, stderr: str, *needles: str) -> str:
    """Exit code 2, exactly one ``error:`` line holding every needle, and no traceback."""
    assert code == EXPECTED_EXIT, stderr[-3000:]
    assert "Traceback" not in stderr, stderr[-3000:]
    lines = error_lines(stderr)
    assert len(lines) == 1, stderr[-3000:]
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def assert_no_nan_on_leaderboards(results: Path) -> None:
    for path in list(results.rglob("leaderboard*")) + list(results.rglob("report.*")):
        text = path.read_text().lower()
        assert "nan" not in text.replace("nanos", "") and "inf" not in text.replace("info", ""), path


# --------------------------------------------------------------------------- expected errors: one line, exit code 2


@pytest.mark.slow
def test_nan_reconstruction_stops_the_stage_and_keeps_earlier_results(tmp_path, plugins, capsys):
    nan = {"id": "nan_decode", "name": "failing_tokenizers:NaNDecode", "kwargs": {"channels": 8}}
    path = tiny_suite(tmp_path, [GRID3D, nan])
    code, _, err = cli(capsys, "run", str(path), "-q")
    line = assert_one_error_line(code, err, "nan_decode", "non-finite reconstruction", "clip")
    results = tmp_path / "results"
    assert (results / "grid3d_tiny" / "metrics.json").is_file()  # what was computed before is kept
    assert not (results / "nan_decode" / "metrics.json").exists()
    code, board, _ = cli(capsys, "leaderboard", str(results))
    assert code == 0 and "grid3d_tiny" in board and "nan_decode" not in board, line
    assert_no_nan_on_leaderboards(results)
    code, _, err = cli(capsys, "leaderboard", str(results), "--sort", "nope")  # a metric the results do not have
    assert_one_error_line(code, err, "no row has metric 'nope'; available: psnr, ssim")


@pytest.mark.slow
def test_nan_training_loss_names_the_step_and_keeps_the_last_good_checkpoint(tmp_path, plugins, capsys):
    bad = {"id": "nan_loss", "name": "failing_tokenizers:NaNLoss", "kwargs": {"channels": 8, "bad_step": 3}}
    path = tiny_suite(tmp_path, [bad], train={"steps": 6, "batch_size": 2, "checkpoint_every": 1})
    code, _, err = cli(capsys, "run", str(path), "-q")
    assert_one_error_line(code, err, "nan_loss", "non-finite training loss at step 3", "checkpoint")
    run_dir = tmp_path / "results" / "nan_loss"
    checkpoint = torch.load(run_dir / "checkpoint.pt", map_location="cpu", weights_only=True)
    assert checkpoint["step"] == 3 and all(torch.isfinite(v).all() for v in checkpoint["model"].values())
    assert not (run_dir / "train.json").exists() and not (run_dir / "metrics.json").exists()
    assert_no_nan_on_leaderboards(tmp_path / "results")


def test_corrupt_i3d_weights_from_the_environment_give_one_error_line(tmp_path, monkeypatch, capsys):
    corrupt = tmp_path / "i3d-kinetics-400.ckpt"
    corrupt.write_bytes(b"\x80\x04this is not a checkpoint" + bytes(range(256)))
    monkeypatch.setenv("HARNESS_I3D_WEIGHTS", str(corrupt))
    path = tiny_suite(tmp_path, [GRID3D], evaluate={"metrics": ["psnr", "fvd_16f"], "batch_size": 3})
    code, _, err = cli(capsys, "run", str(path), "-q")
    assert_one_error_line(code, err, str(corrupt), "HARNESS_I3D_WEIGHTS")
    assert (tmp_path / "results" / "grid3d_tiny" / "train.json").is_file()  # training is kept
    assert_no_nan_on_leaderboards(tmp_path / "results")


def _different_configuration(tmp_path: Path) -> list[str]:
    """A results folder whose ``config.json`` belongs to another training configuration of the same tokenizer."""
    path = tiny_suite(tmp_path, [GRID3D])
    run_dir = tmp_path / "results" / "grid3d_tiny"
    run_dir.mkdir(parents=True)
    (run_dir / "config.json").write_text(json.dumps({"train_fingerprint": "another configuration"}))
    return ["run", str(path), "-q"]


def _empty_folders(tmp_path: Path, video: bytes | None = None) -> tuple[str, str]:
    """Two folders for ``compare``, each with ``clip.mp4`` holding ``video`` when given."""
    folders = (tmp_path / "real", tmp_path / "recon")
    for folder in folders:
        folder.mkdir()
        if video is not None:
            (folder / "clip.mp4").write_bytes(video)
    return str(folders[0]), str(folders[1])


@pytest.mark.parametrize("case, needles", [
    ("suite key", ["suite.yaml", "unknown key 'train.stepz'"]),
    ("dataset key", ["data.fold: 2 is read only by dataset ucf101"]),
    ("data folder", ["data folder not found", "no_such_folder"]),
    ("results folder", ["no metrics.json under", "run a suite first"]),
    ("different configuration", ["holds results of a different configuration of 'grid3d_tiny'"]),
    ("compare folders", ["no videos", "real"]),
    ("undecodable video", ["cannot open video", "clip.mp4"]),
])
def test_expected_errors_are_one_line_and_exit_code_2(tmp_path, capsys, case, needles):
    suite = tiny_suite(tmp_path, [GRID3D])
    missing = str(tmp_path / "no_such_folder")
    args = {
        "suite key": lambda: ["run", str(suite), "--set", "train.stepz=1"],
        "dataset key": lambda: ["run", str(suite), "--set", "data.fold=2"],
        "data folder": lambda: ["run", str(suite), "--set", "data.dataset=folder", "--set", f"data.root={missing}"],
        "results folder": lambda: ["leaderboard", missing],
        "different configuration": lambda: _different_configuration(tmp_path),
        "compare folders": lambda: ["compare", *_empty_folders(tmp_path), "--metrics", "psnr"],
        "undecodable video": lambda: ["compare", *_empty_folders(tmp_path, b"not a video" * 100), "--metrics", "psnr"],
    }[case]()
    code, _, err = cli(capsys, *args)
    assert_one_error_line(code, err, *needles)


def test_verbose_prints_the_traceback_of_an_expected_error_after_its_line(tmp_path, capsys):
    code, _, err = cli(capsys, "-v", "leaderboard", str(tmp_path / "none"))
    assert code == EXPECTED_EXIT
    assert err.startswith("error: no metrics.json under") and len(error_lines(err)) == 1
    assert "Traceback" in err and "harness_core.errors.ResultsError" in err


def test_a_reference_to_a_run_outside_the_suite_is_a_suite_error():
    from harness.config import Suite, SuiteError
    from harness.stages.context import RunContext

    suite = Suite.model_validate({"name": "x", "tokenizers": [
        {"id": "flex", "name": "grid3d", "kwargs": {"size": "tiny", "vae": "run:vae"}}]})
    with pytest.raises(SuiteError, match=r"tokenizers\[flex\]\.kwargs references run:vae, which is not an earlier entry"):
        RunContext(suite, torch.device("cpu"), show_progress=False).load_dependencies(suite.tokenizers[0])


# --------------------------------------------------------------------------- anything else: traceback, exit code 1


@pytest.mark.slow
def test_an_unexpected_error_in_a_stage_prints_its_traceback_and_exits_1(tmp_path, plugins, capsys):
    code, _, err = cli(capsys, "run", str(tiny_suite(tmp_path, [DIVIDES_BY_ZERO])), "-q")
    assert code == UNEXPECTED_EXIT, err[-3000:]
    assert "Traceback (most recent call last)" in err and "in training_losses" in err, err[-3000:]
    assert err.rstrip().splitlines()[-1] == "ZeroDivisionError: division by zero"
    assert error_lines(err) == []  # not dressed up as the user's error


@pytest.mark.slow
def test_the_process_exit_codes_end_to_end(tmp_path, plugin_env):
    """``python -m harness`` as a subprocess: 1 and the traceback for a bug, 2 and one line for a bad suite."""
    result = run_cli("run", str(tiny_suite(tmp_path, [DIVIDES_BY_ZERO])), "-q", env=plugin_env)
    assert result.returncode == UNEXPECTED_EXIT, result.stderr[-3000:]
    assert "Traceback" in result.stderr and result.stderr.rstrip().endswith("ZeroDivisionError: division by zero")
    result = run_cli("run", str(tiny_suite(tmp_path, [GRID3D])), "--set", "train.stepz=1")
    assert result.returncode == EXPECTED_EXIT and "Traceback" not in result.stderr
    assert len(error_lines(result.stderr)) == 1 and "unknown key 'train.stepz'" in result.stderr


# --------------------------------------------------------------------------- sub-commands


def test_a_subcommand_that_fails_to_import_is_reported_and_the_others_work(monkeypatch, capsys):
    real_import = importlib.import_module

    def import_module(name: str, *args, **kwargs):
        if name == "harness.compare":
            raise ModuleNotFoundError("No module named 'av'", name="av")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(importlib, "import_module", import_module)
    code, out, err = cli(capsys, "list")
    assert code == 0 and "tokenizers:" in out and "grid3d" in out
    assert err.splitlines() == ["warning: sub-command 'compare' unavailable: harness.compare failed to import: "
                                "ModuleNotFoundError: No module named 'av'"]
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    out, err = capsys.readouterr()
    assert exit_info.value.code == 0 and "profile" in out and "leaderboard" in out and "compare" not in out.split("{")[1]
    assert "harness.compare failed to import" in err


@pytest.mark.slow
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
