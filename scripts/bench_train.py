"""Benchmark of training-step cost: wall time, FLOPs and the ratio to the machine's float32 torch.mm rate per tokenizer.

For every tokenizer of a suite (default ``suites/samples_cpu.yaml``), built
with the suite's kwargs by :func:`harness.stages.context.build_tokenizer`, as ``python -m
harness run`` builds it (a ``run:<id>`` reference becomes that tokenizer, untrained and frozen), it times one
optimizer step of the harness's training objective
(:class:`harness.train.TrainingObjective`: forward, backward of ``loss`` plus
``disc_loss``, then AdamW on the tokenizer's and the discriminator's
parameters, as :func:`harness.train.train_tokenizer` sets them up) on a random
batch of the suite's shape (``train.batch_size`` clips of ``data.frames`` x
``data.resolution``; a tokenizer with ``train.stage0_cache_clips`` trains on
its stage-0 features of that batch, as with the cache). Costs do not depend
on the pixel values.

It measures at the first and at the last step of each schedule, since the
objective may change with the step (CoordTok's stage 2 adds LPIPS on whole
frames, a GAN's discriminator starts late), and prints per tokenizer and
step: milliseconds per step (mean of ``--steps`` after ``--warmup``),
forward + backward GFLOP (``torch.utils.flop_counter.FlopCounterMode``:
matrix products, convolutions and attention; elementwise work is not
counted), the achieved GFLOP/s and its ratio to the float32 ``torch.mm``
rate measured in the same command (:func:`harness.profile.matmul_rate_gflops`;
wide convolutions such as LPIPS-VGG's can exceed it: it is a reference for
comparing machines and layers, not the hardware's limit).

Usage::

    python scripts/bench_train.py [SUITE] [--only IDS] [--steps 5] [--warmup 2] [--threads N]
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import torch  # noqa: E402
from tabulate import tabulate  # noqa: E402
from torch.utils.flop_counter import FlopCounterMode  # noqa: E402

from harness.config import load_suite  # noqa: E402
from harness.profile import matmul_rate_gflops  # noqa: E402
from harness.stages.context import build_tokenizer  # noqa: E402
from harness.train import TrainingObjective, split_parameters  # noqa: E402


def time_steps(objective: TrainingObjective, optimizers: list, args: tuple, step: int, warmup: int,
               steps: int) -> tuple[float, float]:
    """(seconds per optimizer step, forward + backward GFLOP) of the objective at schedule step ``step``."""
    def one() -> None:
        out = objective(args[0], step, *args[1:])
        (out["loss"] + out.get("disc_loss", 0.0)).backward()
        for opt in optimizers:
            opt.step()
            opt.zero_grad(set_to_none=True)

    for _ in range(warmup):
        one()
    start = time.perf_counter()
    for _ in range(steps):
        one()
    seconds = (time.perf_counter() - start) / steps
    counter = FlopCounterMode(display=False)
    with counter:
        out = objective(args[0], step, *args[1:])
        (out["loss"] + out.get("disc_loss", 0.0)).backward()
    for opt in optimizers:
        opt.zero_grad(set_to_none=True)
    return seconds, counter.get_total_flops() / 1e9


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("suite", nargs="?", default=str(REPO / "suites" / "samples_cpu.yaml"))
    parser.add_argument("--only", default=None, help="comma-separated tokenizer ids")
    parser.add_argument("--steps", type=int, default=5, help="timed steps per measurement")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps before them")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    suite = load_suite(args.suite)
    only = set(args.only.split(",")) if args.only else None
    mm_rate = matmul_rate_gflops("cpu")
    data = suite.data
    built: dict[str, torch.nn.Module] = {}
    rows = []
    for entry in suite.tokenizers:
        torch.manual_seed(len(built))  # untrained weights: seeded by the tokenizer's position in the suite
        tokenizer = built[entry.id] = build_tokenizer(suite, entry, built)
        if only and entry.id not in only:
            continue
        cfg = suite.train_config(entry)
        objective = TrainingObjective(tokenizer).train()
        optimizers = [torch.optim.AdamW(params, lr=cfg.lr, betas=tuple(cfg.betas), weight_decay=cfg.weight_decay)
                      for params in split_parameters(tokenizer) if params]
        video = torch.rand(cfg.batch_size, 3, data.frames, data.resolution, data.resolution) * 2 - 1
        inputs = (tokenizer.stage0_features(video), True) if cfg.stage0_cache_clips else (video,)
        costs = {step: time_steps(objective, optimizers, inputs, step, args.warmup, args.steps)
                 for step in sorted({0, cfg.steps - 1})}
        for step, (seconds, gflop) in costs.items():
            rows.append((entry.id, step, cfg.batch_size, 1000 * seconds, gflop, gflop / seconds, gflop / seconds / mm_rate))
    print(tabulate(rows, headers=["tokenizer", "step", "batch", "ms/step", "GFLOP/step", "GFLOP/s", "/ mm rate"],
                   floatfmt=".2f"))
    print(f"float32 torch.mm rate (2048x2048, {torch.get_num_threads()} threads): {mm_rate:.1f} GFLOP/s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
