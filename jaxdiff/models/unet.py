"""A small EDM/DDPM++-style U-Net (Flax NNX) for 8-32 px images, used as the raw network F of
an EDM-preconditioned denoiser (`jaxdiff.diffusion.denoiser.edm_denoiser`).

    F(x_in: [N, H, W, C], c_noise: [N], labels: [N] int | None) -> [N, H, W, C]

Architecture (after Song et al. 2021's DDPM++ as configured by Karras et al. 2022, scaled down):
  * noise embedding: random Fourier features of c_noise (fixed frequencies, NCSN++ style,
    scale 16; c_noise = log(sigma)/4 spans only ~[-1.6, 1.1], so high frequencies are needed
    to tell noise levels apart) -> Linear -> SiLU -> Linear, width `4 * base_channels`;
  * optional class conditioning: a learned embedding of `num_classes + 1` rows, the last being
    the null class used for classifier-free guidance (`null_label`), added to the noise
    embedding;
  * encoder: a 3x3 conv, then per resolution `num_blocks` residual blocks (GroupNorm, SiLU,
    3x3 conv, + embedding projection, GroupNorm, SiLU, 3x3 conv; 1x1 skip when channels change;
    outputs scaled by 1/sqrt(2)); 2x2 average pooling between resolutions;
  * middle: residual block, optional single-head self-attention, residual block (lowest
    resolution);
  * decoder: per resolution `num_blocks + 1` residual blocks on [h, skip] concatenations,
    nearest-neighbour 2x upsampling between resolutions;
  * output: GroupNorm, SiLU, 3x3 conv initialised to zero (so an untrained denoiser is
    D = c_skip x, the optimal linear-free start, as in EDM's `init_weight=0` output layer).

All 3x3 convolutions go through `jaxdiff.ops.conv2d` (the platform-specific seam); 1x1 maps are
`nnx.Linear` over channels. No dropout (the samplers need a deterministic network).

Presets: `unet_for_resolution(res, ...)` gives 2 resolutions for 8/16 px and 3 for 32 px.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from jaxdiff.ops import avg_pool2, conv2d


class FourierFeatures(nnx.Module):
    """`[N] -> [N, 2 * half]`: `[cos(2 pi f c), sin(2 pi f c)]` with fixed `f ~ N(0, scale^2)`."""

    def __init__(self, num_features: int, *, scale: float = 16.0, rngs: nnx.Rngs):
        if num_features % 2:
            raise ValueError(f"num_features must be even, got {num_features}")
        # A plain Variable (not Param): the frequencies are not trained.
        self.freqs = nnx.Variable(jax.random.normal(rngs.params(), (num_features // 2,)) * scale)

    def __call__(self, c: jax.Array) -> jax.Array:
        arg = 2.0 * math.pi * c[:, None].astype(jnp.float32) * self.freqs[...][None, :]
        return jnp.concatenate([jnp.cos(arg), jnp.sin(arg)], axis=-1)


class Conv3x3(nnx.Module):
    """3x3 'SAME' convolution through `jaxdiff.ops.conv2d`, HWIO kernel, with bias."""

    def __init__(self, cin: int, cout: int, *, zero_init: bool = False, rngs: nnx.Rngs):
        init = nnx.initializers.zeros if zero_init else nnx.initializers.variance_scaling(
            1.0, "fan_avg", "uniform"
        )  # EDM's xavier_uniform
        self.kernel = nnx.Param(init(rngs.params(), (3, 3, cin, cout), jnp.float32))
        self.bias = nnx.Param(jnp.zeros((cout,), jnp.float32))

    def __call__(self, x: jax.Array) -> jax.Array:
        return conv2d(x, self.kernel[...].astype(x.dtype), padding="SAME") + self.bias[...].astype(x.dtype)


def group_norm_groups(c: int) -> int:
    # EDM: min(32, C // 4) groups, so tiny widths still normalise over >= 4 channels.
    return max(1, min(32, c // 4))


class ResBlock(nnx.Module):
    """Residual block with additive embedding conditioning (DDPM++ without adaptive scale)."""

    def __init__(self, cin: int, cout: int, emb_dim: int, *, rngs: nnx.Rngs):
        self.norm0 = nnx.GroupNorm(cin, num_groups=group_norm_groups(cin), epsilon=1e-5, rngs=rngs)
        self.conv0 = Conv3x3(cin, cout, rngs=rngs)
        self.affine = nnx.Linear(emb_dim, cout, rngs=rngs)
        self.norm1 = nnx.GroupNorm(cout, num_groups=group_norm_groups(cout), epsilon=1e-5, rngs=rngs)
        # Small init of the last conv keeps each block near identity at initialisation.
        self.conv1 = Conv3x3(cout, cout, zero_init=True, rngs=rngs)
        self.skip = nnx.Linear(cin, cout, rngs=rngs) if cin != cout else None

    def __call__(self, x: jax.Array, emb: jax.Array) -> jax.Array:
        h = self.conv0(nnx.silu(self.norm0(x)))
        h = h + self.affine(emb)[:, None, None, :]
        h = self.conv1(nnx.silu(self.norm1(h)))
        skip = x if self.skip is None else self.skip(x)
        return (h + skip) * (1.0 / math.sqrt(2.0))


class SelfAttention(nnx.Module):
    """Single-head self-attention over the H*W positions, residual, scaled by 1/sqrt(2)."""

    def __init__(self, c: int, *, rngs: nnx.Rngs):
        self.norm = nnx.GroupNorm(c, num_groups=group_norm_groups(c), epsilon=1e-5, rngs=rngs)
        self.qkv = nnx.Linear(c, 3 * c, rngs=rngs)
        self.proj = nnx.Linear(c, c, kernel_init=nnx.initializers.zeros, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        n, h, w, c = x.shape
        q, k, v = jnp.split(self.qkv(self.norm(x)).reshape(n, h * w, 3 * c), 3, axis=-1)
        att = jax.nn.softmax(jnp.einsum("nqc,nkc->nqk", q, k) / math.sqrt(c), axis=-1)
        out = self.proj(jnp.einsum("nqk,nkc->nqc", att, v)).reshape(n, h, w, c)
        return (x + out) * (1.0 / math.sqrt(2.0))


def _upsample2(x: jax.Array) -> jax.Array:
    return jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)


class UNet(nnx.Module):
    """Small U-Net raw network `F(x_in, c_noise, labels)` (see module docstring).

    Args:
      img_channels: C of the images.
      base_channels: width at the highest resolution (32-64 suits 8-32 px digits/CIFAR).
      channel_mult: width multipliers per resolution; `len` = number of resolutions (the
        spatial size must be divisible by `2**(len - 1)`).
      num_blocks: residual blocks per resolution in the encoder.
      attention: self-attention in the middle (lowest resolution).
      num_classes: 0 for unconditional; else labels in `[0, num_classes]`, `num_classes` being
        the null (unconditional) label.
      rngs: `nnx.Rngs` for initialisation.
    """

    def __init__(
        self,
        img_channels: int,
        *,
        base_channels: int = 32,
        channel_mult: Sequence[int] = (1, 2),
        num_blocks: int = 1,
        attention: bool = True,
        num_classes: int = 0,
        rngs: nnx.Rngs,
    ):
        self.img_channels = img_channels
        self.num_classes = num_classes
        self.num_levels = len(channel_mult)
        emb = 4 * base_channels
        self.fourier = FourierFeatures(base_channels, rngs=rngs)
        self.emb0 = nnx.Linear(base_channels, emb, rngs=rngs)
        self.emb1 = nnx.Linear(emb, emb, rngs=rngs)
        self.label_emb = (
            nnx.Embed(num_classes + 1, emb, rngs=rngs) if num_classes > 0 else None
        )
        self.conv_in = Conv3x3(img_channels, base_channels, rngs=rngs)

        chans = [base_channels * m for m in channel_mult]
        enc, skips_c, c = [], [base_channels], base_channels
        for level, cl in enumerate(chans):
            blocks = []
            for _ in range(num_blocks):
                blocks.append(ResBlock(c, cl, emb, rngs=rngs))
                c = cl
                skips_c.append(c)
            enc.append(nnx.List(blocks))
            if level < self.num_levels - 1:
                skips_c.append(c)  # the pooled activation is also a skip (DDPM++ layout)
        self.enc = nnx.List(enc)
        self.mid0 = ResBlock(c, c, emb, rngs=rngs)
        self.mid_attn = SelfAttention(c, rngs=rngs) if attention else None
        self.mid1 = ResBlock(c, c, emb, rngs=rngs)

        dec = []
        for level in reversed(range(self.num_levels)):
            cl = chans[level]
            blocks = []
            for _ in range(num_blocks + 1):
                blocks.append(ResBlock(c + skips_c.pop(), cl, emb, rngs=rngs))
                c = cl
            dec.append(nnx.List(blocks))
        assert not skips_c
        self.dec = nnx.List(dec)
        self.norm_out = nnx.GroupNorm(c, num_groups=group_norm_groups(c), epsilon=1e-5, rngs=rngs)
        self.conv_out = Conv3x3(c, img_channels, zero_init=True, rngs=rngs)

    @property
    def null_label(self) -> int:
        """The label meaning 'no class' (classifier-free guidance's unconditional branch)."""
        return self.num_classes

    def __call__(self, x: jax.Array, c_noise: jax.Array, labels: jax.Array | None = None) -> jax.Array:
        n, h, w, cin = x.shape
        if cin != self.img_channels:
            raise ValueError(f"expected {self.img_channels} channels, got x of shape {x.shape}")
        f = 2 ** (self.num_levels - 1)
        if h % f or w % f:
            raise ValueError(f"H and W must be divisible by {f} for {self.num_levels} resolutions")
        if c_noise.shape != (n,):
            raise ValueError(f"c_noise must be [N]={n}, got {c_noise.shape}")
        emb = self.emb1(nnx.silu(self.emb0(self.fourier(c_noise))))
        if self.label_emb is not None:
            if labels is None:
                labels = jnp.full((n,), self.null_label, jnp.int32)
            emb = emb + self.label_emb(jnp.asarray(labels, jnp.int32))
        elif labels is not None:
            raise ValueError("labels given to an unconditional UNet (num_classes=0)")
        emb = nnx.silu(emb)

        hcur = self.conv_in(x)
        skips = [hcur]
        for level, blocks in enumerate(self.enc):
            for blk in blocks:
                hcur = blk(hcur, emb)
                skips.append(hcur)
            if level < self.num_levels - 1:
                hcur = avg_pool2(hcur)
                skips.append(hcur)
        hcur = self.mid0(hcur, emb)
        if self.mid_attn is not None:
            hcur = self.mid_attn(hcur)
        hcur = self.mid1(hcur, emb)
        for i, blocks in enumerate(self.dec):
            for blk in blocks:
                hcur = blk(jnp.concatenate([hcur, skips.pop()], axis=-1), emb)
            if i < self.num_levels - 1:
                hcur = _upsample2(hcur)
        return self.conv_out(nnx.silu(self.norm_out(hcur)))


def unet_for_resolution(
    resolution: int,
    img_channels: int,
    *,
    base_channels: int = 32,
    num_classes: int = 0,
    attention: bool = True,
    num_blocks: int = 1,
    rngs: nnx.Rngs,
) -> UNet:
    """Preset: 2 resolutions (mult (1, 2)) for 8 and 16 px, 3 (mult (1, 2, 2)) for 32 px."""
    if resolution in (8, 16):
        mult = (1, 2)
    elif resolution == 32:
        mult = (1, 2, 2)
    else:
        raise ValueError(f"no U-Net preset for {resolution} px; valid: 8, 16, 32")
    return UNet(
        img_channels,
        base_channels=base_channels,
        channel_mult=mult,
        num_blocks=num_blocks,
        attention=attention,
        num_classes=num_classes,
        rngs=rngs,
    )
