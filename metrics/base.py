"""Metric objects in the style of torchmetrics.

Every metric of the harness is a :class:`VideoMetric`: a ``torchmetrics.Metric``
whose ``update(real, fake)`` takes two batches of videos
``float32 [B, 3, T, H, W]`` in ``[-1, 1]`` (the engine's convention) and whose
states carry a ``dist_reduce_fx`` so that distributed evaluation gives the
same value as one process. ``compute()`` returns a dict of named floats (one
metric may report several numbers, e.g. FVD and its N).

Per-video metrics (PSNR, SSIM, LPIPS, the analysis features) also expose the
values of the last batch as ``last_values`` (``float64 [B]``), from which the
engine writes the per-video table. Per-frame metrics (PSNR, SSIM, LPIPS: a
video's value is the mean of its frames' values) set ``per_frame = True``,
implement ``frame_values`` and expose ``last_frame_values``
(``float64 [B, T]``), from which the engine writes the per-frame curves.

Valid frames: ``update(real, fake, n_frames)`` takes the number of real frames
of each video (``int64 [B]``; frames at index ``>= n_frames[b]`` are padding, as
CoordTok's official loader pads videos shorter than the clip,
``tools/datasets.py`` ``VideoTimeSplitInference.__getitem__``, and its monitor
scores ``video[:num_frames]`` only, ``tools/utils_coordtok.py``
``coordtok_summary``; huiwon-jang/CoordTok 8475272). Every per-video value is then
the value of the video's valid prefix (:func:`valid_prefix_values`), and
``last_frame_values`` holds NaN at padded frames. ``n_frames=None`` means every
frame is valid and computes exactly what it did before the argument existed.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.utilities import dim_zero_cat

from harness_core.api import check_video

#: set-level values (FVD) computed from fewer samples than this are not comparable: the one threshold of the harness,
#: read by the FVD protocol, the generation stage and every leaderboard (StyleGAN-V, Skorokhodov et al. 2022, sec. 3;
#: the bias of FVD at small N, common_metrics_on_video_quality issue 26)
MIN_COMPARABLE_N = 256


class VideoMetric(Metric):
    """Base class; subclasses set ``name`` and implement ``video_values`` or ``update``.

    The class attributes below are the metric's metadata: leaderboards, reports,
    intervals and plots read them through the metric registry
    (:func:`harness_core.registry.metric_spec`), never from the metric's name.
    """

    #: key of the summary value in ``metrics.json`` (and of the column in ``per_video.csv``)
    name: str = "metric"
    #: display title in tables and plots (default: ``name``)
    title: str | None = None
    #: True: larger is better; False: smaller is better; None: an analysis feature without a direction
    #: (shown in analyses, not ranked in leaderboards)
    higher_is_better: bool | None = None
    #: unit of the value ("dB", "px"; "" for none), shown on plot axes
    unit: str = ""
    #: decimals shown in tables
    digits: int = 4
    #: one value per video (mean over videos is the summary; leaderboards show bootstrap intervals);
    #: False for set-level metrics such as FVD
    per_video: bool = True
    #: set-level metrics: values from fewer samples than this are marked not comparable (None: always comparable)
    min_comparable_n: int | None = None
    #: title of the same metric measured on generated samples (set-level metrics; default ``"g" + title``)
    generation_title: str | None = None
    #: a per-video value that is the mean over frames of ``frame_values`` (PSNR, SSIM, LPIPS); the engine writes
    #: the per-frame values (``per_frame.csv``) and the report plots them against the frame index
    per_frame: bool = False
    #: the leaderboard table showing the column: ``"quality"`` (the main table) or ``"temporal"`` (temporal fidelity)
    table: str = "quality"
    #: fewest (valid) frames a video needs; ``update`` raises ``ValueError`` below it (2 for frame-pair metrics)
    min_frames: int = 1
    full_state_update = False

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.last_values: Tensor | None = None
        self.last_frame_values: Tensor | None = None
        if self.per_video:
            self.add_state("values", default=[], dist_reduce_fx="cat")

    def synchronized(self) -> bool:
        """Whether ``compute`` reduces states across processes: a process group exists and the metric was not
        made local with ``sync_on_compute=False`` (what a stage that runs on one rank passes)."""
        return self.sync_on_compute and bool(self.distributed_available_fn())

    def _sync_dist(self, *args: Any, **kwargs: Any) -> None:
        # a process that scored no video would send torchmetrics' empty placeholder in the metric's default
        # float32, which does not match the other processes' float64 values in the gather
        if self.per_video and isinstance(self.values, list) and not self.values:
            self.values.append(torch.zeros(0, dtype=torch.float64, device=self.device))
        super()._sync_dist(*args, **kwargs)

    def video_values(self, real: Tensor, fake: Tensor) -> Tensor:
        """Per-video values ``float64 [B]`` of a batch (per-video metrics); per-frame metrics: the frames' mean."""
        if self.per_frame:
            return self._frames(real, fake).mean(dim=1)
        raise NotImplementedError

    def frame_values(self, real: Tensor, fake: Tensor) -> Tensor:
        """Per-frame values ``[B, T]`` of a batch (metrics with ``per_frame = True``)."""
        raise NotImplementedError

    def _frames(self, real: Tensor, fake: Tensor) -> Tensor:
        frames = self.frame_values(real, fake)
        self.last_frame_values = frames.detach().to(torch.float64).cpu()
        return frames

    def update(self, real: Tensor, fake: Tensor, n_frames: Tensor | None = None) -> None:
        """Score a batch of paired videos ``float [B, 3, T, H, W]`` in ``[-1, 1]``.

        Args:
            real, fake: the videos (same shape).
            n_frames: valid frames per video, integer ``[B]`` in ``[1, T]`` (``None``: all ``T``). Each video is
                scored on ``[:, :, :n_frames[b]]``; ``last_frame_values`` holds NaN at its padded frames.

        Raises:
            ValueError: bad shapes, bad ``n_frames``, or a video with fewer valid frames than :attr:`min_frames`.
        """
        check_video(real, "real")
        check_video(fake, "fake")
        if real.shape != fake.shape:
            raise ValueError(f"{self.name}: real {tuple(real.shape)} and fake {tuple(fake.shape)} differ in shape")
        lengths = check_n_frames(n_frames, real.shape[0], real.shape[2], self.name)
        shortest = real.shape[2] if lengths is None or not lengths.numel() else int(lengths.min())
        if shortest < self.min_frames:
            raise ValueError(f"{self.name} needs at least {self.min_frames} frames, got {shortest}")
        if lengths is None or bool((lengths == real.shape[2]).all()):
            values = self.video_values(real, fake).detach().to(torch.float64)
        else:
            values = valid_prefix_values(self, real, fake, lengths)
        self.last_values = values.cpu()
        self.values.append(values)

    def compute(self) -> dict[str, float]:
        values = self.values  # a list of batches, or one tensor once synchronized over processes
        if isinstance(values, list):
            values = dim_zero_cat(values) if values else torch.zeros(0, dtype=torch.float64)
        return {self.name: float(values.mean()) if values.numel() else float("nan"), f"{self.name}_n": int(values.numel())}

    def protocol(self) -> dict[str, Any]:
        """The conventions behind the value, recorded with every result."""
        return {}

    def scored_title(self, generation: bool = False) -> str:
        """Display title of what this instance scored (reports prefer it to the class's :attr:`title` when a
        metric records it in its protocol under ``"title"`` / ``"generation_title"``).

        The class title (``generation``: the title of the generated-sample column); metrics whose title names a
        frame count that depends on the input (whole-clip FVD) override it.
        """
        title = self.title or self.name
        return (self.generation_title or f"g{title}") if generation else title


def check_n_frames(n_frames: Tensor | None, batch: int, frames: int, name: str) -> Tensor | None:
    """Valid-frame counts as ``int64 [B]`` on the CPU, or ``None`` when ``n_frames`` is ``None``.

    Args:
        n_frames: integer tensor (or sequence of ints) ``[B]``, each in ``[1, T]``.
        batch, frames: ``B`` and ``T`` of the videos it describes.
        name: the metric, named in errors.

    Raises:
        ValueError: not an integer ``[B]`` tensor, or a count outside ``[1, T]``.
    """
    if n_frames is None:
        return None
    counts = torch.as_tensor(n_frames)
    if counts.is_floating_point() or counts.is_complex() or counts.dtype == torch.bool or tuple(counts.shape) != (batch,):
        raise ValueError(f"{name}: n_frames must be an integer tensor [B={batch}] of valid frame counts, "
                         f"got {counts.dtype} {tuple(counts.shape)}")
    counts = counts.to(device="cpu", dtype=torch.int64)
    if counts.numel() and (int(counts.min()) < 1 or int(counts.max()) > frames):
        raise ValueError(f"{name}: n_frames must lie in [1, T={frames}], got [{int(counts.min())}, {int(counts.max())}]")
    return counts


def valid_prefix_values(metric: VideoMetric, real: Tensor, fake: Tensor, lengths: Tensor) -> Tensor:
    """Per-video values ``float64 [B]`` of each video's valid prefix ``[:, :, :lengths[b]]``.

    Videos of equal length are scored together by ``metric.video_values`` on the sliced batch, and the values put
    back in batch order; a per-frame metric's ``last_frame_values`` becomes ``float64 [B, T]`` with NaN at padded
    frames.
    """
    b, t = real.shape[0], real.shape[2]
    values = torch.empty(b, dtype=torch.float64, device=real.device)
    frames = torch.full((b, t), float("nan"), dtype=torch.float64) if metric.per_frame else None
    for length in lengths.unique().tolist():
        rows = (lengths == length).nonzero().squeeze(1)
        index = rows.to(real.device)
        group = metric.video_values(real[index, :, :length], fake[index, :, :length])
        values[index] = group.detach().to(device=real.device, dtype=torch.float64)
        if frames is not None:
            frames[rows, :length] = metric.last_frame_values
    if frames is not None:
        metric.last_frame_values = frames
    return values


def to_unit_range(video: Tensor) -> Tensor:
    """Map ``[-1, 1]`` videos to ``[0, 1]``, clamped (reconstructions may overshoot)."""
    return ((video.float() + 1.0) / 2.0).clamp(0.0, 1.0)


def frames_of(video: Tensor) -> Tensor:
    """``[B, C, T, H, W]`` -> ``[B * T, C, H, W]`` (frame-major within each video)."""
    b, c, t, h, w = video.shape
    return video.permute(0, 2, 1, 3, 4).reshape(b * t, c, h, w)
