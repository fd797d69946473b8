"""The ``generate`` stage: train a generator on a tokenizer's tokens, sample, score gFVD.

Protocol (issue 7; CoordTok supplementary A.2 and B.2; StyleGAN-V):

Every random draw derives from the stage's ``seed`` (and the shared ``real_seed``)
through :func:`harness_core.seeding.derive_seed` (module table there, and the
data paths in :mod:`harness.generation.data`).

1. **Tokens** (``cfg.train_data``, :mod:`harness.generation.data`).
   ``epochs`` (default, CoordTok-SiT's ``train_sit.py``): one seeded window of
   each of ``min(cfg.num_norm_clips, N)`` training videos, spread evenly over
   the ``N`` videos, is encoded once (cached in
   ``generation/normalization_tokens.pt``) for the normalization; the training
   batches are encoded at every step. ``pool``: ``cfg.num_train_clips``
   training clips are drawn once through ``train_clips`` (in batches of
   ``cfg.encode_batch_size``, batch ``k`` with seed ``derive_seed(seed,
   "encode", k)``), encoded and cached in ``generation/tokens.pt``. Clips are
   encoded with :func:`harness.chunks.encode_video` (``n_frames`` to
   ``variable_length`` tokenizers) and packed per video
   (:mod:`harness.generation.tokens`).
2. **Normalization** (continuous tokens): per plane / channel mean and
   population std, exact over every normalization clip (``epochs``) or over the
   first ``min(cfg.num_norm_clips, num_train_clips)`` cached clips (``pool``),
   written to ``generation/normalization.json``.
3. **Generator.** SiT (continuous; :mod:`harness.generation.sit`) or the
   autoregressive transformer (discrete; :mod:`harness.generation.ar`),
   trained by the one training loop :func:`harness.fit.fit` on every process
   (DDP): AdamW (lr 1e-4, betas (0.9, 0.999), no weight decay), EMA 0.9999
   (timm ``ModelEmaV3``), ``cfg.steps`` steps of global batch
   ``cfg.batch_size``: ``epochs``, the next ``cfg.batch_size`` positions of
   the epoch stream (every training video once per epoch, a fresh window each
   time), decoded, encoded by the frozen tokenizer and normalized in the step;
   ``pool``, drawn with replacement from the cache. Rows, times and noise are
   pure functions of the seed, the step and the row (noise from
   ``derive_seed(seed, "step", step)``), so a resumed or multi-process run
   sees the same draws. The SiT loss is the mean over planes of each plane's
   mean squared error (:func:`harness.generation.transport.training_loss`).
   Checkpoint ``generation/checkpoint.pt`` (model, EMA, optimizer, step, RNG
   states, loss history) every ``cfg.checkpoint_every`` steps and at the end
   (atomic); ``generation/losses.csv`` holds the loss curve. A non-finite loss
   stops the stage (:class:`harness_core.errors.NonFiniteError`).
4. **Sampling** with the EMA weights: SiT through the Euler-Maruyama SDE (250
   steps, ``w_t = sigma_t``, last step 0.04) or the ODE; the AR model by
   ancestral sampling, batch ``k`` seeded by ``derive_seed(seed, "sample", k)``.
   Unconditional runs use class 0; conditional runs draw
   classes uniformly and apply classifier-free guidance ``cfg.cfg_scale``.
   Samples are de-normalized, decoded by the tokenizer and clamped (non-finite
   samples stop the stage); the first
   ``cfg.num_gif_samples`` are written to ``generation/samples/*.gif``.
5. **gFVD** (StyleGAN-V): every metric of ``cfg.fvd_protocols`` gets
   ``cfg.num_real`` real training clips (batch ``k`` with seed
   ``derive_seed(real_seed, k)``, the same for every tokenizer; statistics cached under
   ``cfg.real_cache_dir``; padded clips with their ``n_frames``) and the
   ``cfg.num_samples`` generated videos.
   Fewer than 256 samples per set are marked not comparable.

Under several processes the main process encodes the cached tokens, all train
the generator (in ``epochs`` mode each encoding its own rows of every step),
and every process samples a contiguous, disjoint share of the sample batches
and feeds a share of the real batches (:mod:`harness.shards`;
batch ``k`` keeps its seed, so the samples are the same for any number of
processes); the FVD states are summed over processes and ``shards`` in the
result records which process sampled which sample indices. The result, with the environment card and the
sha256 of its values, is written atomically to
``generation/metrics.json``; when that file exists the stage returns it
without any work (stage resume). Every file it reads back loads with
``torch.load(weights_only=True)``.
"""
from __future__ import annotations

import hashlib
import json
import logging
import time
from pathlib import Path
from typing import Any, Callable

import torch
from accelerate import PartialState
from timm.utils import ModelEmaV3
from torch import Tensor, nn

from harness_core.api import Latents, VideoTokenizer
from harness.data.sampling import ClipBatch, TrainClips, stack_clips
from harness_core.errors import NonFiniteError
from harness.config import GenerationConfig
from harness.generation.data import (ClipSource, EpochStream, batch_sizes, encode_normalization_set,
                                     encode_training_set, latent_batches, video_batches)
from harness.generation.normalize import LatentNormalizer
from harness.generation.tokens import TokenLayout, decode
from harness.generation.transport import sample_ode, sample_sde, training_loss
from harness.generation.tree import batch_size, tree_index, tree_map
from harness.fit import BatchFn, FitResult, LogWith, Schedule, fit, make_accelerator, write_history
from harness_core.io import torch_save_atomic, write_gif_atomic, write_json_atomic
from harness.memory import StageMemory
from harness.records import RunFolder
from harness_core.registry import GENERATORS, METRICS
from harness.results import check_finite, values_sha256
from harness.scoring import Scorer
from harness_core.seeding import derive_seed, environment_card, seeded
from harness.shards import gather_lists, my_share, shard_record, world_size
from metrics.base import MIN_COMPARABLE_N  # the one "not comparable below N" threshold

log = logging.getLogger("harness.generation")

# --------------------------------------------------------------------------- generator


def build_generator(name: str, data: Latents, layout: TokenLayout, cfg: GenerationConfig, num_classes: int,
                    tokenizer: VideoTokenizer) -> nn.Module:
    """Instantiate the registered generator ``name`` for these tokens."""
    cls = GENERATORS.get(name)
    dropout = cfg.class_dropout if num_classes > 1 else 0.0
    if layout.continuous:
        return cls(tree_index(data, 0), size=cfg.model, patch=cfg.patch, patch_t=cfg.patch_t,
                   num_classes=num_classes, class_dropout=dropout)
    vocab = tokenizer.codebook_size()
    if vocab is None:
        raise ValueError(f"{type(tokenizer).__name__} is discrete but codebook_size() is None")
    return cls(vocab_size=int(vocab), seq_len=int(data.shape[1]), size=cfg.model, num_classes=num_classes,
               class_dropout=dropout)


class GeneratorObjective(nn.Module):
    """The generator's training loss as ``forward`` (DDP sees one forward per backward).

    ``forward(x, y[, t, noise])`` -> ``{"loss": scalar}``: the rectified-flow velocity MSE of SiT, averaged
    over planes (:func:`harness.generation.transport.training_loss`, with the given times ``float [B]`` and
    noise ``x0``) for continuous tokens, the next-token cross-entropy of the AR transformer for discrete ones.
    """

    def __init__(self, model: nn.Module, continuous: bool) -> None:
        super().__init__()
        self.model, self.continuous = model, continuous

    def forward(self, x: Latents, y: Tensor, t: Tensor | None = None, noise: Latents | None = None) -> dict[str, Tensor]:
        if self.continuous:
            return {"loss": training_loss(self.model, x, y, t=t, noise=noise).mean()}
        return {"loss": self.model.loss(x, y).mean()}


@torch.no_grad()
def sample_tokens(model: nn.Module, y: Tensor, cfg: GenerationConfig, example: Latents, continuous: bool,
                  generator: torch.Generator) -> Latents:
    """Generate a batch for classes ``y``: normalized latents (SiT) or an ``int64 [B, L]`` sequence (AR)."""
    model.eval()
    if not continuous:
        scale = cfg.cfg_scale if model.num_classes > 1 else 1.0
        return model.generate(y, temperature=cfg.temperature, top_k=cfg.top_k, cfg_scale=scale, generator=generator)
    b = y.shape[0]
    z = tree_map(lambda v: torch.randn((b, *v.shape), generator=generator, device=y.device, dtype=torch.float32),
                 example)
    guided = cfg.cfg_scale != 1.0 and model.num_classes > 1

    def velocity(x: Latents, t: Tensor) -> Latents:
        return model.forward_with_cfg(x, t, y, cfg.cfg_scale) if guided else model(x, t, y)

    if cfg.sampler == "sde":
        return sample_sde(velocity, z, steps=cfg.sampling_steps, last_step_size=cfg.last_step_size, generator=generator)
    return sample_ode(velocity, z, steps=cfg.sampling_steps, method=cfg.ode_method, atol=cfg.ode_atol, rtol=cfg.ode_rtol)


def train_generator(model: nn.Module, ema: ModelEmaV3, data: Latents | None, labels: Tensor | None, continuous: bool,
                    cfg: GenerationConfig, checkpoint: Path, metadata: dict[str, Any], seed: int = 0,
                    label: str = "generator", log_with: LogWith = "none", show_progress: bool = False,
                    batches: BatchFn | None = None) -> FitResult:
    """Train ``model`` (and its ``ema``) for ``cfg.steps`` steps through :func:`harness.fit.fit`, resuming from
    ``checkpoint``; on every process of the run (DDP), like tokenizer training.

    AdamW (``cfg.lr``, ``cfg.betas``, ``cfg.weight_decay``) over the global batch ``cfg.batch_size`` of
    ``batches`` (``epochs`` mode: :func:`harness.generation.data.video_batches`; by default
    :func:`harness.generation.data.latent_batches` over the cached ``data`` and ``labels``), the EMA updated
    after every step; the checkpoint holds the model, the EMA, the optimizer, step, RNG states, loss history
    and ``metadata`` (normalizer, token layout). Losses and learning rate go to ``log_with`` (tracker files
    under ``checkpoint``'s folder).

    Raises:
        NonFiniteError: a non-finite loss (named with ``label`` and the step); the last checkpoint is kept.
    """
    accelerator = make_accelerator(model, "no", log_with, checkpoint.parent)  # CoordTok-SiT trains in fp32 (supp. A.2)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, betas=tuple(cfg.betas), weight_decay=cfg.weight_decay)
    if batches is None:
        batches = latent_batches(data, labels, continuous, cfg.batch_size, seed, accelerator.device)
    return fit(model, GeneratorObjective(model, continuous), [optimizer], batches, Schedule.of(cfg), checkpoint, seed,
               accelerator, label=f"{label} generator", extras={"ema": ema}, metadata=metadata,
               after_step=lambda done: ema.update(model, step=done), show_progress=show_progress,
               tracker_config={"generator": label, "model": cfg.model, "steps": cfg.steps, "batch_size": cfg.batch_size,
                               "lr": cfg.lr})


# --------------------------------------------------------------------------- gFVD


def _write_gif(video: Tensor, path: Path, fps: int) -> None:
    from harness.data.decode import to_uint8

    write_gif_atomic(path, to_uint8(video), fps)  # [T, H, W, 3]


def real_clip_batches(cfg: GenerationConfig, train_clips: ClipSource, train_videos: TrainClips | None,
                      real_seed: int) -> tuple[list[int], Callable[[int], ClipBatch], str]:
    """The real clips of gFVD: batch sizes, ``batch(k) -> ClipBatch`` and the rule in words.

    ``generation.real_clips``:

    * ``first_videos`` (StyleGAN-V, which CoordTok supp. B.2 follows "strictly": universome/stylegan-v 3fecd69
      ``src/metrics/metric_utils.py`` ``compute_feature_stats_for_dataset`` takes items ``0 .. min(len,
      max_items) - 1`` of the dataset in its sorted order, and ``src/training/dataset.py`` discards videos shorter
      than the clip and draws one random window per video): one clip of each of the first ``num_real`` training
      videos at least a clip long, in dataset order, its start from ``derive_seed(real_seed, "video", index)``;
    * ``draws``: ``num_real`` clips of the seeded training stream (video uniformly with replacement), batch ``k``
      from ``derive_seed(real_seed, k)``.

    Raises:
        ValueError: ``first_videos`` without the training videos, or with no training video a clip long.
    """
    if cfg.real_clips == "draws":
        sizes = batch_sizes(cfg.num_real, cfg.sample_batch_size)
        return sizes, lambda k: train_clips(sizes[k], derive_seed(real_seed, k)), \
            "train_clips batches (video uniformly with replacement), derive_seed(real_seed, k)"
    if train_videos is None:
        raise ValueError("generation.real_clips 'first_videos' reads the training videos, but none were given (train_videos)")
    span = train_videos.dataset.clip_span
    eligible = [i for i, r in enumerate(train_videos.records) if r.stop - r.start >= span][: cfg.num_real]
    if not eligible:
        raise ValueError(f"generation.real_clips 'first_videos': no training video has {span} frames (one clip)")
    sizes = batch_sizes(len(eligible), cfg.sample_batch_size)

    def batch(k: int) -> ClipBatch:
        first = k * cfg.sample_batch_size
        videos = eligible[first : first + sizes[k]]
        return stack_clips([train_videos.window(i, train_videos.random_start(i, derive_seed(real_seed, "video", i)))
                            for i in videos])

    return sizes, batch, (f"one clip of each of the first {len(eligible)} training videos of at least {span} frames "
                          "(dataset order, StyleGAN-V), start from derive_seed(real_seed, 'video', index)")


def _real_statistics(scorer: Scorer, batches: tuple[list[int], Callable[[int], ClipBatch], str], cfg: GenerationConfig,
                     run_dir: Path, device: torch.device, real_seed: int) -> None:
    """Feed the real clips (:func:`real_clip_batches`) to the gFVD metrics (this process's share of the batches), or
    load their cached statistics."""
    sizes, batch, rule = batches
    cache_dir = Path(cfg.real_cache_dir) if cfg.real_cache_dir else Path(run_dir).parent / ".fvd_real_cache"
    first = batch(0)
    digest = hashlib.sha256(first.videos.float().cpu().numpy().tobytes()).hexdigest()
    key = {"num_real": sum(sizes), "batch": cfg.sample_batch_size, "seed": real_seed,
           "shape": list(first.videos.shape[1:]), "first_batch_sha256": digest, "rule": rule}
    if cfg.real_clips == "draws":  # the key written before real_clips existed: earlier caches stay valid
        key.update(num_real=cfg.num_real, rule="train_clips batches, derive_seed(real_seed, k)")
    if scorer.use_real_cache(key, cache_dir):
        log.info("generation: real FVD statistics from the cache %s", cache_dir)
        return
    for k in my_share(len(sizes), "real-clip batches"):
        _update_real(scorer, first if k == 0 else batch(k), device)


def _update_real(scorer: Scorer, clips: ClipBatch, device: torch.device) -> None:
    """Feed real clips; their ``n_frames`` only when some clip is padded (``data.short_videos: pad``), so that
    the metrics score real frames only and a batch without padding takes the call it always took."""
    videos = clips.videos.to(device)
    if bool((clips.n_frames < videos.shape[2]).any()):
        scorer.update_real(videos, n_frames=clips.n_frames.to(device))
    else:
        scorer.update_real(videos)


# --------------------------------------------------------------------------- the stage


def run_generation_stage(tokenizer: VideoTokenizer, train_clips: ClipSource, cfg: GenerationConfig, run_dir: Path,
                         device: torch.device, num_classes: int = 1, seed: int = 0, real_seed: int | None = None,
                         label: str = "generator", deterministic: bool = False, log_with: LogWith = "none",
                         train_videos: TrainClips | None = None, environment: dict[str, Any] | None = None) -> dict:
    """Train a generator on ``tokenizer``'s tokens, sample videos and score them with gFVD.

    Args:
        tokenizer: a trained tokenizer (continuous -> SiT, discrete -> AR).
        train_clips: ``train_clips(n, seed) -> ClipBatch(videos float32 [n, 3, T, H, W] in [-1, 1],
            labels int64 [n], n_frames int64 [n])``, deterministic in ``seed``: the real clips of gFVD and
            (``pool``) the cached training clips.
        cfg: the suite's :class:`GenerationConfig`.
        run_dir: the tokenizer's run folder; everything goes to ``run_dir/generation/``.
        device: where the generator trains and samples.
        num_classes: classes of the dataset (used when ``cfg.conditional``; 1 otherwise).
        seed: the stage's seed (the runner passes ``derive_seed(suite seed, tokenizer id, "generation")``).
        real_seed: seed of the real clips for gFVD (shared by every tokenizer of a suite);
            default ``derive_seed(seed, "real")``.
        label: the tokenizer's id, named in errors.
        deterministic: recorded in the environment card (the runner switches the algorithms).
        environment: the environment card to record (the stage passes the run context's, with every stage's
            backend flags); default :func:`harness_core.seeding.environment_card`.
        log_with: the tracker of the generator's losses (``train.log_with``; :mod:`harness.fit`).
        train_videos: the training videos (windows of any start), read in ``cfg.train_data: epochs`` mode.

    Every process of a multi-process run calls the stage: the main process encodes the tokens, all train the
    generator (DDP through :func:`harness.fit.fit`) and sample and score a share of the batches, the main
    process writes the result; every process returns it.

    Returns:
        ``{"gfvd_16f": float, "gfvd_16f_n": int, "gfvd_16f_n_real": int, ... (one set per protocol),
        "gfvd_protocol": {...}, "gfvd_comparable": bool, "generator": {name, size, params,
        tokens_per_video, sequence_length, train_step_time_s, peak_memory_mb, memory_kind, steps,
        final_loss, ...}}``, also written to ``run_dir/generation/metrics.json``.

    Raises:
        ValueError: bad configuration for this tokenizer (e.g. an unknown FVD protocol), or ``epochs`` mode
            without ``train_videos``.
        NonFiniteError: a non-finite generator loss, generated video or gFVD value.
    """
    metrics_path = RunFolder(Path(run_dir)).generation_metrics
    if metrics_path.is_file():
        return json.loads(metrics_path.read_text())
    if cfg.train_data == "epochs" and train_videos is None:
        raise ValueError(f"{label}: generation.train_data 'epochs' reads the training videos, but none were given "
                         "(train_videos); set generation.train_data: pool to train on cached clips")
    return _run(tokenizer, train_clips, cfg, Path(run_dir), torch.device(device), num_classes, seed,
                derive_seed(seed, "real") if real_seed is None else real_seed, label,
                environment or environment_card(torch.device(device), deterministic), log_with, train_videos)


def _run(tokenizer: VideoTokenizer, train_clips: ClipSource, cfg: GenerationConfig, run_dir: Path,
         device: torch.device, num_classes: int, seed: int, real_seed: int, label: str, environment: dict[str, Any],
         log_with: LogWith, train_videos: TrainClips | None) -> dict:
    files = RunFolder(run_dir)
    out, metrics_path = files.generation, files.generation_metrics
    state = PartialState()
    out.mkdir(parents=True, exist_ok=True)
    conditional = bool(cfg.conditional) and num_classes > 1
    classes = num_classes if conditional else 1
    for name in cfg.fvd_protocols:
        if name not in METRICS:
            raise ValueError(f"generation.fvd_protocols: unknown metric {name!r}")
    was_training = tokenizer.training
    tokenizer.eval()

    # 1. tokens encoded once and cached: the training pool (pool) or the normalization clips (epochs)
    epochs = cfg.train_data == "epochs"
    tokens_path = out / ("normalization_tokens.pt" if epochs else "tokens.pt")
    if state.is_main_process and not tokens_path.is_file():
        start = time.perf_counter()
        if epochs:
            cache = encode_normalization_set(tokenizer, train_videos, cfg, device, conditional, num_classes, seed)
        else:
            cache = encode_training_set(tokenizer, train_clips, cfg, device, conditional, num_classes, seed)
        cache["encode_time_s"] = time.perf_counter() - start
        torch_save_atomic(tokens_path, cache)
    state.wait_for_everyone()
    cache = torch.load(tokens_path, map_location="cpu", weights_only=True)
    layout = TokenLayout.from_dict(cache["layout"])
    data, labels = cache["data"], cache["labels"]

    # 2. normalization (continuous): exact per plane / channel statistics over every normalization clip
    normalizer = None
    if layout.continuous:
        m = batch_size(data) if epochs else min(cfg.num_norm_clips, batch_size(data))
        normalizer = LatentNormalizer.fit([tree_index(data, slice(0, m))])
        data = normalizer.normalize(data)
        if state.is_main_process:
            rule = ("one seeded window of every N // num_norm_clips-th training video (train_sit.py)" if epochs
                    else "the first min(num_norm_clips, num_train_clips) cached clips")
            write_json_atomic(out / "normalization.json", {"num_clips": m, "clips": rule, **normalizer.summary()})

    # 3. generator
    name = cfg.generator if cfg.generator != "auto" else ("sit" if layout.continuous else "ar")
    if (name == "sit") != layout.continuous:
        raise ValueError(f"generator {name!r} does not fit {'continuous' if layout.continuous else 'discrete'} tokens")
    with seeded(derive_seed(seed, "init")):
        model = build_generator(name, data, layout, cfg, classes, tokenizer).to(device)
    ema = ModelEmaV3(model, decay=cfg.ema, use_warmup=cfg.ema_warmup)
    metadata = {"normalizer": normalizer.state_dict() if normalizer else None, "layout": cache["layout"]}
    batches = video_batches(tokenizer, EpochStream(train_videos, seed), cfg, normalizer, layout.continuous,
                            conditional, num_classes, seed, device) if epochs else None
    with StageMemory(device) as memory:
        train = train_generator(model, ema, data, labels, layout.continuous, cfg, out / "checkpoint.pt", metadata,
                                seed=seed, label=label, log_with=log_with, batches=batches)
    if state.is_main_process:
        write_history(files.generation_losses, train.history)
    ema_model = ema.module.eval()

    # 4. samples and 5. gFVD, every process a share of the sample batches
    scorer = Scorer(cfg.fvd_protocols, device, label=f"{label} generation", synchronize=world_size() > 1)
    real = real_clip_batches(cfg, train_clips, train_videos, real_seed)
    _real_statistics(scorer, real, cfg, run_dir, device, real_seed)
    samples_dir = out / "samples"
    example = tree_index(data, 0)
    sizes = batch_sizes(cfg.num_samples, cfg.sample_batch_size)
    mine = my_share(len(sizes), "sample batches")
    sample_time, sampled = 0.0, []
    for k in mine:
        n, first = sizes[k], k * cfg.sample_batch_size
        sampled.extend(range(first, first + n))
        batch_seed = derive_seed(seed, "sample", k)
        gen = torch.Generator(device=device).manual_seed(batch_seed)
        y = torch.randint(classes, (n,), generator=gen, device=device) if conditional \
            else torch.zeros(n, dtype=torch.long, device=device)
        start = time.perf_counter()
        with seeded(batch_seed):
            tokens = sample_tokens(ema_model, y, cfg, example, layout.continuous, gen)
            if normalizer is not None:
                tokens = normalizer.denormalize(tokens)
            sample_time += time.perf_counter() - start
            videos = decode(tokenizer, tokens, layout)
        if not torch.isfinite(videos).all():
            raise NonFiniteError(f"{label}: generated videos of sample batch {k} are not finite (diverged generator?)")
        for i in range(max(0, min(n, cfg.num_gif_samples - first))):
            suffix = f"_class{int(y[i])}" if conditional else ""
            _write_gif(videos[i], samples_dir / f"sample_{first + i:03d}{suffix}.gif", cfg.gif_fps)
        scorer.update_fake(videos)

    values, protocol = scorer.compute()  # collective: reduces over every process's share
    sample_time = sum(gather_lists([sample_time]))
    shards = shard_record([str(i) for i in sampled])
    if not state.is_main_process:  # the main process writes the result; the others read it
        state.wait_for_everyone()
        tokenizer.train(was_training)
        return json.loads(metrics_path.read_text())
    result: dict[str, Any] = {"g" + key: value for key, value in values.items()}
    comparable = bool(scorer.metrics)
    for metric in scorer.metrics.values():
        n_fake = int(values.get(f"{metric.name}_n", 0))
        n_real = int(values.get(f"{metric.name}_n_real", n_fake))
        comparable &= min(n_fake, n_real) >= MIN_COMPARABLE_N
    protocol["generation"] = {
        "source": "CoordTok supp. A.2 / B.2; StyleGAN-V fvd2048 (2048 real vs 2048 generated)",
        "num_samples": cfg.num_samples, "num_real": cfg.num_real,
        "sampler": cfg.sampler if layout.continuous else "ancestral",
        "sampling_steps": cfg.sampling_steps if layout.continuous else None,
        "last_step_size": cfg.last_step_size if layout.continuous and cfg.sampler == "sde" else None,
        "conditional": conditional, "cfg_scale": cfg.cfg_scale if conditional else None,
        "real_clips": real[2],
    }
    result["gfvd_protocol"] = protocol
    result["metric_specs"] = [spec.for_generation().to_dict() for spec in scorer.specs()]  # reports need no metric code
    result["gfvd_comparable"] = bool(comparable)
    if not comparable:
        result["gfvd_note"] = f"N < {MIN_COMPARABLE_N} samples per set: not comparable (standard N = 2048)"
    losses = train.history.get("loss", [])
    tail = losses[-max(1, len(losses) // 10):] if losses else []
    result["generator"] = {
        "name": name, "size": cfg.model, "patch": cfg.patch if layout.continuous else None,
        "params": int(sum(p.numel() for p in model.parameters())),
        "tokens_per_video": int(layout.tokens_per_video),
        "sequence_length": int(model.num_patches if layout.continuous else model.seq_len),
        "train_step_time_s": train.step_time_s,
        "peak_memory_mb": memory.peak_mb, "memory_kind": memory.kind,
        "steps": int(train.steps), "batch_size": cfg.batch_size,
        "initial_loss": losses[0] if losses else None,
        "final_loss": float(sum(tail) / len(tail)) if tail else None,
        "train_data": cfg.train_data, "encode_time_s": cache.get("encode_time_s"),
        "sample_time_s_per_video": sample_time / max(1, cfg.num_samples),
        "conditional": conditional, "num_classes": classes, "ema": cfg.ema,
    }
    if epochs:  # every step's clips are fresh windows, encoded in the step (its time includes the encoding)
        videos = len(train_videos.records)
        result["generator"].update({"train_clips": int(train.steps) * cfg.batch_size, "train_videos": videos,
                                    "epochs": int(train.steps) * cfg.batch_size / videos})
    else:
        result["generator"]["train_clips"] = int(batch_size(data))
    if shards["world_size"] > 1:
        result["shards"] = shards  # which process sampled which samples (indices)
    check_finite(result, f"{label}: generation metrics")
    result["environment"] = environment
    result["gfvd_values_sha256"] = values_sha256(result)
    write_json_atomic(metrics_path, result)
    tokenizer.train(was_training)
    state.wait_for_everyone()
    return result
