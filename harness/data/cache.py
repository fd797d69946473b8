"""Atomic writes and the user cache folder.

Every result file is written to a temporary file in the same folder and then
moved into place with ``os.replace``, so an interrupted run never leaves a
half-written file behind.
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch


def cache_root(configured: str | None = None) -> Path:
    """The cache folder: ``configured``, else ``$HARNESS_CACHE``, else ``~/.cache/video-tokenizer-harness``."""
    root = configured or os.environ.get("HARNESS_CACHE") or Path.home() / ".cache" / "video-tokenizer-harness"
    path = Path(root).expanduser()
    path.mkdir(parents=True, exist_ok=True)
    return path


def _atomic(path: Path, write) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_bytes_atomic(path: Path, data: bytes) -> None:
    _atomic(path, lambda h: h.write(data))


def write_text_atomic(path: Path, text: str) -> None:
    write_bytes_atomic(path, text.encode())


def write_json_atomic(path: Path, payload: Any) -> None:
    write_text_atomic(path, json.dumps(payload, indent=2, sort_keys=True, default=_json_default) + "\n")


def save_numpy_atomic(path: Path, array: np.ndarray) -> None:
    _atomic(path, lambda h: np.save(h, array))


def torch_save_atomic(path: Path, obj: Any) -> None:
    _atomic(path, lambda h: torch.save(obj, h))


def _json_default(value: Any) -> Any:
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, (tuple, set)):
        return list(value)
    if isinstance(value, torch.Tensor):
        return value.tolist()
    raise TypeError(f"not JSON serializable: {type(value).__name__}")
