"""Stages of a suite run: train -> reconstruct -> evaluate -> generate -> report.

Every tokenizer of a suite writes under ``<results>/<tokenizer id>/``:

* ``config.json``: the resolved configuration (suite keys, kwargs, code version);
* ``checkpoint.pt``: model, optimizer states, step and RNG states (resumable);
* ``train.json``: training costs (written when training finished);
* ``recon/<clip>.npy`` and ``recon/batch_<k>.json``: reconstructions (uint8),
  written batch by batch, and ``reconstruct.json``: encode/decode throughput,
  tokens per video, codebook usage;
* ``metrics.json`` and ``per_video.csv``: the summary and the per-video table.

A flexible tokenizer evaluated at several token budgets writes one such
``reconstruct/evaluate`` set per budget under ``budgets/<k>/``. Each stage
writes its files atomically and is skipped when its output exists, so a
rerun reuses everything finished, an interrupted training resumes from its
last checkpoint and an interrupted reconstruction from its last batch.

Reproducibility (issue 9): every random draw derives from the suite seed
through :mod:`harness.seeding`; reconstruction batches are fixed (the
evaluation clips in order, ``evaluate.batch_size`` at a time) and each is
seeded by its index, so a resumed stage reproduces the uninterrupted one.
``metrics.json`` is reused only while its ``evaluation_fingerprint`` (metric
names, settings and protocol texts) matches. Non-finite latents,
reconstructions or metric values stop the stage with
:class:`harness.errors.NonFiniteError` naming the tokenizer and clip.

Under ``torchrun`` / ``accelerate launch`` every process trains (tokenizers
and generators, :func:`harness.fit.fit`) and every process reconstructs and
scores a contiguous, disjoint share of the evaluation batches (and samples a
share of the gFVD sample batches, :mod:`harness.generation.stage`): the
batches and their seeds do not depend on the number of processes, the metric
states are reduced with their ``dist_reduce_fx`` and the per-video rows
gathered in rank order (:class:`harness.scoring.Scorer`), so the values equal
the one-process values (up to the order of floating-point sums). ``metrics.json``
records which rank handled which clips (``shards``). The main process writes
the summaries and reports; the others wait at barriers (process-group timeout
:data:`STAGE_WAIT_TIMEOUT`). The results folder must be on a file system all
processes share.
"""
from __future__ import annotations

import hashlib
import json
import logging
import subprocess
import time
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pandas as pd
import torch
from accelerate import PartialState
from torch import Tensor

from harness.api import VideoTokenizer
from harness.clips import reconstruct_video, tiling_consistency
from harness.config import Suite, TokenizerEntry, generation_config, referenced_runs
from harness.data.datasets import VideoDataset, build_dataset
from harness.data.decode import to_model_range, to_uint8
from harness.data.sampling import EVAL_LIST_FILE, Clip, ClipCache, TrainClips, evaluation_clips, write_eval_list
from harness.data.store import ClipStore, open_store, prepare_store
from harness.errors import NonFiniteError
from harness.fit import write_history
from harness.generation.tree import tree_leaves
from harness.io import save_numpy_atomic, write_csv_atomic, write_json_atomic
from harness.memory import StageMemory
from harness.records import EVAL_CLIPS_FILE, PER_FRAME_FILE, PER_VIDEO_FILE, STAGE_TIMES_FILE, SUITE_FILE, Costs, Protocol, RunFolder, RunRecord
from harness.registry import METRICS, TOKENIZERS
from harness.results import values_sha256
from harness.scoring import Scorer
from harness.shards import gather_lists, my_share, shard_record, world_size
from harness.seeding import configure_determinism, derive_seed, environment_card, resolve_deterministic, seeded
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


#: how long processes wait for each other at a barrier (the clip store build, the main process writing summaries and reports)
STAGE_WAIT_TIMEOUT = timedelta(hours=12)


def fingerprint(payload: Any) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:16]


@dataclass
class Variant:
    """One evaluated configuration of a trained tokenizer: its files and a token budget (or ``None``)."""

    files: RunFolder
    budget: int | None

    @property
    def folder(self) -> Path:
        return self.files.path

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
        self._clip_cache: ClipCache | None = None
        self._store: ClipStore | None = None
        self._store_ready = False
        self._models: dict[str, VideoTokenizer] = {}
        self.deterministic = resolve_deterministic(suite.deterministic, self.device.type)
        self._evaluation_fingerprint: str | None = None

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
            self._eval_clips = evaluation_clips(self.dataset, derive_seed(self.suite.seed, "eval_clips"))
        return self._eval_clips

    @property
    def store(self) -> ClipStore | None:
        """The dataset's clip store (``data.store``, :mod:`harness.data.store`), or ``None``: built (or resumed) on
        first use in a single process; :meth:`run` builds it on the local main process before the others open it.
        Not built for a suite in which no tokenizer trains and no generator runs (evaluation clips alone are
        decoded once into the evaluation-clip cache anyway)."""
        if not self._store_ready:
            self._store = prepare_store(self.dataset) if self.uses_training_clips() else None
            self._store_ready = True
        return self._store

    def uses_training_clips(self) -> bool:
        """Whether some tokenizer of the suite trains here or some generation stage runs."""
        return any(not entry.pretrained or getattr(generation_config(self.suite, entry), "enabled", False)
                   for entry in self.suite.tokenizers)

    def prepare_store(self, state: PartialState) -> None:
        """Build the clip store on each node's main process, then open it (checked complete) on the others."""
        if state.is_local_main_process:
            _ = self.store
        state.wait_for_everyone()
        if not state.is_local_main_process:
            self._store = open_store(self.dataset) if self.uses_training_clips() else None
            self._store_ready = True

    @property
    def train_clips(self) -> TrainClips:
        """The seeded training clip source, shared by every tokenizer (from the clip store, or decoded ranges kept
        in memory, or decoded per clip)."""
        if self._train_clips is None:
            self._train_clips = TrainClips(self.dataset, derive_seed(self.suite.seed, "train_clips"), store=self.store)
        return self._train_clips

    @property
    def clip_cache(self) -> ClipCache:
        """The evaluation clips' source (cut from the clip store, or decoded once into the cache), built once."""
        if self._clip_cache is None:
            self._clip_cache = ClipCache(self.dataset.cache_dir, store=self.store)
        return self._clip_cache

    # ------------------------------------------------------------------ driver

    def run(self) -> Path:
        """Run every stage of every tokenizer, then the reports; returns the results folder.

        Under ``torchrun`` / ``accelerate launch`` every process trains the
        tokenizers and the generators (DDP) and reconstructs, scores and samples
        a disjoint share of the clips and samples (:mod:`harness.shards`); the
        main process writes the summaries and the reports.
        """
        configure_determinism(self.deterministic)
        state = PartialState(cpu=self.device.type == "cpu", timeout=STAGE_WAIT_TIMEOUT)
        main = state.is_main_process
        self.prepare_store(state)
        if main:
            self.results.mkdir(parents=True, exist_ok=True)
            write_json_atomic(self.results / SUITE_FILE, self.suite.model_dump(mode="json"))
            self.write_eval_clip_index()
        times = StageTimes()
        for entry in self.suite.tokenizers:
            started = time.perf_counter()
            log.info("== %s (%s)", entry.id, entry.name)
            if main:
                self.write_config(entry, self.results / entry.id)
            state.wait_for_everyone()
            with times.stage(entry.id, "train"):
                tokenizer = self.trained_tokenizer(entry)
            for variant in self.variants(entry):  # every process reconstructs and scores its share of the clips
                if self.evaluation_current(variant):
                    log.info("evaluate: reusing %s", variant.files.metrics)
                    continue
                with times.stage(entry.id, "reconstruct"):
                    self.reconstruct(entry, tokenizer, variant)
                with times.stage(entry.id, "evaluate"):
                    self.evaluate(entry, tokenizer, variant)
            with times.stage(entry.id, "generate"):
                self.generate(entry, tokenizer)  # every process trains the generator and samples its share
            log.info("== %s done in %.1f s", entry.id, time.perf_counter() - started)
        if main:
            from harness.report import write_reports

            with times.stage("(suite)", "report"):
                write_reports(self.results)
            times.write(self.results / STAGE_TIMES_FILE)
        return self.results

    def write_eval_clip_index(self) -> None:
        """``eval_clips.json``: every evaluation clip's id, source and cached ``uint8 [T, H, W, 3]`` file (for reports;
        ``null`` with the clip store, whose frames reports decode again for the few clips they show) and real frame
        count when padded; ``eval_list.txt``: the same clips as ``relpath start end`` lines, which ``data.eval_list``
        reads back (:func:`harness.data.sampling.write_eval_list`)."""
        index = []
        cache = self.clip_cache
        for clip in self.eval_clips:
            path = cache.path(clip)
            if path is not None and not path.is_file():
                cache.load(clip)
            index.append({"clip": clip.clip_id, "video": str(clip.record.path), "start": clip.start, "frames": clip.frames,
                          "stride": clip.stride, "resolution": clip.resolution, "label": clip.record.label,
                          "cached": None if path is None else str(path), **({"n_frames": clip.n_frames} if clip.length else {})})
        write_json_atomic(self.results / EVAL_CLIPS_FILE, index)
        write_eval_list(self.results / EVAL_LIST_FILE, self.eval_clips, self.suite.data.root)

    # ------------------------------------------------------------------ config

    def train_fingerprint(self, entry: TokenizerEntry) -> dict[str, Any]:
        data = self.suite.data.model_dump(mode="json")
        for key in ("max_eval_videos", "num_workers", "cache_dir", "memory_cache", "store"):  # how clips are supplied
            data.pop(key)
        train = self.suite.train_config(entry).model_dump(mode="json")
        train.pop("log_with")  # where curves are logged does not change the model
        for key, neutral in LATER_TRAIN_FIELDS.items():
            if train.get(key) == neutral:
                del train[key]
        fingerprint = {"name": entry.name, "kwargs": entry.kwargs, "train": train, "data": data, "seed": self.suite.seed}
        if entry.pretrained:  # evaluation-only: no schedule
            fingerprint.update(train=None, pretrained=True)
        return fingerprint

    def write_config(self, entry: TokenizerEntry, run_dir: Path) -> None:
        """Write ``config.json``; refuse to mix results of a different training configuration."""
        resolved = {
            "suite": self.suite.name, "tokenizer": entry.model_dump(mode="json"), "train_fingerprint": fingerprint(self.train_fingerprint(entry)),
            "train": self.suite.train_config(entry).model_dump(mode="json"), "data": self.suite.data.model_dump(mode="json"),
            "evaluate": self.suite.evaluate.model_dump(mode="json"), "seed": self.suite.seed, "code_version": code_version(),
        }
        path = RunFolder(run_dir).config
        if path.is_file():
            previous = json.loads(path.read_text())
            if previous.get("train_fingerprint") != resolved["train_fingerprint"]:
                raise RuntimeError(f"{run_dir} holds results of a different configuration of {entry.id!r} "
                                   f"(tokenizer kwargs, training schedule, data protocol or seed changed); "
                                   f"delete that folder or set another output_dir to start it afresh")
        write_json_atomic(path, resolved)

    # ------------------------------------------------------------------ train

    def build_tokenizer(self, entry: TokenizerEntry) -> VideoTokenizer:
        """:func:`build_tokenizer` with this suite and the tokenizers trained so far."""
        return build_tokenizer(self.suite, entry, self._models)

    def trained_tokenizer(self, entry: TokenizerEntry) -> VideoTokenizer:
        """Train (or resume, or reuse) ``entry`` and return the model on the device in eval mode.

        The model is built under ``derive_seed(suite seed, id, "init")`` and trained with the tokenizer's
        seed ``derive_seed(suite seed, id)``; ``train.json`` records the stage's own peak memory
        (:class:`harness.memory.StageMemory`) and the environment card.
        """
        for dep in referenced_runs(entry):
            if dep not in self._models:
                raise RuntimeError(f"{entry.id} needs run {dep!r}, which has not been built in this suite run")
        seed = derive_seed(self.suite.seed, entry.id)
        run_dir = self.results / entry.id
        checkpoint, done = RunFolder(run_dir).checkpoint, RunFolder(run_dir).train
        cfg = self.suite.train_config(entry)
        if entry.pretrained:
            return self.pretrained_tokenizer(entry, seed, done)
        if not done.is_file():
            self.train_clips.preload()
        with StageMemory(self.device) as memory:
            with seeded(derive_seed(seed, "init")):
                tokenizer = self.build_tokenizer(entry)
            if done.is_file():
                log.info("train: reusing %s", done)
                if checkpoint.is_file():
                    tokenizer.load_state_dict(torch.load(checkpoint, map_location="cpu", weights_only=True)["model"])
            else:
                if checkpoint.is_file():
                    log.info("train: resuming from %s", checkpoint)
                started = time.perf_counter()
                result = train_tokenizer(tokenizer, self.train_clips, cfg, checkpoint, seed, show_progress=self.show_progress,
                                         label=entry.id)
                write_history(RunFolder(run_dir).losses, result.history)
                write_json_atomic(done, {
                    "steps": result.steps, "resumed_from": result.resumed_from, "train_step_time_s": result.step_time_s,
                    "peak_memory_mb": memory.current_peak_mb(), "memory_kind": memory.kind, "last_losses": result.last_losses,
                    "wall_time_s": time.perf_counter() - started, "batch_size": cfg.batch_size,
                    "environment": environment_card(self.device, self.deterministic),
                })
        tokenizer.to(self.device).eval()
        self._models[entry.id] = tokenizer
        return tokenizer

    def pretrained_tokenizer(self, entry: TokenizerEntry, seed: int, done: Path) -> VideoTokenizer:
        """An evaluation-only entry: built (it loads its own weights) and not trained; ``train.json`` records
        the weights' identity (``weights_identity()``: source, revision, sha256 of the weight files) when the
        tokenizer reports one."""
        with StageMemory(self.device) as memory:
            with seeded(derive_seed(seed, "init")):
                tokenizer = self.build_tokenizer(entry)
        if not done.is_file():
            identity = tokenizer.weights_identity() if hasattr(tokenizer, "weights_identity") else None
            write_json_atomic(done, {
                "steps": 0, "resumed_from": 0, "train_step_time_s": None, "batch_size": None, "pretrained": True,
                "weights": identity, "peak_memory_mb": memory.peak_mb, "memory_kind": memory.kind, "last_losses": {},
                "environment": environment_card(self.device, self.deterministic),
            })
        tokenizer.to(self.device).eval()
        self._models[entry.id] = tokenizer
        return tokenizer

    # ------------------------------------------------------------------ reconstruct

    def variants(self, entry: TokenizerEntry) -> list[Variant]:
        """The evaluated configurations of ``entry``: one per token budget, or the run folder itself."""
        run_dir = self.results / entry.id
        if entry.budgets:
            return [Variant(RunFolder(run_dir).budget(k), k) for k in entry.budgets]
        return [Variant(RunFolder(run_dir), None)]

    def eval_batches(self) -> list[list[Clip]]:
        """The evaluation clips in fixed batches of ``evaluate.batch_size`` (the unit of seeding and resume)."""
        size = self.suite.evaluate.batch_size
        return [self.eval_clips[i : i + size] for i in range(0, len(self.eval_clips), size)]

    @torch.no_grad()
    def reconstruct(self, entry: TokenizerEntry, tokenizer: VideoTokenizer, variant: Variant) -> None:
        """Reconstruct every evaluation clip into ``recon/<clip>.npy`` (uint8 ``[T, H, W, 3]``), batch by batch.

        Batch ``k`` runs under ``derive_seed(suite seed, id, "reconstruct", budget, k)`` and is done when
        ``recon/batch_<k>.json`` and its clips' files exist, so a killed stage resumes to the same files.
        Every process reconstructs its share of the batches (:func:`harness.shards.my_share`); the main
        process then writes ``reconstruct.json``, the sum of the batch records (tokens per video,
        encode/decode time, code counts) with the largest peak memory of the processes.

        Raises:
            NonFiniteError: non-finite latents or reconstructions (names the tokenizer and clips).
        """
        recon_dir = variant.files.recon
        recon_dir.mkdir(parents=True, exist_ok=True)
        seed = derive_seed(self.suite.seed, entry.id, "reconstruct", variant.budget)
        batches = self.eval_batches()
        todo = [k for k in my_share(len(batches), "reconstruction batches") if not _batch_done(recon_dir, k, batches[k])]
        log.info("reconstruct: %s (%d of %d batches to do)", variant.folder, len(todo), len(batches))
        with StageMemory(self.device) as memory:
            for k in todo:
                with seeded(derive_seed(seed, k)):
                    self.reconstruct_batch(entry, tokenizer, variant, batches[k], recon_dir / f"batch_{k:05d}.json")
        peaks = [peak for worked, peak in gather_lists([(bool(todo), memory.peak_mb)]) if worked]
        state = PartialState()
        if state.is_main_process:
            self.summarize_reconstruction(tokenizer, variant, batches, seed, max(peaks) if peaks else None, memory.kind)
        state.wait_for_everyone()

    def summarize_reconstruction(self, tokenizer: VideoTokenizer, variant: Variant, batches: list[list[Clip]], seed: int,
                                 peak_memory_mb: float | None, memory_kind: str) -> None:
        """``reconstruct.json`` from every batch record (main process), and the tiling check when asked."""
        recon_dir = variant.files.recon
        records = [json.loads((recon_dir / f"batch_{k:05d}.json").read_text()) for k in range(len(batches))]
        summary: dict[str, Any] = {"tokens_per_video": records[0]["tokens_per_video"] if records else
                                   tokenizer.num_tokens(self.suite.data.frames, self.suite.data.resolution, self.suite.data.resolution)}
        videos = sum(len(r["clips"]) for r in records)
        encode_s, decode_s = sum(r["encode_s"] for r in records), sum(r["decode_s"] for r in records)
        summary.update({"videos_timed": videos, "encode_videos_per_s": videos / max(encode_s, 1e-9),
                        "decode_videos_per_s": videos / max(decode_s, 1e-9)})
        if peak_memory_mb is not None:
            summary.update({"peak_memory_mb": peak_memory_mb, "memory_kind": memory_kind})
        size = tokenizer.codebook_size()
        if size is not None and any(r["codes"] for r in records):
            summary.update(_codebook_summary(size, records))
        infos = {key: value for r in records for key, value in r["info"].items()}
        if infos:
            summary["token_info"] = infos
        if self.suite.evaluate.tiling_check and tokenizer.supports_tiling and batches:
            real = to_model_range(np.stack([self.clip_cache.load(c) for c in batches[0]])).to(self.device)
            with seeded(derive_seed(seed, "tiling_check")):
                summary["tiling_consistency"] = tiling_consistency(tokenizer, real, self.suite.evaluate.clip_batch)
            log.info("tiling check %s: %s", variant.folder, summary["tiling_consistency"])
        write_json_atomic(variant.files.reconstruct, summary)

    def reconstruct_batch(self, entry: TokenizerEntry, tokenizer: VideoTokenizer, variant: Variant, group: list[Clip],
                          record_path: Path) -> None:
        """Reconstruct one batch of clips, check it is finite, write its files and then its record."""
        names = [c.clip_id for c in group]
        codes: list[Tensor] = []
        infos: dict[str, Any] = {}

        def on_tokens(tokens) -> None:
            if not _all_finite(tokens.latents):
                raise NonFiniteError(f"{entry.id}{variant.label_suffix}: non-finite latents while encoding clip(s) {', '.join(names)}")
            if tokens.indices is not None:
                codes.extend(v.detach().flatten().long().cpu() for v in tree_leaves(tokens.indices))
            infos.update({k: v for k, v in tokens.info.items() if isinstance(v, (int, float, str, bool))})

        timings: dict[str, float] = {}
        real = to_model_range(np.stack([self.clip_cache.load(c) for c in group])).to(self.device)
        recon, tokens_per_video = reconstruct_video(tokenizer, real, num_tokens=variant.budget,
                                                    clip_batch=self.suite.evaluate.clip_batch, on_tokens=on_tokens, timings=timings,
                                                    n_frames=_n_frames(group, self.device))
        for clip, video in zip(group, recon):
            if not torch.isfinite(video).all():
                raise NonFiniteError(f"{entry.id}{variant.label_suffix}: non-finite reconstruction of clip {clip.clip_id} "
                                     f"({clip.record.path.name}, frame {clip.start})")
        recon_dir = record_path.parent
        for clip, video in zip(group, to_uint8(recon)):
            save_numpy_atomic(recon_dir / f"{clip.clip_id}.npy", video)
        counts: list[list[int]] = []
        if codes:
            values, numbers = torch.cat(codes).unique(return_counts=True)
            counts = [values.tolist(), numbers.tolist()]
        write_json_atomic(record_path, {"clips": names, "tokens_per_video": int(tokens_per_video), "codes": counts,
                                        "encode_s": timings.get("encode_s", 0.0), "decode_s": timings.get("decode_s", 0.0),
                                        "info": infos})

    # ------------------------------------------------------------------ evaluate

    def scorer(self, label: str, boundaries: list[int]) -> Scorer:
        """The suite's metrics as a :class:`harness.scoring.Scorer` for a tokenizer with these temporal boundaries,
        real FVD statistics cached per dataset and seed."""
        scorer = Scorer(self.suite.evaluate.metrics, self.device, self.suite.evaluate.metric_kwargs, label, boundaries,
                        synchronize=world_size() > 1)
        key = {"dataset": self.dataset.fingerprint(), "seed": self.suite.seed, "clips": len(self.eval_clips)}
        if self.suite.data.eval_clips or self.suite.data.eval_list:  # a drawn or given list: key by the clips themselves
            key["clip_list"] = fingerprint([(str(c.record.path), c.start, c.n_frames) for c in self.eval_clips])
        scorer.use_real_cache(key, self.dataset.cache_dir / "fvd")
        return scorer

    @property
    def evaluation_fingerprint(self) -> str:
        """Hash of what an evaluation result depends on besides the reconstructions: the metric names,
        their settings and protocol texts, and the evaluation clips. A change (e.g. the SSIM fix) makes
        existing ``metrics.json`` files stale."""
        if self._evaluation_fingerprint is None:
            protocols = {name: METRICS.create(name, **self.suite.evaluate.metric_kwargs.get(name, {})).protocol()
                         for name in self.suite.evaluate.metrics}
            self._evaluation_fingerprint = fingerprint({
                "metrics": self.suite.evaluate.metrics, "kwargs": self.suite.evaluate.metric_kwargs,
                "protocols": protocols, "clips": [c.clip_id for c in self.eval_clips]})
        return self._evaluation_fingerprint

    def evaluation_current(self, variant: Variant) -> bool:
        """Whether ``metrics.json`` exists and was computed under today's :attr:`evaluation_fingerprint`."""
        path = variant.files.metrics
        if not path.is_file():
            return False
        current = json.loads(path.read_text()).get("evaluation_fingerprint") == self.evaluation_fingerprint
        if not current:
            log.info("evaluate: %s was computed under another metric protocol; recomputing", path)
        return current

    @torch.no_grad()
    def evaluate(self, entry: TokenizerEntry, tokenizer: VideoTokenizer, variant: Variant) -> None:
        """Score the reconstructions against the real clips; write ``metrics.json`` and ``per_video.csv``.

        Every process scores its share of the evaluation batches (:func:`harness.shards.my_share`); the
        summary reduces over all of them and the main process writes the files, with ``shards`` (which
        rank scored which clips) in ``metrics.json`` when there are several processes.

        Raises:
            NonFiniteError: a metric value (summary or per video) is NaN or infinite; nothing is written.
        """
        log.info("evaluate: %s", variant.folder)
        scorer = self.scorer(f"{entry.id}{variant.label_suffix}", tokenizer.temporal_boundaries(self.suite.data.frames))
        recon_dir = variant.files.recon
        batches = self.eval_batches()
        mine = [batches[k] for k in my_share(len(batches), "evaluation batches")]
        for group in mine:
            real = to_model_range(np.stack([self.clip_cache.load(c) for c in group])).to(self.device)
            fake = to_model_range(np.stack([np.load(recon_dir / f"{c.clip_id}.npy") for c in group])).to(self.device)
            scorer.update(real, fake, [{"clip": c.clip_id, "video": str(c.record.path.name), "start": c.start,
                                        "label": c.record.label} for c in group], **_length_kwargs(group, self.device))
        summary, protocol = scorer.compute()  # collective: reduces over every process's share
        shards = shard_record([c.clip_id for group in mine for c in group])
        state = PartialState()
        if state.is_main_process:
            write_csv_atomic(variant.files.per_video, pd.DataFrame(scorer.rows))
            if scorer.frame_rows:
                write_csv_atomic(variant.files.per_frame, pd.DataFrame(scorer.frame_rows))
            else:  # no per-frame metric now: a table of an earlier evaluation must not be read as this one's
                variant.files.per_frame.unlink(missing_ok=True)
            write_json_atomic(variant.files.metrics, self.result_record(entry, tokenizer, variant, summary, protocol,
                                                                        shards if shards["world_size"] > 1 else None))
            if not self.suite.evaluate.keep_reconstructions:
                for path in recon_dir.glob("*.npy"):
                    path.unlink()
        state.wait_for_everyone()

    def result_record(self, entry: TokenizerEntry, tokenizer: VideoTokenizer, variant: Variant,
                      summary: dict[str, Any], protocol: dict[str, Any], shards: dict[str, Any] | None = None) -> dict[str, Any]:
        """The row's :class:`harness.records.RunRecord` as written to ``metrics.json``."""
        data = self.suite.data
        folder = variant.files
        recon = json.loads(folder.reconstruct.read_text())
        train = json.loads(folder.train.read_text())
        tokens = recon["tokens_per_video"]
        dataset = self.dataset.protocol()  # dataset, fold, split: the dataset describes its own protocol
        refs = [{"name": getattr(METRICS.get(ref), "name", ref), "metric": ref} for ref in self.suite.evaluate.metrics]
        record = RunRecord(
            row=entry.id + variant.label_suffix, tokenizer_id=entry.id, tokenizer=entry.name, budget=variant.budget,
            tokens_per_video=tokens,
            compression_ratio=data.frames * data.resolution * data.resolution / tokens if tokens else None,
            parameters=count_parameters(tokenizer), metrics=summary, metrics_sha256=values_sha256(summary),
            evaluation_fingerprint=self.evaluation_fingerprint,
            environment=environment_card(self.device, self.deterministic),
            protocol=Protocol(
                dataset=dataset.get("dataset", data.dataset), fold=dataset.get("fold"), frames=data.frames,
                frame_stride=data.frame_stride, resolution=data.resolution, num_videos=len(self.eval_clips),
                eval_clips_per_video=data.eval_clips_per_video, seed=self.suite.seed, split=dataset.get("split"),
                clip_frames=tokenizer.clip_frames, code_version=code_version(), metrics=protocol,
                extra={k: v for k, v in dataset.items() if k not in ("dataset", "fold", "split")}),
            costs=Costs(
                train_steps=train["steps"], train_step_time_s=train["train_step_time_s"], train_batch_size=train["batch_size"],
                peak_memory_mb=train.get("peak_memory_mb"), memory_kind=train.get("memory_kind"),
                reconstruct_peak_memory_mb=recon.get("peak_memory_mb"),
                encode_videos_per_s=recon.get("encode_videos_per_s"), decode_videos_per_s=recon.get("decode_videos_per_s")),
            codebook={k: v for k, v in recon.items() if k.startswith("codebook")} or None,
            token_info=recon.get("token_info"),
            pretrained=bool(train.get("pretrained")), weights=train.get("weights"),
            latent_values=_latent_values(tokenizer, tokens),
            tiling_consistency=recon.get("tiling_consistency"),
            metric_refs=refs,
            per_video=PER_VIDEO_FILE,
            per_frame=PER_FRAME_FILE if folder.per_frame.is_file() else None,
            temporal_boundaries=tokenizer.temporal_boundaries(data.frames),
            shards=shards,
        )
        return record.to_json()

    # ------------------------------------------------------------------ generate

    def generate(self, entry: TokenizerEntry, tokenizer: VideoTokenizer) -> None:
        """Train a generator on the tokenizer's tokens and score samples with gFVD (when the suite enables it).

        The stage's seed is ``derive_seed(suite seed, id, "generation")``; real clips for gFVD come from
        ``derive_seed(suite seed, "generation", "real")``, the same for every tokenizer.
        """
        cfg = generation_config(self.suite, entry)
        if cfg is None or not getattr(cfg, "enabled", True):
            return
        log.info("generate: %s", entry.id)
        from harness.generation.stage import run_generation_stage

        def train_clips(n: int, seed: int):
            # sample indices drawn from the batch seed: disjoint from the tokenizers' training indices 0, 1, 2, ...
            return self.train_clips.batch([derive_seed(seed, "clip", i) for i in range(n)])

        run_generation_stage(tokenizer, train_clips, cfg, self.results / entry.id, self.device,
                             num_classes=len(self.dataset.classes), seed=derive_seed(self.suite.seed, entry.id, "generation"),
                             real_seed=derive_seed(self.suite.seed, "generation", "real"), label=entry.id,
                             deterministic=self.deterministic, log_with=self.suite.train_config(entry).log_with,
                             train_videos=self.train_clips)


class StageTimes:
    """Wall time per tokenizer and stage of one ``run`` (seconds; stages reused from disk take ~0)."""

    def __init__(self) -> None:
        self.rows: dict[tuple[str, str], float] = {}

    @contextmanager
    def stage(self, tokenizer: str, stage: str) -> Iterator[None]:
        started = time.perf_counter()
        try:
            yield
        finally:
            key = (tokenizer, stage)
            self.rows[key] = self.rows.get(key, 0.0) + time.perf_counter() - started

    def table(self) -> pd.DataFrame:
        """One row per tokenizer, one column per stage and ``total`` (s, unrounded)."""
        frame = pd.Series(self.rows).unstack(fill_value=0.0)
        frame = frame[[s for s in ("train", "reconstruct", "evaluate", "generate", "report") if s in frame]]
        frame["total"] = frame.sum(axis=1)
        return frame.rename_axis("tokenizer")

    def write(self, path: Path) -> None:
        """``stage_times.csv`` and the same table in the log (rounded to 0.1 s there)."""
        table = self.table()
        write_csv_atomic(path, table.reset_index())
        log.info("wall time per stage (s):\n%s", table.round(1).to_markdown())


def build_tokenizer(suite: Suite, entry: TokenizerEntry, models: dict[str, VideoTokenizer]) -> VideoTokenizer:
    """Instantiate ``entry`` with :func:`harness.config.tokenizer_kwargs` (``frames`` / ``resolution`` from
    ``data`` when the constructor takes them); ``"run:<id>"`` kwargs become ``models[<id>]``, frozen (no gradients,
    eval mode).

    Raises:
        KeyError: a ``"run:<id>"`` whose tokenizer is not in ``models``.
    """
    from harness.config import tokenizer_kwargs

    kwargs = tokenizer_kwargs(suite, entry)
    for key, value in kwargs.items():
        if isinstance(value, str) and value.startswith("run:"):
            frozen = models[value[4:]]
            frozen.requires_grad_(False)
            frozen.eval()
            kwargs[key] = frozen
    return TOKENIZERS.create(entry.name, **kwargs)


def _latent_values(tokenizer: VideoTokenizer, tokens: int | None) -> int | None:
    """Latent values per video (tokens x latent channels) of a continuous tokenizer that names its
    ``latent_channels``; ``None`` for discrete tokens (their values are code indices: pixels/token says it)."""
    channels = getattr(tokenizer, "latent_channels", None)
    if not tokenizer.continuous or not tokens or not isinstance(channels, int) or isinstance(channels, bool):
        return None
    return int(tokens) * channels


def _n_frames(clips: list[Clip], device: torch.device) -> Tensor | None:
    """Real frames of each clip, ``int64 [B]``, or ``None`` when no clip is padded."""
    if all(c.length is None for c in clips):
        return None
    return torch.tensor([c.n_frames for c in clips], dtype=torch.long, device=device)


def _length_kwargs(clips: list[Clip], device: torch.device) -> dict[str, Tensor]:
    """``{"n_frames": ...}`` for a batch holding padded clips, else ``{}`` (metrics then score whole clips)."""
    n_frames = _n_frames(clips, device)
    return {} if n_frames is None else {"n_frames": n_frames}


def _all_finite(latents: Tensor | dict[str, Tensor] | None) -> bool:
    if latents is None:
        return True
    return all(torch.isfinite(v).all() for v in tree_leaves(latents) if isinstance(v, Tensor) and v.is_floating_point())


def _batch_done(recon_dir: Path, k: int, group: list[Clip]) -> bool:
    return (recon_dir / f"batch_{k:05d}.json").is_file() and all((recon_dir / f"{c.clip_id}.npy").is_file() for c in group)


def _codebook_summary(size: int, records: list[dict[str, Any]]) -> dict[str, float]:
    """Codebook usage and perplexity from the batch records' ``[codes, counts]`` (:mod:`metrics.codebook`)."""
    from metrics.codebook import CodebookUsage

    usage = CodebookUsage(size, sync_on_compute=False)
    for record in records:
        if record["codes"]:
            codes, counts = record["codes"]
            usage.update(torch.tensor(codes), counts=torch.tensor(counts, dtype=torch.float64))
    return usage.compute()
