"""The FID Inception-v3 feature network in Flax NNX, loaded torch-free from pytorch-fid's weights.

The network is the FID standard: the Inception-v3 graph of TensorFlow's 2015-12-05 ImageNet model
(`inception-2015-12-05.tgz`, 1008 classes) as ported to PyTorch for FID by mseitzer/pytorch-fid,
file `pt_inception-2015-12-05-6726825d.pth` (`FID_WEIGHTS_URL`). It is torchvision's Inception3
layout with four blocks changed to match the TF graph (`FIDInceptionA/C/E_1/E_2` upstream):

* the 3x3 stride-1 average pools inside Mixed_5b..5d (A), Mixed_6b..6e (C) and Mixed_7b (E_1)
  exclude the zero padding from the average (TF's `count_include_pad=False`);
* Mixed_7c (E_2) takes a 3x3 stride-1 MAX pool (padding 1) on its pool branch, not an average.

Every conv is `BasicConv2d`: a bias-free conv, BatchNorm in inference form with eps 1e-3 (the TF
graph's epsilon), ReLU. The FID features are the 2048-d output of the final global average pool
("pool3"); `fc` (2048 -> 1008 logits) is kept so the file maps one to one and for Inception Score.

Inputs: `FIDInceptionV3` takes NHWC float32 images of 299x299 already scaled to [-1, 1];
`preprocess` produces them from pixels in [0, 255]. The two detectors of the literature are both
conversions of that TF graph and its weights, and differ only in this input step:

| detector | used by | input | resize to 299x299 | scaling |
| --- | --- | --- | --- | --- |
| pytorch-fid `InceptionV3` | pytorch-fid | float [0, 1] | `F.interpolate` bilinear, align_corners=False (half-pixel centres, src = (dst + 0.5) * in/out - 0.5, clamped at 0), no antialias | 2x - 1 |
| StyleGAN3 `inception-2015-12-05.pkl` (TorchScript) | NVlabs/edm `fid.py` (EDM, DG, DiffRS numbers; EDM's reference `.npz` files) | uint8 [0, 255] | TF1 `resize_bilinear` emulated with `grid_sample` (border padding): src = dst * in/out | (x - 128) / 128, in [-1, 0.992] |

`preprocess(..., resize="tf")` is the second (default: it matches EDM's published reference
statistics); `resize="pytorch-fid"` the first. For CIFAR-10's 32 -> 299 upsampling the two
sampling grids are offset by 0.5 - 0.5 * 32/299 = 0.45 source pixels, so the features differ
(by ~1% on the fixture's images): score against reference statistics computed with the same
mode. EDM scores samples saved as uint8 PNGs; `to_pixels` applies its quantisation on device.
jaxdiff reads only pytorch-fid's state-dict file (EDM's detector pickle is TorchScript, i.e.
code; it is not read).

Parameter mapping (one to one; the torch dotted name IS the Flax path, `name.split('.')`):

| torch name | torch layout | Flax layout |
| --- | --- | --- |
| `<block>.conv.weight` (e.g. `Mixed_6b.branch7x7_2.conv.weight`) | OIHW | HWIO |
| `<block>.bn.weight`, `.bn.bias` (nnx.Param), `.bn.running_mean`, `.bn.running_var` (nnx.BatchStat) | [C] | [C] |
| `<block>.bn.num_batches_tracked` | int64 [] | not kept (unused in inference; optional, as for torch's own loader) |
| `fc.weight` | [1008, 2048] | [2048, 1008] |
| `fc.bias` | [1008] | [1008] |

`<block>` is `Conv2d_1a_3x3` ... `Conv2d_4a_3x3` or `Mixed_<id>.<branch>`; `expected_state_dict`
lists all 566 entries (94 BasicConv2d x 6, fc x 2) with their torch shapes.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxdiff.errors import UserError
from jaxdiff.fid.weights import FID_WEIGHTS_NAME, FID_WEIGHTS_URL, resolve_weights_path

FEATURE_DIM = 2048
NUM_CLASSES = 1008
INPUT_SIZE = 299
BN_EPS = 1e-3                          # torchvision BasicConv2d; the TF graph's BatchNorm epsilon
RESIZE_MODES = ("tf", "pytorch-fid")

_HI = jax.lax.Precision.HIGHEST        # TPU/GPU default precision would cost ~1e-3 in features
_DN = ("NHWC", "HWIO", "NHWC")


class WeightsMismatchError(UserError):
    """The state dict does not match the FID Inception (names or shapes listed)."""


# ---------------------------------------------------------------------------------------------
# Layers

def _pair(v) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else tuple(v)


class Conv(nnx.Module):
    """A bias-free conv; `weight` HWIO (torch OIHW transposed)."""

    def __init__(self, cin: int, cout: int, kernel):
        kh, kw = _pair(kernel)
        self.weight = nnx.Param(jnp.zeros((kh, kw, cin, cout), jnp.float32))


class BatchNorm(nnx.Module):
    """BatchNorm2d, inference form: (x - running_mean) / sqrt(running_var + eps) * weight + bias."""

    def __init__(self, c: int, eps: float = BN_EPS):
        self.eps = eps
        self.weight = nnx.Param(jnp.ones((c,), jnp.float32))
        self.bias = nnx.Param(jnp.zeros((c,), jnp.float32))
        self.running_mean = nnx.BatchStat(jnp.zeros((c,), jnp.float32))
        self.running_var = nnx.BatchStat(jnp.ones((c,), jnp.float32))

    def __call__(self, x):
        scale = self.weight[...] * jax.lax.rsqrt(self.running_var[...] + self.eps)
        return (x - self.running_mean[...]) * scale + self.bias[...]


class BasicConv2d(nnx.Module):
    """conv (no bias, zero padding `padding`, stride `stride`) -> BatchNorm(eps 1e-3) -> ReLU."""

    def __init__(self, cin: int, cout: int, kernel, stride: int = 1, padding=0):
        self.stride, self.padding = stride, _pair(padding)
        self.conv = Conv(cin, cout, kernel)
        self.bn = BatchNorm(cout)

    def __call__(self, x):
        (ph, pw), s = self.padding, self.stride
        y = jax.lax.conv_general_dilated(x, self.conv.weight[...], (s, s), [(ph, ph), (pw, pw)],
                                         dimension_numbers=_DN, precision=_HI)
        return jax.nn.relu(self.bn(y))


def max_pool(x, stride: int, padding: int = 0):
    """3x3 max pool of NHWC `x` (torch pads with -inf, so padding never wins)."""
    pad = ((0, 0), (padding, padding), (padding, padding), (0, 0))
    return jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, 3, 3, 1), (1, stride, stride, 1),
                                 pad)


def avg_pool_exclude_pad(x):
    """3x3 stride-1 average pool with padding 1 whose border averages count only the real
    pixels (TF's AvgPool, torch's `count_include_pad=False`): 4 at corners, 6 on edges, 9 inside."""
    pad = ((0, 0), (1, 1), (1, 1), (0, 0))
    total = jax.lax.reduce_window(x, 0.0, jax.lax.add, (1, 3, 3, 1), (1, 1, 1, 1), pad)
    h, w = x.shape[1:3]
    rows = np.minimum(np.arange(h) + 1, h - 1) - np.maximum(np.arange(h) - 1, 0) + 1
    cols = np.minimum(np.arange(w) + 1, w - 1) - np.maximum(np.arange(w) - 1, 0) + 1
    count = np.outer(rows, cols).astype(np.float32)[None, :, :, None]
    return total / count


# ---------------------------------------------------------------------------------------------
# Inception blocks (torchvision's names and channel counts; FID pooling variants)

class InceptionA(nnx.Module):
    """Mixed_5b/5c/5d: 1x1 | 1x1-5x5 | 1x1-3x3-3x3 | avg pool (pad excluded)-1x1."""

    def __init__(self, cin: int, pool_features: int):
        self.branch1x1 = BasicConv2d(cin, 64, 1)
        self.branch5x5_1 = BasicConv2d(cin, 48, 1)
        self.branch5x5_2 = BasicConv2d(48, 64, 5, padding=2)
        self.branch3x3dbl_1 = BasicConv2d(cin, 64, 1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, 3, padding=1)
        self.branch_pool = BasicConv2d(cin, pool_features, 1)

    def __call__(self, x):
        b5 = self.branch5x5_2(self.branch5x5_1(x))
        b3 = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        bp = self.branch_pool(avg_pool_exclude_pad(x))
        return jnp.concatenate([self.branch1x1(x), b5, b3, bp], axis=-1)


class InceptionB(nnx.Module):
    """Mixed_6a (grid 35 -> 17): 3x3/2 | 1x1-3x3-3x3/2 | max pool/2."""

    def __init__(self, cin: int):
        self.branch3x3 = BasicConv2d(cin, 384, 3, stride=2)
        self.branch3x3dbl_1 = BasicConv2d(cin, 64, 1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, 3, stride=2)

    def __call__(self, x):
        b3 = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        return jnp.concatenate([self.branch3x3(x), b3, max_pool(x, 2)], axis=-1)


class InceptionC(nnx.Module):
    """Mixed_6b..6e: 1x1 | 1x1-1x7-7x1 | 1x1-7x1-1x7-7x1-1x7 | avg pool (pad excluded)-1x1."""

    def __init__(self, cin: int, c7: int):
        self.branch1x1 = BasicConv2d(cin, 192, 1)
        self.branch7x7_1 = BasicConv2d(cin, c7, 1)
        self.branch7x7_2 = BasicConv2d(c7, c7, (1, 7), padding=(0, 3))
        self.branch7x7_3 = BasicConv2d(c7, 192, (7, 1), padding=(3, 0))
        self.branch7x7dbl_1 = BasicConv2d(cin, c7, 1)
        self.branch7x7dbl_2 = BasicConv2d(c7, c7, (7, 1), padding=(3, 0))
        self.branch7x7dbl_3 = BasicConv2d(c7, c7, (1, 7), padding=(0, 3))
        self.branch7x7dbl_4 = BasicConv2d(c7, c7, (7, 1), padding=(3, 0))
        self.branch7x7dbl_5 = BasicConv2d(c7, 192, (1, 7), padding=(0, 3))
        self.branch_pool = BasicConv2d(cin, 192, 1)

    def __call__(self, x):
        b7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        d = x
        for layer in (self.branch7x7dbl_1, self.branch7x7dbl_2, self.branch7x7dbl_3,
                      self.branch7x7dbl_4, self.branch7x7dbl_5):
            d = layer(d)
        bp = self.branch_pool(avg_pool_exclude_pad(x))
        return jnp.concatenate([self.branch1x1(x), b7, d, bp], axis=-1)


class InceptionD(nnx.Module):
    """Mixed_7a (grid 17 -> 8): 1x1-3x3/2 | 1x1-1x7-7x1-3x3/2 | max pool/2."""

    def __init__(self, cin: int):
        self.branch3x3_1 = BasicConv2d(cin, 192, 1)
        self.branch3x3_2 = BasicConv2d(192, 320, 3, stride=2)
        self.branch7x7x3_1 = BasicConv2d(cin, 192, 1)
        self.branch7x7x3_2 = BasicConv2d(192, 192, (1, 7), padding=(0, 3))
        self.branch7x7x3_3 = BasicConv2d(192, 192, (7, 1), padding=(3, 0))
        self.branch7x7x3_4 = BasicConv2d(192, 192, 3, stride=2)

    def __call__(self, x):
        b3 = self.branch3x3_2(self.branch3x3_1(x))
        b7 = x
        for layer in (self.branch7x7x3_1, self.branch7x7x3_2, self.branch7x7x3_3,
                      self.branch7x7x3_4):
            b7 = layer(b7)
        return jnp.concatenate([b3, b7, max_pool(x, 2)], axis=-1)


class InceptionE(nnx.Module):
    """Mixed_7b (`pool="avg"`, FIDInceptionE_1: pad excluded) and Mixed_7c (`pool="max"`,
    FIDInceptionE_2): 1x1 | 1x1-(1x3, 3x1) | 1x1-3x3-(1x3, 3x1) | pool-1x1."""

    def __init__(self, cin: int, pool: str):
        self.pool = pool
        self.branch1x1 = BasicConv2d(cin, 320, 1)
        self.branch3x3_1 = BasicConv2d(cin, 384, 1)
        self.branch3x3_2a = BasicConv2d(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3_2b = BasicConv2d(384, 384, (3, 1), padding=(1, 0))
        self.branch3x3dbl_1 = BasicConv2d(cin, 448, 1)
        self.branch3x3dbl_2 = BasicConv2d(448, 384, 3, padding=1)
        self.branch3x3dbl_3a = BasicConv2d(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3dbl_3b = BasicConv2d(384, 384, (3, 1), padding=(1, 0))
        self.branch_pool = BasicConv2d(cin, 192, 1)

    def __call__(self, x):
        a = self.branch3x3_1(x)
        d = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        pooled = max_pool(x, 1, padding=1) if self.pool == "max" else avg_pool_exclude_pad(x)
        return jnp.concatenate([
            self.branch1x1(x), self.branch3x3_2a(a), self.branch3x3_2b(a),
            self.branch3x3dbl_3a(d), self.branch3x3dbl_3b(d), self.branch_pool(pooled)], axis=-1)


class Linear(nnx.Module):
    """y = x @ weight + bias; `weight` [in, out] (torch's [out, in] transposed)."""

    def __init__(self, cin: int, cout: int):
        self.weight = nnx.Param(jnp.zeros((cin, cout), jnp.float32))
        self.bias = nnx.Param(jnp.zeros((cout,), jnp.float32))

    def __call__(self, x):
        return jnp.matmul(x, self.weight[...], precision=_HI) + self.bias[...]


class FIDInceptionV3(nnx.Module):
    """The FID Inception-v3: `[N, 299, 299, 3]` float32 in [-1, 1] -> pool3 features `[N, 2048]`
    (and with `logits=True` also the `[N, 1008]` logits of `fc`). Grid sizes for 299 input:
    149, 147, 147, pool 73, 73, 71, pool 35 (Mixed_5*), 17 (Mixed_6*), 8 (Mixed_7*), 1."""

    def __init__(self):
        self.Conv2d_1a_3x3 = BasicConv2d(3, 32, 3, stride=2)
        self.Conv2d_2a_3x3 = BasicConv2d(32, 32, 3)
        self.Conv2d_2b_3x3 = BasicConv2d(32, 64, 3, padding=1)
        self.Conv2d_3b_1x1 = BasicConv2d(64, 80, 1)
        self.Conv2d_4a_3x3 = BasicConv2d(80, 192, 3)
        self.Mixed_5b = InceptionA(192, 32)
        self.Mixed_5c = InceptionA(256, 64)
        self.Mixed_5d = InceptionA(288, 64)
        self.Mixed_6a = InceptionB(288)
        self.Mixed_6b = InceptionC(768, 128)
        self.Mixed_6c = InceptionC(768, 160)
        self.Mixed_6d = InceptionC(768, 160)
        self.Mixed_6e = InceptionC(768, 192)
        self.Mixed_7a = InceptionD(768)
        self.Mixed_7b = InceptionE(1280, "avg")
        self.Mixed_7c = InceptionE(2048, "max")
        self.fc = Linear(FEATURE_DIM, NUM_CLASSES)

    def __call__(self, x, logits: bool = False):
        x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))
        x = self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(max_pool(x, 2)))
        x = max_pool(x, 2)
        for block in (self.Mixed_5b, self.Mixed_5c, self.Mixed_5d, self.Mixed_6a, self.Mixed_6b,
                      self.Mixed_6c, self.Mixed_6d, self.Mixed_6e, self.Mixed_7a, self.Mixed_7b,
                      self.Mixed_7c):
            x = block(x)
        features = jnp.mean(x, axis=(1, 2))
        return (features, self.fc(features)) if logits else features


# ---------------------------------------------------------------------------------------------
# Input pipeline: resize to 299 and scale, as each detector does

def resize_matrix(n_in: int, n_out: int, mode: str) -> np.ndarray:
    """`[n_out, n_in]` float32 weights of 1-D bilinear resampling (no antialiasing), rows sum 1.

    mode "tf": TF1 `resize_bilinear` (align_corners=False, no half-pixel centres), as StyleGAN3's
    detector emulates it: src = dst * n_in / n_out. "pytorch-fid": torch `F.interpolate`
    (bilinear, align_corners=False): src = max((dst + 0.5) * n_in / n_out - 0.5, 0). Both take
    rows floor(src) and min(floor(src) + 1, n_in - 1) (the border pixel repeats)."""
    if mode not in RESIZE_MODES:
        raise UserError(f"resize mode {mode!r} is not one of {', '.join(RESIZE_MODES)}")
    scale = n_in / n_out
    dst = np.arange(n_out, dtype=np.float64)
    src = dst * scale if mode == "tf" else np.maximum((dst + 0.5) * scale - 0.5, 0.0)
    i0 = np.minimum(np.floor(src).astype(np.int64), n_in - 1)
    i1 = np.minimum(i0 + 1, n_in - 1)
    frac = src - i0
    m = np.zeros((n_out, n_in), np.float64)
    np.add.at(m, (np.arange(n_out), i0), 1.0 - frac)
    np.add.at(m, (np.arange(n_out), i1), frac)
    return m.astype(np.float32)


def to_pixels(x):
    """Model-space images in [-1, 1] -> the uint8 pixel values EDM's `generate.py` saves
    (x * 127.5 + 128, clipped to [0, 255], truncated), as float32 so they stay on device. FID
    papers score these PNGs, so quantise before `preprocess` to match them."""
    return jnp.floor(jnp.clip(x.astype(jnp.float32) * 127.5 + 128.0, 0.0, 255.0))


@functools.partial(jax.jit, static_argnames=("mode", "size"))
def preprocess(images, mode: str = "tf", size: int = INPUT_SIZE):
    """Pixels `[N, H, W, C]` in [0, 255] (uint8 or float; C = 3, or 1 repeated to 3 as EDM does)
    -> the network input `[N, size, size, 3]` float32 in [-1, 1] of detector `mode` (module
    docstring table): "tf" resizes the 0..255 values and maps x -> (x - 128) / 128,
    "pytorch-fid" resizes x / 255 and maps it to 2x - 1. Jitted; sharding of N is kept."""
    if images.ndim != 4 or images.shape[-1] not in (1, 3):
        raise UserError(f"FID images must be [N, H, W, 3] (or 1 channel), got {images.shape}")
    x = images.astype(jnp.float32)
    if x.shape[-1] == 1:
        x = jnp.repeat(x, 3, axis=-1)
    if mode == "pytorch-fid":
        x = x / 255.0
    rh = jnp.asarray(resize_matrix(x.shape[1], size, mode))
    rw = jnp.asarray(resize_matrix(x.shape[2], size, mode))
    x = jnp.einsum("oh,nhwc,pw->nopc", rh, x, rw, precision=_HI)
    return x * 2.0 - 1.0 if mode == "pytorch-fid" else (x - 128.0) / 128.0


# ---------------------------------------------------------------------------------------------
# torch state dict <-> Flax parameters

def expected_state_dict() -> dict[str, tuple[int, ...]]:
    """The torch name -> shape of every entry of the standard weight file's state dict (the
    torch layouts; `num_batches_tracked` entries are the int64 scalars torch adds per BN)."""
    net = nnx.eval_shape(FIDInceptionV3)
    out = {}
    for path, v in nnx.to_flat_state(nnx.state(net)):
        name, shape = ".".join(str(p) for p in path), tuple(v.get_value().shape)
        if name.endswith("conv.weight"):
            shape = (shape[3], shape[2], shape[0], shape[1])      # HWIO -> OIHW
        elif name == "fc.weight":
            shape = shape[::-1]
        out[name] = shape
        if name.endswith("bn.running_var"):
            out[name[: -len("running_var")] + "num_batches_tracked"] = ()
    return out


def _to_flax(name: str, a: np.ndarray) -> np.ndarray:
    a = np.asarray(a, np.float32)
    if name.endswith("conv.weight"):
        return np.ascontiguousarray(a.transpose(2, 3, 1, 0))    # OIHW -> HWIO
    if name == "fc.weight":
        return np.ascontiguousarray(a.T)
    return a.copy()


def _group_missing(missing: list[str], want: dict) -> list[str]:
    """Missing names, a top-level module whose every array is missing shown once as
    'Mixed_5b.* (42 arrays)' (a truncated file misses hundreds)."""
    gone, out = set(missing), []
    for top in dict.fromkeys(n.split(".")[0] for n in missing):
        names = [n for n in want if n.split(".")[0] == top
                 and not n.endswith("num_batches_tracked")]
        if len(names) > 1 and all(n in gone for n in names):
            out.append(f"{top}.* ({len(names)} arrays)")
        else:
            out.extend(n for n in names if n in gone)
    return out


def convert_state_dict(sd: dict[str, np.ndarray], source: str = "the state dict") -> dict:
    """torch state dict -> {torch name: array in Flax layout}, after checking it is exactly the
    FID Inception's: every name present with its shape, none extra (`num_batches_tracked` may be
    absent). `WeightsMismatchError` lists the missing, unexpected and mis-shaped names."""
    want = expected_state_dict()
    missing = [n for n in want if n not in sd and not n.endswith("num_batches_tracked")]
    extra = [n for n in sd if n not in want]
    bad = [f"{n}: {tuple(np.shape(a))} (expected {want[n]})" for n, a in sd.items()
           if n in want and tuple(np.shape(a)) != want[n]]
    if missing or extra or bad:
        parts = []
        for title, names in (("missing", _group_missing(missing, want)), ("unexpected", extra),
                             ("mis-shaped", bad)):
            if names:
                parts.append(f"{title}: " + ", ".join(names[:40])
                             + (f" and {len(names) - 40} more" if len(names) > 40 else ""))
        raise WeightsMismatchError(
            f"{source} is not the FID Inception-v3 state dict ({FID_WEIGHTS_NAME}, "
            f"{FID_WEIGHTS_URL}): " + "; ".join(parts))
    return {n: _to_flax(n, a) for n, a in sd.items() if not n.endswith("num_batches_tracked")}


class FIDNetwork(NamedTuple):
    """The loaded network: `graphdef` + `params` (nnx.State of Params and BatchStats)."""

    graphdef: nnx.GraphDef
    params: nnx.State
    source: str

    def apply(self, x, logits: bool = False):
        """Features (and logits) of network inputs `[N, 299, 299, 3]` in [-1, 1] (jitted)."""
        return apply(self.params, x, graphdef=self.graphdef, logits=logits)


@functools.partial(jax.jit, static_argnames=("graphdef", "logits"))
def apply(params, x, *, graphdef, logits: bool = False):
    """`FIDInceptionV3` of `graphdef` with `params` on `x` (see `FIDNetwork.apply`)."""
    return nnx.merge(graphdef, params)(x, logits=logits)


def from_state_dict(sd: dict[str, np.ndarray], source: str = "the state dict") -> FIDNetwork:
    """Build the network from a torch-layout state dict (checked by `convert_state_dict`)."""
    converted = convert_state_dict(sd, source)
    graphdef, state = nnx.split(nnx.eval_shape(FIDInceptionV3))
    flat = [(p, v.replace(jnp.asarray(converted[".".join(str(q) for q in p)])))
            for p, v in nnx.to_flat_state(state)]
    return FIDNetwork(graphdef, nnx.from_flat_state(flat), source)


def load(path=None) -> FIDNetwork:
    """The FID Inception from pytorch-fid's weight file (`pt_inception-2015-12-05-6726825d.pth`,
    zip or legacy torch serialisation), read by `jaxdiff.torch_reader` without PyTorch and
    without running code from the file. `path` None: `$JAXDIFF_FID_WEIGHTS`."""
    from jaxdiff.torch_reader import read_state_dict

    p = resolve_weights_path(path)
    return from_state_dict(read_state_dict(p), str(p))
