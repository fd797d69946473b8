"""``GenerationConfig``: the suite's ``generation:`` block (issue 7).

Defaults follow CoordTok supplementary A.2 (CoordTok-SiT-L/2: AdamW lr 1e-4,
betas (0.9, 0.999), no weight decay, batch 64, 600K iterations, EMA 0.9999,
Euler-Maruyama SDE with 250 steps, diffusion ``w_t = sigma_t``, last step
0.04) and StyleGAN-V's ``fvd2048_16f`` (2048 real against 2048 generated
clips). Unknown keys are rejected by name.

The class is defined in :mod:`harness.config` next to the rest of the suite
schema (importing this package imports torch, the schema must not) and is
re-exported here, its usual import path; per-tokenizer overrides are
:class:`harness.config.GenerationOverrides`.
"""
from __future__ import annotations

from harness.config import GenerationConfig, GenerationOverrides

__all__ = ["GenerationConfig", "GenerationOverrides"]
