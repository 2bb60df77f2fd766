"""LiDAR's expected-future-reward (EFR) estimator from lookahead samples, its closed-form gradient,
and the lookahead phase (lidar.md §2, §3, §9).

Setting. A corrupted sample `x = alpha * x0 + sigma * eps` and a *lookahead set* of clean samples
`xhat_i` (`i < n`, drawn once by a cheap few-step solver) with rewards `r_i = r(xhat_i)`. With
kernel logits

    a_i(x) = -||x - alpha xhat_i||**2 / (2 sigma**2)

the estimator of `r^lam(x) = log E_{p(x0 | x)}[exp(lam r(x0))]` is (self-normalised importance
sampling of the posterior with the lookahead distribution as proposal)

    rhat(x) = logsumexp_i(a_i + lam r_i) - logsumexp_i(a_i),

and its gradient, with `w = softmax(a)`, `w^r = softmax(a + lam r)`, is closed form (no network
backprop; the `x` terms cancel because both weight vectors sum to one):

    grad_x rhat = (alpha / sigma**2) * sum_i (w^r_i - w_i) xhat_i.

Conventions. jaxdiff's core is EDM/VE (`alpha = 1`, DESIGN.md §2); that is the default here. The
reference code is VP (`alpha = sqrt(alpha_bar)`, `sigma = sqrt(1 - alpha_bar)` acting on
`x_vp = x_ve / sqrt(1 + sigma_ve**2)`). The logits are identical in both conventions
(`a_i` is invariant under the rescaling), so the estimator values agree, and the gradients are
related by the chain rule: `grad_ve = alpha_vp * grad_vp` (`vp_grad_to_ve`, `ve_grad_to_vp`). In VE
form the guided denoiser is simply `D'(x) = D(x) + scale * sum_i (w^r_i - w_i) xhat_i`
(`efr_shift`), which equals the reference's `eps <- eps - sqrt(1 - alpha_bar) * scale * g_vp`.

Numerics. The `||x||**2` term of `a_i` is constant over i and dropped (softmax is
shift-invariant), and both `x` and the lookahead samples are expressed relative to the lookahead
mean `center` (exact: logits and the weight difference are translation invariant) to keep the
magnitudes of the logits small. Logits, softmaxes and the weighted sum run in float32 (bfloat16
inputs are upcast), with a HIGHEST-precision matmul: one `[N, d] x [d, n]` product, never an
`[N, n, d]` difference tensor. Outputs are cast back to `x.dtype`.

Padding. `LookaheadSet.mask` marks valid entries; masked entries get `-inf` logits, so ragged
per-prompt sets can be padded to a common `n` and vmapped.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jaxdiff.diffusion import schedules as sch
from jaxdiff.diffusion import solvers as S


# --------------------------------------------------------------------------------------------
# Cost accounting (lidar.md §11), shared with guidance.py
# --------------------------------------------------------------------------------------------


class Cost(NamedTuple):
    """Per-run work counters, in *per-sample* evaluations (a denoiser call on a batch of B counts
    B). int32 scalars, updated inside jitted code. Wall time is measured by the caller.

    Attributes:
      denoiser_fwd: denoiser (network) forward evaluations.
      denoiser_bwd: denoiser VJPs (backprop through the network).
      reward_fwd: reward-model forward evaluations.
      reward_bwd: reward-model VJPs.
    """

    denoiser_fwd: jax.Array
    denoiser_bwd: jax.Array
    reward_fwd: jax.Array
    reward_bwd: jax.Array

    @staticmethod
    def zeros() -> "Cost":
        z = jnp.zeros((), jnp.int32)
        return Cost(z, z, z, z)

    @staticmethod
    def of(denoiser_fwd=0, denoiser_bwd=0, reward_fwd=0, reward_bwd=0) -> "Cost":
        c = lambda v: jnp.asarray(v, jnp.int32)  # noqa: E731
        return Cost(c(denoiser_fwd), c(denoiser_bwd), c(reward_fwd), c(reward_bwd))

    def plus(self, other: "Cost") -> "Cost":
        return Cost(*(a + b for a, b in zip(self, other)))

    def as_dict(self) -> dict[str, int]:
        """Host-side plain ints (call outside jit)."""
        return {k: int(v) for k, v in self._asdict().items()}


# --------------------------------------------------------------------------------------------
# Lookahead set
# --------------------------------------------------------------------------------------------


class LookaheadSet(NamedTuple):
    """Lookahead samples and their rewards, shared by all particles and steps (a pytree).

    Attributes:
      samples: `[n, ...]` clean lookahead samples `xhat_i` (trailing shape = the sample shape).
      rewards: `[n]` float32 rewards `r(xhat_i)` (0 at masked entries).
      mask: `[n]` bool, valid entries (padding and subsets are masked out).
      center: `[d]` float32 mean of the valid samples (numerical reference point).
      sq_norms: `[n]` float32 `||xhat_i - center||**2`.
      cost: `Cost` of producing the set (lookahead phase), reported separately from the guided
        run and amortised over every particle that uses it.
    """

    samples: jax.Array
    rewards: jax.Array
    mask: jax.Array
    center: jax.Array
    sq_norms: jax.Array
    cost: Cost

    @property
    def size(self) -> int:
        return self.samples.shape[0]


def _concrete(a):
    try:
        return np.asarray(a)
    except (jax.errors.TracerArrayConversionError, jax.errors.ConcretizationTypeError):
        return None


def make_lookahead_set(samples, rewards, mask=None, cost: Cost | None = None) -> LookaheadSet:
    """Build a `LookaheadSet` from samples `[n, ...]` and rewards `[n]` (validated).

    Raises ValueError for an empty set, a rewards vector that is not `[n]`, a mask that is not
    `[n]` or selects nothing, and NaN/Inf rewards on valid entries (checked when concrete; under
    `jit` call `check_lookahead_set` on the result outside).
    """
    samples = jnp.asarray(samples)
    if samples.ndim < 2:
        raise ValueError(f"samples must be [n, ...] with a sample shape, got shape {samples.shape}")
    if not jnp.issubdtype(samples.dtype, jnp.floating):
        raise TypeError(f"samples must be float, got {samples.dtype}")
    n = samples.shape[0]
    if n == 0:
        raise ValueError("the lookahead set is empty (n = 0): LiDAR needs at least one sample")
    rewards = jnp.asarray(rewards)
    if rewards.shape != (n,):
        raise ValueError(f"rewards must be [n]={n}, got shape {rewards.shape}")
    rewards = rewards.astype(jnp.float32)
    mask = jnp.ones((n,), bool) if mask is None else jnp.asarray(mask, bool)
    if mask.shape != (n,):
        raise ValueError(f"mask must be [n]={n}, got shape {mask.shape}")
    rewards = jnp.where(mask, rewards, 0.0)  # padding values never matter; keep them finite
    flat = samples.reshape(n, -1).astype(jnp.float32)
    cnt = jnp.maximum(jnp.sum(mask), 1).astype(jnp.float32)
    center = jnp.sum(jnp.where(mask[:, None], flat, 0.0), axis=0) / cnt
    sq = jnp.sum(jnp.square(flat - center), axis=-1)
    look = LookaheadSet(samples, rewards, mask, center, sq, Cost.zeros() if cost is None else cost)
    check_lookahead_set(look, _raw_rewards=jnp.asarray(rewards))
    return look


def check_lookahead_set(look: LookaheadSet, *, _raw_rewards=None) -> LookaheadSet:
    """Host-side validation (no-op on traced values): non-empty mask, finite rewards."""
    mask = _concrete(look.mask)
    r = _concrete(look.rewards if _raw_rewards is None else _raw_rewards)
    if mask is not None and not mask.any():
        raise ValueError("the lookahead set is empty: its mask selects no sample")
    if r is not None:
        valid = r if mask is None else r[mask.astype(bool)]
        if not np.all(np.isfinite(valid)):
            bad = int(np.sum(~np.isfinite(valid)))
            raise ValueError(f"lookahead rewards contain {bad} NaN/Inf value(s); fix the reward "
                             "function or drop those samples (mask them out)")
    return look


def check_lam(lam) -> jax.Array:
    """`lam` (the reward tilt) must be > 0 (checked when concrete; traced values pass)."""
    host = _concrete(lam)
    if host is not None:
        if host.shape != ():
            raise ValueError(f"lam must be a scalar, got shape {host.shape}")
        if not np.isfinite(host) or host <= 0:
            raise ValueError(f"lam (reward tilt lambda) must be a finite number > 0, got {host}")
    return jnp.asarray(lam, jnp.float32)


def check_particles(x, look: LookaheadSet):
    """`x` as an array `[N, *sample_shape]` of the lookahead set's sample shape (ValueError
    otherwise)."""
    x = jnp.asarray(x)
    if x.ndim < 1 or x.shape[1:] != look.samples.shape[1:]:
        raise ValueError(
            f"lookahead samples have sample shape {look.samples.shape[1:]} but x has "
            f"{x.shape[1:]} (x must be [N, *sample_shape])"
        )
    return x


def _per_sample(v, n):
    v = jnp.asarray(v, jnp.float32)
    if v.ndim == 0:
        return jnp.broadcast_to(v, (n,))
    if v.shape != (n,):
        raise ValueError(f"sigma/alpha must be a scalar or [N]={n}, got shape {v.shape}")
    return v


# --------------------------------------------------------------------------------------------
# Estimator and gradient
# --------------------------------------------------------------------------------------------


def efr_logits(x, sigma, look: LookaheadSet, *, alpha=1.0):
    """Kernel logits `a_i(x) + ||x - alpha c||**2/(2 sigma**2)` (the i-independent part dropped):
    `[N, n]` float32, `-inf` at masked entries. `x: [N, ...]`; `sigma`, `alpha`: scalar or `[N]`.

    With `y = x - alpha c`, `z_i = xhat_i - c`: `a_i = (alpha <y, z_i> - alpha**2 ||z_i||**2 / 2)
    / sigma**2` up to the dropped term.
    """
    x = check_particles(x, look)
    N = x.shape[0]
    sigma = _per_sample(sigma, N)
    alpha = _per_sample(alpha, N)
    y = x.reshape(N, -1).astype(jnp.float32) - alpha[:, None] * look.center
    z = look.samples.reshape(look.size, -1).astype(jnp.float32) - look.center
    inner = jnp.matmul(y, z.T, precision=lax.Precision.HIGHEST)  # [N, n]
    a = (alpha[:, None] * inner - 0.5 * jnp.square(alpha)[:, None] * look.sq_norms) / jnp.square(
        sigma
    )[:, None]
    return jnp.where(look.mask[None, :], a, -jnp.inf)


def _weights(x, sigma, look, lam, alpha):
    a = efr_logits(x, sigma, look, alpha=alpha)
    lam = check_lam(lam)
    ar = a + lam * look.rewards[None, :]
    return a, ar


def efr_estimate(x, sigma, look: LookaheadSet, lam, *, alpha=1.0) -> jax.Array:
    """`rhat(x) = logsumexp(a + lam r) - logsumexp(a)`: `[N]` float32 (see module docstring)."""
    a, ar = _weights(x, sigma, look, lam, alpha)
    return jax.nn.logsumexp(ar, axis=-1) - jax.nn.logsumexp(a, axis=-1)


def efr_shift(x, sigma, look: LookaheadSet, lam, *, alpha=1.0) -> jax.Array:
    """`sum_i (w^r_i - w_i) xhat_i`: `[N, ...]` in `x.dtype` (clean-data units).

    This is `sigma**2 / alpha * grad_x rhat`; in VE form (alpha = 1) it is the exact change of the
    denoiser's output under the score shift `grad rhat` (`D' = D + sigma**2 * grad`).
    """
    x = check_particles(x, look)
    a, ar = _weights(x, sigma, look, lam, alpha)
    dw = jax.nn.softmax(ar, axis=-1) - jax.nn.softmax(a, axis=-1)  # [N, n], rows sum to 0
    z = look.samples.reshape(look.size, -1).astype(jnp.float32) - look.center
    out = jnp.matmul(dw, z, precision=lax.Precision.HIGHEST)  # sum(dw) = 0: the center drops out
    return out.reshape(x.shape).astype(x.dtype)


def efr_grad(x, sigma, look: LookaheadSet, lam, *, alpha=1.0) -> jax.Array:
    """Closed-form `grad_x rhat = (alpha / sigma**2) sum_i (w^r_i - w_i) xhat_i`: `[N, ...]`,
    `x.dtype`. Equals `jax.grad` of `efr_estimate` (tested) without any network backprop."""
    x = check_particles(x, look)
    N = x.shape[0]
    coef = _per_sample(alpha, N) / jnp.square(_per_sample(sigma, N))
    shift = efr_shift(x, sigma, look, lam, alpha=alpha).astype(jnp.float32)
    return (sch.broadcast_like(coef, shift) * shift).astype(x.dtype)


def vp_coefficients(sigma_ve):
    """VP `(alpha, sigma_vp) = (1/sqrt(1 + s**2), s/sqrt(1 + s**2))` of a VE level `s`
    (`alpha = sqrt(alpha_bar)`, `sigma_vp = sqrt(1 - alpha_bar)`)."""
    return sch.alpha_from_sigma(sigma_ve), sch.vp_std_from_sigma(sigma_ve)


def vp_grad_to_ve(g_vp, sigma_ve):
    """Chain rule for `x_vp = alpha x_ve`: `grad_ve = alpha * grad_vp` (per-sample `sigma_ve`)."""
    return g_vp * sch.broadcast_like(sch.alpha_from_sigma(jnp.asarray(sigma_ve)), g_vp).astype(g_vp.dtype)


def ve_grad_to_vp(g_ve, sigma_ve):
    """Inverse of `vp_grad_to_ve`: `grad_vp = grad_ve / alpha = grad_ve * sqrt(1 + sigma**2)`."""
    f = jnp.sqrt(1.0 + jnp.square(jnp.asarray(sigma_ve)))
    return g_ve * sch.broadcast_like(f, g_ve).astype(g_ve.dtype)


# --------------------------------------------------------------------------------------------
# Lookahead phase
# --------------------------------------------------------------------------------------------


def lookahead_grid(steps: int, sigma_min=0.002, sigma_max=80.0, rho=7.0, dtype=jnp.float32):
    """The few-step grid of the lookahead solver: Karras levels plus a final 0 (`steps` steps)."""
    return sch.karras_sigmas(steps, sigma_min, sigma_max, rho, dtype=dtype)


def lookahead_phase(
    key: jax.Array,
    denoise: Callable,
    reward_fn: Callable,
    shape: tuple[int, ...],
    *,
    steps: int = 5,
    solver: str | S.Solver = "dpmpp_2m",
    sigmas: jax.Array | None = None,
    sigma_min=0.002,
    sigma_max=80.0,
    rho=7.0,
    cond: Any = None,
    dtype=jnp.float32,
) -> LookaheadSet:
    """Phase 1: draw `n = shape[0]` lookahead samples with a few-step solver, score them once.

    Args:
      key: PRNG key of the lookahead set (use a key independent of the guided run's key).
      denoise: `denoise(x, sigma, cond) -> x0_hat` (EDM/VE).
      reward_fn: `reward(x0: [n, ...]) -> [n]`; called exactly once on the whole set (batched).
      shape: `(n, *sample_shape)`, static.
      steps: solver steps delta (static), e.g. 3, 5, 10 (README default 5; abstract: n=3, delta=3).
      solver: a core solver name (`solvers.get_solver`) or `Solver`; default DPM-Solver++(2M), the
        reference's `DPMSolverMultistepScheduler`.
      sigmas: explicit grid `[delta + 1]` (overrides steps/sigma_min/sigma_max/rho).
      cond: passed to the denoiser (e.g. the prompt's class labels `[n]`).

    Returns:
      `LookaheadSet` with `cost = Cost(denoiser_fwd=n * NFE, reward_fwd=n)`. Jittable (static:
      shape, steps, solver name); rewards are validated for NaN here when concrete, else by
      `check_lookahead_set` / the guided samplers' entry checks.
    """
    if len(shape) < 2 or shape[0] < 1:
        raise ValueError(f"shape must be (n, *sample_shape) with n >= 1, got {shape}")
    solver = S.get_solver(solver) if isinstance(solver, str) else solver
    if sigmas is None:
        sigmas = lookahead_grid(steps, sigma_min, sigma_max, rho, dtype)
    sigmas = S.check_sigmas(sigmas).astype(dtype)
    x_T = S.prior_sample(key, tuple(shape), sigmas[0], dtype=dtype)
    x0, aux = S.sample(solver, denoise, x_T, sigmas, key, cond)
    r = reward_fn(x0)
    if jnp.shape(r) != (shape[0],):
        raise ValueError(f"reward_fn must return [n]={shape[0]} rewards, got shape {jnp.shape(r)}")
    n = shape[0]
    cost = Cost.of(denoiser_fwd=n * aux.nfe, reward_fwd=n)
    return make_lookahead_set(x0, r, cost=cost)


def select_lookahead(look: LookaheadSet, k: int, *, key: jax.Array | None = None,
                     mode: str = "random") -> LookaheadSet:
    """Keep `k` (static) of the valid lookahead samples.

    mode "random" (the reference's `random.sample` subset of size `top_k`; needs `key`) draws k
    valid entries uniformly without replacement; mode "top" keeps the k highest rewards. If fewer
    than k entries are valid, the rest are masked padding. The cost record is kept (the whole set
    was paid for).
    """
    if mode not in ("random", "top"):
        raise ValueError(f"mode must be 'random' or 'top', got {mode!r}")
    k = int(k)
    if not 1 <= k <= look.size:
        raise ValueError(f"k must be in [1, n={look.size}], got {k}")
    if mode == "random":
        if key is None:
            raise ValueError("mode='random' needs a PRNG key")
        score = jax.random.uniform(key, (look.size,))
    else:
        score = look.rewards
    score = jnp.where(look.mask, score, -jnp.inf)
    _, idx = lax.top_k(score, k)
    sub = jax.tree.map(lambda a: a[idx], (look.samples, look.rewards, look.mask, look.sq_norms))
    samples, rewards, mask, _ = sub
    # Recentre on the subset (keeps the logits small); cost unchanged.
    return make_lookahead_set(samples, rewards, mask, cost=look.cost)


def pad_lookahead(look: LookaheadSet, n: int) -> LookaheadSet:
    """Pad a set to `n >= size` entries with masked zeros (for stacking ragged per-prompt sets);
    results are unchanged (masked entries get `-inf` logits)."""
    extra = int(n) - look.size
    if extra < 0:
        raise ValueError(f"cannot pad a set of {look.size} samples to n={n}")
    pad = lambda a, v: jnp.concatenate(  # noqa: E731
        [a, jnp.full((extra,) + a.shape[1:], v, a.dtype)], axis=0)
    return look._replace(samples=pad(look.samples, 0), rewards=pad(look.rewards, 0),
                         mask=pad(look.mask, False), sq_norms=pad(look.sq_norms, 0))


def stack_lookahead(sets) -> LookaheadSet:
    """Stack per-prompt sets (padded to a common n) along a new leading prompt axis, for `vmap`."""
    n = max(s.size for s in sets)
    padded = [pad_lookahead(s, n) for s in sets]
    return jax.tree.map(lambda *a: jnp.stack(a), *padded)
