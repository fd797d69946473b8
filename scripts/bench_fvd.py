"""Benchmark of the FVD pipeline: I3D throughput and the memory of the streaming statistics.

Prints

* I3D clips per second at 16 and 128 frames (the real network with the
  original weights; 128x128 input clips, so the time includes the bilinear
  resize to 224x224 that every FVD protocol does), on this machine's device;
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

Usage::

    python scripts/bench_fvd.py [--reps-16 3] [--reps-128 1] [--device cuda] [--out bench_fvd.json]

Runtime on a 2-core CPU: about 1-3 minutes (one 128-frame clip takes 5-20 s).
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


def i3d_benchmark(device: str, reps_16: int, reps_128: int) -> list[dict]:
    import torch

    from metrics.fvd import i3d_logits
    from metrics.i3d import load_i3d

    load_i3d(device=device)
    gen = torch.Generator().manual_seed(0)
    rows = []
    i3d_logits(torch.rand(1, 3, 16, 128, 128, generator=gen).to(device) * 2 - 1)  # warm-up
    for frames, reps in ((16, reps_16), (128, reps_128)):
        if reps <= 0:
            continue
        clips = (torch.rand(reps, 3, frames, 128, 128, generator=gen) * 2 - 1).to(device)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        start = time.perf_counter()
        for i in range(reps):
            i3d_logits(clips[i : i + 1])
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        elapsed = time.perf_counter() - start
        rows.append({"frames": frames, "clips": reps, "seconds": elapsed, "clips_per_s": reps / elapsed})
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reps-16", type=int, default=3, help="16-frame clips to time (default 3)")
    parser.add_argument("--reps-128", type=int, default=1, help="128-frame clips to time (default 1)")
    parser.add_argument("--device", default=None, help="torch device for I3D (default: cuda when available, else cpu)")
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
    report: dict = {"device": device, "torch_threads": torch.get_num_threads(), "i3d_weights_sha256": i3d_weights_sha256(),
                    "load_average_1min": os.getloadavg()[0], "cpu_count": os.cpu_count()}
    print(f"load average {report['load_average_1min']:.1f} on {report['cpu_count']} CPUs (timings scale with contention)\n")
    if not args.skip_i3d:
        report["i3d"] = i3d_benchmark(device, args.reps_16, args.reps_128)
        print(f"I3D throughput on {device} ({torch.get_num_threads()} threads; 128x128 clips resized to 224x224):")
        print(tabulate([(r["frames"], r["clips"], r["seconds"], r["clips_per_s"]) for r in report["i3d"]],
                       headers=["frames", "clips", "seconds", "clips/s"], floatfmt=".3f"))
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
