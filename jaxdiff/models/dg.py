"""Flax NNX port of DG's discriminator (Kim et al., ICML 2023, alsdudrla10/DG): ADM's noise-
conditional encoder classifier as a frozen feature extractor plus DG's trained head, both ADM
`EncoderUNetModel`s, loaded from their PyTorch `state_dict` files without PyTorch.

    disc_logit, meta = load("32x32_classifier.pt", "discriminator_60.pt", image_size=32)
    logit = disc_logit(x, sigma, labels)        # [N]; x NHWC in EDM space, sigma [N]
    import_discriminator(classifier_pt, head_pt, out_dir)   # Orbax + dg.json; load(out_dir)

Semantics (DG's `classifier_lib.py`, DG's modified `guided_diffusion/unet.py`, read for facts):
* `EncoderUNet(x [N, H, W, C], t [N], labels)`: the sinusoidal embedding sees `999 t` (DG's
  EncoderUNetModel multiplies inside), then Linear-SiLU-Linear; a conditional model adds
  `label_emb[labels]` (one-hot labels are reduced by argmax, as DG does). `feature=True` returns
  the middle block's output, which is what DG feeds to the head (`[N, 8, 8, 512]` for the 32 and
  64 px ADM classifiers).
* The head gets the same `t` and returns the raw logit `[N]` (`sigmoid=False`; DiffRS uses it as
  `log L`, DG takes `log(d / (1 - d))` of `d = sigmoid(logit)` clipped to [1e-5, 1 - 1e-5]:
  `jaxdiff.diffusion.dg`).
* Time convention (DG's `get_grad_log_ratio`): for an EDM state (x, sigma) the networks see
  `x_vp = x / sqrt(1 + sigma^2)` and VP time `tau = vp_linear_t(sigma)` (linear beta 0.1..20);
  for 64 px (ADM's ImageNet-64 classifier was trained on the cosine schedule) `tau` is mapped to
  cosine time `vp_cosine_t(sigma)` ("cosine"; "auto" picks it exactly when image_size is 64).
* Blocks (ADM): ResBlock = GroupNorm(32, eps 1e-5)-SiLU-conv3x3 [2x2 average pool of both paths
  first in a down block], scale-shift (`norm(h) (1 + scale) + shift`) or additive time embedding,
  SiLU-conv3x3, skip identity or 1x1 conv; AttentionBlock: GroupNorm, qkv (1x1), heads of
  `num_head_channels`, qkv laid out per head as [q | k | v] (QKVAttentionLegacy), `x + proj_out`;
  attention pooling (AttentionPool2d): tokens = [mean, pixels] + positional embedding, qkv laid
  out as [q | k | v] over all heads (QKVAttention), `c_proj`, token 0. Softmax in float32.

Parameter mapping (one to one): the Flax module tree mirrors the torch one attribute for
attribute (`nnx.List`s for `nn.Sequential` / `nn.ModuleList`, with None where torch has a
parameter-free layer), so a torch dotted name IS the Flax path under `classifier.` / `head.`.
Layouts (`torch_to_flax`):

| torch name (suffix) | torch layout | Flax layout |
| --- | --- | --- |
| `time_embed.{0,2}.weight`, `*.emb_layers.1.weight` (Linear) | [out, in] | [in, out] |
| `label_emb.weight` (Embedding, conditional models) | [num_class, emb] | same |
| `input_blocks.0.0.weight`, `*.in_layers.2.weight`, `*.out_layers.3.weight`, `*.skip_connection.weight`, `*.op.weight` (Conv2d) | OIHW | HWIO |
| `*.qkv.weight`, `*.proj_out.weight`, `out.2.qkv_proj.weight`, `out.2.c_proj.weight` (Conv1d, k = 1) | [out, in, 1] | [in, out] |
| `out.2.positional_embedding` | [C, T + 1] | [T + 1, C] |
| `*.bias`, `*.in_layers.0.weight`, `*.out_layers.0.weight`, `*.norm.weight`, `out.0.weight` (GroupNorm scale) | [C] | [C] |

Checks: every array of a file lands on exactly one Flax variable of the same shape and every
variable is covered; otherwise `UserError` listing the missing, unexpected and mis-shaped names
(torch names and torch shapes). The architecture comes from DG's constructor arguments
(`classifier_config` / `head_config`: `create_classifier` as `classifier_lib.load_classifier` and
`load_discriminator` call it), not guessed from the file, so a damaged file is refused rather than
read as another architecture. Supported: attention pooling (what ADM classifiers and DG heads
use), 2-D, inference only (dropout off, no fp16 conversion).
"""

from __future__ import annotations

import functools
import json
import os
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxdiff.noise_levels import alpha_from_sigma, vp_cosine_t, vp_linear_t
from jaxdiff.errors import MissingInputError, UserError
from jaxdiff.models.discriminator import timestep_embedding
from jaxdiff.models.edm_layers import GroupNorm, Linear

_HI = jax.lax.Precision.HIGHEST
_DN = ("NHWC", "HWIO", "NHWC")
TIME_CONVENTIONS = ("auto", "linear", "cosine")
IMPORTED_JSON = "dg.json"
FORMAT = "jaxdiff-dg-1"
# Where users get DG's files (DG README, steps 4 and 5).
CLASSIFIER_URL = "https://drive.google.com/drive/folders/1gb68C13-QOt8yA6ZnnS6G5pVIlPO7j_y"
HEAD_URLS = {"cifar_uncond/discriminator_60.pt":
             "https://drive.google.com/drive/folders/1Mf3F1yGfWT8bO0_iOBX-PWG3O-OLROE2",
             "cifar_cond/discriminator_250.pt":
             "https://drive.google.com/drive/folders/1P1u7cz7kY1BJDPVrPNiFcksy_HCHY_bI"}
_CONV1D = {"qkv", "proj_out", "qkv_proj", "c_proj"}   # ADM's conv_nd(1, ..., 1) layers


# ---------------------------------------------------------------------------------------------
# Architecture configs (DG's constructor arguments)

ENCODER_KEYS = ("image_size", "in_channels", "model_channels", "out_channels", "num_res_blocks",
                "attention_resolutions", "channel_mult", "num_head_channels", "num_heads",
                "use_scale_shift_norm", "resblock_updown", "conv_resample", "pool", "condition",
                "num_class", "use_new_attention_order")
_ENCODER_DEFAULTS = dict(num_head_channels=-1, num_heads=1, use_scale_shift_norm=False,
                         resblock_updown=False, conv_resample=True, pool="attention",
                         condition=False, num_class=1000, use_new_attention_order=False)


def channel_mult_for(image_size: int) -> tuple:
    """DG's `create_classifier` channel multipliers per image size."""
    table = {512: (0.5, 1, 1, 2, 2, 4, 4), 256: (1, 1, 2, 2, 4, 4), 128: (1, 1, 2, 3, 4),
             64: (1, 2, 3, 4), 32: (1, 2, 4), 16: (1, 2), 8: (1,)}
    if image_size not in table:
        raise UserError(f"DG/ADM classifiers exist for image sizes {sorted(table)}, not "
                        f"{image_size}")
    return table[image_size]


def _create_classifier(image_size, width, depth, out_channels, in_channels, condition,
                       num_class=1000) -> dict:
    """`create_classifier(image_size, ...)` as DG calls it: attention at 32, 16, 8 px (as
    downsampling rates), 64-channel heads, scale-shift norm, resblock down-sampling, attention
    pooling."""
    return encoder_config(
        image_size=image_size, in_channels=in_channels, model_channels=width,
        out_channels=out_channels, num_res_blocks=depth,
        attention_resolutions=tuple(image_size // r for r in (32, 16, 8)),
        channel_mult=channel_mult_for(image_size), num_head_channels=64,
        use_scale_shift_norm=True, resblock_updown=True, pool="attention",
        condition=condition, num_class=num_class)


def classifier_config(image_size: int = 32) -> dict:
    """The feature extractor of DG's `load_classifier`: width 128, depth 4 at 32 and 64 px (2
    otherwise), 1000 classes (ADM's classifiers)."""
    return _create_classifier(image_size, 128, 4 if image_size in (32, 64) else 2, 1000, 3,
                              False)


def head_config(classifier: dict, *, condition: bool = False, num_class: int = 1000) -> dict:
    """DG's head (`load_discriminator`): an encoder on the classifier's features (DG: 8 x 8 x 512,
    `image_size=8, in_channels=512`), width 128, depth 2, one logit."""
    side, _, channels = feature_shape(classifier)
    return _create_classifier(side, 128, 2, 1, channels, bool(condition), int(num_class))


def encoder_config(**kw) -> dict:
    """A complete, checked `EncoderUNet` config (`ENCODER_KEYS`; defaults as EncoderUNetModel)."""
    unknown = set(kw) - set(ENCODER_KEYS)
    if unknown:
        raise ValueError(f"unknown EncoderUNet arguments {sorted(unknown)}; valid: "
                         f"{list(ENCODER_KEYS)}")
    cfg = {**_ENCODER_DEFAULTS, **kw}
    missing = [k for k in ENCODER_KEYS if k not in cfg]
    if missing:
        raise ValueError(f"EncoderUNet needs {missing}")
    cfg["attention_resolutions"] = tuple(int(a) for a in cfg["attention_resolutions"])
    cfg["channel_mult"] = tuple(cfg["channel_mult"])
    for k in ("image_size", "in_channels", "model_channels", "out_channels", "num_res_blocks",
              "num_head_channels", "num_heads", "num_class"):
        cfg[k] = int(cfg[k])
    for k in ("use_scale_shift_norm", "resblock_updown", "conv_resample", "condition",
              "use_new_attention_order"):
        cfg[k] = bool(cfg[k])
    if cfg["pool"] != "attention":
        raise UserError(f"EncoderUNet pool={cfg['pool']!r} is not supported (ADM's classifiers "
                        "and DG's heads use 'attention')")
    if cfg["use_new_attention_order"]:
        raise UserError("EncoderUNet use_new_attention_order=True is not supported (ADM and DG "
                        "use the legacy order)")
    for m in cfg["channel_mult"]:
        if int(m * cfg["model_channels"]) % 32:
            raise UserError(f"EncoderUNet channels {int(m * cfg['model_channels'])} are not a "
                            "multiple of 32 (ADM's GroupNorm has 32 groups)")
    return cfg


def feature_shape(cfg: dict) -> tuple[int, int, int]:
    """`(h, w, c)` of the middle block's output (`feature=True`)."""
    down = 2 ** (len(cfg["channel_mult"]) - 1)
    c = int(cfg["channel_mult"][-1] * cfg["model_channels"])
    return cfg["image_size"] // down, cfg["image_size"] // down, c


# ---------------------------------------------------------------------------------------------
# Layers (torch array names, Flax layouts)

class Conv2d(nnx.Module):
    """torch Conv2d with padding k // 2 (ADM's 3x3 padding 1, 1x1, stride-2 `op`); weight HWIO."""

    def __init__(self, cin: int, cout: int, k: int, stride: int = 1):
        self.stride = stride
        self.weight = nnx.Param(jnp.zeros((k, k, cin, cout), jnp.float32))
        self.bias = nnx.Param(jnp.zeros((cout,), jnp.float32))

    def __call__(self, x):
        p = self.weight.shape[0] // 2
        y = jax.lax.conv_general_dilated(x, self.weight[...], (self.stride,) * 2, [(p, p)] * 2,
                                         dimension_numbers=_DN, precision=_HI)
        return y + self.bias[...]


def _norm(c: int) -> GroupNorm:
    return GroupNorm(c, num_groups=32, min_channels_per_group=1, eps=1e-5)  # ADM GroupNorm32


def _avg_pool2(x):
    n, h, w, c = x.shape
    return x.reshape(n, h // 2, 2, w // 2, 2, c).mean(axis=(2, 4))


class Downsample(nnx.Module):
    """ADM Downsample: a stride-2 3x3 conv `op` (conv_resample) or a 2x2 average pool."""

    def __init__(self, c: int, use_conv: bool):
        self.op = Conv2d(c, c, 3, stride=2) if use_conv else None

    def __call__(self, x):
        return self.op(x) if self.op is not None else _avg_pool2(x)


class ResBlock(nnx.Module):
    """ADM ResBlock (torch children in_layers, emb_layers, out_layers, skip_connection)."""

    def __init__(self, c: int, emb: int, cout: int, *, scale_shift: bool, down: bool = False):
        self.scale_shift, self.down = scale_shift, down
        self.in_layers = nnx.List([_norm(c), None, Conv2d(c, cout, 3)])
        self.emb_layers = nnx.List([None, Linear(emb, 2 * cout if scale_shift else cout)])
        self.out_layers = nnx.List([_norm(cout), None, None, Conv2d(cout, cout, 3)])
        self.skip_connection = Conv2d(c, cout, 1) if cout != c else None

    def __call__(self, x, emb):
        h = jax.nn.silu(self.in_layers[0](x))
        if self.down:  # h_upd / x_upd: 2x2 average pools
            h, x = _avg_pool2(h), _avg_pool2(x)
        h = self.in_layers[2](h)
        e = self.emb_layers[1](jax.nn.silu(emb))[:, None, None, :]
        if self.scale_shift:
            scale, shift = jnp.split(e, 2, axis=-1)
            h = self.out_layers[0](h) * (1 + scale) + shift
        else:
            h = self.out_layers[0](h + e)
        h = self.out_layers[3](jax.nn.silu(h))  # dropout: inference
        return (x if self.skip_connection is None else self.skip_connection(x)) + h


def _attend(q, k, v):
    """q, k, v [N, T, heads, d] -> [N, T, heads * d]; softmax(q.k / sqrt(d)) in float32."""
    n, t, heads, d = q.shape
    s = jnp.einsum("nihd,njhd->nhij", q, k, precision=_HI) / np.float32(np.sqrt(d))
    o = jnp.einsum("nhij,njhd->nihd", jax.nn.softmax(s.astype(jnp.float32), axis=-1), v,
                   precision=_HI)
    return o.reshape(n, t, heads * d)


def _num_heads(c: int, num_heads: int, head_channels: int) -> int:
    if head_channels == -1:
        return num_heads
    if c % head_channels:
        raise UserError(f"attention over {c} channels with {head_channels}-channel heads")
    return c // head_channels


class AttentionBlock(nnx.Module):
    """ADM AttentionBlock with QKVAttentionLegacy: qkv channel `h*3d + s*d + c` (s = q, k, v)."""

    def __init__(self, c: int, heads: int):
        self.heads = heads
        self.norm = _norm(c)
        self.qkv = Linear(c, 3 * c)
        self.proj_out = Linear(c, c)

    def __call__(self, x):
        n, hh, ww, c = x.shape
        qkv = self.qkv(self.norm(x).reshape(n, hh * ww, c))
        qkv = qkv.reshape(n, hh * ww, self.heads, 3, c // self.heads)
        a = _attend(qkv[..., 0, :], qkv[..., 1, :], qkv[..., 2, :])
        return x + self.proj_out(a).reshape(n, hh, ww, c)


class AttentionPool2d(nnx.Module):
    """ADM AttentionPool2d with QKVAttention: qkv channel `s*C + h*d + c`; returns token 0."""

    def __init__(self, spatial: int, c: int, head_channels: int, out: int):
        self.heads = c // head_channels
        self.positional_embedding = nnx.Param(jnp.zeros((spatial ** 2 + 1, c), jnp.float32))
        self.qkv_proj = Linear(c, 3 * c)
        self.c_proj = Linear(c, out)

    def __call__(self, x):
        n, hh, ww, c = x.shape
        tok = x.reshape(n, hh * ww, c)
        tok = jnp.concatenate([tok.mean(axis=1, keepdims=True), tok], axis=1)
        tok = tok + self.positional_embedding[...][None]
        q, k, v = (a.reshape(n, hh * ww + 1, self.heads, c // self.heads)
                   for a in jnp.split(self.qkv_proj(tok), 3, axis=-1))
        return self.c_proj(_attend(q, k, v))[:, 0]


class Embedding(nnx.Module):
    def __init__(self, num: int, dim: int):
        self.weight = nnx.Param(jnp.zeros((num, dim), jnp.float32))

    def __call__(self, idx):
        return self.weight[...][idx]


class EncoderUNet(nnx.Module):
    """ADM's EncoderUNetModel as DG modified it (see the module docstring); `encoder_config`
    keys as keyword arguments. `__call__(x [N, H, W, C], t [N] in [0, 1], labels [N] int or
    [N, K] one-hot | None, feature=False)` -> logits `[N, out_channels]`, or the middle block's
    output `[N, h, w, c]` with `feature=True`."""

    def __init__(self, **kw):
        cfg = encoder_config(**kw)
        self.config = cfg
        mc, emb = cfg["model_channels"], 4 * cfg["model_channels"]
        heads = functools.partial(_num_heads, num_heads=cfg["num_heads"],
                                  head_channels=cfg["num_head_channels"])
        res = functools.partial(ResBlock, emb=emb, scale_shift=cfg["use_scale_shift_norm"])
        self.time_embed = nnx.List([Linear(mc, emb), None, Linear(emb, emb)])
        self.label_emb = Embedding(cfg["num_class"], emb) if cfg["condition"] else None
        ch = int(cfg["channel_mult"][0] * mc)
        blocks, ds = [nnx.List([Conv2d(cfg["in_channels"], ch, 3)])], 1
        for level, mult in enumerate(cfg["channel_mult"]):
            for _ in range(cfg["num_res_blocks"]):
                cout = int(mult * mc)
                layers = [res(ch, cout=cout)]
                ch = cout
                if ds in cfg["attention_resolutions"]:
                    layers.append(AttentionBlock(ch, heads(ch)))
                blocks.append(nnx.List(layers))
            if level != len(cfg["channel_mult"]) - 1:
                blocks.append(nnx.List([res(ch, cout=ch, down=True) if cfg["resblock_updown"]
                                        else Downsample(ch, cfg["conv_resample"])]))
                ds *= 2
        self.input_blocks = nnx.List(blocks)
        self.middle_block = nnx.List([res(ch, cout=ch), AttentionBlock(ch, heads(ch)),
                                      res(ch, cout=ch)])
        self.out = nnx.List([_norm(ch), None,
                             AttentionPool2d(cfg["image_size"] // ds, ch,
                                             cfg["num_head_channels"], cfg["out_channels"])])

    def embed(self, t, labels=None):
        """Time (+ class) embedding `[N, 4 * model_channels]` of `t [N]` in [0, 1]."""
        mc = self.config["model_channels"]
        e = timestep_embedding(999.0 * jnp.asarray(t, jnp.float32), mc)
        e = self.time_embed[2](jax.nn.silu(self.time_embed[0](e)))
        if self.label_emb is not None:
            if labels is None:
                raise ValueError("this conditional encoder needs class labels")
            labels = jnp.asarray(labels)
            idx = jnp.argmax(labels, axis=1) if labels.ndim == 2 else labels.astype(jnp.int32)
            e = e + self.label_emb(idx)
        return e

    def __call__(self, x, t, labels=None, feature: bool = False):
        n = x.shape[0]
        want = (self.config["image_size"],) * 2 + (self.config["in_channels"],)
        if tuple(x.shape[1:]) != want:
            raise ValueError(f"EncoderUNet expects [N, {want}] inputs, got {x.shape}")
        emb = self.embed(jnp.broadcast_to(jnp.asarray(t, jnp.float32), (n,)), labels)
        h = x.astype(jnp.float32)
        for blk in list(self.input_blocks) + [self.middle_block]:
            for layer in blk:
                h = layer(h, emb) if isinstance(layer, ResBlock) else layer(h)
        if feature:
            return h
        return self.out[2](jax.nn.silu(self.out[0](h)))


def check_pair(classifier: dict, head: dict) -> None:
    """The head's input is the classifier's feature map (UserError naming both otherwise)."""
    fs = feature_shape(encoder_config(**classifier))
    hs = encoder_config(**head)
    if fs != (hs["image_size"], hs["image_size"], hs["in_channels"]):
        raise UserError(f"DG head expects {hs['image_size']}x{hs['image_size']}x"
                        f"{hs['in_channels']} features; the classifier gives "
                        f"{fs[0]}x{fs[1]}x{fs[2]}")


class DGDiscriminator(nnx.Module):
    """The frozen ADM classifier (`classifier`) and DG's head (`head`) stacked:
    `__call__(x_vp [N, H, W, C], t [N], labels) -> logit [N]` (VP input and time)."""

    def __init__(self, classifier: dict, head: dict):
        check_pair(classifier, head)
        self.classifier = EncoderUNet(**classifier)
        self.head = EncoderUNet(**head)

    def __call__(self, x_vp, t, labels=None):
        if self.head.label_emb is None:
            labels = None  # an unconditional head ignores labels (DG: `net.label_dim and cond`)
        f = self.classifier(x_vp, t, feature=True)
        return self.head(f, t, labels)[:, 0]


# ---------------------------------------------------------------------------------------------
# Conversion

def _kind(path: tuple[str, ...], ndim_flax: int) -> str:
    if path[-1] == "positional_embedding":
        return "posemb"
    if path[-1] == "weight" and len(path) > 1 and path[-2] == "label_emb":
        return "embedding"
    if path[-1] == "weight" and len(path) > 1 and path[-2] in _CONV1D:
        return "conv1d"
    if path[-1] == "weight" and ndim_flax == 4:
        return "conv2d"
    if path[-1] == "weight" and ndim_flax == 2:
        return "linear"
    return "vector"


def torch_shape(path: tuple[str, ...], flax_shape: tuple) -> tuple:
    """The torch shape of the Flax variable at `path` (inverse of `torch_to_flax`)."""
    s = tuple(flax_shape)
    kind = _kind(path, len(s))
    if kind in ("posemb", "linear"):
        return s[::-1]
    if kind == "conv1d":
        return (s[1], s[0], 1)
    if kind == "conv2d":
        return (s[3], s[2], s[0], s[1])
    return s


def torch_to_flax(path: tuple[str, ...], a: np.ndarray, ndim_flax: int) -> np.ndarray:
    """One torch array in the Flax layout of the variable at `path` (module docstring table)."""
    a = np.asarray(a, np.float32)
    kind = _kind(path, ndim_flax)
    if kind in ("posemb", "linear"):
        return np.ascontiguousarray(a.T)
    if kind == "conv1d":
        return np.ascontiguousarray(a[:, :, 0].T)
    if kind == "conv2d":
        return np.ascontiguousarray(a.transpose(2, 3, 1, 0))
    return a.copy()


def convert_state_dict(cfg: dict, sd: dict, what: str) -> dict:
    """`{Flax path: array}` of a torch state dict for the EncoderUNet `cfg`, checked one to
    one; `UserError` naming every missing, unexpected and mis-shaped torch name otherwise."""
    want = expected_shapes(cfg)
    missing = [f"{k} {list(s)}" for k, s in want.items() if k not in sd]
    extra = [f"{k} {list(np.shape(v))}" for k, v in sd.items() if k not in want]
    shaped = [f"{k}: {list(np.shape(v))} in the file, {list(want[k])} expected"
              for k, v in sd.items() if k in want and tuple(np.shape(v)) != want[k]]
    if missing or extra or shaped:
        parts = [f"{title} ({len(items)}): {', '.join(items[:12])}"
                 + (" ..." if len(items) > 12 else "")
                 for title, items in (("missing", missing), ("unexpected", extra),
                                      ("wrong shape", shaped)) if items]
        raise UserError(f"{what} does not match the configured architecture:\n  "
                        + "\n  ".join(parts)
                        + (_resolution_hint(sd, cfg) if "classifier" in what else ""))
    return {tuple(k.split(".")): torch_to_flax(tuple(k.split(".")), sd[k], len(s))
            for k, s in want.items()}


def expected_shapes(cfg: dict) -> dict[str, tuple]:
    """`{torch name: torch shape}` of the EncoderUNet `cfg` (no arrays allocated)."""
    module = nnx.eval_shape(lambda: EncoderUNet(**cfg))
    _, state = nnx.split(module)
    out = {}
    for path, v in nnx.to_flat_state(state):
        p = tuple(str(q) for q in path)
        out[".".join(p)] = torch_shape(p, v.get_value().shape)
    return out


def _resolution_hint(sd: dict, cfg: dict) -> str:
    """Which of DG's classifier resolutions the file is, when it is one but not `cfg`'s."""
    have = {k: tuple(np.shape(v)) for k, v in sd.items()}
    for size in (8, 16, 32, 64, 128, 256, 512):
        if size != cfg["image_size"] and expected_shapes(classifier_config(size)) == have:
            return (f"\n  the file is DG's {size} px ADM classifier; the configuration is for "
                    f"{cfg['image_size']} px images (set the image size to {size}, or use the "
                    f"{cfg['image_size']} px classifier)")
    return ""


def _read(path, what: str) -> dict:
    from jaxdiff.torch_reader import read_state_dict

    if not os.path.isfile(path):
        raise MissingInputError(f"{what} {path} does not exist; {_download_hint(what)}")
    return read_state_dict(path)


def _download_hint(what: str) -> str:
    if "classifier" in what:
        return f"DG's ADM classifier 32x32_classifier.pt is at {CLASSIFIER_URL}"
    return "DG's discriminator heads: " + ", ".join(f"{k} at {u}" for k, u in HEAD_URLS.items())


# ---------------------------------------------------------------------------------------------
# Loading

def resolve_time(time: str, image_size: int) -> str:
    """'linear' or 'cosine' ('auto': cosine exactly for 64 px, DG's `img_resolution == 64`)."""
    if time not in TIME_CONVENTIONS:
        raise UserError(f"DG time convention {time!r} is not one of {list(TIME_CONVENTIONS)}")
    if time == "auto":
        return "cosine" if int(image_size) == 64 else "linear"
    return time


def dg_time(sigma, time: str):
    """The networks' time input for VE noise levels `sigma`: linear-beta VP time or its cosine-
    schedule counterpart (module docstring)."""
    return vp_cosine_t(sigma) if time == "cosine" else vp_linear_t(sigma)


def ve_apply(graphdef, params, x, sigma, cond=None, *, time: str = "linear"):
    """The sampler contract in the EDM/VE convention: `x [N, H, W, C]`, `sigma [N]` (or a
    scalar), `cond` int labels `[N]`, one-hot `[N, K]` or None -> raw head logits `[N]`."""
    net = nnx.merge(graphdef, params)
    sigma = jnp.broadcast_to(jnp.asarray(sigma, jnp.float32).reshape(-1), (x.shape[0],))
    x_vp = x.astype(jnp.float32) * alpha_from_sigma(sigma)[:, None, None, None]
    return net(x_vp, dg_time(sigma, time), cond)


class DG(NamedTuple):
    """A loaded DG discriminator, shaped like `saved.TrainedDiscriminator` so DiffRS and DG
    guidance take either: `state()` is the array pytree to pass into jitted samplers,
    `make_logit(state)` the sampler contract `disc_logit(x, sigma, cond) -> [N]` (call inside
    jit). `spec`: `{"classifier", "head"` (configs), `"time"`, `"sources"`, `"step": None}`."""

    graphdef: Any
    params: Any
    spec: dict

    def state(self):
        return self.params

    def make_logit(self, state):
        return functools.partial(ve_apply, self.graphdef, state, time=self.spec["time"])

    @property
    def image_shape(self) -> tuple:
        c = self.spec["classifier"]
        return (c["image_size"], c["image_size"], c["in_channels"])

    @property
    def num_classes(self) -> int:
        """Label count of a conditional head (0 = unconditional)."""
        h = self.spec["head"]
        return h["num_class"] if h["condition"] else 0


def from_state_dicts(classifier_sd: dict, head_sd: dict, *, classifier: dict, head: dict,
                     time: str = "auto", sources=("<memory>", "<memory>")) -> DG:
    """A `DG` from two state dicts (`{torch name: array}`) and the two encoder configs."""
    cls_cfg, head_cfg = encoder_config(**classifier), encoder_config(**head)
    conv = {}   # each file checked against its own config before the two are combined
    for part, cfg, sd, src in (("classifier", cls_cfg, classifier_sd, sources[0]),
                               ("head", head_cfg, head_sd, sources[1])):
        what = f"DG {'ADM classifier' if part == 'classifier' else 'discriminator head'} {src}"
        for p, a in convert_state_dict(cfg, sd, what).items():
            conv[(part, *p)] = a
    check_pair(cls_cfg, head_cfg)
    abstract = nnx.eval_shape(lambda: DGDiscriminator(cls_cfg, head_cfg))
    graphdef, state = nnx.split(abstract)
    flat = [(p, v.replace(jnp.asarray(conv[tuple(str(q) for q in p)])))
            for p, v in nnx.to_flat_state(state)]
    spec = {"classifier": cls_cfg, "head": head_cfg,
            "time": resolve_time(time, cls_cfg["image_size"]),
            "sources": [str(s) for s in sources], "step": None}
    return DG(graphdef, nnx.from_flat_state(flat), spec)


def _head_for(classifier: dict, head_sd: dict, head: dict | None,
              condition: bool | None) -> dict:
    """DG's head config; `condition=None` reads it from the file (a `label_emb.weight` row per
    class), as DG's `--cond` must match the file."""
    if head is not None:
        return head
    emb = head_sd.get("label_emb.weight")
    if condition is None:
        condition = emb is not None
    num_class = int(np.shape(emb)[0]) if condition and emb is not None else 1000
    return head_config(classifier, condition=condition, num_class=num_class)


def open_pair(classifier_path, head_path, *, image_size: int = 32, classifier: dict | None = None,
              head: dict | None = None, condition: bool | None = None, time: str = "auto") -> DG:
    """A `DG` from DG's two `.pt` files (`torch_reader`, no PyTorch, no code from the files).

    `classifier` / `head`: encoder configs (default DG's: `classifier_config(image_size)`,
    `head_config`, conditional iff the head file has `label_emb.weight` unless `condition`).
    """
    classifier = classifier if classifier is not None else classifier_config(image_size)
    cls_sd = _read(os.fspath(classifier_path), "DG ADM classifier")
    head_sd = _read(os.fspath(head_path), "DG discriminator head")
    head = _head_for(encoder_config(**classifier), head_sd, head, condition)
    return from_state_dicts(cls_sd, head_sd, classifier=classifier, head=head, time=time,
                            sources=(os.path.abspath(classifier_path),
                                     os.path.abspath(head_path)))


def is_imported(path) -> bool:
    """Whether `path` is a directory written by `import_discriminator`."""
    return os.path.isfile(os.path.join(os.fspath(path), IMPORTED_JSON))


def describe(path) -> dict:
    """`dg.json` of an imported directory (configs, time convention, sources); no arrays."""
    path = os.path.abspath(os.fspath(path))
    try:
        with open(os.path.join(path, IMPORTED_JSON)) as f:
            info = json.load(f)
        if info.get("format") != FORMAT:
            raise ValueError(f"format {info.get('format')!r}, expected {FORMAT!r}")
        return {k: info[k] for k in ("classifier", "head", "time", "sources")}
    except (OSError, ValueError, KeyError) as e:
        raise MissingInputError(f"{path} is not a DG discriminator imported by jaxdiff (no "
                                f"readable {IMPORTED_JSON}: {e}); import DG's classifier and "
                                "head with jaxdiff.models.dg.import_discriminator") from None


def open_imported(path) -> DG:
    """A `DG` from a directory written by `import_discriminator`."""
    from jaxdiff.checkpoint import Checkpointer

    path = os.path.abspath(os.fspath(path))
    info = describe(path)
    cls_cfg, head_cfg = encoder_config(**info["classifier"]), encoder_config(**info["head"])
    check_pair(cls_cfg, head_cfg)
    graphdef, abstract = nnx.split(nnx.eval_shape(lambda: DGDiscriminator(cls_cfg, head_cfg)))
    like = jax.tree.map(lambda a: jnp.zeros(a.shape, a.dtype), abstract)
    with Checkpointer(os.path.join(path, "checkpoint")) as ck:
        _, state, _ = ck.restore({"params": like})
    spec = {"classifier": cls_cfg, "head": head_cfg, "time": info["time"],
            "sources": info["sources"], "step": None, "imported": path}
    return DG(graphdef, state["params"], spec)


def open_discriminator(path, head_path=None, **kw) -> DG:
    """`open_imported(path)` for an imported directory, else `open_pair(path, head_path, **kw)`."""
    if head_path is None:
        return open_imported(path)
    return open_pair(path, head_path, **kw)


def load(path, head_path=None, **kw):
    """`(disc_logit, meta)` of a DG discriminator: DG's two `.pt` files (`open_pair` keywords:
    image_size, classifier, head, condition, time) or an imported directory (`head_path` None).

    `disc_logit(x, sigma, cond) -> [N]`: NHWC float32 EDM-space `x`, per-sample `sigma [N]`,
    int or one-hot labels (ignored by an unconditional head); jitted, closing over the
    parameters. Inside your own `jax.jit` use `meta['apply'](meta['params'], x, sigma, cond)`
    (or `meta['dg'].make_logit(params)`) so the parameters stay arguments; it shards over the
    batch like any batch-parallel function. `meta`: 'dg' (the `DG`), 'params', 'graphdef',
    'spec', 'apply', 'apply_vp(params, x_vp, t, labels)'.
    """
    dg = open_discriminator(path, head_path, **kw)

    @jax.jit
    def apply(params, x, sigma, cond=None):
        return ve_apply(dg.graphdef, params, x, sigma, cond, time=dg.spec["time"])

    @jax.jit
    def apply_vp(params, x_vp, t, labels=None):
        return nnx.merge(dg.graphdef, params)(x_vp, t, labels)

    meta = dict(dg=dg, params=dg.params, graphdef=dg.graphdef, spec=dg.spec, apply=apply,
                apply_vp=apply_vp)
    return functools.partial(apply, dg.params), meta


def import_discriminator(classifier_path, head_path, out_dir, **kw) -> str:
    """DG's classifier + head `.pt` files -> `out_dir/checkpoint` (Orbax, the converted
    parameters) and `out_dir/dg.json` (both configs, the time convention, the sources);
    `load(out_dir)` / `open_imported` read it back. `open_pair` keywords. Refuses an `out_dir`
    that holds files. Returns the absolute `out_dir`."""
    from jaxdiff.checkpoint import Checkpointer
    from jaxdiff.files import atomic_write_json

    out = os.path.abspath(os.fspath(out_dir))
    if os.path.exists(out) and (not os.path.isdir(out) or os.listdir(out)):
        raise UserError(f"--out {out} already exists and is not an empty directory; choose "
                        "another directory (nothing was written)")
    dg = open_pair(classifier_path, head_path, **kw)   # every check before anything is written
    os.makedirs(out, exist_ok=True)
    with Checkpointer(os.path.join(out, "checkpoint"), max_to_keep=1) as ck:
        ck.save(0, {"params": dg.params}, wait=True)
    atomic_write_json(os.path.join(out, IMPORTED_JSON),
                      {"format": FORMAT, **{k: dg.spec[k] for k in
                                            ("classifier", "head", "time", "sources")}})
    return out
