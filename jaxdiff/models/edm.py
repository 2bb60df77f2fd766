"""Flax NNX ports of NVlabs/edm's SongUNet (DDPM++ and NCSN++ configurations) and of its VP, VE,
iDDPM and EDM preconditioners, loading official EDM network pickles (`edm-*.pkl`,
`baseline-*.pkl`, `network-snapshot-*.pkl`) without PyTorch. DhariwalUNet (ADM) lives in
`jaxdiff.models.adm` and plugs in through `MODEL_TYPES`; both use the layers of
`jaxdiff.models.edm_layers` (re-exported here).

Semantics follow shared/specs/edm-checkpoints.md, sections 2-4 (written from the spec, not from
upstream code). Supported: the preconditioners `EDMPrecond`, `VPPrecond`, `VEPrecond`,
`iDDPMPrecond` (`PRECONDITIONERS`) around `SongUNet` with any of its options (embedding_type
'positional' | 'fourier', encoder_type 'standard' | 'residual' | 'skip', decoder_type
'standard' | 'skip') or `DhariwalUNet`. Anything else raises `UserError` naming the option.

Layout: activations are NHWC float32 inside (upstream is NCHW); sigma is [N]; class labels are
one-hot [N, label_dim] or None (a zero row is used when the net is conditional, as upstream).

    denoise, meta = load(path)      # an EDM pickle, or a directory from `import_checkpoint`
    out = denoise(x_nhwc, sigma, class_labels)          # jitted; closes over meta['params']
    out = meta['apply'](meta['params'], x, sigma, labels)  # same, params passed explicitly
    f_x = meta['apply_raw'](meta['params'], x_in, c_noise, labels)  # the inner network alone

Preconditioners (spec 3; D(x; s) = c_skip x + c_out F(c_in x, c_noise), all in float32, the
settings read from the pickle's attributes and recorded in `meta['precond']` / edm.json):

| class | c_skip | c_out | c_in | c_noise | settings |
| --- | --- | --- | --- | --- | --- |
| EDMPrecond | sd²/(s²+sd²) | s·sd/√(s²+sd²) | 1/√(s²+sd²) | ln(s)/4 | sigma_data, sigma_min, sigma_max |
| VPPrecond | 1 | −s | 1/√(s²+1) | (M−1)(√(β_min²+2β_d ln(1+s²))−β_min)/β_d | beta_d, beta_min, M, epsilon_t, sigma_min, sigma_max |
| VEPrecond | 1 | s | 1 | ln(s/2) | sigma_min, sigma_max |
| iDDPMPrecond | 1 | −s | 1/√(s²+1) | M−1−argmin_j abs(s−u_j) | C_1, C_2, M, sigma_min, sigma_max (+ buffer `u`) |

`jaxdiff import-checkpoint FILE --out DIR` (`import_checkpoint`) writes DIR/checkpoint (Orbax,
the converted parameters and buffers) and DIR/edm.json (the preconditioner record — class name
and settings — the constructor kwargs and the source file), so later runs rebuild the same
network without reading the pickle again.

`denoise` closes over the imported parameters (a jitted `apply` partially applied to them). When
calling from inside your own `jax.jit`, prefer `meta['apply']` with `meta['params']` as an
argument: a closed-over 55M-parameter pytree would otherwise be baked into the program as constants.

Parameter mapping (one to one): the Flax module tree mirrors the torch module tree attribute for
attribute. The preconditioner's `model` is the SongUNet (or DhariwalUNet), its `enc` / `dec` are
`nnx.Dict`s keyed by the official block names ('16x16_conv', '8x8_block0', '8x8_aux_residual',
...), and every layer stores its arrays under the torch array names. So the torch dotted name IS
the Flax path (`name.split('.')`); only the layouts change (`torch_to_flax`):

| torch name (suffix) | torch layout | Flax path | Flax layout |
| --- | --- | --- | --- |
| Linear `weight`: `model.map_*`, `*.affine` | [out, in] | same | [in, out] |
| `*.bias` (Linear, Conv2d, GroupNorm) | [C] | same path | [C] |
| Conv2d `*.weight`: `*_conv`, `conv0`, `conv1`, `skip`, `proj`, `*_aux_residual` (NCSN++), `*_aux_skip` | OIHW | same | HWIO (2,3,1,0) |
| `*.qkv.weight` | OIHW, rows (head, c, {q,k,v}) | same | HWIO, columns [q; k; v] head-major |
| `*.qkv.bias` | [3C] interleaved | same | [3C] as [q; k; v] |
| `*.norm{0,1,2}.weight`, `*_aux_norm.weight` (GroupNorm scale) | [C] | same path | [C] |
| `*.resample_filter` (buffer; also of kernel-0 `*_aux_down` / `*_aux_up`) | [1, 1, k, k] | same (an `nnx.Variable`, not a Param) | [k, k] |
| `model.map_noise.freqs` (NCSN++ FourierEmbedding buffer) | [noise_ch / 2] | same (`nnx.Variable`) | [noise_ch / 2] |
| `u` (iDDPMPrecond buffer, top level) | [M + 1] | same (`nnx.Variable`) | [M + 1] |

The qkv permutation: torch output channel `(h*d + c)*3 + s` (s = 0 q, 1 k, 2 v) becomes Flax
column `s*C + h*d + c`, i.e. `w_flax[..., s*C + j] = w_torch[3*j + s]` (`_qkv_perm`).
NCSN++'s `enc.<R>x<R>_aux_residual` is a Conv2d with `fused_resample` (conv first, then the
stride-2 [1,3,3,1] filter; spec 4.3); its noise embedding is a FourierEmbedding with the
imported `map_noise.freqs`.

`from_edm_pickle` builds the network from the recorded constructor kwargs (not from the arrays),
then checks that the state dict and the Flax state correspond exactly (same set of paths, same
shapes after conversion; every missing, unexpected or mis-shaped name is listed) and that
per-layer attributes recorded in the pickle (up/down/fused_resample, num_heads, adaptive_scale,
GroupNorm groups/eps, skip_scale, Linear sizes, the noise embedding) agree with the rebuilt
architecture.
"""

from __future__ import annotations

import functools
import math
import os
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxdiff.errors import MissingInputError, UserError
from jaxdiff.models.adm import DhariwalUNet
from jaxdiff.models.edm_layers import (SONG_UNET_EPS, SONG_UNET_SKIP_SCALE,  # noqa: F401
                                       Conv2d, FourierEmbedding, GroupNorm, Linear, UNetBlock,
                                       attention, positional_embedding)


# SongUNet constructor defaults (used for kwargs an EDM pickle does not record).
SONG_UNET_DEFAULTS = dict(
    label_dim=0, augment_dim=0, model_channels=128, channel_mult=(1, 2, 2, 2),
    channel_mult_emb=4, num_blocks=4, attn_resolutions=(16,), dropout=0.10, label_dropout=0,
    embedding_type="positional", channel_mult_noise=1, encoder_type="standard",
    decoder_type="standard", resample_filter=(1, 1),
)


# ---------------------------------------------------------------------------------------------
# SongUNet and the preconditioner

_SONG_UNET_CHOICES = {"embedding_type": ("positional", "fourier"),
                      "encoder_type": ("standard", "skip", "residual"),
                      "decoder_type": ("standard", "skip")}


def _check_supported(kw: dict) -> None:
    for key, valid in _SONG_UNET_CHOICES.items():
        if kw[key] not in valid:
            raise UserError(f"SongUNet {key}={kw[key]!r} is not a SongUNet option (valid: "
                            f"{', '.join(map(repr, valid))})")


class SongUNet(nnx.Module):
    """SongUNet (spec 2.2, 4.7): DDPM++ (positional embedding, standard encoder, [1, 1] filter)
    and NCSN++ (Fourier embedding, channel_mult_noise 2, 'residual' encoder with fused
    down-resampling `_aux_residual`, [1, 3, 3, 1] filter), and the 'skip' encoder/decoder no
    official model uses. `__call__(x [N,H,W,C], c_noise [N], class_labels [N, label_dim] | None,
    augment_labels [N, augment_dim] | None) -> [N,H,W,out_channels]`."""

    def __init__(self, img_resolution: int, in_channels: int, out_channels: int, **kwargs):
        unknown = set(kwargs) - set(SONG_UNET_DEFAULTS)
        if unknown:
            raise UserError(f"SongUNet: unsupported constructor arguments {sorted(unknown)}")
        kw = {**SONG_UNET_DEFAULTS, **kwargs}
        _check_supported(kw)
        self.config = dict(img_resolution=img_resolution, in_channels=in_channels,
                           out_channels=out_channels, **kw)
        mc = kw["model_channels"]
        emb_ch = mc * kw["channel_mult_emb"]
        noise_ch = mc * kw["channel_mult_noise"]
        self.noise_channels = noise_ch
        self.label_dim, self.augment_dim = kw["label_dim"], kw["augment_dim"]
        # map_noise: PositionalEmbedding has no arrays (None here); FourierEmbedding has `freqs`.
        self.map_noise = FourierEmbedding(noise_ch) if kw["embedding_type"] == "fourier" else None
        self.map_label = Linear(self.label_dim, noise_ch) if self.label_dim else None
        self.map_augment = (Linear(self.augment_dim, noise_ch, bias=False)
                            if self.augment_dim else None)
        self.map_layer0 = Linear(noise_ch, emb_ch)
        self.map_layer1 = Linear(emb_ch, emb_ch)
        block = functools.partial(UNetBlock, emb_channels=emb_ch,
                                  resample_filter=tuple(kw["resample_filter"]))
        enc, cout = self._encoder(kw, img_resolution, in_channels, block)
        dec = self._decoder(kw, img_resolution, out_channels, block, enc, cout)
        # Python dicts keep insertion order; the forward walk relies on it (spec 4.7).
        self.enc_order = tuple(enc)
        self.dec_order = tuple(dec)
        self.enc = nnx.Dict(enc)
        self.dec = nnx.Dict(dec)

    @staticmethod
    def _encoder(kw, img_resolution, in_channels, block):
        """The `enc` blocks in registration order, and the channels of the last one."""
        mc, rf, attn_res = kw["model_channels"], tuple(kw["resample_filter"]), set(
            kw["attn_resolutions"])
        enc: dict[str, nnx.Module] = {}
        cout = caux = in_channels
        for level, m in enumerate(kw["channel_mult"]):
            res = img_resolution >> level
            if level == 0:
                enc[f"{res}x{res}_conv"] = Conv2d(cout, mc, 3)
                cout = mc
            else:
                enc[f"{res}x{res}_down"] = block(cout, cout, down=True)
                if kw["encoder_type"] == "skip":
                    enc[f"{res}x{res}_aux_down"] = Conv2d(caux, caux, 0, down=True,
                                                          resample_filter=rf)
                    enc[f"{res}x{res}_aux_skip"] = Conv2d(caux, cout, 1)
                if kw["encoder_type"] == "residual":
                    enc[f"{res}x{res}_aux_residual"] = Conv2d(
                        caux, cout, 3, down=True, resample_filter=rf, fused_resample=True)
                    caux = cout
            for idx in range(kw["num_blocks"]):
                cin, cout = cout, mc * m
                enc[f"{res}x{res}_block{idx}"] = block(cin, cout, attention=res in attn_res)
        return enc, cout

    @staticmethod
    def _decoder(kw, img_resolution, out_channels, block, enc, cout):
        """The `dec` blocks in registration order (`enc` gives the skip widths)."""
        mc, rf, attn_res = kw["model_channels"], tuple(kw["resample_filter"]), set(
            kw["attn_resolutions"])
        mult, nb = list(kw["channel_mult"]), kw["num_blocks"]
        skip_dec = kw["decoder_type"] == "skip"
        skips = [b.out_channels for name, b in enc.items() if "aux" not in name]
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
            if skip_dec or level == 0:
                if skip_dec and level < len(mult) - 1:
                    dec[f"{res}x{res}_aux_up"] = Conv2d(out_channels, out_channels, 0, up=True,
                                                        resample_filter=rf)
                dec[f"{res}x{res}_aux_norm"] = GroupNorm(cout, eps=SONG_UNET_EPS)
                dec[f"{res}x{res}_aux_conv"] = Conv2d(cout, out_channels, 3)
        return dec

    def mapping(self, c_noise, class_labels=None, augment_labels=None):
        n = c_noise.shape[0]
        if self.map_noise is not None:
            e = self.map_noise(c_noise)
        else:
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
        aux = x
        for name in self.enc_order:
            blk = self.enc[name]
            if name.endswith("_aux_down"):
                aux = blk(aux)
            elif name.endswith("_aux_skip"):
                x = skips[-1] = x + blk(aux)
            elif name.endswith("_aux_residual"):   # / sqrt(2) in x's dtype (a weak scalar)
                x = skips[-1] = aux = (x + blk(aux)) / math.sqrt(2)
            else:
                x = blk(x, emb) if isinstance(blk, UNetBlock) else blk(x)
                skips.append(x)
        out = tmp = None
        for name in self.dec_order:
            blk = self.dec[name]
            if name.endswith("_aux_up"):
                out = blk(out)
            elif name.endswith("_aux_norm"):
                tmp = blk(x)
            elif name.endswith("_aux_conv"):
                tmp = blk(jax.nn.silu(tmp))
                out = tmp if out is None else tmp + out
            else:
                if "_block" in name:
                    x = jnp.concatenate([x, skips.pop()], axis=-1)  # x first
                if x.shape[-1] != blk.in_channels:
                    raise ValueError(f"dec.{name}: got {x.shape[-1]} channels, "
                                     f"expected {blk.in_channels}")
                x = blk(x, emb)
        return out


# ---------------------------------------------------------------------------------------------
# Preconditioners (spec 3): D(x; sigma) = c_skip x + c_out F(c_in x, c_noise, labels)

# The inner network of a preconditioner by its upstream class name (`model_type`). Both share
# the layers of `models.edm_layers`.
MODEL_TYPES = {"SongUNet": SongUNet, "DhariwalUNet": DhariwalUNet}


def model_class(model_type: str):
    """The Flax class of an upstream `model_type` ('SongUNet', 'DhariwalUNet')."""
    if model_type not in MODEL_TYPES:
        raise UserError(f"model_type={model_type!r} is not supported (supported: "
                        f"{', '.join(sorted(MODEL_TYPES))})")
    return MODEL_TYPES[model_type]


def edm_scalings(sigma, sigma_data):
    """EDMPrecond: (c_skip, c_out, c_in, c_noise) for sigma [N]."""
    sigma = jnp.asarray(sigma, jnp.float32)
    sd = jnp.float32(sigma_data)
    c_skip = sd ** 2 / (sigma ** 2 + sd ** 2)
    c_out = sigma * sd / jnp.sqrt(sigma ** 2 + sd ** 2)
    c_in = 1 / jnp.sqrt(sd ** 2 + sigma ** 2)
    c_noise = jnp.log(sigma) / 4
    return c_skip, c_out, c_in, c_noise


class Preconditioner(nnx.Module):
    """An upstream preconditioner (`class_name`) around its inner network `self.model` (the torch
    child name). `__call__(x [N,H,W,C], sigma [N] or scalar, class_labels [N, label_dim] | None)
    -> D(x; sigma)` in float32; the preconditioning runs in float32 (as upstream), the network in
    `compute_dtype`. `SETTINGS`: the class's recorded settings and their upstream defaults (None:
    derived from the others, as upstream does); `settings` holds the resolved values, also set as
    attributes. `use_fp16` is accepted and ignored (the compute dtype is a call argument)."""

    class_name = "?"
    SETTINGS: dict = {}
    default_model_type = "SongUNet"
    out_factor = 1   # the network gives out_factor x img_channels; D uses the first img_channels

    def __init__(self, img_resolution: int, img_channels: int, label_dim: int = 0,
                 use_fp16: bool = False, model_type: str | None = None, **kwargs):
        self.settings = self.resolve_settings(
            {k: kwargs.pop(k) for k in list(kwargs) if k in self.SETTINGS})
        for k, v in self.settings.items():
            setattr(self, k, v)
        self.img_resolution, self.img_channels, self.label_dim = (img_resolution, img_channels,
                                                                  label_dim)
        self.model_type = self.default_model_type if model_type is None else model_type
        self.model = model_class(self.model_type)(
            img_resolution, img_channels, img_channels * self.out_factor, label_dim=label_dim,
            **kwargs)

    @classmethod
    def resolve_settings(cls, kwargs: dict) -> dict:
        """The settings of constructor `kwargs`: given values, else the upstream defaults; M is
        an int, the rest floats."""
        s = {k: kwargs.get(k, d) for k, d in cls.SETTINGS.items()}
        s = cls._derive(s)
        return {k: int(v) if k == "M" else float(v) for k, v in s.items()}

    @classmethod
    def _derive(cls, s: dict) -> dict:
        return s

    @classmethod
    def record(cls, constructor: dict) -> dict:
        """The preconditioner record (`meta['precond']`, edm.json): class_name + settings."""
        return {"class_name": cls.class_name, **cls.resolve_settings(constructor)}

    def scalings(self, sigma):
        """(c_skip, c_out, c_in, c_noise), each [N] float32, for sigma [N] float32."""
        raise NotImplementedError

    def raw(self, x_in, c_noise, class_labels=None, compute_dtype=jnp.float32):
        """The inner network F on `x_in` cast to `compute_dtype`; float32 out."""
        return self.model(x_in.astype(compute_dtype), c_noise,
                          class_labels).astype(jnp.float32)

    def __call__(self, x, sigma, class_labels=None, compute_dtype=jnp.float32):
        """D(x; sigma): the preconditioning in float32, the network in `compute_dtype`."""
        x = x.astype(jnp.float32)
        sigma = jnp.broadcast_to(jnp.asarray(sigma, jnp.float32).reshape(-1), (x.shape[0],))
        if self.label_dim == 0:
            class_labels = None
        c_skip, c_out, c_in, c_noise = self.scalings(sigma)
        b = lambda c: c[:, None, None, None]
        f = self.raw(b(c_in) * x, c_noise, class_labels, compute_dtype)
        if self.out_factor != 1:
            f = f[..., :self.img_channels]
        return b(c_skip) * x + b(c_out) * f


class EDMPrecondNet(Preconditioner):
    """EDMPrecond: c_skip = sd^2/(s^2+sd^2), c_out = s sd/sqrt(s^2+sd^2), c_in = 1/sqrt(s^2+sd^2),
    c_noise = ln(s)/4 (sd = sigma_data)."""

    class_name = "EDMPrecond"
    SETTINGS = {"sigma_data": 0.5, "sigma_min": 0.0, "sigma_max": float("inf")}

    def scalings(self, sigma):
        return edm_scalings(sigma, self.sigma_data)


def vp_sigma(t, beta_d: float, beta_min: float) -> float:
    """VPPrecond's sigma(t) = sqrt(exp(beta_d t^2 / 2 + beta_min t) - 1), in float32 as upstream
    computes its sigma_min = sigma(epsilon_t) and sigma_max = sigma(1)."""
    t = np.float32(t)
    e = np.float32(0.5 * beta_d) * t * t + np.float32(beta_min) * t
    # exp correctly rounded to float32 (numpy's float32 exp is off by an ulp at 1 + 1e-6)
    return float(np.sqrt(np.float32(np.exp(np.float64(e))) - np.float32(1)))


class VPPrecondNet(Preconditioner):
    """VPPrecond: c_skip 1, c_out -s, c_in 1/sqrt(s^2+1), c_noise = (M-1) sigma_inv(s) with
    sigma_inv(s) = (sqrt(beta_min^2 + 2 beta_d ln(1+s^2)) - beta_min)/beta_d, op for op in float32
    as upstream. sigma_min/sigma_max: the values the pickle records (else sigma(epsilon_t),
    sigma(1))."""

    class_name = "VPPrecond"
    SETTINGS = {"beta_d": 19.9, "beta_min": 0.1, "M": 1000, "epsilon_t": 1e-5,
                "sigma_min": None, "sigma_max": None}

    @classmethod
    def _derive(cls, s):
        if s["sigma_min"] is None:
            s["sigma_min"] = vp_sigma(s["epsilon_t"], s["beta_d"], s["beta_min"])
        if s["sigma_max"] is None:
            s["sigma_max"] = vp_sigma(1, s["beta_d"], s["beta_min"])
        return s

    def scalings(self, sigma):
        one = jnp.ones_like(sigma)
        c_in = 1 / jnp.sqrt(sigma ** 2 + 1)
        inner = jnp.sqrt(self.beta_min ** 2 + 2 * self.beta_d * jnp.log(1 + sigma ** 2))
        c_noise = (self.M - 1) * ((inner - self.beta_min) / self.beta_d)
        return one, -sigma, c_in, c_noise


class VEPrecondNet(Preconditioner):
    """VEPrecond: c_skip 1, c_out s, c_in 1, c_noise = ln(s/2)."""

    class_name = "VEPrecond"
    SETTINGS = {"sigma_min": 0.02, "sigma_max": 100.0}

    def scalings(self, sigma):
        one = jnp.ones_like(sigma)
        return one, sigma, one, jnp.log(0.5 * sigma)


def iddpm_u(M: int, C_1: float, C_2: float) -> np.ndarray:
    """iDDPMPrecond's buffer u [M+1] in float32, within ~2e-5 of upstream's (the recurrence
    amplifies rounding differences); an imported network uses the file's copy."""
    j = np.arange(M + 1, dtype=np.float32)
    alpha_bar = np.sin(np.float32(0.5 * np.pi) * j / np.float32(M) / np.float32(C_2 + 1)) ** 2
    u = np.zeros(M + 1, np.float32)
    for i in range(M, 0, -1):
        ratio = max(alpha_bar[i - 1] / alpha_bar[i], np.float32(C_1))
        u[i - 1] = np.sqrt((u[i] ** 2 + 1) / ratio - 1)
    return u


class iDDPMPrecondNet(Preconditioner):  # noqa: N801 (the upstream class name)
    """iDDPMPrecond: c_skip 1, c_out -s, c_in 1/sqrt(s^2+1), c_noise = M - 1 - j with j the index
    of the entry of the buffer `u` [M+1] nearest to s; the network gives 2 x img_channels and D
    uses the first img_channels. sigma_min = u[M-1], sigma_max = u[0] (recorded)."""

    class_name = "iDDPMPrecond"
    SETTINGS = {"C_1": 0.001, "C_2": 0.008, "M": 1000, "sigma_min": None, "sigma_max": None}
    default_model_type = "DhariwalUNet"
    out_factor = 2

    @classmethod
    def _derive(cls, s):
        if s["sigma_min"] is None or s["sigma_max"] is None:
            u = iddpm_u(int(s["M"]), s["C_1"], s["C_2"])
            if s["sigma_min"] is None:
                s["sigma_min"] = float(u[int(s["M"]) - 1])
            if s["sigma_max"] is None:
                s["sigma_max"] = float(u[0])
        return s

    def __init__(self, img_resolution: int, img_channels: int, **kwargs):
        super().__init__(img_resolution, img_channels, **kwargs)
        self.u = nnx.Variable(jnp.asarray(iddpm_u(self.M, self.C_1, self.C_2)))

    def scalings(self, sigma):
        u = self.u[...].astype(jnp.float32)
        j = jnp.argmin(jnp.abs(sigma[:, None] - u[None, :]), axis=1)   # first of ties, as torch
        one = jnp.ones_like(sigma)
        return one, -sigma, 1 / jnp.sqrt(sigma ** 2 + 1), (self.M - 1 - j).astype(jnp.float32)


# The upstream preconditioner classes by name (`ema.class_name` of a pickle).
PRECONDITIONERS = {c.class_name: c for c in (EDMPrecondNet, VPPrecondNet, VEPrecondNet,
                                             iDDPMPrecondNet)}


def precond_class(class_name: str) -> type[Preconditioner]:
    if class_name not in PRECONDITIONERS:
        raise UserError(f"preconditioner {class_name!r} is not supported (supported: "
                        f"{', '.join(PRECONDITIONERS)})")
    return PRECONDITIONERS[class_name]


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
    if leaf in ("freqs", "u") and a.ndim == 1:  # FourierEmbedding / iDDPMPrecond buffers
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
    variable is covered. Raises UserError (a ValueError) listing every missing, unexpected or
    mis-shaped name otherwise."""
    target = _flat_state(module)
    converted, problems, misshaped = {}, [], set()
    for name, arr in sd.items():
        try:
            path, a = torch_to_flax(name, arr)
        except ValueError as e:
            problems.append(f"mis-shaped: {e}")
            misshaped.add(tuple(name.split(".")))
            continue
        if path not in target:
            problems.append(f"unexpected (no Flax variable): {name}")
            continue
        if path in converted:
            problems.append(f"two torch arrays map to {'.'.join(path)}")
            continue
        want = tuple(target[path].get_value().shape)
        if a.shape != want:
            problems.append(f"mis-shaped: {name}: shape {a.shape} (converted) != Flax {want}")
            misshaped.add(path)
            continue
        converted[path] = a
    for path in target:
        if path not in converted and path not in misshaped:
            problems.append(f"missing (no torch array): {'.'.join(path)}")
    if problems:
        raise UserError("EDM state dict does not match the rebuilt network:\n  "
                        + "\n  ".join(problems))
    return converted


def _positional_expected(model) -> tuple[int, bool] | None:
    """(num_channels, endpoint) of the PositionalEmbedding `model` uses; None if it has none."""
    if isinstance(model, SongUNet):
        return None if model.map_noise is not None else (model.noise_channels, True)
    return (getattr(model, "model_channels", None), False)   # DhariwalUNet


def _layer_problem(name: str, rec, obj) -> str | None:
    """How the pickle's record of one layer disagrees with its Flax counterpart (None: agrees)."""
    at, cls = rec.attrs, rec.class_name
    if cls == "GroupNorm":
        if at.get("num_groups") != obj.num_groups or not np.isclose(at.get("eps"), obj.eps):
            return (f"{name}: groups/eps {at.get('num_groups')}/{at.get('eps')} vs "
                    f"{obj.num_groups}/{obj.eps}")
    elif cls == "Conv2d":
        rec_flags = (bool(at.get("up")), bool(at.get("down")), bool(at.get("fused_resample")))
        if rec_flags != (obj.up, obj.down, getattr(obj, "fused_resample", False)):
            return f"{name}: up/down/fused_resample {rec_flags} differ"
    elif cls == "UNetBlock":
        if at.get("num_heads") != obj.num_heads or \
                bool(at.get("adaptive_scale")) != bool(getattr(obj, "adaptive_scale", False)) or \
                not np.isclose(float(at.get("skip_scale")), obj.skip_scale):
            return f"{name}: num_heads/skip_scale/adaptive_scale differ"
    elif cls == "Linear":
        if (at.get("in_features"), at.get("out_features")) != (obj.in_features,
                                                                obj.out_features):
            return f"{name}: in/out features differ"
    elif cls == "FourierEmbedding" and not isinstance(obj, FourierEmbedding):
        return f"{name}: FourierEmbedding, but the port built {type(obj).__name__}"
    return None


def _check_records(net: Preconditioner, modules: dict) -> None:
    """Compare per-layer attributes recorded in the pickle with the rebuilt architecture."""
    problems = []
    for name, rec in modules.items():
        at = rec.attrs
        if rec.class_name == "PositionalEmbedding":  # no arrays, so no Flax module
            want = _positional_expected(net.model)
            got = (at.get("num_channels"), at.get("endpoint"))
            if want is None or got != want or at.get("max_positions") != 10000:
                problems.append(f"{name}: PositionalEmbedding num_channels/endpoint/"
                                f"max_positions {got + (at.get('max_positions'),)} vs the "
                                f"port's {want}")
            continue
        obj = net
        try:
            for p in name.split("."):
                if p:
                    obj = obj[p] if isinstance(obj, nnx.Dict) else getattr(obj, p)
        except (AttributeError, KeyError):
            obj = None
        if obj is None:
            problems.append(f"{name}: {rec.class_name} has no Flax counterpart")
            continue
        problem = _layer_problem(name, rec, obj)
        if problem:
            problems.append(problem)
    if problems:
        raise UserError("EDM pickle layer attributes disagree with the port:\n  "
                        + "\n  ".join(problems))


def constructor_kwargs(ema) -> dict:
    """The keyword arguments of the preconditioner class `precond_class(ema.class_name)` for a
    pickle's `ema` record: its recorded constructor kwargs, the settings the pickle keeps only as
    attributes (sigma_min/max, beta_d, M, ...: constructor defaults, or derived upstream), and
    model_type (the child's class when the kwargs leave it to the upstream default)."""
    cls = precond_class(ema.class_name)
    kw = dict(ema.init_kwargs)
    attrs = ema.attrs
    for k in cls.SETTINGS:
        if k in attrs:
            kw[k] = int(attrs[k]) if k == "M" else float(attrs[k])
    model_rec = ema.children.get("model")
    kw.setdefault("model_type", getattr(model_rec, "class_name", cls.default_model_type))
    if model_rec is None or model_rec.class_name != kw["model_type"]:
        raise UserError(f"{ema.class_name} child 'model' is "
                        f"{getattr(model_rec, 'class_name', None)!r}, expected "
                        f"model_type={kw['model_type']!r}")
    return kw


def build_from_record(ema) -> Preconditioner:
    """An abstract (shape-only) preconditioner net from the pickle's recorded constructor kwargs."""
    kw = constructor_kwargs(ema)
    cls = precond_class(ema.class_name)
    return nnx.eval_shape(lambda: cls(**kw))


def precond_of(constructor: dict, class_name: str = "EDMPrecond") -> dict:
    """The preconditioner record of `class_name` with constructor kwargs `constructor`: the class
    name and its settings (EDMPrecond: sigma_data, sigma_min, sigma_max; VPPrecond: beta_d,
    beta_min, M, epsilon_t, sigma_min, sigma_max; VEPrecond: sigma_min, sigma_max; iDDPMPrecond:
    C_1, C_2, M, sigma_min, sigma_max), upstream defaults for those the kwargs leave out."""
    return precond_class(class_name).record(constructor)


def _bundle(graphdef, params, constructor: dict, source: str, class_name: str):
    """`(denoise, meta)` of a network given as graphdef + parameter state (see `load`)."""

    @functools.partial(jax.jit, static_argnames="compute_dtype")
    def apply(params, x, sigma, class_labels=None, compute_dtype=jnp.float32):
        return nnx.merge(graphdef, params)(x, sigma, class_labels, compute_dtype)

    @functools.partial(jax.jit, static_argnames="compute_dtype")
    def apply_raw(params, x_in, c_noise, class_labels=None, compute_dtype=jnp.float32):
        return nnx.merge(graphdef, params).raw(x_in, c_noise, class_labels, compute_dtype)

    meta = dict(precond=precond_of(constructor, class_name), constructor=dict(constructor),
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
                   os.path.abspath(os.fspath(path)), snap.ema.class_name)


IMPORTED_JSON = "edm.json"   # beside the Orbax `checkpoint/` of an imported network


def import_checkpoint(path, out_dir) -> str:
    """`jaxdiff import-checkpoint`: an EDM network pickle -> `out_dir` holding `checkpoint/` (an
    Orbax checkpoint of the converted Flax parameters and buffers) and `edm.json` (the
    preconditioner record — class name and settings — the constructor kwargs and the source
    file). `load(out_dir)` rebuilds the same class from it, without the pickle.
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
    converting the weights (what `jaxdiff sample` checks before loading). `precond` is the
    record of `precond_of` (its `class_name` names the preconditioner class). UserError when
    `path` is neither, or names a preconditioner this port does not have."""
    import json

    path = os.path.abspath(os.fspath(path))
    if os.path.isdir(path):
        try:
            with open(os.path.join(path, IMPORTED_JSON)) as f:
                info = json.load(f)
            info = {k: info[k] for k in ("constructor", "precond", "source")}
            precond_class(info["precond"]["class_name"])
            return info
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise MissingInputError(f"{path} is not a network imported by `jaxdiff "
                                    f"import-checkpoint` (no readable {IMPORTED_JSON}: {e})") from None
    from jaxdiff.torch_reader import read_edm_pickle

    ema = read_edm_pickle(Path(path)).ema
    kw = constructor_kwargs(ema)
    return {"constructor": kw, "source": path, "precond": precond_of(kw, ema.class_name)}


def load(path):
    """`(denoise, meta)` of an EDM network: `path` is an official EDM network pickle (read by
    `torch_reader`, no PyTorch) or a directory written by `import_checkpoint`. The network is
    the pickle's own preconditioner (EDMPrecond, VPPrecond, VEPrecond or iDDPMPrecond) around its
    SongUNet or DhariwalUNet.

    `denoise(x_nhwc, sigma[N], class_labels[N, label_dim] | None) -> D(x; sigma)` (NHWC float32)
    is a jitted function closing over the parameters; inside your own `jax.jit` use
    `meta['apply'](meta['params'], x, sigma, labels)` instead, so the parameters stay arguments.
    Both take `compute_dtype=jnp.bfloat16` to run the network in bfloat16 with the float32
    parameters cast at each use (normalisation statistics, softmax and the preconditioning stay
    float32).
    `meta`: 'precond' (class_name and its settings, see `precond_of`; every class has sigma_min
    and sigma_max, the range upstream samplers clamp to), 'constructor' (the preconditioner
    class's kwargs), 'source', 'params' (nnx.State: Params and buffers: resample filters,
    Fourier freqs, iDDPM's u), 'graphdef', 'apply', 'apply_raw(params, x_in, c_noise, labels)'
    (the raw network F), 'net'.
    """
    from jaxdiff.checkpoint import Checkpointer

    path = os.path.abspath(os.fspath(path))
    if not os.path.isdir(path):
        return from_edm_pickle(path)
    info = describe(path)
    constructor, class_name = info["constructor"], info["precond"]["class_name"]
    cls = precond_class(class_name)
    graphdef, abstract = nnx.split(nnx.eval_shape(lambda: cls(**constructor)))
    like = jax.tree.map(lambda a: jnp.zeros(a.shape, a.dtype), abstract)
    with Checkpointer(os.path.join(path, "checkpoint")) as ck:
        _, state, _ = ck.restore({"params": like})
    return _bundle(graphdef, state["params"], constructor, info["source"], class_name)
