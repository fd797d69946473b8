"""Pretrained diffusers video VAEs as tokenizers (video_tokenizers/diffusers_vae.py, issue 16).

Every registered class is built from a tiny random config (< ~1M parameters), saved with ``save_pretrained``
and loaded back through the tokenizer from that local folder; the clips are the three real sample clips at
32x32 with a frame count that needs padding under the model's frame rule. No hub access: HF_HUB_OFFLINE=1.
"""
from __future__ import annotations

import hashlib
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("diffusers")

from harness.chunks import tiling_consistency  # noqa: E402
from harness_core.errors import WeightsError  # noqa: E402
from harness_core.registry import create_tokenizer  # noqa: E402
from video_tokenizers.diffusers_vae import DiffusersVAE  # noqa: E402

C4 = dict(latents_mean=[0.1, -0.2, 0.3, 0.0], latents_std=[2.0, 0.5, 1.5, 1.0])

#: name -> (diffusers class, tiny config, input frames, padded frames, extra tokenizer kwargs)
CASES = {
    "cogvideox_vae": ("AutoencoderKLCogVideoX", dict(block_out_channels=(8, 8, 8, 8), latent_channels=4, layers_per_block=1,
                                                     norm_num_groups=2, sample_height=32, sample_width=32, scaling_factor=0.7), 6, 9, {}),
    "hunyuanvideo_vae": ("AutoencoderKLHunyuanVideo", dict(block_out_channels=(8, 8, 8, 8), latent_channels=4, layers_per_block=1,
                                                           norm_num_groups=2), 6, 9, {}),
    "wan21_vae": ("AutoencoderKLWan", dict(base_dim=8, z_dim=4, num_res_blocks=1, **C4), 6, 9, {}),
    "wan22_vae": ("AutoencoderKLWan", dict(base_dim=8, decoder_base_dim=8, z_dim=4, num_res_blocks=1, is_residual=True, patch_size=2,
                                           in_channels=12, out_channels=12, scale_factor_spatial=16, **C4), 6, 9, {}),
    "ltx_vae": ("AutoencoderKLLTXVideo", dict(block_out_channels=(8, 8, 8, 8), decoder_block_out_channels=(8, 8, 8, 8), latent_channels=4,
                                              layers_per_block=(1, 1, 1, 1, 1), decoder_layers_per_block=(1, 1, 1, 1, 1),
                                              scaling_factor=0.9), 6, 9, {}),
    "mochi_vae": ("AutoencoderKLMochi", dict(encoder_block_out_channels=(32,) * 4, decoder_block_out_channels=(32,) * 4, latent_channels=4,
                                             layers_per_block=(1,) * 5, add_attention_block=(False,) * 5, scaling_factor=1.3, **C4), 5, 7, {}),
    "cosmos_cv8x8x8": ("AutoencoderKLCosmos", dict(encoder_block_out_channels=(8,) * 4, decode_block_out_channels=(8,) * 4, latent_channels=4,
                                                   num_layers=1, attention_resolutions=(), latents_mean=[0.01 * i for i in range(64)],
                                                   latents_std=[1.0 + 0.01 * i for i in range(64)]), 6, 9, {}),
    "allegro_vae": ("AutoencoderKLAllegro", dict(block_out_channels=(8,) * 4, latent_channels=4, layers_per_block=1, norm_num_groups=2,
                                                 sample_size=32), 10, 12, {"tiling": {"kernel": (8, 32, 32), "stride": (4, 16, 16)}}),
    "svd_temporal_vae": ("AutoencoderKLTemporalDecoder", dict(block_out_channels=(32,) * 4, down_block_types=("DownEncoderBlock2D",) * 4,
                                                              latent_channels=4, scaling_factor=0.5), 5, 5, {}),
}


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="module")
def clips32(sample_videos) -> torch.Tensor:
    """The three real sample clips at 32x32, ``float32 [3, 3, 16, 32, 32]`` in ``[-1, 1]``."""
    return F.avg_pool3d(sample_videos, (1, 2, 2))


def _save_tiny(name: str, folder) -> torch.nn.Module:
    import diffusers

    cls_name, config = CASES[name][:2]
    torch.manual_seed(0)
    model = getattr(diffusers, cls_name).from_config(config)
    assert sum(p.numel() for p in model.parameters()) < 1_000_000
    model.save_pretrained(folder)
    return model.eval()


def _expected_scaled(name: str, model, z: torch.Tensor) -> torch.Tensor:
    """The pipeline scaling, written out independently of the module."""
    cfg = model.config
    if name in ("cogvideox_vae", "hunyuanvideo_vae", "allegro_vae", "svd_temporal_vae"):
        return z * cfg.scaling_factor
    if name in ("wan21_vae", "wan22_vae"):
        return (z - torch.tensor(cfg.latents_mean).view(1, -1, 1, 1, 1)) / torch.tensor(cfg.latents_std).view(1, -1, 1, 1, 1)
    if name == "ltx_vae":
        return (z - model.latents_mean.view(1, -1, 1, 1, 1)) * cfg.scaling_factor / model.latents_std.view(1, -1, 1, 1, 1)
    if name == "mochi_vae":
        return (z - torch.tensor(cfg.latents_mean).view(1, -1, 1, 1, 1)) * cfg.scaling_factor / torch.tensor(cfg.latents_std).view(1, -1, 1, 1, 1)
    if name == "cosmos_cv8x8x8":
        t = z.shape[2]
        mean = torch.tensor(cfg.latents_mean).view(1, 4, -1, 1, 1)[:, :, :t]
        std = torch.tensor(cfg.latents_std).view(1, 4, -1, 1, 1)[:, :, :t]
        return (z - mean) * 0.5 / std
    raise AssertionError(name)


@pytest.mark.parametrize("name", sorted(CASES))
def test_round_trip_from_local_folder(name, tmp_path, clips32):
    model = _save_tiny(name, tmp_path / "vae")
    _, _, frames, padded, extra = CASES[name]
    # the download layout: <folder>/vae/config.json; the tokenizer finds the vae subfolder itself
    tok = create_tokenizer(name, pretrained=str(tmp_path), **extra)
    assert isinstance(tok, DiffusersVAE) and tok.continuous and tok.chunk_frames is None
    video = clips32[:, :, :frames]
    tokens = tok.encode(video)
    t, h, w = tok.latent_shape(frames, 32, 32)
    assert tokens.latents.dtype == torch.float32
    assert tuple(tokens.latents.shape) == (3, tok.latent_channels, t, h, w)
    assert tokens.tokens_per_video == t * h * w == tok.tokens_per_video(frames, 32, 32)
    assert tokens.info["padded_frames"] == padded - frames
    assert tokens.info["shape"] == (frames, 32, 32)
    recon = tok.decode(tokens)
    assert recon.shape == video.shape and recon.dtype == torch.float32
    assert torch.isfinite(recon).all() and recon.min() >= -1 and recon.max() <= 1
    assert torch.allclose(tok.unscale_latents(tokens.latents), tok.unscale_latents(tok.scale_latents(tok.unscale_latents(tokens.latents))), atol=1e-5)

    # scaled latents are the pipeline's scaling of the posterior mode of the padded video (one clip, cheap)
    one = video[:1]
    padded_video = torch.cat([one, one[:, :, -1:].expand(-1, -1, padded - frames, -1, -1)], dim=2)
    if name == "allegro_vae":
        model.enable_tiling()
        model.kernel, model.stride = (8, 32, 32), (4, 16, 16)
    with torch.no_grad():
        if name == "svd_temporal_vae":
            z = model.encode(padded_video[0].permute(1, 0, 2, 3)).latent_dist.mode().permute(1, 0, 2, 3)[None]
        else:
            z = model.encode(padded_video).latent_dist.mode()
    torch.testing.assert_close(tok.encode(one).latents, _expected_scaled(name, model, z), rtol=1e-4, atol=1e-4)

    identity = tok.weights_identity()
    files = sorted((tmp_path / "vae").glob("*.safetensors"))
    assert files and identity["sha256"] == {f.name: hashlib.sha256(f.read_bytes()).hexdigest() for f in files}
    protocol = tok.protocol()
    assert protocol["model_class"] == CASES[name][0] and protocol["weights_sha256"] == identity["sha256"]
    assert protocol["frame_rule"] and protocol["latent_scaling"] and protocol["torch_dtype"] == "float32"
    with pytest.raises(NotImplementedError, match="evaluation-only"):
        tok.training_losses(video, 0)


def test_frame_rules_and_boundaries(tmp_path):
    _save_tiny("cogvideox_vae", tmp_path / "cog")
    cog = create_tokenizer("diffusers_vae", model_class="AutoencoderKLCogVideoX", pretrained=str(tmp_path / "cog"))
    # 1 + 8k (diffusers decodes latent frames in pairs, odd first): 5 -> 9, 13 -> 17, 49 stays
    assert [cog.padded_size(n, 32, 32)[0] for n in (1, 2, 5, 9, 13, 49)] == [1, 9, 9, 9, 17, 49]
    assert cog.padded_size(9, 30, 33)[1:] == (32, 40) and cog.latent_shape(49, 480, 720) == (13, 60, 90)
    assert cog.temporal_boundaries(40) == []
    chunked = create_tokenizer("cogvideox_vae", pretrained=str(tmp_path / "cog"), chunk_frames=17)
    assert chunked.temporal_boundaries(40) == [17, 34]
    assert chunked.tokens_per_video(40, 32, 32) == 3 * 5 * 4 * 4

    _save_tiny("hunyuanvideo_vae", tmp_path / "hy")
    hy = create_tokenizer("hunyuanvideo_vae", pretrained=str(tmp_path / "hy"))
    # diffusers codes HunyuanVideo framewise (on by default): tiles every 12 frames past 16 frames
    assert hy.temporal_boundaries(13) == [] and hy.temporal_boundaries(16) == [12]  # 16 is padded to 17 > 16
    assert hy.temporal_boundaries(40) == [12, 24, 36]


def test_errors_are_one_clear_line(tmp_path, monkeypatch):
    _save_tiny("wan21_vae", tmp_path / "wan")
    with pytest.raises(ValueError, match="unknown or unsupported") as err:
        create_tokenizer("diffusers_vae", model_class="AutoencoderKLNope", config={})
    assert "\n" not in str(err.value) and "AutoencoderKLWan" in str(err.value)
    with pytest.raises(ValueError, match="torch_dtype") as err:
        create_tokenizer("wan21_vae", pretrained=str(tmp_path / "wan"), torch_dtype="float64")
    assert "\n" not in str(err.value)
    with pytest.raises(ValueError, match="patch_size"):
        create_tokenizer("wan22_vae", pretrained=str(tmp_path / "wan"))
    with pytest.raises(ValueError, match="no switchable tiling"):
        create_tokenizer("cosmos_cv8x8x8", config=CASES["cosmos_cv8x8x8"][1], tiling=True)
    with pytest.raises(WeightsError, match="does not exist"):
        create_tokenizer("wan21_vae", pretrained=str(tmp_path / "missing"))

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    for kwargs in ({}, {"pretrained": "no-such-org-xyz/no-such-video-vae"}):
        with pytest.raises(WeightsError) as err:
            create_tokenizer("cogvideox_vae", **kwargs)
        message = str(err.value)
        assert "\n" not in message and "HF_HUB_OFFLINE" in message
        assert "huggingface-cli download" in message and "pretrained: /path/to/" in message


def test_tiling_consistency_on_real_clips(tmp_path, clips32):
    _save_tiny("cogvideox_vae", tmp_path / "cog")
    tiles = {"tile_sample_min_height": 16, "tile_sample_min_width": 16,
             "tile_overlap_factor_height": 0.5, "tile_overlap_factor_width": 0.5}
    tok = create_tokenizer("cogvideox_vae", pretrained=str(tmp_path / "cog"), tiling=tiles)
    assert tok.vae.use_tiling
    video = clips32[:, :, :9]
    result = tiling_consistency(tok, video)
    assert tok.vae.use_tiling  # restored
    assert all(math.isfinite(v) for v in result.values())
    assert result["psnr_tiled_vs_untiled"] < 100.0  # the 16x16 tiles really changed the computation
    assert result["psnr_drop"] == pytest.approx(result["psnr_untiled"] - result["psnr_tiled"])

    cosmos = create_tokenizer("cosmos_cv8x8x8", config=CASES["cosmos_cv8x8x8"][1])
    with pytest.raises(ValueError, match="switchable tiling"):
        tiling_consistency(cosmos, video)


def test_harness_does_not_import_diffusers():
    code = ("import sys, video_tokenizers, harness_core.registry as r; r.TOKENIZERS.names(); "
            "assert 'diffusers' not in sys.modules, 'diffusers imported eagerly'")
    repo = Path(__file__).resolve().parents[1]
    subprocess.run([sys.executable, "-c", code], check=True, cwd=repo, timeout=120,
                   env={"OMP_NUM_THREADS": "1", "PYTHONPATH": str(repo), "HF_HUB_OFFLINE": "1"})
