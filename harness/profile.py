"""Cost profiles: training cost versus video length, and the encode/decode cost sweep.

A profile suite holds one of two sweeps, chosen by its top-level ``sweep`` key:

* ``sweep: training`` (the default): training FLOPs and memory versus video length, below;
* ``sweep: codec``: wall time and peak memory of ``encode`` and ``decode`` per video at a grid of resolutions and
  frame counts, tiled and untiled (issue 27 item 5; :class:`CodecCostSuite`, :func:`profile_codec_costs`,
  ``suites/codec_cost.yaml``, docs/performance.md).

Training cost versus video length (CoordTok Figure 1a and supplementary Figure 9)
--------------------------------------------------------------------------------

For each tokenizer and each video length ``T`` (16, 32, 64, 128 frames at
128x128 by default) one training step is run on a random video
``float32 [batch, 3, T, R, R]``: ``training_losses(video, step)`` forward and
``loss.backward()``. Two figures are recorded per step:

* **FLOPs** with :class:`torch.utils.flop_counter.FlopCounterMode` (matrix
  multiplications, convolutions and attention, forward + backward; elementwise
  ops are not counted);
* **peak memory**: on CUDA ``torch.cuda.max_memory_allocated`` (peak stats
  reset first); on CPU the peak resident set size of a fresh subprocess
  (``VmHWM`` of ``/proc/self/status``, reset through ``/proc/self/clear_refs``
  when the kernel allows it) minus its resident size before the model and the
  video are created (:class:`harness.memory.StageMemory`, the harness's one
  peak-memory measure). Both include parameters, gradients and activations.

Every measurement runs in its own subprocess so that allocator caches of one
measurement never mask the next.

Chunk-based tokenizers (``chunk_frames`` set: the grid baselines, 16 frames)
are trained the way they would see a ``T``-frame video: it is split into
``T / chunk_frames`` chunks (:func:`harness.chunks.split_into_chunks`) that form
one batch. Whole-video tokenizers (CoordTok) are built for ``T`` frames: the
``frames`` and ``resolution`` constructor arguments are filled in when the
tokenizer's constructor takes them (:func:`harness.config.validate.fill_geometry`, as
``python -m harness run`` fills them from ``data``).

A cost suite is read and checked the way run suites are
(:func:`harness.config.load.read_suite`, :func:`harness.config.validate.check_tokenizer`):
the same strict models, tokenizer entries (:class:`harness.config.schema.TokenizerSpec`)
and one-line :class:`harness.config.SuiteError` messages.

Command line::

    python -m harness.profile suites/cost_vs_length.yaml [--output-dir DIR]
    python -m harness profile suites/codec_cost.yaml

The first writes ``cost_vs_length.csv``, ``cost_vs_length.md`` and ``cost_vs_length.png`` to the suite's
``output_dir``; the second ``codec_cost.{csv,md,png}`` (see :func:`run_codec_suite`) and prints its table.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import logging
import math
import os
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, Literal, Sequence

import pandas as pd
import yaml
from pydantic import Field, field_validator

from harness.config.errors import SuiteError
from harness.config.load import read_suite
from harness.config.schema import Strict, TokenizerSpec
from harness.config.validate import check_tokenizer, fill_geometry
from harness_core.errors import run_command
from harness_core.io import write_csv_atomic, write_png_atomic, write_text_atomic

if TYPE_CHECKING:
    import torch

logger = logging.getLogger("harness.profile")

Entry = tuple[str, str, dict[str, Any]]


# --------------------------------------------------------------------------------------------
# Suite schema
# --------------------------------------------------------------------------------------------

class ProfileTokenizer(TokenizerSpec):
    """One tokenizer of the cost suite: ``name`` and ``kwargs`` as in a run suite, and a free-text ``label``."""

    label: str


class ProfileSuite(Strict):
    """``suites/cost_vs_length.yaml``: keys are documented at the top of that file."""

    sweep: Literal["training"] = "training"
    output_dir: str = "results/cost_vs_length"
    lengths: list[int] = Field(default_factory=lambda: [16, 32, 64, 128])
    resolution: int = 128
    batch: int = 1
    device: str = "auto"
    step: int = 0
    seed: int = 0
    tokenizers: list[ProfileTokenizer]

    @field_validator("lengths")
    @classmethod
    def _positive(cls, value: list[int]) -> list[int]:
        if not value or any(v < 1 for v in value):
            raise ValueError(f"lengths must be positive frame counts, got {value}")
        return value


def profile_geometry(frames: int, resolution: int) -> dict[str, tuple[int, str]]:
    """The geometry a profiled tokenizer is built for (:func:`harness.config.validate.fill_geometry`)."""
    return {"frames": (frames, "lengths"), "resolution": (resolution, "resolution")}


#: the values of a profile suite's ``sweep`` key and the schema each selects (:func:`load_profile_suite`)
SWEEPS = ("training", "codec")


def suite_sweep(path: str | Path, overrides: Sequence[str] = ()) -> str:
    """The ``sweep`` of a profile suite file (``"training"`` when the key is absent; a ``--set sweep=...`` wins).

    Raises:
        SuiteError: a ``sweep`` other than ``training`` or ``codec`` (file and YAML errors are left to
            :func:`harness.config.load.read_suite`).
    """
    sweep: Any = "training"
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text()) if path.is_file() else None
    except yaml.YAMLError:
        raw = None
    if isinstance(raw, dict) and "sweep" in raw:
        sweep = raw["sweep"]
    for assignment in overrides:
        key, _, value = assignment.partition("=")
        if key.strip() == "sweep":
            sweep = yaml.safe_load(value)
    if sweep not in SWEEPS:
        raise SuiteError(f"{path}: sweep: expected one of {list(SWEEPS)} (training cost vs length, or the "
                         f"encode/decode cost sweep), got {sweep!r}")
    return sweep


def load_profile_suite(path: str | Path, overrides: Sequence[str] = ()) -> ProfileSuite | CodecCostSuite:
    """Read and check a profile suite through the run suites' path: a :class:`ProfileSuite` (``sweep: training``,
    the default) or a :class:`CodecCostSuite` (``sweep: codec``).

    Tokenizer names that do not resolve are accepted (the sweep skips them
    with a message); the others must accept their ``kwargs`` and must not set
    ``frames`` / ``resolution`` to a value other than each swept length
    (frame count) and resolution.

    Raises:
        SuiteError: (a ``ValueError``) a missing file, invalid YAML, an unknown ``sweep``, an unknown key (named
            with its key path, tokenizers by ``label``, and the allowed keys), an invalid value, a constructor kwarg
            the tokenizer does not accept, or a conflicting ``frames`` / ``resolution`` kwarg.
    """
    if suite_sweep(path, overrides) == "codec":
        return load_codec_suite(path, overrides)
    suite = read_suite(path, ProfileSuite, list(overrides))
    for entry in suite.tokenizers:
        where = f"tokenizers[{entry.label}]"
        cls = check_tokenizer(entry, where, str(path), missing_ok=True)
        if cls is not None:
            for frames in suite.lengths:
                fill_geometry(cls, entry.kwargs, profile_geometry(frames, suite.resolution), f"{where}.kwargs", str(path))
    return suite


# --------------------------------------------------------------------------------------------
# One measurement (runs inside a subprocess)
# --------------------------------------------------------------------------------------------

def build_profiled_tokenizer(name: str, kwargs: dict[str, Any], frames: int, resolution: int):
    """Instantiate ``name`` with ``kwargs``, adding ``frames``/``resolution`` when its constructor takes them.

    Raises:
        SuiteError: ``kwargs`` sets ``frames`` / ``resolution`` to other values (:func:`harness.config.validate.fill_geometry`).
        KeyError, ImportError, AttributeError: ``name`` does not resolve.
    """
    from harness_core.registry import TOKENIZERS

    cls = TOKENIZERS.get(name)
    return cls(**fill_geometry(cls, kwargs, profile_geometry(frames, resolution)))


def measure_step(name: str, kwargs: dict[str, Any], frames: int, resolution: int = 128, batch: int = 1,
                 device: str = "cpu", step: int = 0, seed: int = 0) -> dict[str, Any]:
    """FLOPs and peak memory of one training step, in this process (call it in a fresh one).

    Returns a dict with ``train_gflops`` (forward + backward, GFLOP), ``peak_memory_mb``
    (MiB), ``step_seconds`` (wall clock, informative only: it runs under the FLOP
    counter), ``params``, ``tokens`` (per video) and ``chunks`` (per video).
    """
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from harness.chunks import split_into_chunks
    from harness.memory import StageMemory

    torch.manual_seed(seed)
    dev = torch.device(device)
    with StageMemory(dev) as memory:
        model = build_profiled_tokenizer(name, kwargs, frames, resolution).to(dev).train()
        video = torch.rand(batch, 3, frames, resolution, resolution, device=dev) * 2 - 1
        chunk = getattr(model, "chunk_frames", None)
        chunks = 1
        if chunk and chunk != frames:
            video, _ = split_into_chunks(video, chunk)
            chunks = video.shape[0] // batch
        counter = FlopCounterMode(display=False)
        start = time.perf_counter()
        with counter:
            losses = model.training_losses(video, step)
            loss = losses["loss"] + losses.get("disc_loss", 0.0)
            loss.backward()
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        seconds = time.perf_counter() - start
    return {
        "train_gflops": counter.get_total_flops() / 1e9,
        "peak_memory_mb": memory.peak_mb,
        "step_seconds": seconds,
        "params": sum(p.numel() for p in model.parameters()),
        "tokens": model.tokens_per_video(frames, resolution, resolution),
        "chunks": chunks,
    }


#: side of the float32 matrices of :func:`matmul_rate_gflops`
MATMUL_SIZE = 2048


def synchronize(device: str) -> None:
    """Wait for the queued kernels of ``device`` (a no-op on the CPU), so that wall-clock timings are complete."""
    import torch

    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


def matmul_rate_gflops(device: str, reps: int = 10) -> float:
    """Best float32 ``torch.mm`` throughput of two 2048x2048 matrices on ``device``, GFLOP/s (``2 n^3`` per
    product): the reference that benchmarks state their throughput against (``scripts/bench_fvd.py``,
    ``scripts/bench_train.py``), since machines of one kind differ in speed by 2-4x. It is not the hardware's
    limit: wide convolutions in oneDNN can run faster than this product on AVX-512 CPUs."""
    import torch

    gen = torch.Generator().manual_seed(1)
    a, b = (torch.randn(MATMUL_SIZE, MATMUL_SIZE, generator=gen).to(device) for _ in range(2))
    torch.mm(a, b)
    best = float("inf")
    for _ in range(reps):
        synchronize(device)
        start = time.perf_counter()
        torch.mm(a, b)
        synchronize(device)
        best = min(best, time.perf_counter() - start)
    return 2 * MATMUL_SIZE**3 / best / 1e9


# --------------------------------------------------------------------------------------------
# The sweep
# --------------------------------------------------------------------------------------------

def _resolve_device(device: str | None) -> str:
    import torch

    if device in (None, "auto"):
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


class MeasurementKilled(RuntimeError):
    """The measurement subprocess was ended by a signal (``signal``: its number; 9 is what Linux's
    out-of-memory killer sends)."""

    def __init__(self, signal: int) -> None:
        super().__init__(f"the measurement process was killed by signal {signal}")
        self.signal = signal


def _run_subprocess(spec: dict[str, Any], extra_env: dict[str, str] | None = None) -> dict[str, Any]:
    env = dict(os.environ, **(extra_env or {}))
    root = str(Path(__file__).resolve().parents[1])
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    proc = subprocess.run([sys.executable, "-m", "harness.profile", "--measure", json.dumps(spec)],
                          capture_output=True, text=True, env=env, cwd=root)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode < 0:
        raise MeasurementKilled(-proc.returncode)
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        raise RuntimeError(" | ".join(tail) or f"exit code {proc.returncode}")
    return json.loads(lines[-1])


def profile_costs(tokenizers: Sequence[Entry], lengths: Sequence[int] = (16, 32, 64, 128), resolution: int = 128,
                  batch: int = 1, device: str | None = None, step: int = 0, seed: int = 0,
                  log: Callable[[str], None] | None = None) -> pd.DataFrame:
    """Training FLOPs and peak memory of every ``(label, name, kwargs)`` tokenizer at every length.

    Tokenizer names that are not registered are skipped with a message (so a
    suite can list baselines that another installation lacks); a measurement
    that fails (for example out of memory) is logged and left out.

    Returns:
        one row per (tokenizer, length): ``label, tokenizer, frames, resolution,
        batch, chunks, tokens, params, train_gflops, peak_memory_mb, step_seconds,
        device``.
    """
    from harness_core.registry import TOKENIZERS

    log = log or logger.info
    device = _resolve_device(device)
    rows = []
    for label, name, kwargs in tokenizers:
        if name not in TOKENIZERS:
            log(f"skip {label}: tokenizer {name!r} is not registered")
            continue
        for frames in lengths:
            spec = dict(name=name, kwargs=kwargs, frames=frames, resolution=resolution, batch=batch,
                        device=device, step=step, seed=seed)
            try:
                result = _run_subprocess(spec)
            except RuntimeError as err:
                log(f"skip {label} at {frames} frames: {err}")
                continue
            row = dict(label=label, tokenizer=name, frames=frames, resolution=resolution, batch=batch, device=device)
            row.update(result)
            rows.append(row)
            log(f"{label:>24s} {frames:4d} frames: {result['train_gflops']:10.1f} GFLOP "
                f"{result['peak_memory_mb']:9.1f} MiB ({result['step_seconds']:.1f} s)")
    columns = ["label", "tokenizer", "frames", "resolution", "batch", "chunks", "tokens", "params",
               "train_gflops", "peak_memory_mb", "step_seconds", "device"]
    return pd.DataFrame(rows, columns=columns)


def growth_table(df: pd.DataFrame) -> pd.DataFrame:
    """Per label: FLOPs and memory at the shortest and longest length and their ratio."""
    rows = []
    for label, part in df.groupby("label", sort=False):
        part = part.sort_values("frames")
        first, last = part.iloc[0], part.iloc[-1]
        rows.append({
            "label": label, "frames": f"{first.frames} -> {last.frames}",
            "gflops": f"{first.train_gflops:.1f} -> {last.train_gflops:.1f}",
            "flops_growth": round(last.train_gflops / first.train_gflops, 2) if first.train_gflops else math.nan,
            "memory_mb": f"{first.peak_memory_mb:.0f} -> {last.peak_memory_mb:.0f}",
            "memory_growth": round(last.peak_memory_mb / first.peak_memory_mb, 2) if first.peak_memory_mb > 0 else math.nan,
        })
    return pd.DataFrame(rows)


def write_cost_report(df: pd.DataFrame, output_dir: str | Path, title: str = "Training cost vs video length") -> dict[str, Path]:
    """Write ``cost_vs_length.{csv,md,png}`` to ``output_dir``; returns the paths by kind."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import seaborn as sns

    out = Path(output_dir)
    paths = {"csv": out / "cost_vs_length.csv", "md": out / "cost_vs_length.md", "png": out / "cost_vs_length.png"}
    write_csv_atomic(paths["csv"], df)
    table = df[["label", "frames", "chunks", "tokens", "params", "train_gflops", "peak_memory_mb"]].round(1)
    text = [f"# {title}", "", table.to_markdown(index=False), "", "## Growth from the shortest to the longest video", "",
            growth_table(df).to_markdown(index=False) if len(df) else "(no rows)", ""]
    write_text_atomic(paths["md"], "\n".join(text))
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    if len(df):
        for ax, column, name in ((axes[0], "train_gflops", "GFLOPs per training step"),
                                 (axes[1], "peak_memory_mb", "peak memory per training step (MiB)")):
            sns.lineplot(data=df, x="frames", y=column, hue="label", marker="o", ax=ax)
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            ax.set_xticks(sorted(df.frames.unique()), labels=[str(v) for v in sorted(df.frames.unique())])
            ax.set_xlabel(f"video length (frames, {int(df.resolution.iloc[0])}x{int(df.resolution.iloc[0])})")
            ax.set_ylabel(name)
            ax.legend(fontsize=7, title=None)
    fig.suptitle(f"{title} (batch {int(df.batch.iloc[0]) if len(df) else 1}, {df.device.iloc[0] if len(df) else ''})")
    fig.tight_layout()
    write_png_atomic(paths["png"], lambda handle: fig.savefig(handle, format="png", dpi=120))
    plt.close(fig)
    return paths


def run_suite(suite: ProfileSuite, output_dir: str | Path | None = None,
              log: Callable[[str], None] | None = None) -> pd.DataFrame:
    """Profile every tokenizer of ``suite`` and write the report; returns the table."""
    log = log or logger.info
    entries = [(t.label, t.name, t.kwargs) for t in suite.tokenizers]
    df = profile_costs(entries, suite.lengths, suite.resolution, suite.batch, suite.device, suite.step, suite.seed, log)
    paths = write_cost_report(df, output_dir or suite.output_dir)
    log(f"wrote {', '.join(str(p) for p in paths.values())}")
    return df


# --------------------------------------------------------------------------------------------
# Encode/decode cost sweep (issue 27 item 5, ``sweep: codec``)
# --------------------------------------------------------------------------------------------

class CodecCostTokenizer(ProfileTokenizer):
    """One tokenizer of the encode/decode cost sweep: ``label``, ``name``, ``kwargs`` as in :class:`ProfileTokenizer`,
    and optionally its own ``frames`` / ``resolutions`` lists instead of the suite's (a tokenizer's native frame counts,
    e.g. CoordTok's multiples of 8 beside the causal VAEs' ``1 + 4k``)."""

    frames: list[int] | None = None
    resolutions: list[int] | None = None

    @field_validator("frames", "resolutions")
    @classmethod
    def _positive(cls, value: list[int] | None) -> list[int] | None:
        if value is not None and (not value or any(v < 1 for v in value)):
            raise ValueError(f"must be a non-empty list of positive ints, got {value}")
        return value


class CodecCostSuite(Strict):
    """``suites/codec_cost.yaml`` (``sweep: codec``): keys are documented at the top of that file."""

    sweep: Literal["codec"]
    output_dir: str = "results/codec_cost"
    frames: list[int] = Field(default_factory=lambda: [17, 33, 65, 129])
    resolutions: list[int] = Field(default_factory=lambda: [128, 256, 512])
    tiling: list[bool] = Field(default_factory=lambda: [False, True])
    device: str = "auto"
    seed: int = 0
    chunk_batch: int = Field(8, ge=1)
    repeats: int = Field(1, ge=1)
    memory_cap_mb: float | None = Field(None, gt=0)
    tokenizers: list[CodecCostTokenizer]

    @field_validator("frames", "resolutions")
    @classmethod
    def _positive(cls, value: list[int]) -> list[int]:
        if not value or any(v < 1 for v in value):
            raise ValueError(f"must be a non-empty list of positive ints, got {value}")
        return value

    @field_validator("tiling")
    @classmethod
    def _tiling_list(cls, value: list[bool]) -> list[bool]:
        if not value or len(set(value)) != len(value):
            raise ValueError(f"must list the tiling states to measure, [false], [true] or [false, true], got {value}")
        return value


def load_codec_suite(path: str | Path, overrides: Sequence[str] = ()) -> CodecCostSuite:
    """Read and check an encode/decode cost suite (``sweep: codec``) like :func:`load_profile_suite`.

    Raises:
        SuiteError: as :func:`load_profile_suite`; also empty or non-positive ``frames`` / ``resolutions`` and a
            ``tiling`` list that is empty or repeats a state.
    """
    suite = read_suite(path, CodecCostSuite, list(overrides))
    for entry in suite.tokenizers:
        where = f"tokenizers[{entry.label}]"
        cls = check_tokenizer(entry, where, str(path), missing_ok=True)
        if cls is None:
            continue
        for frames in entry.frames or suite.frames:
            for resolution in entry.resolutions or suite.resolutions:
                fill_geometry(cls, entry.kwargs, {"frames": (frames, "frames"), "resolution": (resolution, "resolutions")},
                              f"{where}.kwargs", str(path))
    return suite


#: what oneDNN (PyTorch's CPU convolution backend) raises when it cannot allocate a primitive's memory: under the
#: CPU memory cap the same 4 MiB overrun fails here or in PyTorch's allocator, depending on which allocates first
ONEDNN_ALLOCATION_FAILURE = "could not create a primitive"


def is_out_of_memory(err: BaseException, capped: bool = False) -> bool:
    """Whether ``err`` is an allocation failure: ``torch.OutOfMemoryError`` (CUDA), ``MemoryError``, the
    ``RuntimeError`` of PyTorch's CPU allocator (``DefaultCPUAllocator: can't allocate memory``, errno 12), or, when
    the measurement runs under a CPU memory cap (``capped``), oneDNN's :data:`ONEDNN_ALLOCATION_FAILURE` (seen on a
    fresh clone where the cap's overrun hit a convolution's primitive first)."""
    import torch

    if isinstance(err, (torch.OutOfMemoryError, MemoryError)):
        return True
    text = str(err).lower()
    markers = ("out of memory", "can't allocate memory", "cannot allocate memory") + (
        (ONEDNN_ALLOCATION_FAILURE,) if capped else ())
    return isinstance(err, RuntimeError) and any(marker in text for marker in markers)


@contextlib.contextmanager
def memory_cap(device: torch.device, cap_mb: float | None) -> Iterator[None]:
    """Let the block allocate at most ``cap_mb`` MiB more than is in use on entry; ``None``: no cap.

    CUDA: ``torch.cuda.set_per_process_memory_fraction`` at ``(allocated now + cap) / total``, so the caching
    allocator raises ``torch.OutOfMemoryError`` as on a smaller GPU. CPU (Linux): the process's address space is
    limited (``RLIMIT_AS``, setrlimit(2)) to its size now plus the cap, so an allocation beyond it fails in
    PyTorch's allocator with ``RuntimeError: ... can't allocate memory``: the failure a machine with that much free
    memory would give. Address space counts what is mapped, not only what is resident (heap fragmentation, thread
    stacks, and 64 MiB per glibc malloc arena: :func:`profile_codec_costs` runs capped measurements with
    :data:`CAPPED_ENV`, one arena), so on the CPU the cap is stricter than a cap on resident memory (by about 10-15 MiB
    for the tiny tokenizers of tests/test_profile.py). The previous limit is restored.

    Raises:
        ValueError: a cap on the CPU of a platform without ``/proc/self/status`` and ``resource.RLIMIT_AS``.
    """
    import torch

    from harness.memory import MIB, _status_mib

    if cap_mb is None:
        yield
        return
    if device.type == "cuda":
        total = torch.cuda.get_device_properties(device).total_memory
        used = torch.cuda.memory_allocated(device)
        torch.cuda.set_per_process_memory_fraction(min(1.0, (used + cap_mb * MIB) / total), device)
        try:
            yield
        finally:
            torch.cuda.set_per_process_memory_fraction(1.0, device)
        return
    if not hasattr(resource, "RLIMIT_AS") or not Path("/proc/self/status").is_file():
        raise ValueError("memory_cap_mb on the CPU needs Linux (RLIMIT_AS and /proc/self/status)")
    # the intra-op thread pool is started before the cap, so that its threads' stacks never meet it
    (torch.ones(1 << 20) * 2).sum()
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    limit = int((_status_mib("VmSize") + cap_mb) * MIB)
    resource.setrlimit(resource.RLIMIT_AS, (limit if hard == resource.RLIM_INFINITY else min(limit, hard), hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


#: environment of a measurement under a CPU memory cap: one glibc malloc arena, since every further arena reserves
#: 64 MiB of address space (mallopt(3), M_ARENA_MAX) that would count against ``RLIMIT_AS`` unused
CAPPED_ENV = {"MALLOC_ARENA_MAX": "1"}


def coded_geometry(model: Any, frames: int, height: int, width: int) -> tuple[int, int]:
    """``(pieces, coded frames)`` of one ``frames``-frame video: the independently coded temporal pieces (the
    engine's chunks, or the tokenizer's own chunks) and the frames actually coded after padding.

    Engine chunks (``chunk_frames``): ``ceil(T / chunk)`` chunks of ``chunk`` frames (the last one padded,
    :func:`harness.chunks.split_into_chunks`); VideoFlexTok: its ``chunk_layout``; diffusers VAEs: their
    ``padded_size`` (``1 + 4k`` and similar rules); otherwise one piece of ``T`` frames.
    """
    chunk = getattr(model, "chunk_frames", None)
    if chunk and chunk != frames:
        pieces = -(-frames // chunk)
        return pieces, pieces * chunk
    if hasattr(model, "chunk_layout"):
        pieces, pad = model.chunk_layout(frames)
        return pieces, frames + pad
    if hasattr(model, "padded_size"):
        return 1, model.padded_size(frames, height, width)[0]
    return 1, frames


def encode_decode_once(model: Any, video: torch.Tensor, chunk_batch: int) -> dict[str, Any]:
    """Encode then decode one video the way the engine does, timing and measuring each half.

    Encoding is :func:`harness.chunks.encode_video` (the engine's split into ``chunk_frames`` chunks, ``chunk_batch``
    chunks per call); decoding decodes every group and merges the chunks back (:func:`harness.chunks.merge_chunks`),
    as :func:`harness.chunks.reconstruct_video` does.

    Returns:
        ``{"encode_s", "decode_s"}`` wall-clock seconds (device synchronized), ``{"encode_mb", "decode_mb"}``:
        :class:`harness.memory.StageMemory` peaks of each half, MiB above the memory in use when it began, and
        ``memory_kind``, what that figure measures.
    """
    import torch

    from harness.chunks import encode_video, merge_chunks
    from harness.memory import StageMemory

    frames = video.shape[2]
    chunk = getattr(model, "chunk_frames", None)
    with torch.no_grad():
        with StageMemory(video.device) as encode_memory:
            synchronize(str(video.device))
            start = time.perf_counter()
            groups = encode_video(model, video, chunk_batch=chunk_batch)
            synchronize(str(video.device))
            encode_s = time.perf_counter() - start
        with StageMemory(video.device) as decode_memory:
            start = time.perf_counter()
            parts = [model.decode(tokens) for tokens in groups]
            if chunk and chunk != frames:
                merge_chunks(torch.cat(parts), video.shape[0], (-frames) % chunk)
            synchronize(str(video.device))
            decode_s = time.perf_counter() - start
    return {"encode_s": encode_s, "decode_s": decode_s, "encode_mb": encode_memory.peak_mb,
            "decode_mb": decode_memory.peak_mb, "memory_kind": encode_memory.kind}


def measure_codec(name: str, kwargs: dict[str, Any], frames: int, resolution: int, tiling: bool | None = None,
                  device: str = "cpu", seed: int = 0, chunk_batch: int = 8, repeats: int = 1,
                  memory_cap_mb: float | None = None) -> dict[str, Any]:
    """Encode and decode cost of one random video ``float32 [1, 3, frames, resolution, resolution]`` in ``[-1, 1]``,
    in this process (call it in a fresh one): one warm-up call, then ``repeats`` measured calls.

    Args:
        name, kwargs: the tokenizer (``frames`` / ``resolution`` filled in when its constructor takes them); its
            weights are as initialized (untrained: cost does not depend on the weights' values).
        tiling: ``set_tiling(tiling)`` before measuring; ``None`` leaves the tokenizer as built.
        memory_cap_mb: see :func:`memory_cap` (warm-up and measured calls run under it).

    Returns:
        ``status``: ``"ok"``, ``"skipped"`` (the tokenizer rejects this shape or tiling with a ``ValueError``:
        ``reason`` holds its message) or ``"OOM"`` (an allocation failed, :func:`is_out_of_memory`; ``reason`` holds
        the first line of the error). With ``"ok"``: ``encode_s`` / ``decode_s`` (the fastest of the measured calls,
        seconds), ``encode_mb`` / ``decode_mb`` (the largest peak, MiB), ``tokens``, ``pieces``, ``coded_frames``,
        ``params`` and ``memory_kind`` (what the memory figure measures, :class:`harness.memory.StageMemory`).
    """
    import torch

    from harness_core.seeding import derive_seed

    dev = torch.device(device)
    torch.manual_seed(derive_seed(seed, "profile", name, "weights"))
    try:
        model = build_profiled_tokenizer(name, kwargs, frames, resolution)
        if tiling is not None:
            model.set_tiling(tiling)
        tokens = model.tokens_per_video(frames, resolution, resolution)
        pieces, coded = coded_geometry(model, frames, resolution, resolution)
    except ValueError as err:
        return {"status": "skipped", "reason": _first_line(err)}
    model = model.to(dev).eval()
    generator = torch.Generator().manual_seed(derive_seed(seed, "profile", "video", frames, resolution))
    video = (torch.rand(1, 3, frames, resolution, resolution, generator=generator) * 2 - 1).to(dev)
    try:
        with memory_cap(dev, memory_cap_mb):
            encode_decode_once(model, video, chunk_batch)  # warm-up: lazy initialization, kernel selection, caches
            runs = [encode_decode_once(model, video, chunk_batch) for _ in range(repeats)]
    except ValueError as err:
        return {"status": "skipped", "reason": _first_line(err)}
    except (RuntimeError, MemoryError) as err:
        if not is_out_of_memory(err, capped=memory_cap_mb is not None and dev.type == "cpu"):
            raise
        return {"status": "OOM", "reason": _first_line(err)}
    return {
        "status": "ok", "reason": "",
        "encode_s": min(r["encode_s"] for r in runs), "decode_s": min(r["decode_s"] for r in runs),
        "encode_mb": max(r["encode_mb"] for r in runs), "decode_mb": max(r["decode_mb"] for r in runs),
        "tokens": tokens, "pieces": pieces, "coded_frames": coded,
        "params": sum(p.numel() for p in model.parameters()),
        "memory_kind": runs[0]["memory_kind"],
    }


def _first_line(err: BaseException) -> str:
    lines = str(err).strip().splitlines()
    return lines[0] if lines else type(err).__name__


#: columns of the encode/decode cost table (:func:`profile_codec_costs`), in order
CODEC_COLUMNS = ["label", "tokenizer", "tiling", "frames", "resolution", "pixels", "status", "encode_s", "decode_s",
                 "encode_mb", "decode_mb", "tokens", "pieces", "coded_frames", "params", "reason", "device", "memory_kind"]


def tiling_states(name: str, kwargs: dict[str, Any], tiling: Sequence[bool], frames: int, resolution: int) -> list[bool | None]:
    """The tiling states to measure for a tokenizer: ``tiling`` when it can switch tiling, else ``[None]`` (as built).

    ``supports_tiling`` is read on the class; where it is a property (diffusers VAEs: it depends on the wrapped
    class) the tokenizer is built once here, for ``frames`` x ``resolution``, to ask it.
    """
    from harness_core.registry import TOKENIZERS

    cls = TOKENIZERS.get(name)
    flag = getattr(cls, "supports_tiling", False)
    if isinstance(flag, property):
        try:
            flag = build_profiled_tokenizer(name, kwargs, frames, resolution).supports_tiling
        except ValueError:
            flag = False  # every measurement reports the constructor's reason
    return list(tiling) if flag else [None]


def profile_codec_costs(tokenizers: Sequence[CodecCostTokenizer | Entry], frames: Sequence[int] = (17, 33, 65, 129),
                        resolutions: Sequence[int] = (128, 256, 512), tiling: Sequence[bool] = (False, True),
                        device: str | None = None, seed: int = 0, chunk_batch: int = 8, repeats: int = 1,
                        memory_cap_mb: float | None = None, log: Callable[[str], None] | None = None) -> pd.DataFrame:
    """Encode and decode wall time and peak memory per video for every tokenizer, resolution, frame count and
    tiling state, each measured in its own subprocess (:func:`measure_codec`; batch 1, after a warm-up call).

    Args:
        tokenizers: :class:`CodecCostTokenizer` entries (their own ``frames`` / ``resolutions`` win) or
            ``(label, name, kwargs)`` tuples.
        frames, resolutions: the grid (square frames of ``resolution`` pixels).
        tiling: tiling states measured for tokenizers that can switch tiling (``supports_tiling``); the others
            are measured once, as built (``tiling`` column ``"n/a"``).
        device: ``None``/``"auto"`` (CUDA when present), ``"cpu"``, ``"cuda[:i]"``.
        seed: suite seed (weights' initialization and the random video, :func:`harness_core.seeding.derive_seed`).
        chunk_batch: chunks per ``encode`` call for chunk tokenizers (the engine's ``evaluate.chunk_batch``).
        repeats: measured calls after the warm-up (fastest time, largest memory kept).
        memory_cap_mb: memory each measurement may add (:func:`memory_cap`); an allocation beyond it is ``"OOM"``.

    Returns:
        one row per (tokenizer, resolution, frames, tiling state) with :data:`CODEC_COLUMNS`; ``status`` is
        ``"ok"``, ``"OOM"`` (also a measurement process killed by SIGKILL, the Linux out-of-memory killer's signal),
        ``"skipped"`` (a shape or tiling the tokenizer rejects; ``reason`` says why) or ``"error"`` (any other
        failure of the measurement process: ``reason`` holds its last lines; the sweep goes on, so that one broken
        cell does not cost the others). Unregistered names are left out with a message.
    """
    from harness_core.registry import TOKENIZERS

    log = log or logger.info
    device = _resolve_device(device)
    rows = []
    for entry in tokenizers:
        label, name, kwargs = (entry.label, entry.name, entry.kwargs) if isinstance(entry, CodecCostTokenizer) else entry
        own_frames = getattr(entry, "frames", None) or frames
        own_resolutions = getattr(entry, "resolutions", None) or resolutions
        if name not in TOKENIZERS:
            log(f"skip {label}: tokenizer {name!r} is not registered")
            continue
        states = tiling_states(name, kwargs, tiling, own_frames[0], own_resolutions[0])
        for resolution in own_resolutions:
            for count in own_frames:
                for state in states:
                    spec = dict(sweep="codec", name=name, kwargs=kwargs, frames=count, resolution=resolution, tiling=state,
                                device=device, seed=seed, chunk_batch=chunk_batch, repeats=repeats,
                                memory_cap_mb=memory_cap_mb)
                    try:
                        result = _run_subprocess(spec, CAPPED_ENV if memory_cap_mb is not None else None)
                    except MeasurementKilled as err:
                        oom = err.signal == 9
                        result = {"status": "OOM" if oom else "error",
                                  "reason": f"{err}" + (" (SIGKILL: the kernel's out-of-memory killer)" if oom else "")}
                    except RuntimeError as err:  # one failed cell must not cost the rest of a long sweep
                        result = {"status": "error", "reason": str(err)}
                    row = dict(label=label, tokenizer=name, tiling={None: "n/a", False: "off", True: "on"}[state],
                               frames=count, resolution=resolution, pixels=count * resolution * resolution, device=device)
                    row.update(result)
                    rows.append(row)
                    log(_progress_line(row))
    return pd.DataFrame(rows, columns=CODEC_COLUMNS)


def _progress_line(row: dict[str, Any]) -> str:
    where = f"{row['label']:>28s} tiling {row['tiling']:>3s} {row['frames']:4d}x{row['resolution']}x{row['resolution']}"
    if row["status"] != "ok":
        return f"{where}: {row['status']} ({row['reason']})"
    return (f"{where}: encode {row['encode_s']:.3f} s {row['encode_mb']:.0f} MiB, "
            f"decode {row['decode_s']:.3f} s {row['decode_mb']:.0f} MiB")


def codec_table(df: pd.DataFrame) -> pd.DataFrame:
    """The printed table: times in seconds, memory in MiB, ``OOM`` / ``skipped`` in their cells, reasons in ``note``."""
    rows = []
    for row in df.itertuples(index=False):
        ok = row.status == "ok"
        cells = {key: (f"{getattr(row, column):.{digits}f}" if ok else row.status)
                 for key, column, digits in (("encode s", "encode_s", 3), ("decode s", "decode_s", 3),
                                             ("encode MiB", "encode_mb", 0), ("decode MiB", "decode_mb", 0))}
        rows.append({"tokenizer": row.label, "tiling": row.tiling, "frames": row.frames,
                     "px": f"{row.resolution}x{row.resolution}", "coded": _coded(row) if ok else "", **cells,
                     "note": "" if ok else row.reason})
    return pd.DataFrame(rows, columns=["tokenizer", "tiling", "frames", "px", "coded", "encode s", "decode s",
                                       "encode MiB", "decode MiB", "note"])


def _coded(row: Any) -> str:
    """``2x17`` (pieces x frames each) for chunked coding, ``33`` for one piece (after padding)."""
    pieces, coded = int(row.pieces), int(row.coded_frames)
    if pieces > 1 and coded % pieces == 0:
        return f"{pieces}x{coded // pieces}"
    return f"{coded} in {pieces}" if pieces > 1 else str(coded)


def write_codec_plot(df: pd.DataFrame, path: Path, title: str = "") -> Path:
    """Encode/decode time and memory against pixels per video (frames x height x width), log-log, one line per
    tokenizer x tiling state; an ``x`` at the top edge marks an out-of-memory cell."""
    from harness.reports.plots import pyplot, save_figure

    plt = pyplot()
    fig, axes = plt.subplots(2, 2, figsize=(11, 8), squeeze=False)
    panels = (("encode_s", "encode time per video (s)"), ("decode_s", "decode time per video (s)"),
              ("encode_mb", "encode peak memory (MiB)"), ("decode_mb", "decode peak memory (MiB)"))
    lines = list(dict.fromkeys(zip(df.label, df.tiling)))
    cmap = plt.get_cmap("tab10" if len(lines) <= 10 else "tab20")
    for ax, (column, name) in zip(axes.flat, panels):
        for i, (label, tiling) in enumerate(lines):
            mine = df[(df.label == label) & (df.tiling == tiling)].sort_values("pixels")
            ok = mine[mine.status == "ok"]
            text = label if tiling == "n/a" else f"{label}, tiling {tiling}"
            style = "--" if tiling == "on" else "-"
            if len(ok):
                ax.plot(ok.pixels, ok[column], style, marker="o", color=cmap(i % cmap.N), label=text)
            oom = mine[mine.status == "OOM"]
            if len(oom):
                ax.plot(oom.pixels, [1.0] * len(oom), "x", color=cmap(i % cmap.N), markersize=9, clip_on=False,
                        transform=ax.get_xaxis_transform(), label=f"{text}: OOM" if column == "encode_s" else None)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("pixels per video (frames x height x width)")
        ax.set_ylabel(name)
        ax.grid(alpha=0.3, which="both")
    handles, labels = axes[0, 0].get_legend_handles_labels()
    if handles:
        fig.legend(handles, labels, loc="lower center", ncol=2, fontsize=7, frameon=False)
    device = df.device.iloc[0] if len(df) else ""
    fig.suptitle(title or f"Encode/decode cost per video (batch 1, {device}, untrained weights)")
    fig.tight_layout(rect=(0, 0.04 + 0.018 * ((len(handles) + 1) // 2), 1, 1))
    return save_figure(fig, Path(path))


def write_codec_report(df: pd.DataFrame, output_dir: str | Path, machine: str = "") -> dict[str, Path]:
    """Write ``codec_cost.csv`` (every column), ``codec_cost.md`` (the printed table) and ``codec_cost.png``
    (:func:`write_codec_plot`) to ``output_dir``; returns the paths by kind."""
    out = Path(output_dir)
    paths = {"csv": out / "codec_cost.csv", "md": out / "codec_cost.md", "png": out / "codec_cost.png"}
    write_csv_atomic(paths["csv"], df)
    kind = df.memory_kind.dropna().iloc[0] if df.memory_kind.notna().any() else ""
    where = f"device {df.device.iloc[0] if len(df) else '?'}" + (f", {machine}" if machine else "")
    legend = (f"Batch 1, after one warm-up call, {where}. Weights are untrained (as initialized): cost does not depend "
              f"on their values. Memory: {kind or 'see codec_cost.csv'}. `coded`: frames actually coded (pieces x "
              "frames, after the engine's chunking and the tokenizer's padding). OOM: an allocation failed (the GPU's "
              "memory, or the suite's `memory_cap_mb`); skipped: the tokenizer rejects that shape (note).")
    text = ["# Encode/decode cost per video", "", legend, "",
            codec_table(df).to_markdown(index=False) if len(df) else "(no rows)", ""]
    write_text_atomic(paths["md"], "\n".join(text))
    write_codec_plot(df, paths["png"])
    return paths


def machine_name(device: str) -> str:
    """``"<CPU model>, <n> cores"`` or the CUDA device's name, for the report."""
    import torch

    if device.startswith("cuda"):
        return torch.cuda.get_device_name(torch.device(device))
    from harness_core.seeding import _cpu_name

    return f"{_cpu_name()}, {os.cpu_count()} cores"


def run_codec_suite(suite: CodecCostSuite, output_dir: str | Path | None = None,
                    log: Callable[[str], None] | None = None) -> pd.DataFrame:
    """Run the encode/decode cost sweep of ``suite`` and write its report (:func:`write_codec_report`); returns
    the table (:data:`CODEC_COLUMNS`)."""
    log = log or logger.info
    df = profile_codec_costs(suite.tokenizers, suite.frames, suite.resolutions, suite.tiling, suite.device, suite.seed,
                             suite.chunk_batch, suite.repeats, suite.memory_cap_mb, log)
    paths = write_codec_report(df, output_dir or suite.output_dir, machine_name(_resolve_device(suite.device)))
    log(f"wrote {', '.join(str(p) for p in paths.values())}")
    return df


def _arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("suite", nargs="?", help="profile suite YAML (suites/cost_vs_length.yaml: training cost vs length; "
                                                 "suites/codec_cost.yaml: encode/decode cost sweep)")
    parser.add_argument("--output-dir", help="override the suite's output_dir")
    parser.add_argument("--measure", help=argparse.SUPPRESS)  # internal: one measurement as JSON
    return parser


def add_parser(subparsers) -> argparse.ArgumentParser:
    """The ``harness profile`` sub-command (same arguments as ``python -m harness.profile``)."""
    parser = _arguments(subparsers.add_parser(
        "profile", help="training FLOPs and memory vs video length, or encode/decode time and memory vs resolution (sweep: codec)"))
    parser.set_defaults(func=lambda args: _main(args, parser))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m harness.profile SUITE.yaml [--output-dir DIR]``."""
    parser = _arguments(argparse.ArgumentParser(prog="python -m harness.profile", description=__doc__.split("\n\n")[0]))
    logging.basicConfig(level=logging.INFO, format="%(message)s")  # progress lines (``harness profile`` configures its own)
    args = parser.parse_args(argv)
    return run_command(lambda: _main(args, parser))


def _main(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    if args.measure:
        spec = json.loads(args.measure)
        measure = measure_codec if spec.pop("sweep", "training") == "codec" else measure_step
        print(json.dumps(measure(**spec)), flush=True)
        return 0
    if not args.suite:
        parser.error("a suite file is required")
    suite = load_profile_suite(args.suite)
    if isinstance(suite, CodecCostSuite):
        df = run_codec_suite(suite, args.output_dir)
        print(codec_table(df).to_markdown(index=False), flush=True)
        return 0
    run_suite(suite, args.output_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
