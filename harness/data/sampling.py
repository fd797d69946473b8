"""Clip sampling: deterministic evaluation clips (cached as uint8) and seeded training clips.

Evaluation clips (SPEC "Data"): for every evaluation video,
``eval_clips_per_video`` non-overlapping clips whose positions inside the
video's evaluation range are drawn from ``numpy.random.default_rng(seed)``;
``max_eval_videos`` keeps a seeded random subset of the videos. Decoded clips
are cached as ``uint8 [T, H, W, 3]`` ``.npy`` files keyed by file, position
and clip protocol, so repeated evaluations never decode again.

Training clips are a pure function of ``(seed, index)``: the training stream
is reproducible and resumes at any step without data-loader state.

Both read frames from a :class:`harness.data.store.ClipStore` when given one
(``data.store``) instead of decoding: the same bytes, without the decoding.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

from harness.data.datasets import VideoDataset, VideoRecord
from harness.data.decode import decode_frames, source_stamp
from harness.data.store import ClipStore
from harness.io import save_numpy_atomic


@dataclass(frozen=True)
class Clip:
    """One clip: ``frames`` frames from ``start`` with ``stride`` in ``record.path``."""

    record: VideoRecord
    start: int
    frames: int
    stride: int
    resolution: int

    @property
    def clip_id(self) -> str:
        """A readable, unique name: ``<file stem>_<start>``."""
        return f"{self.record.path.stem}_f{self.start:06d}"

    def cache_key(self) -> str:
        # a file keys by (path, size, mtime) as before; a frame folder by its images (harness.data.decode.source_stamp)
        text = f"{source_stamp(self.record.path)}|{self.start}|{self.frames}|{self.stride}|{self.resolution}"
        return hashlib.sha256(text.encode()).hexdigest()[:24]

    def decode(self) -> np.ndarray:
        return decode_frames(self.record.path, self.start, self.frames, self.stride, self.resolution)


def evaluation_clips(dataset: VideoDataset, seed: int) -> list[Clip]:
    """The deterministic evaluation clips of ``dataset`` (see module docstring)."""
    cfg = dataset.cfg
    rng = np.random.default_rng(seed)
    records = list(dataset.eval)
    if cfg.max_eval_videos and len(records) > cfg.max_eval_videos:
        keep = sorted(rng.choice(len(records), size=cfg.max_eval_videos, replace=False))
        records = [records[i] for i in keep]
    span = dataset.clip_span
    clips = []
    for record in records:
        room = record.stop - record.start - cfg.eval_clips_per_video * span
        # non-overlapping clips: split the free room into gaps before each clip
        gaps = np.sort(rng.integers(0, room + 1, size=cfg.eval_clips_per_video)) if room > 0 else np.zeros(cfg.eval_clips_per_video, int)
        for i, gap in enumerate(gaps):
            start = record.start + int(gap) + i * span
            clips.append(Clip(record, start, cfg.frames, cfg.frame_stride, cfg.resolution))
    return clips


class ClipCache:
    """Evaluation clips, ``uint8 [T, H, W, 3]``: cut from ``store`` when given (nothing is written: the store
    already holds the frames), else decoded once into ``<root>/clips/<key>.npy``."""

    def __init__(self, root: Path, store: ClipStore | None = None) -> None:
        self.root = Path(root) / "clips"
        self.store = store
        if store is None:
            self.root.mkdir(parents=True, exist_ok=True)

    def path(self, clip: Clip) -> Path | None:
        """The clip's ``.npy`` file (``None`` with a store)."""
        return None if self.store else self.root / f"{clip.cache_key()}.npy"

    def load(self, clip: Clip) -> np.ndarray:
        if self.store:
            return self.store.frames(clip.record, clip.start, clip.frames, clip.stride)
        path = self.path(clip)
        if path.is_file():
            return np.load(path)
        frames = clip.decode()
        save_numpy_atomic(path, frames)
        return frames


class TrainClips:
    """Seeded training clips: ``clip(index)`` is a pure function of ``(seed, index)``.

    A video is chosen uniformly, then a start uniformly inside its training
    range. With ``memory_cache`` the training range of each video is decoded
    once and kept in memory (small datasets); otherwise each clip is decoded
    on demand (large datasets, with data-loader workers). With a ``store``
    (:func:`harness.data.store.prepare_store`) frames are read from it instead
    of decoded; the clips are the same.
    """

    def __init__(self, dataset: VideoDataset, seed: int, store: ClipStore | None = None) -> None:
        self.dataset = dataset
        self.cfg = dataset.cfg
        self.seed = seed
        self.store = store
        self.records = dataset.train
        if not self.records:
            raise ValueError("the dataset has no training videos")
        self._decoded = lru_cache(maxsize=None)(self._decode_range) if self.cfg.memory_cache else None

    def preload(self) -> None:
        """With ``memory_cache``, decode every training range now (so that a stage's memory figure does not
        include the decoding of full-resolution frames); a no-op otherwise."""
        if self._decoded is not None:
            for index in range(len(self.records)):
                self._decoded(index)

    def _decode_range(self, index: int) -> np.ndarray:
        record = self.records[index]
        return self._frames(record, record.start, record.stop - record.start, 1)

    def _frames(self, record: VideoRecord, start: int, num: int, stride: int) -> np.ndarray:
        if self.store is not None:
            return self.store.frames(record, start, num, stride)
        return decode_frames(record.path, start, num, stride, self.cfg.resolution)

    def clip(self, index: int) -> tuple[np.ndarray, int]:
        """``(uint8 [T, H, W, 3], label)`` of training sample ``index``."""
        rng = np.random.default_rng([self.seed, index])
        which = int(rng.integers(len(self.records)))
        record = self.records[which]
        span = self.dataset.clip_span
        start = int(rng.integers(record.start, record.stop - span + 1))
        if self._decoded is not None:
            offset = start - record.start
            frames = self._decoded(which)[offset : offset + span : self.cfg.frame_stride]
        else:
            frames = self._frames(record, start, self.cfg.frames, self.cfg.frame_stride)
        return frames, record.label

    def batch(self, indices: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """``(float32 [B, 3, T, H, W] in [-1, 1], int64 [B] labels)``."""
        from harness.data.decode import to_model_range

        clips, labels = zip(*(self.clip(i) for i in indices))
        return to_model_range(np.stack(clips)), torch.tensor(labels, dtype=torch.int64)


class TrainClipDataset(torch.utils.data.Dataset):
    """Map-style view of :class:`TrainClips` for ``DataLoader`` workers: item ``i`` is sample ``i``.

    Items are ``(float32 [3, T, H, W] in [-1, 1], label)``; with ``model_range=False`` ``(uint8 [T, H, W, 3], label)``,
    a quarter of the bytes to move between processes, for converting after the transfer (``to_model_range``,
    e.g. on the GPU): with the clip store, the conversion in the worker costs more than reading the clip.
    """

    def __init__(self, clips: TrainClips, length: int, model_range: bool = True) -> None:
        self.clips, self.length, self.model_range = clips, length, model_range

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int):
        from harness.data.decode import to_model_range

        frames, label = self.clips.clip(index)
        return (to_model_range(frames) if self.model_range else torch.from_numpy(frames)), label
