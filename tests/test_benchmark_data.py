"""Benchmark data (issue 16, item 5): frame folders, raw YUV, and the davis2017 / mcl_jcv / kinetics600 / tokenbench loaders.

Every layout is built tiny inside ``tmp_path`` from real frames (the carphone and bikes sample videos), the dataset is
built through the registry, and the decoded clips are compared with the source frames after the harness's one resize.
"""
from __future__ import annotations

import os
from pathlib import Path

import av
import numpy as np
import pytest
from PIL import Image

from harness.config import DataConfig
from harness.data.datasets import DataError, build_dataset
from harness.data.decode import (VideoDecodeError, count_frames, decode_frames, resize_center_crop, source_stamp,
                                 yuv420_to_rgb)
from harness.data.sampling import ClipCache, evaluation_clips
from harness_core.registry import DATASETS

FRAMES, RES = 4, 32  # clip length and size of every dataset here: a time split needs 2 x 4 frames


@pytest.fixture(scope="module")
def real_frames() -> np.ndarray:
    """12 real frames of carphone_pristine.mp4 at their native 176x144, ``uint8 [12, 144, 176, 3]``."""
    from harness.data.samples import sample_video_paths

    return decode_frames(sample_video_paths()[2], start=10, num_frames=12)


@pytest.fixture(scope="module")
def other_frames() -> np.ndarray:
    """10 real frames of bikes.mp4 shrunk to 160x68 (even sizes for yuv420p), ``uint8 [10, 68, 160, 3]``."""
    from harness.data.samples import sample_video_paths

    frames = decode_frames(sample_video_paths()[1], start=30, num_frames=10)
    return np.stack([np.asarray(Image.fromarray(f).resize((160, 68), Image.BILINEAR)) for f in frames])


def cfg(dataset: str, root: Path, tmp_path: Path, **kwargs) -> DataConfig:
    return DataConfig(dataset=dataset, root=str(root), resolution=RES, frames=FRAMES, cache_dir=str(tmp_path / "cache"), **kwargs)


def write_images(folder: Path, frames: np.ndarray, pattern: str = "{:05d}.jpg") -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / pattern.format(i) for i in range(len(frames))]
    for path, frame in zip(paths, frames):
        Image.fromarray(frame).save(path, quality=95) if path.suffix == ".jpg" else Image.fromarray(frame).save(path)
    return paths


def read_images(paths: list[Path]) -> np.ndarray:
    """What any reader of these JPEG/PNG files sees: Pillow's decode, ``uint8 [T, H, W, 3]``."""
    return np.stack([np.asarray(Image.open(p).convert("RGB")) for p in paths])


def write_mp4(path: Path, frames: np.ndarray, fps: int = 25) -> None:
    """``uint8 [T, H, W, 3]`` as MPEG-4 part 2 in an .mp4 container (lossy: compare against its own decode)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=fps)
        stream.height, stream.width = frames.shape[1:3]
        stream.pix_fmt = "yuv420p"
        for frame in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")))
        container.mux(stream.encode())


def rgb_to_yuv420(frames: np.ndarray) -> bytes:
    """BT.709 limited-range planar 4:2:0 (chroma: mean of each 2x2 block), the layout of MCL-JCV's .yuv sources."""
    out = []
    for frame in frames.astype(np.float64):
        r, g, b = frame[..., 0], frame[..., 1], frame[..., 2]
        y = 0.2126 * r + 0.7152 * g + 0.0722 * b
        cb, cr = (b - y) / 1.8556, (r - y) / 1.5748
        h, w = y.shape
        sub = lambda c: c.reshape(h // 2, 2, w // 2, 2).mean(axis=(1, 3))  # noqa: E731
        planes = [16 + y * 219 / 255, 128 + sub(cb) * 224 / 255, 128 + sub(cr) * 224 / 255]
        out.extend(np.clip(np.rint(p), 0, 255).astype(np.uint8).tobytes() for p in planes)
    return b"".join(out)


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    return float(10 * np.log10(255.0**2 / np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)))


def one_clip(dataset) -> tuple:
    """The first evaluation clip of ``dataset`` through the clip cache: ``(clip, uint8 [T, H, W, 3])``."""
    clip = evaluation_clips(dataset, seed=0)[0]
    return clip, ClipCache(dataset.cache_dir).load(clip)


def expected_clip(source: np.ndarray, clip) -> np.ndarray:
    return resize_center_crop(source[clip.start : clip.start + (clip.frames - 1) * clip.stride + 1 : clip.stride], clip.resolution)


def assert_one_line(err: pytest.ExceptionInfo, *needles: str) -> None:
    message = str(err.value)
    assert "\n" not in message and message.strip() == message
    for needle in needles:
        assert needle in message, (needle, message)


# --------------------------------------------------------------------------- frame folders and raw YUV


def test_frame_folder_decodes_like_the_video_decoder(real_frames, tmp_path):
    folder = tmp_path / "seq"
    write_images(folder, real_frames, "im_{}.png")  # unpadded numbers: im_2 must come before im_10
    (folder / ".im_0.png").write_bytes(b"resource fork")  # hidden files are not frames
    assert count_frames(folder) == 12
    assert np.array_equal(decode_frames(folder), real_frames)  # PNG is lossless: the exact frames, in order
    clip = decode_frames(folder, start=2, num_frames=4, stride=2, resolution=RES)
    assert clip.dtype == np.uint8 and clip.shape == (4, RES, RES, 3)
    assert np.array_equal(clip, resize_center_crop(real_frames[2:9:2], RES))
    assert np.array_equal(decode_frames(folder, start=8, resolution=RES), resize_center_crop(real_frames[8:], RES))
    with pytest.raises(VideoDecodeError, match="too few frames"):
        decode_frames(folder, start=10, num_frames=4)


def test_frame_folder_errors_and_cache_stamp(real_frames, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(VideoDecodeError, match=str(empty)):
        count_frames(empty)
    folder = tmp_path / "seq"
    paths = write_images(folder, real_frames[:3])
    stamp = source_stamp(folder)
    os.utime(paths[1], (paths[1].stat().st_atime, paths[1].stat().st_mtime + 10))
    assert source_stamp(folder) != stamp  # one rewritten frame invalidates cached clips
    paths[2].write_bytes(b"not a jpeg")
    with pytest.raises(VideoDecodeError, match=str(paths[2])):
        decode_frames(folder)
    video = tmp_path / "x.mp4"
    write_mp4(video, real_frames[:2])
    stat = video.stat()
    assert source_stamp(video) == f"{video.resolve()}|{stat.st_size}|{int(stat.st_mtime)}"  # file keys unchanged


def test_raw_yuv420_reads_bt709_like_ffmpeg(other_frames, tmp_path):
    path = tmp_path / "videoSRC07_160x68_25.yuv"
    path.write_bytes(rgb_to_yuv420(other_frames))
    assert count_frames(path) == 10
    frames = decode_frames(path)
    assert frames.dtype == np.uint8 and frames.shape == (10, 68, 160, 3)
    assert psnr(frames, other_frames) > 30  # the right matrix and range (4:2:0 loses some colour detail)
    with av.open(str(path), format="rawvideo", options={"video_size": "160x68", "pixel_format": "yuv420p"}) as container:
        ffmpeg = np.stack([f.reformat(format="rgb24", src_colorspace="ITU709").to_ndarray() for f in container.decode(video=0)])
    assert np.abs(frames.astype(int) - ffmpeg).mean() < 2.5  # FFmpeg interpolates chroma, we repeat it
    assert np.array_equal(decode_frames(path, 3, 4, 2, RES), resize_center_crop(frames[3:10:2], RES))
    grey = yuv420_to_rgb(np.full((2, 2), 235, np.uint8), np.full((1, 1), 128, np.uint8), np.full((1, 1), 128, np.uint8))
    assert (grey == 255).all()
    (tmp_path / "videoSRC08_160x68_25.yuv").write_bytes(path.read_bytes()[:-7])
    with pytest.raises(VideoDecodeError, match="not a whole number"):
        count_frames(tmp_path / "videoSRC08_160x68_25.yuv")
    (tmp_path / "nosize.yuv").write_bytes(b"\0" * 64)
    with pytest.raises(VideoDecodeError, match="<width>x<height>"):
        count_frames(tmp_path / "nosize.yuv")


# --------------------------------------------------------------------------- davis2017


def make_davis(root: Path, real_frames, other_frames) -> dict[str, list[Path]]:
    """DAVIS/JPEGImages/480p/<seq>/00000.jpg + ImageSets/2017/{train,val}.txt: 1 train, 2 val, 1 too-short val sequence."""
    seqs = {"bear": real_frames[:8], "bike-packing": real_frames[4:], "dogs-jump": other_frames, "shooting": other_frames[:3]}
    paths = {name: write_images(root / "JPEGImages" / "480p" / name, frames) for name, frames in seqs.items()}
    lists = root / "ImageSets" / "2017"
    lists.mkdir(parents=True)
    (lists / "train.txt").write_text("bear\n")
    (lists / "val.txt").write_text("bike-packing\ndogs-jump\nshooting\n")
    return paths


def test_davis2017_official_lists_and_frames(real_frames, other_frames, tmp_path):
    root = tmp_path / "DAVIS"
    paths = make_davis(root, real_frames, other_frames)
    dataset = build_dataset(cfg("davis2017", root, tmp_path))
    assert [r.path.name for r in dataset.train] == ["bear"]
    assert [r.path.name for r in dataset.eval] == ["bike-packing", "dogs-jump"]
    assert [(r.start, r.stop) for r in dataset.eval] == [(0, 8), (0, 10)]
    assert len(dataset.dropped) == 1 and "shooting" in dataset.dropped[0]
    assert dataset.classes == ["video"] and "val" in dataset.protocol()["split"] and "480p" in dataset.protocol()["split"]
    clip, frames = one_clip(dataset)
    assert frames.dtype == np.uint8 and frames.shape == (FRAMES, RES, RES, 3)
    assert np.array_equal(frames, expected_clip(read_images(paths[clip.record.path.name]), clip))
    DATASETS.get("davis2017").check_root(cfg("davis2017", root, tmp_path), "suite.yaml")


def test_davis2017_missing_or_wrong_layout_says_what_to_download(real_frames, other_frames, tmp_path):
    check = DATASETS.get("davis2017").check_root
    missing = tmp_path / "nowhere"
    with pytest.raises(DataError) as err:
        check(cfg("davis2017", missing, tmp_path), "suite.yaml")
    assert_one_line(err, str(missing), "DAVIS-2017-trainval-480p.zip", "davischallenge.org", "data.root")
    make_davis(tmp_path / "data" / "DAVIS", real_frames[:8], other_frames[:8])
    with pytest.raises(DataError) as err:  # data.root one level too high: say where the layout is
        check(cfg("davis2017", tmp_path / "data", tmp_path), "suite.yaml")
    assert_one_line(err, "JPEGImages/480p", str(tmp_path / "data" / "DAVIS"), "data.root")
    (tmp_path / "data" / "DAVIS" / "ImageSets" / "2017" / "val.txt").unlink()
    with pytest.raises(DataError) as err:
        check(cfg("davis2017", tmp_path / "data" / "DAVIS", tmp_path), "suite.yaml")
    assert_one_line(err, "val.txt", "download")


# --------------------------------------------------------------------------- mcl_jcv


def test_mcl_jcv_raw_yuv_sources_split_in_time(real_frames, other_frames, tmp_path):
    root = tmp_path / "MCL-JCV"
    (root / "src").mkdir(parents=True)
    (root / "src" / "videoSRC01_176x144_30.yuv").write_bytes(rgb_to_yuv420(real_frames))
    (root / "videoSRC02_160x68_25.yuv").write_bytes(rgb_to_yuv420(other_frames))
    write_mp4(root / "videoSRC02.mp4", other_frames[:8])  # a conversion of a sequence that has its .yuv: ignored
    write_mp4(root / "videoSRC03_160x68_25.mp4", other_frames)  # a conversion without .yuv: used
    write_mp4(root / "videoSRC01_176x144_30_qp_22.mp4", real_frames[:8])  # a coded version: not a source
    dataset = build_dataset(cfg("mcl_jcv", root, tmp_path))
    assert [r.path.name for r in dataset.eval] == ["videoSRC01_176x144_30.yuv", "videoSRC02_160x68_25.yuv", "videoSRC03_160x68_25.mp4"]
    assert [(r.start, r.stop) for r in dataset.eval] == [(8, 12), (6, 10), (6, 10)]
    assert [(r.start, r.stop) for r in dataset.train] == [(0, 8), (0, 6), (0, 6)]
    assert "held-out tail" in dataset.protocol()["split"]
    clip, frames = one_clip(dataset)
    assert frames.dtype == np.uint8 and frames.shape == (FRAMES, RES, RES, 3)
    assert np.array_equal(frames, expected_clip(decode_frames(clip.record.path), clip))
    assert psnr(frames, expected_clip(real_frames if "SRC01" in clip.record.path.name else other_frames, clip)) > 28


def test_mcl_jcv_missing_folder_says_what_to_download(tmp_path):
    check = DATASETS.get("mcl_jcv").check_root
    with pytest.raises(DataError) as err:
        check(cfg("mcl_jcv", tmp_path / "MCL-JCV", tmp_path), "suite.yaml")
    assert_one_line(err, str(tmp_path / "MCL-JCV"), "mcl.usc.edu/mcl-jcv-dataset", "videoSRC01_1920x1080_30.yuv", "data.root")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "clip.yuv").write_bytes(b"\0" * 96)
    with pytest.raises(DataError) as err:
        check(cfg("mcl_jcv", tmp_path / "other", tmp_path), "suite.yaml")
    assert_one_line(err, "no videoSRC", "download")
    with pytest.raises(DataError) as err:
        check(DataConfig(dataset="mcl_jcv"), "suite.yaml")
    assert_one_line(err, "data.root is not set", "mcl_jcv")


# --------------------------------------------------------------------------- kinetics600


def test_kinetics600_class_folders_labels_and_clips(real_frames, other_frames, tmp_path):
    root = tmp_path / "k600" / "val"
    write_mp4(root / "air drumming" / "-VtLx-mcPds_000012_000022.mp4", real_frames)
    write_mp4(root / "abseiling" / "0wR5jVB-WPk_000417_000427.mp4", other_frames)
    write_mp4(root / "abseiling" / "3caPS4FHFF8_000036_000046.mp4", real_frames[2:])
    (root / "empty class").mkdir()
    dataset = build_dataset(cfg("kinetics600", root, tmp_path))
    assert dataset.classes == ["abseiling", "air drumming"]
    assert [(r.path.name[:11], r.label) for r in dataset.eval] == [("0wR5jVB-WPk", 0), ("3caPS4FHFF8", 0), ("-VtLx-mcPds", 1)]
    assert all(t.path == e.path and t.stop == e.start for t, e in zip(dataset.train, dataset.eval))
    assert "Kinetics-600" in dataset.protocol()["split"]
    clip, frames = one_clip(dataset)
    assert frames.dtype == np.uint8 and frames.shape == (FRAMES, RES, RES, 3)
    assert np.array_equal(frames, expected_clip(decode_frames(clip.record.path), clip))


def test_kinetics600_missing_or_flat_folder_says_what_to_do(real_frames, tmp_path):
    check = DATASETS.get("kinetics600").check_root
    with pytest.raises(DataError) as err:
        check(cfg("kinetics600", tmp_path / "val", tmp_path), "suite.yaml")
    assert_one_line(err, str(tmp_path / "val"), "Kinetics-600", "cvdfoundation/kinetics-dataset", "<class name>/", "data.root")
    write_mp4(tmp_path / "flat" / "-VtLx-mcPds_000012_000022.mp4", real_frames[:2])
    with pytest.raises(DataError) as err:
        check(cfg("kinetics600", tmp_path / "flat", tmp_path), "suite.yaml")
    assert_one_line(err, "flat CVDF layout", "val.csv")


# --------------------------------------------------------------------------- tokenbench


def test_tokenbench_flat_layout_sources_and_manifest(real_frames, other_frames, tmp_path):
    root = tmp_path / "tokenbench"
    write_mp4(root / "bdd_100_0114bdd0-f317da84.mp4", real_frames)
    write_mp4(root / "panda_2k_jxJAdGTE.mp4", other_frames)
    write_mp4(root / "egoexo4D_cmu_bike01_2_cam01.mp4", real_frames[:10])
    (root / "notes.txt").write_text("not a video\n")
    dataset = build_dataset(cfg("tokenbench", root, tmp_path))
    assert dataset.classes == ["bdd_100", "egoexo4D", "panda"]
    assert [(r.path.name, r.label) for r in dataset.eval] == [
        ("bdd_100_0114bdd0-f317da84.mp4", 0), ("egoexo4D_cmu_bike01_2_cam01.mp4", 1), ("panda_2k_jxJAdGTE.mp4", 2)]
    assert "TokenBench" in dataset.protocol()["split"]
    clip, frames = one_clip(dataset)
    assert frames.dtype == np.uint8 and frames.shape == (FRAMES, RES, RES, 3)
    assert np.array_equal(frames, expected_clip(decode_frames(clip.record.path), clip))

    (root / "manifest.txt").write_text("# the subset\npanda_2k_jxJAdGTE.mp4\n")
    subset = build_dataset(cfg("tokenbench", root, tmp_path))
    assert [r.path.name for r in subset.eval] == ["panda_2k_jxJAdGTE.mp4"] and subset.classes == ["panda"]
    (root / "manifest.txt").write_text("panda_2k_jxJAdGTE.mp4\nbridgev2_missing.mp4\n")
    with pytest.raises(DataError) as err:
        DATASETS.get("tokenbench").check_root(cfg("tokenbench", root, tmp_path), "suite.yaml")
    assert_one_line(err, "manifest.txt", "bridgev2_missing.mp4")


def test_tokenbench_nested_layout_and_errors(real_frames, other_frames, tmp_path):
    root = tmp_path / "nested"
    write_mp4(root / "bridgev2" / "toykitchen1_traj0.mp4", other_frames)
    write_images(root / "bridgev2" / "frames_only", other_frames)  # no manifest: only files with data.extensions
    write_mp4(root / "egoexo4D" / "cmu_bike01_2" / "cam01.mp4", real_frames)
    dataset = build_dataset(cfg("tokenbench", root, tmp_path))
    assert dataset.classes == ["bridgev2", "egoexo4D"] and [r.label for r in dataset.eval] == [0, 1]
    write_mp4(root / "egoexo4D" / "cmu_bike01_3" / "cam01.mp4", real_frames)
    with pytest.raises(DataError, match="share the name 'cam01'"):
        build_dataset(cfg("tokenbench", root, tmp_path))
    with pytest.raises(DataError) as err:
        DATASETS.get("tokenbench").check_root(cfg("tokenbench", tmp_path / "missing", tmp_path), "suite.yaml")
    assert_one_line(err, str(tmp_path / "missing"), "github.com/NVlabs/TokenBench", "preprocessing_script.py", "data.root")
