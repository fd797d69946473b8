"""Codebook usage of a quantizing tokenizer, accumulated over evaluation tokens.

For the VQ baselines (``grid3d_vq``, ``frame2d_vq``) the runner feeds the
``Tokens.indices`` of every evaluated clip; the summary is

* ``codebook_perplexity``: ``exp(H(p))`` of the empirical code distribution
  ``p`` over all tokens seen (natural log), between 1 (one code used) and
  ``codebook_size`` (uniform use);
* ``codebook_usage``: the fraction of the ``codebook_size`` codes used at least once.

Both are the usual health figures of a VQ tokenizer (e.g. MAGVIT-v2 and
FSQ report codebook usage). Counts are a ``torchmetrics`` state with a sum
reduction, so distributed evaluation equals one process.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from torchmetrics import Metric


class CodebookUsage(Metric):
    """Histogram of code indices; ``compute()`` gives perplexity and fraction of codes used.

    Args:
        codebook_size: number of codes (``tokenizer.codebook_size()``), a positive int.

    ``update(indices, counts=None)``: an integer tensor of any shape (or a dict
    of such tensors, e.g. one per plane), values in ``[0, codebook_size)``;
    ``counts`` (same shape) tallies each index that many times.

    Raises:
        ValueError: non-integer indices or indices out of range (the message gives the range); ``counts`` of
            another shape than ``indices``, or with a dict of indices.
    """

    name = "codebook"
    higher_is_better = True
    full_state_update = False

    def __init__(self, codebook_size: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if not isinstance(codebook_size, int) or codebook_size <= 0:
            raise ValueError(f"codebook_size must be a positive int, got {codebook_size!r}")
        self.codebook_size = codebook_size
        self.add_state("counts", default=torch.zeros(codebook_size, dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, indices: Tensor | dict[str, Tensor], counts: Tensor | None = None) -> None:
        """Add codes; with ``counts`` (same shape as ``indices``), code ``indices[i]`` is added ``counts[i]`` times
        (tallies already aggregated, e.g. the per-batch records of a reconstruction run)."""
        if isinstance(indices, dict):
            if counts is not None:
                raise ValueError("codebook counts go with one tensor of indices, not a dict")
            for value in indices.values():
                self.update(value)
            return
        if not isinstance(indices, Tensor) or indices.is_floating_point() or indices.is_complex():
            kind = indices.dtype if isinstance(indices, Tensor) else type(indices).__name__
            raise ValueError(f"codebook indices must be an integer tensor, got {kind}")
        flat = indices.detach().flatten().long()
        if flat.numel() == 0:
            return
        low, high = int(flat.min()), int(flat.max())
        if low < 0 or high >= self.codebook_size:
            raise ValueError(f"codebook indices must lie in [0, {self.codebook_size}), got [{low}, {high}]")
        if counts is not None and counts.shape != indices.shape:
            raise ValueError(f"codebook counts must have the indices' shape {tuple(indices.shape)}, got {tuple(counts.shape)}")
        weights = None if counts is None else counts.detach().flatten().to(torch.float64)
        self.counts += torch.bincount(flat, weights=weights, minlength=self.codebook_size).to(self.counts)

    def compute(self) -> dict[str, float]:
        total = self.counts.sum()
        if total == 0:
            return {"codebook_perplexity": float("nan"), "codebook_usage": float("nan")}
        probs = self.counts / total
        nonzero = probs[probs > 0]
        entropy = -(nonzero * nonzero.log()).sum()
        return {"codebook_perplexity": float(entropy.exp()), "codebook_usage": float((self.counts > 0).double().mean())}

    def protocol(self) -> dict[str, Any]:
        return {"codebook_size": self.codebook_size, "perplexity": "exp of the natural-log entropy of code counts"}
