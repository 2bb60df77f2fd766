"""Reward-guided sampling: LiDAR (lookahead sample reward guidance) and the test-time baselines
best-of-N, gradient guidance through Tweedie's estimate (DPS / Universal Guidance forward),
SVDD (soft value-based decoding) and FK steering (SMC), with one interface and cost accounting
(lidar.md §4, §9-§11).

Interface. Every method is a pure, jittable function

    method(key, denoise, <reward_fn | lookahead set>, x_T, sigmas, *, <hparams>) -> (samples, aux)

  * `denoise(x, sigma: [N], cond) -> x0_hat` in the EDM/VE convention (DESIGN.md §2);
  * `reward_fn(x0: [N, ...]) -> [N]` (rewards.py); LiDAR only needs rewards of its lookahead set;
  * `x_T: [N, ...]` prior draws (`solvers.prior_sample`), `sigmas: [T + 1]` the grid;
  * `aux: GuidanceAux` with exact per-run `Cost` counters (denoiser forwards/backwards, reward
    forwards/backwards, in per-sample evaluations) updated inside the jitted loop. Wall time is
    measured by the caller (AOT compile, `block_until_ready`, medians: benchmarks/common.py).
Hyperparameters (lam, scale, guidance window, eta, temperatures, ESS threshold) are traced: changing
them never recompiles. Static: shapes, step counts, candidate/particle counts, the solver.

Guidance as a score shift. A guidance vector `g` (an estimate of `grad_x log E[e^{lam r} | x]`) is
injected as `score' = score + scale * g`, i.e. in VE denoiser form

    D'(x; sigma) = D(x; sigma) + scale * sigma**2 * g,

active only where `window[0] <= sigma <= window[1]` (a `jnp.where`, traced). `D'` is an ordinary
denoiser, so any core solver runs guided; the default is the reference's DDIM with eta = 1
(`solvers.ddim(1.0)`). The reference's "guidance while DDPM t > 200" is a window
`(sigma_t(200) + tiny, inf)`; its `eps <- eps - sqrt(1 - alpha_bar) scale g_vp` is the same score
shift (lookahead.py docstring).

Randomness: sample i uses `fold_in(key, offset + i)` and step k `fold_in(sample_key, k + 1)`, the
core solvers' streams, so a method that reduces to the base sampler (FK steering with zero
reward, SVDD with one candidate) reproduces `solvers.sample(ddim(eta))` exactly.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jaxdiff.diffusion import solvers as S
from jaxdiff.diffusion.lookahead import (
    Cost,
    LookaheadSet,
    check_particles,
    check_lam,
    check_lookahead_set,
    efr_shift,
    lookahead_phase,
    select_lookahead,
)
from jaxdiff.diffusion.schedules import broadcast_like
from jaxdiff.random import sample_keys, step_key

_RESAMPLE_STREAM = 0x7FFFFFF0  # fold_in tag of FK steering's resampling keys (not a sample index)
_SELECT_STREAM = 0x7FFFFFF1  # SVDD's per-step candidate selection


class GuidanceAux(NamedTuple):
    """Side outputs shared by all methods.

    Attributes:
      cost: `Cost` of this run (all N samples), excluding the lookahead phase.
      lookahead_cost: `Cost` of the lookahead phase (LiDAR; zeros otherwise), reported separately;
        amortise it over all particles/runs that share the set.
      nfe: int32, denoiser evaluations per sample along one trajectory (algorithmic).
      rewards: final rewards where the method computes them (best-of-N: of the returned samples;
        SVDD: value of the last selection; FK: at the last resampling step), else None.
      trace: dict of method-specific traces (FK: "ess" `[T, G]`, "resampled" `[T, G]`; best-of-N:
        "index" `[G]`, "all_rewards" `[N]`).
    """

    cost: Cost
    lookahead_cost: Cost
    nfe: jax.Array
    rewards: jax.Array | None = None
    trace: dict | None = None


def _solver(solver):
    if solver is None:
        return S.ddim(1.0)
    return S.get_solver(solver) if isinstance(solver, str) else solver


def _check_window(window):
    if len(window) != 2:
        raise ValueError(f"window must be (sigma_lo, sigma_hi), got {window}")
    lo, hi = window
    try:
        if float(lo) > float(hi):
            raise ValueError(f"window must have sigma_lo <= sigma_hi, got {window}")
    except (TypeError, jax.errors.ConcretizationTypeError):
        pass
    return window


def _active(sigma, window):
    lo, hi = window
    return (sigma > 0) & (sigma >= lo) & (sigma <= hi)


# --------------------------------------------------------------------------------------------
# Guided denoisers
# --------------------------------------------------------------------------------------------


def lidar_denoiser(denoise: Callable, look: LookaheadSet, lam, scale=1.0,
                   window=(0.0, jnp.inf)) -> Callable:
    """LiDAR-guided denoiser `D' = D + scale * sum_i (w^r_i - w_i) xhat_i` inside the window.

    (`= D + scale sigma**2 grad rhat`, lookahead.py). No network backprop; the extra arithmetic
    is one `[N, d] x [d, n]` matmul per evaluation. `lam`, `scale`, `window` may be traced.
    """
    _check_window(window)

    def den(x, sigma, cond=None):
        d0 = denoise(x, sigma, cond)
        active = _active(sigma, window)
        safe = jnp.where(sigma > 0, sigma, 1.0)
        shift = efr_shift(x, safe, look, lam)
        coef = jnp.where(active, jnp.asarray(scale, jnp.float32), 0.0).astype(x.dtype)
        return d0 + broadcast_like(coef, shift) * shift

    return den


def tweedie_grad_denoiser(denoise: Callable, reward_fn: Callable, lam, scale=1.0,
                          window=(0.0, jnp.inf)) -> Callable:
    """Gradient guidance through Tweedie's estimate (DPS / UG forward guidance):
    `g = lam * grad_x r(D(x; sigma))` (the Taylor/Tweedie approximation of the EFR gradient),
    `D' = D + scale * sigma**2 * g`. Each evaluation: one denoiser forward and VJP, one reward
    forward and VJP (executed also outside the window: the window is a `jnp.where`)."""
    _check_window(window)

    def den(x, sigma, cond=None):
        d0, den_vjp = jax.vjp(lambda y: denoise(y, sigma, cond), x)
        r, r_vjp = jax.vjp(reward_fn, d0)
        (gd,) = r_vjp(jnp.ones_like(r))
        (gx,) = den_vjp(gd.astype(d0.dtype))
        active = _active(sigma, window)
        coef = jnp.where(active, jnp.asarray(scale * lam, jnp.float32) * jnp.square(sigma), 0.0)
        return d0 + broadcast_like(coef.astype(x.dtype), gx) * gx

    return den


# --------------------------------------------------------------------------------------------
# Samplers
# --------------------------------------------------------------------------------------------


def base_sample(key, denoise, x_T, sigmas, *, solver=None, cond=None, offset=0):
    """The unguided sampler with the common interface (cost: N * NFE denoiser forwards)."""
    x, aux = S.sample(_solver(solver), denoise, x_T, sigmas, key, cond, offset=offset)
    n = x_T.shape[0]
    return x, GuidanceAux(Cost.of(denoiser_fwd=n * aux.nfe), Cost.zeros(), aux.nfe)


def lidar_sample(
    key: jax.Array,
    denoise: Callable,
    look: LookaheadSet,
    x_T: jax.Array,
    sigmas: jax.Array,
    *,
    lam,
    scale=1.0,
    window=(0.0, jnp.inf),
    solver: S.Solver | str | None = None,
    cond: Any = None,
    offset=0,
) -> tuple[jax.Array, GuidanceAux]:
    """LiDAR phase 2: particles `x_T: [N, ...]` guided by a shared lookahead set.

    Args:
      look: `LookaheadSet` (lookahead.py), same sample shape as `x_T`; shared by every particle
        and step. For per-prompt sets, `vmap` this function over stacked sets (`stack_lookahead`).
      lam: reward tilt lambda > 0 (reference default 5000 for ImageReward-scale rewards).
      scale: guidance multiplier (theory: 1; reference: 12.5).
      window: `(sigma_lo, sigma_hi)` where guidance is active.
      solver: any core solver (default `ddim(1.0)`, the reference's DDIM eta = 1).

    Returns:
      `(x0 [N, ...], GuidanceAux)`; `cost.denoiser_fwd = N * NFE`, no backwards, no reward calls;
      `lookahead_cost = look.cost`.
    """
    check_lookahead_set(look)
    check_lam(lam)
    check_particles(x_T, look)
    den = lidar_denoiser(denoise, look, lam, scale, window)
    x, aux = S.sample(_solver(solver), den, x_T, sigmas, key, cond, offset=offset)
    n = x_T.shape[0]
    return x, GuidanceAux(Cost.of(denoiser_fwd=n * aux.nfe), look.cost, aux.nfe)


LOOKAHEAD_STREAM = 0x7FFFFFF2  # fold_in tag of the lookahead phase's key in `lidar`
SUBSET_STREAM = 0x7FFFFFF3


def lidar(
    key: jax.Array,
    denoise: Callable,
    reward_fn: Callable,
    x_T: jax.Array,
    sigmas: jax.Array,
    *,
    num_lookahead: int,
    lookahead_steps: int = 5,
    lookahead_solver: S.Solver | str = "dpmpp_2m",
    subset: int | None = None,
    subset_mode: str = "random",
    lam,
    scale=1.0,
    window=(0.0, jnp.inf),
    solver: S.Solver | str | None = None,
    cond: Any = None,
    lookahead_cond: Any = None,
    offset=0,
) -> tuple[jax.Array, GuidanceAux]:
    """Both LiDAR phases in one call: a lookahead set of `num_lookahead` samples
    (`lookahead.lookahead_phase` with `lookahead_steps` steps of `lookahead_solver`, key
    `fold_in(key, 0x7FFFFFF2)`), optionally a subset of `subset` of them (`select_lookahead`,
    "random" as the reference or "top"), then `lidar_sample` on `x_T`. For many runs sharing one
    set, call the two phases yourself and reuse the set (that is the point of LiDAR).

    Returns `(x0, aux)` with `aux.lookahead_cost` the cost of the whole lookahead phase.
    """
    check_lam(lam)
    look = lookahead_phase(jax.random.fold_in(key, LOOKAHEAD_STREAM), denoise, reward_fn,
                             (int(num_lookahead),) + tuple(x_T.shape[1:]), steps=lookahead_steps,
                             solver=lookahead_solver, cond=lookahead_cond, dtype=x_T.dtype)
    if subset is not None:
        look = select_lookahead(look, subset, key=jax.random.fold_in(key, SUBSET_STREAM),
                                  mode=subset_mode)
    return lidar_sample(key, denoise, look, x_T, sigmas, lam=lam, scale=scale, window=window,
                        solver=solver, cond=cond, offset=offset)


def gradient_guidance_sample(
    key, denoise, reward_fn, x_T, sigmas, *, lam, scale=1.0, window=(0.0, jnp.inf),
    solver=None, cond=None, offset=0,
) -> tuple[jax.Array, GuidanceAux]:
    """DPS / Universal-Guidance forward guidance with any core solver (`tweedie_grad_denoiser`).

    Cost: `N * NFE` each of denoiser forwards, denoiser VJPs, reward forwards and reward VJPs.
    """
    check_lam(lam)
    den = tweedie_grad_denoiser(denoise, reward_fn, lam, scale, window)
    x, aux = S.sample(_solver(solver), den, x_T, sigmas, key, cond, offset=offset)
    c = x_T.shape[0] * aux.nfe
    return x, GuidanceAux(Cost.of(c, c, c, c), Cost.zeros(), aux.nfe)


def _groups_of(n, group_size, name):
    k = int(group_size)
    if k < 1 or n % k:
        raise ValueError(f"{name}={group_size} must be >= 1 and divide the batch N={n}")
    return n // k, k


def _check_rewards_shape(r, n):
    if jnp.shape(r) != (n,):
        raise ValueError(f"reward_fn must return [N]={n} rewards, got shape {jnp.shape(r)}")


def best_of_n(
    key, denoise, reward_fn, x_T, sigmas, *, group_size, solver=None, cond=None, offset=0,
) -> tuple[jax.Array, GuidanceAux]:
    """Best-of-N: sample all of `x_T` with the base solver, keep the highest-reward sample of each
    consecutive group of `group_size` (N in the paper's notation).

    Returns `(best [N / group_size, ...], aux)`, `aux.rewards` = the best rewards, `aux.trace` =
    {"index": `[G]` index within the group, "all_rewards": `[N]`}. Cost: N * NFE forwards, N reward
    calls.
    """
    n = x_T.shape[0]
    g, k = _groups_of(n, group_size, "group_size")
    x, aux = S.sample(_solver(solver), denoise, x_T, sigmas, key, cond, offset=offset)
    r = reward_fn(x)
    _check_rewards_shape(r, n)
    idx = jnp.argmax(r.reshape(g, k), axis=1)
    flat = jnp.arange(g) * k + idx
    cost = Cost.of(denoiser_fwd=n * aux.nfe, reward_fwd=n)
    return x[flat], GuidanceAux(cost, Cost.zeros(), aux.nfe, r[flat],
                                {"index": idx, "all_rewards": r})


def _repeat_cond(cond, m):
    return jax.tree.map(lambda c: jnp.repeat(jnp.asarray(c), m, axis=0), cond)


def svdd_sample(
    key, denoise, reward_fn, x_T, sigmas, *, num_candidates: int, temperature=0.0, eta=1.0,
    cond=None, offset=0,
) -> tuple[jax.Array, GuidanceAux]:
    """SVDD-PM (Li et al. 2024): per step draw M candidates from the DDIM(eta) kernel, value each
    by `r(D(candidate; sigma_next))`, keep one per particle: sampled from
    `softmax(values / temperature)`, or the argmax when `temperature == 0` (traced).

    The kernel is `solvers.ddim(eta)`: candidate 0 uses exactly the base sampler's noise, so
    M = 1 reproduces `solvers.sample(ddim(eta))`. The value evaluation's denoiser output is reused
    as the next step's `D(x)` (no extra call); on a final step to sigma = 0 the candidate is the
    sample itself and is scored directly.

    Cost: denoiser forwards `N (1 + M * #{steps with sigma_next > 0})`, reward forwards `N M T`.
    """
    m = int(num_candidates)
    if m < 1:
        raise ValueError(f"num_candidates must be >= 1, got {num_candidates}")
    x_T = jnp.asarray(x_T)
    n, shape, dt = x_T.shape[0], x_T.shape, x_T.dtype
    sigmas = S.check_sigmas(sigmas).astype(dt)
    keys = sample_keys(key, n, offset)
    temp = jnp.asarray(temperature, jnp.float32)
    eta = jnp.asarray(eta, dt)
    cond_m = None if cond is None else _repeat_cond(cond, m)

    def den(x, s, c, rows):
        return denoise(x, jnp.broadcast_to(s, (rows,)).astype(dt), c)

    d_init = den(x_T, sigmas[0], cond, n)

    def body(carry, inp):
        x, d0, cost = carry
        k, s, s_next = inp
        skeys = jax.vmap(step_key, in_axes=(0, None))(keys, k + 1)
        up, down = S.ddim_sigmas_up_down(s, s_next, eta)

        def cand_noise(sk):
            z0 = jax.random.normal(sk, shape[1:], dt)[None]
            if m == 1:
                return z0
            rest = jax.vmap(lambda j: jax.random.normal(jax.random.fold_in(sk, j), shape[1:], dt))(
                jnp.arange(1, m, dtype=jnp.uint32))
            return jnp.concatenate([z0, rest], axis=0)

        z = jax.vmap(cand_noise)(skeys)  # [N, M, ...]
        base = d0 + (down / s) * (x - d0)
        cand = base[:, None] + up * z  # candidate 0 == the base DDIM step
        flat = cand.reshape((n * m,) + shape[1:])

        def with_den(_):
            d = den(flat, s_next, cond_m, n * m)
            return d, reward_fn(d)

        def at_zero(_):
            return flat, reward_fn(flat)

        d_c, v = lax.cond(s_next > 0, with_den, at_zero, None)
        _check_rewards_shape(v, n * m)
        v = v.reshape(n, m).astype(jnp.float32)
        sel_keys = jax.vmap(lambda sk: jax.random.fold_in(sk, _SELECT_STREAM))(skeys)
        safe_t = jnp.where(temp > 0, temp, 1.0)
        sampled = jax.vmap(jax.random.categorical)(sel_keys, v / safe_t)
        sel = jnp.where(temp > 0, sampled, jnp.argmax(v, axis=1))
        rows = jnp.arange(n)
        x_new = cand[rows, sel]
        d_new = d_c.reshape(cand.shape)[rows, sel]
        cost = cost.plus(Cost.of(denoiser_fwd=jnp.where(s_next > 0, n * m, 0), reward_fwd=n * m))
        return (x_new, d_new, cost), v[rows, sel]

    T = sigmas.shape[0] - 1
    steps = (jnp.arange(T, dtype=jnp.uint32), sigmas[:-1], sigmas[1:])
    (x, _, cost), vals = lax.scan(body, (x_T, d_init, Cost.of(denoiser_fwd=n)), steps)
    nfe = 1 + m * jnp.sum(sigmas[1:] > 0).astype(jnp.int32)
    return x, GuidanceAux(cost, Cost.zeros(), nfe, vals[-1], {"values": vals})


FK_POTENTIALS = ("diff", "max", "sum", "rt")


def fk_resample_schedule(num_steps: int, start: int = 20, end: int = 80,
                         freq: int = 20) -> np.ndarray:
    """FK-steering resampling steps (reference `fkd_class.py`): `arange(start, end + 1, freq)`
    plus the last step, as a `[num_steps]` bool array (pass it to `fk_steering_sample`)."""
    if not (0 <= start <= end and freq >= 1):
        raise ValueError(f"need 0 <= start <= end and freq >= 1, got {start}, {end}, {freq}")
    mask = np.zeros(num_steps, bool)
    idx = np.arange(start, end + 1, freq)
    mask[idx[idx < num_steps]] = True
    mask[-1] = True
    return mask


def fk_steering_sample(
    key, denoise, reward_fn, x_T, sigmas, *, num_particles: int, lam, potential: str = "diff",
    resample_steps=None, ess_threshold=0.5, eta=1.0, cond=None, offset=0,
) -> tuple[jax.Array, GuidanceAux]:
    """FK steering (Singhal et al. 2025): SMC over groups of `num_particles` consecutive particles
    with the DDIM(eta) kernel and intermediate rewards `r_t = r(D(x_t; sigma_t))`.

    At every step k with `resample_steps[k]` (default: every step), the potential
    `log G = lam * {diff: r_t - r_prev, max: max(r_max, r_t), sum: r_sum + r_t, rt: r_t}` is added
    to each particle's log-weight; a group is resampled (multinomial, indices within the group)
    when its ESS `1 / sum w**2 < ess_threshold * num_particles`, after which its log-weights reset
    to 0. Resampling happens on `(x_t, D(x_t))` before the kernel step, so no extra denoiser call
    is needed. With zero rewards no group is ever resampled and the result equals
    `solvers.sample(ddim(eta))` exactly.

    Returns `(x0 [N, ...], aux)`; `aux.trace = {"ess": [T, G], "resampled": [T, G]}`, `aux.rewards`
    = rewards at the last resampling step. Cost: N * T denoiser forwards (every step has sigma >
    0), N reward calls per resampling step.
    """
    if potential not in FK_POTENTIALS:
        raise ValueError(f"potential must be one of {FK_POTENTIALS}, got {potential!r}")
    check_lam(lam)
    x_T = jnp.asarray(x_T)
    n, shape, dt = x_T.shape[0], x_T.shape, x_T.dtype
    g, k = _groups_of(n, num_particles, "num_particles")
    sigmas = S.check_sigmas(sigmas).astype(dt)
    T = sigmas.shape[0] - 1
    rs = jnp.ones((T,), bool) if resample_steps is None else jnp.asarray(resample_steps, bool)
    if rs.shape != (T,):
        raise ValueError(f"resample_steps must be [T]={T} bools, got shape {rs.shape}")
    keys = sample_keys(key, n, offset)
    group_offset = jnp.asarray(offset, jnp.uint32) // jnp.uint32(k)
    rbase = jax.random.fold_in(key, _RESAMPLE_STREAM)
    gkeys = sample_keys(rbase, g, group_offset)
    lam = jnp.asarray(lam, jnp.float32)
    thr = jnp.asarray(ess_threshold, jnp.float32)
    eta = jnp.asarray(eta, dt)

    def body(carry, inp):
        x, lw, r_prev, r_max, r_sum, r_last, cost = carry
        step, s, s_next, do_rs = inp
        d0 = denoise(x, jnp.broadcast_to(s, (n,)), cond)

        def rewards(_):
            r = reward_fn(d0)
            _check_rewards_shape(r, n)
            return r.astype(jnp.float32)

        r = lax.cond(do_rs, rewards, lambda _: jnp.zeros((n,), jnp.float32), None)
        log_g = lam * {"diff": r - r_prev, "max": jnp.maximum(r_max, r), "sum": r_sum + r,
                       "rt": r}[potential]
        lw = lw + jnp.where(do_rs, log_g, 0.0)
        r_prev = jnp.where(do_rs, r, r_prev)
        r_max = jnp.where(do_rs, jnp.maximum(r_max, r), r_max)
        r_sum = jnp.where(do_rs, r_sum + r, r_sum)
        r_last = jnp.where(do_rs, r, r_last)
        lwg = lw.reshape(g, k)
        w = jax.nn.softmax(lwg, axis=1)
        ess = 1.0 / jnp.sum(jnp.square(w), axis=1)  # [G]
        resample = do_rs & (ess < thr * k)
        ks = jax.vmap(step_key, in_axes=(0, None))(gkeys, step)
        draws = jax.vmap(lambda kk, l: jax.random.categorical(kk, l, shape=(k,)))(ks, lwg)
        local = jnp.where(resample[:, None], draws, jnp.arange(k)[None, :])
        idx = (jnp.arange(g)[:, None] * k + local).reshape(n)
        x, d0, r_prev, r_max, r_sum, r_last = (
            a[idx] for a in (x, d0, r_prev, r_max, r_sum, r_last))
        lw = jnp.where(jnp.repeat(resample, k), 0.0, lw[idx])
        # The DDIM(eta) kernel, written exactly as solvers.ddim (same noise stream).
        skeys = jax.vmap(step_key, in_axes=(0, None))(keys, step + 1)
        up, down = S.ddim_sigmas_up_down(s, s_next, eta)
        z = S.normal_like(skeys, x)
        x = d0 + (down / s) * (x - d0) + up * z
        cost = cost.plus(Cost.of(denoiser_fwd=n, reward_fwd=jnp.where(do_rs, n, 0)))
        return (x, lw, r_prev, r_max, r_sum, r_last, cost), (ess, resample)

    zeros = jnp.zeros((n,), jnp.float32)
    init = (x_T, zeros, zeros, jnp.full((n,), -jnp.inf), zeros, zeros, Cost.zeros())
    steps = (jnp.arange(T, dtype=jnp.uint32), sigmas[:-1], sigmas[1:], rs)
    (x, _, _, _, _, r_last, cost), (ess, resampled) = lax.scan(body, init, steps)
    return x, GuidanceAux(cost, Cost.zeros(), jnp.asarray(T, jnp.int32), r_last,
                          {"ess": ess, "resampled": resampled})
