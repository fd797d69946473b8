"""Official training recipes of the baselines (issue 26 item 3): MAGVIT's EMA of the weights (trained, evaluated,
resumed through the engine), entropy loss and 2D->3D inflation, TATS' own network, VidTok's stage-0 objective."""
from __future__ import annotations

from pathlib import Path

import torch
import yaml
from torch import nn

from harness.config import DataConfig, TrainConfig
from harness.config.load import load_suite
from harness.data.datasets import build_dataset
from harness.data.sampling import TrainClips
from harness.stages.base import Work
from harness.stages.context import RunContext
from harness.stages.train import TrainStage
from harness.train import EMA_KEY, train_tokenizer
from video_tokenizers.frame2d_vq import Frame2dVQ
from video_tokenizers.grid3d import Grid3dVAE
from video_tokenizers.grid3d_vq import Grid3dVQ
from video_tokenizers.losses import PatchDiscriminator
from video_tokenizers.tats import SamePadConv3d, SamePadConvTranspose3d, TATSAutoencoder

NO_GAN = {"gan": None, "perceptual_weight": 0.0}
#: a tiny MAGVIT-recipe grid (entropy loss on, GAN and LPIPS off for speed) with a fast-moving EMA
MAGVIT_TINY = {"size": "tiny", "channels": 8, "latent_channels": 8, "codebook_size": 64, "downsample": "avgpool",
               "weight_ema": 0.5, "loss": NO_GAN}


def _suite(tmp_path: Path) -> Path:
    suite = {"name": "recipes", "output_dir": str(tmp_path / "results"),
             "data": {"dataset": "samples", "resolution": 32, "frames": 16},
             "train": {"steps": 3, "batch_size": 2, "lr": 1.0e-3, "checkpoint_every": 1},
             "evaluate": {"metrics": ["psnr"], "batch_size": 3},
             "tokenizers": [{"id": "magvit", "name": "grid3d_vq", "kwargs": MAGVIT_TINY,
                             "generation": {"enabled": False}}]}
    path = tmp_path / "suite.yaml"
    path.write_text(yaml.safe_dump(suite))
    return path


def _weights(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().clone() for k, v in model.state_dict().items() if not k.startswith("discriminator.")}


def test_magvit_ema_weights_are_trained_kept_and_evaluated(tmp_path):
    """The engine's train stage leaves the EMA's weights in the model it hands on; the checkpoint keeps raw and
    EMA weights apart; a later stage loading the checkpoint gets the EMA's weights."""
    suite = load_suite(_suite(tmp_path))
    ctx = RunContext(suite, torch.device("cpu"), show_progress=False)
    entry = suite.tokenizers[0]
    TrainStage().run(ctx, Work(entry=entry))
    trained = _weights(ctx.models[entry.id])
    state = torch.load(ctx.run_folder(entry).checkpoint, map_location="cpu", weights_only=True)
    raw = {k: v for k, v in state["model"].items() if not k.startswith("discriminator.")}
    ema = {k.removeprefix("module."): v for k, v in state[EMA_KEY].items()}
    params = [n for n, _ in ctx.models[entry.id].named_parameters() if not n.startswith("discriminator.")]
    assert any(not torch.equal(raw[n], ema[n]) for n in params), "after 3 steps the EMA differs from the raw weights"
    for name in params:
        torch.testing.assert_close(trained[name], ema[name], rtol=0, atol=0)  # the model handed on is the EMA
    loaded = _weights(RunContext(suite, torch.device("cpu"), show_progress=False).tokenizer(entry))
    for name, value in trained.items():
        torch.testing.assert_close(loaded[name], value, rtol=0, atol=0)  # and so is the one loaded from the checkpoint


def test_magvit_ema_resumes_exactly(tmp_path):
    dataset = build_dataset(DataConfig(dataset="samples", resolution=32, frames=16, cache_dir=str(tmp_path / "cache")))

    def run(steps: int, folder: str) -> dict:
        with torch.random.fork_rng():
            torch.manual_seed(0)
            model = Grid3dVQ(**MAGVIT_TINY)
        train_tokenizer(model, TrainClips(dataset, seed=0), TrainConfig(steps=steps, batch_size=2, lr=1e-3),
                        tmp_path / folder / "checkpoint.pt", seed=1, show_progress=False)
        return torch.load(tmp_path / folder / "checkpoint.pt", map_location="cpu", weights_only=True)

    straight = run(3, "straight")
    run(1, "resumed")
    resumed = run(3, "resumed")
    for key in (EMA_KEY, "model"):
        assert straight[key].keys() == resumed[key].keys()
        for name, value in straight[key].items():
            torch.testing.assert_close(resumed[key][name], value, rtol=0, atol=0)


def test_magvit_recipe_entropy_loss_and_discriminator(sample_videos):
    torch.manual_seed(0)
    tok = Grid3dVQ(size="tiny", channels=8, codebook_size=64, loss={"perceptual_weight": 0.0, "disc_channels": 4})
    assert tok.weight_ema_decay == 0.999 and tok.loss_config.entropy_weight == 0.1
    assert tok.loss_config.disc_channel_mult == (2, 4, 4, 4, 4) and len(tok.discriminator.video.blocks) == 5
    out = tok.training_losses(sample_videos[:2, :, :, :32, :32], step=0)
    assert torch.isfinite(out["entropy"]) and torch.isfinite(out["loss"]) and "disc_loss" in out
    assert -torch.log(torch.tensor(64.0)) <= out["entropy"] <= torch.log(torch.tensor(64.0))
    without = Grid3dVQ(size="tiny", channels=8, codebook_size=64, loss={**NO_GAN, "entropy_weight": 0.0})
    assert "entropy" not in without.training_losses(sample_videos[:1, :, :, :32, :32], step=0)


def test_inflated_3d_model_reproduces_the_2d_model_on_a_static_video(sample_videos, tmp_path):
    """MAGVIT's central 2D->3D inflation: on a static clip the 3D model's codes and reconstruction equal the
    trained 2D model's on the frame, frame by frame."""
    stacks = {"channels": 8, "channel_mult": (1, 2, 2, 4), "num_res_blocks": 1, "latent_channels": 8,
              "codebook_size": 32, "downsample": "avgpool"}
    torch.manual_seed(0)
    two_d = Frame2dVQ(size=None, loss=NO_GAN, **stacks)
    frames = sample_videos[:, :, :4, :32, :32]
    opt = torch.optim.Adam(two_d.parameters(), lr=2e-3)
    for step in range(5):  # a trained 2D VQGAN (k-means codebook on the first batch, then 5 steps)
        loss = two_d.training_losses(frames, step)["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
    path = tmp_path / "frame2d.pt"
    torch.save(two_d.state_dict(), path)
    three_d = Grid3dVQ(size=None, loss=NO_GAN, init_from=str(path),
                       **{k: v for k, v in stacks.items() if k != "codebook_size"}, codebook_size=32).eval()
    two_d.eval()
    static = sample_videos[:2, :, 5:6, :32, :32].expand(-1, -1, 16, -1, -1).contiguous()
    with torch.no_grad():
        tokens_3d, recon_3d = three_d.encode(static), three_d.reconstruct(static)
        tokens_2d, recon_2d = two_d.encode(static[:, :, :1]), two_d.reconstruct(static[:, :, :1])
    assert torch.equal(tokens_3d.indices, tokens_2d.indices.expand_as(tokens_3d.indices))
    torch.testing.assert_close(recon_3d, recon_2d.expand_as(recon_3d), rtol=1e-4, atol=1e-4)
    assert (recon_3d - static).abs().mean() < 0.9  # a real reconstruction, not a constant


def test_tats_network_uses_batchnorm_and_replicate_padding(sample_videos):
    torch.manual_seed(0)
    tok = TATSAutoencoder(size="tiny", loss={"disc_start": 0, "disc_channels": 8, "disc_layers": 2,
                                             "perceptual_weight": 0.0})
    modules = [m for n, m in tok.named_modules() if not n.startswith("discriminator")]
    assert any(isinstance(m, nn.BatchNorm3d) for m in modules)
    assert not any(isinstance(m, nn.GroupNorm) for m in modules)
    convs = [m for m in modules if isinstance(m, (SamePadConv3d, SamePadConvTranspose3d))]
    assert convs and all(m.padding == "replicate" for m in convs)
    assert not any(isinstance(m, nn.Conv3d) and m.padding != (0, 0, 0) for m in modules)  # all padding by replication
    assert tok.latent_shape(16, 128, 128) == (4, 16, 16) and tok.tokens_per_video(128, 128, 128) == 8192
    assert all(isinstance(d, PatchDiscriminator) for d in (tok.discriminator.image, tok.discriminator.video))
    out = tok.training_losses(sample_videos[:2, :, :, :32, :32], step=0)
    assert all(k in out for k in ("g_adv", "feature_matching", "d_2d", "d_3d", "disc_loss"))
    out["loss"].backward()
    assert all(p.grad is not None for n, p in tok.named_parameters() if not n.startswith("discriminator."))


def test_stage0_vae_vidtok_recipe_has_perceptual_and_adversarial_terms(sample_videos):
    torch.manual_seed(0)
    vae = Grid3dVAE(size="tiny", channels=8, causal=True, latent_channels=4, chunk_frames=17, recipe="vidtok",
                    loss={"disc_channels": 8, "disc_layers": 2})
    video = torch.cat([sample_videos[:1, :, :1], sample_videos[:1]], dim=2)[..., :32, :32]  # 17 frames
    before = vae.training_losses(video, step=20_000)
    assert "perceptual" in before and "g_adv" not in before and "disc_loss" not in before
    after = vae.training_losses(video, step=20_001)
    assert after["perceptual"] > 0 and torch.isfinite(after["g_adv"]) and torch.isfinite(after["disc_loss"])
    assert "lecam_2d" in after and 0 < float(after["disc_weight"])
    plain = Grid3dVAE(size="tiny", channels=8, latent_channels=4).training_losses(sample_videos[:1, :, :, :32, :32], 0)
    assert set(plain) == {"loss", "l2", "kl"}
