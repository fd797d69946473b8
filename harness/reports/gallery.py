"""Reconstruction gallery: original | reconstruction side by side as animated GIFs.

For every leaderboard row the best, median and worst evaluation clip by
per-video PSNR are shown; the real clip comes from the suite's
``eval_clips.json`` (cached ``uint8 [T, H, W, 3]`` file, or decoded again from
the source video when the cache is gone), the reconstruction from
``<row folder>/recon/<clip>.npy``.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from harness_core.errors import HarnessError
from harness_core.io import gif_bytes as _gif_bytes
from harness_core.io import write_bytes_atomic
from harness.records import EVAL_CLIPS_FILE
from harness.reports.data import ReportData

#: GIFs are upscaled (nearest neighbour) so each half is at least this many pixels tall
MIN_DISPLAY_PX = 128
#: longer clips are subsampled in time to at most this many GIF frames ...
MAX_GIF_FRAMES = 64
#: ... and to at most this many displayed pixels per GIF (keeps report.html small), but never below 16 frames
MAX_GIF_PIXELS = 2**20
GIF_FPS = 8


@dataclass
class GalleryItem:
    """One GIF of the gallery."""

    row: str
    rank: str  # "best", "median" or "worst" by PSNR
    clip: str
    psnr: float
    path: Path


def pick_clips(table: pd.DataFrame, metric: str = "psnr") -> dict[str, tuple[str, float]]:
    """``{"best"|"median"|"worst": (clip id, value)}`` by ``metric`` (larger is better).

    The median is the lower median of the sorted values (an actual clip).

    Raises:
        KeyError: when the table has no ``metric`` column.
    """
    if metric not in table:
        raise KeyError(f"per_video.csv has no {metric!r} column (has {list(table.columns)})")
    ordered = table.dropna(subset=[metric]).sort_values(metric, ascending=False, kind="stable").reset_index(drop=True)
    if ordered.empty:
        return {}
    picks = {"best": 0, "median": (len(ordered) - 1) // 2, "worst": len(ordered) - 1}
    return {rank: (str(ordered.loc[i, "clip"]), float(ordered.loc[i, metric])) for rank, i in picks.items()}


def load_real_clip(entry: dict[str, Any]) -> np.ndarray:
    """The real clip of an ``eval_clips.json`` entry, ``uint8 [T, H, W, 3]`` (cache, else decoded again)."""
    cached = entry.get("cached")  # null when the run read its clips from the clip store
    if cached and Path(cached).is_file():
        return np.load(cached)
    from harness.data.decode import decode_frames

    return decode_frames(entry["video"], entry["start"], entry["frames"], entry["stride"], entry["resolution"])


def side_by_side(real: np.ndarray, recon: np.ndarray, gap: int = 4) -> np.ndarray:
    """``uint8 [T', H', 2W' + gap', 3]`` frames: real left, reconstruction right, white gap.

    Both inputs are ``uint8 [T, H, W, 3]`` of the same shape; frames are
    upscaled by an integer factor to at least :data:`MIN_DISPLAY_PX` rows and
    subsampled in time to at most :data:`MAX_GIF_FRAMES` frames and
    :data:`MAX_GIF_PIXELS` displayed pixels (never below 16 frames).

    Raises:
        ValueError: when the shapes differ.
    """
    if real.shape != recon.shape or real.ndim != 4 or real.shape[-1] != 3:
        raise ValueError(f"real and reconstruction must both be uint8 [T, H, W, 3] of one shape, got {real.shape} and {recon.shape}")
    scale = max(1, int(np.ceil(MIN_DISPLAY_PX / real.shape[1])))
    frame_px = (real.shape[1] * scale) * ((2 * real.shape[2] + gap) * scale)
    limit = min(MAX_GIF_FRAMES, max(16, MAX_GIF_PIXELS // frame_px))
    step = max(1, int(np.ceil(real.shape[0] / limit)))
    real, recon = real[::step], recon[::step]
    t, h, w, _ = real.shape
    spacer = np.full((t, h, gap, 3), 255, dtype=np.uint8)
    frames = np.concatenate([real, spacer, recon], axis=2)
    return frames.repeat(scale, axis=1).repeat(scale, axis=2)


def gif_bytes(frames: np.ndarray, fps: int = GIF_FPS) -> bytes:
    """Encode ``uint8 [T, H, W, 3]`` as a looping animated GIF (:func:`harness_core.io.gif_bytes`)."""
    return _gif_bytes(frames, fps)


def write_gallery(data: ReportData, out_dir: Path | None = None) -> tuple[list[GalleryItem], list[str]]:
    """Write ``<results>/gallery/<row>_<rank>.gif`` for every row; returns ``(items, notes)``.

    ``notes`` say why a row has no GIFs (no ``eval_clips.json``, no per-video
    PSNR, reconstructions not kept).
    """
    results = data.results
    out_dir = out_dir or results / "gallery"
    index_path = results / EVAL_CLIPS_FILE
    notes: list[str] = []
    if not index_path.is_file():
        return [], [f"no eval_clips.json in {results}: gallery skipped"]
    clips = {entry["clip"]: entry for entry in json.loads(index_path.read_text())}
    items: list[GalleryItem] = []
    real_cache: dict[str, np.ndarray] = {}
    for record in data.records:
        folder = record.run_folder
        table = data.per_video(record)
        if table is None:
            notes.append(f"{record.row}: no per_video.csv")
            continue
        if "psnr" not in table:
            notes.append(f"{record.row}: no per-video PSNR (add psnr to evaluate.metrics)")
            continue
        for rank, (clip, psnr) in pick_clips(table).items():
            recon_path = folder.recon / f"{clip}.npy"
            if not recon_path.is_file():
                notes.append(f"{record.row}: reconstruction {clip} not kept (evaluate.keep_reconstructions: false)")
                break
            if clip not in clips:
                notes.append(f"{record.row}: clip {clip} not in eval_clips.json")
                continue
            path = out_dir / f"{record.row.replace('@', '_at_')}_{rank}.gif"
            try:
                if clip not in real_cache:
                    real_cache[clip] = load_real_clip(clips[clip])
                write_bytes_atomic(path, gif_bytes(side_by_side(real_cache[clip], np.load(recon_path))))
            except (OSError, ValueError, HarnessError) as err:  # a moved or unreadable video or reconstruction
                notes.append(f"{record.row}: no GIF of {clip}: {type(err).__name__}: {err}")
                continue
            items.append(GalleryItem(record.row, rank, clip, psnr, path))
    return items, notes
