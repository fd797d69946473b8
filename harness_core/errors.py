"""Errors that end a run with one ``error:`` line and exit code 2 (``python -m harness``), never a traceback.

Each names the culprit (a file, a suite key, a tokenizer and step or clip) and
what was expected; everything already computed stays on disk.
"""
from __future__ import annotations


class HarnessError(RuntimeError):
    """Base of the harness's user-facing errors (caught by the command line)."""


class NonFiniteError(HarnessError):
    """A loss, latent, reconstruction or metric value is NaN or infinite; the stage stops (issue 9 item 4)."""


class WeightsError(HarnessError):
    """A weights file (I3D, LPIPS, a checkpoint) cannot be read as what it should be; the message names the path."""
