"""OmniTokenizer (issue 26 item 2): Table 7 token shapes, the two-stage recipe on real clips, causality, decoding."""
from __future__ import annotations

import pytest
import torch

from conftest import real_clips

from harness_core.api import Tokens
from harness.chunks import reconstruct_video
from video_tokenizers.omnitokenizer import (OMNITOKENIZER_PRESETS, OmniTokenizer, omnitokenizer_param_counts,
                                            rope_angles)

NO_PERCEPTUAL_GAN = {"perceptual_weight": 0.0, "gan": None}


@pytest.fixture(scope="module")
def clips17(sample_paths) -> torch.Tensor:
    """Six real 17-frame 32x32 clips (two per sample video), ``float32 [6, 3, 17, 32, 32]`` in [-1, 1]."""
    return real_clips(sample_paths, (0, 40), frames=17, resolution=32)


def test_registered_with_presets():
    from harness_core.registry import PRESETS, TOKENIZERS, create_preset

    assert TOKENIZERS.get("omnitokenizer") is OmniTokenizer
    assert {"omnitokenizer_dv", "omnitokenizer_cv", "omnitokenizer_dv_tiny", "omnitokenizer_cv_tiny"} <= set(PRESETS.names())
    dv, cv = create_preset("omnitokenizer_dv_tiny"), create_preset("omnitokenizer_cv_tiny")
    assert (dv.continuous, cv.continuous) == (False, True)
    assert dv.codebook_size() == 256 and cv.codebook_size() is None
    assert "701b619003b3e941e769269c7626dbf111d0377e" in OmniTokenizer.recipe_source


@pytest.mark.parametrize("name", ["dv", "cv"])
def test_paper_configuration_gives_table7_shapes_on_meta(name):
    """CoordTok Table 7: (1 + 16) x 128 x 128 x 3 -> (1 + 4) x 16 x 16, on the paper configuration (meta device)."""
    with torch.device("meta"):
        model = OmniTokenizer(**OMNITOKENIZER_PRESETS[name]).eval()
        video = torch.empty(2, 3, 17, 128, 128)
        features = model.encode_features(video)
        latents = features[:, :8] if name == "cv" else features
        recon = model.decode_latents(latents)
    assert features.shape == (2, 8 * (2 if name == "cv" else 1), 5, 16, 16)
    assert recon.shape == (2, 3, 17, 128, 128)
    assert model.latent_shape(17, 128, 128) == (5, 16, 16)
    assert model.chunk_frames == 17 and model.width == 512 and model.window == 8
    assert model.tokens_per_video(17, 128, 128) == 1280
    assert model.tokens_per_video(128, 128, 128) == 8 * 1280  # eight 17-frame chunks, the last one padded
    assert model.codebook_size() == (8192 if name == "dv" else None)


def test_parameter_counts_of_the_presets():
    counts = omnitokenizer_param_counts()
    assert set(counts) == {f"omnitokenizer_{n}" for n in OMNITOKENIZER_PRESETS}
    # cv differs from dv only by the second half of the moments projection (512 -> 8 more outputs)
    assert counts["omnitokenizer_cv"] - counts["omnitokenizer_dv"] == 512 * 8 + 8
    assert 40e6 < counts["omnitokenizer_dv"] < 60e6 and counts["omnitokenizer_dv_tiny"] < 1e6


def test_rope_rotates_pairs_by_column_then_row():
    angles = rope_angles(2, 3, 8)  # 2 frequencies: 1 and 1e-2
    assert angles.shape == (6, 4)
    row1_col2 = angles[1 * 3 + 2]
    torch.testing.assert_close(row1_col2, torch.tensor([2.0, 1.0, 2e-2, 1e-2]))


def _clone_with_later_frames_changed(video: torch.Tensor, first_changed: int) -> torch.Tensor:
    other = video.clone()
    other[:, :, first_changed:] = other[:, :, first_changed:].flip(-1)
    return other


@pytest.mark.parametrize("variant", ["dv", "cv"])
def test_temporal_attention_is_causal(variant, clips17):
    """Changing frames 13..16 (latent frame 4) leaves latent frames 0..3 unchanged and changes latent frame 4;
    the decoder's frames 1..12 do not depend on latent frame 4 either."""
    torch.manual_seed(0)
    model = OmniTokenizer(variant=variant, size="tiny", codebook_size=64, loss=NO_PERCEPTUAL_GAN).eval()
    video = clips17[:2]
    changed = _clone_with_later_frames_changed(video, 13)
    with torch.no_grad():
        before, after = model.encode_features(video), model.encode_features(changed)
        torch.testing.assert_close(after[:, :, :4], before[:, :, :4], rtol=0, atol=1e-6)
        assert (after[:, :, 4] - before[:, :, 4]).abs().max() > 1e-3
        latents = before[:, :8]
        edited = latents.clone()
        edited[:, :, 4] = torch.randn_like(edited[:, :, 4])
        torch.testing.assert_close(model.decode_latents(edited)[:, :, :13], model.decode_latents(latents)[:, :, :13],
                                   rtol=0, atol=1e-6)


def test_dv_decodes_from_indices_alone(clips17):
    torch.manual_seed(0)
    model = OmniTokenizer(variant="dv", size="tiny", codebook_size=64, loss=NO_PERCEPTUAL_GAN)
    video = clips17[:2]
    model.train()
    with torch.no_grad():  # codebook initialization from a training batch and one EMA update, as in training
        model.quantize(model.encode_features(video))
    model.eval()
    with torch.no_grad():
        tokens = model.encode(video)
        assert tokens.indices.dtype == torch.int64 and tokens.indices.shape == (2, 5, 4, 4)
        assert 0 <= int(tokens.indices.min()) and int(tokens.indices.max()) < 64
        torch.testing.assert_close(model.indices_to_latents(tokens.indices), tokens.latents)
        from_latents = model.decode(tokens)
        from_indices = model.decode(Tokens(latents=None, tokens_per_video=tokens.tokens_per_video, indices=tokens.indices))
    torch.testing.assert_close(from_indices, from_latents)
    assert from_indices.shape == video.shape


def test_long_videos_go_through_17_frame_chunks(clips17):
    """A 32-frame video: two 17-frame chunks (the second padded by repeating the last frame), 2 x 80 tokens."""
    model = OmniTokenizer(variant="cv", size="tiny", loss=NO_PERCEPTUAL_GAN).eval()
    video = torch.cat([clips17[:1], clips17[1:2]], dim=2)[:, :, :32]
    recon, count = reconstruct_video(model, video)
    assert recon.shape == video.shape and count == model.tokens_per_video(32, 32, 32) == 160
    assert model.temporal_boundaries(32) == [17]


def test_inflation_at_the_video_stage_follows_the_official_average_strategy():
    model = OmniTokenizer(variant="dv", size="tiny", codebook_size=64, image_steps=4, loss=NO_PERCEPTUAL_GAN)
    assert model.fresh_optimizer_at(12) == [4] and model.fresh_optimizer_at(4) == []
    assert [model.batch_kind(s) for s in range(8)] == ["image"] * 4 + ["video", "joint_image"] * 2
    assert model.inflate_video_patches() is True and model.inflate_video_patches() is False
    image, video = model.encoder.image_patches, model.encoder.video_patches
    torch.testing.assert_close(video.proj.weight, torch.cat([image.proj.weight / 4] * 4, dim=1))
    torch.testing.assert_close(video.norm_in.weight, torch.cat([image.norm_in.weight / 4] * 4))
    pixels = model.decoder
    torch.testing.assert_close(pixels.video_pixels.proj.weight, torch.cat([pixels.image_pixels.proj.weight / 4] * 4))
    assert "video_patches_inflated" in model.state_dict()
    assert OmniTokenizer(variant="dv", size="tiny", image_steps=0).inflate_video_patches() is False


def _recon_l1(model: OmniTokenizer, video: torch.Tensor) -> float:
    model.eval()
    with torch.no_grad():
        error = float((model.reconstruct(video) - video).abs().mean())
    model.train()
    return error


@pytest.mark.parametrize("variant", ["dv", "cv"])
def test_two_stage_training_on_real_clips_with_every_loss_term(variant, clips17):
    """10 steps (3 image-stage steps, then video / image alternation) with L1, LPIPS (real VGG weights), the 2D GAN
    (image stage), the 3D GAN (video batches), feature matching and commitment or KL: every term is logged, the
    reconstruction L1 of the training clips goes down and every parameter, the discriminators' included, gets a
    gradient at some step (the engine's single backward of loss + disc_loss). Small discriminators (16 filters,
    2 layers) keep it fast."""
    torch.manual_seed(0)
    model = OmniTokenizer(variant=variant, size="tiny", codebook_size=64, image_steps=3, images_per_clip=2,
                          loss={"disc_start": 1, "disc_channels": 16, "disc_layers": 2})
    train = clips17
    generator = torch.Generator().manual_seed(0)
    disc_params = list(model.discriminator.parameters())
    disc_ids = {id(p) for p in disc_params}
    main = [p for p in model.parameters() if id(p) not in disc_ids]
    optimizers = [torch.optim.Adam(main, lr=3e-3, betas=(0.5, 0.9)), torch.optim.Adam(disc_params, lr=1e-4, betas=(0.5, 0.9))]
    model.train()
    with torch.no_grad():  # codebook initialization on a training batch, as in the engine's first step
        model.training_losses(train[:2], step=0)
    before = _recon_l1(model, train)
    reached, nonzero, seen = set(), set(), set()
    for step in range(10):
        batch = train[torch.randperm(len(train), generator=generator)[:2]]
        out = model.training_losses(batch, step)
        seen |= {f"{model.batch_kind(step)}:{k}" for k in out}
        total = out["loss"] + out.get("disc_loss", 0.0)
        for opt in optimizers:
            opt.zero_grad()
        total.backward()
        reached |= {name for name, p in model.named_parameters() if p.grad is not None}
        nonzero |= {name for name, p in model.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
        for opt in optimizers:
            opt.step()
    after = _recon_l1(model, train)
    penalty = "commitment" if variant == "dv" else "kl"
    for key in ("recon", "perceptual", "g_adv", "feature_matching", "d_2d", penalty):
        assert f"image:{key}" in seen, key
    for key in ("recon", "perceptual", "g_adv", "feature_matching", "d_3d", penalty):
        assert f"video:{key}" in seen, key
    assert "joint_image:perceptual" in seen and "joint_image:g_adv" not in seen  # official stage 2: image GAN weight 0
    assert bool(model.video_patches_inflated)
    missing = sorted(name for name, _ in model.named_parameters() if name not in reached)
    assert not missing, missing
    # the hinge loss's gradient to a discriminator's last bias is 0.5 x (fake - real patches inside the margin),
    # exactly 0 while every logit lies in (-1, 1), as early in training; every other parameter moves
    zero = {name for name, _ in model.named_parameters() if name not in nonzero}
    assert zero <= {"discriminator.image.head.bias", "discriminator.video.head.bias"}, zero
    assert after < 0.95 * before, (before, after)


def test_cv_starts_from_a_trained_dv_like_the_official_stage3():
    torch.manual_seed(0)
    dv = OmniTokenizer(variant="dv", size="tiny", codebook_size=64, image_steps=4)
    dv.inflate_video_patches()
    cv = OmniTokenizer(variant="cv", size="tiny", init_from=dv)
    for name, value in dv.state_dict().items():
        if name.startswith(("encoder.", "decoder.", "post_quant.", "discriminator.")):
            torch.testing.assert_close(cv.state_dict()[name], value, rtol=0, atol=0)
    assert bool(cv.video_patches_inflated) and cv.pre_quant.weight.shape == (16, 64)
    assert all(p.requires_grad for p in cv.parameters())
    with pytest.raises(ValueError, match="init_from: the source model's encoder has another shape"):
        OmniTokenizer(variant="cv", size="tiny", width=32, heads=2, init_from=dv)
    with pytest.raises(ValueError, match="init_from: expected a trained omnitokenizer"):
        OmniTokenizer(variant="cv", size="tiny", init_from=torch.nn.Linear(2, 2))


def test_bad_input_raises_clear_errors():
    model = OmniTokenizer(variant="dv", size="tiny", codebook_size=64, loss=NO_PERCEPTUAL_GAN).eval()
    with pytest.raises(ValueError, match=r"frames must be 1 \+ a multiple of 4"):
        model.encode(torch.zeros(1, 3, 16, 32, 32))
    with pytest.raises(ValueError, match="multiples of 32"):
        model.encode(torch.zeros(1, 3, 17, 40, 40))
    with pytest.raises(ValueError, match=r"expected float tensor \[B, 3, T, H, W\]"):
        model.encode(torch.zeros(3, 17, 32, 32))
    with pytest.raises(ValueError, match="fixed budget of 80"):
        model.encode(torch.zeros(1, 3, 17, 32, 32), budget=10)
    with pytest.raises(ValueError, match="indices: expected int64"):
        model.decode(Tokens(latents=None, tokens_per_video=80, indices=torch.zeros(1, 80, dtype=torch.long)))
    with pytest.raises(ValueError, match="neither latents nor indices"):
        model.decode(Tokens(latents=None, tokens_per_video=80))
    with pytest.raises(ValueError, match="variant must be 'dv'"):
        OmniTokenizer(variant="vq")
    with pytest.raises(ValueError, match="size must be one of"):
        OmniTokenizer(size="huge")
    with pytest.raises(ValueError, match="unknown option.*'gan_weight'"):
        OmniTokenizer(loss={"gan_weight": 1.0})
    with pytest.raises(ValueError, match="chunk_frames must be 1 \\+ a multiple"):
        OmniTokenizer(chunk_frames=16)
    with pytest.raises(ValueError, match="cv variant is continuous"):
        OmniTokenizer(variant="cv").indices_to_latents(torch.zeros(1, 5, 4, 4, dtype=torch.long))
