"""Flax NNX port of NVlabs/edm's SongUNet (DDPM++ configuration) with the EDM preconditioner,
loading official EDM network pickles (`edm-*.pkl`, `network-snapshot-*.pkl`) without PyTorch.

Semantics follow shared/specs/edm-checkpoints.md, sections 2-4 (written from the spec, not from
upstream code). Supported: `EDMPrecond` wrapping `SongUNet` with embedding_type 'positional',
encoder_type 'standard', decoder_type 'standard' (the DDPM++ / "vp" official models). Anything
else (NCSN++: fourier / residual; 'skip' encoders or decoders; DhariwalUNet; VP/VE/iDDPM
preconditioners) raises `ValueError` naming the option.

Layout: activations are NHWC float32 inside (upstream is NCHW); sigma is [N]; class labels are
one-hot [N, label_dim] or None (a zero row is used when the net is conditional, as upstream).

    denoise, meta = load(path)      # an EDM pickle, or a directory from `import_checkpoint`
    out = denoise(x_nhwc, sigma, class_labels)          # jitted; closes over meta['params']
    out = meta['apply'](meta['params'], x, sigma, labels)  # same, params passed explicitly
    f_x = meta['apply_raw'](meta['params'], x_in, c_noise, labels)  # the SongUNet alone

`jaxdiff import-checkpoint FILE --out DIR` (`import_checkpoint`) writes DIR/checkpoint (Orbax,
the converted parameters) and DIR/edm.json (the constructor kwargs, the preconditioner and the
source file), so later runs load the network without reading the pickle again.

`denoise` closes over the imported parameters (a jitted `apply` partially applied to them). When
calling from inside your own `jax.jit`, prefer `meta['apply']` with `meta['params']` as an
argument: a closed-over 55M-parameter pytree would otherwise be baked into the program as constants.

Parameter mapping (one to one): the Flax module tree mirrors the torch module tree attribute for
attribute. `EDMPrecondNet.model` is the SongUNet, its `enc` / `dec` are `nnx.Dict`s keyed by the
official block names ('16x16_conv', '8x8_block0', ...), and every layer stores its arrays under the
torch array names. So the torch dotted name IS the Flax path (`name.split('.')`); only the layouts
change (`torch_to_flax`):

| torch name (suffix) | torch layout | Flax path | Flax layout |
| --- | --- | --- | --- |
| Linear `weight`: `model.map_*`, `*.affine` | [out, in] | same | [in, out] |
| `*.bias` (Linear, Conv2d, GroupNorm) | [C] | same path | [C] |
| Conv2d `*.weight`: `*_conv`, `conv0`, `conv1`, `skip`, `proj` | OIHW | same | HWIO (2,3,1,0) |
| `*.qkv.weight` | OIHW, rows (head, c, {q,k,v}) | same | HWIO, columns [q; k; v] head-major |
| `*.qkv.bias` | [3C] interleaved | same | [3C] as [q; k; v] |
| `*.norm{0,1,2}.weight`, `*_aux_norm.weight` (GroupNorm scale) | [C] | same path | [C] |
| `*.resample_filter` (buffer) | [1, 1, k, k] | same (an `nnx.Variable`, not a Param) | [k, k] |

The qkv permutation: torch output channel `(h*d + c)*3 + s` (s = 0 q, 1 k, 2 v) becomes Flax
column `s*C + h*d + c`, i.e. `w_flax[..., s*C + j] = w_torch[3*j + s]` (`_qkv_perm`).

`from_edm_pickle` builds the network from the recorded constructor kwargs (not from the arrays),
then checks that the state dict and the Flax state correspond exactly (same set of paths, same
shapes after conversion) and that per-layer attributes recorded in the pickle (up/down, num_heads,
GroupNorm groups/eps, skip_scale) agree with the rebuilt architecture.
"""

from __future__ import annotations

import functools
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxdiff.errors import MissingInputError, UserError

_HI = jax.lax.Precision.HIGHEST  # GPU/TPU default precision gives ~1e-3 errors (fixture README)
_DN = ("NHWC", "HWIO", "NHWC")

# SongUNet constructor defaults (used for kwargs an EDM pickle does not record).
SONG_UNET_DEFAULTS = dict(
    label_dim=0, augment_dim=0, model_channels=128, channel_mult=(1, 2, 2, 2),
    channel_mult_emb=4, num_blocks=4, attn_resolutions=(16,), dropout=0.10, label_dropout=0,
    embedding_type="positional", channel_mult_noise=1, encoder_type="standard",
    decoder_type="standard", resample_filter=(1, 1),
)
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


class Conv2d(nnx.Module):
    """EDM's Conv2d: optional up/down FIR resampler (buffer `resample_filter`, [k, k]), then a
    kh x kw conv (`weight` HWIO) with zero padding kh // 2 and `bias`. kernel 0 = resampler only.
    `fused_resample` is not supported (only NCSN++ uses it)."""

    def __init__(self, in_channels: int, out_channels: int, kernel: int, *, bias: bool = True,
                 up: bool = False, down: bool = False, resample_filter=(1, 1),
                 fused_resample: bool = False):
        if up and down:
            raise ValueError("Conv2d: up and down are exclusive")
        if fused_resample and (up or down):
            raise ValueError("Conv2d: fused_resample (NCSN++ aux_residual) is not supported yet")
        self.in_channels, self.out_channels = in_channels, out_channels
        self.up, self.down, self.kernel = up, down, kernel
        self.weight = (nnx.Param(_var((kernel, kernel, in_channels, out_channels)))
                       if kernel else None)
        self.bias = nnx.Param(_var((out_channels,))) if kernel and bias else None
        if up or down:
            self.resample_filter = nnx.Variable(jnp.asarray(_resample_kernel(resample_filter)))
        else:
            self.resample_filter = None

    def __call__(self, x):
        if self.resample_filter is not None:
            k2 = self.resample_filter[...]
            k = k2.shape[0]
            p = (k - 1) // 2
            if self.down:
                x = _depthwise(x, k2, stride=2, padding=p)
            else:  # transposed conv with 4K, stride 2, torch padding p (K symmetric: no flip)
                x = _depthwise(x, 4.0 * k2[::-1, ::-1], lhs_dilation=2, padding=k - 1 - p)
        if self.weight is not None:
            w = self.weight[...].astype(x.dtype)
            p = w.shape[0] // 2
            x = jax.lax.conv_general_dilated(x, w, (1, 1), [(p, p)] * 2,
                                             dimension_numbers=_DN, precision=_HI)
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


# ---------------------------------------------------------------------------------------------
# SongUNet and the preconditioner

def _check_supported(kw: dict) -> None:
    bad = {"embedding_type": "positional", "encoder_type": "standard", "decoder_type": "standard"}
    for key, want in bad.items():
        if kw[key] != want:
            raise UserError(f"SongUNet {key}={kw[key]!r} is not supported yet (only the DDPM++ "
                             f"configuration, {key}={want!r}; NCSN++ is later work)")


class SongUNet(nnx.Module):
    """SongUNet, DDPM++ configuration. `__call__(x [N,H,W,C], c_noise [N], class_labels
    [N, label_dim] | None, augment_labels [N, augment_dim] | None) -> [N,H,W,out_channels]`."""

    def __init__(self, img_resolution: int, in_channels: int, out_channels: int, **kwargs):
        unknown = set(kwargs) - set(SONG_UNET_DEFAULTS)
        if unknown:
            raise ValueError(f"SongUNet: unsupported constructor arguments {sorted(unknown)}")
        kw = {**SONG_UNET_DEFAULTS, **kwargs}
        _check_supported(kw)
        self.config = dict(img_resolution=img_resolution, in_channels=in_channels,
                           out_channels=out_channels, **kw)
        mc, rf = kw["model_channels"], tuple(kw["resample_filter"])
        emb_ch = mc * kw["channel_mult_emb"]
        noise_ch = mc * kw["channel_mult_noise"]
        self.noise_channels = noise_ch
        self.label_dim, self.augment_dim = kw["label_dim"], kw["augment_dim"]
        attn_res = set(kw["attn_resolutions"])
        mult, nb = list(kw["channel_mult"]), kw["num_blocks"]
        block = functools.partial(UNetBlock, emb_channels=emb_ch, resample_filter=rf)

        # map_noise (PositionalEmbedding) has no arrays.
        self.map_label = Linear(self.label_dim, noise_ch) if self.label_dim else None
        self.map_augment = (Linear(self.augment_dim, noise_ch, bias=False)
                            if self.augment_dim else None)
        self.map_layer0 = Linear(noise_ch, emb_ch)
        self.map_layer1 = Linear(emb_ch, emb_ch)

        enc: dict[str, nnx.Module] = {}
        cout = in_channels
        for level, m in enumerate(mult):
            res = img_resolution >> level
            if level == 0:
                enc[f"{res}x{res}_conv"] = Conv2d(cout, mc, 3)
                cout = mc
            else:
                enc[f"{res}x{res}_down"] = block(cout, cout, down=True)
            for idx in range(nb):
                cin, cout = cout, mc * m
                enc[f"{res}x{res}_block{idx}"] = block(cin, cout, attention=res in attn_res)
        skips = [b.out_channels for b in enc.values()]

        dec: dict[str, nnx.Module] = {}
        for level in reversed(range(len(mult))):
            res = img_resolution >> level
            if level == len(mult) - 1:
                dec[f"{res}x{res}_in0"] = block(cout, cout, attention=True)
                dec[f"{res}x{res}_in1"] = block(cout, cout)
            else:
                dec[f"{res}x{res}_up"] = block(cout, cout, up=True)
            for idx in range(nb + 1):
                cin, cout = cout + skips.pop(), mc * mult[level]
                dec[f"{res}x{res}_block{idx}"] = block(
                    cin, cout, attention=(idx == nb and res in attn_res))
            if level == 0:
                dec[f"{res}x{res}_aux_norm"] = GroupNorm(cout, eps=SONG_UNET_EPS)
                dec[f"{res}x{res}_aux_conv"] = Conv2d(cout, out_channels, 3)
        # Python dicts keep insertion order; the forward walk relies on it (spec 4.7).
        self.enc_order = tuple(enc)
        self.dec_order = tuple(dec)
        self.enc = nnx.Dict(enc)
        self.dec = nnx.Dict(dec)

    def mapping(self, c_noise, class_labels=None, augment_labels=None):
        n = c_noise.shape[0]
        e = positional_embedding(c_noise, self.noise_channels, endpoint=True)
        e = e.reshape(n, 2, -1)[:, ::-1].reshape(n, -1)  # SongUNet swaps to [sin, cos]
        if self.map_label is not None:
            if class_labels is None:
                class_labels = jnp.zeros((1, self.label_dim), jnp.float32)
            labels = class_labels.astype(jnp.float32) * np.float32(np.sqrt(self.label_dim))
            e = e + self.map_label(labels)
        if self.map_augment is not None and augment_labels is not None:
            e = e + self.map_augment(augment_labels.astype(jnp.float32))
        e = jax.nn.silu(self.map_layer0(e))
        return jax.nn.silu(self.map_layer1(e))

    def __call__(self, x, c_noise, class_labels=None, augment_labels=None):
        """`x [N, H, W, C]` in the compute dtype (float32, or bfloat16: the float32 parameters
        are cast at each use, normalisation statistics and softmax stay float32), `c_noise
        [N]` -> F(x) [N, H, W, C] in x's dtype. The noise/label mapping runs in float32."""
        emb = self.mapping(c_noise, class_labels, augment_labels).astype(x.dtype)
        skips = []
        for name in self.enc_order:
            blk = self.enc[name]
            x = blk(x, emb) if isinstance(blk, UNetBlock) else blk(x)
            skips.append(x)
        out = None
        for name in self.dec_order:
            blk = self.dec[name]
            if name.endswith("_aux_norm"):
                tmp = blk(x)
            elif name.endswith("_aux_conv"):
                tmp = blk(jax.nn.silu(tmp))
                out = tmp if out is None else out + tmp
            else:
                if "_block" in name:
                    x = jnp.concatenate([x, skips.pop()], axis=-1)  # x first
                if x.shape[-1] != blk.in_channels:
                    raise ValueError(f"dec.{name}: got {x.shape[-1]} channels, "
                                     f"expected {blk.in_channels}")
                x = blk(x, emb)
        return out


def edm_scalings(sigma, sigma_data):
    """EDMPrecond: (c_skip, c_out, c_in, c_noise) for sigma [N]."""
    sigma = jnp.asarray(sigma, jnp.float32)
    sd = jnp.float32(sigma_data)
    c_skip = sd ** 2 / (sigma ** 2 + sd ** 2)
    c_out = sigma * sd / jnp.sqrt(sigma ** 2 + sd ** 2)
    c_in = 1 / jnp.sqrt(sd ** 2 + sigma ** 2)
    c_noise = jnp.log(sigma) / 4
    return c_skip, c_out, c_in, c_noise


class EDMPrecondNet(nnx.Module):
    """EDMPrecond around a SongUNet (`self.model`, the torch child name).
    `__call__(x [N,H,W,C], sigma [N], class_labels) -> D(x; sigma)` in float32."""

    def __init__(self, img_resolution: int, img_channels: int, label_dim: int = 0,
                 sigma_data: float = 0.5, sigma_min: float = 0.0, sigma_max: float = float("inf"),
                 model_type: str = "SongUNet", use_fp16: bool = False, **model_kwargs):
        if model_type != "SongUNet":
            raise UserError(f"EDMPrecond model_type={model_type!r} is not supported yet "
                             f"(only SongUNet; DhariwalUNet is later work)")
        self.sigma_data, self.sigma_min, self.sigma_max = sigma_data, sigma_min, sigma_max
        self.label_dim = label_dim
        self.model = SongUNet(img_resolution, img_channels, img_channels, label_dim=label_dim,
                              **model_kwargs)

    def raw(self, x_in, c_noise, class_labels=None, compute_dtype=jnp.float32):
        """The SongUNet F on `x_in` cast to `compute_dtype`; float32 out."""
        return self.model(x_in.astype(compute_dtype), c_noise,
                          class_labels).astype(jnp.float32)

    def __call__(self, x, sigma, class_labels=None, compute_dtype=jnp.float32):
        """D(x; sigma): the preconditioning in float32, the network in `compute_dtype`."""
        x = x.astype(jnp.float32)
        sigma = jnp.broadcast_to(jnp.asarray(sigma, jnp.float32).reshape(-1), (x.shape[0],))
        if self.label_dim == 0:
            class_labels = None
        c_skip, c_out, c_in, c_noise = edm_scalings(sigma, self.sigma_data)
        b = lambda c: c[:, None, None, None]
        f = self.raw(b(c_in) * x, c_noise, class_labels, compute_dtype)
        return b(c_skip) * x + b(c_out) * f


# ---------------------------------------------------------------------------------------------
# Weight conversion

def _qkv_perm(three_c: int) -> np.ndarray:
    """Torch qkv output index for each Flax column: Flax column s*C + j <- torch row 3*j + s."""
    c = three_c // 3
    return np.arange(three_c).reshape(c, 3).T.reshape(-1)


def torch_to_flax(name: str, array: np.ndarray) -> tuple[tuple[str, ...], np.ndarray]:
    """Map one torch state-dict entry to (Flax path, array in Flax layout). See module docstring."""
    path = tuple(name.split("."))
    a = np.asarray(array, np.float32)
    leaf = path[-1]
    if leaf == "resample_filter":
        if a.ndim != 4 or a.shape[:2] != (1, 1):
            raise ValueError(f"{name}: expected a [1, 1, k, k] resample filter, got {a.shape}")
        return path, a[0, 0].copy()
    is_qkv = len(path) >= 2 and path[-2] == "qkv"
    if leaf == "weight" and a.ndim == 4:  # Conv2d OIHW -> HWIO
        if is_qkv:
            a = a[_qkv_perm(a.shape[0])]
        return path, np.ascontiguousarray(a.transpose(2, 3, 1, 0))
    if leaf == "weight" and a.ndim == 2:  # Linear [out, in] -> [in, out]
        return path, np.ascontiguousarray(a.T)
    if leaf in ("weight", "bias") and a.ndim == 1:  # biases, GroupNorm scale
        if is_qkv:
            a = a[_qkv_perm(a.shape[0])]
        return path, a.copy()
    raise ValueError(f"{name}: no conversion rule for a {a.ndim}-d {leaf!r} array")


def _flat_state(module: nnx.Module) -> dict[tuple[str, ...], Any]:
    """Flax path (str keys) -> variable value (array or ShapeDtypeStruct), Params and buffers."""
    graphdef, state = nnx.split(module)
    out = {}
    for path, v in nnx.to_flat_state(state):
        out[tuple(str(p) for p in path)] = v
    return out


def convert_state_dict(module: nnx.Module, sd: dict[str, np.ndarray]) -> dict:
    """Convert a torch state dict to {Flax path: array}, checking the mapping is one to one:
    every torch array lands on a distinct Flax variable of the same shape, and every Flax
    variable is covered. Raises ValueError listing missing / unexpected names otherwise."""
    target = _flat_state(module)
    converted, problems = {}, []
    for name, arr in sd.items():
        path, a = torch_to_flax(name, arr)
        if path not in target:
            problems.append(f"unexpected (no Flax variable): {name}")
            continue
        if path in converted:
            problems.append(f"two torch arrays map to {'.'.join(path)}")
            continue
        want = tuple(target[path].get_value().shape)
        if a.shape != want:
            problems.append(f"{name}: shape {a.shape} (converted) != Flax {want}")
            continue
        converted[path] = a
    for path in target:
        if path not in converted:
            problems.append(f"missing (no torch array): {'.'.join(path)}")
    if problems:
        raise ValueError("EDM state dict does not match the rebuilt network:\n  "
                         + "\n  ".join(problems))
    return converted


def _check_records(net: EDMPrecondNet, modules: dict) -> None:
    """Compare per-layer attributes recorded in the pickle with the rebuilt architecture."""
    problems = []
    for name, rec in modules.items():
        at = rec.attrs
        if rec.class_name == "PositionalEmbedding":  # no arrays, so no Flax module
            if at.get("endpoint") is not True or at.get("max_positions") != 10000:
                problems.append(f"{name}: endpoint/max_positions differ")
            continue
        parts = name.split(".")
        obj = net
        try:
            for p in parts:
                if p:
                    obj = obj[p] if isinstance(obj, nnx.Dict) else getattr(obj, p)
        except (AttributeError, KeyError):
            problems.append(f"{name}: {rec.class_name} has no Flax counterpart")
            continue
        if obj is None:
            problems.append(f"{name}: {rec.class_name} has no Flax counterpart")
            continue
        if rec.class_name == "GroupNorm":
            if at.get("num_groups") != obj.num_groups or not np.isclose(at.get("eps"), obj.eps):
                problems.append(f"{name}: groups/eps {at.get('num_groups')}/{at.get('eps')} vs "
                                f"{obj.num_groups}/{obj.eps}")
        elif rec.class_name == "Conv2d":
            if (bool(at.get("up")), bool(at.get("down"))) != (obj.up, obj.down) or \
                    at.get("fused_resample"):
                problems.append(f"{name}: up/down/fused differ")
        elif rec.class_name == "UNetBlock":
            if at.get("num_heads") != obj.num_heads or at.get("adaptive_scale") or \
                    not np.isclose(float(at.get("skip_scale")), obj.skip_scale):
                problems.append(f"{name}: num_heads/skip_scale/adaptive_scale differ")
    if problems:
        raise ValueError("EDM pickle layer attributes disagree with the port:\n  "
                         + "\n  ".join(problems))


def constructor_kwargs(ema) -> dict:
    """The `EDMPrecondNet` keyword arguments of a pickle's `ema` record: its recorded constructor
    kwargs plus the sigma attributes (constructor defaults the pickle keeps only as attributes)."""
    if ema.class_name != "EDMPrecond":
        raise UserError(f"preconditioner {ema.class_name!r} is not supported yet (only "
                        f"EDMPrecond; VPPrecond/VEPrecond/iDDPMPrecond are later work)")
    kw = dict(ema.init_kwargs)
    attrs = ema.attrs
    for k in ("sigma_data", "sigma_min", "sigma_max"):
        if k in attrs:
            kw[k] = float(attrs[k])
    model_rec = ema.children.get("model")
    if model_rec is None or model_rec.class_name != kw.get("model_type", "SongUNet"):
        raise UserError(f"EDMPrecond child 'model' is "
                        f"{getattr(model_rec, 'class_name', None)!r}, expected SongUNet")
    return kw


def build_from_record(ema) -> EDMPrecondNet:
    """An abstract (shape-only) EDMPrecondNet from the pickle's recorded constructor kwargs."""
    kw = constructor_kwargs(ema)
    return nnx.eval_shape(lambda: EDMPrecondNet(**kw))


def precond_of(constructor: dict) -> dict:
    """The preconditioner record of `EDMPrecondNet` kwargs: class name and the sigma settings,
    with `EDMPrecondNet`'s defaults for those the kwargs leave out."""
    defaults = {"sigma_data": 0.5, "sigma_min": 0.0, "sigma_max": float("inf")}
    return {"class_name": "EDMPrecond",
            **{k: float(constructor.get(k, d)) for k, d in defaults.items()}}


def _bundle(graphdef, params, constructor: dict, source: str):
    """`(denoise, meta)` of a network given as graphdef + parameter state (see `load`)."""

    @functools.partial(jax.jit, static_argnames="compute_dtype")
    def apply(params, x, sigma, class_labels=None, compute_dtype=jnp.float32):
        return nnx.merge(graphdef, params)(x, sigma, class_labels, compute_dtype)

    @functools.partial(jax.jit, static_argnames="compute_dtype")
    def apply_raw(params, x_in, c_noise, class_labels=None, compute_dtype=jnp.float32):
        return nnx.merge(graphdef, params).raw(x_in, c_noise, class_labels, compute_dtype)

    meta = dict(precond=precond_of(constructor), constructor=dict(constructor),
                source=source, params=params, graphdef=graphdef, apply=apply,
                apply_raw=apply_raw, net=nnx.merge(graphdef, params))
    return functools.partial(apply, params), meta


def from_edm_pickle(path):
    """Load an EDM network pickle -> (denoise, meta) (see `load`)."""
    from jaxdiff.torch_reader import named_modules, read_edm_pickle, state_dict

    snap = read_edm_pickle(Path(path))
    abstract = build_from_record(snap.ema)
    _check_records(abstract, named_modules(snap.ema))
    converted = convert_state_dict(abstract, state_dict(snap.ema))
    graphdef, state = nnx.split(abstract)
    flat = [(p, v.replace(jnp.asarray(converted[tuple(str(q) for q in p)])))
            for p, v in nnx.to_flat_state(state)]
    return _bundle(graphdef, nnx.from_flat_state(flat), constructor_kwargs(snap.ema),
                   os.path.abspath(os.fspath(path)))


IMPORTED_JSON = "edm.json"   # beside the Orbax `checkpoint/` of an imported network


def import_checkpoint(path, out_dir) -> str:
    """`jaxdiff import-checkpoint`: an EDM network pickle -> `out_dir` holding `checkpoint/` (an
    Orbax checkpoint of the converted Flax parameters) and `edm.json` (the constructor kwargs,
    the preconditioner and the source file). `load(out_dir)` reads it back without the pickle.
    Refuses an `out_dir` that already holds files. Returns the absolute `out_dir`."""
    from jaxdiff.checkpoint import Checkpointer
    from jaxdiff.files import atomic_write_json

    out = os.path.abspath(os.fspath(out_dir))
    if os.path.exists(out) and (not os.path.isdir(out) or os.listdir(out)):
        raise UserError(f"--out {out} already exists and is not an empty directory; choose "
                        "another directory (nothing was written)")
    _, meta = from_edm_pickle(path)       # every check runs before anything is written
    os.makedirs(out, exist_ok=True)
    with Checkpointer(os.path.join(out, "checkpoint"), max_to_keep=1) as ck:
        ck.save(0, {"params": meta["params"]}, wait=True)
    atomic_write_json(os.path.join(out, IMPORTED_JSON),
                      {"format": "jaxdiff-edm-1", "constructor": meta["constructor"],
                       "precond": meta["precond"], "source": meta["source"]})
    return out


def describe(path) -> dict:
    """`{"constructor", "precond", "source"}` of an EDM pickle or an imported directory, without
    converting the weights (what `jaxdiff sample` checks before loading). UserError when `path`
    is neither."""
    import json

    path = os.path.abspath(os.fspath(path))
    if os.path.isdir(path):
        try:
            with open(os.path.join(path, IMPORTED_JSON)) as f:
                info = json.load(f)
            return {k: info[k] for k in ("constructor", "precond", "source")}
        except (OSError, ValueError, KeyError) as e:
            raise MissingInputError(f"{path} is not a network imported by `jaxdiff "
                                    f"import-checkpoint` (no readable {IMPORTED_JSON}: {e})") from None
    from jaxdiff.torch_reader import read_edm_pickle

    kw = constructor_kwargs(read_edm_pickle(Path(path)).ema)
    return {"constructor": kw, "source": path, "precond": precond_of(kw)}


def load(path):
    """`(denoise, meta)` of an EDM network: `path` is an official EDM network pickle (read by
    `torch_reader`, no PyTorch) or a directory written by `import_checkpoint`.

    `denoise(x_nhwc, sigma[N], class_labels[N, label_dim] | None) -> D(x; sigma)` (NHWC float32)
    is a jitted function closing over the parameters; inside your own `jax.jit` use
    `meta['apply'](meta['params'], x, sigma, labels)` instead, so the parameters stay arguments.
    Both take `compute_dtype=jnp.bfloat16` to run the network in bfloat16 with the float32
    parameters cast at each use (normalisation statistics, softmax and the preconditioning stay
    float32).
    `meta`: 'precond' (class_name, sigma_data, sigma_min, sigma_max), 'constructor' (the
    `EDMPrecondNet` kwargs), 'source', 'params' (nnx.State: Params and resample buffers),
    'graphdef', 'apply', 'apply_raw(params, x_in, c_noise, labels)' (the raw network F), 'net'.
    """
    from jaxdiff.checkpoint import Checkpointer

    path = os.path.abspath(os.fspath(path))
    if not os.path.isdir(path):
        return from_edm_pickle(path)
    info = describe(path)
    constructor = info["constructor"]
    graphdef, abstract = nnx.split(nnx.eval_shape(lambda: EDMPrecondNet(**constructor)))
    like = jax.tree.map(lambda a: jnp.zeros(a.shape, a.dtype), abstract)
    with Checkpointer(os.path.join(path, "checkpoint")) as ck:
        _, state, _ = ck.restore({"params": like})
    return _bundle(graphdef, state["params"], constructor, info["source"])
