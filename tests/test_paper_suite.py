"""The paper suite's code path end to end on CPU (issue 24): suites/ucf101_128f.yaml on the UCF-101-style folder
of ../shared with tiny --set overrides only (scripts/gpu_check.sh's), through the clip store, padded short videos,
the seeded evaluation list, CoordTok's two stages and CoordTok-SiT's on-the-fly encoding; then the same evaluation
and sampling as two processes (torchrun, gloo) from the one-process checkpoints and cache folder (clip store, real
FVD statistics: building both under several processes is tests/test_reproducibility.py's two-node test) gives the
one-process values within 1e-6 relative, and the same evaluation list."""
from __future__ import annotations

import json
import os
import shutil
import subprocess

import pandas as pd
import pytest

from conftest import REPO, shared_path

pytestmark = pytest.mark.slow


def gpu_check(out, procs: int) -> subprocess.CompletedProcess:
    root = shared_path("data", "ucf101_mini")
    env = {**os.environ, "OUT": str(out), "PROCS": str(procs), "PYTHON": os.environ.get("PYTHON", str(REPO / ".venv/bin/python"))
           if (REPO / ".venv/bin/python").exists() else "python3"}
    return subprocess.run(["bash", "scripts/gpu_check.sh", str(root)], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=1500)


def test_paper_suite_on_cpu_one_and_two_processes(tmp_path):
    one = gpu_check(tmp_path / "one", 1)
    assert one.returncode == 0, one.stderr[-3000:]
    lines = [line for line in one.stdout.splitlines() if line.startswith("gpu_check: coordtok_l_1280")]
    assert [line.split()[2] for line in lines] == ["train", "reconstruct", "evaluate", "generate"]
    results = tmp_path / "one" / "results"
    run = results / "coordtok_l_1280"
    record = json.loads((run / "metrics.json").read_text())
    assert record["protocol"]["resize"] == "bicubic_pil" and record["protocol"]["padded_clips"] >= 1
    assert {"psnr", "ssim_gray", "lpips_vgg", "fvd_128f", "fvd_16f_chunks"} <= set(record["metrics"])
    titles = {spec["key"]: spec["title"] for spec in record["metric_specs"]}
    assert titles["fvd_128f"] == "rFVD 96f"  # the frames actually scored (the suite's clips were cut to 96 frames)
    generation = json.loads((run / "generation" / "metrics.json").read_text())
    assert generation["generator"]["train_data"] == "epochs" and "first 4 training videos" in generation["gfvd_protocol"]["generation"]["real_clips"]

    # two processes: the one-process checkpoints and cache, the evaluation and sampling again
    shutil.copytree(tmp_path / "one", tmp_path / "two")
    copy = tmp_path / "two" / "results" / "coordtok_l_1280"
    for name in ("metrics.json", "per_video.csv", "per_frame.csv", "reconstruct.json", "generation/metrics.json"):
        (copy / name).unlink()
    shutil.rmtree(copy / "recon", ignore_errors=True)
    two = gpu_check(tmp_path / "two", 2)
    assert two.returncode == 0, two.stderr[-3000:]
    assert (tmp_path / "two" / "results" / "eval_list.txt").read_text() == (results / "eval_list.txt").read_text()
    second = json.loads((copy / "metrics.json").read_text())
    assert second["shards"]["world_size"] == 2
    for key, value in record["metrics"].items():
        assert second["metrics"][key] == pytest.approx(value, rel=1e-6, abs=1e-9), key
    a, b = pd.read_csv(run / "per_video.csv"), pd.read_csv(copy / "per_video.csv")
    assert list(a["clip"]) == list(b["clip"])
    for column in a.columns.drop(["clip", "video", "start", "label"]):
        assert b[column].to_numpy() == pytest.approx(a[column].to_numpy(), rel=1e-6, abs=1e-9), column
    again = json.loads((copy / "generation" / "metrics.json").read_text())
    for key in ("gfvd_128f", "gfvd_16f"):
        assert again[key] == pytest.approx(generation[key], rel=1e-6), key
