"""Typed records per stage (issue 25 item 3): written and read through the same classes, and a report of a results
folder that needs no metric code: a plugin metric whose module cannot be imported any more keeps its column, title
and direction arrow."""
from __future__ import annotations

import json
import sys
import textwrap

import yaml

from harness.config import load_suite
from harness.records import ReconstructRecord, TrainRecord
from harness.runner import SuiteRunner

PLUGIN_METRIC = '''
from metrics.base import VideoMetric, to_unit_range


class MeanAbsoluteDifference(VideoMetric):
    """Mean absolute RGB difference per video on [0, 1] (lower is better)."""

    name = "mad"
    title = "MAD plugin"
    higher_is_better = False
    unit = "[0, 1] RGB"
    digits = 3

    def video_values(self, real, fake):
        return (to_unit_range(real) - to_unit_range(fake)).abs().flatten(1).mean(dim=1).double()
'''


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


def test_a_report_needs_no_metric_code(tmp_path, monkeypatch):
    plugin = tmp_path / "plugin"
    plugin.mkdir()
    (plugin / "mad_metric_plugin.py").write_text(textwrap.dedent(PLUGIN_METRIC))
    monkeypatch.syspath_prepend(str(plugin))
    suite = {"name": "records", "seed": 0, "output_dir": str(tmp_path / "results"),
             "data": {"dataset": "samples", "resolution": 32, "frames": 16, "cache_dir": str(tmp_path / "cache")},
             "train": {"steps": 1, "batch_size": 2},
             "evaluate": {"metrics": ["psnr", "mad_metric_plugin:MeanAbsoluteDifference"], "batch_size": 3},
             "tokenizers": [{"id": "grid", "name": "grid3d", "kwargs": {"size": "tiny", "channels": 8}}]}
    (tmp_path / "suite.yaml").write_text(yaml.safe_dump(suite))
    results = SuiteRunner(load_suite(tmp_path / "suite.yaml"), show_progress=False).run()
    specs = {s["key"]: s for s in json.loads((results / "grid" / "metrics.json").read_text())["metric_specs"]}
    assert specs["mad"]["higher_is_better"] is False and specs["mad"]["reference"] == "mad_metric_plugin:MeanAbsoluteDifference"

    # the plugin is gone: no module on the path, none imported
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p != str(plugin)])
    sys.modules.pop("mad_metric_plugin", None)
    from harness import report
    from harness_core.registry import METRICS

    try:
        METRICS.get("mad_metric_plugin:MeanAbsoluteDifference")
        raise AssertionError("the plugin metric is still importable")
    except ImportError:
        pass
    data = report.ReportData.load(results)
    assert data.spec("mad").header == "MAD plugin ↓" and not data.unresolved and not data.notes
    board = report.write_leaderboard(data).read_text()
    assert "MAD plugin ↓" in board and "PSNR ↑" in board
