"""Suite schema and validation.

A suite is a YAML file (documented key by key in ``suites/README.md``). It is
validated as a whole before any work starts: unknown keys are rejected by
name with the list of allowed keys, tokenizer / metric / dataset names must
resolve, tokenizer keyword arguments must exist in the tokenizer's
constructor, and a missing data folder stops the run with a message that says
what to download. ``--set key=value`` overrides any key (lists of tokenizers
are addressed by ``id``: ``tokenizers.grid3d.kwargs.size=tiny``).
"""
from __future__ import annotations

import copy
import inspect
import os
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator


class SuiteError(ValueError):
    """An invalid suite; the message names the file and the offending key."""


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())


class DataConfig(Strict):
    """Where videos come from and how clips are cut (SPEC "Data")."""

    dataset: str = "samples"
    root: str | None = None
    fold: int = Field(1, ge=1, le=3)
    resolution: int = Field(64, ge=8)
    frames: int = Field(32, ge=1)
    frame_stride: int = Field(1, ge=1)
    eval_clips_per_video: int = Field(1, ge=1)
    max_eval_videos: int | None = Field(None, ge=1)
    max_train_videos: int | None = Field(None, ge=1)
    extensions: list[str] = [".mp4", ".avi", ".mov", ".mkv", ".webm", ".mpg", ".mpeg", ".ogv"]
    memory_cache: bool = True
    num_workers: int = Field(0, ge=0)
    cache_dir: str | None = None

    @field_validator("root")
    @classmethod
    def _expand_user(cls, value: str | None) -> str | None:
        """``~`` in ``data.root`` is the user's home, for every dataset (the one place it is expanded)."""
        return os.path.expanduser(value) if value else value


class TrainConfig(Strict):
    """Optimizer and schedule (CoordTok supp. A.1 defaults: AdamW lr 1e-4, betas (0.9, 0.999), wd 0.001, constant)."""

    steps: int = Field(100, ge=0)
    batch_size: int = Field(8, ge=1)
    micro_batch_size: int | None = Field(None, ge=1)
    lr: float = Field(1e-4, gt=0)
    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = Field(0.001, ge=0)
    mixed_precision: Literal["auto", "no", "fp16", "bf16"] = "auto"
    checkpoint_every: int = Field(100, ge=1)
    log_every: int = Field(10, ge=1)
    grad_clip: float | None = None
    stage0_cache_clips: int = Field(0, ge=0)


class EvaluateConfig(Strict):
    """Reconstruction evaluation (CoordTok supp. B.1): whole clips in, per-frame metrics, rFVD on clips."""

    metrics: list[str] = ["psnr", "ssim", "lpips", "fvd_16f", "dynamics", "frequency"]
    metric_kwargs: dict[str, dict[str, Any]] = {}
    batch_size: int = Field(2, ge=1)
    clip_batch: int = Field(8, ge=1)
    keep_reconstructions: bool = True


class TokenizerEntry(Strict):
    """One tokenizer of a suite: registered name (or ``module:Class``), constructor kwargs, overrides."""

    id: str
    name: str
    kwargs: dict[str, Any] = {}
    train: dict[str, Any] = {}
    budgets: list[int] | None = None
    generation: dict[str, Any] | None = None
    description: str = ""

    @field_validator("id")
    @classmethod
    def _safe_id(cls, value: str) -> str:
        if not value or any(ch in value for ch in "/\\ @:") or value.startswith("."):
            raise ValueError(f"tokenizer id {value!r} must be a plain folder name (no '/', '\\\\', ' ', '@', ':')")
        return value


class Suite(Strict):
    """A whole suite file."""

    name: str
    description: str = ""
    seed: int = 0
    #: deterministic algorithms (``harness.seeding.configure_determinism``): ``auto`` = on for CPU, off for CUDA
    deterministic: bool | Literal["auto"] = "auto"
    output_dir: str | None = None
    data: DataConfig = DataConfig()
    train: TrainConfig = TrainConfig()
    evaluate: EvaluateConfig = EvaluateConfig()
    generation: dict[str, Any] | None = None
    tokenizers: list[TokenizerEntry]

    @model_validator(mode="after")
    def _unique_ids(self) -> "Suite":
        ids = [t.id for t in self.tokenizers]
        dupes = sorted({i for i in ids if ids.count(i) > 1})
        if dupes:
            raise ValueError(f"tokenizer ids must be unique, repeated: {dupes}")
        return self

    def train_config(self, entry: TokenizerEntry) -> TrainConfig:
        """The suite's training schedule with the entry's overrides applied (validated)."""
        return TrainConfig(**{**self.train.model_dump(), **entry.train})

    def results_dir(self) -> Path:
        return Path(self.output_dir) if self.output_dir else Path("results") / self.name


# ----------------------------------------------------------------------------- key checks


def _model_of(annotation: Any) -> type[BaseModel] | None:
    if inspect.isclass(annotation) and issubclass(annotation, BaseModel):
        return annotation
    if get_origin(annotation) in (Union, getattr(__import__("types"), "UnionType", Union)):
        for arg in get_args(annotation):
            model = _model_of(arg)
            if model is not None:
                return model
    return None


def _list_item_model(annotation: Any) -> type[BaseModel] | None:
    if get_origin(annotation) is list:
        args = get_args(annotation)
        return _model_of(args[0]) if args else None
    for arg in get_args(annotation):
        model = _list_item_model(arg)
        if model is not None:
            return model
    return None


def check_keys(raw: Any, model: type[BaseModel], where: str, source: str) -> None:
    """Reject unknown keys of ``raw`` against ``model`` recursively, naming key and allowed keys."""
    if not isinstance(raw, dict):
        raise SuiteError(f"{source}: '{where or '<top>'}' must be a mapping, got {type(raw).__name__}")
    fields = model.model_fields
    for key, value in raw.items():
        path = f"{where}.{key}" if where else str(key)
        if key not in fields:
            raise SuiteError(f"{source}: unknown key '{path}'; allowed keys{' under ' + where if where else ''}: {', '.join(fields)}")
        annotation = fields[key].annotation
        sub = _model_of(annotation)
        if sub is not None and isinstance(value, dict):
            check_keys(value, sub, path, source)
        item = _list_item_model(annotation)
        if item is not None and isinstance(value, list):
            for index, element in enumerate(value):
                label = element.get("id", index) if isinstance(element, dict) else index
                check_keys(element, item, f"{path}[{label}]", source)


# ----------------------------------------------------------------------------- overrides


def apply_override(raw: dict, assignment: str) -> None:
    """Apply one ``key.path=value`` (value parsed as YAML) in place.

    List elements are addressed by their ``id`` or by index.

    Raises:
        SuiteError: malformed assignment or a path through a missing list element.
    """
    if "=" not in assignment:
        raise SuiteError(f"--set expects key=value, got {assignment!r}")
    key, _, text = assignment.partition("=")
    value = yaml.safe_load(text) if text else None
    parts = key.strip().split(".")
    node: Any = raw
    for depth, part in enumerate(parts):
        last = depth == len(parts) - 1
        if isinstance(node, list):
            index = _list_index(node, part, key)
            if last:
                node[index] = value
            else:
                node = node[index]
            continue
        if not isinstance(node, dict):
            raise SuiteError(f"--set {key}: '{'.'.join(parts[:depth])}' is not a mapping")
        if last:
            node[part] = value
        else:
            node = node.setdefault(part, {})


def _list_index(items: list, part: str, key: str) -> int:
    for index, item in enumerate(items):
        if isinstance(item, dict) and item.get("id") == part:
            return index
    if part.isdigit() and int(part) < len(items):
        return int(part)
    ids = [item.get("id") for item in items if isinstance(item, dict)]
    raise SuiteError(f"--set {key}: no list element with id or index {part!r}; ids: {ids}")


# ----------------------------------------------------------------------------- loading


def load_suite(path: str | Path, overrides: list[str] = (), only: list[str] | None = None) -> Suite:
    """Read, override, key-check and validate a suite, then check names and data.

    Args:
        path: the YAML file.
        overrides: ``key=value`` strings (``--set``).
        only: keep only these tokenizer ids (plus the runs they reference).

    Raises:
        SuiteError: anything wrong, with the file and key in the message.
    """
    path = Path(path)
    if not path.is_file():
        raise SuiteError(f"suite file not found: {path}")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise SuiteError(f"{path}: not valid YAML: {err}") from err
    raw = copy.deepcopy(raw)
    for assignment in overrides:
        apply_override(raw, assignment)
    check_keys(raw, Suite, "", str(path))
    try:
        suite = Suite(**raw)
    except ValidationError as err:
        first = err.errors()[0]
        loc = ".".join(str(p) for p in first["loc"])
        raise SuiteError(f"{path}: invalid value at '{loc}': {first['msg']}") from err
    if only:
        suite = _select(suite, only, path)
    validate_names(suite, str(path))
    return suite


def referenced_runs(entry: TokenizerEntry) -> list[str]:
    """Run ids named as ``"run:<id>"`` in an entry's kwargs (e.g. VideoFlexTok's stage-0 VAE)."""
    return [v[4:] for v in entry.kwargs.values() if isinstance(v, str) and v.startswith("run:")]


def _select(suite: Suite, only: list[str], path: Path) -> Suite:
    by_id = {t.id: t for t in suite.tokenizers}
    unknown = [i for i in only if i not in by_id]
    if unknown:
        raise SuiteError(f"{path}: --only names unknown tokenizer ids {unknown}; ids: {list(by_id)}")
    keep: list[str] = []
    for ident in only:
        for dep in referenced_runs(by_id[ident]) + [ident]:
            if dep not in keep:
                keep.append(dep)
    return suite.model_copy(update={"tokenizers": [by_id[i] for i in keep if i in by_id]})


def constructor_parameters(cls: type) -> tuple[set[str], bool]:
    """Keyword names accepted along ``cls``'s constructor chain, and whether any ``**kwargs`` stays open."""
    names: set[str] = set()
    for klass in cls.__mro__:
        init = klass.__dict__.get("__init__")
        if init is None:
            continue
        params = inspect.signature(init).parameters
        names |= {n for n, p in params.items() if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and n != "self"}
        if not any(p.kind == p.VAR_KEYWORD for p in params.values()):
            return names, False
        if klass.__module__.startswith("torch."):
            break
    return names, True


def stage0_cache_problem(train: TrainConfig, tokenizer_cls: type, name: str) -> str | None:
    """Why ``train.stage0_cache_clips`` cannot be used with ``tokenizer_cls``, or ``None`` when it can (or is off)."""
    if not train.stage0_cache_clips:
        return None
    if not getattr(tokenizer_cls, "frozen_stage0", False):
        return f"{name} has no frozen stage 0 to cache"
    if train.stage0_cache_clips < train.batch_size:
        return f"{train.stage0_cache_clips} is smaller than train.batch_size {train.batch_size}"
    return None


def validate_names(suite: Suite, source: str) -> None:
    """Check that every tokenizer, kwarg, metric and dataset named by ``suite`` exists."""
    from harness.registry import DATASETS, METRICS, TOKENIZERS

    ids = [t.id for t in suite.tokenizers]
    for entry in suite.tokenizers:
        try:
            cls = TOKENIZERS.get(entry.name)
        except (KeyError, ImportError, AttributeError) as err:
            raise SuiteError(f"{source}: tokenizers[{entry.id}].name: {err}") from err
        accepted, open_kwargs = constructor_parameters(cls)
        unknown = sorted(set(entry.kwargs) - accepted)
        if unknown and not open_kwargs:
            raise SuiteError(f"{source}: tokenizers[{entry.id}].kwargs: unknown argument(s) {unknown} for {entry.name}; accepted: {sorted(accepted)}")
        for dep in referenced_runs(entry):
            if dep not in ids or ids.index(dep) >= ids.index(entry.id):
                raise SuiteError(f"{source}: tokenizers[{entry.id}].kwargs references run:{dep}, which must be a tokenizer listed before it")
        if entry.budgets and not getattr(cls, "flexible", False):
            raise SuiteError(f"{source}: tokenizers[{entry.id}].budgets: {entry.name} is not a flexible tokenizer")
        try:
            train = suite.train_config(entry)
        except ValidationError as err:
            raise SuiteError(f"{source}: tokenizers[{entry.id}].train: {err.errors()[0]['loc'][0]}: {err.errors()[0]['msg']}") from err
        problem = stage0_cache_problem(train, cls, entry.name)
        if problem:
            raise SuiteError(f"{source}: tokenizers[{entry.id}].train.stage0_cache_clips: {problem}")
    for name in suite.evaluate.metrics:
        if name not in METRICS:
            raise SuiteError(f"{source}: evaluate.metrics: unknown metric {name!r}; registered: {', '.join(METRICS.names())}")
    if suite.data.dataset not in DATASETS:
        raise SuiteError(f"{source}: data.dataset: unknown dataset {suite.data.dataset!r}; registered: {', '.join(DATASETS.names())}")
    DATASETS.get(suite.data.dataset).check_root(suite.data, source)
    if suite.generation is not None or any(t.generation for t in suite.tokenizers):
        from harness.generation.config import GenerationConfig

        for entry in suite.tokenizers:
            try:
                generation_config(suite, entry, GenerationConfig)
            except ValidationError as err:
                first = err.errors()[0]
                raise SuiteError(f"{source}: generation (tokenizer {entry.id}): '{'.'.join(map(str, first['loc']))}': {first['msg']}") from err


def generation_config(suite: Suite, entry: TokenizerEntry, config_cls: type | None = None):
    """The suite's generation settings with the entry's overrides, or ``None`` when disabled."""
    if suite.generation is None and entry.generation is None:
        return None
    if config_cls is None:
        from harness.generation.config import GenerationConfig as config_cls
    return config_cls(**{**(suite.generation or {}), **(entry.generation or {})})
