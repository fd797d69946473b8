"""Reading a suite file: YAML, ``--set`` overrides, validation against a schema, ``--only`` selection.

Every kind of suite file (``python -m harness run`` suites, the cost-vs-length
suites of :mod:`harness.profile`) is read by one path, :func:`read_suite`:
YAML, ``--set key=value`` overrides (lists of tokenizers are addressed by
``id``: ``tokenizers.grid3d.kwargs.size=tiny``), then the pydantic model,
which forbids unknown keys at every level; its errors become one
:class:`~harness.config.errors.SuiteError` line. :func:`load_suite` adds the
checks against the registries (:mod:`harness.config.validate`) and resolves
each tokenizer's constructor kwargs.
"""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from harness.config.errors import SuiteError, suite_error
from harness.config.schema import Suite
from harness.config.validate import referenced_runs, tokenizer_kwargs, validate_names

M = TypeVar("M", bound=BaseModel)


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


def read_suite(path: str | Path, model: type[M], overrides: list[str] = ()) -> M:
    """Read a suite file of any schema: YAML, ``--set`` overrides, then validation against ``model``.

    Args:
        path: the YAML file.
        model: the schema (:class:`~harness.config.schema.Suite`, :class:`harness.profile.ProfileSuite`).
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
        the suite, each entry's ``kwargs`` replaced by :func:`~harness.config.validate.tokenizer_kwargs` (data
        geometry filled in).

    Raises:
        SuiteError: anything wrong, with the file and key in the message (:func:`read_suite`,
            :func:`~harness.config.validate.validate_names`).
    """
    path = Path(path)
    suite = read_suite(path, Suite, overrides)
    if only:
        suite = select_tokenizers(suite, only, str(path))
    validate_names(suite, str(path), check_data)
    return suite.model_copy(update={"tokenizers": [
        entry.model_copy(update={"kwargs": tokenizer_kwargs(suite, entry)}) for entry in suite.tokenizers]})


def select_tokenizers(suite: Suite, only: list[str], source: str) -> Suite:
    """``suite`` with the tokenizers ``only`` names (``--only``), in that order, each after the runs it references.

    Raises:
        SuiteError: an id that is not a tokenizer of the suite.
    """
    by_id = {t.id: t for t in suite.tokenizers}
    unknown = [i for i in only if i not in by_id]
    if unknown:
        raise SuiteError(f"{source}: --only names unknown tokenizer ids {unknown}; ids: {list(by_id)}")
    keep: list[str] = []
    for ident in only:
        for dep in referenced_runs(by_id[ident]) + [ident]:
            if dep not in keep:
                keep.append(dep)
    return suite.model_copy(update={"tokenizers": [by_id[i] for i in keep if i in by_id]})
