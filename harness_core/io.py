"""Atomic writes and the user cache folder: the harness's one place for both.

Every result and cache file is written to a temporary file in the same folder
and then moved into place with ``os.replace``, so an interrupted run never
leaves a half-written file behind (a reader sees the old file or the new one).
:func:`write_atomic` is the one implementation; the other writers give it the
encoding of their format (JSON, numpy, torch, CSV, text, bytes, PNG, GIF).

The user cache folder (:func:`cache_root`) holds decoded evaluation clips,
frame counts, real-video FVD statistics and the converted I3D weights. It is,
first found: the suite's ``data.cache_dir``; ``$HARNESS_CACHE``;
``$HARNESS_CACHE_DIR`` (older name, still honoured); ``$XDG_CACHE_HOME/video-tokenizer-harness``;
``~/.cache/video-tokenizer-harness``.
"""
from __future__ import annotations

import io
import json
import os
import tempfile
from pathlib import Path
from typing import IO, Any, Callable

import numpy as np
import torch

CACHE_ENV = "HARNESS_CACHE"
CACHE_ENV_ALIAS = "HARNESS_CACHE_DIR"  # older name read by the I3D weights cache; kept as a fallback


def cache_root(configured: str | Path | None = None, create: bool = True) -> Path:
    """The user cache folder (``~`` expanded), created unless ``create`` is false.

    Args:
        configured: a folder chosen by the caller (the suite's ``data.cache_dir``); wins over the environment.
        create: make the folder (and its parents) when it is missing.
    """
    root = configured or os.environ.get(CACHE_ENV) or os.environ.get(CACHE_ENV_ALIAS)
    if not root:
        root = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "video-tokenizer-harness"
    path = Path(root).expanduser()
    if create:
        path.mkdir(parents=True, exist_ok=True)
    return path


def write_atomic(path: str | Path, write: Callable[[IO[bytes]], Any]) -> Path:
    """Call ``write(handle)`` on a temporary binary file beside ``path``, then move it to ``path``.

    The parent folder is created; on any error the temporary file is removed and
    ``path`` is left as it was.
    """
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
    return path


def write_bytes_atomic(path: str | Path, data: bytes) -> Path:
    return write_atomic(path, lambda h: h.write(data))


def write_text_atomic(path: str | Path, text: str) -> Path:
    return write_bytes_atomic(path, text.encode())


def write_json_atomic(path: str | Path, payload: Any) -> Path:
    """Indented, key-sorted JSON; numpy scalars, paths, tuples/sets and tensors become plain JSON."""
    return write_text_atomic(path, json.dumps(payload, indent=2, sort_keys=True, default=_json_default) + "\n")


def save_numpy_atomic(path: str | Path, array: np.ndarray) -> Path:
    return write_atomic(path, lambda h: np.save(h, array))


def torch_save_atomic(path: str | Path, obj: Any) -> Path:
    return write_atomic(path, lambda h: torch.save(obj, h))


def write_csv_atomic(path: str | Path, dataframe) -> Path:
    """A pandas DataFrame as CSV without its index (``dataframe.to_csv(index=False)``)."""
    return write_text_atomic(path, dataframe.to_csv(index=False))


def write_png_atomic(path: str | Path, image: bytes | Callable[[IO[bytes]], Any]) -> Path:
    """A PNG given as bytes or as a callback writing it to a binary handle.

    For a matplotlib figure: ``write_png_atomic(path, lambda h: fig.savefig(h, format="png"))``.
    """
    if isinstance(image, (bytes, bytearray)):
        return write_bytes_atomic(path, bytes(image))
    return write_atomic(path, image)


def gif_bytes(frames: np.ndarray, fps: int) -> bytes:
    """Encode ``uint8 [T, H, W, 3]`` frames as a looping animated GIF (imageio/Pillow)."""
    import imageio.v2 as imageio

    buffer = io.BytesIO()
    imageio.mimsave(buffer, list(frames), format="GIF", duration=1000 / fps, loop=0)
    return buffer.getvalue()


def write_gif_atomic(path: str | Path, frames: np.ndarray, fps: int) -> Path:
    """``uint8 [T, H, W, 3]`` frames as a looping animated GIF at ``fps`` frames per second."""
    return write_bytes_atomic(path, gif_bytes(frames, fps))


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
