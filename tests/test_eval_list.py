"""The paper protocol's data rules (issue 24): seeded evaluation lists, given lists, padded short videos, the
official resize (CoordTok supp. B.1; huiwon-jang/CoordTok 8475272 tools/datasets.py; docs/fidelity.md, data rows)."""
from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from harness.config import DataConfig
from harness.data.datasets import DataError, build_dataset
from harness.data.decode import decode_frames
from harness.data.sampling import (ClipCache, TrainClips, evaluation_clips, read_eval_list, write_eval_list)
from tests.conftest import shared_path


def ucf_mini(tmp_path: Path, **data) -> DataConfig:
    root = shared_path("data", "ucf101_mini")
    return DataConfig(**{"dataset": "ucf101", "root": str(root), "resolution": 32, "frames": 128, "short_videos": "pad",
                          "cache_dir": str(tmp_path / "cache"), **data})


def test_drawn_list_has_the_asked_clips_from_test_videos_only_and_is_seeded(tmp_path):
    dataset = build_dataset(ucf_mini(tmp_path, eval_clips=10_000))
    clips = evaluation_clips(dataset, seed=11)
    test_videos = {r.path for r in dataset.eval}
    assert len(clips) == 10_000 and {c.record.path for c in clips} == test_videos
    assert not test_videos & {r.path for r in dataset.train}
    assert len({c.clip_id for c in clips}) == 10_000  # duplicates of (video, start) keep distinct ids
    again = evaluation_clips(build_dataset(ucf_mini(tmp_path, eval_clips=10_000)), seed=11)
    assert [(c.record.path, c.start, c.n_frames) for c in again] == [(c.record.path, c.start, c.n_frames) for c in clips]
    other = evaluation_clips(dataset, seed=12)
    assert [(c.record.path, c.start) for c in other] != [(c.record.path, c.start) for c in clips]
    # every test video of ucf101_mini is shorter than 128 frames: clips start at 0 and are padded
    counts = Counter(c.record.path.name for c in clips)
    assert all(c.start == 0 and c.n_frames == c.record.stop for c in clips) and min(counts.values()) > 1500


def test_written_list_reads_back_as_the_same_clips(tmp_path):
    cfg = ucf_mini(tmp_path, eval_clips=40)
    dataset = build_dataset(cfg)
    clips = evaluation_clips(dataset, seed=3)
    path = tmp_path / "eval_list.txt"
    write_eval_list(path, clips, cfg.root)
    first = path.read_text().splitlines()[0].split()
    assert first[0].count("/") == 1 and not first[0].startswith("/")  # relative to data.root: Class/v_....avi
    again = read_eval_list(dataset, path)
    assert [(c.record.path, c.start, c.n_frames, c.clip_id) for c in again] == \
           [(c.record.path, c.start, c.n_frames, c.clip_id) for c in clips]


def test_a_given_list_is_used_as_is(tmp_path):
    path = tmp_path / "evallist.txt"
    path.write_text("WalkCampus/v_WalkCampus_g01_c01.avi 0 -1\n\nRideBike/v_RideBike_g01_c01.avi 10 60 0 16\n"
                    "WalkCampus/v_WalkCampus_g01_c01.avi 0 -1\n")
    clips = evaluation_clips(build_dataset(ucf_mini(tmp_path, eval_list=str(path), eval_clips=500)), seed=0)
    assert [(c.record.path.name, c.start, c.n_frames) for c in clips] == [
        ("v_WalkCampus_g01_c01.avi", 0, 100), ("v_RideBike_g01_c01.avi", 10, 50), ("v_WalkCampus_g01_c01.avi", 0, 100)]
    assert clips[0].clip_id != clips[2].clip_id


@pytest.mark.parametrize("line, problem", [
    ("WalkCampus/v_WalkCampus_g01_c01.avi 0", "expected 'relpath start end'"),
    ("WalkCampus/v_WalkCampus_g08_c01.avi 0 50", "is not a video of the 'ucf101' evaluation split"),
    ("WalkCampus/v_WalkCampus_g01_c01.avi 20 400", "lie outside the 100 frames"),
])
def test_a_bad_list_line_is_named(tmp_path, line, problem):
    path = tmp_path / "evallist.txt"
    path.write_text(f"RideBike/v_RideBike_g01_c01.avi 0 -1\n{line}\n")
    with pytest.raises(DataError, match=f"data.eval_list {path}, line 2: .*{problem}"):
        evaluation_clips(build_dataset(ucf_mini(tmp_path, eval_list=str(path))), seed=0)


def test_short_videos_are_padded_with_their_frame_count_or_dropped(tmp_path):
    dataset = build_dataset(ucf_mini(tmp_path))
    assert len(dataset.eval) == 5 and not dataset.dropped
    clip = next(c for c in evaluation_clips(dataset, seed=0) if c.record.path.name == "v_WalkCampus_g01_c01.avi")
    frames = ClipCache(tmp_path / "clips").load(clip)
    real = decode_frames(clip.record.path, 0, 100, 1, 32)
    assert clip.n_frames == 100 and frames.shape == (128, 32, 32, 3)
    assert np.array_equal(frames[:100], real) and (frames[100:] == real[-1]).all()
    train = TrainClips(dataset, seed=5)
    lengths = {train.clip(i)[2] for i in range(40)}
    assert lengths == {80, 100, 128}  # 140/150-frame training videos give whole clips, the others are padded
    dropped = build_dataset(ucf_mini(tmp_path, short_videos="drop"))
    assert len(dropped.eval) == 0 and len(dropped.dropped) == 9  # 5 test + 4 training videos under 128 frames


def test_bicubic_pil_is_the_official_frame_transform(tmp_path):
    """``data.resize: bicubic_pil`` equals CoordTok's ``VideoTimeSplit`` transform (torchvision Resize(R, BICUBIC),
    CenterCrop(R), ToTensor) on the decoded frames, and differs from the default bilinear resize."""
    from PIL import Image
    from torchvision import transforms as T

    path = shared_path("data", "ucf101_mini", "RideBike", "v_RideBike_g01_c01.avi")
    official = T.Compose([T.Resize(32, interpolation=T.InterpolationMode.BICUBIC), T.CenterCrop(32), T.ToTensor()])
    raw = decode_frames(path, 0, 4)
    expected = np.stack([(official(Image.fromarray(f)).numpy().transpose(1, 2, 0) * 255).round() for f in raw])
    ours = decode_frames(path, 0, 4, 1, 32, "bicubic_pil")
    assert np.array_equal(ours.astype(np.float64), expected)
    assert not np.array_equal(ours, decode_frames(path, 0, 4, 1, 32))


def test_pad_needs_whole_videos(tmp_path):
    with pytest.raises(DataError, match="data.short_videos: pad .* 'samples' splits each video in time"):
        build_dataset(DataConfig(dataset="samples", short_videos="pad", cache_dir=str(tmp_path)))
