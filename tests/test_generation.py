"""Generation stage (issue 7): normalization, SiT transport samplers, AR sampler, token packing, learning."""
from __future__ import annotations

import json
import math

import pytest
import torch

from harness.chunks import encode_video
from harness.config import DataConfig, GenerationConfig
from harness.data.datasets import build_dataset
from harness.data.sampling import TrainClips
from harness.generation.ar import ARTransformer, from_sequence, to_sequence
from harness.generation.data import EpochStream, encode_normalization_set, normalization_videos, video_batches
from harness.generation.normalize import LatentNormalizer
from harness.generation.sit import SiT
from harness.generation.tokens import TokenLayout, decode, pack, unpack
from harness.generation.transport import interpolate, sample_ode, sample_sde, training_loss
from harness_core.registry import GENERATORS, TOKENIZERS, create_tokenizer
from harness_core.seeding import derive_seed

@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny models gain nothing from intra-op threads, and on a shared 2-core machine thread sync dominates."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


TRIPLANE = {"xy": (4, 8, 8), "xt": (4, 16, 8), "yt": (4, 16, 8)}
GRID = (4, 4, 8, 8)


def _randomize_zero_init(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """adaLN-Zero makes a fresh SiT output zeros; give it random output layers so the samplers see real values."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if not p.any():
                p.copy_(torch.randn(p.shape, generator=g) * 0.05)
    return model


# ----------------------------------------------------------------------------- normalization


def test_normalization_round_trip_and_statistics():
    g = torch.Generator().manual_seed(0)
    planes = {k: torch.randn((12, *s), generator=g) * (1 + torch.arange(s[0]).view(1, -1, 1, 1)) + 3.0 for k, s in TRIPLANE.items()}
    grid = torch.randn((12, *GRID), generator=g) * 5 - 2
    for latents in (planes, grid):
        norm = LatentNormalizer.fit([latents])
        z = norm.normalize(latents)
        back = norm.denormalize(z)
        for a, b, zz in zip(*(list(x.values()) if isinstance(x, dict) else [x] for x in (latents, back, z))):
            torch.testing.assert_close(b, a, atol=1e-5, rtol=1e-5)
            per_channel = zz.transpose(0, 1).reshape(zz.shape[1], -1)
            torch.testing.assert_close(per_channel.mean(1), torch.zeros(zz.shape[1]), atol=1e-5, rtol=0)
            torch.testing.assert_close(per_channel.std(1, unbiased=False), torch.ones(zz.shape[1]), atol=1e-4, rtol=0)
        # the state survives a save/load
        again = LatentNormalizer.from_state_dict(norm.state_dict())
        restored = again.denormalize(z)
        for a, b in zip(*(list(x.values()) if isinstance(x, dict) else [x] for x in (latents, restored))):
            torch.testing.assert_close(b, a, atol=1e-5, rtol=1e-5)


def test_normalization_streams_batches_like_one_pass():
    x = torch.randn(20, 3, 4, 5, 5, generator=torch.Generator().manual_seed(1)) * 2 + 1
    one = LatentNormalizer.fit([x])
    streamed = LatentNormalizer.fit(x.split(7))
    torch.testing.assert_close(streamed.mean[""], one.mean[""])
    torch.testing.assert_close(streamed.std[""], one.std[""])
    with pytest.raises(ValueError, match="parts"):
        one.normalize({"xy": x})


# ----------------------------------------------------------------------------- samplers


def _gaussian_velocity(mu: float, s: float):
    """Exact velocity ``E[x1 - x0 | x_t]`` of the linear path for data ``N(mu, s^2)`` per element."""

    def velocity(x, t):
        def one(v):
            tt = t.view(-1, *([1] * (v.ndim - 1)))
            var = tt**2 * s**2 + (1 - tt) ** 2
            return mu + (tt * s**2 - (1 - tt)) / var * (v - tt * mu)

        return {k: one(v) for k, v in x.items()} if isinstance(x, dict) else one(x)

    return velocity


@pytest.mark.parametrize("layout", ["triplane", "grid"])
def test_samplers_reach_the_data_distribution_with_the_exact_velocity(layout):
    """With the exact velocity field, the 250-step SDE and the ODE turn N(0, 1) into N(mu, s^2)."""
    mu, s = 1.5, 0.5
    g = torch.Generator().manual_seed(0)
    n = 32
    z = {k: torch.randn((n, *shape), generator=g) for k, shape in TRIPLANE.items()} if layout == "triplane" \
        else torch.randn((n, *GRID), generator=g)
    v = _gaussian_velocity(mu, s)
    for out in (sample_sde(v, z, steps=250, last_step_size=0.04, generator=g), sample_ode(v, z, method="dopri5")):
        leaves = list(out.values()) if isinstance(out, dict) else [out]
        ref = list(z.values()) if isinstance(z, dict) else [z]
        for a, b in zip(leaves, ref):
            assert a.shape == b.shape and torch.isfinite(a).all()
            assert abs(a.mean().item() - mu) < 0.05, a.mean().item()
            assert abs(a.std().item() - s) < 0.05, a.std().item()


def test_sde_250_steps_and_ode_on_tiny_sit_give_finite_latents_of_the_right_shape():
    """The paper's 250-step SDE sampler and the ODE sampler on a tiny SiT, for triplanes and 3D grids."""
    torch.manual_seed(0)
    y = torch.zeros(2, dtype=torch.long)
    for example, steps in (({k: torch.zeros(s) for k, s in TRIPLANE.items()}, 250), (torch.zeros(GRID), 250)):
        model = _randomize_zero_init(SiT(example, "tiny", patch=2)).eval()
        z = {k: torch.randn(2, *v.shape) for k, v in example.items()} if isinstance(example, dict) else torch.randn(2, *GRID)
        calls = []

        def velocity(x, t):
            calls.append(float(t[0]))
            return model(x, t, y)

        sde = sample_sde(velocity, z, steps=steps)
        assert len(calls) == steps and calls[0] == 0.0 and math.isclose(calls[-1], 0.96, abs_tol=1e-6)
        ode = sample_ode(velocity, z, steps=8, method="euler")
        for out in (sde, ode):
            if isinstance(example, dict):
                assert {k: tuple(v.shape) for k, v in out.items()} == {k: (2, *s) for k, s in TRIPLANE.items()}
                assert all(torch.isfinite(v).all() for v in out.values())
            else:
                assert out.shape == (2, *GRID) and torch.isfinite(out).all()
            diff = [(a - b).abs().max() for a, b in zip(*(list(o.values()) if isinstance(o, dict) else [o] for o in (out, z)))]
            assert max(diff) > 1e-3  # the model moved the noise


def test_triplane_adapter_layout_follows_coordtok_sit():
    example = {"xy": torch.zeros(8, 16, 16), "xt": torch.zeros(8, 32, 16), "yt": torch.zeros(8, 32, 16)}
    model = SiT(example, "tiny", patch=2)
    adapter = model.adapter
    assert model.num_patches == 64 + 128 + 128  # research notes 1.7: 320 tokens for SiT-L/2 on 1280 tokens
    assert adapter.pos_key["xt"] == adapter.pos_key["yt"] != "xy"  # one shared temporal table
    assert not adapter.learned_pos[adapter.pos_key["xt"]].any()  # zero init
    assert adapter.type_embed.shape == (1, 3, 64) and len(adapter.final) == 3
    with pytest.raises(ValueError, match="divisible"):
        SiT({"xy": torch.zeros(8, 5, 5)}, "tiny", patch=2)
    with pytest.raises(ValueError, match="expected"):
        model({"xy": torch.zeros(1, 8, 16, 16)}, torch.zeros(1), torch.zeros(1, dtype=torch.long))


def test_cfg_needs_a_null_class_and_changes_the_output():
    example = torch.zeros(GRID)
    plain = SiT(example, "tiny", num_classes=3)
    with pytest.raises(ValueError, match="class_dropout"):
        plain.forward_with_cfg(torch.randn(1, *GRID), torch.full((1,), 0.5), torch.zeros(1, dtype=torch.long), 2.0)
    cond = _randomize_zero_init(SiT(example, "tiny", num_classes=3, class_dropout=0.1)).eval()
    x, t, y = torch.randn(2, *GRID), torch.full((2,), 0.5), torch.tensor([0, 2])
    assert not torch.allclose(cond.forward_with_cfg(x, t, y, 4.0), cond(x, t, y))
    torch.testing.assert_close(cond.forward_with_cfg(x, t, y, 1.0), cond(x, t, y))


# ----------------------------------------------------------------------------- loss


def test_training_loss_is_the_mean_of_the_planes_own_mean_squared_errors():
    """CoordTok-SiT's velocity loss: (mean_flat(xy) + mean_flat(yt) + mean_flat(xt)) / 3 per sample, so a plane
    weighs 1/3 whatever its size; pooling every element would weigh the 8x8 plane 256/1280 here."""
    g = torch.Generator().manual_seed(0)
    shapes = {"xy": (4, 8, 8), "xt": (4, 16, 8), "yt": (4, 16, 8)}
    x1 = {k: torch.randn((3, *s), generator=g) * (1 + i) for i, (k, s) in enumerate(shapes.items())}
    noise = {k: torch.randn(v.shape, generator=g) for k, v in x1.items()}
    t, y = torch.tensor([0.1, 0.5, 0.9]), torch.zeros(3, dtype=torch.long)
    scale = {"xy": 0.2, "xt": 1.0, "yt": -0.5}

    def model(x, t, y):  # a fixed "velocity" whose error differs per plane
        return {k: scale[k] * v + 0.1 for k, v in x.items()}

    loss = training_loss(model, x1, y, t=t, noise=noise)
    xt, ut = interpolate(x1, noise, t)
    vt = model(xt, t, y)
    per_plane = {k: (vt[k] - ut[k]).pow(2).mean(dim=(1, 2, 3)) for k in shapes}
    torch.testing.assert_close(loss, (per_plane["xy"] + per_plane["yt"] + per_plane["xt"]) / 3, rtol=1e-6, atol=0)
    pooled = sum((vt[k] - ut[k]).pow(2).flatten(1).sum(1) for k in shapes) / sum(math.prod(s) for s in shapes.values())
    assert ((loss - pooled).abs() > 1e-2 * loss).all()  # the old pooled loss is not what is computed
    # one tensor: its plain mean squared error
    single = training_loss(lambda x, t, y: 0.5 * x, x1["xt"], y, t=t, noise=noise["xt"])
    a, u = interpolate(x1["xt"], noise["xt"], t)
    torch.testing.assert_close(single, (0.5 * a - u).pow(2).mean(dim=(1, 2, 3)), rtol=1e-6, atol=0)


# ----------------------------------------------------------------------------- autoregressive


def test_ar_kv_cache_matches_full_forward_and_samples_in_range():
    torch.manual_seed(0)
    model = ARTransformer(vocab_size=50, seq_len=12, size="tiny", num_classes=3, class_dropout=0.1).eval()
    y = torch.tensor([0, 2])
    g = torch.Generator().manual_seed(0)
    seq = model.generate(y, generator=g)
    assert seq.shape == (2, 12) and seq.dtype == torch.long and 0 <= seq.min() and seq.max() < 50
    # greedy decoding with the cache reproduces the argmax of a full (uncached) forward pass
    greedy = model.generate(y, top_k=1)
    logits = model(greedy, y)
    torch.testing.assert_close(logits.argmax(-1), greedy)
    guided = model.generate(y, cfg_scale=3.0, top_k=5, generator=g)
    assert guided.shape == (2, 12)
    assert model.generate(y, length=6).shape == (2, 6)
    with pytest.raises(ValueError, match="class_dropout"):
        ARTransformer(50, 12, "tiny", num_classes=3).generate(y, cfg_scale=2.0)


def test_coarse_to_fine_order_prefix_is_a_per_timestep_budget():
    idx = torch.arange(2 * 5 * 8).view(2, 5, 8)  # [B, t, k]
    seq = to_sequence(idx, coarse_to_fine=True)
    torch.testing.assert_close(from_sequence(seq, (5, 8), coarse_to_fine=True), idx)
    prefix = from_sequence(seq[:, : 2 * 5], (5, 8), coarse_to_fine=True)  # stop after 2 registers per timestep
    torch.testing.assert_close(prefix, idx[:, :, :2])
    torch.testing.assert_close(from_sequence(to_sequence(idx), (5, 8)), idx)


# ----------------------------------------------------------------------------- tokens of real clips


@pytest.fixture(scope="module")
def long_videos(sample_videos):
    """The real sample clips at 32x32, two of them glued into 32-frame videos (two 16-frame clips each)."""
    small = torch.nn.functional.interpolate(sample_videos.flatten(1, 2), size=(32, 32), mode="bilinear",
                                            align_corners=False).view(3, 3, 16, 32, 32)
    return torch.cat([small, small.flip(0)], dim=2)


def test_pack_unpack_round_trip_for_chunk_tokenizers(long_videos):
    torch.manual_seed(0)
    for name in ("grid3d", "grid3d_vq", "pvdm"):
        if name not in TOKENIZERS:
            continue
        tok = create_tokenizer(name).eval()
        groups = encode_video(tok, long_videos, chunk_batch=4)
        packed, layout = pack(groups, 3, tok, 32)
        assert layout.chunks == 2 and layout.tokens_per_video == 2 * groups[0].tokens_per_video
        before = {"chunks": "clips", "chunk_frames": "clip_frames", "chunk_tokens": "clip_tokens", "chunk_shape": "clip_shape"}
        old = {before.get(key, key): value for key, value in layout.to_dict().items()}  # a token cache before issue 25
        assert "clip_shape" in old and TokenLayout.from_dict(old) == layout
        rows = unpack(packed, layout)
        if tok.continuous:
            ref = torch.cat([g.latents for g in groups]) if isinstance(groups[0].latents, torch.Tensor) \
                else {k: torch.cat([g.latents[k] for g in groups]) for k in groups[0].latents}
        else:
            ref = torch.cat([g.indices for g in groups])
        for a, b in zip(*(list(x.values()) if isinstance(x, dict) else [x] for x in (rows, ref))):
            torch.testing.assert_close(a, b)
        video = decode(tok, packed, layout)
        assert video.shape == long_videos.shape and torch.isfinite(video).all()


def test_videoflextok_indices_pack_in_coarse_to_fine_order(long_videos):
    if "videoflextok" not in TOKENIZERS:
        pytest.skip("videoflextok is not registered")
    torch.manual_seed(0)
    tok = create_tokenizer("videoflextok").eval()
    videos = long_videos[:2, :, :17]  # 17 frames: one chunk, 5 latent timesteps
    groups = encode_video(tok, videos, budget=4)
    seq, layout = pack(groups, 2, tok, 17)
    idx = groups[0].indices  # [B, t, 4]
    assert layout.coarse_to_fine and seq.shape == (2, idx.shape[1] * 4)
    torch.testing.assert_close(seq[:, : idx.shape[1]], idx[:, :, 0])  # first the register-0 tokens of every timestep
    torch.testing.assert_close(unpack(seq, layout), idx)
    torch.testing.assert_close(unpack(seq[:, : 2 * idx.shape[1]], layout), idx[:, :, :2])  # a 2-register budget


# ----------------------------------------------------------------------------- learning on real tokens


def _fixed_eval(continuous: bool, data, labels, repeats: int = 4):
    """A fixed evaluation set: each sample several times with fixed t and noise (SiT), or once (AR)."""
    g = torch.Generator().manual_seed(123)
    n = labels.shape[0]
    if not continuous:
        return torch.no_grad()(lambda m: float(m.loss(data, labels).mean()))
    idx = torch.arange(n).repeat(repeats)
    x = {k: v[idx] for k, v in data.items()} if isinstance(data, dict) else data[idx]
    t = torch.rand(idx.shape[0], generator=g)
    noise = {k: torch.randn(v.shape, generator=g) for k, v in x.items()} if isinstance(x, dict) else torch.randn(x.shape, generator=g)
    y = labels[idx]
    return torch.no_grad()(lambda m: float(training_loss(m, x, y, t=t, noise=noise).mean()))


def _real_tokens(name: str, videos: torch.Tensor, **kwargs):
    tok = create_tokenizer(name, **kwargs).eval()
    groups = encode_video(tok, videos)
    return pack(groups, videos.shape[0], tok, videos.shape[2]) + (tok,)


@pytest.mark.parametrize("name", ["grid3d", "coordtok", "grid3d_vq"])
def test_generator_trained_on_real_tokens_lowers_its_loss(name, sample_videos):
    if name not in TOKENIZERS:
        pytest.skip(f"tokenizer {name!r} is not registered")
    torch.manual_seed(0)
    kwargs = {"frames": 16, "resolution": 64, "latent_resolution_xy": 8, "latent_resolution_t": 8} if name == "coordtok" else {}
    data, layout, tok = _real_tokens(name, sample_videos, **kwargs)
    labels = torch.zeros(3, dtype=torch.long)
    if layout.continuous:
        data = LatentNormalizer.fit([data]).normalize(data)
        model = SiT({k: v[0] for k, v in data.items()} if isinstance(data, dict) else data[0], "tiny", patch=2)
    else:
        model = ARTransformer(tok.codebook_size(), data.shape[1], "tiny")
    evaluate = _fixed_eval(layout.continuous, data, labels)
    model.eval()
    before = evaluate(model)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.0)
    g = torch.Generator().manual_seed(0)
    model.train()
    for _ in range(40):
        if layout.continuous:
            loss = training_loss(model, data, labels, generator=g).mean()
        else:
            loss = model.loss(data, labels).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    after = evaluate(model)
    assert after < 0.95 * before, (before, after)


def test_config_rejects_unknown_keys_and_sizes():
    from harness.config.validate import generation_model_problem

    assert GenerationConfig().sampling_steps == 250 and GenerationConfig().ema == 0.9999
    with pytest.raises(ValueError):
        GenerationConfig(smapler="ode")
    assert generation_model_problem(GenerationConfig(model="XXL")).endswith("got 'XXL'")  # checked at load (test_config)
    assert all(generation_model_problem(GenerationConfig(model=size)) is None for size in ("tiny", "S", "B", "L", "XL"))
    assert set(GENERATORS.names()) >= {"sit", "ar"}


# ----------------------------------------------------------------------------- training data (epochs / pool)


@pytest.fixture(scope="module")
def train_videos(tmp_path_factory) -> TrainClips:
    """The three real sample videos as training videos (16-frame 32x32 windows; each video is longer than a clip)."""
    cache = tmp_path_factory.mktemp("train_videos")
    return TrainClips(build_dataset(DataConfig(dataset="samples", resolution=32, frames=16, cache_dir=str(cache))), seed=0)


def test_epoch_stream_visits_every_video_once_per_epoch_with_fresh_windows(train_videos):
    stream = EpochStream(train_videos, seed=11)
    n = len(train_videos.records)
    span = train_videos.dataset.clip_span
    assert n == 3 and all(r.stop - r.start > span for r in train_videos.records)
    epochs = [[stream.position(j) for j in range(e * n, (e + 1) * n)] for e in range(2)]
    for e, visits in enumerate(epochs):
        assert sorted(v for v, _ in visits) == list(range(n))  # every training video exactly once
        assert [v for v, _ in visits] == stream.order(e)
        for video, start in visits:
            record = train_videos.records[video]
            assert record.start <= start <= record.stop - span  # a whole clip inside the training range
    first, second = dict(epochs[0]), dict(epochs[1])
    assert all(first[v] != second[v] for v in range(n))  # a fresh window per epoch
    assert not torch.equal(stream.clips(stream.order(0).index(0), 1).videos,
                           stream.clips(n + stream.order(1).index(0), 1).videos)
    # a pure function of (seed, position): another stream object reads the same positions in any order
    again = EpochStream(train_videos, seed=11)
    assert [again.position(j) for j in reversed(range(2 * n))] == list(reversed(epochs[0] + epochs[1]))
    assert [EpochStream(train_videos, seed=12).position(j) for j in range(2 * n)] != epochs[0] + epochs[1]


def test_normalization_videos_follow_train_sit_stride():
    """train_sit.py: ``range(rank, N, N // 2048 * world)`` over ranks = every ``N // 2048``-th video (2385 of UCF-101
    split 1's 9537 training videos; the paper says 2048 clips, the code is followed)."""
    chosen = normalization_videos(9537, 2048)
    assert chosen == list(range(0, 9537, 4)) and len(chosen) == 2385
    for world in (1, 2, 8):  # the official union over ranks, up to the ranks' offsets, has the same count
        official = sorted(i for rank in range(world) for i in range(rank, 9537, 9537 // 2048 * world))
        assert abs(len(official) - len(chosen)) <= world
    assert normalization_videos(3, 2048) == [0, 1, 2]


def _epoch_batches(tokenizer, videos, cfg, seed=5):
    continuous = bool(tokenizer.continuous)
    normalizer = None
    if continuous:
        reference = encode_normalization_set(tokenizer, videos, cfg, torch.device("cpu"), False, 1, seed)
        normalizer = LatentNormalizer.fit([reference["data"]])
    return video_batches(tokenizer, EpochStream(videos, seed), cfg, normalizer, continuous, False, 1, seed,
                         torch.device("cpu")), normalizer


def _rows(batch) -> list[torch.Tensor]:
    return [leaf for part in batch for leaf in (part.values() if isinstance(part, dict) else [part])]


def test_epoch_batches_encode_the_stream_and_resume_mid_run_identically(train_videos):
    """A step's batch is the stream's windows encoded by the frozen tokenizer and normalized; a fresh batch
    function (a resumed run) started at step 3 gives the batches of the run that went through steps 0-2,
    and micro-batches of one process are the rows of the whole batch."""
    torch.manual_seed(0)
    tok = create_tokenizer("coordtok", frames=16, resolution=32, latent_resolution_xy=4, latent_resolution_t=4,
                           latent_channels=4).eval()
    cfg = GenerationConfig(batch_size=4, num_norm_clips=2, encode_batch_size=2)
    batch, normalizer = _epoch_batches(tok, train_videos, cfg)
    uninterrupted = [batch(step, 0, 4) for step in range(5)]
    resumed, _ = _epoch_batches(tok, train_videos, cfg)
    for step in (3, 4):
        for a, b in zip(_rows(resumed(step, 0, 4)), _rows(uninterrupted[step])):
            assert torch.equal(a, b)
    x, y, t, noise = uninterrupted[3]
    assert set(x) == {"xy", "xt", "yt"} and x["xy"].shape[0] == 4 and torch.equal(y, torch.zeros(4, dtype=torch.long))
    assert t.shape == (4,) and all(noise[k].shape == x[k].shape for k in x)
    # the rows are stream positions 12..15 (B = 4 > N = 3: the batch runs from epoch 4 into epoch 5), encoded
    # with their n_frames and normalized
    clips = EpochStream(train_videos, 5).clips(3 * 4, 4)
    planes, _ = pack([tok.encode(clips.videos, n_frames=clips.n_frames)], 4, tok, 16)
    for k, v in normalizer.normalize(planes).items():
        assert torch.equal(x[k], v)
    # two micro-batches (or processes) of 2 rows = the batch of 4: the same times and noise, the same latents
    # (exact on one thread here; the encoder's float kernels may depend on the batch size elsewhere)
    halves = [resumed(3, offset, 2) for offset in (0, 2)]
    assert torch.equal(torch.cat([h[2] for h in halves]), t)
    for k in x:
        assert torch.equal(torch.cat([h[3][k] for h in halves]), noise[k])
        torch.testing.assert_close(torch.cat([h[0][k] for h in halves]), x[k], rtol=1e-6, atol=1e-6)


def test_epoch_batches_of_a_discrete_tokenizer_are_index_sequences(train_videos):
    torch.manual_seed(0)
    tok = create_tokenizer("grid3d_vq", size="tiny", channels=8, latent_channels=8, codebook_size=64).eval()
    cfg = GenerationConfig(batch_size=2)
    batch, normalizer = _epoch_batches(tok, train_videos, cfg)
    assert normalizer is None
    x, y = batch(1, 0, 2)
    clips = EpochStream(train_videos, 5).clips(2, 2)
    seq, _ = pack(encode_video(tok, clips.videos), 2, tok, 16)
    assert x.dtype == torch.long and torch.equal(x, seq) and y.shape == (2,)


def test_padded_first_clip_does_not_shorten_generated_videos(sample_videos):
    """The decode template of generated videos has the full length, even when the first encoded clip is padded."""
    torch.manual_seed(0)
    tok = create_tokenizer("coordtok", frames=16, resolution=64, latent_resolution_xy=8, latent_resolution_t=8).eval()
    n_frames = torch.tensor([9, 16, 16])
    groups = [tok.encode(sample_videos, n_frames=n_frames)]
    assert groups[0].info["n_frames"].tolist() == [9, 16, 16]
    _, layout = pack(groups, 3, tok, 16)
    assert layout.info["n_frames"].tolist() == [16]


# ----------------------------------------------------------------------------- the stage, end to end


@pytest.mark.parametrize("train_data", ["epochs", "pool"])
def test_generation_stage_end_to_end_with_resume(train_data, train_videos, tmp_path):
    """Real clips -> tiny grid3d tokens -> tiny SiT -> samples -> GIFs -> gFVD (real I3D); then stage resume."""
    if "fvd_16f" not in __import__("harness_core.registry", fromlist=["METRICS"]).METRICS:
        pytest.skip("fvd_16f is not registered")
    from harness.generation.stage import run_generation_stage

    calls = []

    def train_clips(n: int, seed: int):  # as the runner draws them
        calls.append((n, seed))
        return train_videos.batch([derive_seed(seed, "clip", i) for i in range(n)])

    torch.manual_seed(0)
    tok = create_tokenizer("grid3d").eval()
    cfg = GenerationConfig(enabled=True, steps=2, batch_size=2, train_data=train_data, num_train_clips=4,
                           num_norm_clips=2, encode_batch_size=4, num_samples=2, num_real=2, sample_batch_size=2,
                           sampling_steps=4, num_gif_samples=1, checkpoint_every=1,
                           real_cache_dir=str(tmp_path / "cache"))
    run = tmp_path / "run"
    if train_data == "epochs":
        with pytest.raises(ValueError, match="train_data"):
            run_generation_stage(tok, train_clips, cfg, run, torch.device("cpu"))
    first = run_generation_stage(tok, train_clips, cfg, run, torch.device("cpu"), train_videos=train_videos)
    assert math.isfinite(first["gfvd_16f"]) and first["gfvd_16f_n"] == 2 and first["gfvd_16f_n_real"] == 2
    assert first["gfvd_comparable"] is False and "fvd_16f" in first["gfvd_protocol"]
    gen = first["generator"]
    assert gen["name"] == "sit" and gen["steps"] == 2 and gen["tokens_per_video"] == tok.tokens_per_video(16, 32, 32)
    assert gen["params"] > 0 and gen["train_step_time_s"] > 0 and gen["train_data"] == train_data
    normalization = json.loads((run / "generation" / "normalization.json").read_text())
    # real clips (generation.real_clips: first_videos): one window of each of the first 2 training videos, read from
    # train_videos, never drawn through train_clips
    assert "first 2 training videos" in first["gfvd_protocol"]["generation"]["real_clips"]
    if train_data == "epochs":  # 2 steps of 2 fresh windows; statistics over every N // 2 = 1st of the 3 videos
        assert gen["train_clips"] == 4 and gen["train_videos"] == 3 and gen["epochs"] == pytest.approx(4 / 3)
        assert normalization["num_clips"] == 3 and len(calls) == 0
    else:  # the pool of 4 clips is drawn once
        assert gen["train_clips"] == 4 and normalization["num_clips"] == 2 and len(calls) == 1
    assert sorted(p.name for p in (run / "generation" / "samples").iterdir()) == ["sample_000.gif"]
    # stage resume: metrics.json exists -> no work at all
    n_calls = len(calls)
    assert run_generation_stage(tok, train_clips, cfg, run, torch.device("cpu"), train_videos=train_videos) == first
    assert len(calls) == n_calls
    # training resume: a longer run continues from the checkpoint (tokens and real statistics are cached)
    (run / "generation" / "metrics.json").unlink()
    longer = run_generation_stage(tok, train_clips, cfg.model_copy(update={"steps": 3}), run, torch.device("cpu"),
                                  train_videos=train_videos)
    assert longer["generator"]["steps"] == 3 and longer["generator"]["initial_loss"] == gen["initial_loss"]
    assert len(calls) == n_calls  # tokens and the real-statistics cache key come from files and train_videos


def test_real_clips_are_one_window_of_each_of_the_first_long_enough_videos(tmp_path):
    """generation.real_clips: first_videos (StyleGAN-V, universome/stylegan-v 3fecd69 metric_utils.py: items
    0..num_real-1 of the dataset, short videos discarded): one seeded window of each of the first num_real
    training videos a clip long, in dataset order; draws: num_real clips of the seeded stream."""
    from conftest import shared_path

    from harness.data.decode import to_model_range
    from harness.generation.stage import real_clip_batches

    root = shared_path("data", "ucf101_mini")
    videos = TrainClips(build_dataset(DataConfig(dataset="ucf101", root=str(root), resolution=32, frames=128,
                                                 short_videos="pad", cache_dir=str(tmp_path))), seed=0)
    long_enough = [i for i, r in enumerate(videos.records) if r.stop >= 128]
    assert len(videos.records) == 8 and len(long_enough) == 4  # 140, 140, 140 and 150 frames; the others are padded
    cfg = GenerationConfig(enabled=True, num_real=3, sample_batch_size=2)
    sizes, batch, rule = real_clip_batches(cfg, None, videos, real_seed=7)
    assert sizes == [2, 1] and "first 3 training videos of at least 128 frames" in rule
    got = torch.cat([batch(0).videos, batch(1).videos])
    for row, video in enumerate(long_enough[:3]):
        frames, _, n_frames = videos.window(video, videos.random_start(video, derive_seed(7, "video", video)))
        assert n_frames == 128 and torch.equal(got[row], to_model_range(frames))
    drawn = []
    sizes, batch, _ = real_clip_batches(cfg.model_copy(update={"real_clips": "draws"}),
                                        lambda n, seed: drawn.append((n, seed)) or videos.batch(list(range(n))), None, 7)
    batch(1)
    assert sizes == [2, 1] and drawn == [(1, derive_seed(7, 1))]
    with pytest.raises(ValueError, match="first_videos"):
        real_clip_batches(cfg, None, None, 7)
