"""VideoFlexTok: token counts per budget, nested dropout, FSQ round trip, time-block-causal masks, long videos, training."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from harness.data.decode import decode_frames, to_model_range
from harness_core.registry import create_tokenizer
from video_tokenizers.videoflextok import (FSQ_LEVELS, PAPER_81F_672, VideoFlexTok, decoder_attention_mask,
                                           encoder_attention_mask, latent_mosaic)

VAE = {"name": "grid3d", "kwargs": {"size": "tiny", "channels": 8, "causal": True, "latent_channels": 16, "chunk_frames": 17}}
SMALL = dict(size="tiny", vae=VAE, n_max=8, enc_depth=1, enc_dim=32, enc_heads=2, dec_depth=2, dec_dim=32, dec_heads=2,
             sample_steps=2)


def make_model(**overrides) -> VideoFlexTok:
    torch.manual_seed(0)
    return create_tokenizer("videoflextok", **{**SMALL, **overrides})


def randomize_zero_init(model: VideoFlexTok) -> None:
    """Give the adaLN-zero and output layers random weights, so the decoder output depends on its inputs."""
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if (".ada" in name or name.startswith("final.")) and p.requires_grad:
                p.copy_(0.05 * torch.randn(p.shape, generator=gen))


@pytest.fixture(scope="module")
def videos33(sample_paths) -> torch.Tensor:
    """Two real 33-frame 32x32 clips, ``float32 [2, 3, 33, 32, 32]`` in ``[-1, 1]``."""
    return to_model_range(np.stack([decode_frames(p, start=0, num_frames=33, resolution=32) for p in sample_paths[:2]]))


def test_registered_and_contract():
    model = make_model()
    assert model.flexible and not model.continuous and model.chunk_frames is None
    assert model.codebook_size() == int(np.prod(FSQ_LEVELS)) == 64000
    assert model.token_budgets() == [1, 2, 4, 8]
    assert model.tokens_per_video(17, 32, 32) == 5 * 8 and model.tokens_per_video(33, 32, 32) == 9 * 8
    assert model.tokens_per_video(81, 128, 128) == 21 * 8
    assert PAPER_81F_672["tokens_per_video"] == model.timesteps(PAPER_81F_672["frames"]) * PAPER_81F_672["budget"]
    assert all(not p.requires_grad for p in model.vae.parameters())
    model.train()
    assert not model.vae.training


def test_token_count_is_timesteps_times_budget(videos33):
    model = make_model()
    for frames, timesteps in ((17, 5), (33, 9)):
        for k in model.token_budgets():
            tokens = model.encode(videos33[:, :, :frames], budget=k)
            assert tokens.tokens_per_video == timesteps * k
            assert tokens.indices.shape == (2, timesteps, k) and tokens.indices.dtype == torch.int64
            assert tokens.latents.shape == (2, timesteps, k, len(FSQ_LEVELS))
            assert tokens.info["padded_frames"] == 0
    # a budget prefix is exactly the prefix of the full token sequence
    full, four = model.encode(videos33, budget=8), model.encode(videos33, budget=4)
    assert torch.equal(full.indices[:, :, :4], four.indices)
    for bad in (0, 9, 2.5):
        with pytest.raises(ValueError, match="budget"):
            model.encode(videos33, budget=bad)


def test_fsq_codes_round_trip_through_indices(videos33):
    model = make_model()
    tokens = model.encode(videos33)
    assert int(tokens.indices.min()) >= 0 and int(tokens.indices.max()) < 64000
    codes = model.fsq.indices_to_codes(tokens.indices.flatten(1).int())
    assert torch.equal(codes.view_as(tokens.latents), tokens.latents)
    # and the indices of those codes are the same indices
    assert torch.equal(model.fsq.codes_to_indices(codes).long(), tokens.indices.flatten(1))


def test_encoder_mask_forbids_attention_to_later_timesteps():
    t, patches, registers = 5, 4, 8
    mask = encoder_attention_mask(t, patches, registers)
    time = torch.cat([torch.arange(t).repeat_interleave(patches), torch.arange(t).repeat_interleave(registers)])
    is_register = torch.cat([torch.zeros(t * patches, dtype=torch.bool), torch.ones(t * registers, dtype=torch.bool)])
    index = torch.cat([torch.zeros(t * patches, dtype=torch.long), torch.arange(registers).repeat(t)])
    later = time[None, :] > time[:, None]
    assert not (mask & later).any()  # no token, in particular no register, attends to a later timestep
    reg_q = is_register[:, None].expand_as(mask)
    # a register sees every patch of its own timestep, and its own-timestep registers causally
    same = time[None, :] == time[:, None]
    assert (mask[reg_q & same & ~is_register[None, :]]).all()
    causal = is_register[None, :] & reg_q & same
    assert torch.equal(mask[causal], (index[None, :] <= index[:, None]).expand_as(mask)[causal])
    assert not (mask & ~is_register[:, None] & is_register[None, :]).any()  # patches never read registers
    dec = decoder_attention_mask(t, patches, registers)
    assert not (dec & later).any() and dec[~later].all()


def test_encoder_registers_do_not_depend_on_later_timesteps(videos33):
    model = make_model()
    clean = model.vae_latents(videos33[:, :, :17])
    changed = clean.clone()
    changed[:, :, 3:] = torch.randn_like(changed[:, :, 3:])
    _, idx = model.encode_latents(clean)
    _, idx_changed = model.encode_latents(changed)
    assert torch.equal(idx[:, :3], idx_changed[:, :3])
    assert not torch.equal(idx[:, 3:], idx_changed[:, 3:])


def test_registers_beyond_budget_have_no_effect_on_decoder(videos33):
    model = make_model()
    randomize_zero_init(model)
    k = 2
    tokens = model.encode(videos33[:, :, :17], budget=model.n_max)
    tokens.info["keep"] = k
    out = model.decode(tokens)
    other = tokens.latents.clone()
    other[:, :, k:] = -other[:, :, k:] + 0.3
    tokens_other = type(tokens)(latents=other, tokens_per_video=tokens.tokens_per_video, indices=None, info=dict(tokens.info))
    assert torch.equal(model.decode(tokens_other), out)
    # the velocity itself ignores them too, while kept registers do matter (so the check can fail)
    clean = model.vae_latents(videos33[:, :, :17])
    sigma = torch.full((2, 5), 0.5)
    keep = (torch.arange(model.n_max) < k).expand(2, 5, -1)
    null = torch.zeros(2, dtype=torch.bool)
    v = model.velocity(clean, sigma, tokens.latents, keep, null)
    assert torch.equal(model.velocity(clean, sigma, other, keep, null), v)
    kept_changed = tokens.latents.clone()
    kept_changed[:, :, :k] = -kept_changed[:, :, :k] + 0.3
    assert not torch.allclose(model.velocity(clean, sigma, kept_changed, keep, null), v)


def test_long_video_padding_chunks_and_deterministic_decoding(videos33):
    model = make_model()
    randomize_zero_init(model)
    video = videos33[:1, :, :20]
    tokens = model.encode(video, budget=4)
    assert tokens.info["padded_frames"] == 13 and tokens.info["chunks"] == 2
    assert tokens.tokens_per_video == 9 * 4 == model.timesteps(20) * 4
    recon = model.decode(tokens)
    assert recon.shape == video.shape and recon.abs().max() <= 1
    assert torch.equal(model.decode(tokens), recon)  # seeded initial noise
    model.sample_seed = 1
    assert not torch.equal(model.decode(tokens), recon)


def test_rejects_bad_configuration():
    with pytest.raises(ValueError, match="run:"):
        make_model(vae="run:abc")
    with pytest.raises(ValueError, match="causal"):
        make_model(vae={"name": "grid3d", "kwargs": {"size": "tiny", "channels": 8, "causal": False, "latent_channels": 16}})
    with pytest.raises(ValueError, match="size"):
        make_model(size="huge")
    with pytest.raises(ValueError, match="latent_mosaic"):
        make_model(latent_mosaic=1.5)
    with pytest.raises(ValueError, match="4 x 4"):
        latent_mosaic(torch.zeros(2, 16, 5, 3, 8), 1.0)
    model = make_model()
    with pytest.raises(ValueError, match="multiples of 16"):
        model.encode(torch.zeros(1, 3, 17, 40, 40))


def test_accepts_built_vae_and_trains_on_real_clips(videos33):
    vae = create_tokenizer("grid3d", **VAE["kwargs"])
    before = {k: v.clone() for k, v in vae.state_dict().items()}
    model = make_model(vae=vae)
    assert model.vae is vae
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    clips = videos33[:, :, :17]
    for step in range(4):
        out = model.training_losses(clips, step)
        assert {"loss", "rf_loss"} <= set(out)
        assert torch.isfinite(out["loss"])
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
    assert bool(model.latent_stats_ready)
    assert all(torch.equal(before[k], v) for k, v in vae.state_dict().items())  # the VAE stays frozen
    assert model.registers.grad is not None and model.registers.grad.abs().sum() > 0  # gradients reach the encoder
    assert "vae.encoder.stem.conv.weight" in model.state_dict()


def mosaic_sources(clean: torch.Tensor, mixed: torch.Tensor) -> torch.Tensor:
    """For every output pixel, the batch index of the chunk whose whole ``[C, t]`` column it equals: ``[N, h, w]``."""
    columns = clean.permute(0, 3, 4, 1, 2).flatten(3)  # [N, h, w, C*t]
    matches = (mixed.permute(0, 3, 4, 1, 2).flatten(3)[:, None] == columns[None]).all(-1)  # [N, N, h, w]
    assert (matches.sum(1) == 1).all(), "every pixel column comes from exactly one chunk"
    return matches.float().argmax(1)


def test_latent_mosaic_takes_four_rectangles_from_chunks_of_the_batch():
    torch.manual_seed(0)
    clean = torch.randn(12, 4, 5, 8, 8)
    assert torch.equal(latent_mosaic(clean, 0.0), clean)
    torch.manual_seed(1)
    mixed = latent_mosaic(clean, 1.0)
    torch.manual_seed(1)
    assert torch.equal(latent_mosaic(clean, 1.0), mixed)  # drawn from the global generator
    sources = mosaic_sources(clean, mixed)
    for chunk, source in enumerate(sources):
        assert (source[:2, :2] == chunk).all()  # the chunk keeps its own top-left rectangle
        layouts = [(cy, cx) for cy in range(2, 7) for cx in range(2, 7)
                   if all(source[ys, xs].unique().numel() == 1
                          for ys in (slice(0, cy), slice(cy, 8)) for xs in (slice(0, cx), slice(cx, 8)))]
        assert layouts, f"chunk {chunk}: sources are not four rectangles cut at one row and one column"
    assert (sources != torch.arange(12)[:, None, None]).any(dim=(1, 2)).sum() >= 9  # nearly every chunk is mixed


def test_flow_loss_trains_on_mosaics_only_when_configured(monkeypatch):
    import video_tokenizers.videoflextok as module
    calls, real = [], module.latent_mosaic
    monkeypatch.setattr(module, "latent_mosaic", lambda clean, prob: calls.append(prob) or real(clean, prob))
    clean = torch.randn(4, 16, 5, 8, 8)
    make_model().flow_loss(clean)
    assert calls == []
    assert torch.isfinite(make_model(latent_mosaic=0.5).flow_loss(clean)["loss"])
    assert calls == [0.5]


def test_decode_from_indices_alone_matches_decode_from_codes(sample_videos):
    """Generators hand back FSQ indices only; decoding them must equal decoding the encoder's codes."""
    from harness_core.api import Tokens
    from harness_core.registry import create_tokenizer

    model = create_tokenizer("videoflextok", size="tiny", sample_steps=2).eval()
    video = torch.cat([sample_videos[:1], sample_videos[:1, :, :1]], dim=2)[..., :32, :32]  # 17 frames
    tokens = model.encode(video, budget=4)
    from_codes = model.decode(tokens)
    from_indices = model.decode(Tokens(latents=None, indices=tokens.indices, tokens_per_video=tokens.tokens_per_video, info=tokens.info))
    assert torch.equal(from_codes, from_indices)


def test_stage0_batches_are_seeded_by_step_and_hold_distinct_clips():
    from harness.train import stage0_batch

    cache = torch.arange(10.0)[:, None]
    first = stage0_batch(cache, seed=0, step=3, batch_size=6, first=0, size=6)
    assert torch.equal(first, stage0_batch(cache, seed=0, step=3, batch_size=6, first=0, size=6))
    assert len(set(first.flatten().tolist())) == 6
    halves = torch.cat([stage0_batch(cache, 0, 3, 6, 0, 3), stage0_batch(cache, 0, 3, 6, 3, 3)])
    assert torch.equal(halves, first)  # processes / micro-batches take disjoint slices of one global batch
    assert not torch.equal(first, stage0_batch(cache, 0, 4, 6, 0, 6))


@pytest.mark.slow
def test_stage0_cache_in_a_suite_sweeps_budgets_and_is_reused(tmp_path):
    """The engine path: causal grid3d, then VideoFlexTok on cached VAE latents; one row per budget."""
    import json
    import subprocess
    import sys

    import yaml

    from conftest import REPO
    from harness.config import load_suite
    from harness.runner import SuiteRunner

    vft = {"id": "vft", "name": "videoflextok", "budgets": [1, 8],
           "kwargs": {**{k: v for k, v in SMALL.items() if k != "vae"}, "vae": "run:vae", "guidance_scale": 1.0},
           "train": {"steps": 3, "batch_size": 2, "stage0_cache_clips": 4}}
    suite = {"name": "vft", "output_dir": str(tmp_path / "results"), "seed": 0,
             "data": {"dataset": "samples", "resolution": 32, "frames": 17, "eval_clips_per_video": 1},
             "train": {"steps": 2, "batch_size": 2, "checkpoint_every": 1},
             "evaluate": {"metrics": ["psnr"], "batch_size": 3},
             "tokenizers": [{"id": "vae", "name": "grid3d", "kwargs": VAE["kwargs"]}, vft]}
    path = tmp_path / "suite.yaml"
    path.write_text(yaml.safe_dump(suite))

    def run() -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "harness", "run", str(path), "-q"], capture_output=True, text=True, cwd=REPO, timeout=900)

    first = run()
    assert first.returncode == 0, first.stderr
    run_dir = tmp_path / "results" / "vft"
    cache = torch.load(run_dir / "stage0_cache.pt", weights_only=True)
    runner = SuiteRunner(load_suite(path), show_progress=False)
    model = runner.context.tokenizer(runner.suite.tokenizers[1])  # loads its run:vae first
    videos = runner.context.train_clips.batch([0, 1, 2, 3]).videos
    assert cache.shape == (4, 1, 16, 5, 4, 4)  # 4 clips x 1 chunk x VAE latent [16, 5, 32/8, 32/8]
    assert torch.allclose(cache, model.stage0_features(videos), atol=1e-5)
    for k in (1, 8):
        metrics = json.loads((run_dir / "budgets" / str(k) / "metrics.json").read_text())
        assert metrics["metrics"]["psnr"] > 5
    board = (tmp_path / "results" / "leaderboard.md").read_text()
    assert "vft@1" in board and "vft@8" in board

    stamp = (run_dir / "stage0_cache.pt").stat().st_mtime_ns
    second = run()
    assert second.returncode == 0, second.stderr
    assert "train: reusing" in second.stderr
    assert (run_dir / "stage0_cache.pt").stat().st_mtime_ns == stamp


def test_stage0_cache_is_rejected_for_tokenizers_without_a_frozen_stage0(tmp_path):
    import yaml

    from harness.config import SuiteError, load_suite

    suite = {"name": "bad", "data": {"dataset": "samples", "resolution": 32, "frames": 16},
             "tokenizers": [{"id": "g", "name": "grid3d", "kwargs": {"size": "tiny"}, "train": {"stage0_cache_clips": 8}}]}
    path = tmp_path / "suite.yaml"
    path.write_text(yaml.safe_dump(suite))
    with pytest.raises(SuiteError, match=r"tokenizers\[g\]\.train\.stage0_cache_clips: grid3d has no frozen stage 0"):
        load_suite(path)


def test_registers_carry_information_after_training_on_real_clips(sample_paths):
    """End to end through stage0_losses: after 150 steps on nine real 17-frame clips the FSQ codes differ between
    clips (no collapse to one code) and the flow decoder predicts the clean latent from pure noise far better
    with the registers than with the null condition."""
    torch.manual_seed(0)
    model = create_tokenizer("videoflextok", size="tiny", vae=VAE, n_max=8, noise_shift=3.0)
    clips = [decode_frames(p, start=s, num_frames=17, resolution=32) for p in sample_paths for s in (0, 20, 40)]
    features = model.stage0_features(to_model_range(np.stack(clips)))
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=3e-4)
    for step in range(150):
        loss = model.stage0_losses(features, step)["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    with torch.no_grad():
        latents = model.normalize(features.flatten(0, 1))
        codes, indices = model.encode_latents(latents)
        n, _, t = latents.shape[:3]
        noise = torch.randn(latents.shape, generator=torch.Generator().manual_seed(0))
        keep = torch.ones(n, t, model.n_max, dtype=torch.bool)

        def clean_error(null: bool) -> float:
            velocity = model.velocity(noise, torch.ones(n, t), codes, keep, torch.full((n,), null))
            return float((velocity - (noise - latents)).pow(2).mean())

        with_registers, without = clean_error(False), clean_error(True)
    assert len({tuple(row.tolist()) for row in indices[:, :, 0]}) >= 5  # first-register codes of 9 clips
    assert with_registers < 0.7 * without, (with_registers, without)
