"""VE noise level -> VP signal scale and VP time: the conversions both the diffusion library and
the models (DG's discriminator takes VP inputs) need. Pure and jittable; re-exported by
`jaxdiff.diffusion.schedules`, whose docstring states the conventions:

    x_vp = alpha * x_ve,   alpha = 1 / sqrt(1 + sigma**2).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

COSINE_S = 0.008   # the cosine schedule's offset s (Nichol & Dhariwal 2021)


def alpha_from_sigma(sigma):
    """VP signal scale of a VE noise level: `alpha = 1 / sqrt(1 + sigma**2)`."""
    sigma = jnp.asarray(sigma)
    return jax.lax.rsqrt(1.0 + jnp.square(sigma))


def vp_linear_t(sigma, beta_min=0.1, beta_max=20.0):
    """Inverse of `diffusion.schedules.vp_linear_sigma`: the positive root of `t**2 (b1-b0)/2 + t b0 = log(1 + sigma**2)`.

        t(sigma) = (-b0 + sqrt(b0**2 + 2 (b1 - b0) log(1 + sigma**2))) / (b1 - b0).
    """
    sigma = jnp.asarray(sigma)
    d = beta_max - beta_min
    return (-beta_min + jnp.sqrt(beta_min**2 + 2.0 * d * jnp.log1p(jnp.square(sigma)))) / d


def vp_cosine_t(sigma, s=COSINE_S):
    """Inverse of `diffusion.schedules.vp_cosine_sigma` (diffrs.md §3):

        t = (1 + s) (2/pi) arccos(sqrt(f0) * alpha(sigma)) - s,   f0 = cos(s/(1+s) pi/2)**2.
    """
    f0 = math.cos(s / (1.0 + s) * math.pi / 2) ** 2
    a = alpha_from_sigma(sigma)
    return (1.0 + s) * (2.0 / jnp.pi) * jnp.arccos(jnp.clip(math.sqrt(f0) * a, -1.0, 1.0)) - s
