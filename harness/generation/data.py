"""Where the generator's training batches come from (``generation.train_data``).

``epochs`` (default), as CoordTok-SiT trains (huiwon-jang/CoordTok 8475272
``train_sit.py``): a ``DistributedSampler(shuffle=True)`` over
``VideoTimeSplit`` visits every training video once per epoch, each visit
draws a fresh random 128-frame window (``VideoTimeSplit.__getitem__``; shorter
videos padded, with ``n_frames``), and the frozen tokenizer encodes the batch
at every step (``first_stage_model.module.encode(x, n_frames)``) before it is
normalized. Here :class:`EpochStream` is the global sample stream of that
sampler and :func:`video_batches` the :data:`harness.fit.BatchFn` that decodes,
encodes, packs and normalizes its rows.

``pool`` (a deviation for small machines): ``num_train_clips`` clips encoded
once (:func:`encode_training_set`) and batches drawn from them with
replacement (:func:`latent_batches`).

Normalization statistics (``train_sit.py`` ``gather_and_compute_mean_std``)
come in ``epochs`` mode from :func:`encode_normalization_set`: one seeded
window of every ``N // num_norm_clips``-th training video, as ``train_sit.py``
(:func:`normalization_videos`).

Every draw is a pure function of the stage seed ``g`` (:mod:`harness_core.seeding`):

=================================  ==================================================================
path                               what it seeds
=================================  ==================================================================
``g, "epoch", e``                  the order of the training videos in epoch ``e`` (a permutation)
``g, "window", e, video``          the window start of training video ``video`` in epoch ``e``
``g, "encode", step, offset``      the global RNGs while encoding the micro-batch at row ``offset`` of
                                   step ``step`` (``epochs``); ``g, "encode", k``: the ``k``-th batch
                                   of cached clips (``pool``)
``g, "norm", video``               the window of normalization video ``video`` (``epochs``)
``g, "norm", "encode", k``         the global RNGs while encoding the ``k``-th normalization batch
``g, "step", step``                the pool rows of a step (``pool``); times and noise of a step
=================================  ==================================================================
"""
from __future__ import annotations

from functools import lru_cache
from typing import Any, Callable, Iterable

import numpy as np
import torch
from torch import Tensor

from harness_core.api import Latents, VideoTokenizer
from harness.chunks import encode_video
from harness.data.sampling import ClipBatch, TrainClips, stack_clips
from harness.fit import BatchFn
from harness.config import GenerationConfig
from harness.generation.normalize import LatentNormalizer
from harness.generation.tokens import TokenLayout, pack
from harness.generation.tree import batch_size, tree_cat, tree_map
from harness_core.seeding import derive_seed, seeded

#: ``source(n, seed) -> ClipBatch(videos float32 [n, 3, T, H, W] in [-1, 1], labels int64 [n], n_frames int64 [n])``,
#: deterministic in ``seed`` (the runner draws from a :class:`harness.data.sampling.TrainClips`)
ClipSource = Callable[[int, int], ClipBatch]


def batch_sizes(total: int, size: int) -> list[int]:
    """Sizes of the consecutive batches of at most ``size`` items that cover ``total`` items."""
    return [min(size, total - s) for s in range(0, total, size)]


def class_labels(labels: Tensor, conditional: bool, num_classes: int) -> Tensor:
    """``int64 [B]`` generator classes: the dataset's labels when ``conditional``, else zeros.

    Raises:
        ValueError: a conditional label outside ``[0, num_classes)``.
    """
    labels = torch.as_tensor(labels, dtype=torch.long).cpu()
    if not conditional:
        return torch.zeros_like(labels)
    if labels.min() < 0 or labels.max() >= num_classes:
        raise ValueError(f"class labels must lie in [0, {num_classes}), got [{int(labels.min())}, {int(labels.max())}]")
    return labels


@torch.no_grad()
def encode_clips(tokenizer: VideoTokenizer, clips: ClipBatch, budget: int | None, device: torch.device,
                 seed: int) -> tuple[Latents, TokenLayout]:
    """Encode a batch of clips on ``device`` under the global RNGs seeded by ``seed`` and pack it per video.

    ``clips.n_frames`` goes to ``variable_length`` tokenizers (:func:`harness.chunks.encode_video`), as
    CoordTok-SiT's ``encode(x, n_frames)``.

    Returns:
        latents ``[B, ...]`` (tensor or dict of planes) or an ``int64 [B, L]`` index sequence, on ``device``,
        and the :class:`TokenLayout` (:func:`harness.generation.tokens.pack`).
    """
    videos = clips.videos.to(device)
    with seeded(seed):
        groups = encode_video(tokenizer, videos, budget=budget, n_frames=clips.n_frames.to(device))
    return pack(groups, videos.shape[0], tokenizer, videos.shape[2])


def _encode_all(tokenizer: VideoTokenizer, batches: Iterable[tuple[ClipBatch, int]], budget: int | None,
                device: torch.device, conditional: bool, num_classes: int) -> dict[str, Any]:
    """Encode ``(clips, seed)`` batches; packed per video, on the CPU (the cache format of both modes)."""
    parts, labels, layout, shape = [], [], None, None
    for clips, batch_seed in batches:
        packed, layout = encode_clips(tokenizer, clips, budget, device, batch_seed)
        parts.append(tree_map(lambda v: v.detach().cpu(), packed))
        labels.append(class_labels(clips.labels, conditional, num_classes))
        shape = tuple(clips.videos.shape[2:])
    return {"data": tree_cat(parts), "labels": torch.cat(labels), "layout": layout.to_dict(), "video_shape": shape}


def encode_training_set(tokenizer: VideoTokenizer, train_clips: ClipSource, cfg: GenerationConfig,
                        device: torch.device, conditional: bool, num_classes: int, seed: int = 0) -> dict[str, Any]:
    """``pool`` mode: encode ``cfg.num_train_clips`` training clips once (batch ``k`` of ``cfg.encode_batch_size``
    drawn and encoded under ``derive_seed(seed, "encode", k)``).

    Returns:
        ``{"data": latents [N, ...] or int64 [N, L], "labels": int64 [N], "layout": dict,
        "video_shape": (T, H, W)}``, on the CPU.

    Raises:
        ValueError: when labels fall outside ``[0, num_classes)`` in conditional mode.
    """
    sizes = batch_sizes(cfg.num_train_clips, cfg.encode_batch_size)
    seeds = [derive_seed(seed, "encode", k) for k in range(len(sizes))]
    batches = ((train_clips(n, s), s) for n, s in zip(sizes, seeds))
    return _encode_all(tokenizer, batches, cfg.budget, device, conditional, num_classes)


def normalization_videos(num_videos: int, num_norm_clips: int) -> list[int]:
    """The training videos whose latents give the normalization statistics: every ``max(1, N // num_norm_clips)``-th
    of the (sorted) list of ``N`` training videos, from the first.

    This is CoordTok-SiT's rule (huiwon-jang/CoordTok 8475272 ``train_sit.py`` ``main``: rank ``r`` of ``W`` encodes
    ``range(r, N, N // 2048 * W)``, whose union over ranks is every ``N // 2048``-th video up to the ranks' offsets):
    2385 of UCF-101's 9537 training videos for ``num_norm_clips = 2048``, where the paper (supp. A.2) says 2048
    clips; the code is followed (docs/fidelity.md, section 4). With ``N <= num_norm_clips`` every video is used.
    """
    return list(range(0, num_videos, max(1, num_videos // num_norm_clips)))


def encode_normalization_set(tokenizer: VideoTokenizer, videos: TrainClips, cfg: GenerationConfig,
                             device: torch.device, conditional: bool, num_classes: int,
                             seed: int = 0) -> dict[str, Any]:
    """``epochs`` mode: encode one window of each :func:`normalization_videos` video (start
    ``videos.random_start(video, derive_seed(seed, "norm", video))``), in batches of ``cfg.encode_batch_size``,
    batch ``k`` encoded under ``derive_seed(seed, "norm", "encode", k)``.

    Returns:
        the :func:`encode_training_set` dictionary of these clips, plus ``"videos"``: their video indices.
    """
    chosen = normalization_videos(len(videos.records), cfg.num_norm_clips)

    def batches():
        for k, first in enumerate(range(0, len(chosen), cfg.encode_batch_size)):
            rows = chosen[first: first + cfg.encode_batch_size]
            clips = [videos.window(v, videos.random_start(v, derive_seed(seed, "norm", v))) for v in rows]
            yield stack_clips(clips), derive_seed(seed, "norm", "encode", k)

    cache = _encode_all(tokenizer, batches(), cfg.budget, device, conditional, num_classes)
    cache["videos"] = chosen
    return cache


class EpochStream:
    """The global sample stream of ``epochs`` mode: every training video once per epoch, a fresh window each time.

    With ``N`` training videos, stream position ``j`` is video ``order(e)[j % N]`` of epoch ``e = j // N``,
    ``order(e)`` the permutation ``numpy.random.default_rng(derive_seed(seed, "epoch", e)).permutation(N)``,
    and its window starts at ``videos.random_start(video, derive_seed(seed, "window", e, video))``. Step
    ``s`` of global batch ``B`` takes positions ``[s B, (s + 1) B)``, so a batch may hold the end of one
    epoch and the start of the next (CoordTok-SiT's ``DataLoader(drop_last=True)`` instead drops the last
    ``N mod B`` videos of every epoch's order): every epoch stays complete for any ``N``, ``N < B`` included.
    A pure function of ``(seed, position)``: resumed and multi-process runs read the same rows.
    """

    def __init__(self, videos: TrainClips, seed: int) -> None:
        self.videos, self.seed = videos, seed
        self.size = len(videos.records)
        # a batch spans ceil(B / N) + 1 epochs at most; the bound keeps long runs from keeping every order
        self._order = lru_cache(maxsize=16)(self._permutation)

    def _permutation(self, epoch: int) -> np.ndarray:
        return np.random.default_rng(derive_seed(self.seed, "epoch", epoch)).permutation(self.size)

    def order(self, epoch: int) -> list[int]:
        """The training videos of epoch ``epoch`` in stream order (a permutation of ``range(N)``)."""
        return self._order(epoch).tolist()

    def position(self, index: int) -> tuple[int, int]:
        """``(video, start)`` of stream position ``index``."""
        epoch, k = divmod(index, self.size)
        video = int(self._order(epoch)[k])
        return video, self.videos.random_start(video, derive_seed(self.seed, "window", epoch, video))

    def clips(self, first: int, count: int) -> ClipBatch:
        """The decoded clips of positions ``first .. first + count - 1`` (:meth:`TrainClips.window`)."""
        return stack_clips([self.videos.window(*self.position(j)) for j in range(first, first + count)])


def _times_and_noise(seed: int, step: int, global_batch: int, example: Latents, device: torch.device,
                     rows: slice) -> tuple[Tensor, Latents]:
    """Rows ``rows`` of step ``step``'s times ``float [B]`` and noise (shaped as ``example`` per row), drawn for
    the whole global batch from ``derive_seed(seed, "step", step), "noise"`` so that every split draws alike."""
    gen = torch.Generator(device=device).manual_seed(derive_seed(derive_seed(seed, "step", step), "noise"))
    t = torch.rand(global_batch, generator=gen, device=device)
    noise = tree_map(lambda v: torch.randn((global_batch, *v.shape[1:]), generator=gen, device=device,
                                           dtype=v.dtype), example)
    return t[rows], tree_map(lambda v: v[rows], noise)


def latent_batches(data: Latents, labels: Tensor, continuous: bool, global_batch: int, seed: int,
                   device: torch.device) -> BatchFn:
    """``pool`` mode's :data:`harness.fit.BatchFn`: step ``s`` draws ``global_batch`` cached videos with
    replacement from ``derive_seed(seed, "step", s)``, and (continuous) their times and noise; a micro-batch
    takes its rows of that draw, so every split over processes and micro-batches trains on the same batch.

    Returns rows ``(x, y)`` (discrete: ``int64 [size, L]``) or ``(x, y, t float [size], noise like x)``.
    """
    n = batch_size(data)

    def batch(step: int, offset: int, size: int) -> tuple:
        rows = slice(offset, offset + size)
        draw = torch.Generator().manual_seed(derive_seed(seed, "step", step))
        idx = torch.randint(n, (global_batch,), generator=draw)[rows]
        x, y = tree_map(lambda v: v[idx].to(device), data), labels[idx].to(device)
        if not continuous:
            return x, y
        return (x, y, *_times_and_noise(seed, step, global_batch, data, device, rows))

    return batch


def video_batches(tokenizer: VideoTokenizer, stream: EpochStream, cfg: GenerationConfig,
                  normalizer: LatentNormalizer | None, continuous: bool, conditional: bool, num_classes: int,
                  seed: int, device: torch.device) -> BatchFn:
    """``epochs`` mode's :data:`harness.fit.BatchFn`: the micro-batch at row ``offset`` of step ``step`` holds
    stream positions ``step * cfg.batch_size + offset ..`` (:class:`EpochStream`), decoded, encoded by the
    frozen ``tokenizer`` on ``device`` (no gradients; global RNGs seeded by ``derive_seed(seed, "encode",
    step, offset)``), packed and normalized; times and noise as in :func:`latent_batches`.

    Processes and micro-batches take disjoint rows of the same global batch. A tokenizer whose ``encode``
    draws random numbers (posterior samples) draws them per micro-batch, so only the same split repeats them.

    Returns rows ``(x, y)`` (discrete: ``int64 [size, L]``) or ``(x, y, t float [size], noise like x)``.

    Raises:
        ValueError: conditional labels outside ``[0, num_classes)``.
    """
    def batch(step: int, offset: int, size: int) -> tuple:
        clips = stream.clips(step * cfg.batch_size + offset, size)
        x, _ = encode_clips(tokenizer, clips, cfg.budget, device, derive_seed(seed, "encode", step, offset))
        if normalizer is not None:
            x = normalizer.normalize(x)
        y = class_labels(clips.labels, conditional, num_classes).to(device)
        if not continuous:
            return x, y
        return (x, y, *_times_and_noise(seed, step, cfg.batch_size, x, device, slice(offset, offset + size)))

    return batch
