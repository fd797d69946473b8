"""Video decoding with PyAV, and the clip geometry of the suites.

Frames are decoded in order (header frame counts are not trusted: the
shared data README lists files whose headers lie), converted to RGB, the
shorter side resized to the target resolution (bilinear, antialiased) and
center-cropped to a square. Decoded data is ``uint8 [T, H, W, 3]``.
"""
from __future__ import annotations

from pathlib import Path

import av
import numpy as np
import torch
import torch.nn.functional as F


class VideoDecodeError(RuntimeError):
    """A video file could not be opened or decoded; the message names the path."""


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


def count_frames(path: str | Path) -> int:
    """Number of frames that actually decode (PyAV, every frame)."""
    count = sum(1 for _ in _video_frames(Path(path)))
    if count == 0:
        raise VideoDecodeError(f"no decodable frames in video {path}")
    return count


def resize_center_crop(frames: np.ndarray, resolution: int) -> np.ndarray:
    """Resize the shorter side to ``resolution`` and center-crop a square.

    Args:
        frames: ``uint8 [T, H, W, 3]``.
    Returns:
        ``uint8 [T, resolution, resolution, 3]``.
    """
    t, h, w, _ = frames.shape
    scale = resolution / min(h, w)
    new_h, new_w = max(resolution, round(h * scale)), max(resolution, round(w * scale))
    x = torch.from_numpy(frames).permute(0, 3, 1, 2).float()
    if (new_h, new_w) != (h, w):
        x = F.interpolate(x, size=(new_h, new_w), mode="bilinear", align_corners=False, antialias=True)
    top, left = (new_h - resolution) // 2, (new_w - resolution) // 2
    x = x[:, :, top : top + resolution, left : left + resolution]
    return x.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).contiguous().numpy()


def decode_frames(path: str | Path, start: int = 0, num_frames: int | None = None, stride: int = 1,
                  resolution: int | None = None) -> np.ndarray:
    """Decode frames ``start, start + stride, ...`` (``num_frames`` of them, or to the end).

    Args:
        path: video file.
        start: index of the first decoded frame (0-based, in decode order).
        num_frames: frames to return; ``None`` for all remaining frames.
        stride: keep every ``stride``-th frame.
        resolution: square output size (shorter side resized, center crop);
            ``None`` keeps the decoded size.

    Returns:
        ``uint8 [T, H, W, 3]`` RGB.

    Raises:
        VideoDecodeError: unreadable file, or fewer frames than requested.
    """
    path = Path(path)
    stop = None if num_frames is None else start + (num_frames - 1) * stride + 1
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
    return resize_center_crop(frames, resolution) if resolution else frames


def to_model_range(clip: np.ndarray | torch.Tensor) -> torch.Tensor:
    """``uint8 [..., T, H, W, 3]`` -> ``float32 [..., 3, T, H, W]`` in ``[-1, 1]``."""
    x = torch.as_tensor(clip)
    x = x.movedim(-1, -4).float()
    return x / 127.5 - 1.0


def to_uint8(video: torch.Tensor) -> np.ndarray:
    """``float [..., 3, T, H, W]`` in ``[-1, 1]`` -> ``uint8 [..., T, H, W, 3]`` (rounded, clamped)."""
    x = ((video.detach().float().cpu().clamp(-1, 1) + 1.0) * 127.5).round().to(torch.uint8)
    return x.movedim(-4, -1).contiguous().numpy()
