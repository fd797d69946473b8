"""Benchmark of the training-clip supply: on-the-fly decoding against the clip store (harness.data.store).

For one set of videos and one clip protocol (``--resolution``, ``--frames``,
stride 1, the suite's seeded draws of :class:`harness.data.sampling.TrainClips`)
it builds the clip store in a fresh cache folder and prints

* the clip length used: ``--frames`` when every video holds such a clip, else
  the longest clip all videos hold (a ``ucf101``/``folder`` video holds a clip
  as long as itself / half of itself: time-split datasets keep the tail for
  evaluation);
* the store build: videos, frames, size on disk, seconds, frames/s;
* frames per second supplied by decoding (store off) and by the store, with the
  same clips (checked byte-equal): ``TrainClips.clip`` in this process, then a
  ``torch.utils.data.DataLoader`` with 1 and ``--workers`` workers over
  ``TrainClipDataset`` with ``uint8`` items (``model_range=False``) and with
  ``float32`` items in ``[-1, 1]`` (``model_range=True``: the conversion runs in the worker and the
  loader moves 4x the bytes; training's loader takes ``uint8`` items and converts on the device); the ratio
  store/decode for the same workers, and the supply rate per worker (frames/s
  divided by workers);
* for the paper batch (256 clips x 128 frames a step) at ``--steps-per-second``:
  the frames/s a node must supply and the data-loader workers (one core each)
  that decoding and the store need, from the per-worker rates of the
  ``--workers`` runs (``uint8`` clips, converted on the GPU; and ``float32``).
  Assumptions, printed too: rates scale linearly with workers up to the node's
  cores, the node's cores are as fast as this machine's, per-frame rates do not
  depend on the clip length, and the store is read from the page cache (a node
  whose memory holds it; cold reads are bounded by the disk instead).

DataLoader runs time from the ``workers``-th clip received to the last, so
worker start-up is not counted; the store runs use ``--store-clips`` clips
(default 8 x ``--clips``) since each is much faster.

Usage::

    OMP_NUM_THREADS=1 python scripts/bench_data.py [--root /data/UCF-101 --dataset ucf101] [--resolution 128]
        [--frames 128] [--workers 2] [--clips 8] [--store-clips 64] [--steps-per-second 2] [--cache DIR]

Without ``--root`` it runs on the installed sample videos (``samples``); with
``--root`` the dataset is ``ucf101`` when the folder holds ``ucfTrainTestlist/``,
else ``folder``. The store is built in ``--cache`` (default: a temporary
folder, removed at the end).
"""
from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from harness.config import DataConfig  # noqa: E402
from harness.data.datasets import TimeSplitDataset, VideoDataset, build_dataset  # noqa: E402
from harness.data.sampling import TrainClipDataset, TrainClips  # noqa: E402
from harness.data.store import ClipStore  # noqa: E402

PAPER_BATCH, PAPER_FRAMES = 256, 128  # CoordTok's UCF-101 batch: 256 clips of 128 frames a step


def clip_length(cfg: DataConfig, requested: int) -> tuple[int, str]:
    """The clip length to benchmark and why: ``requested`` when every video holds it, else the longest all hold."""
    dataset = build_dataset(cfg.model_copy(update={"frames": 1}))
    counts = {}
    for record in [*dataset.train, *dataset.eval]:
        counts[record.path] = max(counts.get(record.path, 0), record.stop)
    shortest = min(counts.values())
    holds = shortest // (cfg.eval_clips_per_video + 1) if isinstance(dataset, TimeSplitDataset) else shortest
    if holds >= requested:
        return requested, f"{requested} frames (every video holds one; shortest video {shortest} frames)"
    return holds, (f"{holds} frames: the longest clip all {len(counts)} videos hold (requested {requested}; "
                   f"shortest video {shortest} frames{', half of it is the evaluation tail' if holds < shortest else ''})")


def supply_rate(clips: TrainClips, indices: list[int], workers: int, uint8: bool) -> float:
    """Frames per second from a DataLoader with ``workers`` workers, timed from the ``workers``-th clip received."""
    dataset = TrainClipDataset(clips, max(indices) + 1, model_range=not uint8)
    loader = torch.utils.data.DataLoader(dataset, batch_size=1, sampler=indices, num_workers=workers)
    start = None
    for received, _ in enumerate(loader, 1):
        if received == workers:
            start = time.perf_counter()
    return (len(indices) - workers) * clips.cfg.frames / (time.perf_counter() - start)


def in_process_rate(clips: TrainClips, indices: list[int]) -> float:
    start = time.perf_counter()
    for index in indices:
        clips.clip(index)
    return len(indices) * clips.cfg.frames / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--root", help="a folder of videos (UCF-101 layout or any); default: the installed sample videos")
    parser.add_argument("--dataset", help="data.dataset (default: ucf101 when --root holds ucfTrainTestlist/, folder otherwise)")
    parser.add_argument("--resolution", type=int, default=128)
    parser.add_argument("--frames", type=int, default=128)
    parser.add_argument("--workers", type=int, default=os.cpu_count())
    parser.add_argument("--clips", type=int, default=8, help="clips decoded on the fly per run")
    parser.add_argument("--store-clips", type=int, help="clips read from the store per run (default 8 x --clips)")
    parser.add_argument("--steps-per-second", type=float, default=2.0, help="training speed for the node sizing")
    parser.add_argument("--cache", help="cache folder for the store (default: a temporary folder)")
    args = parser.parse_args()
    torch.set_num_threads(1)

    root = Path(args.root) if args.root else None
    dataset_name = args.dataset or ("samples" if root is None else "ucf101" if (root / "ucfTrainTestlist").is_dir() else "folder")
    with tempfile.TemporaryDirectory(prefix="bench_data_") as temp:
        cfg = DataConfig(dataset=dataset_name, root=str(root) if root else None, resolution=args.resolution, frames=args.frames,
                         memory_cache=False, store="on", num_workers=args.workers, cache_dir=args.cache or temp)
        frames, why = clip_length(cfg, args.frames)
        cfg = cfg.model_copy(update={"frames": frames})
        dataset: VideoDataset = build_dataset(cfg)
        print(f"videos: {dataset_name} at {root or 'the installed sample videos'}: {len(dataset.train)} training, "
              f"{len(dataset.eval)} evaluation record(s)")
        print(f"clip: {why}, {args.resolution}x{args.resolution}, stride 1")

        store = ClipStore(dataset)
        start = time.perf_counter()
        report = store.build(workers=args.workers, progress=False)
        seconds = time.perf_counter() - start
        stored = sum(count for _, count, _ in store.entries.values())
        size = sum((store.root / name).stat().st_size for name, _, _ in store.entries.values())
        print(f"store build: {len(store.entries)} videos, {stored} frames, {size / 2**20:.1f} MiB "
              f"({args.resolution * args.resolution * 3} bytes a frame), {seconds:.1f} s with {args.workers} worker(s) "
              f"({report.built} decoded, {report.reused} reused): {stored / seconds:.0f} frames/s")

        decoded, from_store = TrainClips(dataset, seed=0), TrainClips(dataset, seed=0, store=store)
        indices = list(range(args.clips))
        store_indices = list(range(args.store_clips or 8 * args.clips))
        for index in indices[:4]:
            if not np.array_equal(decoded.clip(index)[0], from_store.clip(index)[0]):
                sys.exit(f"clip {index} read from the store differs from the decoded clip")
        print("store clips equal decoded clips: yes (first 4 clips compared byte for byte)")

        rows = [("in this process, uint8", 1, in_process_rate(decoded, indices), in_process_rate(from_store, store_indices))]
        for uint8 in (True, False):
            for workers in sorted({1, args.workers}):
                rows.append((f"DataLoader, {workers} worker(s), {'uint8' if uint8 else 'float32'}", workers,
                             supply_rate(decoded, indices, workers, uint8),
                             supply_rate(from_store, store_indices, workers, uint8)))
        print(f"\n{'supply':<34} {'decode f/s':>11} {'store f/s':>11} {'store/decode':>13} "
              f"{'decode f/s/worker':>18} {'store f/s/worker':>17}")
        for name, workers, decode_rate, store_rate in rows:
            print(f"{name:<34} {decode_rate:>11.0f} {store_rate:>11.0f} {store_rate / decode_rate:>12.1f}x "
                  f"{decode_rate / workers:>18.0f} {store_rate / workers:>17.0f}")

        need = PAPER_BATCH * PAPER_FRAMES * args.steps_per_second
        print(f"\npaper batch ({PAPER_BATCH} clips x {PAPER_FRAMES} frames a step) at {args.steps_per_second:g} steps/s: "
              f"{need:.0f} frames/s per node; data-loader workers (cores) it needs:")
        for name, workers, decode_rate, store_rate in rows:
            if name.startswith("DataLoader") and workers == args.workers:
                print(f"  {name.split(', ')[-1]:>7} clips: decoding {math.ceil(need * workers / decode_rate)}, "
                      f"store {math.ceil(need * workers / store_rate)}")
        print(f"  assumptions: the per-worker rates of the DataLoader runs with {args.workers} worker(s) above, linear in "
              f"workers; cores as fast as this machine's; per-frame rates independent of the clip length; store in the "
              f"page cache; uint8 clips converted to float on the GPU")


if __name__ == "__main__":
    main()
