"""Discriminator Guidance (DG / EDM-G++, Kim et al., ICML 2023) on jaxdiff's solvers.

A discriminator `disc_logit(x, sigma, cond) -> [N]` (the sampler contract: a trained
`saved.TrainedDiscriminator`, an imported DG discriminator `models.dg`, or an analytic oracle)
estimates `log q_sigma(x) / p_sigma(x)` (real over generated). DG adds its gradient to the score:
`score' = score + w grad_x log r`. In the EDM/VE denoiser form (score = (D - x) / sigma^2):

    D'(x; sigma) = D(x; sigma) + w * sigma^2 * grad_x log r(x, sigma).

Derivation from DG's `generate.py` / `classifier_lib.get_grad_log_ratio`: DG computes
`g = -(sigma^2 alpha) grad_{x_vp} log r` with `x_vp = alpha x`, i.e. `g = -sigma^2 grad_x log r`,
and adds `w g / sigma` to the Euler derivative `(x - D) / sigma`, which gives
`(x - D - w sigma^2 grad_x log r) / sigma = (x - D') / sigma`. The sign moves samples toward a
higher log-ratio (more "real").

DG's log-ratio (`get_log_ratio`): `d = sigmoid(logit)` clipped to [1e-5, 1 - 1e-5], then
`log(d / (1 - d))`, i.e. the logit clipped to +-log((1 - 1e-5) / 1e-5) = +-11.51 (`log_ratio`;
the gradient is 0 where it clips). Guidance is active where the linear VP time
`tau = vp_linear_t(sigma)` is in [time_min, time_max] (DG: 0.01, 1), per sample (DG tests the
batch minimum of tau; with the deterministic Heun grid every sample shares sigma, so they agree).
Outside the window, or with w = 0, no gradient is computed (a `lax.cond` on the batch).

DG's sampler is EDM's Heun with separate weights for the two evaluations of a step
(`dg_weight_1st_order`, default 2 for unconditional CIFAR-10, and `dg_weight_2nd_order`, default
0): `dg_heun(...)` is that solver; `dg_denoiser` is the plain wrapper (both stages with one
weight) for any solver. Not implemented: DG's optional "boosting" (per-sample churn and a doubled
weight where log r < 0), which needs the stochastic sampler.

Cost: the denoiser NFE is the solver's (2n - 1 for n Heun steps ending at 0); each active
evaluation adds one discriminator forward and backward pass per sample (`disc_calls`).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from jaxdiff import sharding as shd
from jaxdiff.diffusion import solvers as S
from jaxdiff.diffusion.schedules import broadcast_like, vp_linear_t

CLIP = 1e-5                                    # DG clips d = sigmoid(logit) to [CLIP, 1 - CLIP]
LOG_RATIO_BOUND = math.log((1.0 - CLIP) / CLIP)  # = 11.5129...


def log_ratio(logit):
    """DG's `log(d / (1 - d))` of `d = clip(sigmoid(logit), 1e-5, 1 - 1e-5)`: the clipped logit."""
    return jnp.clip(logit, -LOG_RATIO_BOUND, LOG_RATIO_BOUND)


def grad_log_ratio(disc_logit: Callable, x, sigma, cond=None):
    """`(grad_x log r [N, ...], log r [N])` at EDM states `x` and noise levels `sigma [N]`.

    One discriminator forward and backward pass; samples are independent (the gradient of the
    batch sum is each sample's gradient)."""

    def total(y):
        lr = log_ratio(jnp.asarray(disc_logit(y, sigma, cond), jnp.float32).reshape(-1))
        return jnp.sum(lr), lr

    g, lr = jax.grad(total, has_aux=True)(x)
    return g, lr


def active(sigma, weight, time_min, time_max):
    """Where guidance applies: `time_min <= vp_linear_t(sigma) <= time_max`, sigma > 0, w != 0."""
    tau = vp_linear_t(jnp.asarray(sigma, jnp.float32))
    return (sigma > 0) & (tau >= time_min) & (tau <= time_max) & (jnp.asarray(weight) != 0)


def dg_denoiser(denoise: Callable, disc_logit: Callable, weight, time_min=0.01,
                time_max=1.0) -> Callable:
    """`D'(x, sigma, cond) = D + weight sigma^2 grad_x log r` where `active` (module docstring).

    `weight`, `time_min`, `time_max` may be traced. The gradient is computed only when some
    sample of the batch is active."""

    def den(x, sigma, cond=None):
        sigma = jnp.broadcast_to(jnp.asarray(sigma, x.dtype).reshape(-1), (x.shape[0],))
        d0 = denoise(x, sigma, cond)
        on = active(sigma, weight, time_min, time_max)
        g = lax.cond(jnp.any(on), lambda _: grad_log_ratio(disc_logit, x, sigma, cond)[0],
                     lambda _: jnp.zeros(x.shape, jnp.float32), None)
        coef = jnp.where(on, jnp.asarray(weight, jnp.float32) * jnp.square(sigma), 0.0)
        return d0 + (broadcast_like(coef, g) * g).astype(d0.dtype)

    return den


def dg_heun(disc_logit: Callable, weight, weight_2nd=0.0, time_min=0.01,
            time_max=1.0) -> S.Solver:
    """DG's sampler: EDM's deterministic Heun where the Euler evaluation uses
    `dg_denoiser(weight)` and the correction evaluation `dg_denoiser(weight_2nd)` (DG's
    `dg_weight_1st_order` / `dg_weight_2nd_order`); Euler on a final step to sigma = 0. With
    `weight == weight_2nd` it equals `solvers.heun()` on `dg_denoiser`. Weights and the window
    may be traced; a Python `weight_2nd == 0` (DG's default) leaves the discriminator out of
    the correction evaluation altogether (half the program to compile)."""

    def init(x, sigmas):
        return S.XState(x)

    def step(state, den, sigma, sigma_next, keys, cond):
        first = dg_denoiser(den, disc_logit, weight, time_min, time_max)
        second = (den if _static_zero(weight_2nd) else
                  dg_denoiser(den, disc_logit, weight_2nd, time_min, time_max))
        x = state.x
        d = (x - first(x, sigma, cond)) / sigma
        x_e = x + (sigma_next - sigma) * d

        def correct(_):
            s_safe = jnp.where(sigma_next > 0, sigma_next, 1.0)
            d2 = (x_e - second(x_e, s_safe, cond)) / s_safe
            return x + (sigma_next - sigma) * (0.5 * (d + d2))

        x_next = lax.cond(sigma_next > 0, correct, lambda _: x_e, None)
        return S.XState(x_next), jnp.where(sigma_next > 0, 2, 1)

    return S.Solver(init, step, "dg_heun", False)


def _static_zero(w) -> bool:
    return isinstance(w, (int, float)) and w == 0


def disc_calls(sigmas, weight, weight_2nd=0.0, time_min=0.01, time_max=1.0):
    """Discriminator forward+backward passes per sample of `dg_heun` on the grid `sigmas`:
    active Euler evaluations plus active correction evaluations (steps with sigma_next > 0)."""
    s, s_next = sigmas[:-1], sigmas[1:]
    first = active(s, weight, time_min, time_max)
    second = active(s_next, weight_2nd, time_min, time_max) & (s_next > 0)
    return jnp.sum(first.astype(jnp.int32)) + jnp.sum(second.astype(jnp.int32))


# --------------------------------------------------------------------------------------------
# `jaxdiff sample --config.guidance.name=dg`


class DGSettings(NamedTuple):
    """DG guidance in `jaxdiff sample`: the discriminator (`disc_dir`, a directory from
    `models.dg.import_discriminator` or a `jaxdiff train-discriminator` run; or DG's two `.pt`
    files `classifier` + `head`, DG's architecture), DG's weights for the Euler and the Heun
    evaluations, the tau window and the time convention of an imported ADM classifier
    (`models.dg.TIME_CONVENTIONS`; "auto": cosine at 64 px)."""

    disc_dir: str = ""
    classifier: str = ""
    head: str = ""
    weight: float = 2.0
    weight_2nd: float = 0.0
    time_min: float = 0.01
    time_max: float = 1.0
    time: str = "auto"


def dg_sampler(ctx, settings: DGSettings, disc):
    """Batch sampler (`batch_samplers` contract) of DG guidance: `dg_heun` with the
    discriminator `disc` (`.state()`, `.make_logit(state)`: `models.dg.DG` or
    `saved.TrainedDiscriminator`). Weights and window are traced arguments (no recompiles).
    aux: `nfe`, `nfe_executed` (denoiser, per sample), `disc_calls` (per sample)."""
    b, shape = ctx.batch_size, ctx.source.sample_shape
    bsh = shd.batch_sharding(ctx.mesh)
    dstate = shd.replicate(disc.state(), ctx.mesh)
    s = settings

    @functools.partial(jax.jit, static_argnames="w2_zero")
    def run(state, dstate, key, offset, sigmas, w, w2_zero):
        den = ctx.source.make_denoise(state)
        w1, w2, lo, hi = w
        solver = dg_heun(disc.make_logit(dstate), w1, 0.0 if w2_zero else w2, lo, hi)
        x_T = S.prior_sample(key, (b, *shape), sigmas[0], offset=offset)
        x_T = lax.with_sharding_constraint(x_T, bsh)
        idx = jnp.arange(b, dtype=jnp.int32) + offset
        cond = None if ctx.label_fn is None else ctx.label_fn(idx)
        x, aux = S.sample(solver, den, x_T, sigmas, key, cond, offset=offset)
        x = lax.with_sharding_constraint(x, bsh)
        calls = disc_calls(sigmas, *w).astype(jnp.float32)
        return x, {"nfe": aux.nfe, "nfe_executed": aux.nfe, "disc_calls": calls}

    def fn(state, key, offset, sigmas, hparams):
        w = tuple(jnp.float32(v) for v in (s.weight, s.weight_2nd, s.time_min, s.time_max))
        # Static: DG's default w2 = 0 compiles no discriminator into the correction evaluation.
        return run(state, dstate, key, offset, sigmas, w, w2_zero=float(s.weight_2nd) == 0)

    return fn
