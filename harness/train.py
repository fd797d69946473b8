"""Tokenizer training: the tokenizer's objective, its training batches and the stage-0 cache, run by the one
training loop :func:`harness.fit.fit` (Accelerate; global batch, accumulation, mixed precision, checkpoints
with RNG states, non-finite stop, trackers: see :mod:`harness.fit`).

Recipe defaults follow CoordTok supplementary A.1: AdamW, lr 1e-4, betas
(0.9, 0.999), weight decay 0.001, constant learning rate; mixed precision is
fp16 on CUDA (``auto``) and off on CPU unless the suite asks for ``bf16``.

Training data is a pure function of ``(seed, sample index)``
(:class:`harness.data.sampling.TrainClips`): step ``s`` trains on clips
``s x batch_size ...``, split over processes and micro-batches by position,
so a killed run resumes, and several processes train, on the same clips. With
``stage0_cache_clips`` a tokenizer's frozen front end (``frozen_stage0``) runs
once per cached clip, and batches are drawn from that fixed pool (seeded by
step).

EMA of the weights: a tokenizer whose ``weight_ema_decay`` attribute is set
(MAGVIT's ``polyak_decay`` 0.999, ``video_tokenizers/grid3d_vq.py``) trains with
an exponential moving average of its weights (timm ``ModelEmaV3``, parameters
averaged, buffers copied, started from the initial weights and updated after
every optimizer step as MAGVIT's ``compute_ema_params``). The checkpoint keeps
the raw weights (``"model"``) and the EMA (``"ema"``), so a resumed run is
exact; the weights that are evaluated are the EMA's: :func:`train_tokenizer`
leaves them in the tokenizer, and :func:`load_evaluated_weights` puts them
there when a later stage loads the checkpoint.
"""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import torch
from accelerate import Accelerator
from timm.utils import ModelEmaV3
from torch import Tensor, nn

from harness_core.api import VideoTokenizer
from harness.chunks import length_kwargs, split_into_chunks
from harness.config import TrainConfig
from harness.config.validate import stage0_cache_problem
from harness.data.decode import to_model_range
from harness.data.sampling import TrainClipDataset, TrainClips
from harness.fit import BatchFn, FitResult, MicroBatches, Schedule, fit, make_accelerator, micro_batches
from harness_core.io import torch_save_atomic
from harness.records import STAGE0_CACHE_FILE
from harness_core.seeding import derive_seed, seeded

class TrainingObjective(nn.Module):
    """Wraps ``training_losses`` as ``forward`` so DDP sees one forward per backward.

    A tokenizer with a native ``chunk_frames`` trains on chunks of that length
    (CoordTok supp. B.1 baselines train on 16-frame clips): a training clip
    whose length is a multiple of it is split into chunks along the batch, any
    other length contributes one window of ``chunk_frames`` frames at a random
    offset. With ``n_frames`` (padded short videos, ``data.short_videos: pad``)
    such tokenizers train on real frames only: split chunks that reach into the
    padding are dropped (each video keeps at least its first chunk) and the
    random window lies inside the shortest video; a ``variable_length``
    tokenizer gets ``n_frames`` itself (:func:`harness.chunks.length_kwargs`).
    """

    def __init__(self, tokenizer: VideoTokenizer) -> None:
        super().__init__()
        self.tokenizer = tokenizer

    def native_chunks(self, video: Tensor, n_frames: Tensor | None = None) -> Tensor:
        chunk, frames = self.tokenizer.chunk_frames, video.shape[2]
        if not chunk or chunk == frames:
            return video
        if chunk > frames:
            raise ValueError(f"training clips have {frames} frames, fewer than the tokenizer's native chunk of {chunk} frames")
        real = frames if n_frames is None else int(n_frames.min())
        if frames % chunk == 0:
            chunks = split_into_chunks(video, chunk)[0]
            if real >= frames:
                return chunks
            ends = (torch.arange(frames // chunk, device=n_frames.device) + 1) * chunk
            keep = (ends[None, :] <= n_frames[:, None]) | (ends[None, :] == chunk)  # [B, n]: chunks of real frames
            return chunks[keep.flatten().to(chunks.device)]
        offset = int(torch.randint(0, max(real, chunk) - chunk + 1, ()))
        return video[:, :, offset : offset + chunk]

    def forward(self, video: Tensor, step: int, stage0: bool = False, n_frames: Tensor | None = None) -> dict[str, Tensor]:
        if stage0:  # ``video`` holds cached stage-0 features
            return self.tokenizer.stage0_losses(video, step)
        if self.tokenizer.variable_length:
            return self.tokenizer.training_losses(video, step, **length_kwargs(self.tokenizer, n_frames))
        return self.tokenizer.training_losses(self.native_chunks(video, n_frames), step)


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
            video, _, n_frames = clips.batch(list(range(first, min(first + batch_size, count))))
            with seeded(derive_seed(seed, "stage0_cache", first)):
                parts.append(tokenizer.stage0_features(objective.native_chunks(video.to(accelerator.device), n_frames)).cpu())
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


def split_parameters(tokenizer: VideoTokenizer) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    """Trainable parameters of the tokenizer proper and of its ``discriminator`` (if any)."""
    disc = getattr(tokenizer, "discriminator", None)
    disc_ids = {id(p) for p in disc.parameters()} if isinstance(disc, nn.Module) else set()
    main = [p for p in tokenizer.parameters() if p.requires_grad and id(p) not in disc_ids]
    adversary = [p for p in tokenizer.parameters() if p.requires_grad and id(p) in disc_ids]
    return main, adversary


#: the checkpoint key of the EMA of the weights
EMA_KEY = "ema"


def weight_ema(tokenizer: VideoTokenizer) -> ModelEmaV3 | None:
    """An EMA of ``tokenizer``'s weights at its ``weight_ema_decay`` (``None`` when the tokenizer keeps none)."""
    decay = getattr(tokenizer, "weight_ema_decay", None)
    return ModelEmaV3(tokenizer, decay=decay, exclude_buffers=True) if decay else None


def _ema_weights(ema_state: dict[str, Tensor]) -> dict[str, Tensor]:
    """The tokenizer weights in an EMA state (``ModelEmaV3`` keys ``module.<name>``), the discriminator's left out
    (a training-only module: its raw weights are the ones that resume)."""
    weights = {key.removeprefix("module."): value for key, value in ema_state.items()}
    return {name: value for name, value in weights.items() if not name.startswith("discriminator.")}


def load_evaluated_weights(tokenizer: nn.Module, checkpoint: dict) -> None:
    """Load a training checkpoint's evaluated weights into ``tokenizer``: the raw weights (``"model"``), then, when
    the checkpoint keeps an EMA of the weights (``"ema"``), the EMA's (the discriminator keeps its raw weights)."""
    tokenizer.load_state_dict(checkpoint["model"])
    if EMA_KEY in checkpoint:
        tokenizer.load_state_dict(_ema_weights(checkpoint[EMA_KEY]), strict=False)


def train_tokenizer(tokenizer: VideoTokenizer, clips: TrainClips, cfg: TrainConfig, checkpoint: Path, seed: int,
                    accelerator: Accelerator | None = None, show_progress: bool = True,
                    label: str = "tokenizer") -> FitResult:
    """Train ``tokenizer`` for ``cfg.steps`` optimizer steps through :func:`harness.fit.fit`, resuming from ``checkpoint``.

    Args:
        tokenizer: the model; its ``training_losses(video, step)`` must return ``"loss"``.
        clips: the seeded training clip source; step ``s`` uses training clips
            ``s x batch_size .. (s + 1) x batch_size - 1``.
        cfg: the schedule, optimizer and tracker settings (AdamW on the tokenizer's parameters and, when it has
            a ``discriminator``, a second AdamW on those).
            With ``weight_ema_decay`` set on the tokenizer, the EMA of its weights is kept in the checkpoint and
            copied into the tokenizer when training ends (the weights evaluated; module docstring).
        checkpoint: where checkpoints are written (atomically) and resumed from; tracker files go beside it.
        seed: the tokenizer's seed (``derive_seed(suite seed, tokenizer id)``, :mod:`harness_core.seeding`).
        accelerator: an existing Accelerator (tests); built from ``cfg`` otherwise.
        label: the tokenizer's id, named in errors.

    Raises:
        ValueError: when the global batch is not divisible into micro-batches, or when
            ``cfg.stage0_cache_clips`` is set for a tokenizer without a frozen stage 0
            or is smaller than ``cfg.batch_size``.
        NonFiniteError: a loss is NaN or infinite (on any process); the checkpoint on disk is the last good one.
    """
    if accelerator is None:
        accelerator = make_accelerator(tokenizer, cfg.mixed_precision, cfg.log_with, checkpoint.parent)
    plan = micro_batches(cfg.batch_size, cfg.micro_batch_size, accelerator.num_processes, accelerator.process_index)
    main_params, disc_params = split_parameters(tokenizer)
    optimizers = [torch.optim.AdamW(params, lr=cfg.lr, betas=tuple(cfg.betas), weight_decay=cfg.weight_decay)
                  for params in (main_params, disc_params) if params]
    objective = TrainingObjective(tokenizer)
    cached = None
    if cfg.stage0_cache_clips:
        problem = stage0_cache_problem(cfg, type(tokenizer), type(tokenizer).__name__)
        if problem:
            raise ValueError(f"train.stage0_cache_clips: {problem}")
        cached = stage0_cache(objective, clips, cfg.stage0_cache_clips, checkpoint.with_name(STAGE0_CACHE_FILE),
                              accelerator, plan.size, seed)
    batch = clip_batches(clips, cfg, plan, cached, seed, accelerator.device)
    schedule = replace(Schedule.of(cfg), fresh_optimizer_at=tuple(tokenizer.fresh_optimizer_at(cfg.steps)))
    ema = weight_ema(tokenizer.to(accelerator.device))  # the EMA's copy lives beside the weights it follows
    result = fit(tokenizer, objective, optimizers, batch, schedule, checkpoint, seed, accelerator, label=label,
                 show_progress=show_progress, tracker_config={"tokenizer": label, **_scalars(cfg.model_dump())},
                 extras={EMA_KEY: ema} if ema else None,
                 after_step=(lambda done: ema.update(tokenizer)) if ema else None)
    if ema is not None:
        tokenizer.load_state_dict(_ema_weights(ema.state_dict()), strict=False)
    return result


def clip_batches(clips: TrainClips, cfg: TrainConfig, plan: MicroBatches, cached: Tensor | None, seed: int,
                 device: torch.device | str = "cpu") -> BatchFn:
    """The :data:`harness.fit.BatchFn` of tokenizer training: rows of step ``s``'s global batch as
    ``(video float32 [size, 3, T, H, W] in [-1, 1], s, stage0, n_frames int64 [size] or None)``, from the stage-0
    cache, from DataLoader workers (``data.num_workers``) or decoded in this process; all three give the same rows.
    Workers hand over ``uint8`` clips (a quarter of the bytes of float32), converted to ``[-1, 1]`` on ``device``."""
    loader = None

    def batch(step: int, offset: int, size: int) -> tuple:
        nonlocal loader
        if cached is not None:
            return stage0_batch(cached, seed, step, cfg.batch_size, offset, size), step, True, None
        if clips.cfg.num_workers:
            if loader is None:  # created at the first step this session trains (after a resume, too)
                dataset = TrainClipDataset(clips, length=(cfg.steps + 1) * cfg.batch_size, model_range=False)
                sampler = _StepSampler(step, cfg.steps, cfg.batch_size, plan.rank, plan.size * plan.accumulation)
                loader = iter(torch.utils.data.DataLoader(dataset, batch_size=size, sampler=sampler,
                                                          num_workers=clips.cfg.num_workers, persistent_workers=False))
            frames, _, n_frames = next(loader)
            return to_model_range(frames.to(device)), step, False, n_frames
        first = step * cfg.batch_size + offset
        videos, _, n_frames = clips.batch(list(range(first, first + size)))
        return videos, step, False, n_frames

    return batch


def _scalars(values: dict) -> dict:
    """The tracker-friendly (bool, int, float, str) part of a config, tuples as strings."""
    return {k: (str(v) if isinstance(v, (tuple, list)) else v) for k, v in values.items()
            if isinstance(v, (bool, int, float, str, tuple, list)) or v is None}


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
