"""The denoiser contract, EDM preconditioning and adapters from other parameterisations.

Contract (DESIGN.md §2): a denoiser is any callable

    denoise(x: [N, ...], sigma: [N], cond) -> x0_hat: [N, ...]   (same shape and dtype as x)

in the EDM/VE convention `x = x0 + sigma * eps`, with a per-sample noise level `sigma`. Samplers
never see parameters: bind them with `functools.partial` or a closure.

Networks trained in other conventions are adapted by `from_prediction` (epsilon-, v- and
x0-prediction; VE or VP-scaled inputs). The relations used, with `alpha = 1/sqrt(1 + sigma**2)`
and `s = sigma * alpha` (so `x_vp = alpha * x = alpha * x0 + s * eps`):

    eps-prediction:  x0 = x - sigma * eps
    v-prediction:    v = alpha * eps - s * x0   (Salimans & Ho 2022)  =>  x0 = alpha * x_vp - s * v
    x0-prediction:   x0 = out.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple, Protocol

import jax
import jax.numpy as jnp

from jaxdiff.diffusion.schedules import broadcast_like, alpha_from_sigma


class Denoiser(Protocol):
    """`denoise(x, sigma, cond) -> x0_hat` (see module docstring)."""

    def __call__(self, x: jax.Array, sigma: jax.Array, cond: Any = None) -> jax.Array: ...


# --------------------------------------------------------------------------------------------
# EDM preconditioning (Karras et al. 2022, Table 1 / Eq. 7)
# --------------------------------------------------------------------------------------------


class EDMScalings(NamedTuple):
    """Per-sample EDM coefficients, each shaped like `sigma`."""

    c_skip: jax.Array
    c_out: jax.Array
    c_in: jax.Array
    c_noise: jax.Array


def edm_scalings(sigma, sigma_data=0.5) -> EDMScalings:
    """EDM preconditioning for `D(x; sigma) = c_skip x + c_out F(c_in x, c_noise)`:

        c_skip  = sigma_data**2 / (sigma**2 + sigma_data**2)
        c_out   = sigma * sigma_data / sqrt(sigma**2 + sigma_data**2)
        c_in    = 1 / sqrt(sigma**2 + sigma_data**2)
        c_noise = log(sigma) / 4

    These make the network input and its training target unit-variance for data of standard
    deviation `sigma_data` (Karras et al. 2022, Appendix B.6). `sigma_data` may be traced.
    """
    sigma = jnp.asarray(sigma)
    sd2 = jnp.square(jnp.asarray(sigma_data, sigma.dtype))
    tot = jnp.square(sigma) + sd2
    inv = jax.lax.rsqrt(tot)
    return EDMScalings(
        c_skip=sd2 / tot,
        c_out=sigma * jnp.sqrt(sd2) * inv,
        c_in=inv,
        c_noise=jnp.log(sigma) / 4.0,
    )


def edm_denoiser(net: Callable, sigma_data=0.5) -> Denoiser:
    """Wrap a raw network `F(x_in, c_noise, cond) -> [N, ...]` as an EDM-preconditioned denoiser.

    `net` receives `x_in = c_in * x` (`[N, ...]`) and `c_noise = log(sigma)/4` (`[N]`).
    """

    def denoise(x, sigma, cond=None):
        sigma = _sigma_vector(sigma, x)
        c = edm_scalings(sigma, sigma_data)
        f = net(x * broadcast_like(c.c_in, x), c.c_noise, cond)
        _check_output(f, x, "network")
        return (broadcast_like(c.c_skip, x) * x + broadcast_like(c.c_out, x) * f).astype(x.dtype)

    return denoise


def edm_target(x0, x, sigma, sigma_data=0.5):
    """The raw-network regression target `F* = (x0 - c_skip x) / c_out` (unit variance)."""
    c = edm_scalings(_sigma_vector(sigma, x), sigma_data)
    return (x0 - broadcast_like(c.c_skip, x) * x) / broadcast_like(c.c_out, x)


# --------------------------------------------------------------------------------------------
# Adapters from epsilon / v / x0 prediction and VP-scaled inputs
# --------------------------------------------------------------------------------------------

_PREDICTIONS = ("eps", "v", "x0")
_INPUT_SCALINGS = ("ve", "vp")


def from_prediction(
    model: Callable,
    prediction: str = "eps",
    *,
    input_scaling: str = "vp",
    noise_input: Callable[[jax.Array], jax.Array] | None = None,
) -> Denoiser:
    """Turn `model(x_model, t_model, cond) -> out` into a jaxdiff denoiser.

    Args:
      model: the network. Its input `x_model` is `x` ("ve") or `x_vp = alpha * x` ("vp");
        its noise input is `noise_input(sigma)` (`[N]`), e.g. `schedules.vp_linear_t`,
        a DDPM-timestep map `lambda s: 999 * vp_linear_t(s)` or
        `lambda s: schedules.sigma_to_ddpm_t(s, alpha_bar)`. Default: sigma itself.
      prediction: what `out` is: "eps" (noise), "v" (Salimans & Ho velocity, defined in VP
        coordinates) or "x0" (clean data).
      input_scaling: "vp" (DDPM/ADM/SD-style networks, whose input has unit-ish variance) or
        "ve" (the network sees `x` itself).

    Returns:
      `denoise(x, sigma, cond)` in the EDM/VE convention.
    """
    if prediction not in _PREDICTIONS:
        raise ValueError(f"unknown prediction {prediction!r}; valid: {', '.join(_PREDICTIONS)}")
    if input_scaling not in _INPUT_SCALINGS:
        raise ValueError(
            f"unknown input_scaling {input_scaling!r}; valid: {', '.join(_INPUT_SCALINGS)}"
        )
    if prediction == "v" and input_scaling != "vp":
        # v is defined through the VP pair (alpha, s); a "VE v" has no standard meaning.
        raise ValueError("v-prediction is defined in VP coordinates: use input_scaling='vp'")
    noise_input = (lambda s: s) if noise_input is None else noise_input

    def denoise(x, sigma, cond=None):
        sigma = _sigma_vector(sigma, x)
        sig = broadcast_like(sigma, x)
        alpha = broadcast_like(alpha_from_sigma(sigma), x)
        x_model = x * alpha if input_scaling == "vp" else x
        out = model(x_model, noise_input(sigma), cond)
        _check_output(out, x, "model")
        if prediction == "eps":
            x0 = x - sig * out
        elif prediction == "x0":
            x0 = out
        else:  # v: x0 = alpha x_vp - s v, with s = sigma alpha
            x0 = alpha * x_model - sig * alpha * out
        return x0.astype(x.dtype)

    return denoise


def from_epsilon(model, *, input_scaling="vp", noise_input=None) -> Denoiser:
    """`from_prediction(model, "eps", ...)`."""
    return from_prediction(model, "eps", input_scaling=input_scaling, noise_input=noise_input)


def from_v(model, *, noise_input=None) -> Denoiser:
    """`from_prediction(model, "v", input_scaling="vp", ...)`."""
    return from_prediction(model, "v", input_scaling="vp", noise_input=noise_input)


def from_x0(model, *, input_scaling="ve", noise_input=None) -> Denoiser:
    """`from_prediction(model, "x0", ...)`."""
    return from_prediction(model, "x0", input_scaling=input_scaling, noise_input=noise_input)


def to_epsilon(denoise: Denoiser) -> Callable:
    """The epsilon-prediction view of a denoiser: `eps(x, sigma, cond) = (x - D) / sigma`."""

    def eps(x, sigma, cond=None):
        sigma = _sigma_vector(sigma, x)
        return (x - denoise(x, sigma, cond)) / broadcast_like(sigma, x)

    return eps


def to_score(denoise: Denoiser) -> Callable:
    """Tweedie: `score(x, sigma, cond) = (D(x; sigma) - x) / sigma**2`."""

    def score(x, sigma, cond=None):
        sigma = _sigma_vector(sigma, x)
        return (denoise(x, sigma, cond) - x) / broadcast_like(jnp.square(sigma), x)

    return score


# --------------------------------------------------------------------------------------------
# Input checks (at trace time: shapes and dtypes are static)
# --------------------------------------------------------------------------------------------


def _sigma_vector(sigma, x):
    """Accept a scalar or `[N]` sigma; return `[N]` in x's dtype. Shape errors at trace time."""
    sigma = jnp.asarray(sigma)
    if sigma.ndim == 0:
        sigma = jnp.broadcast_to(sigma, (x.shape[0],))
    if sigma.shape != (x.shape[0],):
        raise ValueError(
            f"sigma must be a scalar or a per-sample vector [N]={x.shape[0]}; got {sigma.shape}"
        )
    return sigma.astype(x.dtype)


def _check_output(out, x, what):
    if jnp.shape(out) != x.shape:
        raise ValueError(f"{what} output shape {jnp.shape(out)} does not match x {x.shape}")
