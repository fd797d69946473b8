"""A short video through the paper protocol (issue 24): a 100-frame UCF-101-style video in 128-frame clips trains,
reconstructs and is scored with its last 28 frames padded and excluded from every score (CoordTok's loader pads
videos under 128 frames and passes n_frames: huiwon-jang/CoordTok 8475272 tools/datasets.py VideoTimeSplit)."""
from __future__ import annotations

import math

import pytest
import torch

from conftest import shared_path
from harness.chunks import reconstruct_video
from harness.config import DataConfig
from harness.data.datasets import build_dataset
from harness.data.sampling import TrainClips, stack_clips
from harness.scoring import Scorer
from harness_core.registry import create_tokenizer

METRICS = ["psnr", "ssim_gray", "lpips_vgg", "tdiff", "dynamics", "fvd_16f_chunks"]


@pytest.fixture(scope="module")
def short_video():
    """``(TrainClips, index)`` of ucf101_mini's 100-frame training video as a padded 128-frame 32x32 clip."""
    root = shared_path("data", "ucf101_mini")
    cfg = DataConfig(dataset="ucf101", root=str(root), resolution=32, frames=128, short_videos="pad")
    clips = TrainClips(build_dataset(cfg), seed=0)
    index = next(i for i, r in enumerate(clips.records) if r.path.name == "v_WalkCampus_g08_c01.avi")
    return clips, index


def test_a_100_frame_video_trains_reconstructs_and_scores_its_real_frames_only(short_video):
    clips, index = short_video
    frames, _, n_frames = clips.window(index, 0)
    assert n_frames == 100 and (frames[100:] == frames[99]).all()
    batch = stack_clips([(frames, 0, n_frames)])
    torch.manual_seed(0)
    model = create_tokenizer("coordtok", size="tiny", frames=128, resolution=32, stage1_steps=1, points_per_video=64,
                             stage2_frames=4)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    for step in range(2):  # a stage-1 and a stage-2 step on the padded video
        torch.manual_seed(step)
        losses = model.training_losses(batch.videos, step, n_frames=batch.n_frames)
        assert math.isfinite(float(losses["loss"])) and float(losses["stage"]) == step + 1
        losses["loss"].backward()
        optimizer.step()
        optimizer.zero_grad()
    model.eval()
    garbage = batch.videos.clone()
    garbage[:, :, 100:] = torch.rand_like(garbage[:, :, 100:]) * 2 - 1  # other content in the padded frames
    with torch.no_grad():
        recon, _ = reconstruct_video(model, batch.videos, n_frames=batch.n_frames)
        recon_garbage, _ = reconstruct_video(model, garbage, n_frames=batch.n_frames)
    assert torch.equal(recon[:, :, :100], recon_garbage[:, :, :100])  # the padding never reaches a real frame

    scores, with_garbage, prefix = (Scorer(METRICS) for _ in range(3))
    scores.update(batch.videos, recon, [{"clip": "a"}], n_frames=batch.n_frames)
    fake_garbage = recon_garbage.clone()
    fake_garbage[:, :, 100:] = -fake_garbage[:, :, 100:]  # padded frames of the reconstruction changed too
    with_garbage.update(garbage, fake_garbage, [{"clip": "a"}], n_frames=batch.n_frames)
    prefix.update(batch.videos[:, :, :100], recon[:, :, :100], [{"clip": "a"}])
    summary, garbage_summary, prefix_summary = scores.compute()[0], with_garbage.compute()[0], prefix.compute()[0]
    assert set(summary) == set(prefix_summary)
    for key, value in prefix_summary.items():  # every score is the score of the 100 real frames, whatever the padding
        assert summary[key] == value == garbage_summary[key], key
    assert len(scores.frame_table()) == 100 and summary["fvd_16f_chunks_n"] == 6  # 6 whole 16-frame chunks of real frames
