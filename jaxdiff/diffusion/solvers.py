"""Fixed-grid diffusion solvers (init/step protocol) and the `lax.scan` driver `sample`.

Conventions (DESIGN.md §2):
  * EDM/VE: `x = x0 + sigma * eps`; the probability-flow ODE is `dx/dsigma = (x - D(x; sigma))/sigma`
    (Karras et al. 2022, Eq. 3 with sigma(t) = t).
  * A grid `sigmas: [n + 1]` is strictly decreasing, `sigmas[n] >= 0` (usually 0: the last step
    returns the denoised sample). Step k goes from `sigmas[k]` to `sigmas[k + 1]`.
  * A solver is a `Solver(init, step)` NamedTuple of pure functions, optax style:
        state = init(x_T, sigmas)
        state, nfe = step(state, denoise, sigma, sigma_next, keys, cond)
    where every state is a NamedTuple whose first field is the current `x: [N, ...]`, `keys` are
    the `[N]` per-sample keys of this step and `nfe` the denoiser evaluations it made.
  * Hyperparameters (churn, eta, noise ranges) are factory arguments that may be traced arrays:
    build the solver *inside* the jitted function from its arguments and changing them never
    recompiles. Only shapes and the number of steps are static.
  * Randomness: sample i uses `sample_key = fold_in(key, offset + i)`; stream 0 of a sample is its
    prior draw (`prior_sample`), solver step k uses `fold_in(sample_key, k + 1)`. So a batch of N
    equals N single runs with matching offsets.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jaxdiff.diffusion.schedules import broadcast_like
from jaxdiff.random import sample_keys, step_key


class Solver(NamedTuple):
    """A fixed-grid solver: pure `init(x_T, sigmas) -> state` and
    `step(state, denoise, sigma, sigma_next, keys, cond) -> (state, nfe)`.

    `stochastic` says whether `step` consumes its keys (deterministic solvers ignore them).
    """

    init: Callable
    step: Callable
    name: str = "solver"
    stochastic: bool = False


class SampleAux(NamedTuple):
    """Side outputs of `sample`.

    Attributes:
      nfe: int32 scalar, denoiser evaluations per sample (algorithmic = executed here: every
        evaluation is used).
      trajectory: `[n + 1, N, ...]` states at every grid point (x_T first) if requested, else None.
    """

    nfe: jax.Array
    trajectory: jax.Array | None = None


# --------------------------------------------------------------------------------------------
# Driver
# --------------------------------------------------------------------------------------------


def sample(
    solver: Solver,
    denoise: Callable,
    x_T: jax.Array,
    sigmas: jax.Array,
    key: jax.Array | None = None,
    cond: Any = None,
    *,
    offset: int | jax.Array = 0,
    return_trajectory: bool = False,
) -> tuple[jax.Array, SampleAux]:
    """Integrate from `x_T` along `sigmas` with `solver`, as one `lax.scan` (jit it from outside).

    Args:
      solver: a `Solver` (e.g. `heun()`, `get_solver("ddim", eta=1.0)`).
      denoise: `denoise(x, sigma: [N], cond) -> x0_hat` in the EDM/VE convention.
      x_T: `[N, ...]` float initial states at `sigmas[0]` (e.g. `prior_sample(...)`).
      sigmas: `[n + 1]` strictly decreasing, last >= 0; may be traced (then its validity is not
        checked; concrete grids are checked eagerly).
      key: typed PRNG key; required for stochastic solvers.
      cond: passed to `denoise` unchanged (labels, text embeddings, ...).
      offset: index of the first sample (per-sample keys are `fold_in(key, offset + i)`).
      return_trajectory: also return all grid states (static).

    Returns:
      `(x0, SampleAux)`: the final states `[N, ...]` at `sigmas[n]` and the aux record.
    """
    x_T = jnp.asarray(x_T)
    if not jnp.issubdtype(x_T.dtype, jnp.floating):
        raise TypeError(f"x_T must be a float array, got dtype {x_T.dtype}")
    if x_T.ndim < 1 or x_T.shape[0] < 1:
        raise ValueError(f"x_T must be [N, ...] with N >= 1, got shape {x_T.shape}")
    sigmas = check_sigmas(sigmas).astype(x_T.dtype)
    n = sigmas.shape[0] - 1
    if solver.stochastic and key is None:
        raise ValueError(f"solver {solver.name!r} is stochastic: pass a PRNG key")
    if key is None:
        key = jax.random.key(0)  # unused by deterministic solvers (dead code after tracing)
    keys = sample_keys(key, x_T.shape[0], offset)
    den = _checked(denoise, x_T)

    def body(carry, inp):
        state, nfe = carry
        k, s, s_next = inp
        skeys = jax.vmap(step_key, in_axes=(0, None))(keys, k + 1)
        state, dn = solver.step(state, den, s, s_next, skeys, cond)
        out = state[0] if return_trajectory else None
        return (state, nfe + jnp.asarray(dn, jnp.int32)), out

    state = solver.init(x_T, sigmas)
    steps = (jnp.arange(n, dtype=jnp.uint32), sigmas[:-1], sigmas[1:])
    (state, nfe), traj = lax.scan(body, (state, jnp.zeros((), jnp.int32)), steps)
    if return_trajectory:
        traj = jnp.concatenate([x_T[None], traj], axis=0)
    return state[0], SampleAux(nfe=nfe, trajectory=traj)


@functools.partial(jax.jit, static_argnames=("shape", "dtype"))
def prior_sample(
    key: jax.Array, shape: tuple[int, ...], sigma_max, *, offset=0, dtype=jnp.float32
) -> jax.Array:
    """`x_T = sigma_max * eps`, `[N, ...] = shape`, sample i drawn from stream 0 of
    `fold_in(key, offset + i)` (the solver steps use streams 1..n of the same sample key)."""
    keys = sample_keys(key, shape[0], offset)
    eps = jax.vmap(lambda k: jax.random.normal(step_key(k, 0), shape[1:], dtype))(keys)
    return eps * jnp.asarray(sigma_max, dtype)


def check_sigmas(sigmas) -> jax.Array:
    """Validate a sigma grid: 1-D with >= 2 entries (>= 1 step); if concrete, strictly decreasing,
    positive except a last entry that may be 0. Raises ValueError naming the problem."""
    try:
        host = np.asarray(sigmas)
    except (jax.errors.TracerArrayConversionError, jax.errors.ConcretizationTypeError):
        host = None
    arr = jnp.asarray(sigmas)
    if arr.ndim != 1:
        raise ValueError(f"sigmas must be a 1-D grid [n + 1], got shape {arr.shape}")
    if arr.shape[0] < 2:
        raise ValueError(
            f"sigmas must hold at least 2 levels (n >= 1 steps), got {arr.shape[0]}: zero steps"
        )
    if not jnp.issubdtype(arr.dtype, jnp.floating):
        arr = arr.astype(jnp.float32)
    if host is not None:
        host = host.astype(np.float64)
        if not np.all(np.isfinite(host)):
            raise ValueError(f"sigmas must be finite, got {host}")
        bad = np.nonzero(np.diff(host) >= 0)[0]
        if bad.size:
            i = int(bad[0])
            raise ValueError(
                f"sigmas must be strictly decreasing; sigmas[{i}]={host[i]:g} <= "
                f"sigmas[{i + 1}]={host[i + 1]:g}"
            )
        if host[-1] < 0 or np.any(host[:-1] <= 0):
            raise ValueError("sigmas must be positive (the last entry may be 0)")
    return arr


def _checked(denoise, x_T):
    """Wrap `denoise` to pass a per-sample sigma vector and check its output at trace time."""
    n, shape, dtype = x_T.shape[0], x_T.shape, x_T.dtype

    def den(x, sigma, cond):
        out = denoise(x, jnp.broadcast_to(jnp.asarray(sigma, dtype), (n,)), cond)
        if jnp.shape(out) != shape:
            raise ValueError(f"denoiser returned shape {jnp.shape(out)} for x of shape {shape}")
        if jnp.result_type(out) != dtype:
            raise TypeError(
                f"denoiser returned dtype {jnp.result_type(out)} for x of dtype {dtype}; "
                "cast inside the denoiser (e.g. a bf16 network wrapper) so states keep one dtype"
            )
        return out

    return den


def normal_like(keys, x, dtype=None):
    """Per-sample standard normals `[N, ...]` from `[N]` keys (batch-size independent)."""
    return jax.vmap(lambda k: jax.random.normal(k, x.shape[1:], dtype or x.dtype))(keys)


# --------------------------------------------------------------------------------------------
# Euler and Heun (Karras et al. 2022, Algorithm 1)
# --------------------------------------------------------------------------------------------


class XState(NamedTuple):
    x: jax.Array


class EDMState(NamedTuple):
    x: jax.Array
    gamma: jax.Array  # per-step churn factor min(S_churn / n, sqrt(2) - 1)


class DPMState(NamedTuple):
    x: jax.Array
    den_prev: jax.Array  # D at the previous grid point
    h_prev: jax.Array  # previous step length in lambda = -log sigma
    first: jax.Array  # bool: no history yet


def _euler_update(den, x, sigma, sigma_next, cond):
    s, s_next = broadcast_like(sigma, x), broadcast_like(sigma_next, x)
    d = (x - den(x, sigma, cond)) / s
    return x + (s_next - s) * d, d


def heun_update(den, x, sigma, sigma_next, cond, *, needs_correction=None):
    """Heun from (x, sigma) to sigma_next (Karras et al. 2022, Alg. 1 lines 4-8); Euler when
    sigma_next = 0. Returns `(x_next, nfe)`.

    `sigma`, `sigma_next` are scalars, or per-sample `[N]` levels (DiffRS: each slot of its pool
    at its own grid index) together with `needs_correction [N]` bool, the samples that take the
    second evaluation: it runs on the whole batch only if any needs it, and the others keep the
    Euler step. nfe is a scalar (scalar levels) or `[N]`.
    """
    x_e, d = _euler_update(den, x, sigma, sigma_next, cond)

    def correct(_):
        # Guard the division for the branch that is not taken (sigma_next = 0).
        s_safe = jnp.where(sigma_next > 0, sigma_next, 1.0)
        d2 = (x_e - den(x_e, s_safe, cond)) / broadcast_like(s_safe, x)
        step = broadcast_like(sigma_next, x) - broadcast_like(sigma, x)
        return x + step * (0.5 * (d + d2))

    if needs_correction is None:
        # A real conditional (scalar predicate, outside any vmap): the last step to sigma = 0
        # costs one evaluation, as in EDM (2n - 1 NFE for n steps).
        x_next = lax.cond(sigma_next > 0, correct, lambda _: x_e, None)
        return x_next, jnp.where(sigma_next > 0, 2, 1)
    x_h = lax.cond(jnp.any(needs_correction), correct, lambda _: x_e, None)
    return (jnp.where(broadcast_like(needs_correction, x), x_h, x_e),
            jnp.where(needs_correction, 2, 1))


def euler() -> Solver:
    """First-order Euler on the probability-flow ODE: `x += (s' - s) (x - D(x; s)) / s`; 1 NFE/step."""

    def init(x, sigmas):
        return XState(x)

    def step(state, den, sigma, sigma_next, keys, cond):
        x, _ = _euler_update(den, state.x, sigma, sigma_next, cond)
        return XState(x), 1

    return Solver(init, step, "euler", False)


def heun() -> Solver:
    """EDM deterministic 2nd-order Heun (Karras et al. 2022, Alg. 1); Euler on a step to sigma=0.

    NFE on n steps: 2n - 1 when the grid ends at 0, else 2n.
    """

    def init(x, sigmas):
        return XState(x)

    def step(state, den, sigma, sigma_next, keys, cond):
        x, nfe = heun_update(den, state.x, sigma, sigma_next, cond)
        return XState(x), nfe

    return Solver(init, step, "heun", False)


def edm_stochastic(s_churn=0.0, s_tmin=0.0, s_tmax=float("inf"), s_noise=1.0) -> Solver:
    """EDM stochastic sampler (Karras et al. 2022, Algorithm 2). All hyperparameters may be traced.

    Per step: `gamma = min(S_churn / n, sqrt(2) - 1)` if `S_tmin <= sigma <= S_tmax` else 0;
    `sigma_hat = sigma (1 + gamma)`; `x_hat = x + sqrt(sigma_hat**2 - sigma**2) S_noise eps`; then a
    Heun step from `(x_hat, sigma_hat)` to `sigma_next` (Euler when `sigma_next = 0`). With
    `s_churn = 0` it reproduces `heun()` exactly.
    """

    def init(x, sigmas):
        n = sigmas.shape[0] - 1
        gamma = jnp.minimum(jnp.asarray(s_churn, x.dtype) / n, math.sqrt(2.0) - 1.0)
        return EDMState(x, gamma.astype(x.dtype))

    def step(state, den, sigma, sigma_next, keys, cond):
        x = state.x
        in_range = (sigma >= s_tmin) & (sigma <= s_tmax)
        gamma = jnp.where(in_range, state.gamma, 0.0).astype(x.dtype)
        sigma_hat = sigma * (1.0 + gamma)
        eps = normal_like(keys, x) * jnp.asarray(s_noise, x.dtype)
        # sqrt(sigma_hat^2 - sigma^2) written as sigma sqrt(gamma (2 + gamma)): exactly 0 when
        # gamma = 0 (XLA:CPU contracts sigma_hat^2 - sigma^2 into an FMA, which leaves the
        # rounding error of sigma^2, ~1e-8 sigma, as spurious noise).
        x_hat = x + (sigma * jnp.sqrt(gamma * (2.0 + gamma))) * eps
        x, nfe = heun_update(den, x_hat, sigma_hat, sigma_next, cond)
        return EDMState(x, state.gamma), nfe

    return Solver(init, step, "edm", True)


# --------------------------------------------------------------------------------------------
# DDIM with eta, in VE form
# --------------------------------------------------------------------------------------------


def ddim_sigmas_up_down(sigma, sigma_next, eta):
    """VE form of DDIM's noise split (Song et al. 2021, Eq. 12, divided by sqrt(alpha_bar')).

    With VP `sigma_t(eta) = eta sqrt((1 - ab')/(1 - ab)) sqrt(1 - ab/ab')` and `ab = 1/(1 + s**2)`:

        sigma_up   = eta * s' * sqrt(1 - s'**2 / s**2)     (fresh noise, VE units)
        sigma_down = sqrt(s'**2 - sigma_up**2)             (kept predicted noise)

    eta = 1 is the DDPM posterior (ancestral). `sigma_up` is clipped to `s'` (eta > 1 would ask
    for more noise than the target level holds).
    """
    ratio2 = jnp.where(sigma > 0, jnp.square(sigma_next / sigma), 0.0)
    up = eta * sigma_next * jnp.sqrt(jnp.maximum(1.0 - ratio2, 0.0))
    up = jnp.minimum(up, sigma_next)
    down = jnp.sqrt(jnp.maximum(jnp.square(sigma_next) - jnp.square(up), 0.0))
    return up, down


def ddim(eta=0.0) -> Solver:
    """DDIM (Song et al. 2021) in VE form: `x' = D + sigma_down (x - D)/sigma + sigma_up z`.

    Equivalent step for step to VP DDIM on `x_vp = x / sqrt(1 + sigma**2)`; eta (traced) = 0 is
    deterministic (= DPM-Solver-1), eta = 1 ancestral. 1 NFE per step.
    """

    def init(x, sigmas):
        return XState(x)

    def step(state, den, sigma, sigma_next, keys, cond):
        x = state.x
        d0 = den(x, sigma, cond)
        up, down = ddim_sigmas_up_down(sigma, sigma_next, jnp.asarray(eta, x.dtype))
        z = normal_like(keys, x)
        x = d0 + (down / sigma) * (x - d0) + up * z
        return XState(x), 1

    return Solver(init, step, "ddim", True)


# --------------------------------------------------------------------------------------------
# DPM-Solver++(2M)
# --------------------------------------------------------------------------------------------


def dpmpp_2m() -> Solver:
    """DPM-Solver++(2M) (Lu et al. 2022, Algorithm 2), data prediction, multistep.

    In VE form (alpha = 1, lambda = -log sigma, h = lambda' - lambda = log(sigma / sigma')):

        D_eff = (1 + 1/(2r)) D_k - 1/(2r) D_{k-1},   r = h_{k-1} / h_k
        x'    = (sigma'/sigma) x + (1 - sigma'/sigma) D_eff

    First order (D_eff = D_k) on the first step and on a final step to sigma = 0 (h = inf).
    The data-prediction update is invariant to the VE/VP scaling, so this equals the VP algorithm.
    1 NFE per step.
    """

    def init(x, sigmas):
        return DPMState(x, jnp.zeros_like(x), jnp.ones((), x.dtype), jnp.ones((), bool))

    def step(state, den, sigma, sigma_next, keys, cond):
        x = state.x
        d0 = den(x, sigma, cond)
        has_next = sigma_next > 0
        s_next_safe = jnp.where(has_next, sigma_next, 1.0)
        h = jnp.where(has_next, jnp.log(sigma / s_next_safe), 1.0)
        second = jnp.logical_and(~state.first, has_next)
        half_inv_r = 0.5 * h / state.h_prev  # 1/(2r)
        d_eff = jnp.where(second, (1.0 + half_inv_r) * d0 - half_inv_r * state.den_prev, d0)
        ratio = sigma_next / sigma  # exp(-h), exactly 0 on the final step
        x = ratio * x + (1.0 - ratio) * d_eff
        return DPMState(x, d0, h.astype(x.dtype), jnp.zeros((), bool)), 1

    return Solver(init, step, "dpmpp_2m", False)


# --------------------------------------------------------------------------------------------
# Registry
# --------------------------------------------------------------------------------------------

SOLVERS: dict[str, Callable[..., Solver]] = {
    "euler": euler,
    "heun": heun,
    "edm": edm_stochastic,
    "ddim": ddim,
    "dpmpp_2m": dpmpp_2m,
}
SOLVER_ALIASES = {"edm_stochastic": "edm", "dpm++2m": "dpmpp_2m", "dpm_solver++_2m": "dpmpp_2m"}


def get_solver(name: str, **hparams) -> Solver:
    """Build a solver by name, e.g. `get_solver("edm", s_churn=40.0)`, `get_solver("ddim", eta=1.0)`.

    Valid names: euler, heun, edm (stochastic; alias edm_stochastic), ddim, dpmpp_2m (alias dpm++2m).
    """
    canon = SOLVER_ALIASES.get(name, name)
    if canon not in SOLVERS:
        valid = ", ".join(sorted(SOLVERS) + sorted(SOLVER_ALIASES))
        raise ValueError(f"unknown solver {name!r}; valid names: {valid}")
    try:
        return SOLVERS[canon](**hparams)
    except TypeError as e:
        import inspect

        params = list(inspect.signature(SOLVERS[canon]).parameters)
        raise TypeError(
            f"bad hyperparameters {sorted(hparams)} for solver {canon!r}; it accepts {params}"
        ) from e
