"""The SiT transport: linear interpolant, velocity loss, SDE and ODE samplers.

Conventions of SiT (Ma et al. 2024, section 2 and its ``transport`` package),
used by CoordTok-SiT (CoordTok supplementary A.2):

* time runs from ``t = 0`` (Gaussian noise ``x0``) to ``t = 1`` (data ``x1``);
* linear path ``x_t = alpha_t x1 + sigma_t x0`` with ``alpha_t = t``,
  ``sigma_t = 1 - t``; the model predicts the velocity ``u = x1 - x0``;
  training draws ``t ~ U[0, 1]`` (SiT's ``train_eps = 0`` for the linear
  path with velocity prediction) and minimizes the mean squared error, for
  triplanes the mean of the three planes' own mean squared errors
  (CoordTok-SiT's ``training_losses``);
* score from velocity: ``s = (t v - x) / (1 - t)`` (SiT ``get_score_from_velocity``);
* Euler-Maruyama SDE ``dx = [v + w_t s] dt + sqrt(2 w_t) dW`` with diffusion
  ``w_t = sigma_t = 1 - t`` (SiT ``diffusion_form="sigma"``, CoordTok supp. A.2),
  on ``linspace(0, 1 - last_step_size, steps)``: ``steps - 1`` stochastic
  steps, then one noiseless "Mean" step of size ``last_step_size`` (0.04),
  i.e. ``steps`` model evaluations (250 in the paper);
* ODE ``dx/dt = v`` from 0 to 1 through torchdiffeq (SiT defaults: dopri5,
  ``atol=1e-6``, ``rtol=1e-3``).

Latents are one tensor or a dict of tensors (triplanes); every function here
handles both.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

from harness_core.api import Latents
from harness.generation.tree import batch_size, tree_leaves, tree_map

VelocityFn = Callable[[Latents, Tensor], Latents]


def _expand(t: Tensor, x: Tensor) -> Tensor:
    return t.view(-1, *([1] * (x.ndim - 1))).to(x.dtype)


def interpolate(x1: Latents, x0: Latents, t: Tensor) -> tuple[Latents, Latents]:
    """``x_t = t x1 + (1 - t) x0`` and the target velocity ``x1 - x0``; ``t`` ``float [B]``."""
    xt = tree_map(lambda a, b: _expand(t, a) * a + (1 - _expand(t, a)) * b, x1, x0)
    ut = tree_map(lambda a, b: a - b, x1, x0)
    return xt, ut


def training_loss(model: Callable[..., Latents], x1: Latents, y: Tensor, generator: torch.Generator | None = None,
                  t: Tensor | None = None, noise: Latents | None = None) -> Tensor:
    """Per-sample velocity-matching loss ``float [B]`` (SiT ``training_losses``, as CoordTok-SiT computes it).

    Args:
        model: ``model(x_t, t, y) -> velocity`` in the layout of ``x1``.
        x1: normalized data latents (tensor or dict of planes), batch first.
        y: class labels ``int64 [B]``.
        generator: RNG for ``t`` and the noise (ignored for what is given).
        t: optional fixed times ``float [B]`` in ``[0, 1]``; noise: optional fixed ``x0``.

    Returns:
        the mean over latent parts (planes) of each part's mean squared error over its own elements: every
        plane weighs the same whatever its size, as ``(mean_flat(xy) + mean_flat(yt) + mean_flat(xt)) / 3``
        of huiwon-jang/CoordTok 8475272 ``transport/transport.py`` ``Transport.training_losses`` (velocity
        model); for one tensor, its mean squared error.
    """
    b = batch_size(x1)
    device = tree_leaves(x1)[0].device
    if t is None:
        t = torch.rand(b, generator=generator, device=device)
    if noise is None:
        noise = tree_map(lambda a: torch.randn(a.shape, generator=generator, device=a.device, dtype=a.dtype), x1)
    xt, ut = interpolate(x1, noise, t)
    vt = model(xt, t, y)
    per_part = [(v - u).pow(2).flatten(1).mean(1) for v, u in zip(tree_leaves(vt), tree_leaves(ut))]
    return sum(per_part) / len(per_part)


def score_from_velocity(v: Latents, x: Latents, t: Tensor) -> Latents:
    """``(t v - x) / (1 - t)`` for the linear path (SiT ``get_score_from_velocity``); needs ``t < 1``."""
    return tree_map(lambda vv, xx: (_expand(t, xx) * vv - xx) / (1 - _expand(t, xx)), v, x)


@torch.no_grad()
def sample_sde(velocity: VelocityFn, z: Latents, steps: int = 250, last_step_size: float = 0.04,
               generator: torch.Generator | None = None) -> Latents:
    """Euler-Maruyama sampling from noise ``z`` at ``t = 0`` to data (CoordTok supp. A.2).

    Args:
        velocity: ``velocity(x, t) -> v`` with ``t`` ``float [B]`` (class and
            guidance bound by the caller).
        z: initial Gaussian noise (tensor or dict of planes), batch first.
        steps: points of ``linspace(0, 1 - last_step_size, steps)``; ``steps - 1``
            stochastic steps plus the final mean step = ``steps`` model calls.
        last_step_size: the final noiseless step (0.04); 0 ends with a plain
            Euler-Maruyama step up to ``t = 1``, which divides by zero in the
            score, so it must be ``> 0``.
        generator: RNG for the Brownian increments.

    Returns:
        the samples, same layout and shapes as ``z``.

    Raises:
        ValueError: for ``steps < 2`` or ``last_step_size`` outside ``(0, 1)``.
    """
    if steps < 2:
        raise ValueError(f"the SDE sampler needs steps >= 2, got {steps}")
    if not 0 < last_step_size < 1:
        raise ValueError(f"last_step_size must be in (0, 1), got {last_step_size}")
    ref = tree_leaves(z)[0]
    b = ref.shape[0]
    ts = torch.linspace(0.0, 1.0 - last_step_size, steps, dtype=torch.float64)
    dt = float(ts[1] - ts[0])

    def drift(x: Latents, t: Tensor) -> Latents:
        v = velocity(x, t)
        s = score_from_velocity(v, x, t)
        return tree_map(lambda vv, ss: vv + _expand(1 - t, ss) * ss, v, s)  # w_t = sigma_t = 1 - t

    x = z
    for ti in ts[:-1]:
        t = torch.full((b,), float(ti), device=ref.device, dtype=ref.dtype)
        d = drift(x, t)
        w = 1.0 - float(ti)
        x = tree_map(lambda xx, dd: xx + dd * dt + (2 * w * dt) ** 0.5 *
                     torch.randn(xx.shape, generator=generator, device=xx.device, dtype=xx.dtype), x, d)
    t = torch.full((b,), float(ts[-1]), device=ref.device, dtype=ref.dtype)
    d = drift(x, t)
    return tree_map(lambda xx, dd: xx + dd * last_step_size, x, d)


@torch.no_grad()
def sample_ode(velocity: VelocityFn, z: Latents, steps: int = 50, method: str = "dopri5", atol: float = 1e-6,
               rtol: float = 1e-3) -> Latents:
    """Probability-flow ODE ``dx/dt = v(x, t)`` from ``t = 0`` to ``1`` with torchdiffeq.

    Args:
        velocity: ``velocity(x, t) -> v`` with ``t`` ``float [B]``.
        z: initial noise (tensor or dict of planes).
        steps: grid points for fixed-step methods (``euler``, ``midpoint``,
            ``rk4``); adaptive methods (``dopri5``) use ``atol``/``rtol`` and
            evaluate only the endpoints.
        method: a torchdiffeq method name.

    Returns:
        the samples, same layout as ``z``.
    """
    from torchdiffeq import odeint

    names = list(z) if isinstance(z, dict) else None
    state = tuple(z[k] for k in names) if names else (z,)
    ref = state[0]
    b = ref.shape[0]
    fixed = method in {"euler", "midpoint", "rk4", "explicit_adams", "implicit_adams", "heun2", "heun3"}
    if fixed and steps < 2:
        raise ValueError(f"a fixed-step ODE method needs steps >= 2, got {steps}")
    ts = torch.linspace(0.0, 1.0, steps if fixed else 2, device=ref.device, dtype=ref.dtype)

    def rhs(t: Tensor, s: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
        x = dict(zip(names, s)) if names else s[0]
        v = velocity(x, t.expand(b))
        return tuple(v[k] for k in names) if names else (v,)

    kwargs = {} if fixed else {"atol": atol, "rtol": rtol}
    out = odeint(rhs, state, ts, method=method, **kwargs)
    final = tuple(o[-1] for o in out)
    return dict(zip(names, final)) if names else final[0]
