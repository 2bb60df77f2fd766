"""Pixel transforms: bilinear resize (host, uint8) and mean/std normalisation (numpy or jnp).

`normalize`/`denormalize` follow the input's array type: NumPy in, NumPy out; a `jax.Array` (or a
tracer inside `jit`) in, `jax.Array` out — so they run on the host for whole datasets and on the
device inside training steps.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from jaxdiff.data.registry import DatasetInfo, Stats, resolve_stats


def linear_weights(in_size: int, out_size: int, *, antialias: bool = True) -> np.ndarray:
    """`[out_size, in_size]` float64 bilinear interpolation matrix, half-pixel centres.

    Output pixel o samples input coordinate c = (o + 0.5) * in/out - 0.5 with a triangle kernel;
    with `antialias` and when shrinking, the kernel is widened by in/out. Weights of taps outside
    the image are dropped and the rest renormalised (edge clamping). With `antialias` this is
    `jax.image.resize(..., "linear", antialias=True)`; without it, PyTorch's
    `interpolate(mode="bilinear", align_corners=False, antialias=False)` (two taps, the source
    coordinate clamped at 0), which for upsampling is the same matrix.
    """
    scale = in_size / out_size
    width = max(scale, 1.0) if antialias else 1.0
    centre = (np.arange(out_size) + 0.5) * scale - 0.5
    w = np.maximum(0.0, 1.0 - np.abs(centre[:, None] - np.arange(in_size)[None, :]) / width)
    return w / w.sum(axis=1, keepdims=True)


def resize_bilinear(images: np.ndarray, size: tuple[int, int], *, chunk: int = 4096,
                    antialias: bool = True) -> np.ndarray:
    """Resize `images: [N, H, W, C] uint8` to `[N, size[0], size[1], C] uint8` (bilinear, see
    `linear_weights`), rounding to the nearest integer. Runs on the host in float32 chunks."""
    n, h, w, c = images.shape
    if (h, w) == tuple(size):
        return images
    wh = linear_weights(h, size[0], antialias=antialias).astype(np.float32)
    ww = linear_weights(w, size[1], antialias=antialias).astype(np.float32)
    out = np.empty((n, size[0], size[1], c), np.uint8)
    for s in range(0, n, chunk):
        x = images[s:s + chunk].astype(np.float32)
        m = len(x)
        # Separable: rows then columns, each one batched matrix product (einsum is ~3x slower).
        y = np.matmul(wh, x.reshape(m, h, w * c)).reshape(m * size[0], w, c)
        y = np.matmul(ww, y).reshape(m, size[0], size[1], c)
        out[s:s + chunk] = np.clip(np.rint(y), 0, 255)
    return out


# ------------------------------------------------------------------ reference image transform
# How the references turn one decoded photo into a training image (MTT / FreD / DDiF
# `utils.py: get_dataset`, dataset 'ImageNet'): ToTensor -> Normalize(ImageNet mean/std) ->
# Resize(im_size) -> CenterCrop(im_size) with im_size = (res, res), a *pair*, so Resize squashes
# the photo to res x res without keeping its aspect ratio and CenterCrop changes nothing. Resize
# runs on the float tensor: bilinear, align_corners=False, and no antialiasing (torchvision
# 0.12 / 0.16, which those codebases pin, antialias only PIL images). Normalisation is affine
# per channel and the bilinear weights sum to 1, so resizing the 0..255 pixels first gives the
# same values; jaxdiff rounds the resized pixels to uint8 for its cache (at most 0.5/255/std,
# 0.009 in normalised units, from the reference's float values) and normalises when it uses them.
FITS = ("squash", "short_side_crop")


def fit_size(height: int, width: int, res: int, fit: str) -> tuple[int, int]:
    """The `(h, w)` a photo of `height x width` is resized to before the centre crop: `(res,
    res)` for "squash" (the references), torchvision's `Resize(res)` for "short_side_crop" (the
    shorter side to res, the longer to int(res * long / short))."""
    if fit == "squash":
        return res, res
    if fit != "short_side_crop":
        raise ValueError(f"unknown fit {fit!r}; known: {', '.join(FITS)}")
    if width <= height:
        return int(res * height / width), res
    return res, int(res * width / height)


def resize_crop(image: np.ndarray, res: int, *, fit: str = "squash",
                antialias: bool = False) -> np.ndarray:
    """One photo `[H, W, C] uint8` -> `[res, res, C] uint8`: `resize_crop_float` rounded to the
    nearest integer. A photo already res x res is returned unchanged."""
    if image.shape[:2] == (res, res) and fit_size(res, res, res, fit) == (res, res):
        return image
    y = resize_crop_float(image, res, fit=fit, antialias=antialias)
    return np.clip(np.rint(y), 0, 255).astype(np.uint8)


def resize_crop_float(image: np.ndarray, res: int, *, fit: str = "squash",
                      antialias: bool = False) -> np.ndarray:
    """One photo `[H, W, C]` -> `[res, res, C] float32` in the photo's units: bilinear resize to
    `fit_size(H, W, res, fit)` (no antialiasing by default: the references' tensor Resize), then
    a centre crop of res x res at torchvision's offsets, int(round((h - res) / 2)). Only the
    rows and columns the crop keeps are computed."""
    h, w, c = image.shape
    th, tw = fit_size(h, w, res, fit)
    top, left = int(round((th - res) / 2.0)), int(round((tw - res) / 2.0))
    x = np.asarray(image, np.float32)
    if antialias:   # dense separable weights (every tap of the widened kernel)
        wh = linear_weights(h, th, antialias=True)[top:top + res].astype(np.float32)
        ww = linear_weights(w, tw, antialias=True)[left:left + res].astype(np.float32)
        y = np.matmul(wh, x.reshape(h, w * c)).reshape(res, w, c)
        return np.matmul(ww[None], y)
    i0, i1, f = bilinear_taps(h, th)       # two taps per output pixel: a gather, O(output)
    rows = slice(top, top + res)
    y = x[i0[rows]] * (1 - f[rows, None, None]) + x[i1[rows]] * f[rows, None, None]
    i0, i1, f = bilinear_taps(w, tw)
    cols = slice(left, left + res)
    return y[:, i0[cols]] * (1 - f[None, cols, None]) + y[:, i1[cols]] * f[None, cols, None]


def bilinear_taps(in_size: int, out_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """PyTorch's bilinear sampling without antialiasing (align_corners=False) along one axis:
    output o reads input `i0[o]` with weight 1 - f[o] and `i1[o]` with weight f[o], where the
    source coordinate (o + 0.5) * in/out - 0.5 is clamped at 0 and i1 = min(i0 + 1, in - 1).
    The same weights as `linear_weights(..., antialias=False)`, as a gather."""
    src = np.maximum((np.arange(out_size) + 0.5) * (in_size / out_size) - 0.5, 0.0)
    i0 = np.minimum(np.floor(src).astype(np.int64), in_size - 1)
    i1 = np.minimum(i0 + 1, in_size - 1)
    return i0, i1, (src - i0).astype(np.float32)


def _stats(info: DatasetInfo | None, stats) -> Stats:
    if stats is not None:
        return resolve_stats(stats)
    if info is None:
        raise ValueError("pass a DatasetInfo or stats=")
    return info.stats


def _xp(x):
    return jnp if isinstance(x, jax.Array) else np


def normalize(images, info: DatasetInfo | None = None, *, stats=None):
    """`images: [..., C] uint8` -> `[..., C] float32` = (images / 255 - mean) / std.

    Statistics come from `stats` (a `Stats`, `(mean, std)` or a `STATS` key) when given, else from
    `info`. NumPy in, NumPy out; `jax.Array` in, `jax.Array` out.
    """
    s = _stats(info, stats)
    xp = _xp(images)
    if images.dtype != np.uint8:
        raise TypeError(f"normalize expects uint8 images in 0..255, got dtype {images.dtype}")
    if images.shape[-1] != len(s.mean):
        raise ValueError(f"images have {images.shape[-1]} channels, statistics have {len(s.mean)}")
    return normalize_with(images, xp.asarray(s.mean, xp.float32), xp.asarray(s.std, xp.float32))


def normalize_with(images, mean, std):
    """uint8 `[..., C]` -> float32 `(images / 255 - mean) / std` for `mean`, `std` given as `[C]`
    arrays — the form jitted steps use on device-resident uint8 images (statistics passed as
    arguments, not baked in). No checks: `normalize` is the checked entry point."""
    xp = _xp(images)
    return (images.astype(xp.float32) / xp.float32(255.0) - mean) / std


def denormalize(x, info: DatasetInfo | None = None, *, stats=None):
    """Inverse of `normalize` up to the uint8 rounding: `x * std + mean`, float32 in [0, 1]-ish.

    No clipping: synthetic images leave [0, 1] and their true values matter. Use `to_display` for
    pictures.
    """
    s = _stats(info, stats)
    xp = _xp(x)
    if x.shape[-1] != len(s.mean):
        raise ValueError(f"x has {x.shape[-1]} channels, statistics have {len(s.mean)}")
    mean = xp.asarray(s.mean, xp.float32)
    std = xp.asarray(s.std, xp.float32)
    return xp.asarray(x, xp.float32) * std + mean


def to_display(x, info: DatasetInfo | None = None, *, stats=None):
    """`denormalize` then clip to [0, 1]: float32 images ready for plotting/saving."""
    y = denormalize(x, info, stats=stats)
    return _xp(y).clip(y, 0.0, 1.0)


# ------------------------------------------------------------------ diffusion model space
MODEL_SPACE = "x = uint8 / 127.5 - 1 (pixels in [-1, 1])"


def to_model_space(images):
    """`[..., C] uint8 -> float32` in [-1, 1] (`uint8 / 127.5 - 1`), the EDM/DDPM data space the
    diffusion models work in. NumPy in, NumPy out; `jax.Array` in, `jax.Array` out."""
    xp = _xp(images)
    if images.dtype != np.uint8:
        raise TypeError(f"to_model_space expects uint8 images, got dtype {images.dtype}")
    return images.astype(xp.float32) / xp.float32(127.5) - xp.float32(1.0)


def model_space_to_display(x) -> np.ndarray:
    """Model-space images `[N, H, W, C]` -> float32 `[0, 1]` (clipped) NumPy, for PNG grids."""
    return np.clip((np.asarray(x, np.float32) + 1.0) * 0.5, 0.0, 1.0)


def model_space_to_uint8(x) -> np.ndarray:
    """Model-space images -> uint8 (rounded, clipped)."""
    return np.round(model_space_to_display(x) * 255.0).astype(np.uint8)
