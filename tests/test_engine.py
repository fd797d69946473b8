"""The engine end to end on real videos: suites, data, training, runner, errors, plugins."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from harness.chunks import merge_chunks, split_into_chunks
from harness.config import DataConfig, SuiteError, load_suite
from harness.config.load import apply_override
from harness.data.datasets import build_dataset
from harness.data.sampling import ClipCache, evaluation_clips

from conftest import REPO, cli, run_cli, shared_path

PLUGIN_DIR = REPO / "examples" / "plugin"


def tiny_suite(tmp_path: Path, tokenizers: list[dict], **overrides) -> Path:
    """A small real-video suite (samples, 16 frames at 32x32) written to ``tmp_path/suite.yaml``."""
    suite = {
        "name": "tiny",
        "output_dir": str(tmp_path / "results"),
        "data": {"dataset": "samples", "resolution": 32, "frames": 16},
        "train": {"steps": 3, "batch_size": 2, "checkpoint_every": 1},
        "evaluate": {"metrics": ["psnr", "ssim"], "batch_size": 3},
        "tokenizers": tokenizers,
    }
    for key, value in overrides.items():
        suite[key] = {**suite.get(key, {}), **value} if isinstance(value, dict) else value
    path = tmp_path / "suite.yaml"
    path.write_text(yaml.safe_dump(suite))
    return path


GRID3D = {"id": "grid3d_tiny", "name": "grid3d", "kwargs": {"size": "tiny", "channels": 8}}


# --------------------------------------------------------------------------- config


def test_misspelled_key_names_key_and_allowed_keys(tmp_path):
    path = tiny_suite(tmp_path, [GRID3D])
    raw = yaml.safe_load(path.read_text())
    raw["data"]["resolutoin"] = 64
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(SuiteError) as err:
        load_suite(path)
    message = str(err.value)
    assert "data.resolutoin" in message and "resolution" in message and "frame_stride" in message


def test_unknown_tokenizer_kwarg_is_rejected_before_work(tmp_path):
    path = tiny_suite(tmp_path, [{**GRID3D, "kwargs": {"sizee": "tiny"}}])
    with pytest.raises(SuiteError, match=r"unknown argument\(s\) \['sizee'\] for grid3d"):
        load_suite(path)


def test_set_overrides_address_tokenizers_by_id():
    raw = {"train": {"steps": 5}, "tokenizers": [{"id": "a", "kwargs": {}}, {"id": "b", "kwargs": {}}]}
    apply_override(raw, "train.steps=7")
    apply_override(raw, "tokenizers.b.kwargs.size=tiny")
    apply_override(raw, "data.root=/x/y")
    assert raw["train"]["steps"] == 7 and raw["tokenizers"][1]["kwargs"] == {"size": "tiny"} and raw["data"]["root"] == "/x/y"
    with pytest.raises(SuiteError, match="no list element"):
        apply_override(raw, "tokenizers.c.kwargs.size=tiny")


def test_missing_data_folder_gives_one_clear_error_line(tmp_path, capsys):
    missing = tmp_path / "no_such_folder"
    path = tiny_suite(tmp_path, [GRID3D], data={"dataset": "folder", "root": str(missing)})
    code, _, err = cli(capsys, "run", str(path), "-q")
    assert code == 2
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and str(missing) in lines[0] and lines[0].startswith("error:")


def test_missing_ucf101_folder_says_what_to_download(tmp_path, capsys):
    code, _, err = cli(capsys, "run", str(REPO / "suites/ucf101_128f.yaml"), "--set", f"data.root={tmp_path / 'UCF-101'}", "-q")
    assert code == 2
    assert "UCF-101" in err and "download" in err and str(tmp_path / "UCF-101") in err


def test_corrupt_video_names_its_path(tmp_path, capsys):
    folder = tmp_path / "videos"
    folder.mkdir()
    corrupt = folder / "broken.mp4"
    corrupt.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    path = tiny_suite(tmp_path, [GRID3D], data={"dataset": "folder", "root": str(folder), "cache_dir": str(tmp_path / "cache")})
    code, _, err = cli(capsys, "run", str(path), "-q")
    assert code == 2
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and str(corrupt) in lines[0]


# --------------------------------------------------------------------------- data


def test_samples_train_and_eval_frames_are_disjoint_and_eval_clips_deterministic():
    cfg = DataConfig(dataset="samples", resolution=32, frames=16, eval_clips_per_video=2)
    dataset = build_dataset(cfg)
    for train, held_out in zip(dataset.train, dataset.eval):
        assert train.path == held_out.path and train.stop <= held_out.start
    first, second = evaluation_clips(dataset, seed=3), evaluation_clips(dataset, seed=3)
    assert [c.start for c in first] == [c.start for c in second]
    for clip in first:
        assert clip.record.start <= clip.start and clip.start + dataset.clip_span <= clip.record.stop
    by_video: dict = {}
    for clip in first:
        by_video.setdefault(clip.record.path, []).append(clip.start)
    for starts in by_video.values():
        assert len(starts) == 2 and abs(starts[0] - starts[1]) >= dataset.clip_span


def test_eval_clips_are_cached_and_not_decoded_again(tmp_path):
    dataset = build_dataset(DataConfig(dataset="samples", resolution=32, frames=16, cache_dir=str(tmp_path)))
    clip = evaluation_clips(dataset, 0)[2]
    cache = ClipCache(tmp_path)
    frames = cache.load(clip)
    cached = next((tmp_path / "clips").glob("*.npy"))
    stamp = cached.stat().st_mtime_ns
    again = cache.load(clip)
    assert frames.dtype == np.uint8 and frames.shape == (16, 32, 32, 3)
    assert np.array_equal(frames, again) and cached.stat().st_mtime_ns == stamp


def test_ucf101_official_split_and_labels():
    root = shared_path("data", "ucf101_mini")
    dataset = build_dataset(DataConfig(dataset="ucf101", root=str(root), resolution=32, frames=16))
    assert dataset.classes == ["HandleObject", "RideBike", "WalkCampus"]
    train_files = {r.path.name for r in dataset.train}
    eval_files = {r.path.name for r in dataset.eval}
    assert not train_files & eval_files
    assert all("_g0" in name and int(name.split("_g")[1][:2]) <= 7 for name in eval_files)
    assert {r.label for r in dataset.eval} == {0, 1, 2}


def test_split_and_merge_chunks_round_trip():
    video = torch.randn(2, 3, 37, 8, 8)
    chunks, pad = split_into_chunks(video, 16)
    assert chunks.shape == (6, 3, 16, 8, 8) and pad == 11
    assert torch.equal(merge_chunks(chunks, 2, pad), video)


# --------------------------------------------------------------------------- runs


@pytest.mark.slow
def test_rerun_reuses_every_stage_and_killed_training_resumes(tmp_path):
    path = tiny_suite(tmp_path, [GRID3D], train={"steps": 8, "batch_size": 2, "checkpoint_every": 1})
    run_dir = tmp_path / "results" / "grid3d_tiny"
    process = subprocess.Popen([sys.executable, "-m", "harness", "run", str(path), "-q"], cwd=REPO,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 300
    while not (run_dir / "checkpoint.pt").is_file():
        assert process.poll() is None, process.stdout.read()
        assert time.time() < deadline, "no checkpoint within 300 s"
        time.sleep(0.2)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not (run_dir / "train.json").exists()
    killed_at = torch.load(run_dir / "checkpoint.pt", weights_only=True)["step"]
    assert 1 <= killed_at < 8

    second = run_cli("run", str(path), "-q")
    assert second.returncode == 0, second.stderr
    assert "resuming from" in second.stderr
    train = json.loads((run_dir / "train.json").read_text())
    assert train["resumed_from"] >= killed_at and train["steps"] == 8
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["metrics"]["psnr"] > 0 and (tmp_path / "results" / "leaderboard.md").is_file()

    began = time.perf_counter()
    third = run_cli("run", str(path), "-q")
    elapsed = time.perf_counter() - began
    assert third.returncode == 0, third.stderr
    assert "train: reusing" in third.stderr and "evaluate: reusing" in third.stderr
    assert elapsed < 60
    assert json.loads((run_dir / "metrics.json").read_text()) == metrics


@pytest.mark.slow
def test_paper_suite_runs_through_the_ucf101_loader(tmp_path, capsys):
    root = shared_path("data", "ucf101_mini")
    suite = load_suite(REPO / "suites" / "ucf101_128f.yaml", overrides=[f"data.root={root}"])
    grid = next(t.id for t in suite.tokenizers if t.name == "grid3d")
    code, _, err = cli(
        capsys, "run", str(REPO / "suites/ucf101_128f.yaml"), "-q", "--only", grid, "--output-dir", str(tmp_path / "results"),
        "--set", f"data.root={root}", "--set", "data.frames=16", "--set", "data.resolution=32", "--set", "data.num_workers=0",
        "--set", f"data.cache_dir={tmp_path / 'cache'}", "--set", "train.steps=2", "--set", "train.batch_size=2",
        "--set", "train.micro_batch_size=2", "--set", "evaluate.metrics=[psnr,ssim]", "--set", "generation=null",
        "--set", f"tokenizers.{grid}.kwargs={{size: tiny, channels: 8}}", "--set", f"tokenizers.{grid}.train={{}}",
        "--set", f"tokenizers.{grid}.generation=null", "--set", "data.eval_clips=12",
    )
    assert code == 0, err[-3000:]
    metrics = json.loads((tmp_path / "results" / grid / "metrics.json").read_text())
    assert metrics["protocol"]["dataset"] == "ucf101" and metrics["protocol"]["num_videos"] == 12
    assert len((tmp_path / "results" / "eval_list.txt").read_text().splitlines()) == 12
    assert np.isfinite(metrics["metrics"]["psnr"])


# --------------------------------------------------------------------------- plugins


PLUGIN_TOKENIZER = {"id": "plugin", "name": "linear_patch_tokenizer:LinearPatchTokenizer", "kwargs": {"channels": 8}}


@pytest.mark.slow
@pytest.mark.parametrize("how", ["module_class", "entry_point"])
def test_external_tokenizer_runs_through_a_suite(tmp_path, how):
    env = {"PYTHONPATH": os.pathsep.join([str(PLUGIN_DIR), str(tmp_path / "site")])}
    entry = dict(PLUGIN_TOKENIZER)
    if how == "entry_point":
        # what `pip install examples/plugin` leaves on sys.path: a dist-info with the entry point
        dist = tmp_path / "site" / "linear_patch_tokenizer-0.1.0.dist-info"
        dist.mkdir(parents=True)
        (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: linear-patch-tokenizer\nVersion: 0.1.0\n")
        (dist / "entry_points.txt").write_text("[harness.tokenizers]\nlinear_patch = linear_patch_tokenizer:LinearPatchTokenizer\n")
        entry["name"] = "linear_patch"
        listed = run_cli("list", env=env)
        assert listed.returncode == 0 and "linear_patch" in listed.stdout
    path = tiny_suite(tmp_path, [entry])
    result = run_cli("run", str(path), "-q", env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((tmp_path / "results" / "plugin" / "metrics.json").read_text())
    assert metrics["tokens_per_video"] == 4 * 4 * 4 and np.isfinite(metrics["metrics"]["psnr"])


def test_readme_worked_example_is_the_plugin_file():
    readme = (REPO / "README.md").read_text()
    source = (PLUGIN_DIR / "linear_patch_tokenizer.py").read_text()
    start = source.index("class LinearPatchTokenizer")
    assert textwrap.dedent(source[start:]).strip()[:400] in readme


# --------------------------------------------------------------------------- distributed


def parameters_without_gradient(model: torch.nn.Module, objective: torch.nn.Module, *args) -> list[str]:
    """Names of ``model``'s trainable parameters that one backward of ``objective(*args)`` leaves without a gradient."""
    model.zero_grad(set_to_none=True)
    out = objective(*args)
    (out["loss"] + out.get("disc_loss", 0.0)).backward()
    return [name for name, p in model.named_parameters() if p.requires_grad and p.grad is None]


#: families whose official recipe trains some parameters only on some steps (OmniTokenizer: image and video batches)
TRAINS_PARTS_PER_STEP = {"omnitokenizer"}

GAN_LOSS = {"gan": "hinge", "disc_start": 2, "perceptual_weight": 0.0, "disc_channels": 8}


@pytest.mark.parametrize("case", ["samples_cpu", "grid3d_vq", "frame2d_vq", "pvdm"])
def test_declared_unused_parameters_hold_at_first_and_last_steps(case):
    """``unused_parameters = False`` lets DDP skip its per-step search, so it must hold at every step: every
    tokenizer of the demo suite trains every parameter at its first and last step (CoordTok: stages 1 and 2), except the
    families that declare ``True`` because their recipe alternates what a step trains; with a GAN from step 2
    the tokenizer declares ``True`` and the discriminator is indeed idle at step 0, with ``disc_start: 0`` ``False``."""
    from harness.stages.context import build_tokenizer
    from harness.train import TrainingObjective
    from harness_core.registry import create_tokenizer

    torch.manual_seed(0)
    video = torch.rand(1, 3, 32, 64, 64) * 2 - 1
    if case == "samples_cpu":
        suite = load_suite(REPO / "suites" / "samples_cpu.yaml")
        built: dict = {}
        for entry in (e for e in suite.tokenizers if not e.pretrained):
            tokenizer = built[entry.id] = build_tokenizer(suite, entry, built)
            steps = suite.train_config(entry).steps
            if entry.name in TRAINS_PARTS_PER_STEP:
                # image batches leave the video patch layers and the 3D discriminator idle (docs/omnitokenizer.md)
                assert tokenizer.unused_parameters is True, entry.id
                assert parameters_without_gradient(tokenizer, TrainingObjective(tokenizer).train(), video, 0), entry.id
                continue
            assert tokenizer.unused_parameters is False, entry.id
            for step in (0, steps - 1):
                assert parameters_without_gradient(tokenizer, TrainingObjective(tokenizer).train(), video, step) == [], \
                    (entry.id, step)
        return
    kwargs = {"size": "tiny", "channels": 8} if case != "pvdm" else {"size": "tiny"}
    video = video[:, :, :16, :32, :32]
    late = create_tokenizer(case, **kwargs, loss=GAN_LOSS)
    assert late.unused_parameters is True
    idle = parameters_without_gradient(late, TrainingObjective(late).train(), video, 0)
    assert idle and all(name.startswith("discriminator.") for name in idle), idle
    assert parameters_without_gradient(late, TrainingObjective(late).train(), video, 2) == []
    early = create_tokenizer(case, **kwargs, loss={**GAN_LOSS, "disc_start": 0})
    assert early.unused_parameters is False
    assert parameters_without_gradient(early, TrainingObjective(early).train(), video, 0) == []


@pytest.mark.parametrize("layout", ["triplane", "grid", "ar"])
def test_generators_train_every_parameter_as_declared(layout):
    """SiT (triplane and grid latents, class dropout) and the AR transformer declare ``unused_parameters = False``."""
    from harness.generation.ar import ARTransformer
    from harness.generation.sit import SiT
    from harness.generation.stage import GeneratorObjective

    torch.manual_seed(0)
    y = torch.randint(0, 3, (4,))
    if layout == "ar":
        model, x = ARTransformer(vocab_size=64, seq_len=20, size="tiny", num_classes=3, class_dropout=0.5), \
            torch.randint(0, 64, (4, 20))
    else:
        example = {"xy": torch.zeros(4, 8, 8), "xt": torch.zeros(4, 16, 8), "yt": torch.zeros(4, 16, 8)} \
            if layout == "triplane" else torch.zeros(4, 4, 8, 8)
        model = SiT(example, size="tiny", patch=2, num_classes=3, class_dropout=0.5)
        x = {k: torch.randn(4, *v.shape) for k, v in example.items()} if layout == "triplane" else torch.randn(4, 4, 4, 8, 8)
    assert model.unused_parameters is False
    for _ in range(3):  # class dropout draws differ between the calls
        assert parameters_without_gradient(model, GeneratorObjective(model, layout != "ar"), x, y) == []


@pytest.mark.slow
@pytest.mark.parametrize("mode, port", [("grid3d", 29531), ("videoflextok_stage0", 29532), ("generator", 29533),
                                        ("magvit_ema", 29534)])
def test_two_cpu_processes_keep_identical_parameters(tmp_path, mode, port):
    """Tokenizers and generators train through the one ``fit`` loop; after DDP training both ranks agree exactly."""
    script = REPO / "tests" / "ddp_train_check.py"
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={port}",
                             str(script), str(tmp_path), mode], capture_output=True, text=True, cwd=REPO, timeout=600)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    report = json.loads((tmp_path / "ddp_report.json").read_text())
    assert report["world_size"] == 2 and report["backend"] == "gloo"
    assert report["max_param_difference"] == 0.0 and report["changed_from_init"]
    assert report["stage0_cache_rows"] == (6 if mode == "videoflextok_stage0" else None)
