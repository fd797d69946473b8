"""The seeding scheme: every random draw of a suite derives from the suite seed (issue 9 item 1).

A draw's seed is :func:`derive_seed` of the suite's ``seed`` and a path of
names and numbers that says which draw it is; the path is hashed (sha256), so
seeds of different paths are independent and no arithmetic on seeds can make
two of them collide. The paths in use (``id`` is the tokenizer id; a row under
a derived seed, e.g. ``id, "train", step, micro``, is applied in steps:
``derive_seed(derive_seed(seed, id), "train", step, micro)``):

========================================  =====================================================
path                                      what it seeds
========================================  =====================================================
``"eval_clips"``                          choice of evaluation videos and clip positions, or
                                          the ``data.eval_clips`` list (video with
                                          replacement, then start), shared by all tokenizers
``"train_clips"``                         the training clip stream: sample ``i`` is a pure
                                          function of this seed and ``i`` (shared by all
                                          tokenizers: they train on the same clips)
``id, "init"``                            model initialization (seeded before the model is
                                          constructed)
``id, "train", step, micro``              global torch / numpy / Python RNGs for one
                                          micro-batch of a training step (random crops, nested
                                          dropout, flow noise, patch sampling...); ``micro`` is
                                          the micro-batch's position in the global batch, so the
                                          draws do not depend on which rank runs it
``id, "stage0_cache", first``             the frozen stage 0 (VideoFlexTok's VAE) over cached
                                          training clips ``first, first + 1, ...``
``id, "stage0_batch", step``              which cached stage-0 clips form a step's batch
``id, "reconstruct", budget, batch``      encode / decode of one fixed batch of evaluation clips
``id, "generation"``                      the generation stage's own seed ``g``, from which:
``g, "encode", k``                        its k-th batch of training clips to encode (``pool``)
``g, "epoch", e``                         the video order of epoch ``e`` (``epochs``; the full
                                          table is in :mod:`harness.generation.data`)
``g, "window", e, v``                     the window of training video ``v`` in epoch ``e``
``g, "norm", v``                          the window of normalization video ``v`` (``epochs``)
``g, "step", step``                       generator training batch (global, split by position) and noise
``g, "train", step, micro``               global RNGs of one generator micro-batch (label dropout)
``g, "sample", k``                        classes, noise and decoding of the k-th sample batch
``"generation", "real", k``               the k-th batch of real clips for gFVD
                                          (``generation.real_clips: draws``), or with
``"generation", "real", "video", i``      the window of training video ``i`` (``first_videos``);
                                          shared by all tokenizers: one real set
========================================  =====================================================

Because a micro-batch re-seeds the global generators from its own path,
killing a run at any moment and resuming from a checkpoint continues with the
draws the uninterrupted run made; checkpoints also carry every process's RNG
states (:func:`rng_state`), restored on resume, for draws made outside a
seeded scope. On CPU the same suite twice gives identical numbers (exact
float equality) when :func:`configure_determinism` is on, which the ``deterministic``
suite key does by default on CPU.
"""
from __future__ import annotations

import contextlib
import hashlib
import os
import random
from typing import Any, Iterator

import numpy as np
import torch

#: seeds are kept below 2**63 so that every consumer (torch, numpy, Python) accepts them
_SEED_BITS = 63


def derive_seed(seed: int, *path: str | int | None) -> int:
    """The seed of the draw named by ``path`` under ``seed`` (see the module table).

    Args:
        seed: the suite seed (any int), or a seed derived before.
        path: names and numbers (``None`` allowed, e.g. no token budget).

    Returns:
        an int in ``[0, 2**63)``; the same arguments always give the same value.
    """
    text = "/".join([str(int(seed)), *("~" if part is None else str(part) for part in path)])
    digest = hashlib.sha256(text.encode()).digest()
    return int.from_bytes(digest[:8], "little") >> (64 - _SEED_BITS)


def seed_everything(seed: int) -> None:
    """Seed torch (CPU and every CUDA device), numpy's global generator and Python's ``random``."""
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)


@contextlib.contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Run a block with the global generators seeded by ``seed``, restoring the previous states afterwards."""
    state = rng_state()
    seed_everything(seed)
    try:
        yield
    finally:
        set_rng_state(state)


def rng_state() -> dict[str, Any]:
    """This process's RNG states as tensors and plain types (loadable with ``torch.load(weights_only=True)``).

    Returns:
        ``{"torch": uint8 tensor, "cuda": [uint8 tensor per device], "numpy": {...}, "python": [...]}``.
    """
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "gauss": float(gauss)},
        "python": {"version": version, "internal": list(internal), "gauss_next": gauss_next},
    }


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore states written by :func:`rng_state` (CUDA states only when as many devices are present)."""
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])
    numpy = state["numpy"]
    np.random.set_state((numpy["kind"], numpy["keys"].numpy().astype(np.uint32), numpy["pos"], numpy["has_gauss"],
                         numpy["gauss"]))
    python = state["python"]
    random.setstate((python["version"], tuple(python["internal"]), python["gauss_next"]))


#: cuBLAS needs a fixed workspace for deterministic results (CUDA >= 10.2; PyTorch "Reproducibility" notes)
CUBLAS_WORKSPACE = ":4096:8"


def resolve_deterministic(setting: bool | str, device_type: str) -> bool:
    """``"auto"`` is on for CPU and off for CUDA (deterministic kernels cost speed there); booleans pass through."""
    return device_type != "cuda" if setting == "auto" else bool(setting)


def configure_determinism(enabled: bool) -> None:
    """Switch deterministic algorithms on or off for this process.

    On: ``torch.use_deterministic_algorithms(True)``, cuDNN deterministic and
    without autotuning, and ``CUBLAS_WORKSPACE_CONFIG`` set (when not set
    already) before cuBLAS starts. On CUDA this costs speed (deterministic
    scatter/index kernels and cuDNN algorithms; PyTorch's "Reproducibility"
    notes, https://pytorch.org/docs/stable/notes/randomness.html), and an op
    without a deterministic kernel raises ``RuntimeError`` naming it.
    """
    if enabled:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", CUBLAS_WORKSPACE)
    torch.use_deterministic_algorithms(enabled)
    torch.backends.cudnn.deterministic = enabled
    torch.backends.cudnn.benchmark = False if enabled else torch.backends.cudnn.benchmark


def _cpu_name() -> str:
    import platform

    cpuinfo = "/proc/cpuinfo"
    if os.path.isfile(cpuinfo):
        with open(cpuinfo) as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def environment_card(device: torch.device, deterministic: bool) -> dict[str, Any]:
    """What a result depends on beyond the code and config: library versions, device and threads."""
    import platform

    cuda = device.type == "cuda"
    return {
        "torch": torch.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
        "cuda": torch.version.cuda if cuda else None,
        "cudnn": torch.backends.cudnn.version() if cuda else None,
        "device": torch.cuda.get_device_name(device) if cuda else _cpu_name(),
        "threads": torch.get_num_threads(),
        "deterministic": deterministic,
    }
