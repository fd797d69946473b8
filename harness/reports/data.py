"""What every report section reads: the run records (loaded once), their metric columns and intervals.

:class:`ReportData` is built once per report or leaderboard (:meth:`ReportData.load`):
it holds the :class:`harness.records.RunRecord` s, reads each per-video table
at most once and computes each bootstrap interval at most once per (row, metric).

Metric columns come from the records themselves: every ``metrics.json`` (and
``generation/metrics.json``) written since issue 25 holds ``metric_specs``, each
metric's metadata as it scored (title, direction, unit, digits, set or
per-video, table), so a report needs no metric code and a plugin metric that
cannot be imported keeps its column and arrow. Older records go through the
metric registry (:func:`harness_core.registry.metric_spec`): they name their
metrics in ``metric_refs`` (value key and registered name, entry point or
``module:Class``), or by their summary keys. Generation results hold ``g<name>`` keys: their metric is ``<name>``.
A column's title is the one the metric recorded in its protocol for what it
scored (``"title"``, ``"generation_title"``; e.g. ``rFVD 32f`` for whole-clip FVD
on 32-frame clips, :meth:`metrics.base.VideoMetric.scored_title`), else the
class's.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace
from functools import lru_cache
from pathlib import Path
from typing import Any

import pandas as pd

from harness import records as records_module
from harness.records import RunRecord
from harness_core.registry import MetricSpec, metric_spec
from harness.reports import stats

log = logging.getLogger("harness.report")

#: bootstrap settings of every interval
CI_CONFIDENCE, CI_RESAMPLES, CI_SEED = 0.95, 10_000, 0


@lru_cache(maxsize=None)
def _spec(reference: str, key: str) -> MetricSpec | None:
    try:
        return metric_spec(reference, key)
    except (KeyError, ImportError, AttributeError):
        return None


def _recorded_title(spec: MetricSpec, protocols: dict[str, Any], field_name: str) -> MetricSpec:
    """``spec`` titled as its metric's protocol entry records (``protocols[spec.name][field_name]``), if it does."""
    entry = protocols.get(spec.name)
    title = entry.get(field_name) if isinstance(entry, dict) else None
    return replace(spec, title=title) if isinstance(title, str) and title else spec


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def record_columns(record: RunRecord) -> tuple[list[MetricSpec], list[str]]:
    """``(specs, problems)``: the metric columns of one record in its own order, and metrics whose class was not found.

    A record's own ``metric_specs`` (and its generation results') give the columns without any metric code; older
    records are resolved through the metric registry.
    """
    recorded = record.specs
    if recorded is not None:
        specs = [spec for spec in recorded if _is_number(record.metrics.get(spec.key))]
        generated = record.generation.specs if record.generation else None
        if generated is not None:
            return specs + [spec for spec in generated if _is_number(record.generation.values.get(spec.key))], []
        return specs + _generation_columns(record), []
    specs, problems = [], []
    refs = record.metric_names if record.metric_refs is not None else {k: k for k in record.metrics}
    for key, reference in refs.items():
        if not isinstance(record.metrics.get(key), (int, float)) or isinstance(record.metrics.get(key), bool):
            continue
        spec = _spec(reference, key)
        if spec is None:
            if record.metric_refs is not None:  # named by the record: show it, without metadata
                problems.append(f"metric {key} ({reference}) of {record.row}: class not found, shown without direction")
                specs.append(MetricSpec(key, key, key, None, "", 4, False, None))
            continue
        specs.append(_recorded_title(spec, record.protocol.metrics, "title"))
    return specs + _generation_columns(record), problems


def _generation_columns(record: RunRecord) -> list[MetricSpec]:
    """The ``g<name>`` columns of generation results written before ``metric_specs``, through the registry."""
    if record.generation is None:
        return []
    if record.generation.specs is not None:
        return [spec for spec in record.generation.specs if _is_number(record.generation.values.get(spec.key))]
    specs = []
    for key, value in record.generation.values.items():
        if not key.startswith("g") or not _is_number(value):
            continue
        spec = _spec(key[1:], key[1:])
        if spec is not None and not spec.per_video:
            specs.append(_recorded_title(spec.for_generation(), record.generation.protocol, "generation_title"))
    return specs


@dataclass
class ReportData:
    """The records of a results folder and everything derived from them, each computed once."""

    results: Path
    records: list[RunRecord]
    suite: dict[str, Any] | None = None
    notes: list[str] = field(default_factory=list)
    _tables: dict[Path | None, pd.DataFrame | None] = field(default_factory=dict, repr=False)
    _intervals: dict[tuple[int, str], stats.Interval | None] = field(default_factory=dict, repr=False)
    #: metric keys a record names whose class was not found (shown without metadata, never silently left out)
    unresolved: set[str] = field(default_factory=set)
    _columns: list[MetricSpec] | None = field(default=None, repr=False)

    @classmethod
    def load(cls, results: Path) -> "ReportData":
        """Read every run record under ``results`` once (and ``suite.json`` when present)."""
        import json

        results = Path(results)
        suite_path = results / records_module.SUITE_FILE
        suite = json.loads(suite_path.read_text()) if suite_path.is_file() else None
        return cls(results, records_module.load_records(results), suite)

    @classmethod
    def of(cls, records: "list[RunRecord] | ReportData") -> "ReportData":
        """``records`` as report data (a list is wrapped; report data is returned as is)."""
        if isinstance(records, ReportData):
            return records
        folders = [r.suite_dir for r in records if r.suite_dir is not None]
        return cls(Path(folders[0]) if folders else Path("."), list(records))

    # ------------------------------------------------------------------ columns

    @property
    def columns(self) -> list[MetricSpec]:
        """Every metric column over the records: reconstruction per-video, reconstruction set, generation."""
        if self._columns is None:
            seen: dict[str, MetricSpec] = {}
            for record in self.records:
                specs, problems = record_columns(record)
                for spec in specs:
                    known = seen.setdefault(spec.key, spec)
                    if spec.title not in known.title.split(" / "):  # rows that scored different frame counts
                        seen[spec.key] = replace(known, title=f"{known.title} / {spec.title}")
                self.unresolved |= {p.split()[1] for p in problems}
                self.notes += [p for p in problems if p not in self.notes]
            ordered = list(seen.values())
            self._columns = ([s for s in ordered if s.per_video and not s.generation]
                             + [s for s in ordered if not s.per_video and not s.generation]
                             + [s for s in ordered if s.generation])
        return self._columns

    @property
    def ranked(self) -> list[MetricSpec]:
        """Columns with a direction (leaderboards, sorting, Pareto fronts); analysis features are left out."""
        return [s for s in self.columns if s.ranked or s.key in self.unresolved]

    def spec(self, key: str) -> MetricSpec | None:
        return next((s for s in self.columns if s.key == key), None)

    # ------------------------------------------------------------------ per-video values

    def per_video(self, record: RunRecord) -> pd.DataFrame | None:
        """The record's per-video table (read once), or ``None`` when it has none."""
        return self._table(record.per_video_path)

    def per_frame(self, record: RunRecord) -> pd.DataFrame | None:
        """The record's per-frame table (clip, frame, per-frame metrics; read once), or ``None`` without one."""
        return self._table(record.per_frame_path)

    def _table(self, path: Path | None) -> pd.DataFrame | None:
        if path not in self._tables:
            self._tables[path] = pd.read_csv(path) if path is not None and path.is_file() else None
        return self._tables[path]

    def interval(self, record: RunRecord, metric: str) -> stats.Interval | None:
        """95% percentile-bootstrap interval over videos of ``metric`` for ``record`` (computed once), or ``None``."""
        key = (id(record), metric)
        if key not in self._intervals:
            table = self.per_video(record)
            value = None
            if table is not None and metric in table and table[metric].notna().any():
                value = stats.bootstrap_ci(table[metric].to_numpy(), confidence=CI_CONFIDENCE, resamples=CI_RESAMPLES,
                                           seed=CI_SEED)
            self._intervals[key] = value
        return self._intervals[key]
