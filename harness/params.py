"""Parameter counts of a suite's tokenizers, built on the meta device (``python -m harness list --params``).

Every tokenizer entry of the suite (by default the paper suite, ``suites/ucf101_128f.yaml``) is built with the
kwargs the runner would use (:func:`harness.stages.context.build_tokenizer`, data geometry filled in) under
``torch.device("meta")``: shapes only, no memory, no weights. ``run:<id>`` references (VideoFlexTok's stage-0 VAE)
are built the same way and their parameters are not counted again. The count excludes the adversarial
``discriminator`` sub-module, which only training uses and which papers do not count; it is its own column.

Published counts come from the family class (``VideoTokenizer.published_parameters``, keyed by the entry's
``size`` kwarg, each with its source), so a reader sees the measured and the published number side by side.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from harness_core.api import VideoTokenizer

#: the suite whose configurations ``list --params`` counts by default: the paper protocol
PAPER_SUITE = Path(__file__).resolve().parents[1] / "suites" / "ucf101_128f.yaml"


@dataclass(frozen=True)
class ParameterCount:
    """One row: the entry id, its registered family, trainable-at-use parameters, discriminator parameters, and the
    published count with its source (``None`` / ``""`` when the paper gives none)."""

    entry: str
    tokenizer: str
    parameters: int
    discriminator: int
    published: float | None
    source: str


def count_parameters(module: nn.Module | None, exclude: tuple[nn.Module, ...] = ()) -> int:
    """Number of parameters of ``module`` (0 for ``None``), not counting those of the ``exclude`` modules."""
    if module is None:
        return 0
    skip = {id(p) for m in exclude for p in m.parameters()}
    return sum(p.numel() for p in module.parameters() if id(p) not in skip)


def suite_parameter_counts(suite_path: str | Path = PAPER_SUITE) -> list[ParameterCount]:
    """:class:`ParameterCount` of every tokenizer entry of the suite at ``suite_path``, in suite order.

    Pretrained entries (diffusers VAEs) are built on the meta device too; their weights are never loaded.

    Raises:
        SuiteError: the suite file is missing or invalid (from :func:`harness.config.load_suite`).
    """
    from harness.config import load_suite
    from harness.stages.context import build_tokenizer

    suite = load_suite(suite_path, check_data=False)
    models: dict[str, VideoTokenizer] = {}
    rows = []
    for entry in suite.tokenizers:
        with torch.device("meta"):
            model = build_tokenizer(suite, entry, models)
        models[entry.id] = model
        discriminator = getattr(model, "discriminator", None)
        referenced = tuple(m for key, m in models.items() if key != entry.id and _holds(model, m))
        published, source = _published(model, entry.kwargs.get("size"))
        rows.append(ParameterCount(entry.id, entry.name, count_parameters(model, referenced + _as_tuple(discriminator)),
                                   count_parameters(discriminator), published, source))
    return rows


def _holds(model: nn.Module, other: nn.Module) -> bool:
    return any(m is other for m in model.modules())


def _as_tuple(module: nn.Module | None) -> tuple[nn.Module, ...]:
    return (module,) if isinstance(module, nn.Module) else ()


def _published(model: VideoTokenizer, size: object) -> tuple[float | None, str]:
    published = getattr(type(model), "published_parameters", {}) or {}
    if isinstance(size, str) and size in published:
        count, source = published[size]
        return float(count), source
    return None, ""
