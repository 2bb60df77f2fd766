"""Reward functions for test-time guidance, and exact reward tilts of Gaussian mixtures.

Interface (lidar.md §5, §11): a reward is any callable

    reward(x: [N, ...]) -> [N]   (float; higher is better)

on *clean* samples `x0`. LiDAR needs it only in the lookahead phase (it need not be
differentiable); gradient guidance (DPS/UG) differentiates it. Conditioning (a prompt, a class) is
bound by the caller with a closure or `functools.partial`. A trained classifier (e.g. the digits
quality net) plugs in as `lambda x: jax.nn.log_softmax(net(x))[:, target_class]`.

The analytic rewards here are NamedTuples (pytrees: pass them through `jit` as arguments) with a
`__call__`:

  * `LinearReward(weights, bias)`:     r(x) = <w, x> + b
  * `QuadraticReward(center, scale, bias)`: r(x) = -sum_d (x_d - c_d)**2 / (2 s_d**2) + b
    (`component_log_density_reward` is the log-density of one mixture component written this way)

For both, the reward-tilted distribution of a Gaussian mixture,

    p^r(x0) = p(x0) exp(lam r(x0)) / Z,     Z = E_p[exp(lam r(x0))],

is again a Gaussian mixture (`tilt_gaussian_mixture`), which gives exact oracles: the tilted
target's moments, its exact denoiser, and the exact expected future reward
`log E[exp(lam r(x0)) | x_sigma] = log p^r_sigma(x) - log p_sigma(x) + log Z` (`exact_efr`).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp

from jaxdiff.diffusion import gmm as G


def _flat(x):
    x = jnp.asarray(x)
    return x.reshape(x.shape[0], -1)


class LinearReward(NamedTuple):
    """`r(x) = <weights, flat(x)> + bias`; `weights: [D]`, `bias` scalar. Output `[N]` float32+."""

    weights: jax.Array
    bias: jax.Array = 0.0

    def __call__(self, x):
        xf = _flat(x)
        if xf.shape[1] != self.weights.shape[-1]:
            raise ValueError(f"x has {xf.shape[1]} elements per sample; weights have "
                             f"{self.weights.shape[-1]}")
        w = jnp.asarray(self.weights, jnp.promote_types(xf.dtype, jnp.float32))
        return jnp.sum(xf.astype(w.dtype) * w, axis=-1) + self.bias


class QuadraticReward(NamedTuple):
    """`r(x) = -sum_d (x_d - center_d)**2 / (2 scale_d**2) + bias` (`center: [D]`, `scale`: scalar
    or `[D]`, in data units). Its maximum `bias` is at `center`."""

    center: jax.Array
    scale: jax.Array = 1.0
    bias: jax.Array = 0.0

    def __call__(self, x):
        xf = _flat(x)
        if xf.shape[1] != self.center.shape[-1]:
            raise ValueError(f"x has {xf.shape[1]} elements per sample; center has "
                             f"{self.center.shape[-1]}")
        dt = jnp.promote_types(xf.dtype, jnp.float32)
        z = (xf.astype(dt) - self.center) / jnp.asarray(self.scale, dt)
        return -0.5 * jnp.sum(jnp.square(z), axis=-1) + self.bias


def linear_reward(weights, bias=0.0) -> LinearReward:
    """Build a `LinearReward` (`weights: [D]` or any shape, flattened)."""
    w = jnp.asarray(weights, jnp.float32).reshape(-1)
    return LinearReward(w, jnp.asarray(bias, jnp.float32))


def quadratic_reward(center, scale=1.0, bias=0.0) -> QuadraticReward:
    """Build a `QuadraticReward`; `scale` must be positive (scalar or `[D]`)."""
    c = jnp.asarray(center, jnp.float32).reshape(-1)
    s = jnp.asarray(scale, jnp.float32)
    if s.ndim not in (0, 1) or (s.ndim == 1 and s.shape != c.shape):
        raise ValueError(f"scale must be a scalar or [D]={c.shape[0]}, got shape {s.shape}")
    try:
        if bool(jnp.any(s <= 0)):
            raise ValueError("scale must be positive")
    except jax.errors.ConcretizationTypeError:
        pass
    return QuadraticReward(c, s, jnp.asarray(bias, jnp.float32))


def component_log_density_reward(gmm: G.GaussianMixture, component: int) -> QuadraticReward:
    """`r(x) = log N(x; mu_k, diag(v_k))` of mixture component `k` (a "target mode" reward).

    Written as a `QuadraticReward` so `tilt_gaussian_mixture` handles it exactly.
    """
    k = int(component)
    if not 0 <= k < gmm.num_components:
        raise ValueError(f"component must be in [0, {gmm.num_components}), got {component}")
    v = gmm.variances[k]
    bias = -0.5 * jnp.sum(jnp.log(2 * math.pi * v))
    return QuadraticReward(gmm.means[k].astype(jnp.float32), jnp.sqrt(v).astype(jnp.float32),
                           bias.astype(jnp.float32))


def class_log_posterior_reward(gmm: G.GaussianMixture, label: int):
    """`r(x) = log p(c = label | x)` under the mixture: the Bayes classifier's log-probability, the
    analytic stand-in for a trained classifier reward. Returns a callable `[N, ...] -> [N]`
    (differentiable; not tiltable in closed form)."""

    def reward(x):
        xf = _flat(x)
        cond = jnp.full((xf.shape[0],), label, jnp.int32)
        lw = jnp.where(gmm.labels == label, gmm.log_weights, -jnp.inf)
        log_pc = jax.nn.logsumexp(lw)
        return G.log_prob(gmm, xf, 0.0, cond) + log_pc - G.log_prob(gmm, xf, 0.0)

    return reward


# --------------------------------------------------------------------------------------------
# Exact tilts of Gaussian mixtures
# --------------------------------------------------------------------------------------------


def tilt_gaussian_mixture(
    gmm: G.GaussianMixture, reward, lam
) -> tuple[G.GaussianMixture, jax.Array]:
    """Exact `p^r ∝ p exp(lam r)` for a linear or quadratic reward; returns `(tilted, log_Z)`.

    Per component k (diagonal variances v, per dimension d):
      linear `r = <a, x> + b`:  mean mu + lam v a, variance v,
          log zeta_k = lam <a, mu> + lam**2/2 sum_d v a**2 + lam b;
      quadratic `r = -sum (x - c)**2/(2 s**2) + b`, with u = s**2 / lam:
          variance v u/(v + u), mean v'(mu/v + c/u),
          log zeta_k = sum_d [log(u/(v + u))/2 - (c - mu)**2/(2(v + u))] + lam b.
    Tilted weights ∝ w_k zeta_k; `log_Z = logsumexp_k(log w_k + log zeta_k)` = log E_p[e^{lam r}].
    `lam` must be positive (it may be traced).
    """
    lam = jnp.asarray(lam, gmm.means.dtype)
    mu, v = gmm.means, gmm.variances
    if isinstance(reward, LinearReward):
        a = reward.weights.astype(mu.dtype)
        new_mu = mu + lam * v * a
        new_v = v
        log_zeta = lam * (mu @ a) + 0.5 * lam**2 * (v @ jnp.square(a)) + lam * reward.bias
    elif isinstance(reward, QuadraticReward):
        c = reward.center.astype(mu.dtype)
        u = jnp.broadcast_to(jnp.square(jnp.asarray(reward.scale, mu.dtype)), c.shape) / lam
        new_v = v * u / (v + u)
        new_mu = new_v * (mu / v + c / u)
        log_zeta = jnp.sum(0.5 * jnp.log(u / (v + u)) - jnp.square(c - mu) / (2 * (v + u)), -1)
        log_zeta = log_zeta + lam * reward.bias
    else:
        raise TypeError(f"tilt_gaussian_mixture needs a LinearReward or QuadraticReward, got "
                        f"{type(reward).__name__}")
    joint = gmm.log_weights + log_zeta
    log_z = jax.nn.logsumexp(joint)
    tilted = G.GaussianMixture(joint - log_z, new_mu, new_v, gmm.labels)
    return tilted, log_z


def exact_efr(gmm: G.GaussianMixture, reward, lam, x, sigma) -> jax.Array:
    """Exact expected future reward `log E_{p(x0 | x)}[exp(lam r(x0))]` at VE level `sigma`.

    Uses `p^r_sigma(x) = p_sigma(x) E[e^{lam r} | x] / Z`. `x: [N, D]`, `sigma`: scalar or `[N]`;
    returns `[N]`. Its gradient (by `jax.grad`) is the exact guidance the LiDAR estimator targets.
    """
    tilted, log_z = tilt_gaussian_mixture(gmm, reward, lam)
    return G.log_prob(tilted, x, sigma) - G.log_prob(gmm, x, sigma) + log_z


def mean_reward_under(gmm: G.GaussianMixture, reward) -> jax.Array:
    """Exact `E_p[r(x0)]` for a linear or quadratic reward (e.g. of a tilted target)."""
    w = jnp.exp(gmm.log_weights)
    if isinstance(reward, LinearReward):
        return w @ (gmm.means @ reward.weights) + reward.bias
    if isinstance(reward, QuadraticReward):
        s2 = jnp.broadcast_to(jnp.square(jnp.asarray(reward.scale)), reward.center.shape)
        per = jnp.sum((jnp.square(gmm.means - reward.center) + gmm.variances) / (2 * s2), -1)
        return reward.bias - w @ per
    raise TypeError(f"needs a LinearReward or QuadraticReward, got {type(reward).__name__}")
