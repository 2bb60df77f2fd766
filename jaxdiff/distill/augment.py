"""DSA: differentiable siamese augmentation (Zhao & Bilen 2021; dd-common.md §4).

    augment(key, images [N, H, W, C], strategy, params, siamese) -> [N, H, W, C]

Pure functions of a PRNG key on NHWC float images, differentiable with respect to the images
(distillation backpropagates through them), jittable and vmappable.

Mode 'S' (the references' default everywhere): each call picks ONE family uniformly from the
strategy's '_'-separated tokens, with `lax.switch` on a random integer, and applies it:

| family | op (u ~ U[0, 1), one value per image, or per batch in siamese mode)               |
|--------|-------------------------------------------------------------------------------------|
| color  | brightness x + (u - 0.5) * 1.0, then saturation (x - m_c) * 2u + m_c (m_c: mean over  |
|        | channels per pixel), then contrast (x - m) * (u + 0.5) + m (m: mean over H, W, C);   |
|        | three independent draws                                                             |
| crop   | translation by integers t_h, t_w in {-s..s}, s = int(H * 0.125 + 0.5), zero fill      |
| cutout | zero a q x q square, q = int(H * 0.5 + 0.5), centre o in {0..H - (q mod 2)}, rows     |
|        | o - q//2 .. o - q//2 + q - 1 clipped to the image; same mask for every channel       |
| flip   | mirror along the width axis (axis 2) with probability 0.5 (flip iff u < 0.5)         |
| scale  | affine [[s_x, 0, 0], [0, s_y, 0]], s ~ U[1/1.2, 1.2] independently                   |
| rotate | affine [[cos a, -sin a, 0], [sin a, cos a, 0]], a ~ U[-15 deg, 15 deg]               |

Affine matrices follow PyTorch's `affine_grid` convention: they map normalised OUTPUT
coordinates (x = width, y = height, in [-1, 1]) to the INPUT coordinates that are sampled,
bilinearly with zero padding (`grid_sample(mode='bilinear', padding_mode='zeros')`).

Per-sample vs siamese (dd-common.md §4.3):

* per-sample (`siamese=False`; evaluation training, expert training, TM inner steps): the family
  is chosen once per call and every image draws its own parameters (batch shape `[N]`);
* siamese (`siamese=True`; DC/DSA/DM distillation): one draw with batch shape `[1]`,
  broadcast to the whole batch. Calling with the same key on a real batch and a synthetic batch
  (of any sizes) applies the identical transform to every image of both, as the references do
  by re-seeding and broadcasting sample 0's parameters.

`align_corners` (dd-common.md §4.4): default True (DC, and FreD/DDiF trajectory matching; MTT
uses False). Both are honoured. For square images the two conventions give the same sampling
grid for scale and rotate in exact arithmetic: with n = (p - c)/k and p = c + k n, the
normalisation scale k ((W-1)/2 or W/2) cancels when it is the same along both axes, so
p_in = c + A (p_out - c). They differ only for non-square images (k_x/k_y = (W-1)/(H-1) vs W/H).

Individual ops take explicit parameters (`brightness(images, delta)`, `rotate(images,
angle_rad, align_corners=...)`, ...) with per-image parameters of shape `[B]`, B = N or 1
(broadcast), or scalars; `sample_params` draws them and `apply_family` applies one family.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
from jax import lax

FAMILIES = ("color", "crop", "cutout", "flip", "scale", "rotate")
DEFAULT_STRATEGY = "color_crop_cutout_flip_scale_rotate"
DIGITS_STRATEGY = "color_crop_cutout_scale_rotate"  # flipping changes a digit's identity


@dataclasses.dataclass(frozen=True)
class DSAParams:
    """DSA hyperparameters (the references' `ParamDiffAug` defaults), plus `align_corners`.

    Frozen and hashable, so it can be closed over or passed as a static argument of `jit`.
    """

    prob_flip: float = 0.5
    ratio_scale: float = 1.2
    ratio_rotate: float = 15.0  # degrees
    ratio_crop_pad: float = 0.125
    ratio_cutout: float = 0.5
    brightness: float = 1.0
    saturation: float = 2.0
    contrast: float = 0.5
    align_corners: bool = True


def parse_strategy(strategy: str | None) -> tuple[str, ...]:
    """`"color_crop_..."` -> ("color", "crop", ...); "", "none" or None -> () (identity)."""
    if strategy is None or strategy in ("", "none"):
        return ()
    tokens = tuple(strategy.split("_"))
    bad = [t for t in tokens if t not in FAMILIES]
    if bad:
        raise ValueError(
            f"unknown DSA token(s) {bad} in strategy {strategy!r}; tokens are {FAMILIES} joined "
            f"by '_' (e.g. {DEFAULT_STRATEGY!r}), or '' / 'none' for no augmentation")
    return tokens


def _per_image(p, images: jax.Array) -> jax.Array:
    """Scalar or `[B]` parameter -> `[B or 1, 1, 1, 1]` in the images' dtype."""
    p = jnp.asarray(p, images.dtype)
    return p.reshape(-1, 1, 1, 1)


def _int_per_image(p) -> jax.Array:
    return jnp.asarray(p, jnp.int32).reshape(-1, 1, 1)


# ---------------------------------------------------------------------------------------------
# Ops with explicit parameters. images: [N, H, W, C] float; parameters: scalar or [B], B in {1, N}.
# ---------------------------------------------------------------------------------------------


def brightness(images: jax.Array, delta) -> jax.Array:
    """`x + delta` (DSA: delta = (u - 0.5) * ratio_brightness)."""
    return images + _per_image(delta, images)


def _channel_mean(images: jax.Array) -> jax.Array:
    """Mean over the last (channel) axis, keepdims: `[N, H, W, 1]`."""
    c = images.shape[-1]
    if c > 8:
        return jnp.mean(images, axis=-1, keepdims=True)
    # XLA:CPU reduces a tiny minor axis ~35x slower than this sum of slices (measured: 8.4 ms
    # vs 0.24 ms for 256x32x32x3), and the saturation op runs on every training batch.
    total = images[..., 0:1]
    for i in range(1, c):
        total = total + images[..., i:i + 1]
    return total * (1.0 / c)


def saturation(images: jax.Array, factor) -> jax.Array:
    """`(x - m) * factor + m`, m = per-pixel mean over channels (DSA: factor = u * 2.0)."""
    m = _channel_mean(images)
    return (images - m) * _per_image(factor, images) + m


def contrast(images: jax.Array, factor) -> jax.Array:
    """`(x - m) * factor + m`, m = per-image mean over H, W, C (DSA: factor = u + 0.5)."""
    m = jnp.mean(images, axis=(1, 2, 3), keepdims=True)
    return (images - m) * _per_image(factor, images) + m


def crop(images: jax.Array, shift_h, shift_w) -> jax.Array:
    """Integer translation with zero fill: `out[h, w] = x[h + shift_h, w + shift_w]`, 0 outside.

    The references implement it with 1-pixel zero padding and a clamped gather, which is this
    (dd-common.md §4.2). Shifts: int scalars or `[B]`.
    """
    _, hh, ww, _ = images.shape
    th, tw = _int_per_image(shift_h), _int_per_image(shift_w)

    def roll(x, a, b):
        return jnp.roll(x, (-a, -b), axis=(0, 1))

    if th.shape[0] == 1:
        shifted = jnp.roll(images, (-th[0, 0, 0], -tw[0, 0, 0]), axis=(1, 2))
    else:
        shifted = jax.vmap(roll)(images, th[:, 0, 0], tw[:, 0, 0])
    rows = jnp.arange(hh)[None, :, None] + th  # source row of each output row
    cols = jnp.arange(ww)[None, None, :] + tw
    valid = (rows >= 0) & (rows < hh) & (cols >= 0) & (cols < ww)  # [B, H, W]
    return jnp.where(valid[..., None], shifted, jnp.zeros((), images.dtype))


def cutout(images: jax.Array, center_h, center_w, size: int | tuple[int, int]) -> jax.Array:
    """Zero rows `center_h - q_h//2 .. center_h - q_h//2 + q_h - 1` x the same for columns.

    The square is clipped to the image; the same mask applies to every channel. `size` is q
    (or (q_h, q_w)), static; centres are int scalars or `[B]`.
    """
    _, hh, ww, _ = images.shape
    qh, qw = (size, size) if isinstance(size, int) else size
    lo_h = _int_per_image(center_h) - qh // 2
    lo_w = _int_per_image(center_w) - qw // 2
    rows = jnp.arange(hh)[None, :, None]
    cols = jnp.arange(ww)[None, None, :]
    inside = (rows >= lo_h) & (rows < lo_h + qh) & (cols >= lo_w) & (cols < lo_w + qw)
    return jnp.where(inside[..., None], jnp.zeros((), images.dtype), images)


def flip(images: jax.Array, do_flip) -> jax.Array:
    """Mirror along the width axis (axis 2) where `do_flip` (bool scalar or `[B]`) is true."""
    do_flip = jnp.asarray(do_flip, bool).reshape(-1, 1, 1, 1)
    return jnp.where(do_flip, images[:, :, ::-1, :], images)


def _base_coords(size: int, align_corners: bool, dtype) -> jax.Array:
    """`affine_grid`'s normalised coordinates of the `size` output pixel centres."""
    base = jnp.linspace(-1.0, 1.0, size, dtype=dtype)
    if not align_corners:
        base = base * ((size - 1) / size)
    return base


def _unnormalise(coord: jax.Array, size: int, align_corners: bool) -> jax.Array:
    """`grid_sample`'s map from normalised [-1, 1] coordinates to pixel indices."""
    if align_corners:
        return (coord + 1.0) * 0.5 * (size - 1)
    return ((coord + 1.0) * size - 1.0) * 0.5


def bilinear_sample(images: jax.Array, rows: jax.Array, cols: jax.Array) -> jax.Array:
    """Bilinear sampling with zero padding at fractional pixel coordinates.

    Args:
      images: `[N, H, W, C]`.
      rows, cols: `[B, H', W']` pixel coordinates (row = height index, col = width index),
        B = N, or 1 for one grid shared by the whole batch.

    Returns:
      `[N, H', W', C]`; each of the 4 neighbours outside the image contributes 0.
    """
    n, hh, ww, c = images.shape
    b, ho, wo = rows.shape
    flat = images.reshape(n, hh * ww, c)
    r0 = jnp.floor(rows)
    c0 = jnp.floor(cols)
    fr = (rows - r0).astype(images.dtype)
    fc = (cols - c0).astype(images.dtype)
    r0 = r0.astype(jnp.int32)
    c0 = c0.astype(jnp.int32)
    out = jnp.zeros((n, ho * wo, c), images.dtype)
    for dr, dc, w in ((0, 0, (1 - fr) * (1 - fc)), (0, 1, (1 - fr) * fc),
                      (1, 0, fr * (1 - fc)), (1, 1, fr * fc)):
        ri, ci = r0 + dr, c0 + dc
        valid = (ri >= 0) & (ri < hh) & (ci >= 0) & (ci < ww)
        idx = (jnp.clip(ri, 0, hh - 1) * ww + jnp.clip(ci, 0, ww - 1)).reshape(b, ho * wo)
        w = jnp.where(valid, w, 0).reshape(b, ho * wo, 1)
        if b == 1:
            vals = jnp.take(flat, idx[0], axis=1)  # one shared grid: a plain gather
        else:
            vals = jnp.take_along_axis(flat, idx[:, :, None], axis=1)
        out = out + vals * w
    return out.reshape(n, ho, wo, c)


def affine(images: jax.Array, theta: jax.Array, *, align_corners: bool = True) -> jax.Array:
    """PyTorch `grid_sample(x, affine_grid(theta, x.shape))`: bilinear, zero padding.

    Args:
      images: `[N, H, W, C]`.
      theta: `[B, 2, 3]` (B = N or 1) or `[2, 3]`: maps normalised output coordinates
        (x = width, y = height, 1) to normalised input coordinates.
      align_corners: PyTorch's flag (True: -1 and 1 are the centres of the corner pixels;
        False: the outer edges of the corner pixels).

    Returns:
      `[N, H, W, C]`.
    """
    _, hh, ww, _ = images.shape
    dtype = jnp.promote_types(images.dtype, jnp.float32)
    theta = jnp.asarray(theta, dtype).reshape(-1, 2, 3)
    theta = lax.stop_gradient(theta)  # the sampling grid is not optimised; saves backward work
    xs = _base_coords(ww, align_corners, dtype)[None, None, :]
    ys = _base_coords(hh, align_corners, dtype)[None, :, None]
    t = theta[:, :, :, None, None]
    x_in = t[:, 0, 0] * xs + t[:, 0, 1] * ys + t[:, 0, 2]  # [B, H, W]
    y_in = t[:, 1, 0] * xs + t[:, 1, 1] * ys + t[:, 1, 2]
    cols = _unnormalise(x_in, ww, align_corners)
    rows = _unnormalise(y_in, hh, align_corners)
    return bilinear_sample(images, rows, cols)


def scale(images: jax.Array, sx, sy, *, align_corners: bool = True) -> jax.Array:
    """Affine `[[sx, 0, 0], [0, sy, 0]]` (sx: width, sy: height); scalars or `[B]`."""
    sx = jnp.atleast_1d(jnp.asarray(sx, jnp.float32))
    sy = jnp.atleast_1d(jnp.asarray(sy, jnp.float32))
    sx, sy = jnp.broadcast_arrays(sx, sy)
    z = jnp.zeros_like(sx)
    theta = jnp.stack([jnp.stack([sx, z, z], -1), jnp.stack([z, sy, z], -1)], -2)
    return affine(images, theta, align_corners=align_corners)


def rotate(images: jax.Array, angle_rad, *, align_corners: bool = True) -> jax.Array:
    """Affine `[[cos a, -sin a, 0], [sin a, cos a, 0]]`, a in radians; scalar or `[B]`."""
    a = jnp.atleast_1d(jnp.asarray(angle_rad, jnp.float32))
    cos, sin, z = jnp.cos(a), jnp.sin(a), jnp.zeros_like(a)
    theta = jnp.stack([jnp.stack([cos, -sin, z], -1), jnp.stack([sin, cos, z], -1)], -2)
    return affine(images, theta, align_corners=align_corners)


# ---------------------------------------------------------------------------------------------
# Random parameters and families.
# ---------------------------------------------------------------------------------------------


def _ratio_size(size: int, ratio: float) -> int:
    """The references' `int(size * ratio + 0.5)`."""
    return int(size * ratio + 0.5)


def sample_params(key: jax.Array, family: str, batch: int, image_hw: tuple[int, int],
                  params: DSAParams = DSAParams()) -> dict[str, jax.Array]:
    """Draw one family's parameters for `batch` images (batch = 1 in siamese mode).

    Returns a dict of `[batch]` arrays, the arguments of the family's ops:
      color: delta (brightness), saturation, contrast; crop: shift_h, shift_w;
      cutout: center_h, center_w; flip: do_flip; scale: sx, sy; rotate: angle (radians).
    """
    hh, ww = image_hw
    shape = (batch,)
    u = lambda k: jax.random.uniform(k, shape)  # noqa: E731
    if family == "color":
        kb, ks, kc = jax.random.split(key, 3)
        return {
            "delta": (u(kb) - 0.5) * params.brightness,
            "saturation": u(ks) * params.saturation,
            "contrast": u(kc) + params.contrast,
        }
    if family == "crop":
        sh = _ratio_size(hh, params.ratio_crop_pad)
        sw = _ratio_size(ww, params.ratio_crop_pad)
        kh, kw = jax.random.split(key)
        return {
            "shift_h": jax.random.randint(kh, shape, -sh, sh + 1),
            "shift_w": jax.random.randint(kw, shape, -sw, sw + 1),
        }
    if family == "cutout":
        qh = _ratio_size(hh, params.ratio_cutout)
        qw = _ratio_size(ww, params.ratio_cutout)
        kh, kw = jax.random.split(key)
        # Exclusive upper bound H + 1 - (q mod 2), as in the references.
        return {
            "center_h": jax.random.randint(kh, shape, 0, hh + 1 - qh % 2),
            "center_w": jax.random.randint(kw, shape, 0, ww + 1 - qw % 2),
        }
    if family == "flip":
        return {"do_flip": u(key) < params.prob_flip}
    if family == "scale":
        r = params.ratio_scale
        kx, ky = jax.random.split(key)
        return {"sx": u(kx) * (r - 1.0 / r) + 1.0 / r, "sy": u(ky) * (r - 1.0 / r) + 1.0 / r}
    if family == "rotate":
        return {"angle": (u(key) - 0.5) * 2.0 * params.ratio_rotate / 180.0 * math.pi}
    raise ValueError(f"unknown DSA family {family!r}; expected one of {FAMILIES}")


def apply_family(family: str, images: jax.Array, p: dict[str, jax.Array],
                 params: DSAParams = DSAParams()) -> jax.Array:
    """Apply one family with explicit parameters `p` (as returned by `sample_params`)."""
    hh, ww = images.shape[1:3]
    if family == "color":
        x = brightness(images, p["delta"])
        x = saturation(x, p["saturation"])
        return contrast(x, p["contrast"])
    if family == "crop":
        return crop(images, p["shift_h"], p["shift_w"])
    if family == "cutout":
        size = (_ratio_size(hh, params.ratio_cutout), _ratio_size(ww, params.ratio_cutout))
        return cutout(images, p["center_h"], p["center_w"], size)
    if family == "flip":
        return flip(images, p["do_flip"])
    if family == "scale":
        return scale(images, p["sx"], p["sy"], align_corners=params.align_corners)
    if family == "rotate":
        return rotate(images, p["angle"], align_corners=params.align_corners)
    raise ValueError(f"unknown DSA family {family!r}; expected one of {FAMILIES}")


def augment(
    key: jax.Array,
    images: jax.Array,
    strategy: str = DEFAULT_STRATEGY,
    params: DSAParams = DSAParams(),
    siamese: bool = False,
) -> jax.Array:
    """DSA in mode 'S': one family chosen uniformly from `strategy`, then applied.

    Args:
      key: typed PRNG key; `split(key)` gives the family-choice key and the parameter key,
        so equal keys give equal choices and, in siamese mode, equal parameters.
      images: `[N, H, W, C]` float (normalised or ZCA space; no clamping anywhere).
      strategy: '_'-joined tokens from `FAMILIES`; "" or "none" returns the images unchanged.
      params: `DSAParams` (static).
      siamese: False: per-image parameters; True: one draw broadcast to the whole batch.

    Returns:
      `[N, H, W, C]` augmented images, same dtype.
    """
    families = parse_strategy(strategy)
    if not families:
        return images
    if images.ndim != 4:
        raise ValueError(f"images must be [N, H, W, C], got shape {images.shape}")
    k_choice, k_params = jax.random.split(key)
    batch = 1 if siamese else images.shape[0]
    hw = images.shape[1:3]

    def branch(family):
        def run(x):
            return apply_family(family, x, sample_params(k_params, family, batch, hw, params),
                                params)
        return run

    branches = [branch(f) for f in families]
    if len(branches) == 1:
        return branches[0](images)
    index = jax.random.randint(k_choice, (), 0, len(branches))
    return lax.switch(index, branches, images)


# ----------------------------------------------------------------------------- strategy by dataset
# Digit datasets are not flipped (DSA README): flipping changes a digit's identity.
DIGIT_DATASETS = frozenset({"digits", "mnist", "svhn_cropped"})
FULL_STRATEGY = "color_crop_cutout_flip_scale_rotate"
DIGITS_STRATEGY = "color_crop_cutout_scale_rotate"


def strategy_for(dataset: str, strategy: str) -> str:
    """The references' strategy for `dataset` when `strategy` is "auto"; "" or "none" -> ""."""
    if strategy == "auto":
        return DIGITS_STRATEGY if dataset in DIGIT_DATASETS else FULL_STRATEGY
    return "" if strategy == "none" else strategy


def per_sample_augment(strategy: str):
    """`augment(key, images)` with per-image parameters (evaluation, experts, TM), or None when
    `strategy` is empty."""
    if not strategy:
        return None
    return functools.partial(_per_sample_call, strategy=strategy)


def siamese_augment(strategy: str):
    """`augment(key, images, siamese=True)` for DC/DM distillation (one draw per call, shared by
    the real and the synthetic batch of a class), or None when `strategy` is empty."""
    if not strategy:
        return None
    return functools.partial(_siamese_call, strategy=strategy)


def _per_sample_call(key, images, *, strategy):
    return augment(key, images, strategy=strategy, siamese=False)


def _siamese_call(key, images, siamese=True, *, strategy):
    return augment(key, images, strategy=strategy, siamese=siamese)
