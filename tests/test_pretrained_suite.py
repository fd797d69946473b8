"""Evaluation-only (pretrained) entries next to a trained tokenizer, through the whole engine (issue 16).

Two tiny diffusers VAEs with different frame rules (CogVideoX 1 + 8k, Wan 2.1 1 + 4k) are saved with
``save_pretrained`` and named by local folder; a grid3d is trained as usual. The 16-frame sample clips need
padding for both VAEs. Every row is reconstructed, evaluated and gets a generator; the leaderboard marks the
pretrained rows with their weights' identity and shows the value compression.
"""
from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import pytest
import yaml

pytest.importorskip("diffusers")

from harness.config import load_suite  # noqa: E402
from harness.runner import SuiteRunner  # noqa: E402

#: CogVideoX's spatial tiles shrunk to 16 px so that the tiling check changes the computation at 32x32
COG_TILES = {"tile_sample_min_height": 16, "tile_sample_min_width": 16,
             "tile_overlap_factor_height": 0.5, "tile_overlap_factor_width": 0.5}


def _save(cls_name: str, config: dict, folder: Path) -> dict[str, str]:
    import diffusers
    import torch

    torch.manual_seed(0)
    getattr(diffusers, cls_name).from_config(config).save_pretrained(folder)
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.glob("*.safetensors")}


@pytest.fixture(scope="module")
def pretrained_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("pretrained")
    cog = _save("AutoencoderKLCogVideoX", dict(block_out_channels=(8, 8, 8, 8), latent_channels=4, layers_per_block=1,
                                               norm_num_groups=2, sample_height=32, sample_width=32), tmp / "cog")
    wan = _save("AutoencoderKLWan", dict(base_dim=8, z_dim=4, num_res_blocks=1, latents_mean=[0.1, -0.2, 0.3, 0.0],
                                         latents_std=[2.0, 0.5, 1.5, 1.0]), tmp / "wan")
    suite = {
        "name": "pretrained", "seed": 0, "output_dir": str(tmp / "results"),
        "data": {"dataset": "samples", "resolution": 32, "frames": 16},
        "train": {"steps": 2, "batch_size": 2, "checkpoint_every": 2},
        "evaluate": {"metrics": ["psnr", "ssim"], "batch_size": 3, "tiling_check": True},
        "generation": {"enabled": True, "model": "tiny", "steps": 2, "batch_size": 2, "num_train_clips": 4,
                       "num_norm_clips": 4, "encode_batch_size": 2, "sampling_steps": 4, "num_samples": 2, "num_real": 2,
                       "sample_batch_size": 2, "num_gif_samples": 0, "fvd_protocols": [], "checkpoint_every": 2},
        "tokenizers": [
            {"id": "grid3d_tiny", "name": "grid3d", "kwargs": {"size": "tiny", "channels": 8}},
            {"id": "cogvideox", "name": "cogvideox_vae", "pretrained": True,
             "kwargs": {"pretrained": str(tmp / "cog"), "tiling": COG_TILES}},
            {"id": "wan21", "name": "wan21_vae", "train": None, "kwargs": {"pretrained": str(tmp / "wan")}},
        ],
    }
    (tmp / "suite.yaml").write_text(yaml.safe_dump(suite))
    results = SuiteRunner(load_suite(tmp / "suite.yaml"), show_progress=False).run()
    return results, {"cogvideox": cog, "wan21": wan}


@pytest.mark.slow
def test_pretrained_rows_are_evaluated_not_trained_and_get_a_generator(pretrained_run):
    results, hashes = pretrained_run
    for run in ("cogvideox", "wan21"):
        train = json.loads((results / run / "train.json").read_text())
        assert train["pretrained"] is True and train["steps"] == 0 and not (results / run / "checkpoint.pt").exists()
        assert train["weights"]["sha256"] == hashes[run]
        record = json.loads((results / run / "metrics.json").read_text())
        assert record["pretrained"] is True and record["weights"]["sha256"] == hashes[run]
        assert record["latent_values"] == record["tokens_per_video"] * 4  # 4 latent channels
        assert record["token_info"]["padded_frames"] == 1  # 16 frames -> 17 (1 + 8k and 1 + 4k)
        assert math.isfinite(record["metrics"]["psnr"])
    for run in ("grid3d_tiny", "cogvideox", "wan21"):
        generation = json.loads((results / run / "generation" / "metrics.json").read_text())
        assert generation["generator"]["steps"] == 2, run
    assert (results / "grid3d_tiny" / "checkpoint.pt").is_file()


@pytest.mark.slow
def test_tiling_check_is_recorded_for_the_tiled_vae(pretrained_run):
    results, _ = pretrained_run
    check = json.loads((results / "cogvideox" / "metrics.json").read_text())["tiling_consistency"]
    assert set(check) == {"psnr_tiled_vs_untiled", "psnr_untiled", "psnr_tiled", "psnr_drop"}
    assert all(math.isfinite(v) for v in check.values()) and check["psnr_tiled_vs_untiled"] < 100.0
    assert json.loads((results / "grid3d_tiny" / "metrics.json").read_text())["tiling_consistency"] is None


@pytest.mark.slow
def test_leaderboard_marks_pretrained_rows_with_weights_and_compression(pretrained_run):
    results, hashes = pretrained_run
    board = (results / "leaderboard.md").read_text()
    main = board[:board.index("## Costs")]
    for run, name in (("cogvideox", "cogvideox_vae"), ("wan21", "wan21_vae")):
        line = next(line for line in main.splitlines() if line.startswith(f"| {run} "))
        assert f"{name} (pretrained)" in line
        # 3 x 16 x 32 x 32 input values over 4 channels x (t x 4 x 4) latent positions
        record = json.loads((results / run / "metrics.json").read_text())
        assert f"{3 * 16 * 32 * 32 / record['latent_values']:.0f}x" in line
        digest = next(iter(hashes[run].values()))
        assert f"pretrained weights {results.parent / run.replace('cogvideox', 'cog').replace('wan21', 'wan')}" in board
        assert f"sha256:{digest[:12]}" in board
    assert "grid3d (pretrained)" not in board
    assert next(line for line in board.splitlines() if line.startswith("- tokenizer cogvideox")).count("tiling check") == 1
