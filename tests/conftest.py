"""Shared test fixtures: real videos (the installed samples, and ../shared when it is beside the clone)."""
from __future__ import annotations

import os
import socket
import subprocess
import sys

# 400x400 BLAS calls (FVD) crawl when OpenBLAS threads fight torch's on a small shared CPU
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
#: pytest-xdist (``make test``: ``-n 2``) runs one worker per core, so each worker and the runs it starts
#: (``python -m harness``, torchrun's processes) take one intra-op thread
XDIST_WORKER = "PYTEST_XDIST_WORKER" in os.environ
if XDIST_WORKER:
    os.environ["OMP_NUM_THREADS"] = "1"
from pathlib import Path

import numpy as np
import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("HARNESS_SHARED_DIR", REPO.parent / "shared"))

torch.set_num_threads(1 if XDIST_WORKER else min(2, torch.get_num_threads()))

#: the test files that take longest (``pytest --durations`` on a 2-core machine: some 4 minutes for the first
#: two, under one for the last), in that order; ``make test`` hands whole files to its two workers (``--dist loadfile --no-loadscope-reorder``) in
#: collection order, so these go first and the many short files fill in behind them
LONGEST_FILES = ("test_reproducibility.py", "test_paper_suite.py", "test_engine.py", "test_errors.py",
                 "test_coordtok.py", "test_clip_store.py", "test_stages.py", "test_videoflextok.py")


def pytest_collection_modifyitems(config, items) -> None:
    """Collect the longest files first (:data:`LONGEST_FILES`), every other file after them in its usual order."""
    rank = {name: k for k, name in enumerate(LONGEST_FILES)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now (for a torchrun rendezvous)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def run_cli(*args: str, env: dict | None = None, timeout: int = 900) -> subprocess.CompletedProcess:
    """``python -m harness ARGS`` as a subprocess in the repository (``env`` on top of this process's environment):
    for what only a process shows (exit codes, a plugin on ``PYTHONPATH``, a kill)."""
    return subprocess.run([sys.executable, "-m", "harness", *args], capture_output=True, text=True, cwd=REPO,
                          env={**os.environ, **(env or {})}, timeout=timeout)


def cli(capsys, *args: str) -> tuple[int, str, str]:
    """``python -m harness ARGS`` run in this process (no interpreter start-up): exit code, stdout, stderr."""
    from harness.__main__ import main

    capsys.readouterr()  # drop what earlier steps of the test printed
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def real_clips(paths: list[Path], starts: tuple[int, ...], frames: int, resolution: int) -> torch.Tensor:
    """Clips of the real videos at ``paths``, every start of every video in that order, as
    ``float32 [len(paths) x len(starts), 3, frames, resolution, resolution]`` in ``[-1, 1]``."""
    from harness.data.decode import decode_frames, to_model_range

    return to_model_range(np.stack([decode_frames(p, start=s, num_frames=frames, resolution=resolution)
                                    for p in paths for s in starts]))


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
