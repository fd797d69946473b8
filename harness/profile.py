"""Training cost versus video length (CoordTok Figure 1a and supplementary Figure 9).

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

writes ``cost_vs_length.csv``, ``cost_vs_length.md`` and ``cost_vs_length.png``
to the suite's ``output_dir``.
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import pandas as pd
from pydantic import Field, field_validator

from harness.config.load import read_suite
from harness.config.schema import Strict, TokenizerSpec
from harness.config.validate import check_tokenizer, fill_geometry
from harness_core.errors import run_command
from harness_core.io import write_csv_atomic, write_png_atomic, write_text_atomic

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


def load_profile_suite(path: str | Path, overrides: Sequence[str] = ()) -> ProfileSuite:
    """Read and check a cost suite through the run suites' path.

    Tokenizer names that do not resolve are accepted (the sweep skips them
    with a message); the others must accept their ``kwargs`` and must not set
    ``frames`` / ``resolution`` to a value other than each swept length and
    the suite's ``resolution``.

    Raises:
        SuiteError: (a ``ValueError``) a missing file, invalid YAML, an unknown key (named with its key path,
            tokenizers by ``label``, and the allowed keys), an invalid value, a constructor kwarg the tokenizer
            does not accept, or a conflicting ``frames`` / ``resolution`` kwarg.
    """
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


def _run_subprocess(spec: dict[str, Any]) -> dict[str, Any]:
    env = dict(os.environ)
    root = str(Path(__file__).resolve().parents[1])
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    proc = subprocess.run([sys.executable, "-m", "harness.profile", "--measure", json.dumps(spec)],
                          capture_output=True, text=True, env=env, cwd=root)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
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


def _arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("suite", nargs="?", help="cost suite YAML (e.g. suites/cost_vs_length.yaml)")
    parser.add_argument("--output-dir", help="override the suite's output_dir")
    parser.add_argument("--measure", help=argparse.SUPPRESS)  # internal: one measurement as JSON
    return parser


def add_parser(subparsers) -> argparse.ArgumentParser:
    """The ``harness profile`` sub-command (same arguments as ``python -m harness.profile``)."""
    parser = _arguments(subparsers.add_parser("profile", help="FLOPs and peak memory of one training step vs video length"))
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
        print(json.dumps(measure_step(**spec)), flush=True)
        return 0
    if not args.suite:
        parser.error("a suite file is required")
    run_suite(load_profile_suite(args.suite), args.output_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
