"""Peak memory per stage (harness/memory.py): a measure inside another (the run context measures each stage, the
training, reconstruction and generator-training code measure their part inside it) leaves the outer figure whole."""
from __future__ import annotations

import numpy as np
import pytest

from harness.memory import MIB, StageMemory


def resident_buffer(mib: int) -> np.ndarray:
    """``mib`` MiB of float64 ones, every page written (so resident)."""
    return np.ones(mib * MIB // 8)


def test_an_outer_measure_keeps_the_peak_reached_before_a_nested_one_started():
    with StageMemory("cpu") as outer:
        if not outer.kind.startswith("resident memory added"):
            pytest.skip(f"no per-stage resident high-water mark here ({outer.kind})")
        buffer = resident_buffer(300)
        del buffer  # a large array is its own mapping: freeing it gives the pages back
        with StageMemory("cpu") as inner:
            small = resident_buffer(20)
            del small
    assert inner.peak_mb < 150, inner.peak_mb  # the nested measure sees its own 20 MiB, not the earlier 300
    assert outer.peak_mb >= 280, outer.peak_mb  # the outer one still has the 300 MiB peak from before the nested start


def test_a_measure_after_a_nested_one_reports_its_own_peak_only():
    with StageMemory("cpu") as first:
        with StageMemory("cpu"):
            buffer = resident_buffer(200)
            del buffer
    with StageMemory("cpu") as second:
        small = resident_buffer(20)
        del small
    if not second.kind.startswith("resident memory added"):
        pytest.skip(f"no per-stage resident high-water mark here ({second.kind})")
    assert first.peak_mb >= 180 and second.peak_mb < 150, (first.peak_mb, second.peak_mb)
