"""The one training loop, :func:`fit`, on Hugging Face Accelerate; tokenizers (:mod:`harness.train`) and
generators (:mod:`harness.generation.stage`) both train through it.

What it does for any model (one CPU, one GPU, or several processes through
``torchrun`` / ``accelerate launch``, DDP over gloo or NCCL):

* **Global batch and accumulation.** ``Schedule.batch_size`` is the global
  batch; each of ``W`` processes runs ``batch_size / (micro x W)``
  micro-batches per optimizer step, the gradients synchronised only on the
  last one (:func:`micro_batches`). Micro-batch ``m`` of process ``r`` holds
  rows ``offset = r x micro x accumulation + m x micro ...`` of the step's
  global batch, so one process and several see the same data.
* **Seeding** (:mod:`harness_core.seeding`): before each micro-batch the global
  generators are seeded with ``derive_seed(seed, "train", step, offset)``; the
  caller's ``batch`` function draws its rows under that seed or from its own
  per-step seed.
* **Mixed precision** through Accelerate (``fp16`` with a gradient scaler on
  CUDA, ``bf16`` autocast on CPU; :func:`resolve_mixed_precision`).
* **Checkpoints** (atomic, main process writes): model, every optimizer, the
  caller's extra state (e.g. the EMA), step, every process's RNG states and
  the loss history; tensors and plain types only, read back with
  ``torch.load(weights_only=True)``. A run killed at any moment resumes to the
  numbers of the uninterrupted run.
* **Non-finite losses** on any process stop training with
  :class:`harness_core.errors.NonFiniteError` before the optimizer step; the
  checkpoint on disk stays the last good one.
* **Progress and curves**: a tqdm bar on the main process, and losses and the
  learning rate every ``log_every`` steps through Accelerate's trackers
  (``log_with: tensorboard`` writes TensorBoard event files under the run
  folder; ``wandb`` logs to Weights & Biases). The per-step history (losses
  averaged over processes, learning rate) is returned and kept in the
  checkpoint, so the report's loss curves cover resumed runs whole.
"""
from __future__ import annotations

import logging
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Literal, Mapping, Sequence

import pandas as pd
import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState
from accelerate.utils import DistributedDataParallelKwargs, gather_object
from torch import Tensor, nn
from tqdm.auto import tqdm

from harness_core.api import move_to
from harness_core.errors import NonFiniteError
from harness_core.io import torch_save_atomic, write_csv_atomic
from harness_core.seeding import derive_seed, rng_state, seed_everything, set_rng_state

log = logging.getLogger("harness.fit")

LogWith = Literal["none", "tensorboard", "wandb"]

#: the subfolder of a run folder (or of its ``generation/`` folder) that holds tracker files
TRACKER_DIR = "tensorboard"


@dataclass(frozen=True)
class Schedule:
    """How long and in what batches to train (fields named as in ``TrainConfig`` and ``GenerationConfig``).

    Attributes:
        steps: optimizer steps in total (a resumed run stops at the same step).
        batch_size: the global batch per optimizer step (all processes, all micro-batches).
        micro_batch_size: rows per forward/backward pass; ``None`` = ``batch_size / processes``.
        grad_clip: max global grad norm of the first optimizer's parameters, ``None`` for none.
        checkpoint_every: steps between checkpoints (and always after the last step).
        log_every: steps between tracker records and progress-bar updates.
        fresh_optimizer_at: steps before which every optimizer restarts (moments and step counts cleared, the
            fp16 gradient scaler reset), as a training stage that the official code runs as a new run with new
            optimizers (CoordTok's stage 2: huiwon-jang/CoordTok 8475272 ``train_coordtok.py --is_second_step``).
    """

    steps: int
    batch_size: int
    micro_batch_size: int | None = None
    grad_clip: float | None = None
    checkpoint_every: int = 100
    log_every: int = 10
    fresh_optimizer_at: tuple[int, ...] = ()

    @classmethod
    def of(cls, cfg: Any) -> "Schedule":
        """The schedule of a ``TrainConfig`` or ``GenerationConfig`` (fields it lacks keep their defaults)."""
        names = ("steps", "batch_size", "micro_batch_size", "grad_clip", "checkpoint_every", "log_every")
        return cls(**{name: getattr(cfg, name) for name in names if hasattr(cfg, name)})


@dataclass(frozen=True)
class MicroBatches:
    """This process's share of a global batch: ``accumulation`` micro-batches of ``size`` rows each."""

    size: int
    accumulation: int
    world: int
    rank: int

    def offset(self, index: int) -> int:
        """First row of micro-batch ``index`` of this process within the step's global batch."""
        return self.rank * self.size * self.accumulation + index * self.size


def micro_batches(batch_size: int, micro_batch_size: int | None, world: int, rank: int = 0) -> MicroBatches:
    """Split a global batch over ``world`` processes and micro-batches.

    Raises:
        ValueError: when ``batch_size`` is not a multiple of ``micro x world``.
    """
    micro = micro_batch_size or max(1, batch_size // world)
    if batch_size % (micro * world):
        raise ValueError(f"batch_size {batch_size} is not a multiple of micro_batch_size {micro} x {world} processes")
    return MicroBatches(size=micro, accumulation=batch_size // (micro * world), world=world, rank=rank)


def resolve_mixed_precision(setting: str, device_type: str) -> str:
    """``auto`` -> fp16 on CUDA, no on CPU; ``fp16`` on CPU falls back to bf16 (CPU autocast has no fp16 scaler)."""
    if setting == "auto":
        return "fp16" if device_type == "cuda" else "no"
    if setting == "fp16" and device_type != "cuda":
        return "bf16"
    return setting


def make_accelerator(model: nn.Module, mixed_precision: str = "no", log_with: LogWith = "none",
                     project_dir: Path | None = None) -> Accelerator:
    """A fresh Accelerator for training ``model`` on the current process group.

    Each model of a suite may ask for its own mixed precision and tracker, so the accelerator state is reset
    (the process group stays). DDP searches for parameters without a gradient at every step
    (``find_unused_parameters``) unless the model declares ``unused_parameters = False`` (every trainable
    parameter gets a gradient at every step, :class:`harness_core.api.VideoTokenizer`); models without the
    attribute (plugins) are searched.

    Raises:
        ImportError: ``log_with="tensorboard"`` without the ``tensorboard`` package (``pip install tensorboard``).
    """
    AcceleratorState._reset_state(reset_partial_state=False)
    device_type = "cuda" if torch.cuda.is_available() else "cpu"
    trackers = None if log_with == "none" else log_with
    if log_with == "tensorboard":
        import tensorboard  # noqa: F401  (a clear error here instead of Accelerate's warning and silence)
    search = bool(getattr(model, "unused_parameters", True))
    return Accelerator(mixed_precision=resolve_mixed_precision(mixed_precision, device_type),
                       cpu=device_type == "cpu", log_with=trackers, project_dir=project_dir,
                       kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=search)])


@dataclass
class FitResult:
    """What :func:`fit` reports.

    Attributes:
        steps: the step reached (``Schedule.steps``).
        resumed_from: the step the run started at (0 for a fresh run).
        step_time_s: mean wall time per optimizer step of this session, the first step left out (s).
        last_losses: the last step's losses, averaged over processes.
        history: per-step values from step 0 (a resumed run includes the earlier steps): every loss name and
            ``"lr"``; lists of floats of length ``steps``, NaN at steps where a loss was not reported (e.g. a
            second training stage's loss before that stage).
    """

    steps: int
    resumed_from: int
    step_time_s: float | None
    last_losses: dict[str, float]
    history: dict[str, list[float]]


# ``batch(step, offset, size) -> arguments of objective``: rows ``offset .. offset + size`` of step ``step``'s
# global batch, drawn deterministically from (seed, step, offset)
BatchFn = Callable[[int, int, int], tuple]


def fit(model: nn.Module, objective: nn.Module, optimizers: Sequence[torch.optim.Optimizer], batch: BatchFn,
        schedule: Schedule, checkpoint: Path, seed: int, accelerator: Accelerator, *, label: str = "model",
        extras: Mapping[str, Any] | None = None, metadata: Mapping[str, Any] | None = None,
        after_step: Callable[[int], None] | None = None, show_progress: bool = True,
        tracker_config: Mapping[str, Any] | None = None) -> FitResult:
    """Train ``model`` through ``objective`` for ``schedule.steps`` optimizer steps, resuming from ``checkpoint``.

    Args:
        model: the module whose ``state_dict`` is checkpointed (a tokenizer or a generator).
        objective: ``objective(*batch(step, offset, size))`` returns a dict of scalar tensors with ``"loss"`` and,
            optionally, ``"disc_loss"`` (added to the backward pass; an adversary's parameters belong to the
            second optimizer). It wraps ``model`` (DDP wraps the objective).
        optimizers: the main optimizer first (gradient clipping applies to its parameters), then any other
            (a discriminator's); all step once per optimizer step.
        batch: ``batch(step, offset, size)`` -> the objective's positional arguments (tensors are moved to the
            accelerator's device), run with the global generators seeded by ``derive_seed(seed, "train", step,
            offset)``.
        schedule: steps, global batch, micro-batch, clipping, checkpoint and log intervals.
        checkpoint: the checkpoint file (written atomically by the main process; resumed from when present).
        seed: the model's training seed (:mod:`harness_core.seeding`).
        accelerator: from :func:`make_accelerator` (or a test's own).
        label: the model's name in errors and logs.
        extras: objects with ``state_dict``/``load_state_dict`` kept in the checkpoint under their key (an EMA).
        metadata: plain values written into the checkpoint as they are (e.g. a latent normalizer).
        after_step: called with the number of steps done after every optimizer step (e.g. an EMA update).
        tracker_config: hyperparameters recorded by the tracker when ``accelerator`` has one.

    Returns:
        a :class:`FitResult`.

    Raises:
        ValueError: a global batch that does not split into micro-batches.
        NonFiniteError: a NaN or infinite loss on any process (named with ``label`` and the step).
    """
    plan = micro_batches(schedule.batch_size, schedule.micro_batch_size, accelerator.num_processes,
                         accelerator.process_index)
    extras = dict(extras or {})
    start, history = _resume(checkpoint, model, optimizers, extras, accelerator)
    objective = accelerator.prepare(objective)
    prepared = [accelerator.prepare(opt) for opt in optimizers]
    main_params = [p for group in optimizers[0].param_groups for p in group["params"]]
    if accelerator.log_with:  # the tracker names given to the Accelerator; trackers exist after init_trackers
        accelerator.init_trackers(TRACKER_DIR, config=dict(tracker_config or {}))
    objective.train()

    def save(step: int) -> None:
        _save(checkpoint, accelerator, model, prepared, extras, metadata or {}, step, history)

    bar = tqdm(total=schedule.steps, initial=start, disable=not (show_progress and accelerator.is_main_process),
               desc=f"train {label}", unit="step", dynamic_ncols=True)
    times: list[float] = []
    losses: dict[str, float] = {}
    for step in range(start, schedule.steps):
        if step in schedule.fresh_optimizer_at:
            _restart_optimizers(optimizers, accelerator)
            log.info("%s: optimizers restart before step %d", label, step)
        began = time.perf_counter()
        sums: dict[str, Tensor] = {}
        for index in range(plan.accumulation):
            offset = plan.offset(index)
            seed_everything(derive_seed(seed, "train", step, offset))
            args = tuple(move_to(a, accelerator.device) for a in batch(step, offset, plan.size))
            last = index == plan.accumulation - 1
            with accelerator.no_sync(objective) if not last and plan.world > 1 else nullcontext():
                out = objective(*args)
                accelerator.backward((out["loss"] + out.get("disc_loss", 0.0)) / plan.accumulation)
            for name, value in out.items():
                sums[name] = sums.get(name, 0.0) + torch.as_tensor(value).detach().float() / plan.accumulation
        losses = _mean_over_processes(accelerator, sums)
        if not all(_finite(losses[k]) for k in ("loss", "disc_loss") if k in losses):
            bar.close()
            raise NonFiniteError(f"{label}: non-finite training loss at step {step} "
                                 f"({', '.join(f'{k}={v:.4g}' for k, v in losses.items())}); {_kept(checkpoint)}")
        if schedule.grad_clip:
            accelerator.clip_grad_norm_(main_params, schedule.grad_clip)
        for opt in prepared:
            opt.step()
            opt.zero_grad(set_to_none=True)
        if after_step is not None:
            after_step(step + 1)
        if accelerator.device.type == "cuda":
            torch.cuda.synchronize(accelerator.device)
        times.append(time.perf_counter() - began)
        record = {**losses, "lr": float(optimizers[0].param_groups[0]["lr"])}
        _append(history, record)
        bar.update(1)
        done = step + 1
        if done % schedule.log_every == 0 or done == schedule.steps:
            bar.set_postfix({k: f"{v:.4g}" for k, v in list(losses.items())[:3]})
            accelerator.log({f"train/{k}": v for k, v in record.items()}, step=done)
            if bar.disable and accelerator.is_main_process:
                log.info("%s: step %d/%d %s", label, done, schedule.steps,
                         " ".join(f"{k}={v:.4g}" for k, v in losses.items()))
        if done % schedule.checkpoint_every == 0 or done == schedule.steps:
            save(done)
    bar.close()
    if not checkpoint.is_file():  # zero steps: the initial model is the result
        save(start)
    for tracker in accelerator.trackers:  # not end_training(): it would destroy the process group
        tracker.finish()
    accelerator.wait_for_everyone()
    steady = times[1:] or times
    return FitResult(steps=schedule.steps, resumed_from=start, step_time_s=sum(steady) / len(steady) if steady else None,
                     last_losses=losses, history=history)


def _restart_optimizers(optimizers: Sequence[torch.optim.Optimizer], accelerator: Accelerator) -> None:
    """Clear every optimizer's per-parameter state (Adam's moments and step counts) and reset the fp16 gradient
    scaler to a fresh one's state, as new optimizers would start (:attr:`Schedule.fresh_optimizer_at`)."""
    for opt in optimizers:
        opt.state.clear()
    if accelerator.scaler is not None:
        accelerator.scaler.load_state_dict(type(accelerator.scaler)().state_dict())


def _append(history: dict[str, list[float]], record: dict[str, float]) -> None:
    """Add one step to the history; a loss missing at a step (another training stage) is NaN there."""
    steps = len(next(iter(history.values()))) if history else 0
    for name in [*history, *(k for k in record if k not in history)]:
        history.setdefault(name, [float("nan")] * steps).append(record.get(name, float("nan")))


def write_history(path: Path, history: dict[str, list[float]]) -> None:
    """``losses.csv``: one row per optimizer step (``step`` from 1), one column per loss and ``lr``."""
    frame = pd.DataFrame(history)
    frame.insert(0, "step", range(1, len(frame) + 1))
    write_csv_atomic(path, frame)


def _finite(value: float) -> bool:
    return value == value and abs(value) != float("inf")


def _mean_over_processes(accelerator: Accelerator, sums: dict[str, Tensor]) -> dict[str, float]:
    """Each loss averaged over processes (one small all-reduce with several processes); NaN stays NaN."""
    names = list(sums)
    values = torch.stack([sums[n].to(accelerator.device).reshape(()) for n in names]) if names else torch.zeros(0)
    if accelerator.num_processes > 1:
        values = accelerator.reduce(values, reduction="mean")
    return {name: float(v) for name, v in zip(names, values.tolist())}


def _kept(checkpoint: Path) -> str:
    if not checkpoint.is_file():
        return "no checkpoint was written yet"
    step = int(torch.load(checkpoint, map_location="cpu", weights_only=True)["step"])
    return f"the last good checkpoint {checkpoint} (step {step}) is kept"


def _resume(checkpoint: Path, model: nn.Module, optimizers: Sequence[torch.optim.Optimizer],
            extras: Mapping[str, Any], accelerator: Accelerator) -> tuple[int, dict[str, list[float]]]:
    """Load ``checkpoint`` into the model, optimizers and extras; returns the step and the loss history."""
    if not checkpoint.is_file():
        return 0, {}
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    model.load_state_dict(state["model"])
    for opt, saved in zip(optimizers, state["optimizers"]):
        opt.load_state_dict(saved)
    for key, obj in extras.items():
        obj.load_state_dict(state[key])
    states = state.get("rng") or []
    if len(states) == accelerator.num_processes:
        set_rng_state(states[accelerator.process_index])
    log.info("resumed %s at step %d", checkpoint, int(state["step"]))
    return int(state["step"]), {name: values.tolist() for name, values in state.get("history", {}).items()}


def _save(path: Path, accelerator: Accelerator, model: nn.Module, optimizers: Sequence, extras: Mapping[str, Any],
          metadata: Mapping[str, Any], step: int, history: dict[str, list[float]]) -> None:
    """Write the checkpoint (main process) after gathering every process's RNG states; all processes wait."""
    states = gather_object([rng_state()]) if accelerator.num_processes > 1 else [rng_state()]
    if accelerator.is_main_process:
        torch_save_atomic(path, {
            "model": model.state_dict(),
            "optimizers": [opt.state_dict() for opt in optimizers],
            **{key: obj.state_dict() for key, obj in extras.items()},
            **metadata,
            "step": step,
            "rng": states,
            "history": {name: torch.tensor(values, dtype=torch.float64) for name, values in history.items()},
        })
    accelerator.wait_for_everyone()
