"""Latents as small pytrees: one tensor, or a dict of named tensors (triplanes)."""
from __future__ import annotations

from typing import Any, Callable

import torch
from torch import Tensor

from harness_core.api import Latents  # one tensor or a dict of named tensors, as in Tokens.latents


def tree_map(fn: Callable[..., Tensor], *trees: Latents) -> Latents:
    """Apply ``fn`` leaf-wise to tensors or to same-keyed dicts of tensors."""
    if isinstance(trees[0], dict):
        return {k: fn(*(t[k] for t in trees)) for k in trees[0]}
    return fn(*trees)


def tree_cat(trees: list[Latents]) -> Latents:
    """Concatenate along the batch dim."""
    if isinstance(trees[0], dict):
        return {k: torch.cat([t[k] for t in trees]) for k in trees[0]}
    return torch.cat(trees)


def tree_split(tree: Latents, n: int) -> tuple[Latents, Latents]:
    """Split the batch at row ``n``."""
    if isinstance(tree, dict):
        return {k: v[:n] for k, v in tree.items()}, {k: v[n:] for k, v in tree.items()}
    return tree[:n], tree[n:]


def tree_index(tree: Latents, index: Any) -> Latents:
    """Select batch rows."""
    return tree_map(lambda v: v[index], tree)


def tree_leaves(tree: Latents) -> list[Tensor]:
    return list(tree.values()) if isinstance(tree, dict) else [tree]


def batch_size(tree: Latents) -> int:
    return int(tree_leaves(tree)[0].shape[0])
