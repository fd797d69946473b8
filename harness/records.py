"""The run record (what ``metrics.json`` holds) and the run-folder layout, defined once.

The runner writes a :class:`RunRecord` per evaluated row (:meth:`RunRecord.to_json`);
every report reads them back with :func:`load_records`. The file names of a run
folder are the constants and :class:`RunFolder` below; nothing else spells them.

A suite's results folder::

    results/<suite>/
      suite.json, eval_clips.json, leaderboard.md, report.md, report.html, *.png
      stage_times.csv                  wall time per tokenizer and stage of the last run (train ... report)
      stage_memory.csv                 peak memory (MiB above the stage's start) per tokenizer and stage
      <tokenizer id>/                  a RunFolder
        config.json                    resolved config and code version
        checkpoint.pt                  model + optimizers + step + RNG states (resumable)
        train.json                     training costs
        losses.csv                     per-step losses and learning rate (the report's loss curves)
        tensorboard/                   TensorBoard event files (train.log_with: tensorboard)
        reconstruct.json               tokens per video, rate (bpp and its kind), encode/decode videos/s, codebook usage
        recon/<clip>.npy               reconstructions, uint8 [T, H, W, 3]; recon/batch_<k>.json per batch
        metrics.json                   the RunRecord of this row
        per_video.csv                  one line per evaluation clip, one column per per-video metric
        per_frame.csv                  one line per clip and frame, one column per per-frame metric (PSNR, SSIM, LPIPS)
        budgets/<k>/                   flexible tokenizers: a RunFolder per token budget (no checkpoint)
        generation/metrics.json        gFVD and generator costs (GenerationResult), shared by the budgets
        generation/losses.csv          the generator's per-step losses and learning rate

``metrics.json`` files written before this module (no ``metric_refs`` and no
``per_video`` key) are read the same way: the metric columns are then the
summary keys that name a registered metric, and the per-video table is
``per_video.csv`` beside the record.

Record keys renamed in issue 25 (names that say one thing) are written with
their new name and read under either (:data:`RENAMED_RECORD_KEYS`): a
``metrics.json`` written before the rename reads back to the same record.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from harness_core.registry import MetricSpec

# ----------------------------------------------------------------------------- layout

SUITE_FILE = "suite.json"
STAGE_TIMES_FILE = "stage_times.csv"
STAGE_MEMORY_FILE = "stage_memory.csv"
EVAL_CLIPS_FILE = "eval_clips.json"
CONFIG_FILE = "config.json"
CHECKPOINT_FILE = "checkpoint.pt"
STAGE0_CACHE_FILE = "stage0_cache.pt"
TRAIN_FILE = "train.json"
LOSSES_FILE = "losses.csv"
RECONSTRUCT_FILE = "reconstruct.json"
RECON_DIR = "recon"
METRICS_FILE = "metrics.json"
PER_VIDEO_FILE = "per_video.csv"
PER_FRAME_FILE = "per_frame.csv"
BUDGETS_DIR = "budgets"
GENERATION_DIR = "generation"


@dataclass(frozen=True)
class RunFolder:
    """The files of one tokenizer's run folder, or of one budget's folder beneath it (``run`` is the tokenizer's)."""

    path: Path
    run: Path | None = None

    @property
    def run_dir(self) -> Path:
        return self.run or self.path

    def budget(self, k: int) -> "RunFolder":
        return RunFolder(self.run_dir / BUDGETS_DIR / str(k), self.run_dir)

    config = property(lambda self: self.run_dir / CONFIG_FILE)
    checkpoint = property(lambda self: self.run_dir / CHECKPOINT_FILE)
    stage0_cache = property(lambda self: self.run_dir / STAGE0_CACHE_FILE)
    train = property(lambda self: self.run_dir / TRAIN_FILE)
    losses = property(lambda self: self.run_dir / LOSSES_FILE)
    reconstruct = property(lambda self: self.path / RECONSTRUCT_FILE)
    recon = property(lambda self: self.path / RECON_DIR)
    metrics = property(lambda self: self.path / METRICS_FILE)
    per_video = property(lambda self: self.path / PER_VIDEO_FILE)
    per_frame = property(lambda self: self.path / PER_FRAME_FILE)
    generation = property(lambda self: self.run_dir / GENERATION_DIR)
    generation_metrics = property(lambda self: self.run_dir / GENERATION_DIR / METRICS_FILE)
    generation_losses = property(lambda self: self.run_dir / GENERATION_DIR / LOSSES_FILE)


# ----------------------------------------------------------------------------- stage records


@dataclass
class StageRecord:
    """A stage's JSON record, written and read through the same class: fields are the file's keys; keys a reader
    does not know (written by a later version) are kept in ``extra`` and written back."""

    def to_json(self) -> dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "extra"}
        out.update(getattr(self, "extra", {}))
        return out

    @classmethod
    def from_json(cls, data: dict[str, Any]):
        known = {f.name for f in fields(cls)} - {"extra"}
        return cls(**{k: v for k, v in data.items() if k in known}, extra={k: v for k, v in data.items() if k not in known})

    def write(self, path: Path) -> Path:
        from harness_core.io import write_json_atomic

        return write_json_atomic(path, self.to_json())

    @classmethod
    def read(cls, path: Path):
        return cls.from_json(json.loads(Path(path).read_text()))


@dataclass
class TrainRecord(StageRecord):
    """``train.json``: what the train stage did (costs of the training run, or an evaluation-only entry's weights).

    ``peak_memory_mb`` is the stage's own peak (:class:`harness.memory.StageMemory`, ``memory_kind`` says what it
    measures); ``train_step_time_s`` the mean step time after the first step, seconds.
    """

    steps: int = 0
    resumed_from: int = 0
    train_step_time_s: float | None = None
    batch_size: int | None = None
    peak_memory_mb: float | None = None
    memory_kind: str | None = None
    last_losses: dict[str, float] = field(default_factory=dict)
    wall_time_s: float | None = None
    environment: dict[str, Any] | None = None
    #: evaluation-only entry (not trained here) and the identity of its weights (source, revision, sha256)
    pretrained: bool = False
    weights: dict[str, Any] | None = None
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class ReconstructRecord(StageRecord):
    """``reconstruct.json``: tokens per video, encode/decode throughput (videos/s over the timed videos), the stage's
    peak memory, codebook usage of discrete tokenizers (:mod:`metrics.codebook`: ``codebook_*`` keys of the file),
    the tokenizers' scalar token info, the tiling check (PSNR of tiling off vs on, dB) and the rate (``rate``: bits
    per pixel and its kind, :func:`metrics.rate.rate_summary`; absent in files written before issue 27)."""

    tokens_per_video: int | None = None
    videos_timed: int = 0
    encode_videos_per_s: float | None = None
    decode_videos_per_s: float | None = None
    peak_memory_mb: float | None = None
    memory_kind: str | None = None
    codebook: dict[str, float] | None = None
    token_info: dict[str, Any] | None = None
    tiling_consistency: dict[str, float] | None = None
    rate: dict[str, Any] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        out = super().to_json()
        out.update(out.pop("codebook") or {})  # the file keeps codebook_* keys at its top level
        return {k: v for k, v in out.items() if v is not None or k == "tokens_per_video"}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "ReconstructRecord":
        codebook = {k: v for k, v in data.items() if k.startswith("codebook")} or None
        record = super().from_json({k: v for k, v in data.items() if not k.startswith("codebook")})
        record.codebook = codebook
        return record


# ----------------------------------------------------------------------------- record


@dataclass
class Protocol:
    """The evaluation protocol of a row; ``dataset``/``fold``/``split`` come from the dataset's ``protocol()``."""

    dataset: str | None = None
    fold: int | None = None
    frames: int | None = None
    frame_stride: int | None = None
    resolution: int | None = None
    num_videos: int | None = None
    eval_clips_per_video: int | None = None
    seed: int | None = None
    split: str | None = None
    #: the tokenizer's native chunk length (``VideoTokenizer.chunk_frames``; ``None``: whole videos);
    #: ``clip_frames`` in records written before issue 25
    chunk_frames: int | None = None
    code_version: str | None = None
    #: each metric's conventions (``metric.protocol()``): text or a dict of settings and weights' sha256
    metrics: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class Costs:
    train_steps: int | None = None
    train_step_time_s: float | None = None
    train_batch_size: int | None = None
    peak_memory_mb: float | None = None
    memory_kind: str | None = None
    reconstruct_peak_memory_mb: float | None = None
    encode_videos_per_s: float | None = None
    decode_videos_per_s: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class GenerationResult:
    """``generation/metrics.json``: ``g<metric>`` values with companions, protocol, generator costs, sha256, and
    (since it exists) ``metric_specs``: the gFVD columns' metadata (:class:`harness_core.registry.MetricSpec`)."""

    values: dict[str, Any] = field(default_factory=dict)

    @property
    def specs(self) -> list[MetricSpec] | None:
        """The recorded metadata of the ``g<name>`` columns (``None`` for results written before the key)."""
        specs = self.values.get("metric_specs")
        return None if specs is None else [MetricSpec.from_dict(s) for s in specs]

    @property
    def protocol(self) -> dict[str, Any]:
        return self.values.get("gfvd_protocol") or {}

    @property
    def generator(self) -> dict[str, Any]:
        return self.values.get("generator") or {}

    @property
    def values_sha256(self) -> str | None:
        return self.values.get("gfvd_values_sha256")

    def get(self, key: str, default: Any = None) -> Any:
        return self.values.get(key, default)


@dataclass
class RunRecord:
    """One evaluated row (a tokenizer, or a tokenizer at one token budget): the content of ``metrics.json``.

    The read side adds ``folder`` (the row's folder), ``suite_dir`` (the folder
    holding ``suite.json``), ``suite`` (a label unique over the folders read) and
    ``generation`` (the tokenizer's generation results).
    """

    row: str
    tokenizer_id: str
    tokenizer: str
    budget: int | None = None
    tokens_per_video: int | None = None
    #: pixels (frames x height x width) per token of a video; ``compression_ratio`` in records written before issue 25
    pixels_per_token: float | None = None
    parameters: int | None = None
    #: summary values: ``name`` per metric plus companions (``name_n``, ``fvd_16f_n_real``...)
    metrics: dict[str, Any] = field(default_factory=dict)
    metrics_sha256: str | None = None
    evaluation_fingerprint: str | None = None
    environment: dict[str, Any] | None = None
    protocol: Protocol = field(default_factory=Protocol)
    costs: Costs = field(default_factory=Costs)
    codebook: dict[str, Any] | None = None
    token_info: dict[str, Any] | None = None
    #: evaluation-only entry (not trained here) and the identity of its weights (source, revision, sha256)
    pretrained: bool = False
    weights: dict[str, Any] | None = None
    #: latent values per video (tokens x latent channels), for the input-values / latent-values compression
    latent_values: int | None = None
    #: PSNR of the reconstruction with tiling off vs on (``harness.chunks.tiling_consistency``), when checked
    tiling_consistency: dict[str, float] | None = None
    #: the row's rate (:func:`metrics.rate.rate_summary`): ``bpp`` (bits per pixel), its ``kind`` (``nominal``,
    #: ``uncompressed fp16``, ``bitstream``), ``bits_per_video``, ``pixels_per_video`` and, for discrete tokens,
    #: ``bpp_entropy``; ``None`` in records written before issue 27
    rate: dict[str, Any] | None = None
    #: the suite's metrics in its order: ``{"name": value key, "metric": how the suite named it}`` (registered
    #: name, entry point or ``module:Class``); a list, since ``metrics.json`` is written with sorted keys. Records
    #: written since ``metric_specs`` exists carry that instead
    metric_refs: list[dict[str, str]] | None = None
    #: each metric's metadata as it scored (:class:`harness_core.registry.MetricSpec` as a dict: title of what it
    #: scored, direction, unit, digits, per-video or set, table, reference), so that a report of the folder needs no
    #: metric code
    metric_specs: list[dict[str, Any]] | None = None
    #: per-video table, relative to the row's folder
    per_video: str | None = PER_VIDEO_FILE
    #: per-frame table (clip, frame, per-frame metrics), relative to the row's folder; ``None`` without one
    per_frame: str | None = None
    #: first frames of the tokenizer's clips / chunks / tiles after the first (``temporal_boundaries``)
    temporal_boundaries: list[int] | None = None
    #: which process reconstructed and scored which clips (``harness.shards.shard_record``): several processes only
    shards: dict[str, Any] | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    # read side only (never written)
    folder: Path | None = None
    suite_dir: Path | None = None
    suite: str | None = None
    generation: GenerationResult | None = None

    _READ_ONLY = ("folder", "suite_dir", "suite", "generation")

    # ------------------------------------------------------------------ json

    def to_json(self) -> dict[str, Any]:
        """The dict written to ``metrics.json`` (the keys files have always had, then ``metric_refs`` and ``per_video``)."""
        out: dict[str, Any] = {}
        for f in fields(self):
            if f.name in self._READ_ONLY or f.name == "extra":
                continue
            value = getattr(self, f.name)
            if isinstance(value, (Protocol, Costs)):
                value = _flatten(value)
            out[f.name] = value
        out.update(self.extra)
        return out

    @classmethod
    def from_json(cls, data: dict[str, Any], folder: Path | None = None) -> "RunRecord":
        """Read a ``metrics.json`` dict (any version); unknown keys are kept in ``extra``.

        Migration: keys renamed since a record was written (:data:`RENAMED_RECORD_KEYS`:
        ``compression_ratio`` -> ``pixels_per_token``, ``protocol.clip_frames`` -> ``protocol.chunk_frames``) are
        read into the field of their new name.
        """
        data = _renamed(data, "")
        known = {f.name for f in fields(cls)} - set(cls._READ_ONLY) - {"extra"}
        kwargs = {k: v for k, v in data.items() if k in known}
        kwargs["protocol"] = _typed(Protocol, _renamed(data.get("protocol") or {}, "protocol"))
        kwargs["costs"] = _typed(Costs, data.get("costs") or {})
        if "per_video" not in data:  # written before the key existed: the table beside the record
            kwargs["per_video"] = PER_VIDEO_FILE
        return cls(**kwargs, extra={k: v for k, v in data.items() if k not in known}, folder=folder)

    # ------------------------------------------------------------------ read side

    @property
    def metric_names(self) -> dict[str, str] | None:
        """Value key -> metric reference, in the suite's order (``None`` for records written before either key)."""
        if self.metric_specs is not None:
            return {spec["name"]: spec.get("reference") or spec["name"] for spec in self.metric_specs}
        if self.metric_refs is None:
            return None
        return {ref["name"]: ref["metric"] for ref in self.metric_refs}

    @property
    def specs(self) -> list[MetricSpec] | None:
        """The recorded metric metadata (``None`` for records written before ``metric_specs``)."""
        return None if self.metric_specs is None else [MetricSpec.from_dict(s) for s in self.metric_specs]

    @property
    def per_video_path(self) -> Path | None:
        """The per-video table's path, or ``None`` when the record names none or has no folder."""
        if self.folder is None or not self.per_video:
            return None
        return Path(self.folder) / self.per_video

    @property
    def per_frame_path(self) -> Path | None:
        """The per-frame table's path, or ``None`` when the record names none or has no folder."""
        if self.folder is None or not self.per_frame:
            return None
        return Path(self.folder) / self.per_frame

    @property
    def run_folder(self) -> RunFolder:
        folder = Path(self.folder)
        return RunFolder(folder, folder.parents[1]) if self.budget is not None else RunFolder(folder)


#: ``metrics.json`` keys renamed in issue 25: ``(section, old key) -> new key`` (section ``""``: the top level,
#: ``"protocol"``: inside ``protocol``). Written under the new name; read under either (:meth:`RunRecord.from_json`).
RENAMED_RECORD_KEYS = {
    ("", "compression_ratio"): "pixels_per_token",
    ("protocol", "clip_frames"): "chunk_frames",
}


def _renamed(data: dict[str, Any], section: str) -> dict[str, Any]:
    """``data`` with the old keys of ``section`` (:data:`RENAMED_RECORD_KEYS`) under their new names; a new key
    already present wins."""
    out = dict(data)
    for (where, old), new in RENAMED_RECORD_KEYS.items():
        if where == section and old in out:
            value = out.pop(old)
            out.setdefault(new, value)
    return out


def _flatten(value: Protocol | Costs) -> dict[str, Any]:
    out = {k: v for k, v in asdict(value).items() if k != "extra"}
    out.update(value.extra)
    return out


def _typed(cls, data: dict[str, Any]):
    known = {f.name for f in fields(cls)} - {"extra"}
    return cls(**{k: v for k, v in data.items() if k in known}, extra={k: v for k, v in data.items() if k not in known})


# ----------------------------------------------------------------------------- loading


def _suite_dir(folder: Path, root: Path) -> Path:
    """The nearest folder at or above ``folder`` (not above ``root``'s parent) holding ``suite.json``."""
    for parent in [folder, *folder.parents]:
        if (parent / SUITE_FILE).is_file():
            return parent
        if parent == root.parent:
            break
    return root


def load_records(results: Path) -> list[RunRecord]:
    """Every row's ``metrics.json`` under ``results`` (recursively, sorted by path), with its generation results.

    Files that are not run records (a generation ``metrics.json``, other JSON) are skipped.
    """
    results = Path(results)
    records: list[RunRecord] = []
    for path in sorted(results.rglob(METRICS_FILE)):
        if path.parent.name == GENERATION_DIR:
            continue
        data = json.loads(path.read_text())
        if not isinstance(data, dict) or "row" not in data or "metrics" not in data:
            continue
        record = RunRecord.from_json(data, folder=path.parent)
        record.suite_dir = _suite_dir(path.parent, results)
        generation = record.run_folder.generation_metrics
        if generation.is_file():
            record.generation = GenerationResult(json.loads(generation.read_text()))
        records.append(record)
    names: dict[str, set[Path]] = {}
    for record in records:
        names.setdefault(record.suite_dir.name, set()).add(record.suite_dir)
    for record in records:
        folder = record.suite_dir
        if len(names[folder.name]) == 1 or folder == results:
            record.suite = folder.name
        else:
            record.suite = str(folder.relative_to(results)) if folder.is_relative_to(results) else str(folder)
    return records
