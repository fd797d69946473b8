"""The one scoring loop: registered metrics fed batch by batch, per-video values collected and checked,
summaries and protocols computed once. The runner's ``evaluate`` stage, ``harness compare`` and the
generation stage's gFVD all score through :class:`Scorer`.

A single process scores alone (``synchronize=False``, metrics built with
``sync_on_compute=False``). A sharded stage (:mod:`harness.shards`) builds a
``Scorer(synchronize=True)`` on every process: each feeds its share of the
videos, and ``compute`` (collective) reduces the metric states with their
``dist_reduce_fx`` and gathers the per-video and per-frame rows in rank
order, so every process returns the values of the whole set. Every
value is checked: a non-finite per-video value or summary raises
:class:`harness_core.errors.NonFiniteError` naming ``label``, the metric and the
video, before anything is written.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import pandas as pd
import torch
from torch import Tensor

from harness_core.errors import NonFiniteError
from harness_core.registry import METRICS, MetricSpec, spec_of
from harness.results import check_finite
from harness.shards import gather_lists, is_local_main


def _valid_frames(n_frames: Tensor | None) -> dict[str, Tensor]:
    """The ``n_frames`` keyword for a metric's update, none at all without it (metrics written before valid-frame
    counts existed keep working)."""
    return {} if n_frames is None else {"n_frames": n_frames}


class Scorer:
    """Metrics named in a suite (registered name, entry point or ``module:Class``), scored together.

    Args:
        names: metric references, e.g. ``["psnr", "ssim", "lpips", "fvd_16f"]``.
        device: where the metrics run.
        metric_kwargs: per-metric constructor arguments (``{"lpips": {"net": "vgg"}}``).
        label: what is scored (a tokenizer id and budget), named in errors.
        boundaries: the scored tokenizer's clip / chunk / tile starts
            (``VideoTokenizer.temporal_boundaries``), given to metrics with ``uses_boundaries``
            (the boundary-jump metrics of :mod:`metrics.temporal`).
        synchronize: every process of the run scores a share and ``compute`` reduces over all of them
            (call it on every process); ``False`` scores this process's videos alone.

    Raises:
        KeyError, ImportError: an unknown metric reference (from the registry).
    """

    def __init__(self, names: Iterable[str], device: torch.device | str = "cpu",
                 metric_kwargs: Mapping[str, Mapping[str, Any]] | None = None, label: str = "scores",
                 boundaries: Sequence[int] | None = None, synchronize: bool = False) -> None:
        kwargs = metric_kwargs or {}
        self.label = label
        self.synchronize = synchronize
        self.metrics = {}
        for name in names:
            extra = {"boundaries": list(boundaries or ())} if getattr(METRICS.get(name), "uses_boundaries", False) else {}
            self.metrics[name] = METRICS.create(name, sync_on_compute=synchronize, **extra, **kwargs.get(name, {})).to(device)
        #: one dict per scored video: the caller's identifying columns plus one column per per-video metric
        self.rows: list[dict[str, Any]] = []
        #: the per-frame curves, one small table per scored batch (columnar, so 10,000 clips x 128 frames stay tens
        #: of MB): the video's first identifying column, ``frame`` and one column per per-frame metric
        self._frame_tables: list[pd.DataFrame] = []
        self._real_cached: list[Any] = []  # set metrics whose real statistics live in a cache file

    def use_real_cache(self, key: dict, folder: Path) -> bool:
        """Load cached real statistics of the set metrics (FVD) keyed by ``key`` from ``folder``.

        With ``synchronize`` a metric uses its cache only when every process finds the file: ``folder`` may be
        node-local (``$HARNESS_CACHE`` differs per node), and a process that skipped the real clips while another
        fed its share would count that share on top of the whole cached set, and call one collective fewer
        (:meth:`metrics.fvd.FVD.save_real_cache`). Collective then: call it on every process.

        Returns:
            True when every set metric uses its cache (real videos need not be fed); the same on every process.
        """
        self._real_cached = [metric for metric in self.metrics.values() if hasattr(metric, "use_real_cache")]
        found = [metric.real_cache_path(key, folder).is_file() for metric in self._real_cached]
        if self.synchronize:
            found = [all(column) for column in zip(*gather_lists([found]))]
        return all([metric.use_real_cache(key, folder, load=hit) for metric, hit in zip(self._real_cached, found)])

    @torch.no_grad()
    def update(self, real: Tensor, fake: Tensor, rows: list[dict[str, Any]], n_frames: Tensor | None = None) -> None:
        """Score one batch of paired videos ``float [B, 3, T, H, W]`` in ``[-1, 1]``; ``rows`` (one dict per
        video, e.g. clip id and source) receive the per-video values and are appended to :attr:`rows`.

        ``n_frames`` (``int64 [B]``, valid frames per video; ``None``: all ``T``) goes to every metric, which
        scores each video's valid prefix (:meth:`metrics.base.VideoMetric.update`); :meth:`frame_table` gets the
        valid frames only.

        Raises:
            NonFiniteError: a per-video value is NaN or infinite.
            ValueError: bad ``n_frames`` (from the metrics).
        """
        frames: dict[str, list[list[float]]] = {}
        for name, metric in self.metrics.items():
            metric.update(real, fake, **_valid_frames(n_frames))
            if metric.per_frame:
                frames[metric.name] = metric.last_frame_values.tolist()
            if metric.per_video:
                for row, value in zip(rows, metric.last_values.tolist()):
                    if not math.isfinite(value):
                        what = f"clip {row['clip']}" if "clip" in row else f"video {row.get('video', '?')}"
                        raise NonFiniteError(f"{self.label}: {name} of {what} is {value}")
                    row[metric.name] = value  # the column is the metric's value key (its `name`)
        self.rows.extend(rows)
        if frames:
            key = next(iter(rows[0])) if rows else "video"
            valid = [real.shape[2]] * len(rows) if n_frames is None else torch.as_tensor(n_frames).tolist()
            self._frame_tables.append(pd.DataFrame({
                key: [row.get(key, index) for index, row in enumerate(rows) for _ in range(valid[index])],
                "frame": [t for count in valid for t in range(count)],
                **{name: [v for index, count in enumerate(valid) for v in values[index][:count]] for name, values in frames.items()},
            }))

    def specs(self) -> list[MetricSpec]:
        """Each metric's metadata (title of what it scored, direction, unit, digits, per-video or set, table), as
        run records store it so that reports need no metric code (:func:`harness_core.registry.spec_of`)."""
        return [spec_of(metric, reference) for reference, metric in self.metrics.items()]

    def frame_table(self) -> pd.DataFrame:
        """The per-frame values of every scored frame (valid frames only), batches in order: the video's first
        identifying column, ``frame`` and one column per per-frame metric; empty without a per-frame metric."""
        return pd.concat(self._frame_tables, ignore_index=True) if self._frame_tables else pd.DataFrame()

    @property
    def frame_rows(self) -> list[dict[str, Any]]:
        """:meth:`frame_table` as one dict per frame (small sets: ``harness compare``, tests)."""
        return self.frame_table().to_dict("records")

    @torch.no_grad()
    def update_real(self, videos: Tensor, n_frames: Tensor | None = None) -> None:
        """Feed real videos to the set metrics (unpaired sets: generation); metrics with cached statistics skip them.
        ``n_frames``: valid frames per video (``int64 [B]``; ``None``: all)."""
        for metric in self.metrics.values():
            metric.update_real(videos, **_valid_frames(n_frames))

    @torch.no_grad()
    def update_fake(self, videos: Tensor, n_frames: Tensor | None = None) -> None:
        """Feed generated videos to the set metrics (unpaired sets: generation); ``n_frames`` as in :meth:`update_real`."""
        for metric in self.metrics.values():
            metric.update_fake(videos, **_valid_frames(n_frames))

    def compute(self) -> tuple[dict[str, Any], dict[str, Any]]:
        """``(summary, protocol)`` over everything fed: each metric's values (``<name>``, ``<name>_n``, ...) and
        its protocol text. Real statistics seen for the first time are written to their cache. With
        ``synchronize``, :attr:`rows` and :meth:`frame_table` become every process's rows in rank order.

        Raises:
            NonFiniteError: a summary value is NaN or infinite.
        """
        summary: dict[str, Any] = {}
        protocol: dict[str, Any] = {}
        for metric in self.metrics.values():
            summary.update(metric.compute())
            protocol.update(metric.protocol())
        writer = is_local_main() if self.synchronize else None  # each node's cache folder gets the file
        for metric in self._real_cached:
            metric.save_real_cache(write=writer)  # a no-op when the statistics came from the cache
        if self.synchronize:
            self.rows, self._frame_tables = gather_lists(self.rows), gather_lists(self._frame_tables)
        check_finite(summary, f"{self.label}: metrics")
        return summary, protocol
