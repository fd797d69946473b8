"""Shared test fixtures: real videos (the installed samples, and ../shared when it is beside the clone)."""
from __future__ import annotations

import os
import socket

# 400x400 BLAS calls (FVD) crawl when OpenBLAS threads fight torch's on a small shared CPU
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
from pathlib import Path

import numpy as np
import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("HARNESS_SHARED_DIR", REPO.parent / "shared"))

torch.set_num_threads(min(2, torch.get_num_threads()))


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now (for a torchrun rendezvous)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def shared_path(*parts: str) -> Path:
    """A path under ../shared, or skip the test with the reason when it is absent."""
    path = SHARED.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"{path} not found: ../shared (real test data and reference fixtures) sits beside the clone only on CI and dev machines")
    return path


@pytest.fixture(scope="session")
def sample_paths() -> list[Path]:
    from harness.data.samples import sample_video_paths

    return sample_video_paths()


@pytest.fixture(scope="session")
def sample_clips(sample_paths) -> np.ndarray:
    """Three real 16-frame 64x64 clips, ``uint8 [3, 16, 64, 64, 3]`` (one per sample video)."""
    from harness.data.decode import decode_frames

    return np.stack([decode_frames(p, start=8, num_frames=16, resolution=64) for p in sample_paths])


@pytest.fixture(scope="session")
def sample_videos(sample_clips) -> torch.Tensor:
    """The same clips as ``float32 [3, 3, 16, 64, 64]`` in ``[-1, 1]``."""
    from harness.data.decode import to_model_range

    return to_model_range(sample_clips)


def corrupt_weights_file(kind: str, folder: Path, name: str, source: Path | None = None,
                         wrong_layout: object = None) -> Path:
    """``folder/name``: a weights file that a loader must refuse.

    ``random`` bytes, ``text``, a pickle of ``wrong_layout``, or the first half (``truncated``) of ``source``.
    """
    path = folder / name
    if kind == "random":
        path.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    elif kind == "text":
        path.write_text("these are not the weights you are looking for\n")
    elif kind == "wrong_pickle":
        import pickle

        path.write_bytes(pickle.dumps(wrong_layout))
    elif kind == "truncated":
        data = Path(source).read_bytes()
        path.write_bytes(data[: len(data) // 2])
    else:
        raise AssertionError(kind)
    return path
