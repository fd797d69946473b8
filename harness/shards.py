"""Sharding a stage over the processes of a run: reconstruction, evaluation, gFVD sampling (issue 15, item 4).

A stage's work is a list of fixed units (evaluation batches, sample batches,
real-clip batches), each seeded by its index, never by the process that
handles it. :func:`my_share` gives every process a contiguous, disjoint run
of unit indices (Accelerate's ``PartialState.split_between_processes``: the
first ``count % world`` processes take one more), so the set of clips and
samples is the same for any number of processes, and values gathered in rank
order (:func:`gather_lists`) come back in the one-process order. In a single
process both are identities.

Under ``torchrun --nproc_per_node=N`` (or ``accelerate launch``) the runner
calls these from every rank; all of them must reach each gather (they are
collective operations).
"""
from __future__ import annotations

import logging
from typing import Any

from accelerate import PartialState
from accelerate.utils import gather_object

log = logging.getLogger("harness.shards")


def world_size() -> int:
    """Processes of the run (1 without ``torchrun``)."""
    return PartialState().num_processes


def is_local_main() -> bool:
    """Whether this process is its node's main process (local rank 0; the one process of a single-process run):
    the one that writes node-local files (the clip store, cached real FVD statistics)."""
    return PartialState().is_local_main_process


def my_share(count: int, what: str) -> list[int]:
    """This process's unit indices out of ``range(count)``: a contiguous, disjoint share (empty when ``count`` is
    smaller than the number of processes and this rank comes last). Logs which rank handles how many ``what``."""
    state = PartialState()
    with state.split_between_processes(list(range(count))) as mine:
        share = list(mine)
    if state.num_processes > 1:
        log.info("rank %d of %d: %d of %d %s", state.process_index, state.num_processes, len(share), count, what)
    return share


def gather_lists(items: list[Any]) -> list[Any]:
    """Every process's ``items`` (picklable) concatenated in rank order, on every process; ``items`` itself in
    a single process."""
    return gather_object(items) if world_size() > 1 else list(items)


def shard_record(names: list[str]) -> dict[str, Any]:
    """``{"world_size": N, "ranks": [{"rank": r, "items": [...]}, ...]}``: which process handled which of the
    named units (clip ids, sample indices), gathered from every rank and recorded with the stage's result."""
    rank = PartialState().process_index
    ranks = gather_lists([{"rank": rank, "items": list(names)}])
    return {"world_size": len(ranks), "ranks": ranks}
