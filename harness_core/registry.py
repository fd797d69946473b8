"""Registries in the spirit of timm: ``register`` a class by name, ``create`` it by name.

Named configurations of the registered models (``coordtok_L_1280``, ``sit_XL_2``) live in
:data:`PRESETS`, the way timm registers ``vit_base_patch16_224``: a preset is a family (a
registered tokenizer or generator) plus keyword arguments, registered next to the family's size
table with :func:`register_preset` and built with :func:`create_preset`.

Three ways to name something:

* a built-in, registered with the decorator (``@TOKENIZERS.register("grid3d")``);
* an installed plugin, advertised in a Python entry-point group
  (``harness.tokenizers``, ``harness.metrics``, ``harness.datasets``,
  ``harness.generators``, ``harness.stages``) and loaded on first lookup;
* ``"package.module:ClassName"`` in a suite, imported directly.
"""
from __future__ import annotations

import importlib
import importlib.metadata
import threading
from dataclasses import dataclass, fields, replace
from typing import Any, Callable, Iterator, Mapping

# Modules whose import registers the built-ins of each registry.
_BUILTIN_MODULES = {
    "tokenizers": ("video_tokenizers",),
    "metrics": ("metrics",),
    "datasets": ("harness.data.datasets",),
    "generators": ("harness.generation",),
    "stages": ("harness.stages",),
    "presets": ("video_tokenizers", "harness.generation"),
}


class Registry:
    """A name -> class map with plugin discovery.

    Raises:
        ValueError: when a name is registered twice for different objects.
        KeyError: from :meth:`get` when a name is unknown; the message lists
            the known names.
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.group = f"harness.{kind}"
        self._items: dict[str, Any] = {}
        self._lock = threading.Lock()
        self._loaded_builtins = False
        self._loaded_entry_points = False

    def register(self, name: str) -> Callable[[Any], Any]:
        """Class decorator that registers ``obj`` under ``name``."""

        def decorator(obj: Any) -> Any:
            with self._lock:
                existing = self._items.get(name)
                if existing is not None and existing is not obj:
                    raise ValueError(f"{self.kind} {name!r} is already registered as {existing!r}")
                self._items[name] = obj
            obj.registry_name = name
            return obj

        return decorator

    def _load_builtins(self) -> None:
        if self._loaded_builtins:
            return
        self._loaded_builtins = True
        for module in _BUILTIN_MODULES.get(self.kind, ()):
            importlib.import_module(module)

    def _load_entry_points(self) -> None:
        if self._loaded_entry_points:
            return
        self._loaded_entry_points = True
        for ep in importlib.metadata.entry_points(group=self.group):
            if ep.name not in self._items:
                self._items[ep.name] = ep.load()

    def get(self, name: str) -> Any:
        """The registered object for ``name`` or for a ``module:Class`` path."""
        if ":" in name:
            return _import_path(name)
        self._load_builtins()
        if name not in self._items:
            self._load_entry_points()
        if name not in self._items:
            raise KeyError(f"unknown {self.kind[:-1]} {name!r}; registered: {', '.join(self.names())}")
        return self._items[name]

    def create(self, name: str, **kwargs: Any) -> Any:
        """Instantiate the object registered as ``name`` with ``kwargs``."""
        return self.get(name)(**kwargs)

    def names(self) -> list[str]:
        self._load_builtins()
        self._load_entry_points()
        return sorted(self._items)

    def __contains__(self, name: str) -> bool:
        try:
            self.get(name)
        except (KeyError, ImportError, AttributeError):
            return False
        return True

    def __iter__(self) -> Iterator[tuple[str, Any]]:
        for name in self.names():
            yield name, self._items[name]


def _import_path(path: str) -> Any:
    module_name, _, attr = path.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise ImportError(f"cannot import module {module_name!r} of {path!r}: {err}") from err
    obj: Any = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise AttributeError(f"module {module_name!r} has no attribute {attr!r} (from {path!r})")
        obj = getattr(obj, part)
    return obj


TOKENIZERS = Registry("tokenizers")
METRICS = Registry("metrics")
DATASETS = Registry("datasets")
GENERATORS = Registry("generators")
#: stages of a suite run (:mod:`harness.stages`); plugins by entry point group ``harness.stages`` or ``module:Class``
STAGES = Registry("stages")

register_tokenizer = TOKENIZERS.register
register_metric = METRICS.register
register_dataset = DATASETS.register
register_generator = GENERATORS.register
register_stage = STAGES.register


def create_tokenizer(name: str, **kwargs: Any):
    """Build a tokenizer by registered name or ``module:Class``."""
    return TOKENIZERS.create(name, **kwargs)


# ----------------------------------------------------------------------------- sizes and presets


class SizeConfig(Mapping[str, Any]):
    """The keyword arguments of one named size of a model family, immutable.

    Every family's size table (``COORDTOK_SIZES``, ``SIT_SIZES``, ...) maps a
    size name to one of these; it reads as a mapping (``Model(**config)``,
    ``config["width"]``) and by attribute (``config.width``).
    """

    __slots__ = ("_kwargs",)

    def __init__(self, **kwargs: Any) -> None:
        object.__setattr__(self, "_kwargs", dict(kwargs))

    def __getitem__(self, key: str) -> Any:
        return self._kwargs[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._kwargs)

    def __len__(self) -> int:
        return len(self._kwargs)

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        try:
            return self._kwargs[name]
        except KeyError:
            raise AttributeError(f"size config has no {name!r}; it has {', '.join(self._kwargs)}") from None

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError("a SizeConfig is immutable")

    def __reduce__(self) -> tuple[Any, ...]:
        return _size_config, (self._kwargs,)

    def __repr__(self) -> str:
        return f"SizeConfig({self.summary()})"

    def summary(self) -> str:
        """``key=value`` pairs, comma-separated (the ``settings`` column of ``python -m harness list``)."""
        return ", ".join(f"{k}={v}" for k, v in self._kwargs.items())


def _size_config(kwargs: dict[str, Any]) -> SizeConfig:
    return SizeConfig(**kwargs)


@dataclass(frozen=True)
class Preset:
    """A named configuration of a registered model: ``family`` built with ``kwargs``.

    Args:
        name: the preset name (``coordtok_L_1280``).
        family: the registered name of the tokenizer or generator (``coordtok``).
        kind: ``"tokenizers"`` or ``"generators"``, the registry of ``family``.
        kwargs: constructor keyword arguments (a size name and, e.g., a patch size or token budget).
        summary: key settings for listings (depth, width, ...).
        source: where the configuration comes from (paper table, released config).
    """

    name: str
    family: str
    kind: str
    kwargs: Mapping[str, Any]
    summary: str = ""
    source: str = ""

    def create(self, **extra: Any) -> Any:
        """Build the model; ``extra`` adds arguments the preset cannot fix (SiT's ``example``) or overrides."""
        registry = {"tokenizers": TOKENIZERS, "generators": GENERATORS}[self.kind]
        return registry.create(self.family, **{**self.kwargs, **extra})


class _PresetRegistry(Registry):
    """:class:`Registry` of :class:`Preset` objects (a preset is data: no ``registry_name`` attribute is set)."""

    def register(self, name: str) -> Callable[[Any], Any]:
        def decorator(preset: Preset) -> Preset:
            with self._lock:
                existing = self._items.get(name)
                if existing is not None and existing != preset:
                    raise ValueError(f"preset {name!r} is already registered as {existing!r}")
                self._items[name] = preset
            return preset

        return decorator


PRESETS = _PresetRegistry("presets")


def register_preset(name: str, family: str, kwargs: Mapping[str, Any], kind: str = "tokenizers",
                    summary: str = "", source: str = "") -> Preset:
    """Register ``name`` as ``family`` built with ``kwargs`` (see :class:`Preset`).

    Raises:
        ValueError: unknown ``kind``, or ``name`` already registered differently.
    """
    if kind not in ("tokenizers", "generators"):
        raise ValueError(f"preset kind must be 'tokenizers' or 'generators', got {kind!r}")
    return PRESETS.register(name)(Preset(name, family, kind, dict(kwargs), summary, source))


def register_size_presets(family: str, sizes: Mapping[str, SizeConfig], kind: str = "tokenizers", source: str = "",
                          **kwargs: Any) -> None:
    """Register ``<family>_<size>`` for every size of a family's size table (``kwargs`` are added to each)."""
    for size, config in sizes.items():
        register_preset(f"{family}_{size}", family, {"size": size, **kwargs}, kind, config.summary(), source)


def create_preset(name: str, **extra: Any) -> Any:
    """Build the model of the preset ``name`` (``extra`` as in :meth:`Preset.create`).

    Raises:
        KeyError: unknown preset (the message lists the known ones).
    """
    return PRESETS.get(name).create(**extra)


# ----------------------------------------------------------------------------- metric metadata


@dataclass(frozen=True)
class MetricSpec:
    """What reports need to know about a metric column, read from the metric class (its class attributes).

    ``key`` is the column: the metric's ``name`` (the key of its value in
    ``metrics.json``), or ``"g" + name`` for the same set-level metric measured
    on generated samples (``generation/metrics.json``, ``generation=True``).
    """

    key: str
    name: str
    title: str
    higher_is_better: bool | None
    unit: str
    digits: int
    per_video: bool
    min_comparable_n: int | None
    generation: bool = False

    @property
    def ranked(self) -> bool:
        """Whether the metric has a direction (leaderboards rank by it); analysis features have none."""
        return self.higher_is_better is not None

    @property
    def arrow(self) -> str:
        return {True: "↑", False: "↓"}.get(self.higher_is_better, "")

    @property
    def header(self) -> str:
        """Table header: title and direction arrow (``PSNR ↑``)."""
        return f"{self.title} {self.arrow}".strip()

    @property
    def axis_label(self) -> str:
        """Plot axis label: title, unit and arrow (``PSNR (dB) ↑``)."""
        unit = f" ({self.unit})" if self.unit else ""
        return f"{self.title}{unit} {self.arrow}".strip()

    def comparable(self, n: float | None) -> bool:
        """Whether a set-level value from ``n`` samples is comparable (always, without a threshold)."""
        return self.min_comparable_n is None or n is None or n >= self.min_comparable_n

    def for_generation(self) -> "MetricSpec":
        """The spec of the generation-side column ``g<name>``."""
        return replace(self, key=f"g{self.name}", generation=True, title=self.generation_title)

    generation_title: str = ""
    #: the leaderboard table the column belongs to: ``"quality"`` (the main table) or ``"temporal"``
    table: str = "quality"
    #: how the suite named the metric (registered name, entry point or ``module:Class``)
    reference: str = ""

    def to_dict(self) -> dict[str, Any]:
        """The spec as plain values, as run records store it (``metric_specs``)."""
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "MetricSpec":
        """A spec read back from a record (unknown keys ignored, missing ones at their defaults)."""
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


def metric_spec(reference: str, name: str | None = None) -> MetricSpec:
    """The :class:`MetricSpec` of a metric named by registered name, entry point or ``module:Class``.

    Args:
        reference: how the suite named the metric (``psnr``, ``my_plugin_metric``, ``pkg.mod:Class``).
        name: the metric's value key when the class's ``name`` attribute is not it.

    Raises:
        KeyError, ImportError, AttributeError: the metric cannot be found.
    """
    return spec_of(METRICS.get(reference), reference, name)


def spec_of(metric: Any, reference: str, name: str | None = None) -> MetricSpec:
    """The :class:`MetricSpec` of a metric class or instance (its class attributes; an instance that has scored
    gives the title of what it scored, ``scored_title()``: e.g. ``rFVD 32f`` for whole-clip FVD on 32 frames)."""
    key = name or getattr(metric, "name", None) or reference
    title = getattr(metric, "title", None) or key
    generation_title = getattr(metric, "generation_title", None) or f"g{title}"
    if not isinstance(metric, type) and hasattr(metric, "scored_title"):
        title, generation_title = metric.scored_title(), metric.scored_title(generation=True)
    return MetricSpec(key=key, name=key, title=title, higher_is_better=getattr(metric, "higher_is_better", None),
                      unit=getattr(metric, "unit", "") or "", digits=int(getattr(metric, "digits", 4)),
                      per_video=bool(getattr(metric, "per_video", True)), min_comparable_n=getattr(metric, "min_comparable_n", None),
                      generation_title=generation_title, table=str(getattr(metric, "table", "quality")), reference=reference)
