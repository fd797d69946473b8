"""Run by test_engine under torchrun with 2 CPU processes: two training steps through the engine (gloo),
then compare the parameters of both ranks. Writes ddp_report.json into the folder given as argv[1].

argv[2] picks the model: ``grid3d`` (default), ``videoflextok_stage0``: a tiny VideoFlexTok trained on
its stage-0 latent cache (built by rank 0, read by both), ``magvit_ema``: a tiny MAGVIT-recipe grid3d_vq whose
EMA of the weights (entropy loss on) ends up in the model, or ``generator``: a tiny SiT (and its EMA) trained
through the generation stage's ``train_generator`` on a tiny grid3d's latents of real sample clips."""
import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from accelerate import Accelerator

from harness.config import DataConfig, TrainConfig
from harness.data.datasets import build_dataset
from harness.data.sampling import TrainClips
from harness_core.registry import create_tokenizer
from harness.train import train_tokenizer

out = Path(sys.argv[1])
accelerator = Accelerator(cpu=True)
mode = sys.argv[2] if len(sys.argv) > 2 else "grid3d"
torch.manual_seed(0)
if mode == "videoflextok_stage0":
    vae = {"name": "grid3d", "kwargs": {"size": "tiny", "channels": 8, "causal": True, "latent_channels": 16, "chunk_frames": 17}}
    model = create_tokenizer("videoflextok", size="tiny", vae=vae, n_max=4, enc_depth=1, enc_dim=32, enc_heads=2,
                             dec_depth=1, dec_dim=32, dec_heads=2)
    frames, train = 17, TrainConfig(steps=2, batch_size=4, micro_batch_size=1, stage0_cache_clips=6)
elif mode == "magvit_ema":  # the MAGVIT recipe's EMA of the weights, which training leaves in the model
    model = create_tokenizer("grid3d_vq", size="tiny", channels=8, codebook_size=64, recipe="magvit", weight_ema=0.5,
                             loss={"gan": None, "perceptual_weight": 0.0})
    frames, train = 16, TrainConfig(steps=2, batch_size=4, micro_batch_size=1)
else:
    model = create_tokenizer("grid3d", size="tiny", channels=8)
    frames, train = 16, TrainConfig(steps=2, batch_size=4, micro_batch_size=1)
clips = TrainClips(build_dataset(DataConfig(dataset="samples", resolution=32, frames=frames, cache_dir=str(out / "cache"))), seed=0)
if mode == "generator":
    from timm.utils import ModelEmaV3

    from harness.config import GenerationConfig
    from harness.generation.sit import SiT
    from harness.generation.stage import train_generator

    with torch.no_grad():
        latents = model.encode(clips.batch(list(range(8)))[0]).latents  # [8, C, t, h, w]
    generator = SiT(latents[0], size="tiny", patch=2)
    ema = ModelEmaV3(generator, decay=0.9, use_warmup=True)
    cfg = GenerationConfig(steps=3, batch_size=4, lr=1e-3, checkpoint_every=2)
    trainable = [*generator.parameters(), *ema.module.parameters()]
    initial = torch.cat([p.detach().flatten().clone() for p in trainable])
    result = train_generator(generator, ema, latents, torch.zeros(8, dtype=torch.long), True, cfg, out / "gen.pt", {}, seed=0)
    assert len(result.history["loss"]) == 3
else:
    trainable = [p for p in model.parameters() if p.requires_grad]
    initial = torch.cat([p.detach().flatten().clone() for p in trainable])
    train_tokenizer(model, clips, train, out / "ckpt.pt", seed=0, accelerator=accelerator, show_progress=False)
flat = torch.cat([p.detach().flatten() for p in trainable])
gathered = [torch.zeros_like(flat) for _ in range(dist.get_world_size())]
dist.all_gather(gathered, flat)
if accelerator.is_main_process:
    report = {"world_size": dist.get_world_size(), "backend": dist.get_backend(),
              "max_param_difference": float((gathered[0] - gathered[1]).abs().max()),
              "changed_from_init": bool((flat - initial).abs().max() > 0),
              "stage0_cache_rows": len(torch.load(out / "stage0_cache.pt", weights_only=True)) if (out / "stage0_cache.pt").is_file() else None}
    (out / "ddp_report.json").write_text(json.dumps(report))
accelerator.wait_for_everyone()
