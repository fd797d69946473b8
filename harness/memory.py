"""Peak memory of one stage of one tokenizer, not inherited from earlier stages (issue 9 item 5).

CoordTok's central claim is a memory cost, so the figure must belong to the
stage it is reported for. :class:`StageMemory` measures the peak *above the
memory in use when the stage began*:

* CUDA: ``torch.cuda.reset_peak_memory_stats`` at the start, then
  ``max_memory_allocated - memory_allocated(at start)``: the tensors the stage
  allocated at its peak (PyTorch's caching allocator, bytes of live tensors).
* CPU (Linux): freed heap memory is first handed back to the system
  (``gc.collect`` and glibc ``malloc_trim(0)``), the kernel's resident-set
  high-water mark is reset (``echo 5 > /proc/self/clear_refs``, Linux >= 4.0,
  proc(5)), and the figure is ``VmHWM - VmRSS(at start)`` from
  ``/proc/self/status``: the resident memory the stage added at its peak.
* Elsewhere the process's lifetime peak resident set (``ru_maxrss``) is the
  only figure, and :attr:`StageMemory.kind` says so.

Measures nest (the run context measures every stage; training, reconstruction and
generator training measure their own part inside it): a measure that starts inside
another first hands the high-water mark so far to the open ones, then resets it, so
the outer figure still covers the whole stage.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import gc
import resource
import sys
from pathlib import Path

import torch

_STATUS, _CLEAR_REFS = Path("/proc/self/status"), Path("/proc/self/clear_refs")
MIB = 2**20
#: the measures open in this process, outermost first
_OPEN: list["StageMemory"] = []


def _status_mib(field: str) -> float:
    for line in _STATUS.read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024  # kB
    raise KeyError(field)


def _trim_heap() -> None:
    gc.collect()
    name = ctypes.util.find_library("c")
    if name:
        libc = ctypes.CDLL(name)
        if hasattr(libc, "malloc_trim"):
            libc.malloc_trim(0)


def _reset_high_water_mark() -> bool:
    try:
        _CLEAR_REFS.write_text("5")
        return True
    except OSError:
        return False


class StageMemory:
    """Context manager: ``with StageMemory(device) as memory: ...; memory.peak_mb``.

    Attributes (after the block):
        peak_mb: peak memory the stage added above its start, MiB (float >= 0).
        start_mb: memory in use at the start (CUDA allocated / CPU resident), MiB.
        kind: what the figure measures, for the leaderboard.
    """

    def __init__(self, device: torch.device) -> None:
        self.device = torch.device(device)
        self.peak_mb = 0.0
        self.start_mb = 0.0
        self.kind = ""
        self._per_stage = False
        self._carried_mb = 0.0  # the high-water mark handed over before a nested measure reset it

    def __enter__(self) -> "StageMemory":
        for outer in _OPEN:
            if outer.device == self.device:
                outer._carried_mb = max(outer._carried_mb, outer._high_water_mb())
        _OPEN.append(self)
        if self.device.type == "cuda":
            gc.collect()
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.start_mb = torch.cuda.memory_allocated(self.device) / MIB
            self.kind = "CUDA tensors allocated at the stage's peak, above those allocated at its start"
        elif _STATUS.is_file():
            _trim_heap()
            self._per_stage = _reset_high_water_mark()
            self.start_mb = _status_mib("VmRSS")
            self.kind = ("resident memory added at the stage's peak (Linux VmHWM reset at the stage start, minus VmRSS then)"
                         if self._per_stage else "process peak resident set since start (not per stage)")
        else:
            self.kind = "process peak resident set since start (not per stage)"
        return self

    def __exit__(self, *exc) -> None:
        self.peak_mb = self.current_peak_mb()
        _OPEN.remove(self)

    def current_peak_mb(self) -> float:
        """The peak so far (also usable inside the block)."""
        if self.device.type == "cuda" or self._per_stage:
            return max(0.0, max(self._carried_mb, self._high_water_mb()) - self.start_mb)
        return self._high_water_mb()

    def _high_water_mb(self) -> float:
        """The high-water mark now, MiB: CUDA peak allocated, Linux VmHWM, else the lifetime ``ru_maxrss``."""
        if self.device.type == "cuda":
            return torch.cuda.max_memory_allocated(self.device) / MIB
        if self._per_stage:
            return _status_mib("VmHWM")
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return rss / (MIB if sys.platform == "darwin" else 1024)
