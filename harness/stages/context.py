"""The run context: what every stage reads (suite, data, device, distributed state, results folder, trained
models) and the backend state it sets per stage and restores after.

Data is built lazily and once: the dataset, its evaluation clips
(:func:`harness.data.sampling.evaluation_clips`), the clip store, the seeded
training clips and the evaluation-clip cache. Trained tokenizers are kept by
id (``run:<id>`` references of later entries use them) and leave the device
when their entry's stages are done (:meth:`RunContext.release`).

Backend state (issue 25): a stage declares a :class:`Backend` (TF32 matmuls
and convolutions, cuDNN autotuning, CPU threads); :meth:`RunContext.stage`
sets it, times the stage, and restores every flag afterwards, so a stage that
asks for TF32 (CoordTok-SiT trains with TF32, huiwon-jang/CoordTok 8475272
``train_sit.py``) does not leave it on for the next tokenizer's evaluation.
What each stage ran with goes into the environment card
(:meth:`RunContext.environment`, ``stage_backends``).
"""
from __future__ import annotations

import logging
import time
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any, Iterator

import pandas as pd
import torch
from accelerate import PartialState

from harness_core.api import VideoTokenizer
from harness.config import Suite, SuiteError, TokenizerEntry
from harness.config.schema import generation_config
from harness.data.datasets import VideoDataset, build_dataset
from harness.data.sampling import Clip, ClipCache, TrainClips, evaluation_clips
from harness.data.store import ClipStore, open_store, prepare_store
from harness_core.io import write_csv_atomic
from harness.memory import StageMemory
from harness.records import RunFolder
from harness_core.registry import TOKENIZERS
from harness_core.seeding import derive_seed, environment_card, resolve_deterministic, seeded
from harness.stages.base import Stage, Variant, Work
from harness.train import load_evaluated_weights


log = logging.getLogger("harness.runner")

#: how long processes wait for each other at a barrier (the clip store build, the main process writing summaries and reports)
STAGE_WAIT_TIMEOUT = timedelta(hours=12)


def _backend_now() -> dict[str, Any]:
    return {"tf32_matmul": torch.backends.cuda.matmul.allow_tf32, "tf32_cudnn": torch.backends.cudnn.allow_tf32,
            "cudnn_benchmark": torch.backends.cudnn.benchmark, "cudnn_deterministic": torch.backends.cudnn.deterministic,
            "deterministic_algorithms": torch.are_deterministic_algorithms_enabled(), "threads": torch.get_num_threads()}


def _apply(flags: dict[str, Any]) -> None:
    torch.backends.cuda.matmul.allow_tf32 = flags["tf32_matmul"]
    torch.backends.cudnn.allow_tf32 = flags["tf32_cudnn"]
    torch.backends.cudnn.benchmark = flags["cudnn_benchmark"]
    torch.backends.cudnn.deterministic = flags["cudnn_deterministic"]
    if torch.get_num_threads() != flags["threads"]:
        torch.set_num_threads(flags["threads"])


class RunContext:
    """What a stage works with (see the module docstring).

    Args:
        suite: the validated suite.
        device: where models run (default: CUDA when available, else CPU).
        show_progress: progress bars during training.
    """

    def __init__(self, suite: Suite, device: torch.device | None = None, show_progress: bool = True) -> None:
        self.suite = suite
        self.results = suite.results_dir()
        self.device = device or torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.show_progress = show_progress
        self.deterministic = resolve_deterministic(suite.deterministic, self.device.type)
        self.models: dict[str, VideoTokenizer] = {}
        #: stage name -> the backend flags its last run had (the environment card's ``stage_backends``)
        self.stage_backends: dict[str, dict[str, Any]] = {}
        #: (tokenizer id or "(suite)", stage name) -> wall seconds, and the stage's peak memory (MiB, StageMemory)
        self.times: dict[tuple[str, str], float] = {}
        self.peaks: dict[tuple[str, str], float] = {}
        #: the running stage's memory measure (:class:`harness.memory.StageMemory`), for the records it writes
        self.memory: StageMemory | None = None
        self._dataset: VideoDataset | None = None
        self._eval_clips: list[Clip] | None = None
        self._train_clips: TrainClips | None = None
        self._clip_cache: ClipCache | None = None
        self._store: ClipStore | None = None
        self._store_ready = False
        self._state: PartialState | None = None
        self._evaluation_fingerprint: str | None = None  # harness.stages.evaluate.evaluation_fingerprint

    # ------------------------------------------------------------------ distributed

    @property
    def state(self) -> PartialState:
        """Accelerate's process state (one process, or every process of ``torchrun`` / ``accelerate launch``)."""
        if self._state is None:
            self._state = PartialState(cpu=self.device.type == "cpu", timeout=STAGE_WAIT_TIMEOUT)
        return self._state

    @property
    def is_main(self) -> bool:
        return self.state.is_main_process

    def barrier(self) -> None:
        self.state.wait_for_everyone()

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

    def eval_batches(self) -> list[list[Clip]]:
        """The evaluation clips in fixed batches of ``evaluate.batch_size`` (the unit of seeding and resume)."""
        size = self.suite.evaluate.batch_size
        return [self.eval_clips[i : i + size] for i in range(0, len(self.eval_clips), size)]

    @property
    def store(self) -> ClipStore | None:
        """The dataset's clip store (``data.store``, :mod:`harness.data.store`), or ``None``: built (or resumed) on
        first use in a single process; :meth:`prepare_store` builds it on each node's main process before the others
        open it. Not built for a suite in which no tokenizer trains and no generator runs."""
        if not self._store_ready:
            self._store = prepare_store(self.dataset) if self.uses_training_clips() else None
            self._store_ready = True
        return self._store

    def uses_training_clips(self) -> bool:
        """Whether some tokenizer of the suite trains here or some generation stage runs."""
        return any(not entry.pretrained or getattr(generation_config(self.suite, entry), "enabled", False)
                   for entry in self.suite.tokenizers)

    def prepare_store(self) -> None:
        """Build the clip store on each node's main process, then open it (checked complete) on the others."""
        if self.state.is_local_main_process:
            _ = self.store
        self.barrier()
        if not self.state.is_local_main_process:
            self._store = open_store(self.dataset) if self.uses_training_clips() else None
            self._store_ready = True

    @property
    def train_clips(self) -> TrainClips:
        """The seeded training clip source, shared by every tokenizer and generator."""
        if self._train_clips is None:
            self._train_clips = TrainClips(self.dataset, derive_seed(self.suite.seed, "train_clips"), store=self.store)
        return self._train_clips

    @property
    def clip_cache(self) -> ClipCache:
        """The evaluation clips' source (cut from the clip store, or decoded once into the cache), built once."""
        if self._clip_cache is None:
            self._clip_cache = ClipCache(self.dataset.cache_dir, store=self.store)
        return self._clip_cache

    # ------------------------------------------------------------------ folders and models

    def run_folder(self, entry: TokenizerEntry) -> RunFolder:
        return RunFolder(self.results / entry.id)

    def variants(self, entry: TokenizerEntry) -> list[Variant]:
        """The evaluated configurations of ``entry``: one per token budget, or the run folder itself."""
        folder = self.run_folder(entry)
        if entry.budgets:
            return [Variant(folder.budget(k), k) for k in entry.budgets]
        return [Variant(folder, None)]

    def tokenizer_seed(self, entry: TokenizerEntry) -> int:
        """``derive_seed(suite seed, id)``: the root of every draw of ``entry`` (:mod:`harness_core.seeding`)."""
        return derive_seed(self.suite.seed, entry.id)

    def build_tokenizer(self, entry: TokenizerEntry) -> VideoTokenizer:
        """:func:`build_tokenizer` with this suite and the tokenizers trained so far."""
        return build_tokenizer(self.suite, entry, self.models)

    def tokenizer(self, entry: TokenizerEntry) -> VideoTokenizer:
        """``entry``'s model on the device in eval mode: the one trained in this run, or built under its init seed
        (``derive_seed(tokenizer_seed(entry), "init")``) and loaded from its checkpoint, with the EMA of its weights
        when training kept one (:func:`harness.train.load_evaluated_weights`; a pretrained entry loads its own
        weights).

        Raises:
            SuiteError: a ``run:<id>`` reference to a tokenizer not built in this suite run.
        """
        if entry.id not in self.models:
            self.load_dependencies(entry)
            with seeded(derive_seed(self.tokenizer_seed(entry), "init")):
                model = self.build_tokenizer(entry)
            checkpoint = self.run_folder(entry).checkpoint
            if not entry.pretrained and checkpoint.is_file():  # the EMA's weights when training kept one
                load_evaluated_weights(model, torch.load(checkpoint, map_location="cpu", weights_only=True))
            self.models[entry.id] = model
        return self.models[entry.id].to(self.device).eval()

    def load_dependencies(self, entry: TokenizerEntry) -> None:
        """Put the runs ``entry`` references (``run:<id>`` kwargs, e.g. VideoFlexTok's stage-0 VAE) on the device.

        Raises:
            SuiteError: a reference to a tokenizer that is not an earlier entry of this suite.
        """
        from harness.config.validate import referenced_runs

        earlier = {e.id: e for e in self.suite.tokenizers[: self.suite.tokenizers.index(entry)]}
        for dep in referenced_runs(entry):
            if dep not in earlier:
                raise SuiteError(f"tokenizers[{entry.id}].kwargs references run:{dep}, which is not an earlier entry of "
                                 f"this suite run")
            self.tokenizer(earlier[dep])

    def release(self, entry: TokenizerEntry) -> None:
        """Move ``entry``'s model off the device once its stages are done (kept on the CPU for ``run:<id>`` users)."""
        model = self.models.get(entry.id)
        if model is not None and self.device.type != "cpu":
            model.to("cpu")
            torch.cuda.empty_cache()

    # ------------------------------------------------------------------ stages

    @contextmanager
    def stage(self, stage: Stage, work: Work) -> Iterator[None]:
        """Run one stage: set its :class:`Backend`, time it, restore every backend flag after it (also on errors)."""
        backend = stage.backend(self, work)
        before = _backend_now()
        flags = dict(before)
        if backend.tf32 is not None:
            flags.update(tf32_matmul=backend.tf32, tf32_cudnn=backend.tf32)
        if backend.cudnn_benchmark is not None and not self.deterministic:
            flags["cudnn_benchmark"] = backend.cudnn_benchmark
        if backend.threads and self.device.type == "cpu":
            flags["threads"] = backend.threads
        _apply(flags)
        self.stage_backends[stage.name] = {**_backend_now(), "mixed_precision": backend.mixed_precision}
        key = (work.entry.id if work.entry else work.label, stage.name)
        started = time.perf_counter()
        try:
            with StageMemory(self.device) as self.memory:
                yield
        finally:
            self.times[key] = self.times.get(key, 0.0) + time.perf_counter() - started
            if self.memory is not None:
                self.peaks[key] = max(self.peaks.get(key, 0.0), self.memory.current_peak_mb())
            self.memory = None
            _apply(before)

    def environment(self) -> dict[str, Any]:
        """The environment card (:func:`harness_core.seeding.environment_card`) plus the backend flags of every stage
        run so far (``stage_backends``)."""
        return {**environment_card(self.device, self.deterministic), "stage_backends": dict(self.stage_backends)}

    def stage_times(self, stages: list[Stage]) -> pd.DataFrame:
        """Wall seconds per tokenizer (rows) and stage (one column per stage of the run, in run order: a stage
        skipped or done takes 0) and ``total``."""
        frame = pd.Series(self.times, dtype=float).unstack(fill_value=0.0) if self.times else pd.DataFrame()
        frame = frame.reindex(columns=[s.name for s in stages], fill_value=0.0)
        frame["total"] = frame.sum(axis=1)
        return frame.rename_axis("tokenizer")

    def stage_memory(self, stages: list[Stage]) -> pd.DataFrame:
        """Peak memory per tokenizer and stage (MiB above the stage's start, :class:`harness.memory.StageMemory`)."""
        frame = pd.Series(self.peaks, dtype=float).unstack(fill_value=0.0) if self.peaks else pd.DataFrame()
        return frame.reindex(columns=[s.name for s in stages], fill_value=0.0).rename_axis("tokenizer")

    def write_stage_times(self, times: Path, memory: Path, stages: list[Stage]) -> None:
        """``stage_times.csv`` (unrounded seconds), ``stage_memory.csv`` (peak MiB per stage) and the time table in
        the log (rounded to 0.1 s there)."""
        table = self.stage_times(stages)
        write_csv_atomic(times, table.reset_index())
        write_csv_atomic(memory, self.stage_memory(stages).reset_index())
        log.info("wall time per stage (s):\n%s", table.round(1).to_markdown())


def build_tokenizer(suite: Suite, entry: TokenizerEntry, models: dict[str, VideoTokenizer]) -> VideoTokenizer:
    """Instantiate ``entry`` with :func:`harness.config.validate.tokenizer_kwargs` (``frames`` / ``resolution`` from
    ``data`` when the constructor takes them); ``"run:<id>"`` kwargs become ``models[<id>]``, frozen (no gradients,
    eval mode).

    Raises:
        KeyError: a ``"run:<id>"`` whose tokenizer is not in ``models``.
    """
    from harness.config.validate import tokenizer_kwargs

    kwargs = tokenizer_kwargs(suite, entry)
    for key, value in kwargs.items():
        if isinstance(value, str) and value.startswith("run:"):
            frozen = models[value[4:]]
            frozen.requires_grad_(False)
            frozen.eval()
            kwargs[key] = frozen
    return TOKENIZERS.create(entry.name, **kwargs)
