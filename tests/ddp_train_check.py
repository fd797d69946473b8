"""Run by test_engine under torchrun with 2 CPU processes: two training steps through the engine (gloo),
then compare the parameters of both ranks. Writes ddp_report.json into the folder given as argv[1]."""
import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from accelerate import Accelerator

from harness.config import DataConfig, TrainConfig
from harness.data.datasets import build_dataset
from harness.data.sampling import TrainClips
from harness.registry import create_tokenizer
from harness.train import train_tokenizer

out = Path(sys.argv[1])
accelerator = Accelerator(cpu=True)
torch.manual_seed(0)
model = create_tokenizer("grid3d", size="tiny", channels=8)
initial = torch.cat([p.detach().flatten().clone() for p in model.parameters()])
clips = TrainClips(build_dataset(DataConfig(dataset="samples", resolution=32, frames=16, cache_dir=str(out / "cache"))), seed=0)
train_tokenizer(model, clips, TrainConfig(steps=2, batch_size=4, micro_batch_size=1), out / "ckpt.pt", seed=0,
                accelerator=accelerator, show_progress=False)
flat = torch.cat([p.detach().flatten() for p in model.parameters()])
gathered = [torch.zeros_like(flat) for _ in range(dist.get_world_size())]
dist.all_gather(gathered, flat)
if accelerator.is_main_process:
    report = {"world_size": dist.get_world_size(), "backend": dist.get_backend(),
              "max_param_difference": float((gathered[0] - gathered[1]).abs().max()),
              "changed_from_init": bool((flat - initial).abs().max() > 0)}
    (out / "ddp_report.json").write_text(json.dumps(report))
accelerator.wait_for_everyone()
