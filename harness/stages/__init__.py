"""Stages of a suite run as parts: one module per stage, one ordered list the driver loops over.

A stage is a class with

* ``name``: its key in ``stage_times.csv``, logs and the environment card;
* ``scope``: ``"tokenizer"`` (once per tokenizer entry: train, generate),
  ``"variant"`` (once per evaluated row, i.e. per token budget: reconstruct,
  evaluate) or ``"suite"`` (once at the end, on the main process: report);
* ``order``: its place in the run (train 10, reconstruct 20, evaluate 30,
  generate 40, report 90; a plugin stage defaults to 50, after generation and
  before the reports);
* ``backend(ctx, work)``: the :class:`harness.stages.context.Backend` flags
  (TF32, cuDNN benchmark, threads) the context sets for it and restores after;
* ``outputs(ctx, work)``: the files it writes; ``done(ctx, work)``: whether they
  exist and are current (the stage is then skipped); ``run(ctx, work)``;
  ``begin(ctx, work)``: called for each entry before its stages, done or not.

:class:`Work` names what a stage works on (a tokenizer entry and, for variant
stages, one evaluated row). Built-in stages register in :data:`STAGES`
(``harness.registry``) from ``harness.stages.{train,reconstruct,evaluate,
generate,report}``; a plugin stage is a class named in the suite's ``stages``
block by entry point (group ``harness.stages``) or ``module:Class``, with its
own settings under that name (validated by its ``Config``, a pydantic model,
when it has one). Adding a stage is one module plus its config block; the
driver (:mod:`harness.runner`) and the stage-time table need no edit.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from harness.records import RunFolder

if TYPE_CHECKING:
    from harness.config import TokenizerEntry
    from harness.stages.context import Backend, RunContext

Scope = Literal["tokenizer", "variant", "suite"]


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

    def backend(self, ctx: "RunContext", work: Work) -> "Backend":
        """Backend flags for this run of the stage (default: deterministic suite defaults, no TF32)."""
        from harness.stages.context import Backend

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
    from harness.registry import STAGES

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

    from harness.registry import STAGES

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


from harness.stages import evaluate, generate, reconstruct, report, train  # noqa: E402,F401  (register the built-ins)
