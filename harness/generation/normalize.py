"""Per-plane, per-channel latent normalization (CoordTok supplementary A.2).

CoordTok-SiT normalizes each plane of the triplane channel-wise,
``(h - mean) / std``, with the mean and the (population) standard deviation
measured once, before generator training, on the latents of 2048 training
clips (``train_sit.py``; research notes 1.7). The same rule is applied to
every continuous tokenizer here: a dict of planes gets statistics per plane
and channel, a single grid tensor per channel.
"""
from __future__ import annotations

from typing import Iterable

import torch
from torch import Tensor

from harness_core.api import Latents


class LatentNormalizer:
    """Channel statistics of latents ``[N, C, ...]`` (or a dict of such planes).

    Statistics are accumulated in float64 over any number of batches
    (:meth:`update`), then frozen by :meth:`finalize`. ``std`` is the
    population standard deviation over the batch and every non-channel
    position; channels whose std is below ``eps`` are divided by ``eps``.
    """

    def __init__(self, eps: float = 1e-6) -> None:
        self.eps = eps
        self.mean: dict[str, Tensor] = {}
        self.std: dict[str, Tensor] = {}
        self._sums: dict[str, list[Tensor]] = {}
        self._count: dict[str, int] = {}

    @staticmethod
    def _named(latents: Latents) -> dict[str, Tensor]:
        if isinstance(latents, dict):
            return latents
        if isinstance(latents, Tensor):
            return {"": latents}
        raise TypeError(f"latents must be a tensor or a dict of tensors, got {type(latents).__name__}")

    def update(self, latents: Latents) -> None:
        """Add a batch ``[N, C, ...]`` (or a dict of them) to the running sums."""
        for name, x in self._named(latents).items():
            if x.ndim < 2:
                raise ValueError(f"latents {name!r}: expected [N, C, ...], got {tuple(x.shape)}")
            x = x.detach().to(torch.float64).transpose(0, 1).reshape(x.shape[1], -1)
            s1, s2 = x.sum(1).cpu(), x.pow(2).sum(1).cpu()
            if name in self._sums:
                self._sums[name][0] += s1
                self._sums[name][1] += s2
                self._count[name] += x.shape[1]
            else:
                self._sums[name] = [s1, s2]
                self._count[name] = x.shape[1]

    def finalize(self) -> "LatentNormalizer":
        """Freeze mean and std from the accumulated batches; raises ``ValueError`` when none was seen."""
        if not self._sums:
            raise ValueError("LatentNormalizer.finalize: no latents were given to update()")
        for name, (s1, s2) in self._sums.items():
            n = self._count[name]
            mean = s1 / n
            var = (s2 / n - mean.pow(2)).clamp_min(0.0)
            self.mean[name] = mean.float()
            self.std[name] = var.sqrt().clamp_min(self.eps).float()
        return self

    @classmethod
    def fit(cls, batches: Iterable[Latents], eps: float = 1e-6) -> "LatentNormalizer":
        """Statistics of all ``batches`` (e.g. the latents of 2048 training clips)."""
        norm = cls(eps)
        for batch in batches:
            norm.update(batch)
        return norm.finalize()

    def _apply(self, latents: Latents, fn) -> Latents:
        if not self.mean:
            raise RuntimeError("LatentNormalizer: call fit() or finalize() first")
        named = self._named(latents)
        if set(named) != set(self.mean):
            raise ValueError(f"latents have parts {sorted(named)}, the statistics {sorted(self.mean)}")
        out = {}
        for name, x in named.items():
            shape = (1, -1) + (1,) * (x.ndim - 2)
            mean = self.mean[name].to(x.device, x.dtype).view(shape)
            std = self.std[name].to(x.device, x.dtype).view(shape)
            out[name] = fn(x, mean, std)
        return out if isinstance(latents, dict) else out[""]

    def normalize(self, latents: Latents) -> Latents:
        """``(h - mean) / std`` per plane and channel."""
        return self._apply(latents, lambda x, m, s: (x - m) / s)

    def denormalize(self, latents: Latents) -> Latents:
        """``h * std + mean``, the inverse of :meth:`normalize`."""
        return self._apply(latents, lambda x, m, s: x * s + m)

    def state_dict(self) -> dict:
        return {"eps": self.eps, "mean": dict(self.mean), "std": dict(self.std)}

    @classmethod
    def from_state_dict(cls, state: dict) -> "LatentNormalizer":
        norm = cls(state["eps"])
        norm.mean = {k: v.float() for k, v in state["mean"].items()}
        norm.std = {k: v.float() for k, v in state["std"].items()}
        return norm

    def summary(self) -> dict[str, dict[str, list[float]]]:
        """JSON-friendly mean / std per part (written beside the checkpoint, like CoordTok's log.txt)."""
        return {k or "latents": {"mean": self.mean[k].tolist(), "std": self.std[k].tolist()} for k in self.mean}

