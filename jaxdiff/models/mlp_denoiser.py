"""MLP raw network for low-dimensional diffusion (toy 2-D mixtures, feature vectors).

    F(x_in: [N, D], c_noise: [N], labels: [N] int | None) -> [N, D]

Used as the raw network of an EDM-preconditioned denoiser (`edm_denoiser`). The noise level
enters through random Fourier features of `c_noise = log(sigma)/4` (fixed frequencies), mapped
to an embedding that is added to every hidden layer (FiLM-style shift); an optional label
embedding with a null class (index `num_classes`) supports classifier-free guidance. The output
layer starts at zero, so the untrained denoiser is `D = c_skip x`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from jaxdiff.models.unet import FourierFeatures


class MLPDenoiser(nnx.Module):
    """Residual SiLU MLP over `[N, D]` inputs.

    Args:
      dim: D.
      hidden: hidden width.
      depth: number of hidden residual layers.
      emb_dim: width of the noise (and label) embedding.
      num_classes: 0 for unconditional; else labels in `[0, num_classes]`, the last the null label.
    """

    def __init__(
        self,
        dim: int,
        *,
        hidden: int = 128,
        depth: int = 3,
        emb_dim: int = 64,
        num_classes: int = 0,
        rngs: nnx.Rngs,
    ):
        self.dim = dim
        self.num_classes = num_classes
        self.fourier = FourierFeatures(emb_dim, scale=4.0, rngs=rngs)
        self.emb = nnx.Linear(emb_dim, emb_dim, rngs=rngs)
        self.label_emb = nnx.Embed(num_classes + 1, emb_dim, rngs=rngs) if num_classes else None
        self.inp = nnx.Linear(dim, hidden, rngs=rngs)
        self.layers = nnx.List([nnx.Linear(hidden, hidden, rngs=rngs) for _ in range(depth)])
        self.shifts = nnx.List([nnx.Linear(emb_dim, hidden, rngs=rngs) for _ in range(depth)])
        self.out = nnx.Linear(hidden, dim, kernel_init=nnx.initializers.zeros, rngs=rngs)

    @property
    def null_label(self) -> int:
        return self.num_classes

    def __call__(self, x: jax.Array, c_noise: jax.Array, labels: jax.Array | None = None) -> jax.Array:
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise ValueError(f"expected x of shape [N, {self.dim}], got {x.shape}")
        if c_noise.shape != (x.shape[0],):
            raise ValueError(f"c_noise must be [N]={x.shape[0]}, got {c_noise.shape}")
        e = self.emb(self.fourier(c_noise))
        if self.label_emb is not None:
            if labels is None:
                labels = jnp.full((x.shape[0],), self.null_label, jnp.int32)
            e = e + self.label_emb(jnp.asarray(labels, jnp.int32))
        elif labels is not None:
            raise ValueError("labels given to an unconditional MLPDenoiser (num_classes=0)")
        e = nnx.silu(e)
        h = self.inp(x)
        for layer, shift in zip(self.layers, self.shifts):
            h = h + layer(nnx.silu(h + shift(e)))
        return self.out(nnx.silu(h))
