"""The parts of a stage: :class:`Stage`, :class:`Work`, :class:`Variant`, :class:`Backend`, and the ordered
list of a run's stages (:func:`suite_stages`). See :mod:`harness.stages`."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from harness.records import RunFolder

if TYPE_CHECKING:  # annotations only (the import-cycle test ignores type-only imports)
    from harness.config import TokenizerEntry
    from harness.stages.context import RunContext

Scope = Literal["tokenizer", "variant", "suite"]


@dataclass(frozen=True)
class Backend:
    """Backend flags of one stage; ``None`` leaves a flag as the suite set it.

    Attributes:
        tf32: TF32 for CUDA matmuls and cuDNN convolutions (``torch.backends.cuda.matmul.allow_tf32``,
            ``torch.backends.cudnn.allow_tf32``); ``None`` keeps PyTorch's defaults (matmuls off, cuDNN on). The
            flags only act on CUDA kernels: CPU results are the same either way.
        cudnn_benchmark: cuDNN autotuning (off under deterministic runs).
        threads: CPU threads (``torch.set_num_threads``).
        mixed_precision: the autocast the stage's training runs with (recorded; Accelerate applies it).
    """

    tf32: bool | None = None
    cudnn_benchmark: bool | None = None
    threads: int | None = None
    mixed_precision: str | None = None


@dataclass(frozen=True)
class Variant:
    """One evaluated configuration of a tokenizer: its files and a token budget (or ``None``)."""

    files: RunFolder
    budget: int | None

    @property
    def folder(self) -> Path:
        return self.files.path

    @property
    def label_suffix(self) -> str:
        return "" if self.budget is None else f"@{self.budget}"


@dataclass(frozen=True)
class Work:
    """What one run of a stage is about: a tokenizer entry and, for variant stages, the row (``None`` for suite
    stages)."""

    entry: "TokenizerEntry | None" = None
    variant: Variant | None = None

    @property
    def label(self) -> str:
        """``<tokenizer id>[@<budget>]`` or ``(suite)``: how logs, errors and the stage-time table name it."""
        if self.entry is None:
            return "(suite)"
        return self.entry.id + (self.variant.label_suffix if self.variant else "")


class Stage:
    """Base class of a stage (see the module docstring); subclasses set the class attributes and ``run``."""

    name: ClassVar[str] = "stage"
    scope: ClassVar[Scope] = "tokenizer"
    order: ClassVar[float] = 50.0
    #: the stage uses the entry's model: the driver loads it before the stage's time and memory are measured
    needs_model: ClassVar[bool] = False

    def __init__(self, config: Any = None) -> None:
        #: the stage's settings from the suite's ``stages`` block (its ``Config`` model, or ``None``)
        self.config = config

    def begin(self, ctx: "RunContext", work: Work) -> None:
        """Called for every entry before any of its stages runs, whether or not this one is done (the train stage
        writes and checks ``config.json`` here)."""

    def backend(self, ctx: "RunContext", work: Work) -> Backend:
        """Backend flags for this run of the stage (default: every flag as the suite set it)."""
        return Backend()

    def outputs(self, ctx: "RunContext", work: Work) -> list[Path]:
        """Files the stage writes for ``work``."""
        return []

    def done(self, ctx: "RunContext", work: Work) -> bool:
        """Whether ``outputs`` exist and are current: the driver then skips the stage."""
        outputs = self.outputs(ctx, work)
        return bool(outputs) and all(path.exists() for path in outputs)

    def run(self, ctx: "RunContext", work: Work) -> None:
        raise NotImplementedError


BUILTIN_STAGES = ("train", "reconstruct", "evaluate", "generate", "report")


def suite_stages(configs: dict[str, Any] | None = None) -> list[Stage]:
    """The stages of a run in order: the built-ins, plus each plugin stage named in the suite's ``stages`` block
    (reference -> settings), built with its settings; sorted by ``order`` (stable).

    Raises:
        KeyError, ImportError: an unknown stage reference (from the registry).
        pydantic.ValidationError: settings that the stage's ``Config`` rejects.
    """
    from harness_core.registry import STAGES

    configs = configs or {}
    classes = [STAGES.get(name) for name in BUILTIN_STAGES] + [STAGES.get(ref) for ref in configs if ref not in BUILTIN_STAGES]
    stages = []
    for cls, ref in zip(classes, [*BUILTIN_STAGES, *(r for r in configs if r not in BUILTIN_STAGES)]):
        settings = configs.get(ref)
        model = getattr(cls, "Config", None)
        stages.append(cls(model.model_validate(settings or {}) if model is not None else settings))
    return sorted(stages, key=lambda stage: stage.order)


def stage_config_problem(reference: str, settings: Any) -> str | None:
    """Why ``stages.<reference>`` cannot be used (unknown stage, not a stage, settings its ``Config`` rejects), or
    ``None``."""
    from pydantic import ValidationError

    from harness_core.registry import STAGES

    try:
        cls = STAGES.get(reference)
    except (KeyError, ImportError, AttributeError) as err:
        return str(err.args[0] if err.args else err)
    if not (isinstance(cls, type) and issubclass(cls, Stage)):
        return f"{reference!r} is not a harness.stages.Stage subclass"
    model = getattr(cls, "Config", None)
    if model is not None:
        try:
            model.model_validate(settings or {})
        except ValidationError as err:
            return "; ".join(f"{'.'.join(map(str, e['loc'])) or '(settings)'}: {e['msg']}" for e in err.errors())
    return None


