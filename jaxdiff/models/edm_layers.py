"""The layers of NVlabs/edm's networks (`training/networks.py`) in Flax NNX, shared by the
SongUNet port (`models.edm`) and the DhariwalUNet port (`models.adm`).

Every layer stores its arrays under the torch array names (`weight`, `bias`,
`resample_filter`, `freqs`) in Flax layouts; `models.edm`'s docstring has the mapping table and
the conversion (`edm.torch_to_flax`). Activations are NHWC; the parameters are float32 and cast
to the activations' dtype at use (bfloat16 compute), while normalisation statistics, the noise
embeddings and the attention softmax stay in float32.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

_HI = jax.lax.Precision.HIGHEST  # GPU/TPU default precision gives ~1e-3 errors (fixture README)
_DN = ("NHWC", "HWIO", "NHWC")
# SongUNet's GroupNorm epsilon and residual scale: UNetBlock's defaults (ADM passes its own).
SONG_UNET_EPS = 1e-6
SONG_UNET_SKIP_SCALE = math.sqrt(0.5)

def _var(shape, dtype=jnp.float32):
    return jnp.zeros(shape, dtype)


# ---------------------------------------------------------------------------------------------
# Layers (torch array names, Flax layouts)

class Linear(nnx.Module):
    """y = x @ weight + bias; `weight` [in, out] (torch's [out, in] transposed)."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True):
        self.in_features, self.out_features = in_features, out_features
        self.weight = nnx.Param(_var((in_features, out_features)))
        self.bias = nnx.Param(_var((out_features,))) if bias else None

    def __call__(self, x):   # the parameters (float32) are used in x's dtype (compute dtype)
        y = jnp.matmul(x, self.weight[...].astype(x.dtype), precision=_HI)
        return y if self.bias is None else y + self.bias[...].astype(x.dtype)


def _resample_kernel(f: Sequence[float]) -> np.ndarray:
    f = np.asarray(f, np.float32)
    return (np.outer(f, f) / np.square(f.sum())).astype(np.float32)


def _depthwise(x, k2d, *, stride=1, lhs_dilation=1, padding=0):
    """Per-channel 2-D convolution of NHWC x with the [k, k] kernel k2d."""
    c = x.shape[-1]
    kern = jnp.broadcast_to(k2d[:, :, None, None], k2d.shape + (1, c)).astype(x.dtype)
    return jax.lax.conv_general_dilated(
        x, kern, window_strides=(stride, stride), padding=[(padding, padding)] * 2,
        lhs_dilation=(lhs_dilation, lhs_dilation), dimension_numbers=_DN,
        feature_group_count=c, precision=_HI)


def _upsample(x, k2d, torch_padding: int):
    """torch's per-channel conv_transpose2d with 4 K, stride 2 and padding `torch_padding`: an
    lhs-dilated convolution with padding k - 1 - torch_padding (K symmetric, so no flip)."""
    k = k2d.shape[0]
    return _depthwise(x, 4.0 * k2d[::-1, ::-1], lhs_dilation=2, padding=k - 1 - torch_padding)


def _conv(x, w, padding: int):
    return jax.lax.conv_general_dilated(x, w, (1, 1), [(padding, padding)] * 2,
                                        dimension_numbers=_DN, precision=_HI)


class Conv2d(nnx.Module):
    """EDM's Conv2d (spec 4.3): optional up/down FIR resampler (buffer `resample_filter`,
    [k, k]) and a kh x kw conv (`weight` HWIO, zero padding kh // 2) plus `bias`; kernel 0 =
    resampler only. Normal order: resample, then conv. `fused_resample` (NCSN++'s
    `_aux_residual`, down): conv with padding kh // 2 + p first, then the stride-2 filter
    without padding (p = (k - 1) // 2); fused up: the filter with padding max(p - kh // 2, 0),
    then the conv with padding max(kh // 2 - p, 0). They differ from the normal order at the
    borders."""

    def __init__(self, in_channels: int, out_channels: int, kernel: int, *, bias: bool = True,
                 up: bool = False, down: bool = False, resample_filter=(1, 1),
                 fused_resample: bool = False):
        if up and down:
            raise ValueError("Conv2d: up and down are exclusive")
        self.in_channels, self.out_channels = in_channels, out_channels
        self.up, self.down, self.kernel = up, down, kernel
        self.fused_resample = bool(fused_resample)
        self.weight = (nnx.Param(_var((kernel, kernel, in_channels, out_channels)))
                       if kernel else None)
        self.bias = nnx.Param(_var((out_channels,))) if kernel and bias else None
        if up or down:
            self.resample_filter = nnx.Variable(jnp.asarray(_resample_kernel(resample_filter)))
        else:
            self.resample_filter = None

    def __call__(self, x):
        f = self.resample_filter[...] if self.resample_filter is not None else None
        w = self.weight[...].astype(x.dtype) if self.weight is not None else None
        wp = w.shape[0] // 2 if w is not None else 0
        fp = (f.shape[0] - 1) // 2 if f is not None else 0
        if self.fused_resample and self.up and w is not None:
            x = _conv(_upsample(x, f, max(fp - wp, 0)), w, max(wp - fp, 0))
        elif self.fused_resample and self.down and w is not None:
            x = _depthwise(_conv(x, w, wp + fp), f, stride=2, padding=0)
        else:
            if self.up:
                x = _upsample(x, f, fp)
            if self.down:
                x = _depthwise(x, f, stride=2, padding=fp)
            if w is not None:
                x = _conv(x, w, wp)
        if self.bias is not None:
            x = x + self.bias[...].astype(x.dtype)
        return x


class GroupNorm(nnx.Module):
    """torch GroupNorm (two-pass biased variance, eps inside the sqrt); groups min(32, C // 4)."""

    def __init__(self, num_channels: int, *, num_groups: int = 32, min_channels_per_group: int = 4,
                 eps: float = 1e-5):
        self.num_groups = min(num_groups, num_channels // min_channels_per_group)
        self.eps = eps
        self.weight = nnx.Param(_var((num_channels,)))
        self.bias = nnx.Param(_var((num_channels,)))

    def __call__(self, x):   # statistics in float32 whatever x's dtype
        n, h, w, c = x.shape
        g = x.reshape(n, h, w, self.num_groups, c // self.num_groups).astype(jnp.float32)
        mean = g.mean(axis=(1, 2, 4), keepdims=True)
        var = jnp.square(g - mean).mean(axis=(1, 2, 4), keepdims=True)
        g = ((g - mean) * jax.lax.rsqrt(var + self.eps)).reshape(n, h, w, c)
        return (g * self.weight[...] + self.bias[...]).astype(x.dtype)


def positional_embedding(t, num_channels: int, max_positions: int = 10000, endpoint: bool = False):
    """[N] -> [N, num_channels]: [cos(t f), sin(t f)], f_i = (1/max_positions)^(i/(n/2 - e))."""
    half = num_channels // 2
    i = jnp.arange(half, dtype=jnp.float32) / (half - (1 if endpoint else 0))
    freqs = jnp.power(jnp.float32(1.0 / max_positions), i)
    arg = t.astype(jnp.float32)[:, None] * freqs[None, :]
    return jnp.concatenate([jnp.cos(arg), jnp.sin(arg)], axis=1)


class FourierEmbedding(nnx.Module):
    """NCSN++'s noise embedding (spec 4.1): [N] -> [N, num_channels] = [cos(2 pi f t),
    sin(2 pi f t)] with the buffer `freqs` [num_channels / 2] (random at upstream init, so it is
    imported like a weight; an `nnx.Variable`, not a Param). 2 pi f is formed in float32 first."""

    def __init__(self, num_channels: int):
        self.num_channels = num_channels
        self.freqs = nnx.Variable(_var((num_channels // 2,)))

    def __call__(self, t):
        w = (2 * np.pi) * self.freqs[...].astype(jnp.float32)  # weak scalar: float32 product
        arg = t.astype(jnp.float32)[:, None] * w[None, :]
        return jnp.concatenate([jnp.cos(arg), jnp.sin(arg)], axis=1)


def attention(qkv, num_heads: int):
    """qkv [N, H, W, 3C] laid out [q | k | v] (head-major in each) -> [N, H, W, C].
    score = q.k / sqrt(C/heads), softmax over keys in float32."""
    n, h, w, c3 = qkv.shape
    c = c3 // 3
    d = c // num_heads
    q, k, v = (a.reshape(n, h * w, num_heads, d).astype(jnp.float32)
               for a in jnp.split(qkv, 3, axis=-1))
    s = jnp.einsum("nihd,njhd->nhij", q, k / np.float32(np.sqrt(d)), precision=_HI)
    wts = jax.nn.softmax(s, axis=-1)
    o = jnp.einsum("nhij,njhd->nihd", wts, v, precision=_HI)
    return o.reshape(n, h, w, c).astype(qkv.dtype)


class UNetBlock(nnx.Module):
    """EDM's residual block (spec 4.5): `__call__(x [N, H, W, in_channels], emb [N, emb_channels])
    -> [N, H, W, out_channels]`. The defaults are SongUNet's (adaptive_scale False, skip_scale
    sqrt(0.5), eps 1e-6, one head, a resampling block's skip a 1x1 conv). DhariwalUNet passes
    adaptive_scale=True (`affine` gives 2 x out_channels: scale, shift), skip_scale 1, eps 1e-5,
    num_heads=None (out_channels // channels_per_head heads, so none below 64 channels) and
    resample_proj=False (the skip of a same-width down/up block is a kernel-0 resampler)."""

    def __init__(self, in_channels: int, out_channels: int, emb_channels: int, *,
                 up: bool = False, down: bool = False, attention: bool = False,
                 resample_filter=(1, 1), eps: float = SONG_UNET_EPS,
                 skip_scale: float = SONG_UNET_SKIP_SCALE, num_heads: int | None = 1,
                 channels_per_head: int = 64, resample_proj: bool = True,
                 adaptive_scale: bool = False):
        self.in_channels, self.out_channels = in_channels, out_channels
        if num_heads is None:   # ADM: heads of channels_per_head channels each
            num_heads = out_channels // channels_per_head
        self.num_heads = num_heads if attention else 0
        self.skip_scale = skip_scale
        self.adaptive_scale = adaptive_scale
        rf = dict(resample_filter=resample_filter)
        self.norm0 = GroupNorm(in_channels, eps=eps)
        self.conv0 = Conv2d(in_channels, out_channels, 3, up=up, down=down, **rf)
        self.affine = Linear(emb_channels, out_channels * (2 if adaptive_scale else 1))
        self.norm1 = GroupNorm(out_channels, eps=eps)
        self.conv1 = Conv2d(out_channels, out_channels, 3)
        if out_channels != in_channels or up or down:
            kernel = 1 if resample_proj or out_channels != in_channels else 0
            self.skip = Conv2d(in_channels, out_channels, kernel, up=up, down=down, **rf)
        else:
            self.skip = None
        if self.num_heads:
            self.norm2 = GroupNorm(out_channels, eps=eps)
            self.qkv = Conv2d(out_channels, out_channels * 3, 1)
            self.proj = Conv2d(out_channels, out_channels, 1)
        else:
            self.norm2 = self.qkv = self.proj = None

    def __call__(self, x, emb):
        orig = x
        x = self.conv0(jax.nn.silu(self.norm0(x)))
        a = self.affine(emb)[:, None, None, :]
        if self.adaptive_scale:  # ADM: silu(shift + norm1(x) * (scale + 1))
            scale, shift = jnp.split(a, 2, axis=-1)
            x = jax.nn.silu(shift + self.norm1(x) * (scale + 1))
        else:
            x = jax.nn.silu(self.norm1(x + a))
        x = self.conv1(x)  # dropout: eval mode
        x = (x + (self.skip(orig) if self.skip is not None else orig)) * self.skip_scale
        if self.num_heads:
            a = attention(self.qkv(self.norm2(x)), self.num_heads)
            x = (self.proj(a) + x) * self.skip_scale
        return x
