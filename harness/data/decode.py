"""Video decoding with PyAV, frame folders and raw YUV files, and the clip geometry of the suites.

A *video source* is one of three things, told apart by the path itself
(:func:`decode_frames` and :func:`count_frames` dispatch on it, so every
dataset, the clip cache and the training clips accept all three):

* a **video file** (any container FFmpeg reads), decoded with PyAV. Frames
  are decoded in order (header frame counts are not trusted: the shared data
  README lists files whose headers lie);
* a **frame folder** (``path.is_dir()``): one image per frame
  (``.jpg``/``.jpeg``/``.png``, any case), in the order of their names with
  runs of digits compared as numbers (``00000.jpg < 00001.jpg``,
  ``im_2.jpg < im_10.jpg``); hidden files (``.``-prefixed) are ignored.
  Read with Pillow, converted to RGB. Only the requested frames are read;
  the frame count is the number of images (DAVIS ``JPEGImages/480p/<seq>``);
* a **raw YUV file** (suffix ``.yuv``): planar 8-bit YUV 4:2:0 (``yuv420p``,
  no header), the frame size taken from the name (``..._<W>x<H>...``, e.g.
  MCL-JCV's ``videoSRC01_1920x1080_30.yuv``); converted to RGB with the
  BT.709 limited-range matrix, chroma upsampled by repetition (nearest).

Every frame is then converted to RGB, the shorter side resized to the target
resolution and center-cropped to a square (:func:`resize_center_crop`, the one
resize of the harness), by one of two methods (suite key ``data.resize``,
:data:`RESIZE_METHODS`):

* ``bilinear_antialias`` (default): torch bilinear with antialiasing on the
  uint8 frames, long side ``round(long * R / short)``, crop offset
  ``floor((size - R) / 2)``;
* ``bicubic_pil``: CoordTok's official loader (huiwon-jang/CoordTok 8475272,
  ``tools/datasets.py`` ``VideoTimeSplit``: ``torchvision.transforms.Resize(R,
  BICUBIC)`` then ``CenterCrop(R)`` on PIL images), done here with the same
  torchvision functions on PIL images, so the rules are torchvision's (long side
  ``int(long * R / short)``, crop offset ``round((size - R) / 2)``, PIL's
  antialiased bicubic). docs/fidelity.md, data protocol.

Decoded data is ``uint8 [T, H, W, 3]``.
"""
from __future__ import annotations

import re
from pathlib import Path

import av
import numpy as np
import torch
import torch.nn.functional as F

from harness_core.api import to_model_range, to_uint8  # noqa: F401  (the contract's conversions; decoders and callers use them from here)
from harness_core.errors import HarnessError


class VideoDecodeError(HarnessError):
    """A video file could not be opened or decoded; the message names the path (exit code 2)."""


def _video_frames(path: Path):
    try:
        container = av.open(str(path))
    except (av.FFmpegError, OSError) as err:
        raise VideoDecodeError(f"cannot open video {path}: {err}") from err
    try:
        if not container.streams.video:
            raise VideoDecodeError(f"no video stream in {path}")
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        yield from container.decode(stream)
    except av.FFmpegError as err:
        raise VideoDecodeError(f"cannot decode video {path}: {err}") from err
    finally:
        container.close()


#: image suffixes of a frame folder (compared lower-case)
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
#: suffix of raw planar YUV 4:2:0 files
RAW_YUV_SUFFIX = ".yuv"


def _natural_key(name: str) -> list:
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", name)]


def frame_folder_images(path: str | Path) -> list[Path]:
    """The frame images of a frame folder, in frame order (see module docstring).

    Raises:
        VideoDecodeError: ``path`` is not a folder or holds no image.
    """
    path = Path(path)
    if not path.is_dir():
        raise VideoDecodeError(f"frame folder not found: {path}")
    images = sorted((p for p in path.iterdir()
                     if p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".") and p.is_file()),
                    key=lambda p: _natural_key(p.name))
    if not images:
        raise VideoDecodeError(f"no frame images ({', '.join(IMAGE_SUFFIXES)}) in frame folder {path}")
    return images


def _read_image(path: Path) -> np.ndarray:
    """One image as ``uint8 [H, W, 3]`` RGB."""
    from PIL import Image

    try:
        with Image.open(path) as image:
            return np.asarray(image.convert("RGB"))
    except OSError as err:  # PIL.UnidentifiedImageError is an OSError
        raise VideoDecodeError(f"cannot read frame image {path}: {err}") from err


def _folder_frames(path: Path, indices: list[int]) -> np.ndarray:
    images = frame_folder_images(path)
    frames = [_read_image(images[i]) for i in indices]
    for i, frame in zip(indices, frames):
        if frame.shape != frames[0].shape:
            raise VideoDecodeError(f"frame image {images[i]} is {frame.shape[1]}x{frame.shape[0]}, but {images[indices[0]]} "
                                   f"is {frames[0].shape[1]}x{frames[0].shape[0]}: the frames of {path} must share one size")
    return np.stack(frames)


def raw_yuv_size(path: str | Path) -> tuple[int, int]:
    """``(width, height)`` of a raw YUV file, from ``<W>x<H>`` in its name (``videoSRC01_1920x1080_30.yuv``).

    Raises:
        VideoDecodeError: the name holds no ``<W>x<H>``.
    """
    match = re.findall(r"(?:^|[_\-.])(\d+)x(\d+)(?=$|[_\-.])", Path(path).stem)
    if not match:
        raise VideoDecodeError(f"raw YUV file {path}: the frame size must be in its name as <width>x<height> "
                               f"(e.g. videoSRC01_1920x1080_30.yuv)")
    width, height = (int(v) for v in match[-1])
    return width, height


def _yuv_frame_bytes(width: int, height: int) -> int:
    return width * height + 2 * ((width + 1) // 2) * ((height + 1) // 2)


def yuv420_to_rgb(y: np.ndarray, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """BT.709 limited-range YUV 4:2:0 planes -> ``uint8 [H, W, 3]`` RGB.

    Args:
        y: ``uint8 [H, W]``; u, v: ``uint8 [ceil(H/2), ceil(W/2)]`` (upsampled by repetition).
    """
    h, w = y.shape
    u = u.repeat(2, 0).repeat(2, 1)[:h, :w].astype(np.float32) - 128.0
    v = v.repeat(2, 0).repeat(2, 1)[:h, :w].astype(np.float32) - 128.0
    luma = (y.astype(np.float32) - 16.0) * (255.0 / 219.0)
    cb, cr = u * (255.0 / 224.0), v * (255.0 / 224.0)
    rgb = np.stack([luma + 1.5748 * cr, luma - 0.18732 * cb - 0.46812 * cr, luma + 1.8556 * cb], axis=-1)
    return np.clip(np.rint(rgb), 0, 255).astype(np.uint8)


def _yuv_count(path: Path) -> int:
    width, height = raw_yuv_size(path)
    size, frame_bytes = path.stat().st_size, _yuv_frame_bytes(width, height)
    if size == 0 or size % frame_bytes:
        raise VideoDecodeError(f"raw YUV file {path} has {size} bytes, not a whole number of {width}x{height} yuv420p frames "
                               f"({frame_bytes} bytes each)")
    return size // frame_bytes


def _yuv_frames(path: Path, indices: list[int]) -> np.ndarray:
    width, height = raw_yuv_size(path)
    frame_bytes = _yuv_frame_bytes(width, height)
    cw, ch = (width + 1) // 2, (height + 1) // 2
    frames = []
    with open(path, "rb") as file:
        for index in indices:
            file.seek(index * frame_bytes)
            data = np.frombuffer(file.read(frame_bytes), dtype=np.uint8)
            if data.size != frame_bytes:
                raise VideoDecodeError(f"raw YUV file {path} ends inside frame {index}")
            y = data[: width * height].reshape(height, width)
            u = data[width * height : width * height + cw * ch].reshape(ch, cw)
            v = data[width * height + cw * ch :].reshape(ch, cw)
            frames.append(yuv420_to_rgb(y, u, v))
    return np.stack(frames)


def _is_raw_yuv(path: Path) -> bool:
    return path.suffix.lower() == RAW_YUV_SUFFIX and not path.is_dir()


def count_frames(path: str | Path) -> int:
    """Number of frames of a video source: frames that actually decode (PyAV, every frame) for a video file,
    images for a frame folder, whole frames for a raw YUV file.

    Raises:
        VideoDecodeError: unreadable source or no frame.
    """
    path = Path(path)
    if path.is_dir():
        return len(frame_folder_images(path))
    if _is_raw_yuv(path):
        return _yuv_count(path)
    count = sum(1 for _ in _video_frames(path))
    if count == 0:
        raise VideoDecodeError(f"no decodable frames in video {path}")
    return count


def source_stamp(path: str | Path) -> str:
    """A string that changes when a video source changes, for cache keys.

    A file: ``<resolved path>|<size>|<int mtime>``; a frame folder: ``<resolved path>|<images>|<total bytes>|<newest
    int mtime>`` over its frame images (so rewriting one frame changes it).
    """
    path = Path(path)
    if path.is_dir():
        stats = [p.stat() for p in frame_folder_images(path)]
        return f"{path.resolve()}|{len(stats)}|{sum(s.st_size for s in stats)}|{int(max(s.st_mtime for s in stats))}"
    stat = path.stat()
    return f"{path.resolve()}|{stat.st_size}|{int(stat.st_mtime)}"


#: the resize methods of ``data.resize`` (module docstring): name -> what it does, as results record it
RESIZE_METHODS = {
    "bilinear_antialias": "shorter side bilinear (torch, antialiased), center crop",
    "bicubic_pil": "shorter side PIL bicubic + center crop through torchvision (CoordTok tools/datasets.py VideoTimeSplit)",
}


def resize_center_crop(frames: np.ndarray, resolution: int, method: str = "bilinear_antialias") -> np.ndarray:
    """Resize the shorter side to ``resolution`` and center-crop a square (module docstring, :data:`RESIZE_METHODS`).

    Args:
        frames: ``uint8 [T, H, W, 3]``.
        resolution: the square side in pixels.
        method: ``"bilinear_antialias"`` or ``"bicubic_pil"``.
    Returns:
        ``uint8 [T, resolution, resolution, 3]``.

    Raises:
        ValueError: an unknown ``method``.
    """
    if method == "bicubic_pil":
        return _resize_crop_pil(frames, resolution)
    if method != "bilinear_antialias":
        raise ValueError(f"unknown resize method {method!r}; expected one of {sorted(RESIZE_METHODS)}")
    t, h, w, _ = frames.shape
    scale = resolution / min(h, w)
    new_h, new_w = max(resolution, round(h * scale)), max(resolution, round(w * scale))
    x = torch.from_numpy(frames).permute(0, 3, 1, 2).float()
    if (new_h, new_w) != (h, w):
        x = F.interpolate(x, size=(new_h, new_w), mode="bilinear", align_corners=False, antialias=True)
    top, left = (new_h - resolution) // 2, (new_w - resolution) // 2
    x = x[:, :, top : top + resolution, left : left + resolution]
    return x.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).contiguous().numpy()


def _resize_crop_pil(frames: np.ndarray, resolution: int) -> np.ndarray:
    """CoordTok's frame transform: ``Resize(resolution, BICUBIC)`` and ``CenterCrop(resolution)`` on PIL images."""
    from PIL import Image
    from torchvision.transforms import InterpolationMode
    from torchvision.transforms import functional as TF

    out = []
    for frame in frames:
        image = TF.resize(Image.fromarray(frame), resolution, interpolation=InterpolationMode.BICUBIC)
        out.append(np.asarray(TF.center_crop(image, resolution)))
    return np.stack(out)


def decode_frames(path: str | Path, start: int = 0, num_frames: int | None = None, stride: int = 1,
                  resolution: int | None = None, resize: str = "bilinear_antialias") -> np.ndarray:
    """Decode frames ``start, start + stride, ...`` (``num_frames`` of them, or to the end).

    Args:
        path: video file, frame folder or raw ``.yuv`` file (see module docstring).
        start: index of the first decoded frame (0-based, in decode order).
        num_frames: frames to return; ``None`` for all remaining frames.
        stride: keep every ``stride``-th frame.
        resolution: square output size (shorter side resized, center crop);
            ``None`` keeps the decoded size.
        resize: the resize method (:data:`RESIZE_METHODS`, suite key ``data.resize``).

    Returns:
        ``uint8 [T, H, W, 3]`` RGB.

    Raises:
        VideoDecodeError: unreadable file, or fewer frames than requested.
    """
    path = Path(path)
    stop = None if num_frames is None else start + (num_frames - 1) * stride + 1
    if path.is_dir() or _is_raw_yuv(path):  # random access: read only the wanted frames
        total = count_frames(path)
        indices = list(range(start, total if stop is None else min(stop, total), stride))
        if num_frames is not None and len(indices) < num_frames:
            raise VideoDecodeError(f"video {path} has too few frames: wanted {num_frames} from frame {start} with stride {stride}, "
                                   f"got {len(indices)}")
        if not indices:
            raise VideoDecodeError(f"no decodable frames in video {path}")
        frames = _folder_frames(path, indices) if path.is_dir() else _yuv_frames(path, indices)
        return resize_center_crop(frames, resolution, resize) if resolution else frames
    kept = []
    for index, frame in enumerate(_video_frames(path)):
        if stop is not None and index >= stop:
            break
        if index >= start and (index - start) % stride == 0:
            kept.append(frame.to_ndarray(format="rgb24"))
    if num_frames is not None and len(kept) < num_frames:
        raise VideoDecodeError(f"video {path} has too few frames: wanted {num_frames} from frame {start} with stride {stride}, got {len(kept)}")
    if not kept:
        raise VideoDecodeError(f"no decodable frames in video {path}")
    frames = np.stack(kept)
    return resize_center_crop(frames, resolution, resize) if resolution else frames
