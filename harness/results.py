"""Checks and fingerprints of result values, shared by every stage that writes numbers (issue 9 items 3-4).

A value that is NaN or infinite never reaches a results file, a leaderboard
or a report: :func:`check_finite` stops the stage with
:class:`harness_core.errors.NonFiniteError` first. :func:`values_sha256` is the
hash of a result's numbers that the leaderboard's protocol section shows, so
two runs can be compared at a glance.
"""
from __future__ import annotations

import hashlib
import json
import math
import subprocess
from pathlib import Path
from typing import Any

from harness_core.errors import NonFiniteError


def _numbers(values: dict[str, Any]) -> dict[str, int | float]:
    return {k: v for k, v in values.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


def values_sha256(values: dict[str, Any]) -> str:
    """sha256 (hex) of the int and float entries of ``values`` (sorted keys, ``repr`` of each number);
    nested dicts and strings are left out. Equal hashes mean bit-identical numbers."""
    text = json.dumps({k: repr(v) for k, v in sorted(_numbers(values).items())}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()


def check_finite(values: dict[str, Any], where: str) -> None:
    """Raise :class:`NonFiniteError` naming ``where`` and the keys whose numbers are NaN or infinite."""
    bad = sorted(k for k, v in _numbers(values).items() if not math.isfinite(v))
    if bad:
        raise NonFiniteError(f"{where}: non-finite value(s) of {', '.join(bad)}; nothing was written for it")


def fingerprint(payload: Any) -> str:
    """The first 16 hex digits of the sha256 of ``payload`` as sorted JSON (non-JSON values as ``str``): what
    configurations and protocols are compared by (``config.json``'s ``train_fingerprint``, evaluation fingerprints)."""
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:16]


def code_version() -> str:
    """``git describe --always --dirty`` of the harness checkout, or ``unknown`` outside a git checkout."""
    try:
        out = subprocess.run(["git", "describe", "--always", "--dirty"], capture_output=True, text=True, timeout=10,
                             cwd=Path(__file__).resolve().parent)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"
