"""``GenerationConfig``: the suite's ``generation:`` block (issue 7).

Defaults follow CoordTok supplementary A.2 (CoordTok-SiT-L/2: AdamW lr 1e-4,
betas (0.9, 0.999), no weight decay, batch 64, 600K iterations, EMA 0.9999,
Euler-Maruyama SDE with 250 steps, diffusion ``w_t = sigma_t``, last step
0.04) and StyleGAN-V's ``fvd2048_16f`` (2048 real against 2048 generated
clips). Unknown keys are rejected by name.
"""
from __future__ import annotations

from typing import Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, model_validator


class GenerationConfig(BaseModel):
    """Generator training, sampling and gFVD settings.

    Attributes:
        enabled: run the generation stage at all.
        generator: ``"auto"`` (SiT for continuous tokenizers, the
            autoregressive transformer for discrete ones), ``"sit"`` or ``"ar"``.
        model: size name, ``tiny``/``S``/``B``/``L``/``XL`` (SiT paper, Table 1;
            the same widths for the autoregressive transformer).
        patch: SiT spatial patch size (2, 4 or 8 in SiT; CoordTok-SiT-L/2 uses 2).
        patch_t: SiT temporal patch size for 3D grid latents (1 keeps every latent timestep).
        steps: optimizer steps (600K in CoordTok supp. A.2).
        batch_size: training batch (64 in CoordTok supp. A.2).
        lr, weight_decay, betas: AdamW (1e-4, 0, (0.9, 0.999); supp. A.2).
        ema: EMA momentum (0.9999; supp. A.2).
        ema_warmup: timm ``ModelEmaV3`` warmup (decay grows from 0 to ``ema``);
            off in the paper, useful for the few hundred steps of a CPU suite.
        grad_clip: max grad norm, ``None`` for none (the paper does not clip).
        num_train_clips: training clips encoded once and cached as the
            generator's training set (one clip per ``train_clips`` draw).
        num_norm_clips: clips for the per-plane / per-channel mean and std
            (2048 in supp. A.2; all cached clips when fewer).
        encode_batch_size: clips per ``train_clips`` call while encoding.
        num_tokens: token budget passed to ``encode`` (flexible tokenizers; ``None`` = full).
        sampler: ``"sde"`` (Euler-Maruyama, the paper) or ``"ode"`` (torchdiffeq).
        sampling_steps: SDE steps including the last mean step (250), or the
            number of grid points of a fixed-step ODE method.
        last_step_size: size of the final noiseless SDE step (0.04).
        ode_method, ode_atol, ode_rtol: torchdiffeq settings (SiT's defaults: dopri5, 1e-6, 1e-3).
        temperature, top_k: autoregressive sampling.
        num_samples: generated videos for gFVD (2048, StyleGAN-V).
        num_real: real clips for gFVD (2048, StyleGAN-V).
        sample_batch_size: videos per sampling / decoding batch.
        fvd_protocols: metric names from ``harness.registry.METRICS`` (``fvd_16f``, ``fvd_128f``).
        real_cache_dir: where real FVD statistics are cached (default
            ``<run_dir>/../.fvd_real_cache``, shared by the runs of a suite).
        conditional: class-conditional (UCF-101's 101 classes) with
            classifier-free guidance; otherwise one class and no dropout
            (supp. A.2: "the number of classes as 1 ... class dropout ratio to 0").
        cfg_scale: guidance scale (1 = no guidance; used only when conditional).
        class_dropout: label dropout for CFG training (DiT/SiT: 0.1; used only when conditional).
        num_gif_samples: generated videos written as GIFs to ``generation/samples/``.
        gif_fps: frame rate of those GIFs.
        checkpoint_every: steps between checkpoints (and always at the end).
        log_every: steps between loss log lines.
        cpu_threads: on a CPU device, torch intra-op threads for the stage
            (restored afterwards); ``None`` leaves the setting alone. Tiny
            generators run several times faster with 1 thread on a shared machine.
    """

    model_config = ConfigDict(extra="forbid")

    enabled: bool = False
    generator: Literal["auto", "sit", "ar"] = "auto"
    model: str = "tiny"
    patch: int = Field(2, ge=1)
    patch_t: int = Field(1, ge=1)
    steps: int = Field(600_000, ge=0)
    batch_size: int = Field(64, ge=1)
    lr: float = Field(1e-4, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    betas: tuple[float, float] = (0.9, 0.999)
    ema: float = Field(0.9999, ge=0, le=1)
    ema_warmup: bool = False
    grad_clip: Optional[float] = None
    num_train_clips: int = Field(2048, ge=1)
    num_norm_clips: int = Field(2048, ge=1)
    encode_batch_size: int = Field(16, ge=1)
    num_tokens: Optional[int] = None
    sampler: Literal["sde", "ode"] = "sde"
    sampling_steps: int = Field(250, ge=2)
    last_step_size: float = Field(0.04, ge=0, lt=1)
    ode_method: str = "dopri5"
    ode_atol: float = 1e-6
    ode_rtol: float = 1e-3
    temperature: float = Field(1.0, gt=0)
    top_k: Optional[int] = None
    num_samples: int = Field(2048, ge=1)
    num_real: int = Field(2048, ge=1)
    sample_batch_size: int = Field(16, ge=1)
    fvd_protocols: list[str] = Field(default_factory=lambda: ["fvd_16f"])
    real_cache_dir: Optional[str] = None
    conditional: bool = False
    cfg_scale: float = Field(1.0, ge=0)
    class_dropout: float = Field(0.1, ge=0, lt=1)
    num_gif_samples: int = Field(4, ge=0)
    gif_fps: int = Field(8, ge=1)
    checkpoint_every: int = Field(10_000, ge=1)
    log_every: int = Field(100, ge=1)
    cpu_threads: Optional[int] = Field(None, ge=1)

    @model_validator(mode="after")
    def _check(self) -> "GenerationConfig":
        from harness.generation.sit import SIT_SIZES

        if self.model not in SIT_SIZES:
            raise ValueError(f"generation.model must be one of {sorted(SIT_SIZES)}, got {self.model!r}")
        return self
