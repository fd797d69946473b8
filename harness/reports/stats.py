"""Statistics of reports: bootstrap intervals, Spearman correlations, Pareto fronts, the B.3 per-video table.

Pure functions of numbers and tables; which metric is better in which direction
is the metric's metadata (:class:`harness_core.registry.MetricSpec`), passed in by the caller.
"""
from __future__ import annotations

from typing import Iterable, NamedTuple

import numpy as np
import pandas as pd
from scipy import stats

from metrics.analysis import standardize_0_100

class Interval(NamedTuple):
    """A statistic with its confidence interval; ``half_width = (high - low) / 2``."""

    value: float
    low: float
    high: float
    n: int

    @property
    def half_width(self) -> float:
        return (self.high - self.low) / 2


def bootstrap_band(values: np.ndarray, confidence: float = 0.95, resamples: int = 2_000,
                   seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean over videos of a curve and its percentile-bootstrap band, the videos resampled together.

    Args:
        values: ``float [N videos, T]`` (e.g. per-frame PSNR); NaN entries are ignored in each mean.
        confidence: coverage in ``(0, 1)``.
        resamples: bootstrap resamples (numpy generator seeded with ``seed``).

    Returns:
        ``(mean, low, high)``, each ``float64 [T]``; with one video ``low == high == mean``.

    Raises:
        ValueError: ``values`` is not 2-D or has no video.
    """
    x = np.asarray(values, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] == 0:
        raise ValueError(f"bootstrap_band expects values [N videos, T] with N >= 1, got shape {x.shape}")
    mean = np.nanmean(x, axis=0)
    if x.shape[0] == 1:
        return mean, mean.copy(), mean.copy()
    rng = np.random.default_rng(seed)
    means = np.nanmean(x[rng.integers(0, x.shape[0], size=(resamples, x.shape[0]))], axis=1)  # [R, T]
    tail = (1 - confidence) / 2 * 100
    return mean, np.percentile(means, tail, axis=0), np.percentile(means, 100 - tail, axis=0)


def bootstrap_ci(values: Iterable[float], confidence: float = 0.95, resamples: int = 10_000, seed: int = 0,
                 chunk: int = 1000) -> Interval:
    """Percentile-bootstrap interval of the mean over videos (Efron & Tibshirani 1993, ch. 13).

    Resamples the videos with replacement ``resamples`` times (numpy generator
    seeded with ``seed``, so reports are reproducible), takes each resample's
    mean and returns the ``(1 - confidence) / 2`` and ``(1 + confidence) / 2``
    percentiles. Non-finite values (NaN) are dropped first.

    Args:
        values: per-video values, any float array-like ``[N]``.
        confidence: coverage in ``(0, 1)``.
        resamples: number of bootstrap resamples.
        seed: generator seed.
        chunk: resamples drawn at once (bounds memory at ``chunk * N`` indices).

    Returns:
        :class:`Interval` ``(mean, low, high, n)``; with one video ``low == high == mean``.

    Raises:
        ValueError: no finite value, or ``confidence`` outside ``(0, 1)``.
    """
    x = np.asarray(list(values) if not isinstance(values, np.ndarray) else values, dtype=np.float64).ravel()
    x = x[np.isfinite(x)]
    if x.size == 0:
        raise ValueError("bootstrap_ci needs at least one finite value")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    mean = float(x.mean())
    if x.size == 1:
        return Interval(mean, mean, mean, 1)
    rng = np.random.default_rng(seed)
    means = np.empty(resamples)
    for first in range(0, resamples, chunk):
        count = min(chunk, resamples - first)
        means[first : first + count] = x[rng.integers(0, x.size, size=(count, x.size))].mean(axis=1)
    alpha = (1 - confidence) / 2
    low, high = np.percentile(means, [100 * alpha, 100 * (1 - alpha)])
    return Interval(mean, float(low), float(high), int(x.size))


def spearman(x: Iterable[float], y: Iterable[float]) -> tuple[float, float, int]:
    """Spearman rank correlation ``(rho, p-value, n)`` of the finite pairs (``scipy.stats.spearmanr``).

    Returns NaNs when fewer than 3 pairs remain or either side is constant.
    """
    x, y = np.asarray(list(x), dtype=np.float64), np.asarray(list(y), dtype=np.float64)
    keep = np.isfinite(x) & np.isfinite(y)
    x, y = x[keep], y[keep]
    if x.size < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return float("nan"), float("nan"), int(x.size)
    result = stats.spearmanr(x, y)
    return float(result.statistic), float(result.pvalue), int(x.size)


def pareto_front(tokens: Iterable[float], values: Iterable[float], lower_better: bool = False) -> np.ndarray:
    """Indices of the Pareto-optimal points (fewer tokens and better quality), ordered by tokens.

    A point is on the front when no other point has at most as many tokens and
    a strictly better value, or fewer tokens and an equal value.

    Args:
        tokens: tokens per video ``[N]``.
        values: quality ``[N]``; better is larger unless ``lower_better``.

    Returns:
        ``int64 [K]`` indices into the inputs.
    """
    t = np.asarray(list(tokens), dtype=np.float64)
    v = np.asarray(list(values), dtype=np.float64)
    if t.shape != v.shape:
        raise ValueError(f"tokens and values must have the same length, got {t.shape} and {v.shape}")
    score = -v if lower_better else v
    order = np.lexsort((-score, t))  # by tokens, best value first within equal tokens
    front, best = [], -np.inf
    for i in order:
        if np.isfinite(score[i]) and score[i] > best:
            front.append(i)
            best = score[i]
    return np.asarray(front, dtype=np.int64)


# ----------------------------------------------------------------------------- per-video tables


def standardized_dynamics(tables: Iterable[pd.DataFrame]) -> dict[str, float]:
    """Clip id -> dynamics magnitude min-max standardized to 0-100 over the suite's evaluation clips.

    Dynamics is a property of the real clip, so every row holds the same value
    per clip; supplementary B.3 (Figure 7a) rescales it to 0-100 across the dataset.
    """
    values: dict[str, float] = {}
    for table in tables:
        if "dynamics" in table:
            for clip, value in zip(table["clip"], table["dynamics"]):
                values.setdefault(str(clip), float(value))
    if not values:
        return {}
    clips = list(values)
    return dict(zip(clips, standardize_0_100(np.array([values[c] for c in clips])).tolist()))


def analysis_table(tables: dict[str, pd.DataFrame], metrics: Iterable[str]) -> pd.DataFrame:
    """Long table of per-video points for the B.3 analysis.

    Args:
        tables: row -> its per-video table (``per_video.csv``).
        metrics: the per-video metric columns to plot.

    Returns:
        Columns ``row, clip, metric, value, dynamics_0_100, frequency`` (dynamics
        standardized over all clips of ``tables``).
    """
    dynamics = standardized_dynamics(tables.values())
    points = []
    for row, table in tables.items():
        for metric in metrics:
            if metric not in table:
                continue
            for _, line in table.iterrows():
                points.append({"row": row, "clip": str(line["clip"]), "metric": metric, "value": float(line[metric]),
                               "dynamics_0_100": dynamics.get(str(line["clip"]), np.nan),
                               "frequency": float(line["frequency"]) if "frequency" in table else np.nan})
    return pd.DataFrame(points, columns=["row", "clip", "metric", "value", "dynamics_0_100", "frequency"])


def analysis_correlations(points: pd.DataFrame) -> pd.DataFrame:
    """Spearman rho of every (row, metric) against dynamics (0-100) and frequency magnitude.

    Columns: ``row, metric, feature, rho, p_value, n``.
    """
    out = []
    for (row, metric), group in points.groupby(["row", "metric"], sort=False):
        for feature in ("dynamics_0_100", "frequency"):
            rho, p, n = spearman(group[feature], group["value"])
            out.append({"row": row, "metric": metric, "feature": feature, "rho": rho, "p_value": p, "n": n})
    return pd.DataFrame(out, columns=["row", "metric", "feature", "rho", "p_value", "n"])
