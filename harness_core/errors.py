"""Expected errors, and how the command line reports them (:func:`run_command`).

An expected error is the user's to fix: bad input, a configuration, data,
weights or a results folder. Each subclasses :class:`HarnessError` and names
the culprit (a file, a suite key, a tokenizer and step or clip) and what was
expected; ``python -m harness`` prints it as one ``error:`` line and exits
with :data:`EXPECTED_EXIT` (2), everything already computed staying on disk.
Classes that callers catch as ``ValueError`` (``SuiteError``, ``DataError``,
``CompareError``) inherit from it too. Any other exception (out of memory, a
PyTorch or harness bug) prints its traceback and exits with
:data:`UNEXPECTED_EXIT` (1).

The expected errors outside this module: ``harness.config.errors.SuiteError``,
``harness.data.datasets.DataError``, ``harness.data.decode.VideoDecodeError``,
``harness.compare.CompareError``.
"""
from __future__ import annotations

import sys
import traceback
from typing import Callable

#: exit code of a command that stopped on an expected error (:class:`HarnessError`)
EXPECTED_EXIT = 2
#: exit code of a command that stopped on any other exception (its traceback is printed)
UNEXPECTED_EXIT = 1


class HarnessError(Exception):
    """Base of the expected errors: one ``error:`` line and exit code 2 on the command line, no traceback."""


class NonFiniteError(HarnessError):
    """A loss, latent, reconstruction or metric value is NaN or infinite; the stage stops (issue 9 item 4)."""


class WeightsError(HarnessError):
    """A weights file (I3D, LPIPS, a checkpoint) cannot be read as what it should be, or no weights are available;
    the message names the path (or the setting that names one)."""


class ResultsError(HarnessError):
    """A results folder that cannot serve the command: missing or without results, holding results of another
    configuration, or without a metric the command names; the message names the folder or metric and what to do."""


def run_command(command: Callable[[], int], verbose: bool = False) -> int:
    """Run a command-line action and turn its exceptions into the command's exit code.

    Args:
        command: the action; returns its exit code.
        verbose: also print the traceback of an expected error (after its ``error:`` line).

    Returns:
        ``command()``'s code; :data:`EXPECTED_EXIT` after a :class:`HarnessError` (one ``error:`` line on
        stderr); :data:`UNEXPECTED_EXIT` after any other ``Exception`` (its traceback on stderr).
        ``KeyboardInterrupt`` and ``SystemExit`` pass through.
    """
    try:
        return command()
    except HarnessError as err:
        print(f"error: {err}", file=sys.stderr)
        if verbose:
            traceback.print_exc()
        return EXPECTED_EXIT
    except Exception:  # noqa: BLE001 - not the user's to fix: the whole traceback is the report
        traceback.print_exc()
        return UNEXPECTED_EXIT
