"""Typed records per stage (issue 25 item 3): written and read through the same classes. A report of a results folder
needs no metric code: tests/test_report_architecture.py, ``test_a_report_needs_no_metric_code``."""
from __future__ import annotations

import json

from harness.records import ReconstructRecord, TrainRecord


def test_stage_records_round_trip_and_keep_unknown_keys(tmp_path):
    train = TrainRecord(steps=3, train_step_time_s=0.5, last_losses={"loss": 1.0}, extra={"later_key": 7})
    train.write(tmp_path / "train.json")
    assert TrainRecord.read(tmp_path / "train.json") == train
    assert json.loads((tmp_path / "train.json").read_text())["later_key"] == 7
    recon = ReconstructRecord(tokens_per_video=64, videos_timed=3, codebook={"codebook_usage": 0.5, "codebook_perplexity": 9.0})
    recon.write(tmp_path / "reconstruct.json")
    data = json.loads((tmp_path / "reconstruct.json").read_text())
    assert data["codebook_usage"] == 0.5 and "codebook" not in data and "tiling_consistency" not in data
    assert ReconstructRecord.read(tmp_path / "reconstruct.json") == recon
