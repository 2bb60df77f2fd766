"""Flax NNX port of NVlabs/edm's DhariwalUNet (the ADM architecture of
`edm-imagenet-64x64-cond-adm.pkl`, which EDMPrecond wraps as its `model`).

Semantics: shared/specs/edm-checkpoints.md sections 2.3, 2.4 and 4 (written from the spec; the
layers are `jaxdiff.models.edm_layers`': Linear, Conv2d, GroupNorm, UNetBlock,
positional_embedding, attention). Layout: NHWC inside (upstream is NCHW); c_noise [N]; class labels one-hot
[N, label_dim] or None (a zero row when the net is conditional, as EDMPrecond does).

    net = DhariwalUNet(64, 3, 3, label_dim=1000, model_channels=192, channel_mult=(1, 2, 3, 4))
    f_x = net(x_nhwc, c_noise, class_labels)        # [N, H, W, out_channels], x's dtype

What differs from SongUNet (spec 4.1, 4.2, 4.4, 4.5, 4.8):
- noise embedding: positional, endpoint False, [cos, sin] not swapped; num_channels =
  model_channels.
- mapping: e = map_layer1(silu(map_layer0(emb(c_noise) [+ map_augment(aug)]))); the label enters
  after the MLP, unscaled, through a bias-free `map_label`; then emb = silu(e).
- blocks: adaptive scale (`affine` gives scale and shift, 2 x C: y = silu(shift + norm1(y) *
  (scale + 1))), skip_scale 1, GroupNorm eps 1e-5, out_channels // 64 attention heads (none
  below 64 channels even where the resolution asks for attention), and the skip of a
  same-width `_down`/`_up` block is a kernel-0 Conv2d: a resampler with no weight.
- output: out_conv(silu(out_norm(x))) after the decoder (no `_aux_*` layers).
- dropout and label_dropout act only in training; this port is inference-only and ignores them
  (they are kept in `config`).

Parameter mapping (one to one, as in `jaxdiff.models.edm`): the Flax module tree mirrors the torch
one, `enc` / `dec` are `nnx.Dict`s keyed by the official block names, and arrays sit under the
torch names, so `edm.torch_to_flax` / `edm.convert_state_dict` convert an ADM state dict unchanged.
Names below are relative to DhariwalUNet (EDMPrecond's state dict prefixes them with `model.`):

| torch name | torch shape | Flax path | Flax shape |
| --- | --- | --- | --- |
| `map_augment.weight` (if augment_dim; no bias) | [mc, aug] | same | [aug, mc] |
| `map_layer0.weight`, `.bias` | [emb, mc], [emb] | same | [mc, emb], [emb] |
| `map_layer1.weight`, `.bias` | [emb, emb], [emb] | same | transposed, [emb] |
| `map_label.weight` (if label_dim; no bias) | [emb, label_dim] | same | [label_dim, emb] |
| `enc.<R>x<R>_conv.weight`, `.bias` | [C, in, 3, 3], [C] | `enc['<R>x<R>_conv'].weight` | HWIO [3, 3, in, C] |
| `enc/dec.<blk>.norm0/norm1/norm2.weight`, `.bias` | [C] | `enc/dec['<blk>'].norm*.weight` | [C] |
| `<blk>.conv0/conv1.weight`, `.bias` | OIHW, [C] | same | HWIO, [C] |
| `<blk>.conv0.resample_filter` (`_down`/`_up`) | [1, 1, 2, 2] | same (`nnx.Variable`) | [2, 2] |
| `<blk>.affine.weight`, `.bias` | [2C, emb], [2C] | same | [emb, 2C], [2C] |
| `<blk>.skip.weight`, `.bias` (channels change) | [C, Cin, 1, 1], [C] | same | [1, 1, Cin, C] |
| `<blk>.skip.resample_filter` (`_down`/`_up`: kernel 0) | [1, 1, 2, 2] | same, no weight | [2, 2] |
| `<blk>.qkv.weight`, `.bias` (C >= 64) | [3C, C, 1, 1] rows (head, c, {q,k,v}) | same | [1, 1, C, 3C] cols [q; k; v] |
| `<blk>.proj.weight`, `.bias` | [C, C, 1, 1], [C] | same | [1, 1, C, C] |
| `out_norm.weight`, `.bias` | [C0] | same | [C0] |
| `out_conv.weight`, `.bias` | [out, C0, 3, 3], [out] | same | [3, 3, C0, out] |

mc = model_channels, emb = mc x channel_mult_emb, C = the block's out_channels, <blk> an
`enc.`/`dec.` block name (`16x16_block0`, `8x8_down`, `8x8_in0`, `16x16_up`, ...).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from jaxdiff.models.edm_layers import Conv2d, GroupNorm, Linear, UNetBlock, positional_embedding

ADM_EPS = 1e-5               # GroupNorm eps of every DhariwalUNet norm (spec 4.4)
ADM_CHANNELS_PER_HEAD = 64   # heads = out_channels // 64 (spec 2.3, 4.6)


class DhariwalUNet(nnx.Module):
    """DhariwalUNet (ADM). `__call__(x [N, H, W, in_channels] in the compute dtype, c_noise [N],
    class_labels [N, label_dim] | None, augment_labels [N, augment_dim] | None)
    -> F(x) [N, H, W, out_channels]` in x's dtype. Float32 parameters are cast at each use; the
    noise/label mapping, GroupNorm statistics and the attention softmax run in float32."""

    def __init__(self, img_resolution: int, in_channels: int, out_channels: int,
                 label_dim: int = 0, augment_dim: int = 0, model_channels: int = 192,
                 channel_mult: Sequence[int] = (1, 2, 3, 4), channel_mult_emb: int = 4,
                 num_blocks: int = 3, attn_resolutions: Sequence[int] = (32, 16, 8),
                 dropout: float = 0.10, label_dropout: float = 0):
        self.config = dict(img_resolution=img_resolution, in_channels=in_channels,
                           out_channels=out_channels, label_dim=label_dim,
                           augment_dim=augment_dim, model_channels=model_channels,
                           channel_mult=list(channel_mult), channel_mult_emb=channel_mult_emb,
                           num_blocks=num_blocks, attn_resolutions=list(attn_resolutions),
                           dropout=dropout, label_dropout=label_dropout)
        mc = model_channels
        emb_ch = mc * channel_mult_emb
        self.model_channels, self.label_dim, self.augment_dim = mc, label_dim, augment_dim
        block = functools.partial(UNetBlock, emb_channels=emb_ch, eps=ADM_EPS, skip_scale=1.0,
                                  num_heads=None, channels_per_head=ADM_CHANNELS_PER_HEAD,
                                  resample_proj=False, adaptive_scale=True)

        # map_noise (PositionalEmbedding) has no arrays.
        self.map_augment = Linear(augment_dim, mc, bias=False) if augment_dim else None
        self.map_layer0 = Linear(mc, emb_ch)
        self.map_layer1 = Linear(emb_ch, emb_ch)
        self.map_label = Linear(label_dim, emb_ch, bias=False) if label_dim else None

        attn_res = set(attn_resolutions)
        enc: dict[str, nnx.Module] = {}
        cout = in_channels
        for level, mult in enumerate(channel_mult):
            res = img_resolution >> level
            if level == 0:
                enc[f"{res}x{res}_conv"] = Conv2d(cout, mc * mult, 3)
                cout = mc * mult
            else:
                enc[f"{res}x{res}_down"] = block(cout, cout, down=True)
            for idx in range(num_blocks):
                cin, cout = cout, mc * mult
                enc[f"{res}x{res}_block{idx}"] = block(cin, cout, attention=res in attn_res)
        skips = [b.out_channels for b in enc.values()]

        dec: dict[str, nnx.Module] = {}
        for level in reversed(range(len(channel_mult))):
            res = img_resolution >> level
            if level == len(channel_mult) - 1:
                dec[f"{res}x{res}_in0"] = block(cout, cout, attention=True)
                dec[f"{res}x{res}_in1"] = block(cout, cout)
            else:
                dec[f"{res}x{res}_up"] = block(cout, cout, up=True)
            for idx in range(num_blocks + 1):
                cin, cout = cout + skips.pop(), mc * channel_mult[level]
                dec[f"{res}x{res}_block{idx}"] = block(cin, cout, attention=res in attn_res)
        # Python dicts keep insertion order; the forward walk relies on it (spec 4.8).
        self.enc_order, self.dec_order = tuple(enc), tuple(dec)
        self.enc, self.dec = nnx.Dict(enc), nnx.Dict(dec)
        self.out_norm = GroupNorm(cout, eps=ADM_EPS)
        self.out_conv = Conv2d(cout, out_channels, 3)

    def mapping(self, c_noise, class_labels=None, augment_labels=None):
        """c_noise [N] (+ labels) -> emb [N, emb_channels], float32 (spec 4.2, ADM)."""
        e = positional_embedding(c_noise, self.model_channels, endpoint=False)
        if self.map_augment is not None and augment_labels is not None:
            e = e + self.map_augment(augment_labels.astype(jnp.float32))
        e = self.map_layer1(jax.nn.silu(self.map_layer0(e)))
        if self.map_label is not None:
            if class_labels is None:   # EDMPrecond's zero row, broadcast over the batch
                class_labels = jnp.zeros((1, self.label_dim), jnp.float32)
            e = e + self.map_label(class_labels.astype(jnp.float32))
        return jax.nn.silu(e)

    def __call__(self, x, c_noise, class_labels=None, augment_labels=None):
        emb = self.mapping(c_noise, class_labels, augment_labels).astype(x.dtype)
        skips = []
        for name in self.enc_order:
            blk = self.enc[name]
            x = blk(x, emb) if isinstance(blk, UNetBlock) else blk(x)
            skips.append(x)
        for name in self.dec_order:
            blk = self.dec[name]
            if "_block" in name:
                x = jnp.concatenate([x, skips.pop()], axis=-1)  # x first
            if x.shape[-1] != blk.in_channels:
                raise ValueError(f"dec.{name}: got {x.shape[-1]} channels, "
                                 f"expected {blk.in_channels}")
            x = blk(x, emb)
        return self.out_conv(jax.nn.silu(self.out_norm(x)))
