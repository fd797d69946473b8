"""Stages of a suite run: train -> reconstruct -> evaluate -> generate -> report.

Every tokenizer of a suite writes under ``<results>/<tokenizer id>/``:

* ``config.json``: the resolved configuration (suite keys, kwargs, code version);
* ``checkpoint.pt``: model and optimizer states and the step (resumable);
* ``train.json``: training costs (written when training finished);
* ``reconstruct.json`` and ``recon/<clip>.npy``: reconstructions (uint8) and
  encode/decode throughput, tokens per video, codebook usage;
* ``metrics.json`` and ``per_video.csv``: the summary and the per-video table.

A flexible tokenizer evaluated at several token budgets writes one such
``reconstruct/evaluate`` set per budget under ``budgets/<k>/``. Each stage
writes its files atomically and is skipped when its output exists, so a
rerun reuses everything finished and an interrupted training resumes from its
last checkpoint.
"""
from __future__ import annotations

import hashlib
import json
import logging
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from accelerate import PartialState

from harness.api import VideoTokenizer
from harness.clips import reconstruct_video
from harness.config import Suite, TokenizerEntry, generation_config, referenced_runs
from harness.data.cache import save_numpy_atomic, write_json_atomic
from harness.data.datasets import VideoDataset, build_dataset
from harness.data.decode import to_model_range, to_uint8
from harness.data.sampling import Clip, ClipCache, TrainClips, evaluation_clips
from harness.registry import METRICS, TOKENIZERS
from harness.train import count_parameters, train_tokenizer

log = logging.getLogger("harness.runner")


def code_version() -> str:
    """``git describe`` of the harness checkout, or ``unknown`` outside a git checkout."""
    try:
        out = subprocess.run(["git", "describe", "--always", "--dirty"], capture_output=True, text=True, timeout=10,
                             cwd=Path(__file__).resolve().parent)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


#: train settings added after results may already exist, with the value that behaves as before: left out of the
#: fingerprint at that value, so that existing result folders stay reusable.
LATER_TRAIN_FIELDS = {"stage0_cache_clips": 0}


def fingerprint(payload: Any) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:16]


@dataclass
class Variant:
    """One evaluated configuration of a trained tokenizer: a folder and a token budget (or ``None``)."""

    folder: Path
    budget: int | None

    @property
    def label_suffix(self) -> str:
        return "" if self.budget is None else f"@{self.budget}"


class SuiteRunner:
    """Runs a validated :class:`Suite` (see the module docstring for the folder layout)."""

    def __init__(self, suite: Suite, device: torch.device | None = None, show_progress: bool = True) -> None:
        self.suite = suite
        self.results = suite.results_dir()
        self.device = device or torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.show_progress = show_progress
        self._dataset: VideoDataset | None = None
        self._eval_clips: list[Clip] | None = None
        self._train_clips: TrainClips | None = None
        self._models: dict[str, VideoTokenizer] = {}

    # ------------------------------------------------------------------ data

    @property
    def dataset(self) -> VideoDataset:
        if self._dataset is None:
            self._dataset = build_dataset(self.suite.data)
            dropped = getattr(self._dataset, "dropped", [])
            if dropped:
                log.warning("dropped %d video(s) shorter than one clip: %s", len(dropped), ", ".join(dropped[:5]))
        return self._dataset

    @property
    def eval_clips(self) -> list[Clip]:
        if self._eval_clips is None:
            self._eval_clips = evaluation_clips(self.dataset, self.suite.seed)
        return self._eval_clips

    @property
    def train_clips(self) -> TrainClips:
        """The seeded training clip source, shared by every tokenizer (decoded ranges stay in memory)."""
        if self._train_clips is None:
            self._train_clips = TrainClips(self.dataset, self.suite.seed)
        return self._train_clips

    @property
    def clip_cache(self) -> ClipCache:
        return ClipCache(self.dataset.cache_dir)

    # ------------------------------------------------------------------ driver

    def run(self) -> Path:
        """Run every stage of every tokenizer, then the reports; returns the results folder.

        Under ``torchrun`` / ``accelerate launch`` every process trains (DDP);
        reconstruction, evaluation, generation and reports run on the main
        process while the others wait.
        """
        state = PartialState(cpu=self.device.type == "cpu")
        main = state.is_main_process
        if main:
            self.results.mkdir(parents=True, exist_ok=True)
            write_json_atomic(self.results / "suite.json", self.suite.model_dump(mode="json"))
            self.write_eval_clip_index()
        for entry in self.suite.tokenizers:
            started = time.perf_counter()
            log.info("== %s (%s)", entry.id, entry.name)
            if main:
                self.write_config(entry, self.results / entry.id)
            state.wait_for_everyone()
            tokenizer = self.trained_tokenizer(entry)
            if main:
                for variant in self.variants(entry, tokenizer):
                    self.reconstruct(entry, tokenizer, variant)
                    self.evaluate(entry, tokenizer, variant)
                self.generate(entry, tokenizer)
            state.wait_for_everyone()
            log.info("== %s done in %.1f s", entry.id, time.perf_counter() - started)
        if main:
            from harness.report import write_reports

            write_reports(self.results)
        return self.results

    def write_eval_clip_index(self) -> None:
        """``eval_clips.json``: every evaluation clip's id, source and cached ``uint8 [T, H, W, 3]`` file (for reports)."""
        index = []
        for clip in self.eval_clips:
            self.clip_cache.load(clip)
            index.append({"clip": clip.clip_id, "video": str(clip.record.path), "start": clip.start, "frames": clip.frames,
                          "stride": clip.stride, "resolution": clip.resolution, "label": clip.record.label,
                          "cached": str(self.clip_cache.path(clip))})
        write_json_atomic(self.results / "eval_clips.json", index)

    # ------------------------------------------------------------------ config

    def train_fingerprint(self, entry: TokenizerEntry) -> dict[str, Any]:
        data = self.suite.data.model_dump(mode="json")
        for key in ("max_eval_videos", "num_workers", "cache_dir", "memory_cache"):
            data.pop(key)
        train = self.suite.train_config(entry).model_dump(mode="json")
        for key, neutral in LATER_TRAIN_FIELDS.items():
            if train.get(key) == neutral:
                del train[key]
        return {"name": entry.name, "kwargs": entry.kwargs, "train": train, "data": data, "seed": self.suite.seed}

    def write_config(self, entry: TokenizerEntry, run_dir: Path) -> None:
        """Write ``config.json``; refuse to mix results of a different training configuration."""
        resolved = {
            "suite": self.suite.name, "tokenizer": entry.model_dump(mode="json"), "train_fingerprint": fingerprint(self.train_fingerprint(entry)),
            "train": self.suite.train_config(entry).model_dump(mode="json"), "data": self.suite.data.model_dump(mode="json"),
            "evaluate": self.suite.evaluate.model_dump(mode="json"), "seed": self.suite.seed, "code_version": code_version(),
        }
        path = run_dir / "config.json"
        if path.is_file():
            previous = json.loads(path.read_text())
            if previous.get("train_fingerprint") != resolved["train_fingerprint"]:
                raise RuntimeError(f"{run_dir} holds results of a different configuration of {entry.id!r} "
                                   f"(tokenizer kwargs, training schedule, data protocol or seed changed); "
                                   f"delete that folder or set another output_dir to start it afresh")
        write_json_atomic(path, resolved)

    # ------------------------------------------------------------------ train

    def build_tokenizer(self, entry: TokenizerEntry) -> VideoTokenizer:
        """Instantiate ``entry``; ``"run:<id>"`` kwargs become that run's trained, frozen tokenizer."""
        kwargs = dict(entry.kwargs)
        for key, value in entry.kwargs.items():
            if isinstance(value, str) and value.startswith("run:"):
                frozen = self._models[value[4:]]
                frozen.requires_grad_(False)
                frozen.eval()
                kwargs[key] = frozen
        return TOKENIZERS.create(entry.name, **kwargs)

    def trained_tokenizer(self, entry: TokenizerEntry) -> VideoTokenizer:
        """Train (or resume, or reuse) ``entry`` and return the model on the device in eval mode."""
        for dep in referenced_runs(entry):
            if dep not in self._models:
                raise RuntimeError(f"{entry.id} needs run {dep!r}, which has not been built in this suite run")
        tokenizer = self.build_tokenizer(entry)
        run_dir = self.results / entry.id
        checkpoint, done = run_dir / "checkpoint.pt", run_dir / "train.json"
        cfg = self.suite.train_config(entry)
        if done.is_file():
            log.info("train: reusing %s", done)
            if checkpoint.is_file():
                tokenizer.load_state_dict(torch.load(checkpoint, map_location="cpu", weights_only=False)["model"])
        else:
            if checkpoint.is_file():
                log.info("train: resuming from %s", checkpoint)
            started = time.perf_counter()
            result = train_tokenizer(tokenizer, self.train_clips, cfg, checkpoint, self.suite.seed, show_progress=self.show_progress)
            write_json_atomic(done, {
                "steps": result.steps, "resumed_from": result.resumed_from, "train_step_time_s": result.step_time_s,
                "peak_memory_mb": result.peak_memory_mb, "last_losses": result.last_losses,
                "wall_time_s": time.perf_counter() - started, "batch_size": cfg.batch_size,
                "memory_kind": "cuda max allocated" if self.device.type == "cuda" else "process peak RSS",
            })
        tokenizer.to(self.device).eval()
        self._models[entry.id] = tokenizer
        return tokenizer

    # ------------------------------------------------------------------ reconstruct

    def variants(self, entry: TokenizerEntry, tokenizer: VideoTokenizer) -> list[Variant]:
        run_dir = self.results / entry.id
        if entry.budgets:
            return [Variant(run_dir / "budgets" / str(k), k) for k in entry.budgets]
        return [Variant(run_dir, None)]

    @torch.no_grad()
    def reconstruct(self, entry: TokenizerEntry, tokenizer: VideoTokenizer, variant: Variant) -> None:
        """Reconstruct every evaluation clip into ``recon/<clip>.npy`` (uint8), resuming clip by clip."""
        done = variant.folder / "reconstruct.json"
        if done.is_file():
            log.info("reconstruct: reusing %s", done)
            return
        log.info("reconstruct: %s", variant.folder)
        recon_dir = variant.folder / "recon"
        recon_dir.mkdir(parents=True, exist_ok=True)
        usage = _codebook_counter(tokenizer)
        timings: dict[str, float] = {}
        tokens_per_video, videos = None, 0
        infos: dict[str, Any] = {}
        batch = self.suite.evaluate.batch_size
        todo = [c for c in self.eval_clips if not (recon_dir / f"{c.clip_id}.npy").is_file()]

        def on_tokens(tokens):
            if usage is not None and tokens.indices is not None:
                usage.update(tokens.indices)
            infos.update({k: v for k, v in tokens.info.items() if isinstance(v, (int, float, str, bool))})

        for first in range(0, len(todo), batch):
            group = todo[first : first + batch]
            real = to_model_range(np.stack([self.clip_cache.load(c) for c in group])).to(self.device)
            recon, tokens_per_video = reconstruct_video(tokenizer, real, num_tokens=variant.budget,
                                                        clip_batch=self.suite.evaluate.clip_batch, on_tokens=on_tokens, timings=timings)
            for clip, video in zip(group, to_uint8(recon)):
                save_numpy_atomic(recon_dir / f"{clip.clip_id}.npy", video)
            videos += len(group)
        if tokens_per_video is None:
            data = self.suite.data
            tokens_per_video = tokenizer.num_tokens(data.frames, data.resolution, data.resolution)
        summary: dict[str, Any] = {"tokens_per_video": int(tokens_per_video), "videos_timed": videos}
        if videos:
            summary["encode_videos_per_s"] = videos / max(timings["encode_s"], 1e-9)
            summary["decode_videos_per_s"] = videos / max(timings["decode_s"], 1e-9)
        if usage is not None:
            summary.update(usage.compute())
        if infos:
            summary["token_info"] = infos
        write_json_atomic(done, summary)

    # ------------------------------------------------------------------ evaluate

    def build_metrics(self) -> dict[str, Any]:
        metrics = {}
        for name in self.suite.evaluate.metrics:
            metric = METRICS.create(name, **self.suite.evaluate.metric_kwargs.get(name, {}))
            if hasattr(metric, "use_real_cache"):
                key = {"dataset": self.dataset.fingerprint(), "seed": self.suite.seed, "clips": len(self.eval_clips)}
                metric.use_real_cache(key, self.dataset.cache_dir / "fvd")
            metrics[name] = metric.to(self.device)
        return metrics

    @torch.no_grad()
    def evaluate(self, entry: TokenizerEntry, tokenizer: VideoTokenizer, variant: Variant) -> None:
        """Score the reconstructions against the real clips; write ``metrics.json`` and ``per_video.csv``."""
        out = variant.folder / "metrics.json"
        if out.is_file():
            log.info("evaluate: reusing %s", out)
            return
        log.info("evaluate: %s", variant.folder)
        metrics = self.build_metrics()
        rows: list[dict[str, Any]] = []
        batch = self.suite.evaluate.batch_size
        recon_dir = variant.folder / "recon"
        for first in range(0, len(self.eval_clips), batch):
            group = self.eval_clips[first : first + batch]
            real = to_model_range(np.stack([self.clip_cache.load(c) for c in group])).to(self.device)
            fake = to_model_range(np.stack([np.load(recon_dir / f"{c.clip_id}.npy") for c in group])).to(self.device)
            group_rows = [{"clip": c.clip_id, "video": str(c.record.path.name), "start": c.start, "label": c.record.label} for c in group]
            for name, metric in metrics.items():
                metric.update(real, fake)
                if metric.per_video:
                    for row, value in zip(group_rows, metric.last_values.tolist()):
                        row[name] = value
            rows.extend(group_rows)
        summary: dict[str, Any] = {}
        protocol: dict[str, Any] = {}
        for name, metric in metrics.items():
            summary.update(metric.compute())
            protocol.update(metric.protocol())
            if hasattr(metric, "save_real_cache"):
                metric.save_real_cache()
        pd.DataFrame(rows).to_csv(variant.folder / "per_video.csv.tmp", index=False)
        (variant.folder / "per_video.csv.tmp").replace(variant.folder / "per_video.csv")
        write_json_atomic(out, self.result_record(entry, tokenizer, variant, summary, protocol))
        if not self.suite.evaluate.keep_reconstructions:
            for path in recon_dir.glob("*.npy"):
                path.unlink()

    def result_record(self, entry: TokenizerEntry, tokenizer: VideoTokenizer, variant: Variant,
                      summary: dict[str, Any], protocol: dict[str, Any]) -> dict[str, Any]:
        data = self.suite.data
        recon = json.loads((variant.folder / "reconstruct.json").read_text())
        train = json.loads((self.results / entry.id / "train.json").read_text())
        tokens = recon["tokens_per_video"]
        return {
            "row": entry.id + variant.label_suffix,
            "tokenizer_id": entry.id,
            "tokenizer": entry.name,
            "budget": variant.budget,
            "tokens_per_video": tokens,
            "compression_ratio": data.frames * data.resolution * data.resolution / tokens if tokens else None,
            "parameters": count_parameters(tokenizer),
            "metrics": summary,
            "protocol": {
                "dataset": data.dataset, "fold": data.fold if data.dataset == "ucf101" else None, "frames": data.frames,
                "frame_stride": data.frame_stride, "resolution": data.resolution, "num_videos": len(self.eval_clips),
                "eval_clips_per_video": data.eval_clips_per_video, "seed": self.suite.seed, "split": "official test list" if data.dataset == "ucf101" else "held-out tail frames of each video",
                "clip_frames": tokenizer.clip_frames, "code_version": code_version(), "metrics": protocol,
            },
            "costs": {
                "train_steps": train["steps"], "train_step_time_s": train["train_step_time_s"], "train_batch_size": train["batch_size"],
                "peak_memory_mb": train["peak_memory_mb"], "memory_kind": train["memory_kind"],
                "encode_videos_per_s": recon.get("encode_videos_per_s"), "decode_videos_per_s": recon.get("decode_videos_per_s"),
            },
            "codebook": {k: v for k, v in recon.items() if k.startswith("codebook")} or None,
            "token_info": recon.get("token_info"),
        }

    # ------------------------------------------------------------------ generate

    def generate(self, entry: TokenizerEntry, tokenizer: VideoTokenizer) -> None:
        """Train a generator on the tokenizer's tokens and score samples with gFVD (when the suite enables it)."""
        cfg = generation_config(self.suite, entry)
        if cfg is None or not getattr(cfg, "enabled", True):
            return
        log.info("generate: %s", entry.id)
        from harness.generation.stage import run_generation_stage

        def train_clips(n: int, seed: int):
            # an index range of its own, disjoint from the tokenizer's training indices of any realistic run
            return self.train_clips.batch([(1 << 40) + seed * 1_000_003 + i for i in range(n)])

        run_generation_stage(tokenizer, train_clips, cfg, self.results / entry.id, self.device,
                             num_classes=len(self.dataset.classes))


def _codebook_counter(tokenizer: VideoTokenizer):
    size = tokenizer.codebook_size()
    if size is None:
        return None
    from metrics.codebook import CodebookUsage

    return CodebookUsage(size)
