"""The stages as parts (issue 25): each stage module run directly on a RunContext built by a fixture, a plugin stage
added through the registry with no edit outside its module and config block, and backend flags set per stage and
restored after it (TF32 requested by generation is off again for a later tokenizer's evaluation)."""
from __future__ import annotations

import json
import sys
import textwrap

import pandas as pd
import pytest
import torch
import yaml

from harness.config import load_suite
from harness.records import ReconstructRecord, RunRecord, TrainRecord
from harness.runner import SuiteRunner
from harness.stages.base import Work
from harness.stages.context import RunContext
from harness.stages.evaluate import EvaluateStage
from harness.stages.generate import GenerateStage
from harness.stages.reconstruct import ReconstructStage
from harness.stages.report import ReportStage
from harness.stages.train import TrainStage

GRID = {"id": "grid", "name": "grid3d", "kwargs": {"size": "tiny", "channels": 8}}
GENERATION = {"enabled": True, "model": "tiny", "steps": 2, "batch_size": 2, "train_data": "pool", "num_train_clips": 4,
              "num_norm_clips": 4, "encode_batch_size": 4, "sampling_steps": 3, "num_samples": 2, "num_real": 2,
              "real_clips": "draws", "sample_batch_size": 2, "fvd_protocols": ["fvd_16f"], "num_gif_samples": 0}


def suite_file(tmp_path, tokenizers, **extra) -> str:
    suite = {"name": "stages", "seed": 0, "output_dir": str(tmp_path / "results"),
             "data": {"dataset": "samples", "resolution": 32, "frames": 16, "cache_dir": str(tmp_path / "cache")},
             "train": {"steps": 2, "batch_size": 2, "checkpoint_every": 2},
             "evaluate": {"metrics": ["psnr", "fvd_16f"], "batch_size": 3}, "tokenizers": tokenizers, **extra}
    path = tmp_path / "suite.yaml"
    path.write_text(yaml.safe_dump(suite))
    return str(path)


@pytest.fixture
def context(tmp_path) -> RunContext:
    """A RunContext of a tiny real suite (sample videos, one 2-step grid3d, PSNR and FVD, a tiny generator)."""
    return RunContext(load_suite(suite_file(tmp_path, [GRID], generation=GENERATION)), show_progress=False)


def test_each_stage_runs_on_a_context_and_then_is_done(context):
    entry = context.suite.tokenizers[0]
    work, folder = Work(entry), context.run_folder(entry)
    train = TrainStage()
    train.begin(context, work)
    assert json.loads(folder.config.read_text())["tokenizer"]["id"] == "grid"
    assert not train.done(context, work)
    with context.stage(train, work):
        train.run(context, work)
    assert train.done(context, work) and TrainRecord.read(folder.train).steps == 2 and folder.checkpoint.is_file()

    [variant] = context.variants(entry)
    row = Work(entry, variant)
    for stage in (ReconstructStage(), EvaluateStage()):
        assert not stage.done(context, row)
        with context.stage(stage, row):
            stage.run(context, row)
        assert stage.done(context, row)
    assert ReconstructRecord.read(variant.files.reconstruct).tokens_per_video == context.tokenizer(entry).tokens_per_video(16, 32, 32)
    record = RunRecord.from_json(json.loads(variant.files.metrics.read_text()))
    assert {s.key for s in record.specs} == {"psnr", "fvd_16f"} and record.metrics["fvd_16f_n"] == 3
    assert not list(variant.files.recon.glob("*.npy")) or context.suite.evaluate.keep_reconstructions
    assert ReconstructStage().done(context, row)  # the evaluation is current: no reconstruction needed

    generate = GenerateStage()
    assert not generate.done(context, work)
    with context.stage(generate, work):
        generate.run(context, work)
    assert generate.done(context, work) and json.loads(folder.generation_metrics.read_text())["gfvd_16f_n"] == 2

    report = ReportStage()
    with context.stage(report, Work()):
        report.run(context, Work())
    assert (context.results / "leaderboard.md").is_file()
    assert set(context.times) == {("grid", "train"), ("grid", "reconstruct"), ("grid", "evaluate"), ("grid", "generate"),
                                  ("(suite)", "report")}


TOY_STAGE = '''
from pydantic import BaseModel

from harness.stages.base import Stage


class ToyStage(Stage):
    """Writes a greeting per tokenizer entry (a plugin stage: this module plus its config block)."""

    name = "toy"
    scope = "tokenizer"

    class Config(BaseModel):
        greeting: str

    def outputs(self, ctx, work):
        return [ctx.run_folder(work.entry).path / "toy.txt"]

    def run(self, ctx, work):
        self.outputs(ctx, work)[0].write_text(f"{self.config.greeting} {work.entry.id}")
'''


@pytest.mark.slow
def test_a_plugin_stage_runs_from_its_module_and_config_block(tmp_path, monkeypatch):
    (tmp_path / "toy_stage_plugin.py").write_text(textwrap.dedent(TOY_STAGE))
    monkeypatch.syspath_prepend(str(tmp_path))
    path = suite_file(tmp_path, [{**GRID, "train": {"steps": 1}}], stages={"toy_stage_plugin:ToyStage": {"greeting": "hello"}})
    results = SuiteRunner(load_suite(path), show_progress=False).run()
    assert (results / "grid" / "toy.txt").read_text() == "hello grid"
    times = pd.read_csv(results / "stage_times.csv").set_index("tokenizer")
    assert list(times.columns) == ["train", "reconstruct", "evaluate", "generate", "toy", "report", "total"]
    assert times.loc["grid", "toy"] > 0
    from harness.config import SuiteError

    with pytest.raises(SuiteError, match=r"stages.toy_stage_plugin:ToyStage: greeting: Field required"):
        load_suite(suite_file(tmp_path, [GRID], stages={"toy_stage_plugin:ToyStage": {}}))
    with pytest.raises(SuiteError, match=r"stages.no_such_stage: unknown stage 'no_such_stage'"):
        load_suite(suite_file(tmp_path, [GRID], stages={"no_such_stage": None}))
    sys.modules.pop("toy_stage_plugin", None)


@pytest.mark.slow
def test_tf32_of_generation_is_restored_before_a_later_tokenizers_evaluation(tmp_path, monkeypatch):
    """Generation asks for TF32 (CoordTok-SiT's train_sit.py); the next tokenizer's evaluation must run without it.
    On a CPU the flags change no kernel, but the context sets and restores them all the same."""
    seen: dict[tuple[str, str], bool] = {}
    for cls in (GenerateStage, EvaluateStage):
        original = cls.run

        def spy(self, ctx, work, _original=original):
            seen[(work.entry.id, self.name)] = torch.backends.cuda.matmul.allow_tf32
            return _original(self, ctx, work)

        monkeypatch.setattr(cls, "run", spy)
    torch.backends.cuda.matmul.allow_tf32 = False
    first = {**GRID, "id": "first", "train": {"steps": 1}, "generation": GENERATION}
    second = {**GRID, "id": "second", "train": {"steps": 1}, "generation": {"enabled": False}}
    results = SuiteRunner(load_suite(suite_file(tmp_path, [first, second])), show_progress=False).run()
    assert seen == {("first", "generate"): True, ("first", "evaluate"): False, ("second", "evaluate"): False}
    assert torch.backends.cuda.matmul.allow_tf32 is False
    card = json.loads((results / "second" / "metrics.json").read_text())["environment"]["stage_backends"]
    assert card["evaluate"]["tf32_matmul"] is False and card["generate"]["tf32_matmul"] is True
    generation_card = json.loads((results / "first" / "generation" / "metrics.json").read_text())["environment"]
    assert generation_card["stage_backends"]["generate"]["tf32_matmul"] is True
