"""The clip store: every video of a dataset decoded once into a memory-mapped ``uint8`` file.

Decoding and resizing is the cost of the data pipeline (UCF-101's 320x240 ->
128x128: about 110-160 frames/s per core), and ``data.memory_cache`` would keep
every decoded training range in each process's memory. The store decodes each
video source of a dataset (training and evaluation records) once, with the
harness's one decode and resize (:func:`harness.data.decode.decode_frames` with
``resolution`` and ``data.resize``, i.e. :func:`harness.data.decode.resize_center_crop`), and keeps
it on disk; clips are then slices of a ``numpy.load(mmap_mode="r")`` array, so
a clip read from the store equals the clip decoded on the fly, byte for byte,
and every process of a node shares one copy of the frames through the page cache.

Layout (``<cache>`` is :func:`harness_core.io.cache_root`)::

    <cache>/clip_store/r<resolution>_<key>/
        manifest.json          {"protocol": {...}, "entries": {"<name>.npy": {...}}}
        <name>.npy             uint8 [T, R, R, 3]: frames 0..T-1 of one video at stride 1

* ``<key>``: sha256 of the resolution and the resize method
  (:data:`harness.data.decode.RESIZE_METHODS`): one store per
  frame protocol, shared by every dataset and every subset of one
  (``max_train_videos`` runs reuse the entries a full run decoded, and back);
* ``<name>``: sha256 of ``<source stamp>|<resolution>``
  (:func:`harness.data.decode.source_stamp`: path, size, mtime), so a video
  that changes gets a new entry, and adding or removing videos leaves the
  other entries in use;
* ``T``: the frames the dataset's records use (the largest ``stop``: every frame
  of the video for every dataset of the harness);
* each manifest entry: ``source`` (path), ``stamp``, ``frames`` (T), ``shape``
  ``[T, R, R, 3]``, ``bytes`` (file size) and ``crc32`` (:func:`zlib.crc32` over
  all bytes of the ``.npy`` file, header included).

Building (:meth:`ClipStore.build`, :func:`prepare_store`) decodes the missing
entries in a process pool. Each entry is streamed to a temporary file and
moved into place (:func:`harness_core.io.write_atomic`), and the manifest is
rewritten atomically every :data:`MANIFEST_EVERY` seconds and at the end, so a
killed build leaves only complete entries and temporary files. A rerun
resumes: temporary files are removed, entries recorded in the manifest whose
file has the recorded size are reused, ``verify=True`` also compares checksums,
and a missing, truncated or corrupt entry is rebuilt (logged with the reason).
An entry file without a manifest record (the build was killed after writing it
and before the next manifest write) is rebuilt too, since nothing records what
it should hold. A lock file (``flock``) serializes builders of one store.

Processes: one process of each node builds (its local main process, into the
node's cache folder, before the others use the store); the others open it with
:func:`open_store` after a barrier and only read. ``data.store`` chooses
whether the store is used at all (:func:`store_active`).
"""
from __future__ import annotations

import fcntl
import hashlib
import io
import json
import logging
import os
import time
import zlib
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from itertools import chain
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from tqdm import tqdm

from harness.data.datasets import DataError, VideoDataset, VideoRecord
from harness.data.decode import RESIZE_METHODS, VideoDecodeError, decode_frames, source_stamp
from harness_core.io import write_atomic, write_json_atomic

if TYPE_CHECKING:
    from harness.config import DataConfig

log = logging.getLogger(__name__)

#: what ``crc32`` in the manifest is
CHECKSUM = "zlib.crc32 over the .npy file bytes"
#: seconds between manifest writes during a build (also written at its end)
MANIFEST_EVERY = 30.0
#: source-resolution bytes decoded at once while building an entry (bounds a worker's memory)
CHUNK_BYTES = 256 * 2**20
MANIFEST = "manifest.json"
NOT_BUILT = "not built yet"


def store_active(cfg: "DataConfig") -> bool:
    """Whether ``data.store`` asks for the store: ``on`` (or ``true``); ``auto`` when ``memory_cache`` is false; never
    for ``off`` (or ``false``)."""
    return cfg.store in ("on", True) or (cfg.store == "auto" and not cfg.memory_cache)


@dataclass
class BuildReport:
    """What :meth:`ClipStore.build` did: counts of entries and the rebuilt ones with their reason."""

    reused: int = 0
    built: int = 0
    rebuilt: list[tuple[str, str]] = field(default_factory=list)  # (entry file, reason)
    temp_removed: int = 0


def _file_crc32(path: Path) -> int:
    crc = 0
    with open(path, "rb") as handle:
        while block := handle.read(16 * 2**20):
            crc = zlib.crc32(block, crc)
    return crc


def _build_entry(source: str, target: str, frames: int, resolution: int, resize: str) -> dict[str, Any]:
    """Decode frames ``0..frames-1`` of ``source`` at ``resolution`` (resize method ``resize``) into ``target``
    (``uint8 [frames, R, R, 3]`` ``.npy``).

    Runs in a pool worker; decodes ``CHUNK_BYTES`` of source frames at a time (the resize works frame by frame,
    so chunks give the same bytes as one call). Returns the entry's manifest record.

    Raises:
        VideoDecodeError: the source cannot be decoded or has fewer than ``frames`` frames.
    """
    chunk = max(1, CHUNK_BYTES // decode_frames(source, 0, 1)[0].nbytes)
    shape = (frames, resolution, resolution, 3)
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "|u1", "fortran_order": False, "shape": shape})
    crc = 0

    def write(handle) -> None:
        nonlocal crc
        chunks = (decode_frames(source, s, min(chunk, frames - s), 1, resolution, resize) for s in range(0, frames, chunk))
        for part in chain([header.getvalue()], chunks):  # one chunk in memory at a time
            data = memoryview(part).cast("B")
            crc = zlib.crc32(data, crc)
            handle.write(data)

    write_atomic(target, write)
    return {"source": source, "frames": frames, "shape": list(shape), "bytes": Path(target).stat().st_size, "crc32": crc}


class ClipStore:
    """The clip store of one dataset at its ``data.resolution`` (see module docstring).

    Args:
        dataset: its ``train`` and ``eval`` records name the videos; ``cache_dir`` holds the store.

    Raises:
        DataError: a video file disappeared since the dataset listed it (VideoDecodeError for a frame folder).
    """

    def __init__(self, dataset: VideoDataset) -> None:
        self.resolution = dataset.cfg.resolution
        self.resize = dataset.cfg.resize
        self.workers = dataset.cfg.num_workers or os.cpu_count() or 1
        frames: dict[Path, int] = {}
        for record in [*dataset.train, *dataset.eval]:
            frames[record.path] = max(frames.get(record.path, 0), record.stop)
        try:
            stamps = {path: source_stamp(path) for path in frames}
        except FileNotFoundError as err:
            raise DataError(f"video {err.filename} disappeared since the dataset listed it") from err
        key = json.dumps([self.resolution, RESIZE_METHODS[self.resize]])
        self.root = dataset.cache_dir / "clip_store" / f"r{self.resolution}_{hashlib.sha256(key.encode()).hexdigest()[:16]}"
        #: video path -> (entry file name, frames, source stamp)
        self.entries = {path: (hashlib.sha256(f"{stamps[path]}|{self.resolution}".encode()).hexdigest()[:24] + ".npy",
                               count, stamps[path]) for path, count in frames.items()}

    @property
    def manifest_path(self) -> Path:
        return self.root / MANIFEST

    def protocol(self) -> dict[str, Any]:
        """How clips were supplied, for results: ``{method, resolution, resize, checksum, store}``."""
        return {"method": "clip store: one memory-mapped uint8 .npy per video, decoded once", "resolution": self.resolution,
                "resize": RESIZE_METHODS[self.resize], "checksum": CHECKSUM, "store": self.root.name}

    def _load_manifest(self) -> dict[str, dict[str, Any]]:
        if not self.manifest_path.is_file():
            return {}
        try:
            return json.loads(self.manifest_path.read_text())["entries"]
        except (ValueError, KeyError, TypeError) as err:
            log.warning("clip store: unreadable manifest %s (%s); every entry is rebuilt", self.manifest_path, err)
            return {}

    def _save_manifest(self, entries: dict[str, dict[str, Any]]) -> None:
        write_json_atomic(self.manifest_path, {"protocol": self.protocol(), "entries": entries})

    def _problem(self, name: str, frames: int, record: dict[str, Any] | None, verify: bool) -> str | None:
        """Why entry ``name`` cannot be reused (``None`` when it can)."""
        path = self.root / name
        if record is None:
            return "file without a manifest record (build stopped before recording it)" if path.exists() else NOT_BUILT
        if record.get("frames") != frames:
            return f"{record.get('frames')} frames recorded, {frames} needed"
        if not path.is_file():
            return "file missing"
        size = path.stat().st_size
        if size != record["bytes"]:
            return f"{size} bytes, {record['bytes']} recorded (truncated or overwritten)"
        if verify and _file_crc32(path) != record["crc32"]:
            return "checksum mismatch (corrupt)"
        return None

    def build(self, workers: int | None = None, verify: bool = False, progress: bool = True) -> BuildReport:
        """Decode every missing or damaged entry (resuming a stopped build); call from one process only.

        Args:
            workers: pool processes (default ``data.num_workers``, else ``os.cpu_count()``).
            verify: also compare each reused entry's checksum (reads the whole store); without it, sizes are compared.
            progress: show a tqdm bar.

        Returns:
            a :class:`BuildReport` (reused, built, rebuilt with reasons, temporary files removed).

        Raises:
            DataError: a video cannot be decoded (message names the video and the store).
        """
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.root / ".lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            return self._build(workers or self.workers, verify, progress)

    def _build(self, workers: int, verify: bool, progress: bool) -> BuildReport:
        report = BuildReport()
        for temp in self.root.glob(".*.tmp"):  # left by a killed build: this process is the only builder
            temp.unlink()
            report.temp_removed += 1
        recorded = self._load_manifest()
        entries, todo = dict(recorded), []  # entries of other datasets (or subsets) sharing the store stay recorded
        for path, (name, frames, stamp) in self.entries.items():
            problem = self._problem(name, frames, recorded.get(name), verify)
            if problem is None:
                report.reused += 1
                continue
            entries.pop(name, None)
            if problem != NOT_BUILT:
                log.warning("clip store: rebuilding %s (%s): %s", self.root / name, path, problem)
                report.rebuilt.append((name, problem))
            todo.append((path, name, frames, stamp))
        if report.temp_removed:
            log.info("clip store %s: removed %d temporary file(s) of a stopped build", self.root, report.temp_removed)
        log.info("clip store %s: %d entries reused, %d to decode with %d worker(s)", self.root, report.reused, len(todo), workers)
        last_save = time.monotonic()
        pool = ProcessPoolExecutor(max_workers=workers, initializer=torch.set_num_threads, initargs=(1,))  # a core each
        try:
            futures = {pool.submit(_build_entry, str(path), str(self.root / name), frames, self.resolution, self.resize): (path, name, stamp)
                       for path, name, frames, stamp in todo}
            for future in tqdm(as_completed(futures), total=len(futures), desc="clip store", unit="video", disable=not progress):
                path, name, stamp = futures[future]
                try:
                    entries[name] = {**future.result(), "stamp": stamp}
                except VideoDecodeError as err:
                    raise DataError(f"clip store {self.root}: cannot decode {path}: {err}") from err
                report.built += 1
                if time.monotonic() - last_save >= MANIFEST_EVERY:
                    self._save_manifest(entries)
                    last_save = time.monotonic()
        finally:  # on an error, finish the running entries only, and record what is complete
            pool.shutdown(cancel_futures=True)
            self._save_manifest(entries)
        return report

    def check(self) -> "ClipStore":
        """Raise :class:`DataError` unless every entry is recorded in the manifest with a file of the recorded size.

        For processes that read a store another process built. Returns ``self``.
        """
        recorded = self._load_manifest()
        missing = [(path, problem) for path, (name, frames, _) in self.entries.items()
                   if (problem := self._problem(name, frames, recorded.get(name), verify=False)) is not None]
        if missing:
            path, problem = missing[0]
            raise DataError(f"clip store {self.root} is incomplete: {len(missing)} of {len(self.entries)} videos not usable "
                            f"(e.g. {path}: {problem}); build it first on one process (harness.data.store.prepare_store)")
        return self

    def frames(self, record: VideoRecord, start: int, num: int, stride: int = 1) -> np.ndarray:
        """Frames ``start, start + stride, ...`` (``num`` of them) of ``record``'s video, like
        ``decode_frames(record.path, start, num, stride, resolution, resize)``.

        Returns:
            ``uint8 [num, R, R, 3]`` (a copy; the memory map is closed).

        Raises:
            DataError: the video is not in this store, the range passes its end, or the entry file is unreadable.
        """
        if record.path not in self.entries:
            raise DataError(f"video {record.path} is not in the clip store {self.root} (a store of another dataset?)")
        name, frames, _ = self.entries[record.path]
        stop = start + (num - 1) * stride + 1
        if start < 0 or num < 1 or stop > frames:
            raise DataError(f"frames {start}..{stop - 1} (stride {stride}) of {record.path} are outside the {frames} frames of "
                            f"clip store entry {self.root / name}")
        try:
            array = np.load(self.root / name, mmap_mode="r")
        except (OSError, ValueError) as err:
            raise DataError(f"clip store entry {self.root / name} ({record.path}) is unreadable: {err}; "
                            f"rebuild the store") from err
        if array.shape != (frames, self.resolution, self.resolution, 3) or array.dtype != np.uint8:
            raise DataError(f"clip store entry {self.root / name} ({record.path}) holds {array.dtype} {array.shape}, "
                            f"expected uint8 {(frames, self.resolution, self.resolution, 3)}; rebuild the store")
        return np.array(array[start:stop:stride])


def prepare_store(dataset: VideoDataset, workers: int | None = None, verify: bool = False,
                  progress: bool = True) -> ClipStore | None:
    """Build (or resume) the dataset's store when ``data.store`` asks for it; ``None`` when it does not.

    Call on one process (the main one) before the others call :func:`open_store`; arguments as :meth:`ClipStore.build`.

    Raises:
        DataError: a video cannot be decoded.
    """
    if not store_active(dataset.cfg):
        return None
    store = ClipStore(dataset)
    report = store.build(workers, verify, progress)
    log.info("clip store %s: %d reused, %d decoded (%d rebuilt)", store.root, report.reused, report.built, len(report.rebuilt))
    return store


def open_store(dataset: VideoDataset) -> ClipStore | None:
    """The dataset's store as built by :func:`prepare_store` (checked complete), or ``None`` when ``data.store`` is off.

    Raises:
        DataError: the store is not (completely) built.
    """
    return ClipStore(dataset).check() if store_active(dataset.cfg) else None
