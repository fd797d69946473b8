"""Clip sampling: deterministic evaluation clips (cached as uint8) and seeded training clips.

Evaluation clips (SPEC "Data"), by one of three rules:

* ``data.eval_list``: a given list of ``relpath start end`` lines (CoordTok's
  ``evallist.txt`` format, huiwon-jang/CoordTok 8475272 ``tools/datasets.py``
  ``VideoTimeSplitInference``), used as is;
* ``data.eval_clips: N``: a seeded list of N clips, each a video drawn
  uniformly with replacement from the evaluation videos and a start drawn
  uniformly inside it (CoordTok supp. B.1, "we follow the setup of MAGVIT ...
  randomly sample 10000 video clips of length 128");
* otherwise ``eval_clips_per_video`` non-overlapping clips per evaluation video
  at seeded positions.

Draws come from ``numpy.random.default_rng(seed)`` (:mod:`harness_core.seeding`), so
the list is identical across runs and numbers of processes;
``max_eval_videos`` keeps a seeded random subset of the videos first. The
runner writes the clips as ``eval_list.txt`` (:func:`write_eval_list`), which
``data.eval_list`` reads back. Decoded clips are cached as ``uint8 [T, H, W, 3]``
``.npy`` files keyed by file, position and clip protocol, so repeated
evaluations never decode again.

Short videos (``data.short_videos: pad``, CoordTok ``VideoTimeSplit``): a clip
running past its video's last frame holds the ``length`` real frames and is
padded to ``frames`` by repeating the last real frame; ``length`` (the
``n_frames`` of tokenizers and metrics) says where the padding starts, and
scores use real frames only.

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
from typing import NamedTuple

import numpy as np
import torch

from harness.data.datasets import DataError, VideoDataset, VideoRecord
from harness.data.decode import decode_frames, source_stamp
from harness.data.store import ClipStore
from harness_core.io import save_numpy_atomic, write_text_atomic

#: file name of the evaluation list a run writes (``relpath start end`` lines, :func:`write_eval_list`)
EVAL_LIST_FILE = "eval_list.txt"


@dataclass(frozen=True)
class Clip:
    """One clip: ``frames`` frames from ``start`` with ``stride`` in ``record.path``.

    ``length`` (at most ``frames``) is the number of real frames; the clip is
    padded to ``frames`` with its last real frame (``data.short_videos: pad``).
    ``index`` is the clip's position in a drawn or given evaluation list (which
    may hold one (video, start) twice), ``None`` for per-video clips.
    """

    record: VideoRecord
    start: int
    frames: int
    stride: int
    resolution: int
    length: int | None = None
    index: int | None = None
    resize: str = "bilinear_antialias"

    @property
    def n_frames(self) -> int:
        """Real frames of the clip (the rest is padding)."""
        return self.frames if self.length is None else self.length

    @property
    def clip_id(self) -> str:
        """A readable, unique name: ``<file stem>_f<start>``, prefixed with ``e<index>_`` for list clips."""
        name = f"{self.record.path.stem}_f{self.start:06d}"
        return name if self.index is None else f"e{self.index:05d}_{name}"

    def cache_key(self) -> str:
        # a file keys by (path, size, mtime) as before; a frame folder by its images (harness.data.decode.source_stamp)
        text = f"{source_stamp(self.record.path)}|{self.start}|{self.frames}|{self.stride}|{self.resolution}"
        if (self.n_frames, self.resize) != (self.frames, "bilinear_antialias"):  # earlier keys stay valid
            text += f"|{self.n_frames}|{self.resize}"
        return hashlib.sha256(text.encode()).hexdigest()[:24]

    def decode(self) -> np.ndarray:
        frames = decode_frames(self.record.path, self.start, self.n_frames, self.stride, self.resolution, self.resize)
        return pad_frames(frames, self.frames)


def pad_frames(frames: np.ndarray, total: int) -> np.ndarray:
    """``uint8 [L, H, W, 3]`` -> ``[total, H, W, 3]``, the last frame repeated (``L <= total``)."""
    if len(frames) >= total:
        return frames
    return np.concatenate([frames, np.repeat(frames[-1:], total - len(frames), axis=0)])


def real_frames(record: VideoRecord, start: int, frames: int, stride: int) -> int:
    """How many of a clip's ``frames`` frames (from ``start``, every ``stride``-th) lie inside ``record``'s range."""
    return max(0, min(frames, -(-(record.stop - start) // stride)))


def clip_lengths(clips: list[Clip], device: torch.device | str = "cpu") -> torch.Tensor | None:
    """Real frames of each clip, ``int64 [B]`` on ``device`` (the ``n_frames`` of tokenizers and metrics), or
    ``None`` when no clip is padded."""
    if all(c.length is None for c in clips):
        return None
    return torch.tensor([c.n_frames for c in clips], dtype=torch.long, device=device)


def evaluation_clips(dataset: VideoDataset, seed: int) -> list[Clip]:
    """The deterministic evaluation clips of ``dataset`` (see module docstring).

    Raises:
        DataError: ``data.eval_list`` cannot be read or names a video or range the dataset does not hold.
    """
    cfg = dataset.cfg
    if cfg.eval_list:
        return read_eval_list(dataset, Path(cfg.eval_list))
    rng = np.random.default_rng(seed)
    records = list(dataset.eval)
    if cfg.max_eval_videos and len(records) > cfg.max_eval_videos:
        keep = sorted(rng.choice(len(records), size=cfg.max_eval_videos, replace=False))
        records = [records[i] for i in keep]
    if cfg.eval_clips:
        return _random_clips(dataset, records, cfg.eval_clips, rng)
    span = dataset.clip_span
    clips = []
    for record in records:
        room = record.stop - record.start - cfg.eval_clips_per_video * span
        # non-overlapping clips: split the free room into gaps before each clip
        gaps = np.sort(rng.integers(0, room + 1, size=cfg.eval_clips_per_video)) if room > 0 else np.zeros(cfg.eval_clips_per_video, int)
        for i, gap in enumerate(gaps):
            start = record.start + int(gap) + i * span
            clips.append(_clip(dataset, record, start))
    return clips


def _clip(dataset: VideoDataset, record: VideoRecord, start: int, index: int | None = None) -> Clip:
    cfg = dataset.cfg
    length = real_frames(record, start, cfg.frames, cfg.frame_stride)
    return Clip(record, start, cfg.frames, cfg.frame_stride, cfg.resolution, None if length == cfg.frames else length,
                index, cfg.resize)


def _random_clips(dataset: VideoDataset, records: list[VideoRecord], count: int, rng: np.random.Generator) -> list[Clip]:
    """``count`` clips: video uniformly with replacement, then a start uniformly in its range (0 room: its first frame)."""
    if not records:
        raise DataError(f"data.eval_clips: the {dataset.cfg.dataset!r} evaluation split holds no video")
    which = rng.integers(len(records), size=count)
    clips = []
    for index, k in enumerate(which.tolist()):
        record = records[k]
        room = max(0, record.stop - record.start - dataset.clip_span)
        clips.append(_clip(dataset, record, record.start + int(rng.integers(room + 1)), index))
    return clips


def _list_path(path: Path, root: str | None) -> str:
    """A video's path as the list writes it: relative to ``data.root`` when inside it."""
    if root:
        try:
            return path.resolve().relative_to(Path(root).resolve()).as_posix()
        except ValueError:
            pass
    return str(path)


def write_eval_list(path: Path, clips: list[Clip], root: str | None) -> None:
    """Write ``clips`` as lines ``relpath start end`` (``end`` exclusive: the frame after the clip's last real frame;
    paths relative to ``root`` when inside it), the format :func:`read_eval_list` reads (CoordTok ``evallist.txt``)."""
    lines = [f"{_list_path(c.record.path, root)} {c.start} {c.start + (c.n_frames - 1) * c.stride + 1}" for c in clips]
    write_text_atomic(path, "\n".join(lines) + "\n")


def read_eval_list(dataset: VideoDataset, path: Path) -> list[Clip]:
    """The clips of an evaluation list file (lines ``relpath start end ...``; extra columns, as the official
    file's FVD range, are ignored; blank lines skipped), in file order, each checked against the dataset's
    evaluation videos. ``end`` is exclusive; ``-1`` means the end of the video (CoordTok ``VideoTimeSplitInference``).
    A range shorter than a clip is padded (``data.short_videos: pad``).

    Raises:
        DataError: the file is missing, a line is malformed, or names a video or a range the evaluation split
            does not hold (the message names the file and line).
    """
    if not path.is_file():
        raise DataError(f"data.eval_list: file not found: {path}")
    cfg = dataset.cfg
    by_path = {}
    for record in dataset.eval:
        by_path[_list_path(record.path, cfg.root)] = record
        by_path[str(record.path)] = record
    clips = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        parts = line.split()
        if not parts:
            continue
        where = f"data.eval_list {path}, line {number}"
        if len(parts) < 3 or not all(p.lstrip("-").isdigit() for p in parts[1:3]):
            raise DataError(f"{where}: expected 'relpath start end', got {line.strip()!r}")
        record = by_path.get(parts[0])
        if record is None:
            raise DataError(f"{where}: {parts[0]} is not a video of the {cfg.dataset!r} evaluation split")
        start, end = int(parts[1]), int(parts[2])
        end = record.stop if end == -1 else end
        if not record.start <= start < end <= record.stop:
            raise DataError(f"{where}: frames {start}..{end} lie outside the {record.stop} frames of {record.path}")
        length = min(cfg.frames, -(-(end - start) // cfg.frame_stride))
        if length < cfg.frames and cfg.short_videos != "pad":
            raise DataError(f"{where}: {length} frames, fewer than a clip of {cfg.frames} (set data.short_videos: pad to pad it)")
        clips.append(Clip(record, start, cfg.frames, cfg.frame_stride, cfg.resolution,
                          None if length == cfg.frames else length, len(clips), cfg.resize))
    if not clips:
        raise DataError(f"data.eval_list {path} holds no clip")
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
        """The clip's frames, ``uint8 [frames, H, W, 3]`` (padded past ``n_frames``)."""
        if self.store:
            return pad_frames(self.store.frames(clip.record, clip.start, clip.n_frames, clip.stride), clip.frames)
        path = self.path(clip)
        if path.is_file():
            return np.load(path)
        frames = clip.decode()
        save_numpy_atomic(path, frames)
        return frames


class ClipBatch(NamedTuple):
    """A batch of training clips: ``videos float32 [B, 3, T, H, W]`` in ``[-1, 1]``, ``labels int64 [B]`` and
    ``n_frames int64 [B]``, the real frames of each clip (``T`` unless ``data.short_videos: pad`` padded it)."""

    videos: torch.Tensor
    labels: torch.Tensor
    n_frames: torch.Tensor


class TrainClips:
    """Seeded training clips: ``clip(index)`` is a pure function of ``(seed, index)``.

    A video is chosen uniformly, then a start uniformly inside its training
    range (its first frame for a video shorter than a clip, which is padded:
    ``data.short_videos: pad``). With ``memory_cache`` the training range of
    each video is decoded once and kept in memory (small datasets); otherwise
    each clip is decoded on demand (large datasets, with data-loader workers).
    With a ``store`` (:func:`harness.data.store.prepare_store`) frames are read
    from it instead of decoded; the clips are the same.

    :meth:`window` and :meth:`random_start` serve epoch-wise sampling (every
    training video once per epoch, as CoordTok-SiT's ``DistributedSampler``).
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
        return decode_frames(record.path, start, num, stride, self.cfg.resolution, self.cfg.resize)

    def random_start(self, video: int, seed: int) -> int:
        """A start drawn uniformly from ``numpy.random.default_rng(seed)`` inside training video ``video``'s range
        (its first frame when the video is shorter than a clip)."""
        record = self.records[video]
        room = max(0, record.stop - record.start - self.dataset.clip_span)
        return record.start + int(np.random.default_rng(seed).integers(room + 1))

    def window(self, video: int, start: int) -> tuple[np.ndarray, int, int]:
        """``(uint8 [T, H, W, 3], label, n_frames)``: the clip of training video ``video`` from frame ``start``,
        padded past its ``n_frames`` real frames."""
        record = self.records[video]
        length = real_frames(record, start, self.cfg.frames, self.cfg.frame_stride)
        if self._decoded is not None:
            offset = start - record.start
            frames = self._decoded(video)[offset : offset + (length - 1) * self.cfg.frame_stride + 1 : self.cfg.frame_stride]
        else:
            frames = self._frames(record, start, length, self.cfg.frame_stride)
        return pad_frames(frames, self.cfg.frames), record.label, length

    def clip(self, index: int) -> tuple[np.ndarray, int, int]:
        """``(uint8 [T, H, W, 3], label, n_frames)`` of training sample ``index``."""
        rng = np.random.default_rng([self.seed, index])
        which = int(rng.integers(len(self.records)))
        record = self.records[which]
        room = max(0, record.stop - record.start - self.dataset.clip_span)
        return self.window(which, record.start + int(rng.integers(room + 1)))

    def batch(self, indices: list[int]) -> ClipBatch:
        """The :class:`ClipBatch` of training samples ``indices``."""
        return stack_clips([self.clip(i) for i in indices])


def stack_clips(clips: list[tuple[np.ndarray, int, int]]) -> ClipBatch:
    """``(frames, label, n_frames)`` triples -> a :class:`ClipBatch` (videos converted to ``[-1, 1]``)."""
    from harness.data.decode import to_model_range

    frames, labels, lengths = zip(*clips)
    return ClipBatch(to_model_range(np.stack(frames)), torch.tensor(labels, dtype=torch.int64),
                     torch.tensor(lengths, dtype=torch.int64))


class TrainClipDataset(torch.utils.data.Dataset):
    """Map-style view of :class:`TrainClips` for ``DataLoader`` workers: item ``i`` is sample ``i``.

    Items are ``(float32 [3, T, H, W] in [-1, 1], label, n_frames)``; with ``model_range=False``
    ``(uint8 [T, H, W, 3], label, n_frames)``,
    a quarter of the bytes to move between processes, for converting after the transfer (``to_model_range``,
    e.g. on the GPU): with the clip store, the conversion in the worker costs more than reading the clip.
    """

    def __init__(self, clips: TrainClips, length: int, model_range: bool = True) -> None:
        self.clips, self.length, self.model_range = clips, length, model_range

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int):
        from harness.data.decode import to_model_range

        frames, label, length = self.clips.clip(index)
        return (to_model_range(frames) if self.model_range else torch.from_numpy(frames)), label, length
