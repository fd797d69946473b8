"""Checks of a suite against the registries and the code it names (run by :func:`harness.config.load.load_suite`).

Tokenizer / metric / dataset names must resolve, tokenizer keyword arguments
must exist in the tokenizer's constructor chain, the generator size must
exist, a ``data`` key that only some datasets read must not be set for
another dataset, and a missing data folder stops the run with a message that
says what to download. Each problem is one :class:`~harness.config.errors.SuiteError`
line naming the file and the key.

The engine passes the data geometry to tokenizers whose constructor takes
``frames`` / ``resolution`` (:func:`tokenizer_kwargs`), so suites do not
repeat it.

Importing this module does not import torch; the checks do (the registries,
the generator sizes), on first call.
"""
from __future__ import annotations

import inspect
from typing import Any

from pydantic import ValidationError

from harness.config.errors import SuiteError, first_error_text, renamed_hint
from harness.config.schema import (DataConfig, GenerationConfig, Suite, TokenizerEntry, TokenizerSpec, TrainConfig,
                                   dataset_specific_keys, generation_config)

#: constructor parameters the engine fills from the data geometry (and no others)
GEOMETRY_PARAMETERS = ("frames", "resolution")


def referenced_runs(entry: TokenizerEntry) -> list[str]:
    """Run ids named as ``"run:<id>"`` in an entry's kwargs (e.g. VideoFlexTok's stage-0 VAE)."""
    return [v[4:] for v in entry.kwargs.values() if isinstance(v, str) and v.startswith("run:")]


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


def generation_model_problem(cfg: GenerationConfig) -> str | None:
    """Why ``cfg.model`` names no generator size, or ``None`` when it does (SiT and the autoregressive transformer
    share :data:`harness.generation.sit.SIT_SIZES`)."""
    from harness.generation.sit import SIT_SIZES

    if cfg.model not in SIT_SIZES:
        return f"must be one of {sorted(SIT_SIZES)}, got {cfg.model!r}"
    return None


def check_dataset_keys(data: DataConfig, source: str) -> None:
    """Reject a dataset-specific ``data`` key (:func:`~harness.config.schema.dataset_specific_keys`) set to a
    non-default value for a dataset that does not read it (not in its ``VideoDataset.data_keys``).

    Raises:
        SuiteError: one line naming the key, its value, the datasets that read it and ``data.dataset``.
        KeyError: ``data.dataset`` is not registered (:func:`validate_names` checks that first).
    """
    from harness_core.registry import DATASETS

    reads = getattr(DATASETS.get(data.dataset), "data_keys", frozenset())
    for key in dataset_specific_keys():
        value = getattr(data, key)
        if key in reads or value == DataConfig.model_fields[key].default:
            continue
        readers = [name for name, cls in DATASETS if key in getattr(cls, "data_keys", ())]
        raise SuiteError(f"{source}: data.{key}: {value!r} is read only by dataset{'s' if len(readers) > 1 else ''} "
                         f"{', '.join(readers)}, not by data.dataset {data.dataset!r}; remove the key")


def check_tokenizer(spec: TokenizerSpec, where: str, source: str, missing_ok: bool = False) -> type | None:
    """Resolve ``spec.name`` and check ``spec.kwargs`` against the constructor chain.

    Args:
        spec: a tokenizer entry of any suite schema.
        where: its key path for messages (``tokenizers[grid3d_tiny]``).
        source: the suite file, for messages.
        missing_ok: return ``None`` for a name that does not resolve instead of raising.

    Raises:
        SuiteError: the name does not resolve (unless ``missing_ok``), or a kwarg that the constructor does not
            accept (and no ``**kwargs`` stays open); a renamed kwarg is named with its new name
            (:data:`harness.config.errors.RENAMED_KEYS`).
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
        hints = "".join(renamed_hint("kwargs", key, f"{where}.kwargs") for key in unknown)
        raise SuiteError(f"{source}: {where}.kwargs: unknown argument(s) {unknown} for {spec.name}{hints}; "
                         f"accepted: {sorted(accepted)}")
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


def _check_entry(suite: Suite, entry: TokenizerEntry, source: str) -> None:
    """The checks of one tokenizer entry (see :func:`validate_names`)."""
    where = f"tokenizers[{entry.id}]"
    ids = [t.id for t in suite.tokenizers]
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
        raise SuiteError(f"{source}: {where}.train: {first_error_text(err)}") from err
    problem = stage0_cache_problem(train, cls, entry.name)
    if problem:
        raise SuiteError(f"{source}: {where}.train.stage0_cache_clips: {problem}")
    try:
        generation = generation_config(suite, entry)
    except ValidationError as err:
        raise SuiteError(f"{source}: {where}.generation: {first_error_text(err)}") from err
    if generation is not None and generation.enabled and not getattr(cls, "generative", True):
        raise SuiteError(f"{source}: {where}.generation: {entry.name} cannot be generated from (its tokens are not "
                         f"a generator's input); set generation: {{enabled: false}} on the entry")
    problem = generation_model_problem(generation) if generation is not None else None
    if problem:
        own = entry.generation is not None and "model" in entry.generation.model_fields_set
        raise SuiteError(f"{source}: {where + '.' if own else ''}generation.model: {problem}")


def validate_names(suite: Suite, source: str, check_data: bool = True) -> None:
    """Check that every tokenizer, kwarg, metric and dataset named by ``suite`` exists and fits together.

    Raises:
        SuiteError: an unknown tokenizer name, constructor kwarg, metric or dataset; a ``frames`` /
            ``resolution`` kwarg that differs from ``data``; a ``"run:<id>"`` kwarg that does not name an
            earlier tokenizer; ``budgets`` on a tokenizer that is not flexible; an invalid merged ``train`` or
            ``generation`` of an entry or an unknown ``generation.model``; ``stage0_cache_clips`` that cannot be
            used; a dataset-specific ``data`` key set for a dataset that does not read it; a missing data folder.
    """
    from harness_core.registry import DATASETS, METRICS

    if suite.generation is not None:
        problem = generation_model_problem(suite.generation)
        if problem:
            raise SuiteError(f"{source}: generation.model: {problem}")
    for entry in suite.tokenizers:
        _check_entry(suite, entry, source)
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
    check_dataset_keys(suite.data, source)
    if check_data:
        DATASETS.get(suite.data.dataset).check_root(suite.data, source)
