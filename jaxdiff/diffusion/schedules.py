"""Noise schedules and exact conversions between the VE (EDM) and VP parameterisations.

jaxdiff's samplers work in the EDM/VE convention `x = x0 + sigma * eps` (DESIGN.md §2). VP models
use `x_vp = alpha * x0 + s * eps` with `alpha**2 + s**2 = 1`. The two describe the same noisy
distribution up to a per-sample scale (Karras et al. 2022, Eq. 4 and Table 1):

    x_vp = alpha * x_ve,   alpha = 1 / sqrt(1 + sigma**2),   s = sigma * alpha,
    sigma = s / alpha = sqrt((1 - alpha_bar) / alpha_bar),   alpha_bar = alpha**2.

Every function here is pure and jittable. Step counts (array lengths) are static Python ints;
sigma ranges, rho and beta parameters may be traced arrays, so changing them never recompiles.
"""

from __future__ import annotations

import functools
import math
import operator

import jax
import jax.numpy as jnp
import numpy as np

# The VE -> VP conversions models need too (DG's discriminator) live in the core module
# `jaxdiff.noise_levels`; they are part of this module's interface.
from jaxdiff.noise_levels import (COSINE_S as _COSINE_S, alpha_from_sigma,  # noqa: F401
                                  vp_cosine_t, vp_linear_t)

# --------------------------------------------------------------------------------------------
# EDM / Karras sigma grid
# --------------------------------------------------------------------------------------------


def karras_sigmas(
    n: int,
    sigma_min=0.002,
    sigma_max=80.0,
    rho=7.0,
    *,
    append_zero: bool = True,
    dtype=jnp.float32,
) -> jax.Array:
    """Karras et al. (2022) Eq. 5 time steps, decreasing, with EDM's trailing `sigma_N = 0`.

        sigma_i = (sigma_max**(1/rho) + i/(n-1) * (sigma_min**(1/rho) - sigma_max**(1/rho)))**rho,
        i = 0..n-1,   then sigma_n = 0 (when `append_zero`).

    Args:
      n: number of non-zero noise levels (static). n solver steps when `append_zero`.
      sigma_min, sigma_max, rho: scalars, may be traced.
      append_zero: append the final `sigma = 0` as EDM does.

    Returns:
      `[n + 1]` (or `[n]`) float array, `sigma_0 = sigma_max`, `sigma_{n-1} = sigma_min`.
    """
    n = _static_positive_int(n, "n")  # validated eagerly: a traced n gets a clear message
    return _karras_sigmas(n, sigma_min, sigma_max, rho, append_zero, dtype)


@functools.partial(jax.jit, static_argnums=(0, 4, 5))
def _karras_sigmas(n, sigma_min, sigma_max, rho, append_zero, dtype):
    sigma_min = jnp.asarray(sigma_min, dtype)
    sigma_max = jnp.asarray(sigma_max, dtype)
    rho = jnp.asarray(rho, dtype)
    if n == 1:
        sigmas = sigma_max[None]
    else:
        frac = jnp.arange(n, dtype=dtype) / (n - 1)
        lo, hi = sigma_min ** (1.0 / rho), sigma_max ** (1.0 / rho)
        sigmas = (hi + frac * (lo - hi)) ** rho
        # Pin the end points: the power round trip may be off by an ulp, and callers (DiffRS'
        # tables, tests) index the grid expecting the exact configured extremes.
        sigmas = sigmas.at[0].set(sigma_max).at[-1].set(sigma_min)
    if append_zero:
        sigmas = jnp.concatenate([sigmas, jnp.zeros((1,), dtype)])
    return sigmas


def _static_positive_int(n, name: str) -> int:
    """`n` as a Python int >= 1; a traced value is an error because it would set a shape."""
    try:
        m = operator.index(n)
    except TypeError as e:  # includes jax's tracer conversion errors (TypeError subclasses)
        raise TypeError(
            f"{name} must be a static Python int (it sets array shapes), got {n!r}"
        ) from e
    if m < 1:
        raise ValueError(f"{name} must be a positive integer, got {m}")
    return m


# --------------------------------------------------------------------------------------------
# VP <-> VE conversions (schedule independent)
# --------------------------------------------------------------------------------------------


def vp_std_from_sigma(sigma):
    """VP noise scale: `s = sigma / sqrt(1 + sigma**2)` (so `alpha**2 + s**2 = 1`)."""
    sigma = jnp.asarray(sigma)
    return sigma * jax.lax.rsqrt(1.0 + jnp.square(sigma))


def sigma_from_alpha_bar(alpha_bar):
    """VE noise level of a VP cumulative signal `alpha_bar`: `sqrt((1 - alpha_bar) / alpha_bar)`."""
    alpha_bar = jnp.asarray(alpha_bar)
    return jnp.sqrt((1.0 - alpha_bar) / alpha_bar)


def alpha_bar_from_sigma(sigma):
    """`alpha_bar = 1 / (1 + sigma**2)`, inverse of `sigma_from_alpha_bar`."""
    return 1.0 / (1.0 + jnp.square(jnp.asarray(sigma)))


def ve_to_vp(x, sigma):
    """`x_vp = alpha(sigma) * x_ve` with per-sample `sigma: [N]` broadcast over `x: [N, ...]`."""
    return x * broadcast_like(alpha_from_sigma(sigma), x)


def vp_to_ve(x_vp, sigma):
    """`x_ve = x_vp / alpha(sigma) = x_vp * sqrt(1 + sigma**2)`, per-sample `sigma: [N]`."""
    return x_vp * broadcast_like(jnp.sqrt(1.0 + jnp.square(jnp.asarray(sigma))), x_vp)


def broadcast_like(v, x):
    """Reshape a per-sample `[N]` (or scalar) array to broadcast against `x: [N, ...]`."""
    v = jnp.asarray(v)
    if v.ndim == 0:
        return v
    return v.reshape(v.shape + (1,) * (x.ndim - v.ndim))


# --------------------------------------------------------------------------------------------
# Continuous VP schedules: linear beta (Song et al. 2021) and cosine (Nichol & Dhariwal 2021)
# --------------------------------------------------------------------------------------------


def vp_linear_alpha(t, beta_min=0.1, beta_max=20.0):
    """Linear-beta VP-SDE signal scale, `beta(t) = beta_min + t (beta_max - beta_min)`, t in [0, 1].

        alpha(t) = exp(-1/2 int_0^t beta) = exp(-t**2 (beta_max - beta_min) / 4 - t beta_min / 2).
    """
    t = jnp.asarray(t)
    return jnp.exp(-0.25 * jnp.square(t) * (beta_max - beta_min) - 0.5 * t * beta_min)


def vp_linear_sigma(t, beta_min=0.1, beta_max=20.0):
    """VE sigma of linear-beta VP time t: `sqrt(exp(t**2 (b1 - b0)/2 + t b0) - 1)` (EDM Table 1)."""
    t = jnp.asarray(t)
    log_inv_ab = 0.5 * jnp.square(t) * (beta_max - beta_min) + t * beta_min  # -log alpha_bar
    return jnp.sqrt(jnp.expm1(log_inv_ab))


def vp_linear_sigmas(
    n: int, eps_t=1e-3, beta_min=0.1, beta_max=20.0, *, append_zero=True, dtype=jnp.float32
) -> jax.Array:
    """EDM's 'VP' discretisation: t uniform from 1 to `eps_t` (n points), sigma = sigma(t), then 0.

    Returns `[n + 1]` (or `[n]`) decreasing sigmas.
    """
    n = _static_positive_int(n, "n")
    frac = jnp.arange(n, dtype=dtype) / max(n - 1, 1)
    t = 1.0 + frac * (jnp.asarray(eps_t, dtype) - 1.0)
    sigmas = vp_linear_sigma(t, beta_min, beta_max).astype(dtype)
    if append_zero:
        sigmas = jnp.concatenate([sigmas, jnp.zeros((1,), dtype)])
    return sigmas




def vp_cosine_alpha_bar(t, s=_COSINE_S):
    """Cosine schedule, `alpha_bar(t) = f(t) / f(0)`, `f(t) = cos((t + s)/(1 + s) * pi/2)**2`, t in [0, 1].

    Note alpha_bar(1) = cos(pi/2)**2/f(0) = 0 in exact arithmetic (sigma = inf); callers clip t
    (or alpha_bar) as Nichol & Dhariwal do.
    """
    t = jnp.asarray(t)
    f = jnp.square(jnp.cos((t + s) / (1.0 + s) * (jnp.pi / 2)))
    f0 = math.cos(s / (1.0 + s) * math.pi / 2) ** 2
    return f / f0


def vp_cosine_sigma(t, s=_COSINE_S):
    """VE sigma of cosine-schedule time t: `sqrt(1/alpha_bar(t) - 1)`."""
    return sigma_from_alpha_bar(vp_cosine_alpha_bar(t, s))


# --------------------------------------------------------------------------------------------
# Discrete DDPM schedules (1000 training steps) and inference timestep spacings
# --------------------------------------------------------------------------------------------


def ddpm_betas(
    num_train_timesteps: int = 1000,
    beta_start=1e-4,
    beta_end=0.02,
    kind: str = "linear",
    dtype=jnp.float32,
) -> jax.Array:
    """DDPM betas `[T]`.

    kind:
      "linear": `linspace(beta_start, beta_end, T)` (Ho et al. 2020: 1e-4 .. 0.02);
      "scaled_linear": `linspace(sqrt(beta_start), sqrt(beta_end), T)**2` (Stable Diffusion uses
        beta_start 0.00085, beta_end 0.012);
      "cosine": `beta_t = min(1 - alpha_bar(t/T)/alpha_bar((t-1)/T), 0.999)` with the cosine
        `alpha_bar` (Nichol & Dhariwal 2021; beta_start/beta_end ignored).
    """
    T = _static_positive_int(num_train_timesteps, "num_train_timesteps")
    if kind == "linear":
        return jnp.linspace(jnp.asarray(beta_start, dtype), jnp.asarray(beta_end, dtype), T)
    if kind == "scaled_linear":
        lo = jnp.sqrt(jnp.asarray(beta_start, dtype))
        hi = jnp.sqrt(jnp.asarray(beta_end, dtype))
        return jnp.square(jnp.linspace(lo, hi, T))
    if kind == "cosine":
        t = jnp.arange(T + 1, dtype=jnp.float64 if jax.config.jax_enable_x64 else dtype) / T
        ab = vp_cosine_alpha_bar(t)
        return jnp.minimum(1.0 - ab[1:] / ab[:-1], 0.999).astype(dtype)
    raise ValueError(f"unknown beta schedule {kind!r}; valid: 'linear', 'scaled_linear', 'cosine'")


def alphas_cumprod(betas) -> jax.Array:
    """`alpha_bar_t = prod_{s <= t} (1 - beta_s)`, `[T]`."""
    return jnp.cumprod(1.0 - jnp.asarray(betas))


def ddpm_timesteps(
    num_steps: int,
    num_train_timesteps: int = 1000,
    spacing: str = "leading",
    steps_offset: int = 0,
) -> np.ndarray:
    """Decreasing integer timesteps for `num_steps`-step inference on a T-step DDPM (static).

    spacing (the conventions of the diffusers schedulers, as used by SD pipelines):
      "leading":  `arange(num_steps) * (T // num_steps) + steps_offset`, reversed
                  (T=1000, 10 steps, offset 1 -> 901, 801, ..., 1);
      "trailing": `round(arange(T, 0, -T/num_steps)) - 1` (-> 999, 899, ..., 99);
      "linspace": `round(linspace(0, T-1, num_steps))`, reversed (-> 999, 888, ..., 0).

    Returns:
      `[num_steps]` int32 numpy array (shapes depend on it, so it is host data).
    """
    n = _static_positive_int(num_steps, "num_steps")
    T = _static_positive_int(num_train_timesteps, "num_train_timesteps")
    if n > T:
        raise ValueError(f"num_steps={n} exceeds num_train_timesteps={T}")
    if spacing == "leading":
        ts = (np.arange(n) * (T // n))[::-1] + steps_offset
    elif spacing == "trailing":
        ts = np.round(np.arange(T, 0, -T / n)).astype(np.int64) - 1
    elif spacing == "linspace":
        ts = np.round(np.linspace(0, T - 1, n))[::-1]
    else:
        raise ValueError(
            f"unknown timestep spacing {spacing!r}; valid: 'leading', 'trailing', 'linspace'"
        )
    ts = np.asarray(ts, np.int32)
    if ts.max() >= T or ts.min() < 0:
        raise ValueError(f"timesteps out of range [0, {T}) with steps_offset={steps_offset}")
    return ts


def ddpm_sigmas(alpha_bar, timesteps, *, final_sigma=0.0) -> jax.Array:
    """VE sigma grid for discrete timesteps: `sigma(t) = sqrt((1 - alpha_bar_t)/alpha_bar_t)`.

    Args:
      alpha_bar: `[T]` cumulative products (`alphas_cumprod(ddpm_betas(...))`).
      timesteps: `[n]` decreasing ints (`ddpm_timesteps`).
      final_sigma: the level after the last timestep: 0 (DDIM with `set_alpha_to_one=True`,
        i.e. a clean output) or e.g. `sigma_from_alpha_bar(alpha_bar[0])` (SD's
        `set_alpha_to_one=False`).

    Returns:
      `[n + 1]` decreasing sigmas, ready for `jaxdiff.diffusion.solvers.sample`.
    """
    ab = jnp.asarray(alpha_bar)[jnp.asarray(timesteps)]
    sig = sigma_from_alpha_bar(ab)
    return jnp.concatenate([sig, jnp.asarray(final_sigma, sig.dtype)[None]])


def sigma_to_ddpm_t(sigma, alpha_bar) -> jax.Array:
    """Continuous DDPM timestep of a VE sigma by linear interpolation in log-sigma.

    For feeding discrete-time VP networks (which take t in [0, T-1]) at arbitrary sigmas:
    `log sigma(t)` is increasing in t, so invert it piecewise linearly (as k-diffusion's
    discrete wrappers do). Returns float t with the same shape as `sigma`, clipped to [0, T-1].
    """
    log_sig = jnp.log(sigma_from_alpha_bar(jnp.asarray(alpha_bar)))
    T = log_sig.shape[0]
    ls = jnp.log(jnp.asarray(sigma))
    idx = jnp.clip(jnp.searchsorted(log_sig, ls, side="right") - 1, 0, T - 2)
    lo, hi = log_sig[idx], log_sig[idx + 1]
    w = jnp.clip((ls - lo) / (hi - lo), 0.0, 1.0)
    return idx.astype(ls.dtype) + w
