"""The training loop, on Hugging Face Accelerate (one CPU, one GPU, or many through ``torchrun``/``accelerate launch``).

Recipe defaults follow CoordTok supplementary A.1: AdamW, lr 1e-4, betas
(0.9, 0.999), weight decay 0.001, constant learning rate; mixed precision is
fp16 on CUDA (``auto``) and off on CPU unless the suite asks for ``bf16``.
The suite's ``batch_size`` is the global batch: each process runs
``batch_size / (micro_batch_size x processes)`` micro-batches per step with
gradient accumulation.

Training data is a pure function of ``(seed, sample index)``
(:class:`harness.data.sampling.TrainClips`); every micro-batch seeds the
global generators from its own path of the seeding scheme
(:mod:`harness.seeding`: tokenizer seed, ``"train"``, step, position in the
global batch), and a checkpoint holds the model, optimizers, step and every
process's RNG states, so a run killed at any moment resumes to the numbers of
the uninterrupted run. A non-finite loss stops training with
:class:`harness.errors.NonFiniteError` before the optimizer step, so the last
checkpoint on disk is the last good one. With ``stage0_cache_clips`` a
tokenizer's frozen front end (``frozen_stage0``) runs once per cached clip, and
batches are drawn from that fixed pool (seeded by step).
"""
from __future__ import annotations

import logging
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState
from accelerate.utils import DistributedDataParallelKwargs, gather_object
from torch import Tensor, nn
from tqdm.auto import tqdm

from harness.api import VideoTokenizer
from harness.clips import split_into_clips
from harness.config import TrainConfig, stage0_cache_problem
from harness.data.sampling import TrainClipDataset, TrainClips
from harness.errors import NonFiniteError
from harness.records import STAGE0_CACHE_FILE
from harness.io import torch_save_atomic
from harness.seeding import derive_seed, rng_state, seed_everything, seeded, set_rng_state

log = logging.getLogger("harness.train")


class TrainingObjective(nn.Module):
    """Wraps ``training_losses`` as ``forward`` so DDP sees one forward per backward.

    A tokenizer with a native ``clip_frames`` trains on clips of that length
    (CoordTok supp. B.1 baselines train on 16-frame clips): a training video
    whose length is a multiple of it is split into clips along the batch, any
    other length contributes one window of ``clip_frames`` frames at a random
    offset.
    """

    def __init__(self, tokenizer: VideoTokenizer) -> None:
        super().__init__()
        self.tokenizer = tokenizer

    def native_clips(self, video: Tensor) -> Tensor:
        clip, frames = self.tokenizer.clip_frames, video.shape[2]
        if not clip or clip == frames:
            return video
        if clip > frames:
            raise ValueError(f"training clips have {frames} frames, fewer than the tokenizer's native clip of {clip} frames")
        if frames % clip == 0:
            return split_into_clips(video, clip)[0]
        offset = int(torch.randint(0, frames - clip + 1, ()))
        return video[:, :, offset : offset + clip]

    def forward(self, video: Tensor, step: int, stage0: bool = False) -> dict[str, Tensor]:
        if stage0:  # ``video`` holds cached stage-0 features
            return self.tokenizer.stage0_losses(video, step)
        return self.tokenizer.training_losses(self.native_clips(video), step)


def stage0_cache(objective: TrainingObjective, clips: TrainClips, count: int, path: Path, accelerator: Accelerator,
                 batch_size: int, seed: int) -> Tensor:
    """Stage-0 features ``float32 [count, ...]`` (CPU) of training clips ``0 .. count - 1``, computed once and kept in ``path``.

    The main process encodes the clips (``batch_size`` at a time, the batch from clip ``i`` under
    ``derive_seed(seed, "stage0_cache", i)``) and writes the file atomically; a resumed run, and every
    other process, loads it.
    """
    if accelerator.is_main_process and not path.is_file():
        tokenizer = objective.tokenizer
        parts = []
        for first in range(0, count, batch_size):
            video, _ = clips.batch(list(range(first, min(first + batch_size, count))))
            with seeded(derive_seed(seed, "stage0_cache", first)):
                parts.append(tokenizer.stage0_features(objective.native_clips(video.to(accelerator.device))).cpu())
        torch_save_atomic(path, torch.cat(parts))
    accelerator.wait_for_everyone()
    return torch.load(path, map_location="cpu", weights_only=True)


def stage0_batch(cache: Tensor, seed: int, step: int, batch_size: int, first: int, size: int) -> Tensor:
    """Rows ``first .. first + size`` of step ``step``'s global batch: ``batch_size`` distinct cached clips,
    drawn with a generator seeded by ``derive_seed(seed, "stage0_batch", step)`` so that resumed and
    multi-process runs draw the same.

    ``cache`` is ``[N, ...]`` with ``N >= batch_size``; the result is ``[size, ...]``, same dtype.
    """
    generator = torch.Generator().manual_seed(derive_seed(seed, "stage0_batch", step))
    order = torch.randperm(len(cache), generator=generator)[:batch_size]
    return cache[order[first : first + size]]


@dataclass
class TrainResult:
    """What :func:`train_tokenizer` reports: steps done, the step resumed from, mean step time (s) and last losses."""

    steps: int
    resumed_from: int
    step_time_s: float | None
    last_losses: dict[str, float]


def resolve_mixed_precision(setting: str, device_type: str) -> str:
    """``auto`` -> fp16 on CUDA, no on CPU; ``fp16`` on CPU falls back to bf16 (CPU autocast has no fp16 scaler)."""
    if setting == "auto":
        return "fp16" if device_type == "cuda" else "no"
    if setting == "fp16" and device_type != "cuda":
        return "bf16"
    return setting


def split_parameters(tokenizer: VideoTokenizer) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    """Trainable parameters of the tokenizer proper and of its ``discriminator`` (if any)."""
    disc = getattr(tokenizer, "discriminator", None)
    disc_ids = {id(p) for p in disc.parameters()} if isinstance(disc, nn.Module) else set()
    main = [p for p in tokenizer.parameters() if p.requires_grad and id(p) not in disc_ids]
    adversary = [p for p in tokenizer.parameters() if p.requires_grad and id(p) in disc_ids]
    return main, adversary


def train_tokenizer(tokenizer: VideoTokenizer, clips: TrainClips, cfg: TrainConfig, checkpoint: Path, seed: int,
                    accelerator: Accelerator | None = None, show_progress: bool = True,
                    label: str = "tokenizer") -> TrainResult:
    """Train ``tokenizer`` for ``cfg.steps`` optimizer steps, resuming from ``checkpoint`` if it exists.

    Args:
        tokenizer: the model; its ``training_losses(video, step)`` must return ``"loss"``.
        clips: the seeded training clip source.
        cfg: the schedule and optimizer settings.
        checkpoint: where checkpoints are written (atomically) and resumed from.
        seed: the tokenizer's seed (``derive_seed(suite seed, tokenizer id)``, :mod:`harness.seeding`);
            micro-batch ``m`` of step ``s`` runs with the global generators seeded by
            ``derive_seed(seed, "train", s, m)``.
        accelerator: an existing Accelerator (tests); built from ``cfg`` otherwise.
        label: the tokenizer's id, named in errors.

    Raises:
        ValueError: when the global batch is not divisible into micro-batches, or when
            ``cfg.stage0_cache_clips`` is set for a tokenizer without a frozen stage 0
            or is smaller than ``cfg.batch_size``.
        NonFiniteError: a loss is NaN or infinite (on any process); the checkpoint on disk is the last good one.
    """
    if accelerator is None:
        # each tokenizer of a suite may ask for its own mixed precision; the process group stays
        AcceleratorState._reset_state(reset_partial_state=False)
        device_type = "cuda" if torch.cuda.is_available() else "cpu"
        # some parameters legitimately get no gradient on some steps (a discriminator before its start step,
        # CoordTok stage 1 vs 2), which DDP must be told about
        accelerator = Accelerator(mixed_precision=resolve_mixed_precision(cfg.mixed_precision, device_type),
                                  cpu=device_type == "cpu",
                                  kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)])
    world = accelerator.num_processes
    micro = cfg.micro_batch_size or max(1, cfg.batch_size // world)
    if cfg.batch_size % (micro * world):
        raise ValueError(f"train.batch_size {cfg.batch_size} is not a multiple of micro_batch_size {micro} x {world} processes")
    accumulation = cfg.batch_size // (micro * world)

    start_step = 0
    state = torch.load(checkpoint, map_location="cpu", weights_only=True) if checkpoint.is_file() else None
    if state is not None:
        tokenizer.load_state_dict(state["model"])
        start_step = int(state["step"])
        states = state.get("rng") or []
        if len(states) == world:
            set_rng_state(states[accelerator.process_index])

    main_params, disc_params = split_parameters(tokenizer)
    optimizer = torch.optim.AdamW(main_params, lr=cfg.lr, betas=tuple(cfg.betas), weight_decay=cfg.weight_decay)
    disc_optimizer = (torch.optim.AdamW(disc_params, lr=cfg.lr, betas=tuple(cfg.betas), weight_decay=cfg.weight_decay)
                      if disc_params else None)
    if state is not None:
        optimizer.load_state_dict(state["optimizer"])
        if disc_optimizer is not None and state.get("disc_optimizer"):
            disc_optimizer.load_state_dict(state["disc_optimizer"])

    objective = TrainingObjective(tokenizer)
    objective, optimizer = accelerator.prepare(objective, optimizer)
    if disc_optimizer is not None:
        disc_optimizer = accelerator.prepare(disc_optimizer)
    objective.train()

    per_step = cfg.batch_size
    cached = None
    if cfg.stage0_cache_clips:
        problem = stage0_cache_problem(cfg, type(tokenizer), type(tokenizer).__name__)
        if problem:
            raise ValueError(f"train.stage0_cache_clips: {problem}")
        cached = stage0_cache(accelerator.unwrap_model(objective), clips, cfg.stage0_cache_clips,
                              checkpoint.with_name(STAGE0_CACHE_FILE), accelerator, micro, seed)
    loader = None
    if clips.cfg.num_workers and cached is None:
        dataset = TrainClipDataset(clips, length=(cfg.steps + 1) * per_step)
        sampler = _StepSampler(start_step, cfg.steps, per_step, accelerator.process_index, micro * accumulation)
        loader = iter(torch.utils.data.DataLoader(dataset, batch_size=micro, sampler=sampler, num_workers=clips.cfg.num_workers,
                                                  persistent_workers=False))

    bar = tqdm(total=cfg.steps, initial=start_step, disable=not (show_progress and accelerator.is_main_process),
               desc="train", unit="step", dynamic_ncols=True)
    times: list[float] = []
    losses: dict[str, float] = {}
    for step in range(start_step, cfg.steps):
        began = time.perf_counter()
        losses = {}
        finite = True
        for micro_index in range(accumulation):
            offset = accelerator.process_index * micro * accumulation + micro_index * micro
            seed_everything(derive_seed(seed, "train", step, offset))
            if cached is not None:
                video = stage0_batch(cached, seed, step, per_step, offset, micro)
            elif loader is not None:
                video, _ = next(loader)
            else:
                first = step * per_step + offset
                video, _ = clips.batch(list(range(first, first + micro)))
            video = video.to(accelerator.device)
            sync = micro_index == accumulation - 1
            context = accelerator.no_sync(objective) if not sync and world > 1 else nullcontext()
            with context:
                out = objective(video, step, stage0=cached is not None)
                total = out["loss"] + out.get("disc_loss", 0.0)
                finite &= bool(torch.isfinite(total))
                accelerator.backward(total / accumulation)
            for name, value in out.items():
                losses[name] = losses.get(name, 0.0) + float(torch.as_tensor(value).detach()) / accumulation
        if not all_finite(accelerator, finite):
            bar.close()
            kept = (f"the last good checkpoint {checkpoint} (step {_checkpoint_step(checkpoint)}) is kept"
                    if checkpoint.is_file() else "no checkpoint was written yet")
            raise NonFiniteError(f"{label}: non-finite training loss at step {step} "
                                 f"({', '.join(f'{k}={v:.4g}' for k, v in losses.items())}); {kept}")
        if cfg.grad_clip:
            accelerator.clip_grad_norm_(main_params, cfg.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if disc_optimizer is not None:
            disc_optimizer.step()
            disc_optimizer.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - began)
        bar.update(1)
        if (step + 1) % cfg.log_every == 0 or step + 1 == cfg.steps:
            bar.set_postfix({k: f"{v:.4g}" for k, v in losses.items() if k in ("loss", "l2", "disc_loss")})
        if (step + 1) % cfg.checkpoint_every == 0 or step + 1 == cfg.steps:
            save_checkpoint(accelerator, objective, optimizer, disc_optimizer, step + 1, checkpoint)
    bar.close()
    accelerator.wait_for_everyone()
    steady = times[1:] if len(times) > 1 else times
    return TrainResult(steps=cfg.steps, resumed_from=start_step,
                       step_time_s=sum(steady) / len(steady) if steady else None, last_losses=losses)


def all_finite(accelerator: Accelerator, finite: bool) -> bool:
    """Whether every process's losses were finite (one tiny all-reduce when there are several processes)."""
    if accelerator.num_processes == 1:
        return finite
    flag = torch.tensor([1.0 if finite else 0.0], device=accelerator.device)
    return bool(accelerator.reduce(flag, reduction="sum").item() == accelerator.num_processes)


def _checkpoint_step(path: Path) -> int:
    return int(torch.load(path, map_location="cpu", weights_only=True)["step"])


def save_checkpoint(accelerator: Accelerator, objective: nn.Module, optimizer, disc_optimizer, step: int, path: Path) -> None:
    """Write model, optimizer states, step and every process's RNG states atomically (main process writes).

    The file holds tensors and plain types only (``torch.load(weights_only=True)`` reads it).
    """
    states = gather_object([rng_state()]) if accelerator.num_processes > 1 else [rng_state()]
    if accelerator.is_main_process:
        model = accelerator.unwrap_model(objective).tokenizer
        torch_save_atomic(path, {
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "disc_optimizer": disc_optimizer.state_dict() if disc_optimizer is not None else None,
            "step": step,
            "rng": states,
        })
    accelerator.wait_for_everyone()


class _StepSampler(torch.utils.data.Sampler):
    """Sample indices of this process for steps ``start..steps`` (same indices as the in-process path)."""

    def __init__(self, start: int, steps: int, per_step: int, rank: int, per_rank: int) -> None:
        self.start, self.steps, self.per_step, self.rank, self.per_rank = start, steps, per_step, rank, per_rank

    def __iter__(self):
        for step in range(self.start, self.steps):
            first = step * self.per_step + self.rank * self.per_rank
            yield from range(first, first + self.per_rank)

    def __len__(self) -> int:
        return (self.steps - self.start) * self.per_rank


def count_parameters(module: nn.Module) -> int:
    """Parameters of the tokenizer (frozen ones such as a stage-0 VAE included; a training-only ``discriminator`` excluded)."""
    disc = getattr(module, "discriminator", None)
    skip = {id(p) for p in disc.parameters()} if isinstance(disc, nn.Module) else set()
    return sum(p.numel() for p in module.parameters() if id(p) not in skip)
