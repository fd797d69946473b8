"""CoordTok: token budgets, triplane lookups, the official blocks, padding modes, the two-stage loss, and
training on real sample videos."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from harness_core.registry import create_tokenizer
from harness_core.seeding import seeded
from video_tokenizers.coordtok import (COORDTOK_SIZES, OFFICIAL_PAD_VALUE, CoordTok, bilinear_lookup,
                                       coordtok_param_counts, official_patch_index, triplane_features)


def small(**kwargs) -> CoordTok:
    torch.manual_seed(0)
    args = dict(size="tiny", width=32, heads=2, frames=16, resolution=32)
    args.update(kwargs)
    return CoordTok(**args).eval()


@pytest.mark.parametrize("budget, xy, t, c", [(1280, 16, 32, 8), (3072, 32, 32, 8)])
def test_token_budgets_of_the_paper(budget, xy, t, c):
    with torch.device("meta"):
        model = CoordTok(size="L", latent_resolution_xy=xy, latent_resolution_t=t, latent_channels=c)
    assert model.tokens_per_video(128, 128, 128) == budget
    assert model.encoder.grid == (16, 8, 8)  # Conv3D (8, 16, 16): 1024 video tokens
    assert model.decoder_grid == (128, 16, 16)  # 32,768 patch coordinates


def test_registered_and_encode_shapes():
    model = create_tokenizer("coordtok", size="tiny", width=32, heads=2, frames=16, resolution=32)
    video = torch.rand(2, 3, 16, 32, 32) * 2 - 1
    tokens = model.encode(video)
    assert tokens.tokens_per_video == 1280 == model.tokens_per_video(16, 32, 32)
    assert {k: tuple(v.shape) for k, v in tokens.latents.items()} == {"xy": (2, 8, 16, 16), "xt": (2, 8, 32, 16), "yt": (2, 8, 32, 16)}
    assert model.decode(tokens).shape == video.shape
    with pytest.raises(ValueError, match="fixed budget"):
        model.encode(video, budget=100)
    with pytest.raises(ValueError, match="32x32"):
        model.encode(torch.zeros(1, 3, 16, 64, 64))
    with pytest.raises(ValueError, match="up to 16 frames"):
        model.encode(torch.zeros(1, 3, 24, 32, 32))


def test_size_presets_follow_table5_and_param_counts_grow():
    assert (COORDTOK_SIZES["S"].encoder_layers, COORDTOK_SIZES["S"].cross_layers, COORDTOK_SIZES["S"].width) == (8, 8, 512)
    assert (COORDTOK_SIZES["B"].cross_layers, COORDTOK_SIZES["B"].decoder_layers, COORDTOK_SIZES["B"].width) == (12, 12, 768)
    assert (COORDTOK_SIZES["L"].cross_layers, COORDTOK_SIZES["L"].heads, COORDTOK_SIZES["L"].width) == (24, 16, 1024)
    counts = coordtok_param_counts()
    assert counts["S"] < counts["B"] < counts["L"]
    assert 0.7e9 < counts["L"] < 1.0e9  # ~0.85B (research notes 1.5 estimate)


def test_bilinear_lookup_exact_at_grid_nodes_and_bilinear_between():
    torch.manual_seed(0)
    plane = torch.randn(2, 5, 7, 9)
    a = torch.randint(0, 7, (2, 40)).float()
    b = torch.randint(0, 9, (2, 40)).float()
    out = bilinear_lookup(plane, a, b)
    expected = torch.stack([plane[i][:, a[i].long(), b[i].long()].T for i in range(2)])
    assert torch.equal(out, expected)
    # between nodes: same as grid_sample with align_corners=True
    a, b = torch.rand(2, 40) * 6, torch.rand(2, 40) * 8
    grid = torch.stack([b / 8 * 2 - 1, a / 6 * 2 - 1], dim=-1)[:, :, None]  # (x=width, y=height)
    ref = F.grid_sample(plane, grid, mode="bilinear", align_corners=True)[..., 0].transpose(1, 2)
    torch.testing.assert_close(bilinear_lookup(plane, a, b), ref, atol=1e-5, rtol=1e-5)


def test_triplane_features_hit_nodes_when_grids_align():
    # 16 spatial patches on R_xy = 16 and 32 frames on R_t = 32: every lookup lands on a node
    torch.manual_seed(0)
    planes = {"xy": torch.randn(1, 8, 16, 16), "xt": torch.randn(1, 8, 32, 16), "yt": torch.randn(1, 8, 32, 16)}
    coords = torch.tensor([[[0, 0, 0], [31, 15, 15], [7, 3, 12]]])
    feats = triplane_features(planes, coords, (32, 16, 16))
    for n, (t, x, y) in enumerate(coords[0].tolist()):
        expected = torch.cat([planes["xy"][0, :, x, y], planes["xt"][0, :, t, x], planes["yt"][0, :, t, y]])
        assert torch.equal(feats[0, n], expected)


def test_encoder_and_decoder_blocks_are_timm_blocks_of_the_official_era():
    """ViT3D blocks: timm ``Block(dim, heads)``; decoder blocks: ``Block(dim, heads, qkv_bias=True)``; both with
    ``nn.LayerNorm`` (eps 1e-5), timm's ``norm_layer`` before 1.0.16. Loading our weights into timm's block gives
    the same outputs."""
    from timm.models.vision_transformer import Block

    model = small()
    x = torch.randn(2, 9, 32)
    for blocks, qkv_bias in ((model.encoder.blocks, False), (model.decoder.blocks, True)):
        ours = blocks[0]
        theirs = Block(32, 2, qkv_bias=qkv_bias, norm_layer=nn.LayerNorm).eval()
        theirs.load_state_dict(ours.state_dict())  # strict: same parameters, names and shapes
        with torch.no_grad():
            torch.testing.assert_close(ours(x), theirs(x), rtol=1e-6, atol=1e-6)
    assert model.encoder.norm.eps == model.decoder.norm.eps == 1e-5 and model.cross_encoder.norm.eps == 1e-6


def test_cross_self_block_is_the_official_condition_mask_block():
    """Pre-LN on the queries only (the context enters raw), bias-free ``nn.MultiheadAttention`` for both attentions,
    LayerNorm eps 1e-6, a biased GELU MLP of ratio 4."""
    block = small().cross_encoder.blocks[0]
    assert [n for n, m in block.named_children() if isinstance(m, nn.LayerNorm)] == ["norm1", "norm2", "norm3"]
    assert all(m.eps == 1e-6 for m in (block.norm1, block.norm2, block.norm3))
    for attn in (block.cross_attn, block.self_attn):
        assert isinstance(attn, nn.MultiheadAttention) and attn.in_proj_bias is None and attn.out_proj.bias is None
    assert block.mlp.fc1.out_features == 128 and block.mlp.fc1.bias is not None and block.mlp.fc2.bias is not None
    assert isinstance(block.mlp.act, nn.GELU) and block.mlp.act.approximate == "none"
    torch.manual_seed(1)
    x, ctx = torch.randn(2, 12, 32), torch.randn(2, 8, 32)
    with torch.no_grad():
        out = block(x, ctx)
        shifted = block(x, ctx * 3.0 + 1.0)  # a LayerNorm on the context would make these equal
    assert not torch.allclose(out, shifted, atol=1e-3)


def test_initializations_follow_the_official_code():
    """``torch.randn`` (std 1) for ViT3D's positional embedding and cls token, the cross-attention context positions
    and the triplane queries; ``D^-0.5 * randn`` for the decoder's positional table."""
    model = CoordTok(size="tiny", frames=128, resolution=128)  # width 64: 1024 video tokens, 32,768 coordinates
    for name, param, std in (("encoder.pos_embed", model.encoder.pos_embed, 1.0),
                             ("cross_encoder.context_pos_embed", model.cross_encoder.context_pos_embed, 1.0),
                             ("cross_encoder.planes.xt", model.cross_encoder.planes["xt"], 1.0),
                             ("decoder.pos_embed", model.decoder.pos_embed, 64 ** -0.5)):
        assert abs(param.std().item() / std - 1) < 0.05, name
    assert model.encoder.cls_token.shape == (1, 1, 64)


def test_cls_token_takes_part_in_every_encoder_block():
    model = small()
    video = torch.rand(1, 3, 16, 32, 32) * 2 - 1
    with torch.no_grad():
        out = model.encoder(video, None)
        model.encoder.cls_token.add_(torch.randn(1, 1, 32))  # not a constant, which the LayerNorms would remove
        changed = model.encoder(video, None)
    assert out.shape == (1, 8, 32)  # the cls token is dropped at the output
    assert not torch.allclose(out, changed, atol=1e-4)


def test_decoder_positions_truncate_like_the_official_code():
    for n in (16, 32, 128):  # the paper's axes: the official index is the exact one
        assert torch.equal(official_patch_index(torch.arange(n), n), torch.arange(n))
    # float32 i / (n - 1) * (n - 1) truncates to i - 1 at these (measured) indices
    for n, off in ((23, [13]), (24, [7, 14]), (30, [15])):
        index = official_patch_index(torch.arange(n), n)
        assert (torch.arange(n) - index).nonzero().flatten().tolist() == off
        assert index[off].tolist() == [i - 1 for i in off]
    model = small(frames=24, resolution=32)
    exact = small(frames=24, resolution=32, decoder_pos_index="exact")
    coords = torch.tensor([[[7, 0, 0], [8, 1, 2]]])
    assert model.decoder.table_index(coords).tolist() == [[6 * 16, 8 * 16 + 6]]
    assert exact.decoder.table_index(coords).tolist() == [[7 * 16, 8 * 16 + 6]]


def test_official_padding_fills_minus_three_and_adds_one_to_padded_cross_attention_logits():
    model = small(padding="official")  # 16 frames, 32x32: 2 x 2 x 2 video tokens
    video = torch.rand(3, 3, 12, 32, 32) * 2 - 1
    padded, n_frames = model._prepare(video, torch.tensor([12, 10, 7]))
    assert padded.shape[2] == 16 and bool((padded[1, :, 10:] == OFFICIAL_PAD_VALUE).all())
    assert torch.equal(padded[1, :, :10], video[1, :, :10]) and bool((padded[2, :, 7:] == -3.0).all())
    encoder_mask, key_padding = model._encoder_masks(n_frames)
    assert encoder_mask is None  # ViT3D attends to every token
    # floor(n / 8) valid temporal tokens: 12 -> 1, 10 -> 1, 7 -> 0 (every key +1, which changes nothing)
    assert key_padding.dtype == torch.float32
    assert key_padding.tolist() == [[0.0] * 4 + [1.0] * 4, [0.0] * 4 + [1.0] * 4, [1.0] * 8]
    assert model._encoder_masks(torch.tensor([16, 16]))[1] is None
    assert model._encoder_masks(torch.tensor([16, 15]))[1][1].tolist() == [0.0] * 4 + [1.0] * 4  # floor: frames 8-14 too
    # the cross-attention adds the mask to the scaled logits: attention computed by hand with +1 on padded keys
    block = model.cross_encoder.blocks[0]
    torch.manual_seed(1)
    x, ctx = torch.randn(3, 12, 32), torch.randn(3, 8, 32)
    wq, wk, wv = block.cross_attn.in_proj_weight.chunk(3)
    q, k, v = (rearrange(t @ w.T, "b n (h d) -> b h n d", h=2) for t, w in ((block.norm1(x), wq), (ctx, wk), (ctx, wv)))
    logits = q @ k.transpose(-1, -2) / math.sqrt(16) + key_padding[:, None, None, :]
    by_hand = rearrange(logits.softmax(-1) @ v, "b h n d -> b n (h d)") @ block.cross_attn.out_proj.weight.T
    with torch.no_grad():
        out = block.cross_attn(block.norm1(x), ctx, ctx, key_padding_mask=key_padding, need_weights=False)[0]
        unbiased = block.cross_attn(block.norm1(x), ctx, ctx, need_weights=False)[0]
    torch.testing.assert_close(out, by_hand.detach(), rtol=1e-5, atol=1e-6)
    assert not torch.allclose(out[:2], unbiased[:2], atol=1e-4)  # +1 on half the keys moves the first two videos
    torch.testing.assert_close(out[2], unbiased[2], rtol=1e-5, atol=1e-6)  # +1 on every key: softmax unchanged


def test_masked_padding_of_a_100_frame_video_ignores_padded_content():
    model = small(frames=128)
    torch.manual_seed(1)
    video = torch.rand(1, 3, 128, 32, 32) * 2 - 1
    other = video.clone()
    other[:, :, 100:] = torch.rand(1, 3, 28, 32, 32) * 2 - 1
    n_frames = torch.tensor([100])
    encoder_mask, key_padding = model._encoder_masks(n_frames)
    assert encoder_mask.reshape(16, 4).all(dim=1).tolist() == [True] * 13 + [False] * 3  # ceil(100 / 8) = 13
    assert torch.equal(key_padding, ~encoder_mask)
    with torch.no_grad():
        tokens, tokens_other = model.encode(video, n_frames=n_frames), model.encode(other, n_frames=n_frames)
        for k in tokens.latents:
            assert torch.equal(tokens.latents[k], tokens_other.latents[k])
        full = model.decode(tokens)[:, :, :100]
        alone = model.unpatchify(model.decode_coords(tokens, model.all_coords(100, "cpu")[None]), 100)
    torch.testing.assert_close(full, alone, rtol=1e-5, atol=1e-5)  # padded coordinates are never attended


def test_decoder_output_does_not_depend_on_padded_frames():
    model = small()
    torch.manual_seed(1)
    video = torch.rand(1, 3, 16, 32, 32) * 2 - 1
    other = video.clone()
    other[:, :, 10:] = torch.rand(1, 3, 6, 32, 32) * 2 - 1  # different content in the padded frames
    n_frames = torch.tensor([10])
    with torch.no_grad():
        tokens = model.encode(video, n_frames=n_frames)
        tokens_other = model.encode(other, n_frames=n_frames)
        for k in tokens.latents:
            assert torch.equal(tokens.latents[k], tokens_other.latents[k])
        valid = torch.tensor([[[3, 1, 2], [9, 0, 3], [0, 2, 2]]])
        pad_a = torch.tensor([[[10, 0, 0], [12, 3, 1], [15, 2, 2]]])
        pad_b = torch.tensor([[[14, 1, 3], [11, 2, 0], [13, 0, 1], [10, 3, 3]]])
        out_a = model.decode_coords(tokens, torch.cat([valid, pad_a], dim=1))[:, :3]
        out_b = model.decode_coords(tokens_other, torch.cat([valid, pad_b], dim=1))[:, :3]
        out_alone = model.decode_coords(tokens, valid)
    torch.testing.assert_close(out_a, out_b, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(out_a, out_alone, atol=1e-6, rtol=1e-5)
    # without the mask the padded coordinates would change the output
    with torch.no_grad():
        unmasked = model.decoder(tokens.latents, torch.cat([valid, pad_a], dim=1))[:, :3]
    assert not torch.allclose(unmasked, out_alone, atol=1e-4)


def test_short_videos_are_padded_and_decoded_to_their_length():
    model = small()
    video = torch.rand(2, 3, 12, 32, 32) * 2 - 1
    with torch.no_grad():
        tokens = model.encode(video)
        assert tokens.info["n_frames"].tolist() == [12, 12]
        assert model.decode(tokens).shape == video.shape
        chunked = model.decode(tokens, decode_chunk=64)
    assert chunked.shape == video.shape
    losses = model.train().training_losses(video, step=0, n_frames=[12, 7])
    assert losses["loss"].requires_grad and int(losses["stage"]) == 1


def test_stage2_samples_whole_distinct_frames():
    model = small(stage1_steps=5, stage2_frames=4)
    with seeded(3):
        coords, _ = model.sample_coords(torch.tensor([16, 9]), stage=1)
    with seeded(3):  # the official loader's draws, video by video: t (valid frames), x, y, each with replacement
        expected = [torch.stack([torch.randint(0, n, (1024,)), torch.randint(0, 4, (1024,)), torch.randint(0, 4, (1024,))], -1)
                    for n in (16, 9)]
    assert torch.equal(coords, torch.stack(expected))
    coords, k = model.sample_coords(torch.tensor([16, 9]), stage=2)
    assert k == 4 and coords.shape == (2, 4 * 16, 3)
    for b, n in enumerate((16, 9)):
        frames = coords[b, :, 0].reshape(4, 16)
        assert (frames == frames[:, :1]).all() and frames[:, 0].unique().numel() == 4 and int(frames.max()) < n
        assert sorted(map(tuple, coords[b, :16, 1:].tolist())) == [(x, y) for x in range(4) for y in range(4)]
    coords, _ = model.sample_coords(torch.tensor([16, 3]), stage=1)
    assert coords.shape == (2, 1024, 3) and int(coords[1, :, 0].max()) < 3


def test_lpips_is_kept_out_of_the_state_dict():
    pytest.importorskip("metrics.lpips", reason="metrics.lpips.load_lpips not written yet")
    model = small(stage1_steps=0, stage2_frames=2)
    keys = set(model.state_dict())
    video = torch.rand(1, 3, 16, 32, 32) * 2 - 1
    out = model.train().training_losses(video, step=0)
    assert int(out["stage"]) == 2 and out["lpips"] > 0
    torch.testing.assert_close(out["loss"].detach(), out["l2"] + 2 * out["lpips"])  # the sum over the 2 frames
    assert set(model.state_dict()) == keys
    assert all(not n.startswith("_lpips") for n, _ in model.named_parameters())


def _stage2_loss_by_hand(model: CoordTok, video: torch.Tensor, seed: int, dropout: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Stage-2 loss of full-length ``video`` computed directly: the model's draws reproduced under ``seed`` (in its
    order: coordinates, then LPIPS dropout), targets cut from the video's frames, LPIPS-VGG from ``load_lpips``.
    Returns ``(l2 + 16 x mean LPIPS, LPIPS per frame [B, 16])``."""
    from metrics.lpips import load_lpips

    batch, frames = video.shape[0], video.shape[2]
    n_frames = torch.full((batch,), frames)
    net = load_lpips("vgg")
    with seeded(seed), torch.no_grad():
        planes = model.encode_planes(video, n_frames)
        coords, k = model.sample_coords(n_frames, stage=2)
        assert k == 16
        pred = model.decoder(planes, coords)
        sampled = coords[:, ::model.decoder_grid[1] * model.decoder_grid[2], 0]  # [B, 16] frame of each block of patches
        assert all(bool((coords[b, :, 0].reshape(16, -1) == sampled[b, :, None]).all()) for b in range(batch))
        target_frames = torch.stack([video[b][:, sampled[b]] for b in range(batch)])  # [B, 3, 16, H, W]
        l2 = (pred - model.patchify(target_frames)).pow(2).mean()
        net.lins.train(dropout)
        try:
            lpips = net(rearrange(model.unpatchify(pred, 16), "b c t h w -> (b t) c h w"),
                        rearrange(target_frames, "b c t h w -> (b t) c h w")).reshape(batch, 16)
        finally:
            net.lins.eval()
    return l2 + 16 * lpips.mean(), lpips


@pytest.mark.parametrize("dropout", [True, False])
def test_stage2_loss_is_l2_plus_the_sum_of_the_frames_lpips(sample_videos, dropout):
    """Per video ``l2 + sum over the 16 frames of LPIPS`` (official ``Decoder.forward``, ``--lpips_loss_scale 1``),
    averaged over videos, on real 16-frame 64x64 clips; LPIPS with its dropout active by default, as the official
    loss net in a model in train mode."""
    lpips_module = pytest.importorskip("metrics.lpips", reason="metrics.lpips.load_lpips not written yet")
    video = sample_videos[:2]
    model = small(frames=16, resolution=64, stage1_steps=0, lpips_dropout=dropout).train()
    # as at a run's first stage-2 step, LPIPS is built inside the seeded step: that must not shift the dropout draws
    lpips_module._load.cache_clear()
    with seeded(11):
        out = model.training_losses(video, step=0)
    expected, lpips = _stage2_loss_by_hand(model, video, 11, dropout)
    assert int(out["stage"]) == 2
    torch.testing.assert_close(out["loss"].detach(), expected, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(out["lpips"], lpips.mean(), rtol=1e-6, atol=1e-7)
    _, without_dropout = _stage2_loss_by_hand(model, video, 11, dropout=False)
    assert torch.equal(lpips, without_dropout) != dropout  # the dropout draws change the distances
    assert not lpips_module.load_lpips("vgg").lins.training  # the shared network is left in eval mode


# ------------------------------------------------------------------------------------------
# Training on real sample videos (32-frame 64x64 clips, tiny size)
# ------------------------------------------------------------------------------------------

TRAIN_END, HELD_START = 64, 80  # train clips start in frames [0, 32]; held-out clips are frames 80..111


@pytest.fixture(scope="module")
def real_videos(sample_paths) -> torch.Tensor:
    """The first 112 frames of every sample video at 64x64, ``float32 [3, 3, 112, 64, 64]``."""
    from harness.data.decode import decode_frames, to_model_range

    return to_model_range(np.stack([decode_frames(p, start=0, num_frames=HELD_START + 32, resolution=64) for p in sample_paths]))


def train_coordtok(videos: torch.Tensor, steps: int, lr: float, stage1_steps: int, **kwargs):
    """Train a tiny CoordTok on random 32-frame clips from the first 64 frames; return (model, history)."""
    torch.manual_seed(0)
    model = CoordTok(size="tiny", frames=32, resolution=64, stage1_steps=stage1_steps, **kwargs)
    return model.eval(), run_steps(model, videos, range(steps), lr)


def run_steps(model: CoordTok, videos: torch.Tensor, steps: range, lr: float) -> list[dict[str, float]]:
    """Optimizer steps ``steps`` (AdamW, supp. A.1 betas and weight decay) on random 32-frame training clips; losses per step."""
    opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.999), weight_decay=0.001)
    history = []
    for step in steps:
        starts = torch.randint(0, TRAIN_END - 32 + 1, (videos.shape[0],)).tolist()
        batch = torch.stack([videos[i, :, s:s + 32] for i, s in enumerate(starts)])
        losses = model.train().training_losses(batch, step)
        opt.zero_grad(set_to_none=True)
        losses["loss"].backward()
        opt.step()
        history.append({k: float(v.detach()) for k, v in losses.items()})
    return history


@torch.no_grad()
def held_out_l2(model: CoordTok, videos: torch.Tensor) -> float:
    held = videos[:, :, HELD_START:HELD_START + 32]
    return F.mse_loss(model.decode(model.encode(held)), held).item()


def test_stage1_training_lowers_held_out_l2(real_videos):
    """25 stage-1 steps (256 coordinates per video, lr 1e-3 for a short run) halve the held-out l2."""
    model, _ = train_coordtok(real_videos, steps=0, lr=1e-3, stage1_steps=10**6, points_per_video=256)
    initial = held_out_l2(model, real_videos)
    model, history = train_coordtok(real_videos, steps=25, lr=1e-3, stage1_steps=10**6, points_per_video=256)
    final = held_out_l2(model, real_videos)
    assert all(h["stage"] == 1 for h in history)
    assert final < 0.5 * initial, (initial, final)


STAGE1, STAGE2 = 250, 10


@pytest.mark.slow
@pytest.mark.timeout(3600)
def test_two_stage_training_on_real_videos(real_videos):
    """Stage 1 (l2, 512 coordinates per video) for 250 steps, then stage 2 (l2 + LPIPS-VGG on 16 whole frames)
    for 10; figures recorded in docs/coordtok.md."""
    pytest.importorskip("metrics.lpips", reason="metrics.lpips.load_lpips not written yet")
    held = real_videos[:, :, HELD_START:HELD_START + 32]
    mean_color = F.mse_loss(held.mean(dim=(2, 3, 4), keepdim=True).expand_as(held), held).item()
    kwargs = dict(lr=1e-3, stage1_steps=STAGE1, points_per_video=512)
    model, _ = train_coordtok(real_videos, steps=0, **kwargs)
    initial = held_out_l2(model, real_videos)
    model, history = train_coordtok(real_videos, steps=STAGE1, **kwargs)
    after_stage1 = held_out_l2(model, real_videos)
    # stage 2 continues from the stage-1 weights with a fresh optimizer, as the official --is_second_step
    stage2 = run_steps(model, real_videos, range(STAGE1, STAGE1 + STAGE2), lr=1e-3)
    final = held_out_l2(model.eval(), real_videos)
    print(f"\nheld-out l2: initial {initial:.4f}, after stage 1 ({STAGE1} steps) {after_stage1:.4f}, "
          f"after stage 2 (+{STAGE2}) {final:.4f}; per-video mean colour {mean_color:.4f}; "
          f"stage-2 train l2/lpips first {stage2[0]['l2']:.4f}/{stage2[0]['lpips']:.4f} "
          f"last {stage2[-1]['l2']:.4f}/{stage2[-1]['lpips']:.4f}")
    assert all(h["stage"] == 1 for h in history)
    assert all(h["stage"] == 2 and np.isfinite(h["lpips"]) and h["lpips"] > 0 for h in stage2)
    assert after_stage1 < 0.25 * initial and after_stage1 < mean_color, (initial, after_stage1, mean_color)
    assert np.isfinite(final)


def test_loss_history_spans_both_stages_through_the_engine_loop(tmp_path):
    """``harness.fit`` keeps one row per step although stage 2 adds a loss (LPIPS): the stage-1 steps hold NaN
    there, and ``losses.csv`` has one line per step."""
    import math

    import pandas as pd

    from harness.config import DataConfig, TrainConfig
    from harness.data.datasets import build_dataset
    from harness.data.sampling import TrainClips
    from harness.fit import write_history
    from harness.train import train_tokenizer

    torch.manual_seed(0)
    model = CoordTok(size="tiny", frames=16, resolution=32, stage1_steps=2, points_per_video=256, stage2_frames=2)
    clips = TrainClips(build_dataset(DataConfig(dataset="samples", resolution=32, frames=16, cache_dir=str(tmp_path / "cache"))), seed=0)
    result = train_tokenizer(model, clips, TrainConfig(steps=4, batch_size=2, checkpoint_every=4), tmp_path / "ckpt.pt", seed=0,
                             show_progress=False)
    history = result.history
    assert {len(values) for values in history.values()} == {4}
    stage2_only = [name for name, values in history.items() if math.isnan(values[0])]
    assert stage2_only and all(not math.isnan(history[name][3]) for name in stage2_only)
    write_history(tmp_path / "losses.csv", history)
    table = pd.read_csv(tmp_path / "losses.csv")
    assert list(table["step"]) == [1, 2, 3, 4] and table["loss"].notna().all()
    resumed = torch.load(tmp_path / "ckpt.pt", map_location="cpu", weights_only=True)["history"]
    assert all(len(values) == 4 for values in resumed.values())


@pytest.mark.parametrize("fresh, adam_steps", [(True, 2), (False, 4)])
def test_stage2_starts_with_fresh_optimizers_as_a_new_official_run(tmp_path, fresh, adam_steps):
    """The official stage 2 is a new run with a new AdamW (huiwon-jang/CoordTok 8475272 ``train_coordtok.py
    --is_second_step``): after 2 + 2 steps Adam has counted 2 steps, or 4 with ``stage2_fresh_optimizer=False``;
    a run resumed inside stage 2 ends with the same state."""
    from harness.config import DataConfig, TrainConfig
    from harness.data.datasets import build_dataset
    from harness.data.sampling import TrainClips
    from harness.train import train_tokenizer

    clips = TrainClips(build_dataset(DataConfig(dataset="samples", resolution=32, frames=16, cache_dir=str(tmp_path / "cache"))), seed=0)
    states = []
    for steps in ((4,), (3, 4)):  # whole, and killed after step 3 then resumed
        torch.manual_seed(0)
        model = CoordTok(size="tiny", frames=16, resolution=32, stage1_steps=2, points_per_video=64, stage2_frames=2,
                         stage2_fresh_optimizer=fresh)
        checkpoint = tmp_path / f"ckpt_{len(steps)}.pt"
        for stop in steps:
            train_tokenizer(model, clips, TrainConfig(steps=stop, batch_size=2, checkpoint_every=1), checkpoint, seed=0,
                            show_progress=False)
        states.append(torch.load(checkpoint, map_location="cpu", weights_only=True))
    for state in states:
        counts = {float(s["step"]) for s in state["optimizers"][0]["state"].values()}
        assert counts == {float(adam_steps)}
    for name, value in states[0]["model"].items():
        assert torch.equal(value, states[1]["model"][name]), name
