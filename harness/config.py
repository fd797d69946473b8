"""Suite schema and validation.

A suite is a YAML file (documented key by key in ``suites/README.md``). Every
kind of suite file (``python -m harness run`` suites here, the cost-vs-length
suites of :mod:`harness.profile`) is read by one path, :func:`read_suite`:
YAML, ``--set key=value`` overrides (lists of tokenizers are addressed by
``id``: ``tokenizers.grid3d.kwargs.size=tiny``), then the pydantic models
below, which forbid unknown keys at every level. pydantic's errors become one
:class:`SuiteError` line naming the file and the key path (list items by
their ``id``: ``tokenizers[coordtok_tiny].train.stepz``); an unknown key's
message also lists the allowed keys at its level. Names are checked next
(:func:`validate_names`, :func:`check_tokenizer`): tokenizer / metric /
dataset names must resolve, tokenizer keyword arguments must exist in the
tokenizer's constructor, and a missing data folder stops the run with a
message that says what to download.

Per-tokenizer ``train`` / ``generation`` blocks are typed overrides
(:class:`TrainOverrides`, :class:`GenerationOverrides`: the fields of
:class:`TrainConfig` / :class:`GenerationConfig`, each optional); the merged
configurations come from :meth:`Suite.train_config` and
:func:`generation_config`, the keys an entry sets winning over the suite's.

The engine passes the data geometry to tokenizers whose constructor takes
``frames`` / ``resolution`` (:func:`tokenizer_kwargs`), so suites do not
repeat it; :func:`load_suite` returns entries whose ``kwargs`` are these
resolved constructor arguments (what ``config.json`` records and the training
fingerprint hashes).

Importing this module does not import torch; validating a ``generation``
block does (its ``model`` is checked against
:data:`harness.generation.sit.SIT_SIZES`), and so does :func:`validate_names`
(the registries).
"""
from __future__ import annotations

import copy
import inspect
import os
import types
from pathlib import Path
from typing import Annotated, Any, Literal, Optional, TypeVar, Union, get_args, get_origin

import yaml
from pydantic import (BaseModel, ConfigDict, Field, ValidationError, create_model, field_validator, model_serializer,
                      model_validator)


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
    #: pre-decoded clip store (harness.data.store, docs/datasets.md "Clip store"): every video decoded once into a
    #: memory-mapped uint8 file that training and evaluation clips are read from (the same bytes as decoding them);
    #: ``auto`` uses it when ``memory_cache`` is false (large datasets), ``on`` always, ``off`` never (every clip
    #: decoded); the clips are the same either way. YAML reads a bare on/off (or true/false) as a boolean: same meaning
    store: Literal["auto", "on", "off", True, False] = "auto"
    num_workers: int = Field(0, ge=0)
    cache_dir: str | None = None
    #: frame resize (harness.data.decode.RESIZE_METHODS): ``bilinear_antialias``, or ``bicubic_pil`` as CoordTok's
    #: loader (tools/datasets.py VideoTimeSplit: torchvision Resize(R, BICUBIC) + CenterCrop on PIL images)
    resize: Literal["bilinear_antialias", "bicubic_pil"] = "bilinear_antialias"
    #: videos shorter than one clip: ``drop`` them (StyleGAN-V discard_short_videos) or ``pad`` them to the clip length
    #: (last frame repeated) and pass their real frame count ``n_frames`` to tokenizers and metrics, which score real
    #: frames only (CoordTok tools/datasets.py VideoTimeSplit); ``pad`` applies to datasets of whole videos
    #: (ucf101, davis2017, kinetics600, tokenbench, mcl_jcv), not to those split in time
    short_videos: Literal["drop", "pad"] = "drop"
    #: evaluation clips: a seeded list of this many (video, start) clips drawn with replacement from the evaluation
    #: videos (CoordTok supp. B.1, MAGVIT: 10,000 random 128-frame clips); ``None``: ``eval_clips_per_video`` per video
    eval_clips: int | None = Field(None, ge=1)
    #: a given evaluation list (lines ``relpath start end``, paths relative to ``data.root``; CoordTok's
    #: evallist.txt), used as is instead of drawing clips
    eval_list: str | None = None

    @field_validator("eval_list")
    @classmethod
    def _expand_list_path(cls, value: str | None) -> str | None:
        return os.path.expanduser(value) if value else value

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
    #: TF32 matmuls and cuDNN convolutions on CUDA during training (``None``: PyTorch's defaults; CoordTok's official
    #: training passes ``--allow_tf32``, huiwon-jang/CoordTok 8475272 README); set for the train stage and restored after
    tf32: bool | None = None
    #: Accelerate tracker for losses and learning rate: TensorBoard event files in the run folder, or wandb
    log_with: Literal["none", "tensorboard", "wandb"] = "none"


class EvaluateConfig(Strict):
    """Reconstruction evaluation (CoordTok supp. B.1): whole clips in, per-frame metrics, rFVD on clips."""

    metrics: list[str] = ["psnr", "ssim", "lpips", "fvd_16f", "dynamics", "frequency"]
    metric_kwargs: dict[str, dict[str, Any]] = {}
    batch_size: int = Field(2, ge=1)
    clip_batch: int = Field(8, ge=1)
    keep_reconstructions: bool = True
    #: reconstruct the first evaluation batch with tiling off and on for tokenizers that can switch it
    #: (``harness.clips.tiling_consistency``; recorded as ``tiling_consistency``)
    tiling_check: bool = False


class GenerationConfig(Strict):
    """Generator training, sampling and gFVD settings: a suite's ``generation:`` block (issue 7).

    Defaults follow CoordTok supplementary A.2 (CoordTok-SiT-L/2: AdamW lr 1e-4,
    betas (0.9, 0.999), no weight decay, batch 64, 600K iterations, EMA 0.9999,
    Euler-Maruyama SDE with 250 steps, diffusion ``w_t = sigma_t``, last step
    0.04) and StyleGAN-V's ``fvd2048_16f`` (2048 real against 2048 generated
    clips). Unknown keys are rejected by name. Defined here rather than in
    :mod:`harness.generation.config` (which re-exports it) so that the suite
    schema imports without torch.

    Raises:
        pydantic.ValidationError: an unknown key, a value out of range, or a
            ``model`` that is not a key of ``SIT_SIZES``.

    Attributes:
        enabled: run the generation stage at all.
        generator: ``"auto"`` (SiT for continuous tokenizers, the
            autoregressive transformer for discrete ones), ``"sit"`` or ``"ar"``.
        model: size name, ``tiny``/``S``/``B``/``L``/``XL`` (SiT paper, Table 1;
            the same widths for the autoregressive transformer).
        patch: SiT spatial patch size (2, 4 or 8 in SiT; CoordTok-SiT-L/2 uses 2).
        patch_t: SiT temporal patch size for 3D grid latents (1 keeps every latent timestep).
        steps: optimizer steps (600K in CoordTok supp. A.2).
        batch_size: training batch (64 in CoordTok supp. A.2).
        lr, weight_decay, betas: AdamW (1e-4, 0, (0.9, 0.999); supp. A.2).
        ema: EMA momentum (0.9999; supp. A.2).
        ema_warmup: timm ``ModelEmaV3`` warmup (decay grows from 0 to ``ema``);
            off in the paper, useful for the few hundred steps of a CPU suite.
        grad_clip: max grad norm, ``None`` for none (the paper does not clip).
        train_data: where training batches come from. ``"epochs"`` (default, as CoordTok-SiT:
            huiwon-jang/CoordTok 8475272 ``train_sit.py``, ``DistributedSampler(shuffle=True)`` over
            ``VideoTimeSplit``): every epoch visits every training video once in a seeded order, each
            visit a fresh random window, encoded by the frozen tokenizer at every step. ``"pool"`` (a
            deviation for small machines): ``num_train_clips`` clips are encoded once and batches drawn
            from them with replacement (no encoding per step, but a fixed window per clip and not every
            video seen).
        num_train_clips: ``pool`` only: training clips encoded once and cached as the generator's
            training set (one clip per ``train_clips`` draw); unused in ``epochs`` mode.
        num_norm_clips: clips for the per-plane / per-channel mean and std (2048 in supp. A.2). ``epochs``:
            ``min(num_norm_clips, N)`` of the ``N`` training videos, evenly spread over the list, one seeded
            window each; ``pool``: the first ``min(num_norm_clips, num_train_clips)`` cached clips.
        encode_batch_size: clips per encoder call for the cached clips (``pool``) and the normalization
            clips (``epochs``).
        num_tokens: token budget passed to ``encode`` (flexible tokenizers; ``None`` = full).
        sampler: ``"sde"`` (Euler-Maruyama, the paper) or ``"ode"`` (torchdiffeq).
        sampling_steps: SDE steps including the last mean step (250), or the
            number of grid points of a fixed-step ODE method.
        last_step_size: size of the final noiseless SDE step (0.04).
        ode_method, ode_atol, ode_rtol: torchdiffeq settings (SiT's defaults: dopri5, 1e-6, 1e-3).
        temperature, top_k: autoregressive sampling.
        num_samples: generated videos for gFVD (2048, StyleGAN-V).
        num_real: real clips for gFVD (2048, StyleGAN-V).
        sample_batch_size: videos per sampling / decoding batch.
        fvd_protocols: metric names from ``harness_core.registry.METRICS`` (``fvd_16f``, ``fvd_128f``).
        real_cache_dir: where real FVD statistics are cached (default
            ``<run_dir>/../.fvd_real_cache``, shared by the runs of a suite).
        conditional: class-conditional (UCF-101's 101 classes) with
            classifier-free guidance; otherwise one class and no dropout
            (supp. A.2: "the number of classes as 1 ... class dropout ratio to 0").
        cfg_scale: guidance scale (1 = no guidance; used only when conditional).
        class_dropout: label dropout for CFG training (DiT/SiT: 0.1; used only when conditional).
        num_gif_samples: generated videos written as GIFs to ``generation/samples/``.
        gif_fps: frame rate of those GIFs.
        checkpoint_every: steps between checkpoints (and always at the end).
        log_every: steps between loss log lines.
        cpu_threads: on a CPU device, torch intra-op threads for the stage
            (set by its backend, harness/stages/generate.py, and restored afterwards); ``None`` leaves the setting alone. Tiny
            generators run several times faster with 1 thread on a machine shared
            with other jobs; on an idle one all cores are faster (samples_cpu's
            generate stage: 112 s with 1 thread, 86 s with 2, on 2 cores).
    """

    enabled: bool = False
    generator: Literal["auto", "sit", "ar"] = "auto"
    model: str = "tiny"
    patch: int = Field(2, ge=1)
    patch_t: int = Field(1, ge=1)
    steps: int = Field(600_000, ge=0)
    batch_size: int = Field(64, ge=1)
    lr: float = Field(1e-4, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    betas: tuple[float, float] = (0.9, 0.999)
    ema: float = Field(0.9999, ge=0, le=1)
    ema_warmup: bool = False
    grad_clip: Optional[float] = None
    train_data: Literal["epochs", "pool"] = "epochs"
    num_train_clips: int = Field(2048, ge=1)
    num_norm_clips: int = Field(2048, ge=1)
    encode_batch_size: int = Field(16, ge=1)
    num_tokens: Optional[int] = None
    sampler: Literal["sde", "ode"] = "sde"
    sampling_steps: int = Field(250, ge=2)
    last_step_size: float = Field(0.04, ge=0, lt=1)
    ode_method: str = "dopri5"
    ode_atol: float = 1e-6
    ode_rtol: float = 1e-3
    temperature: float = Field(1.0, gt=0)
    top_k: Optional[int] = None
    num_samples: int = Field(2048, ge=1)
    num_real: int = Field(2048, ge=1)
    sample_batch_size: int = Field(16, ge=1)
    fvd_protocols: list[str] = Field(default_factory=lambda: ["fvd_16f"])
    real_cache_dir: Optional[str] = None
    conditional: bool = False
    cfg_scale: float = Field(1.0, ge=0)
    class_dropout: float = Field(0.1, ge=0, lt=1)
    num_gif_samples: int = Field(4, ge=0)
    gif_fps: int = Field(8, ge=1)
    checkpoint_every: int = Field(10_000, ge=1)
    log_every: int = Field(100, ge=1)
    cpu_threads: Optional[int] = Field(None, ge=1)
    #: real clips of gFVD (harness.generation.stage.real_clip_batches): ``first_videos`` = StyleGAN-V's rule (one clip
    #: of each of the first num_real training videos a clip long; CoordTok supp. B.2), ``draws`` = num_real draws of
    #: the seeded training stream (video uniformly with replacement)
    real_clips: Literal["first_videos", "draws"] = "first_videos"

    @model_validator(mode="after")
    def _check(self) -> "GenerationConfig":
        from harness.generation.sit import SIT_SIZES  # imported on first validation (torch), not with this module

        if self.model not in SIT_SIZES:
            raise ValueError(f"generation.model must be one of {sorted(SIT_SIZES)}, got {self.model!r}")
        return self


M = TypeVar("M", bound=BaseModel)


class Overrides(Strict):
    """Base of per-tokenizer overrides: every key of a configuration, each optional.

    Only the keys a suite sets count: ``model_dump`` returns exactly those (as
    the YAML mapping spelled them) and :meth:`apply` lays them over a full
    configuration. Values are checked with the configuration's own types and
    bounds when the suite is read (an explicit ``null`` only where the
    configuration allows ``None``).
    """

    @model_serializer(mode="wrap")
    def _only_set(self, handler: Any) -> dict[str, Any]:
        data = handler(self)
        return {key: value for key, value in data.items() if key in self.model_fields_set}

    def apply(self, base: M) -> M:
        """``base`` with the keys set here replaced, validated again as ``type(base)``.

        Raises:
            pydantic.ValidationError: the merged configuration is invalid (a check across keys).
        """
        return type(base).model_validate({**base.model_dump(), **self.model_dump()})


def overrides_of(config: type[BaseModel], name: str) -> type[Overrides]:
    """An :class:`Overrides` model with every field of ``config`` (same type and bounds), defaulting to unset."""
    fields: dict[str, Any] = {}
    for key, info in config.model_fields.items():
        annotation = Annotated[info.annotation, *info.metadata] if info.metadata else info.annotation
        fields[key] = (annotation, Field(None, description=info.description))
    doc = f"Per-tokenizer overrides of :class:`{config.__name__}`: any of its keys, each optional (``extra=\"forbid\"``)."
    return create_model(name, __base__=Overrides, __module__=__name__, __doc__=doc, **fields)


#: ``tokenizers[].train``: any :class:`TrainConfig` key
TrainOverrides = overrides_of(TrainConfig, "TrainOverrides")
#: ``tokenizers[].generation``: any :class:`GenerationConfig` key
GenerationOverrides = overrides_of(GenerationConfig, "GenerationOverrides")


class TokenizerSpec(Strict):
    """What builds a tokenizer, in every suite schema: a registered name (or ``module:Class``) and constructor kwargs."""

    name: str = Field(description="registry name or module:Class")
    kwargs: dict[str, Any] = {}


class TokenizerEntry(TokenizerSpec):
    """One tokenizer of a suite: registered name (or ``module:Class``), constructor kwargs, overrides.

    ``train`` and ``generation`` override the suite's blocks key by key (see
    :meth:`Suite.train_config` and :func:`generation_config`). ``pretrained: true``
    (or ``train: null``) makes the entry evaluation-only: the tokenizer loads its
    weights itself (e.g. ``kwargs.pretrained`` of a diffusers VAE) and is not
    trained; reconstruction, evaluation and generation run as for the others.
    """

    id: str
    train: TrainOverrides = Field(default_factory=TrainOverrides)
    pretrained: bool = False
    budgets: list[int] | None = None
    generation: GenerationOverrides | None = None
    description: str = ""

    @model_validator(mode="before")
    @classmethod
    def _train_null_means_pretrained(cls, data: Any) -> Any:
        if isinstance(data, dict) and "train" in data and data["train"] is None:
            data = {**data, "train": {}, "pretrained": True}
        return data

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
    #: deterministic algorithms (``harness_core.seeding.configure_determinism``): ``auto`` = on for CPU, off for CUDA
    deterministic: bool | Literal["auto"] = "auto"
    output_dir: str | None = None
    data: DataConfig = DataConfig()
    train: TrainConfig = TrainConfig()
    evaluate: EvaluateConfig = EvaluateConfig()
    generation: GenerationConfig | None = None
    #: plugin stages to run (``harness.stages``): stage reference (entry point name or ``module:Class``) -> its
    #: settings, validated by the stage's ``Config`` model; the built-in stages always run
    stages: dict[str, dict[str, Any] | None] = {}
    tokenizers: list[TokenizerEntry]

    @model_validator(mode="after")
    def _unique_ids(self) -> "Suite":
        ids = [t.id for t in self.tokenizers]
        dupes = sorted({i for i in ids if ids.count(i) > 1})
        if dupes:
            raise ValueError(f"tokenizer ids must be unique, repeated: {dupes}")
        return self

    def train_config(self, entry: TokenizerEntry) -> TrainConfig:
        """The suite's training schedule with the keys set in ``entry.train`` replaced (validated).

        Raises:
            pydantic.ValidationError: the merged schedule is invalid (reported at load by :func:`validate_names`).
        """
        return entry.train.apply(self.train)

    def results_dir(self) -> Path:
        return Path(self.output_dir) if self.output_dir else Path("results") / self.name


def generation_config(suite: Suite, entry: TokenizerEntry) -> GenerationConfig | None:
    """The suite's generation settings with the keys set in ``entry.generation`` replaced.

    ``None`` when neither the suite nor the entry has a ``generation`` block;
    otherwise a :class:`GenerationConfig` (defaults for the keys nobody set),
    whose ``enabled`` says whether the stage runs (an entry may enable or
    disable it).

    Raises:
        pydantic.ValidationError: the merged settings are invalid (reported at load by :func:`validate_names`).
    """
    if suite.generation is None and entry.generation is None:
        return None
    base = suite.generation if suite.generation is not None else GenerationConfig()
    return (entry.generation if entry.generation is not None else GenerationOverrides()).apply(base)


# ----------------------------------------------------------------------------- error messages


def _alternatives(annotation: Any) -> list[Any]:
    """The members of a union (``X | None``), through ``Annotated``."""
    origin = get_origin(annotation)
    if origin is Annotated:
        return _alternatives(get_args(annotation)[0])
    if origin in (Union, types.UnionType):
        return [member for arg in get_args(annotation) for member in _alternatives(arg)]
    return [annotation]


def _is_model(annotation: Any) -> bool:
    return inspect.isclass(annotation) and issubclass(annotation, BaseModel)


def model_at(model: type[BaseModel], loc: tuple) -> type[BaseModel] | None:
    """The model class at a pydantic error location (``("tokenizers", 0, "train")`` -> :class:`TrainOverrides`)."""
    annotation: Any = model
    for part in loc:
        for candidate in _alternatives(annotation):
            if isinstance(part, str) and _is_model(candidate) and part in candidate.model_fields:
                annotation = candidate.model_fields[part].annotation
                break
            if isinstance(part, int) and get_origin(candidate) is list:
                annotation = get_args(candidate)[0]
                break
        else:
            return None
    models = [candidate for candidate in _alternatives(annotation) if _is_model(candidate)]
    return models[0] if models else None


def key_path(raw: Any, loc: tuple) -> str:
    """A pydantic error location as a suite key path; list items by their ``id`` (or ``label``), else index."""
    text, node = "", raw
    for part in loc:
        if isinstance(part, int):
            item = node[part] if isinstance(node, list) and 0 <= part < len(node) else None
            names = [item.get(key) for key in ("id", "label")] if isinstance(item, dict) else []
            text += f"[{next((n for n in names if isinstance(n, str) and n), part)}]"
            node = item
        else:
            text += f".{part}" if text else str(part)
            node = node.get(part) if isinstance(node, dict) else None
    return text


def suite_error(err: ValidationError, raw: Any, model: type[BaseModel], source: str) -> SuiteError:
    """One line for a failed validation of ``raw`` against ``model``: the first unknown key (named with its
    full key path and the allowed keys at its level), otherwise the first invalid value."""
    errors = err.errors()
    unknown = [e for e in errors if e["type"] == "extra_forbidden"]
    if unknown:
        loc = unknown[0]["loc"]
        where = key_path(raw, loc[:-1])
        owner = model_at(model, loc[:-1])
        allowed = ", ".join(owner.model_fields) if owner is not None else "?"
        return SuiteError(f"{source}: unknown key '{key_path(raw, loc)}'; allowed keys{' under ' + where if where else ''}: {allowed}")
    first = errors[0]
    return SuiteError(f"{source}: invalid value at '{key_path(raw, first['loc']) or '<top>'}': {first['msg']}")


def _error_text(err: ValidationError) -> str:
    first = err.errors()[0]
    where = ".".join(str(p) for p in first["loc"])
    return f"{where}: {first['msg']}" if where else first["msg"]


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


def read_suite(path: str | Path, model: type[M], overrides: list[str] = ()) -> M:
    """Read a suite file of any schema: YAML, ``--set`` overrides, then validation against ``model``.

    Args:
        path: the YAML file.
        model: the schema (:class:`Suite`, :class:`harness.profile.ProfileSuite`).
        overrides: ``key=value`` strings (``--set``).

    Raises:
        SuiteError: a missing file, invalid YAML, a file that is not a mapping, a bad ``--set``, an unknown
            key (named with its key path and the allowed keys) or an invalid value (named with its key path).
    """
    path = Path(path)
    if not path.is_file():
        raise SuiteError(f"suite file not found: {path}")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise SuiteError(f"{path}: not valid YAML: {err}") from err
    if not isinstance(raw, dict):
        raise SuiteError(f"{path}: a suite must be a mapping of keys, got {type(raw).__name__}")
    raw = copy.deepcopy(raw)
    for assignment in overrides:
        apply_override(raw, assignment)
    try:
        return model.model_validate(raw)
    except ValidationError as err:
        raise suite_error(err, raw, model, str(path)) from err


def load_suite(path: str | Path, overrides: list[str] = (), only: list[str] | None = None,
               check_data: bool = True) -> Suite:
    """Read, override and validate a suite, check its names and data, and resolve tokenizer kwargs.

    Args:
        path: the YAML file.
        overrides: ``key=value`` strings (``--set``).
        only: keep only these tokenizer ids (plus the runs they reference).
        check_data: check that the data folder exists (``False`` for reading a suite's protocol without its data).

    Returns:
        the suite, each entry's ``kwargs`` replaced by :func:`tokenizer_kwargs` (data geometry filled in).

    Raises:
        SuiteError: anything wrong, with the file and key in the message (:func:`read_suite`,
            :func:`validate_names`).
    """
    path = Path(path)
    suite = read_suite(path, Suite, overrides)
    if only:
        suite = _select(suite, only, path)
    validate_names(suite, str(path), check_data)
    return suite.model_copy(update={"tokenizers": [
        entry.model_copy(update={"kwargs": tokenizer_kwargs(suite, entry)}) for entry in suite.tokenizers]})


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


# ----------------------------------------------------------------------------- tokenizers


#: constructor parameters the engine fills from the data geometry (and no others)
GEOMETRY_PARAMETERS = ("frames", "resolution")


def check_tokenizer(spec: TokenizerSpec, where: str, source: str, missing_ok: bool = False) -> type | None:
    """Resolve ``spec.name`` and check ``spec.kwargs`` against the constructor chain.

    Args:
        spec: a tokenizer entry of any suite schema.
        where: its key path for messages (``tokenizers[grid3d_tiny]``).
        source: the suite file, for messages.
        missing_ok: return ``None`` for a name that does not resolve instead of raising.

    Raises:
        SuiteError: the name does not resolve (unless ``missing_ok``), or a kwarg that the constructor does not
            accept (and no ``**kwargs`` stays open).
    """
    from harness_core.registry import TOKENIZERS

    if missing_ok and spec.name not in TOKENIZERS:
        return None
    try:
        cls = TOKENIZERS.get(spec.name)
    except (KeyError, ImportError, AttributeError) as err:
        raise SuiteError(f"{source}: {where}.name: {err}") from err
    accepted, open_kwargs = constructor_parameters(cls)
    unknown = sorted(set(spec.kwargs) - accepted)
    if unknown and not open_kwargs:
        raise SuiteError(f"{source}: {where}.kwargs: unknown argument(s) {unknown} for {spec.name}; accepted: {sorted(accepted)}")
    return cls


def fill_geometry(cls: type, kwargs: dict[str, Any], geometry: dict[str, tuple[int, str]], where: str = "kwargs",
                  source: str | None = None) -> dict[str, Any]:
    """``kwargs`` plus ``frames`` / ``resolution`` where ``cls``'s constructor names them and ``kwargs`` does not.

    Args:
        cls: the tokenizer class.
        kwargs: the constructor kwargs a suite gave.
        geometry: ``{"frames": (value, origin), "resolution": (value, origin)}``; ``origin`` names where the
            value comes from in messages (``data.frames``).
        where: the kwargs' key path for messages (``tokenizers[coordtok_tiny].kwargs``).
        source: the suite file, prefixed to messages when given.

    Raises:
        SuiteError: a kwarg sets ``frames`` / ``resolution`` to a value other than the geometry's.
    """
    accepted, _ = constructor_parameters(cls)
    resolved = dict(kwargs)
    for key, (value, origin) in geometry.items():
        if key not in GEOMETRY_PARAMETERS or key not in accepted:
            continue
        if key not in resolved:
            resolved[key] = value
        elif resolved[key] != value:
            prefix = f"{source}: " if source else ""
            raise SuiteError(f"{prefix}{where}.{key}: {resolved[key]!r} differs from {origin} {value!r}; the engine passes "
                             f"{origin} to the tokenizer, drop the key (or change {origin})")
    return resolved


def tokenizer_kwargs(suite: Suite, entry: TokenizerEntry, cls: type | None = None, source: str | None = None) -> dict[str, Any]:
    """The constructor kwargs of ``entry``: its ``kwargs`` plus ``frames`` / ``resolution`` from ``suite.data``
    when the constructor takes them and the entry does not set them (``"run:<id>"`` values are left as they are).

    Args:
        suite: the suite (its ``data.frames`` and ``data.resolution``).
        entry: one of its tokenizers.
        cls: the tokenizer class, when already resolved.
        source: the suite file, prefixed to messages when given.

    Raises:
        SuiteError: an entry kwarg ``frames`` / ``resolution`` differs from ``data.frames`` / ``data.resolution``.
        KeyError, ImportError, AttributeError: ``entry.name`` does not resolve (:func:`validate_names` reports
            this as a :class:`SuiteError` at load).
    """
    if cls is None:
        from harness_core.registry import TOKENIZERS

        cls = TOKENIZERS.get(entry.name)
    geometry = {"frames": (suite.data.frames, "data.frames"), "resolution": (suite.data.resolution, "data.resolution")}
    return fill_geometry(cls, entry.kwargs, geometry, f"tokenizers[{entry.id}].kwargs", source)


def validate_names(suite: Suite, source: str, check_data: bool = True) -> None:
    """Check that every tokenizer, kwarg, metric and dataset named by ``suite`` exists and fits together.

    Raises:
        SuiteError: an unknown tokenizer name, constructor kwarg, metric or dataset; a ``frames`` /
            ``resolution`` kwarg that differs from ``data``; a ``"run:<id>"`` kwarg that does not name an
            earlier tokenizer; ``budgets`` on a tokenizer that is not flexible; an invalid merged ``train`` or
            ``generation`` of an entry; ``stage0_cache_clips`` that cannot be used; a missing data folder.
    """
    from harness_core.registry import DATASETS, METRICS

    ids = [t.id for t in suite.tokenizers]
    for entry in suite.tokenizers:
        where = f"tokenizers[{entry.id}]"
        cls = check_tokenizer(entry, where, source)
        tokenizer_kwargs(suite, entry, cls, source)
        for dep in referenced_runs(entry):
            if dep not in ids or ids.index(dep) >= ids.index(entry.id):
                raise SuiteError(f"{source}: {where}.kwargs references run:{dep}, which must be a tokenizer listed before it")
        if entry.budgets and not getattr(cls, "flexible", False):
            raise SuiteError(f"{source}: {where}.budgets: {entry.name} is not a flexible tokenizer")
        try:
            train = suite.train_config(entry)
        except ValidationError as err:
            raise SuiteError(f"{source}: {where}.train: {_error_text(err)}") from err
        problem = stage0_cache_problem(train, cls, entry.name)
        if problem:
            raise SuiteError(f"{source}: {where}.train.stage0_cache_clips: {problem}")
        try:
            generation_config(suite, entry)
        except ValidationError as err:
            raise SuiteError(f"{source}: {where}.generation: {_error_text(err)}") from err
    for name in suite.evaluate.metrics:
        if name not in METRICS:
            raise SuiteError(f"{source}: evaluate.metrics: unknown metric {name!r}; registered: {', '.join(METRICS.names())}")
    from harness.stages.base import stage_config_problem

    for reference, settings in suite.stages.items():
        problem = stage_config_problem(reference, settings)
        if problem:
            raise SuiteError(f"{source}: stages.{reference}: {problem}")
    if suite.data.dataset not in DATASETS:
        raise SuiteError(f"{source}: data.dataset: unknown dataset {suite.data.dataset!r}; registered: {', '.join(DATASETS.names())}")
    if check_data:
        DATASETS.get(suite.data.dataset).check_root(suite.data, source)
