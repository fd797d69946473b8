"""LARP (issue 26, item 1): registry, Table 7 geometry of LARP-L-Long on the meta device, training of the tiny
configuration on real clips with every loss term, stochastic VQ, decoding from indices, the AR generator's view of
the tokens, bad input."""
from __future__ import annotations

import pytest
import torch

from conftest import real_clips

from harness.chunks import encode_video, reconstruct_video
from harness.generation.ar import ARTransformer
from harness.generation.tokens import decode as decode_generated
from harness.generation.tokens import pack, unpack
from harness.train import TrainingObjective
from harness_core.api import Tokens
from harness_core.layers import sincos_pos_embed
from video_tokenizers.larp import LARP, LARP_PRESETS, larp_param_counts, video_sincos

TINY = {"size": "tiny", "resolution": 32, "codebook_size": 512, "max_steps": 10}


@pytest.fixture(scope="module")
def clips(sample_paths) -> torch.Tensor:
    """Six real 16-frame 32x32 clips (two per sample video), ``float32 [6, 3, 16, 32, 32]`` in ``[-1, 1]``."""
    return real_clips(sample_paths, (0, 24), frames=16, resolution=32)


def test_registered_with_presets():
    from harness_core.registry import PRESETS, TOKENIZERS

    assert TOKENIZERS.get("larp") is LARP
    assert PRESETS.get("larp_L_long").kwargs == {"size": "L_long"}
    assert PRESETS.get("larp_tiny").kwargs == {"size": "tiny", "codebook_size": 512}
    assert set(LARP_PRESETS) == {"L_long", "tiny"}
    assert "hywang66/LARP@8aaed63" in LARP.recipe_source


def test_paper_configuration_matches_table7_on_meta_device():
    """LARP-L-Long (meta device): 1024 codes of 8192 per 16x128x128 chunk (Table 7), 8192 tokens for 128 frames."""
    with torch.device("meta"):
        tok = LARP(size="L_long").eval()
        video = torch.empty(2, 3, 16, 128, 128)
        with torch.no_grad():
            tokens = tok.encode(video)
            recon = tok.decode(tokens)
            from_indices = tok.decode(Tokens(latents=None, tokens_per_video=tokens.tokens_per_video,
                                             indices=tokens.indices))
    assert tokens.indices.shape == (2, 1024) and tokens.indices.dtype == torch.int64
    assert tokens.latents.shape == (2, 1024, 16) and tokens.tokens_per_video == 1024
    assert recon.shape == from_indices.shape == (2, 3, 16, 128, 128)
    assert tok.tokens_per_video(128, 128, 128) == 8 * 1024 == 8192
    assert (tok.chunk_frames, tok.continuous, tok.codebook_size()) == (16, False, 8192)
    assert tok.patch_pe.shape == (1, 4 * 16 * 16, 768)  # 4x8x8 patches of 16x128x128
    counts = larp_param_counts()
    # encoder + quantizer + decoder; the README publishes 173M for LARP-L-Long (docs/larp.md)
    assert counts["L_long"] == 172_179_984
    assert larp_param_counts(include_prior=True)["L_long"] - counts["L_long"] == 21_700_240  # gptc-S
    assert sum(p.numel() for p in tok.discriminator.parameters()) == 38_205_953


def test_positions_follow_mae_layout():
    """Patch positions: MAE 2D (first half encodes the column) plus 1D time, each full width; (t, h, w) order."""
    dim, t, side = 16, 3, 4
    grid = video_sincos(t, side, dim).view(t, side, side, dim)
    half = sincos_pos_embed((side,), dim // 2, convention="mae")
    time = sincos_pos_embed((t,), dim, convention="mae")
    expected = time[:, None, None] + torch.cat([half[None, :].expand(side, -1, -1), half[:, None].expand(-1, side, -1)],
                                               dim=-1)[None]
    torch.testing.assert_close(grid, expected)


def _eval_l1(tok: LARP, video: torch.Tensor) -> float:
    tok.eval()
    with torch.no_grad():
        err = float((tok.reconstruct(video) - video).abs().mean())
    tok.train()
    return err


def test_tiny_trains_on_real_clips_with_every_loss_term(clips):
    """10 Adam steps on two real clips with L1, LPIPS, GAN (from step 0, discriminator every step), LeCAM, VQ and the
    prior's latent CE: every parameter (discriminator included) gets a finite gradient at the first step, the
    deterministic reconstruction error of the clips and the prior's cross-entropy go down."""
    torch.manual_seed(0)
    tok = LARP(**TINY, d_update_every=1)
    assert tok.unused_parameters is False
    video = clips[[0, 2]]
    before = _eval_l1(tok, video)
    main = [p for n, p in tok.named_parameters() if not n.startswith("discriminator.")]
    optimizers = [torch.optim.Adam(main, lr=1e-3, betas=(0.5, 0.9)),
                  torch.optim.Adam(tok.discriminator.parameters(), lr=1e-3, betas=(0.5, 0.9))]
    history = []
    for step in range(10):
        out = tok.training_losses(video, step)
        for opt in optimizers:
            opt.zero_grad(set_to_none=True)
        (out["loss"] + out["disc_loss"]).backward()
        if step == 0:
            assert {"recon", "perceptual", "commitment", "codebook", "latent_ce", "g_adv", "disc_loss", "lecam"} <= set(out)
            assert all(torch.isfinite(v).all() for v in out.values())
            missing = [n for n, p in tok.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
            assert missing == []
            assert tok.discriminator.fc.weight.grad.abs().sum() > 0 and tok.queries.grad.abs().sum() > 0
            assert tok.prior.head.weight.grad.abs().sum() > 0
        for opt in optimizers:
            opt.step()
        history.append({k: float(v.detach()) for k, v in out.items()})
    after = _eval_l1(tok, video)
    print(f"larp tiny: L1 {before:.4f} -> {after:.4f}, latent CE {history[0]['latent_ce']:.3f} -> "
          f"{history[-1]['latent_ce']:.3f}")
    assert after < 0.8 * before
    assert history[-1]["latent_ce"] < history[0]["latent_ce"]
    assert float(tok.discriminator.lecam_ema_real) != 0.0  # LeCAM EMAs move in training


def test_gan_losses_isolated_and_discriminator_idle_between_updates(clips):
    """The generator loss never reaches the discriminator, ``disc_loss`` never reaches the tokenizer; with the
    official ``d_update_every=5`` the discriminator is idle at steps 1-4 and the tokenizer says so."""
    torch.manual_seed(0)
    tok = LARP(**TINY)
    assert tok.unused_parameters is True
    video = clips[:1]
    out = tok.training_losses(video, step=0)
    out["loss"].backward(retain_graph=True)
    assert all(p.grad is None for p in tok.discriminator.parameters())
    tokenizer_grads = {n: p.grad.clone() for n, p in tok.named_parameters() if not n.startswith("discriminator.")}
    out["disc_loss"].backward()
    for n, p in tok.named_parameters():
        if n in tokenizer_grads:
            torch.testing.assert_close(p.grad, tokenizer_grads[n])
    assert "disc_loss" not in tok.training_losses(video, step=1)
    tok.zero_grad(set_to_none=True)
    out = TrainingObjective(tok).train()(video, 3)
    out["loss"].backward()
    idle = [n for n, p in tok.named_parameters() if p.grad is None]
    assert idle and all(n.startswith("discriminator.") for n in idle)


def test_stochastic_vq_samples_in_training_and_is_deterministic_in_eval(clips):
    torch.manual_seed(0)
    tok = LARP(**TINY)
    video = clips[:2]
    with torch.no_grad():
        tok.train()
        sampled = [tok.encode(video).indices for _ in range(2)]
        tok.eval()
        first, second = tok.encode(video), tok.encode(video)
        z = tok.encode_codes(video)
    assert not torch.equal(sampled[0], sampled[1])  # temperature 0.03 sampling
    assert torch.equal(first.indices, second.indices)
    # eval picks the most cosine-similar l2-normalised code
    assert torch.equal(first.indices, (z @ tok.quantizer.codes().t()).argmax(-1))


def test_decode_from_indices_equals_decode_from_latents(clips):
    torch.manual_seed(0)
    tok = LARP(**TINY).eval()
    with torch.no_grad():
        tokens = tok.encode(clips[:2])
        from_latents = tok.decode(tokens)
        from_indices = tok.decode(Tokens(latents=None, tokens_per_video=tokens.tokens_per_video, indices=tokens.indices))
    torch.testing.assert_close(tok.quantizer.lookup(tokens.indices), tokens.latents, rtol=0, atol=0)
    torch.testing.assert_close(from_indices, from_latents, rtol=0, atol=0)
    assert from_indices.shape == (2, 3, 16, 32, 32) and from_indices.abs().max() <= 1


def test_ar_generator_consumes_the_1d_sequences(clips):
    """A 32-frame video: two chunks of 64 tokens -> one 128-token sequence the AR transformer scores and that decodes."""
    torch.manual_seed(0)
    tok = LARP(**TINY).eval()
    videos = torch.cat([clips[:2], clips[2:4]], dim=2)
    recon, count = reconstruct_video(tok, videos)
    assert recon.shape == videos.shape and count == tok.tokens_per_video(32, 32, 32) == 128
    groups = encode_video(tok, videos)
    seq, layout = pack(groups, 2, tok, 32)
    assert seq.shape == (2, 128) and seq.dtype == torch.int64
    torch.testing.assert_close(unpack(seq, layout), torch.cat([g.indices for g in groups]))
    model = ARTransformer(vocab_size=tok.codebook_size(), seq_len=128, size="tiny")
    assert torch.isfinite(model.loss(seq, torch.zeros(2, dtype=torch.long))).all()
    with torch.no_grad():
        video = decode_generated(tok, seq, layout)
    assert video.shape == videos.shape


def test_bad_input_raises_clear_errors():
    tok = LARP(size="tiny", resolution=32, codebook_size=64)
    with pytest.raises(ValueError, match="chunks of 16 frames"):
        tok.encode(torch.zeros(1, 3, 8, 32, 32))
    with pytest.raises(ValueError, match="32x32 frames"):
        tok.encode(torch.zeros(1, 3, 16, 64, 64))
    with pytest.raises(ValueError, match=r"\[B, 3, T, H, W\]"):
        tok.encode(torch.zeros(1, 1, 16, 32, 32))
    with pytest.raises(ValueError, match="fixed budget of 64"):
        tok.eval().encode(torch.zeros(1, 3, 16, 32, 32), budget=32)
    with pytest.raises(ValueError, match=r"indices: expected int64 \[B, 64\]"):
        tok.decode_indices(torch.zeros(1, 4, 4, dtype=torch.long))
    with pytest.raises(ValueError, match=r"\[0, 64\)"):
        tok.decode_indices(torch.full((1, 64), 64))
    with pytest.raises(ValueError, match="tokens.latents"):
        tok.decode(Tokens(latents=torch.zeros(1, 64, 8), tokens_per_video=64))
    with pytest.raises(ValueError, match="max_steps"):
        tok.train().training_losses(torch.zeros(1, 3, 16, 32, 32), 0)
    with pytest.raises(ValueError, match="unknown LARP size"):
        LARP(size="XL")
    with pytest.raises(ValueError, match="resolution must be a positive multiple"):
        LARP(resolution=36)
    with pytest.raises(ValueError, match="d_update_every"):
        LARP(resolution=32, d_update_every=0)
