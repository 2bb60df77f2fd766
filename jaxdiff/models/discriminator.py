"""Time-dependent discriminator for DiffRS / Discriminator Guidance (spec `diffrs.md` §9).

    Discriminator(x_vp: [N, ...], tau: [N], labels: [N] int | None) -> logit [N]

The logit estimates the log density ratio `log q_tau(x) / p_tau(x)` (real over generated) at
VP-SDE time `tau` in [0, 1] with VP-scaled input `x_vp = alpha(tau) x0 + sqrt(1 - alpha^2) z`
(the reference's convention, linear beta 0.1..20). Samplers work in VE terms; the conversion lives
in `jaxdiff.diffusion.discriminator.ve_logit` / `logit_fn`.

Structure (after the reference's frozen ADM classifier + trainable encoder head, scaled down):
  * an optional **frozen feature extractor**: any NNX module (e.g. a pretrained `ConvNet` or a
    noise-conditional classifier); `method` names the feature method (`"embed"`,
    `"__call__"`, ...), called as `f(x_vp)` or, with `extractor_time=True`, `f(x_vp, tau)`.
    Its outputs pass through `stop_gradient`; its parameters live under the `extractor` path and
    are excluded by `head_filter` from training. Without an extractor the head sees `x_vp`.
  * a **trainable head** on the features: 4-D features `[N, h, w, c]` get `depth` residual conv
    blocks (GroupNorm, SiLU, 3x3 conv, scale-shift time conditioning) and global average
    pooling; flat features `[N, F]` get `depth` residual MLP blocks with the same conditioning;
    then a linear layer to one logit.
  * time conditioning: sinusoidal embedding of `time_scale * tau` (999, as the reference's ADM
    encoder) -> Linear -> SiLU -> Linear; optional class embedding (`num_classes` rows) added.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from jaxdiff.models.unet import Conv3x3, group_norm_groups

# Trainable parameters of a Discriminator: every Param outside the frozen extractor.
head_filter = nnx.All(nnx.Param, nnx.Not(nnx.PathContains("extractor")))


def timestep_embedding(t: jax.Array, dim: int, max_period: float = 10000.0) -> jax.Array:
    """Sinusoidal embedding `[N] -> [N, dim]`: `[cos(t f_j), sin(t f_j)]`,
    `f_j = max_period^(-j / (dim/2))` (ADM / Transformer convention)."""
    if dim % 2:
        raise ValueError(f"embedding dim must be even, got {dim}")
    half = dim // 2
    freqs = jnp.exp(-math.log(max_period) * jnp.arange(half, dtype=jnp.float32) / half)
    arg = t.astype(jnp.float32)[:, None] * freqs[None, :]
    return jnp.concatenate([jnp.cos(arg), jnp.sin(arg)], axis=-1)


class _ConvBlock(nnx.Module):
    def __init__(self, c: int, emb: int, *, rngs: nnx.Rngs):
        self.norm0 = nnx.GroupNorm(c, num_groups=group_norm_groups(c), epsilon=1e-5, rngs=rngs)
        self.conv0 = Conv3x3(c, c, rngs=rngs)
        self.norm1 = nnx.GroupNorm(c, num_groups=group_norm_groups(c), epsilon=1e-5, rngs=rngs)
        self.film = nnx.Linear(emb, 2 * c, rngs=rngs)
        self.conv1 = Conv3x3(c, c, zero_init=True, rngs=rngs)

    def __call__(self, x, e):
        h = self.conv0(nnx.silu(self.norm0(x)))
        scale, shift = jnp.split(self.film(e)[:, None, None, :], 2, axis=-1)
        h = self.norm1(h) * (1.0 + scale) + shift
        h = self.conv1(nnx.silu(h))
        return (x + h) * (1.0 / math.sqrt(2.0))


class _MLPBlock(nnx.Module):
    def __init__(self, c: int, emb: int, *, rngs: nnx.Rngs):
        self.norm = nnx.LayerNorm(c, rngs=rngs)
        self.lin0 = nnx.Linear(c, c, rngs=rngs)
        self.film = nnx.Linear(emb, 2 * c, rngs=rngs)
        self.lin1 = nnx.Linear(c, c, rngs=rngs)

    def __call__(self, x, e):
        h = self.lin0(nnx.silu(self.norm(x)))
        scale, shift = jnp.split(self.film(e), 2, axis=-1)
        h = h * (1.0 + scale) + shift
        return x + self.lin1(nnx.silu(h))


class Discriminator(nnx.Module):
    """Time-(and class-)conditional discriminator; `__call__` returns logits `[N]`.

    Args:
      input_shape: per-sample input shape, e.g. `(8, 8, 1)` or `(2,)`.
      extractor: optional frozen NNX feature extractor (see module docstring). Put it in eval
        mode first (`jaxdiff.models.with_mode(m, train=False)`) if it has BatchNorm.
      method: name of the extractor's feature method.
      extractor_time: pass `tau` to the extractor (noise-conditional classifiers).
      width: head channels (conv) or hidden units (MLP). Features are first projected to it.
      depth: residual head blocks (reference: 2; 4 for FFHQ).
      emb_dim: time/class embedding width.
      num_classes: 0 for unconditional; else labels in `[0, num_classes)`.
      time_scale: the embedding sees `time_scale * tau` (reference 999).
      rngs: `nnx.Rngs`.
    """

    def __init__(
        self,
        input_shape: Sequence[int],
        *,
        extractor: nnx.Module | None = None,
        method: str = "embed",
        extractor_time: bool = False,
        width: int = 64,
        depth: int = 2,
        emb_dim: int = 128,
        num_classes: int = 0,
        time_scale: float = 999.0,
        rngs: nnx.Rngs,
    ):
        self.input_shape = tuple(int(s) for s in input_shape)
        if extractor is not None and not hasattr(extractor, method):
            raise ValueError(f"extractor {type(extractor).__name__} has no method {method!r}")
        self.extractor = extractor
        self.method = method
        self.extractor_time = extractor_time
        self.num_classes = num_classes
        self.time_scale = float(time_scale)
        self.emb_dim = emb_dim
        feat = jax.eval_shape(self._features, jnp.zeros((1, *self.input_shape), jnp.float32),
                              jnp.zeros((1,), jnp.float32))
        self.feature_shape = tuple(feat.shape[1:])
        self.t0 = nnx.Linear(emb_dim, emb_dim, rngs=rngs)
        self.t1 = nnx.Linear(emb_dim, emb_dim, rngs=rngs)
        self.label_emb = nnx.Embed(num_classes, emb_dim, rngs=rngs) if num_classes else None
        if len(self.feature_shape) == 3:
            self.conv = True
            self.proj = nnx.Linear(self.feature_shape[-1], width, rngs=rngs)  # 1x1 conv
            self.blocks = nnx.List([_ConvBlock(width, emb_dim, rngs=rngs) for _ in range(depth)])
            self.norm_out = nnx.GroupNorm(width, num_groups=group_norm_groups(width), epsilon=1e-5,
                                          rngs=rngs)
        else:
            self.conv = False
            fdim = int(math.prod(self.feature_shape))
            self.proj = nnx.Linear(fdim, width, rngs=rngs)
            self.blocks = nnx.List([_MLPBlock(width, emb_dim, rngs=rngs) for _ in range(depth)])
            self.norm_out = nnx.LayerNorm(width, rngs=rngs)
        self.out = nnx.Linear(width, 1, rngs=rngs)

    def _features(self, x, tau):
        if self.extractor is None:
            return x
        fn = getattr(self.extractor, self.method)
        f = fn(x, tau) if self.extractor_time else fn(x)
        return jax.lax.stop_gradient(f)

    def __call__(self, x_vp: jax.Array, tau: jax.Array, labels: jax.Array | None = None) -> jax.Array:
        """`x_vp: [N, *input_shape]`, `tau: [N]` (or scalar) VP time, labels `[N]` -> `[N]`."""
        n = x_vp.shape[0]
        if tuple(x_vp.shape[1:]) != self.input_shape:
            raise ValueError(f"expected x_vp of shape [N, {self.input_shape}], got {x_vp.shape}")
        tau = jnp.broadcast_to(jnp.asarray(tau, jnp.float32), (n,))
        e = self.t1(nnx.silu(self.t0(timestep_embedding(self.time_scale * tau, self.emb_dim))))
        if self.label_emb is not None:
            if labels is None:
                raise ValueError("a class-conditional Discriminator needs labels")
            e = e + self.label_emb(jnp.asarray(labels, jnp.int32))
        elif labels is not None:
            raise ValueError("labels given to an unconditional Discriminator (num_classes=0)")
        e = nnx.silu(e)
        h = self._features(x_vp, tau)
        if not self.conv:
            h = h.reshape(n, -1)
        h = self.proj(h)
        for blk in self.blocks:
            h = blk(h, e)
        h = nnx.silu(self.norm_out(h))
        if self.conv:
            h = jnp.mean(h, axis=(1, 2))
        return self.out(h)[:, 0]
