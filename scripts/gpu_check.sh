#!/usr/bin/env bash
# The first hour on a GPU node is a check, not a debugging session: run the paper suite's code path
# (suites/ucf101_128f.yaml: clip store, padded short videos, the seeded evaluation list, fp16 autocast as the suite
# sets it, DDP, CoordTok's two training stages, on-the-fly SiT encoding, gFVD) with tiny --set overrides on
# whatever GPUs are present, and print one line per stage with its wall time and peak memory.
#
#   scripts/gpu_check.sh [UCF101_ROOT]          default root: ../shared/data/ucf101_mini (the UCF-101-style folder)
#
# GPUs: one process per GPU (torchrun, NCCL) when there are several, one process on one GPU. No GPU: the same path
# on the CPU as two processes over gloo, so the script stays tested on CPU machines. Environment:
#   PYTHON   the interpreter (default .venv/bin/python, else python3)
#   ONLY     comma-separated tokenizer ids of the suite to check (default coordtok_l_1280: CoordTok and its SiT)
#   PROCS    processes to launch (default: the GPU count, or 2 on CPU)
#   OUT      results folder (default: a new temporary folder, kept and printed)
#   EXTRA    further --set overrides, space-separated (e.g. "data.frames=128 data.resolution=128" at paper size)
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
ROOT=${1:-../shared/data/ucf101_mini}
ONLY=${ONLY:-coordtok_l_1280}
OUT=${OUT:-$(mktemp -d -t gpu_check.XXXXXX)}
GPUS=$("$PYTHON" -c "import torch; print(torch.cuda.device_count())")
if [ "$GPUS" -gt 0 ]; then DEVICE="cuda x $GPUS"; PROCS=${PROCS:-$GPUS}; else DEVICE="cpu (gloo)"; PROCS=${PROCS:-2}; fi
if [ ! -d "$ROOT/ucfTrainTestlist" ]; then
  echo "error: $ROOT is not a UCF-101 folder (it needs ucfTrainTestlist/); pass the root as the first argument" >&2
  exit 2
fi

# Tiny sizes and schedules, the paper's rules: 96-frame 32x32 clips keep short videos (the 80-frame ones) padded.
SETS=(
  data.root="$ROOT" data.cache_dir="$OUT/cache" data.frames=96 data.resolution=32 data.num_workers=1
  data.eval_clips=8 evaluate.batch_size=4 evaluate.chunk_batch=4
  train.steps=4 train.batch_size=2 train.checkpoint_every=2 train.log_every=1
  tokenizers.coordtok_l_1280.kwargs.size=tiny tokenizers.coordtok_l_1280.kwargs.stage1_steps=2
  tokenizers.coordtok_l_1280.kwargs.stage2_frames=4 tokenizers.coordtok_l_1280.kwargs.points_per_video=64
  generation.model=tiny generation.steps=3 generation.batch_size=2 generation.num_norm_clips=4
  generation.sampling_steps=4 generation.num_samples=4 generation.num_real=4 generation.sample_batch_size=2
  generation.num_gif_samples=2 generation.checkpoint_every=3 generation.log_every=1
)
ARGS=(suites/ucf101_128f.yaml --only "$ONLY" --output-dir "$OUT/results" -q)
for item in "${SETS[@]}" ${EXTRA:-}; do ARGS+=(--set "$item"); done
echo "gpu_check: $DEVICE, $PROCS process(es), tokenizers $ONLY, results $OUT/results"
if [ "$PROCS" -gt 1 ]; then
  "$PYTHON" -m torch.distributed.run --standalone --nproc_per_node="$PROCS" -m harness run "${ARGS[@]}"
else
  "$PYTHON" -m harness run "${ARGS[@]}"
fi
"$PYTHON" - "$OUT/results" "$DEVICE" <<'PY'
import sys
from pathlib import Path

import pandas as pd

results, device = Path(sys.argv[1]), sys.argv[2]
times = pd.read_csv(results / "stage_times.csv", index_col="tokenizer")
memory = pd.read_csv(results / "stage_memory.csv", index_col="tokenizer")
kind = "CUDA allocated" if device.startswith("cuda") else "CPU resident"
for tokenizer, row in times.iterrows():
    for stage, seconds in row.drop("total").items():
        if seconds == 0:  # not a stage of this row (the suite's report, a tokenizer's train...) or nothing to do
            continue
        peak = memory.loc[tokenizer, stage] if tokenizer in memory.index and stage in memory else float("nan")
        print(f"gpu_check: {tokenizer:<18} {stage:<12} {seconds:8.1f} s   peak {peak:9.1f} MiB ({kind}, main process)")
print(f"gpu_check: done; leaderboard {results / 'leaderboard.md'}")
PY
