"""Gaussian-mixture data with an exact denoiser, score and noised log-density (analytic oracle).

For data `x0 ~ sum_k w_k N(mu_k, diag(v_k))` and the VE corruption `x = x0 + sigma * eps`
(eps ~ N(0, I)), every quantity the diffusion primitives need is closed form:

  noised marginal   p_sigma(x) = sum_k w_k N(x; mu_k, diag(v_k + sigma**2)),
  responsibilities  r_k(x) = w_k N(x; mu_k, v_k + sigma**2) / p_sigma(x)        (softmax in logs),
  posterior mean    E[x0 | x] = sum_k r_k(x) [mu_k + v_k / (v_k + sigma**2) * (x - mu_k)],
  score             grad_x log p_sigma(x) = sum_k r_k(x) (mu_k - x) / (v_k + sigma**2)
                                          = (E[x0 | x] - x) / sigma**2        (Tweedie).

Samples may have any trailing shape (e.g. images `[N, H, W, C]`); they are flattened to
`D = prod(shape[1:])` dimensions, matching `means: [K, D]`. `sigma` is a per-sample `[N]` vector
(or a scalar). All computations use per-sample reductions only (no matmuls across the batch),
so a batch of N gives bit-identical rows to N single calls.

Class conditioning: each component has a label (`labels: [K]`, default `arange(K)`). Passing
`cond: [N]` int restricts sample i to components with `labels == cond[i]` (the class-conditional
data distribution); `cond[i] < 0` means unconditional. This makes classifier-free guidance and
reward tilting testable against the same oracle.
"""

from __future__ import annotations

import functools
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp

from jaxdiff.random import sample_keys


class GaussianMixture(NamedTuple):
    """Mixture of diagonal Gaussians (a pytree; pass it through jit as an argument).

    Attributes:
      log_weights: `[K]` normalised log mixture weights.
      means: `[K, D]`.
      variances: `[K, D]` per-dimension variances (isotropic components repeat one value).
      labels: `[K]` int32 class label of each component.
    """

    log_weights: jax.Array
    means: jax.Array
    variances: jax.Array
    labels: jax.Array

    @property
    def dim(self) -> int:
        return self.means.shape[-1]

    @property
    def num_components(self) -> int:
        return self.means.shape[0]


def gaussian_mixture(weights, means, stds=None, *, variances=None, labels=None) -> GaussianMixture:
    """Build a `GaussianMixture`.

    Args:
      weights: `[K]` non-negative (normalised here).
      means: `[K, D]`.
      stds: per-component standard deviation, `[K]` (isotropic), `[K, D]` (diagonal) or a
        scalar. Give exactly one of `stds` / `variances`.
      variances: same shapes as `stds`, in squared units.
      labels: `[K]` ints (default `arange(K)`: one class per component).
    """
    means = jnp.asarray(means)
    if means.ndim != 2:
        raise ValueError(f"means must be [K, D], got shape {means.shape}")
    K, D = means.shape
    if (stds is None) == (variances is None):
        raise ValueError("give exactly one of stds or variances")
    var = jnp.square(jnp.asarray(stds, means.dtype)) if stds is not None else jnp.asarray(
        variances, means.dtype
    )
    if var.ndim == 0:
        var = jnp.full((K, D), var)
    elif var.shape == (K,):
        var = jnp.broadcast_to(var[:, None], (K, D))
    elif var.shape != (K, D):
        raise ValueError(f"stds/variances must be scalar, [K]={K} or [K, D]={(K, D)}; got {var.shape}")
    w = jnp.asarray(weights, means.dtype)
    if w.shape != (K,):
        raise ValueError(f"weights must be [K]={K}, got {w.shape}")
    log_w = jnp.log(w) - jnp.log(jnp.sum(w))
    labels = jnp.arange(K, dtype=jnp.int32) if labels is None else jnp.asarray(labels, jnp.int32)
    if labels.shape != (K,):
        raise ValueError(f"labels must be [K]={K}, got {labels.shape}")
    return GaussianMixture(log_w, means, var, labels)


def _flatten(gmm: GaussianMixture, x):
    x = jnp.asarray(x)
    flat = x.reshape(x.shape[0], -1)
    if flat.shape[1] != gmm.dim:
        raise ValueError(
            f"sample shape {x.shape[1:]} has {flat.shape[1]} elements; the mixture has D={gmm.dim}"
        )
    return flat


def _per_sample_sigma(sigma, n, dtype):
    sigma = jnp.asarray(sigma, dtype)
    if sigma.ndim == 0:
        return jnp.broadcast_to(sigma, (n,))
    if sigma.shape != (n,):
        raise ValueError(f"sigma must be a scalar or [N]={n}, got {sigma.shape}")
    return sigma


def component_terms(gmm: GaussianMixture, x_flat, sigma, cond):
    """Per-component log joint `log w_k + log N(x; mu_k, v_k + s^2)`: `[N, K]`, the differences
    `x - mu_k` and the precisions `1 / (v_k + s^2)` (`[N, K, D]`).

    Divisions are written as products with an explicit reciprocal: when sigma is one value
    broadcast over the batch, XLA rewrites `a / broadcast(b)` as `a * broadcast(1/b)` for N > 1
    but not for N = 1, which would make a batch and single runs round differently.
    """
    tot_var = gmm.variances[None, :, :] + jnp.square(sigma)[:, None, None]  # [N, K, D]
    prec = 1.0 / tot_var
    diff = x_flat[:, None, :] - gmm.means[None, :, :]  # [N, K, D]
    log_norm = -0.5 * jnp.sum(jnp.square(diff) * prec + jnp.log(tot_var), axis=-1)
    log_norm = log_norm - 0.5 * gmm.dim * math.log(2 * math.pi)
    logits = gmm.log_weights[None, :] + log_norm
    if cond is not None:
        cond = jnp.asarray(cond, jnp.int32).reshape(-1)
        keep = (gmm.labels[None, :] == cond[:, None]) | (cond[:, None] < 0)
        logits = jnp.where(keep, logits, -jnp.inf)
    return logits, diff, prec


@jax.jit
def log_prob(gmm: GaussianMixture, x, sigma=0.0, cond=None) -> jax.Array:
    """Exact `log p_sigma(x)` of the noised marginal (Lebesgue density in D dims).

    With `cond`, the class-conditional density `log p_sigma(x | c)` (weights renormalised
    within the class).

    Args:
      x: `[N, ...]` with `prod(...) = D`.
      sigma: scalar or `[N]` VE noise levels.
    Returns:
      `[N]`.
    """
    xf = _flatten(gmm, x)
    sigma = _per_sample_sigma(sigma, xf.shape[0], xf.dtype)
    logits, _, _ = component_terms(gmm, xf, sigma, cond)
    lp = jax.nn.logsumexp(logits, axis=-1)
    if cond is not None:
        # Renormalise the weights within the class: log p(x | c) = lse_k(log w_k + log N_k) over
        # components of class c minus lse_k(log w_k) over the same components.
        lw = jnp.where(jnp.isneginf(logits), -jnp.inf, gmm.log_weights[None, :])
        lp = lp - jax.nn.logsumexp(lw, axis=-1)
    return lp


@jax.jit
def posterior_mean(gmm: GaussianMixture, x, sigma, cond=None) -> jax.Array:
    """Exact denoiser `E[x0 | x]` for `x = x0 + sigma * eps`: same shape as `x`.

    This *is* a jaxdiff denoiser: `denoise(x, sigma, cond) -> x0_hat` (DESIGN.md §2).
    """
    xf = _flatten(gmm, x)
    sigma = _per_sample_sigma(sigma, xf.shape[0], xf.dtype)
    logits, diff, prec = component_terms(gmm, xf, sigma, cond)
    resp = jax.nn.softmax(logits, axis=-1)  # [N, K]
    comp_mean = gmm.means[None] + (gmm.variances[None] * prec) * diff  # [N, K, D]
    out = jnp.sum(resp[:, :, None] * comp_mean, axis=1)
    return out.reshape(jnp.shape(x))


@jax.jit
def score(gmm: GaussianMixture, x, sigma, cond=None) -> jax.Array:
    """Exact score `grad_x log p_sigma(x)`, same shape as `x` (finite at sigma = 0)."""
    xf = _flatten(gmm, x)
    sigma = _per_sample_sigma(sigma, xf.shape[0], xf.dtype)
    logits, diff, prec = component_terms(gmm, xf, sigma, cond)
    resp = jax.nn.softmax(logits, axis=-1)
    out = jnp.sum(resp[:, :, None] * (-diff * prec), axis=1)
    return out.reshape(jnp.shape(x))


def denoiser(gmm: GaussianMixture):
    """`denoise(x, sigma, cond=None)` closure for the samplers (the mixture is closed over; for
    large mixtures inside jit prefer `functools.partial(posterior_mean, gmm)` with gmm traced)."""

    def denoise(x, sigma, cond=None):
        return posterior_mean(gmm, x, sigma, cond)

    return denoise


@functools.partial(jax.jit, static_argnames=("n",))
def sample(gmm: GaussianMixture, key, n: int, *, sigma=0.0, cond=None, offset=0) -> jax.Array:
    """`n` draws from the mixture noised to `sigma` (`[n, D]`).

    Sample i uses `fold_in(key, offset + i)` (DESIGN.md randomness contract). With `cond: [n]`
    the component is drawn within the given class.
    """
    keys = sample_keys(key, n, offset)
    sig = _per_sample_sigma(sigma, n, gmm.means.dtype)
    if cond is None:
        cond_arr = jnp.full((n,), -1, jnp.int32)
    else:
        cond_arr = jnp.broadcast_to(jnp.asarray(cond, jnp.int32), (n,))

    def one(k, s, c):
        kc, kx, ke = jax.random.split(k, 3)
        keep = (gmm.labels == c) | (c < 0)
        comp = jax.random.categorical(kc, jnp.where(keep, gmm.log_weights, -jnp.inf))
        z = jax.random.normal(kx, (gmm.dim,), gmm.means.dtype)
        x0 = gmm.means[comp] + jnp.sqrt(gmm.variances[comp]) * z
        return x0 + s * jax.random.normal(ke, (gmm.dim,), gmm.means.dtype)

    return jax.vmap(one)(keys, sig, cond_arr)


@jax.jit
def moments(gmm: GaussianMixture, sigma=0.0) -> tuple[jax.Array, jax.Array]:
    """Mean `[D]` and covariance `[D, D]` of the (noised) mixture (law of total variance)."""
    w = jnp.exp(gmm.log_weights)
    mean = w @ gmm.means
    centred = gmm.means - mean
    between = (w[:, None] * centred).T @ centred
    within = jnp.diag(w @ gmm.variances) + jnp.square(sigma) * jnp.eye(gmm.dim)
    return mean, between + within
