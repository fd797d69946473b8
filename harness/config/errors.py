"""Suite errors: :class:`SuiteError` and the one-line form of a failed pydantic validation.

A suite error is one line that names the file and the key path (list items by
their ``id``: ``tokenizers[coordtok_tiny].train.stepz``); an unknown key's
message also lists the allowed keys at its level, and names the new key when
the old one was renamed (:data:`RENAMED_KEYS`). Imports nothing of the
harness but the core's error base (:class:`harness_core.errors.HarnessError`).
"""
from __future__ import annotations

import inspect
import types
from typing import Annotated, Any, Union, get_args, get_origin

from pydantic import BaseModel, ValidationError

from harness_core.errors import HarnessError


class SuiteError(HarnessError, ValueError):
    """An invalid suite; the message names the file and the offending key (exit code 2 on the command line)."""


#: Suite keys renamed (issue 25, "names that say one thing"): ``(block, old key) -> new key``, where the block is
#: the key's parent (``generation`` also inside ``tokenizers[id]``; ``kwargs``: tokenizer constructor kwargs). A
#: suite that still spells the old key fails with one line naming the new one (:func:`renamed_hint`).
RENAMED_KEYS = {
    ("generation", "num_tokens"): "budget",
    ("evaluate", "clip_batch"): "chunk_batch",
    ("kwargs", "clip_frames"): "chunk_frames",
}


def renamed_hint(block: str, key: str, where: str) -> str:
    """`` (renamed to '<where>.<new>')`` when ``key`` of ``block`` was renamed (:data:`RENAMED_KEYS`), else ``""``;
    ``where`` is the key path of the block as the message spells it."""
    new = RENAMED_KEYS.get((block, key))
    return f" (renamed to '{where}.{new}')" if new else ""


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
    """The model class at a pydantic error location (``("tokenizers", 0, "train")`` -> ``TrainOverrides``)."""
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
    full key path, its new name when it was renamed, and the allowed keys at its level), otherwise the first
    invalid value."""
    errors = err.errors()
    unknown = [e for e in errors if e["type"] == "extra_forbidden"]
    if unknown:
        loc = unknown[0]["loc"]
        where = key_path(raw, loc[:-1])
        owner = model_at(model, loc[:-1])
        allowed = ", ".join(owner.model_fields) if owner is not None else "?"
        block = next((part for part in reversed(loc[:-1]) if isinstance(part, str)), "")
        hint = renamed_hint(block, loc[-1], where)
        return SuiteError(f"{source}: unknown key '{key_path(raw, loc)}'{hint}; "
                          f"allowed keys{' under ' + where if where else ''}: {allowed}")
    first = errors[0]
    return SuiteError(f"{source}: invalid value at '{key_path(raw, first['loc']) or '<top>'}': {first['msg']}")


def first_error_text(err: ValidationError) -> str:
    """The first error of ``err`` as ``dotted.location: message`` (a merged configuration, no suite file at hand)."""
    first = err.errors()[0]
    where = ".".join(str(p) for p in first["loc"])
    return f"{where}: {first['msg']}" if where else first["msg"]
