"""FID statistics: streaming feature moments on device, reference `.npz` files, dataset references.

Streaming (`Moments`, `update_moments`, `finalize`; `InceptionStatistics` drives them through the
FID Inception). Features are never gathered: each batch of images goes through the network and
is folded into running sums on the device, so 50,000 samples cost one batch of memory. The batch
is sharded over a mesh; the sums are reductions over the batch axis that XLA partitions itself
(partial sums per device, then an all-reduce), so there is no explicit collective and the moments
stay replicated.

Precision without float64 on the device (jax runs float32 unless x64 is enabled, and TPUs have
no fast float64): (1) the sums are of features minus a shift, the first batch's mean, so the
covariance is not a difference of two large numbers (E[ff^T] - mu mu^T cancels badly where the
variance is small next to the mean); (2) each batch's sums are added with Kahan compensation, so
the rounding error does not grow with the number of batches. Host `finalize` then forms
mu = shift + S1 / n and sigma = (S2 - S1 S1^T / n) / (n - 1) in float64 (the unbiased
covariance of `np.cov` and EDM's `fid.py`). tests/fid/test_stats.py: streaming equals a float64
one-shot `np.cov` within 1e-6 relative (to max |sigma|) for any batch size and order.

Reference statistics files are EDM's format (`fid.py ref`): an `.npz` with `mu` [2048] float64
and `sigma` [2048, 2048] float64. `save_reference` writes the same two arrays plus descriptive
scalars (`count`, `detector`, `resize`, `source`), which EDM's and pytorch-fid's readers ignore.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Iterable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxdiff.errors import MissingInputError, UserError
from jaxdiff.fid.frechet import check_statistics
from jaxdiff.fid.inception import FEATURE_DIM, FID_WEIGHTS_NAME, FIDNetwork, apply, preprocess

EDM_REFS_URL = "https://nvlabs-fi-cdn.nvidia.com/edm/fid-refs/"  # cifar10-32x32.npz, ...


# ---------------------------------------------------------------------------------------------
# Streaming moments (pure, jittable)

class Moments(NamedTuple):
    """Running sums of features f [B, D] about `shift`, each with its Kahan compensation term
    (`*_c`: the rounding lost so far, to be subtracted). float32 on device; `count` int32."""

    count: jax.Array     # [] images folded in so far
    shift: jax.Array     # [D] the first batch's mean
    sum: jax.Array       # [D] sum of (f - shift)
    sum_c: jax.Array
    outer: jax.Array     # [D, D] sum of (f - shift)(f - shift)^T
    outer_c: jax.Array


def init_moments(dim: int = FEATURE_DIM) -> Moments:
    """Empty sums (each field its own buffer: the step donates them)."""
    def z(*shape):
        return jnp.zeros(shape, jnp.float32)
    return Moments(jnp.zeros((), jnp.int32), z(dim), z(dim), z(dim), z(dim, dim), z(dim, dim))


def _kahan(total, comp, x):
    """Kahan summation step: (total + x, new compensation)."""
    y = x - comp
    t = total + y
    return t, (t - total) - y


def update_moments(m: Moments, features, mask=None) -> Moments:
    """Fold features `[B, D]` into `m`; rows with `mask` 0 (padding of a last batch) are left out.
    The shift is set from the first batch holding a row (in-graph, no host round trip)."""
    f = features.astype(jnp.float32)
    w = jnp.ones(f.shape[:1], jnp.float32) if mask is None else mask.astype(jnp.float32)
    n = jnp.sum(w)
    batch_mean = jnp.sum(f * w[:, None], axis=0) / jnp.maximum(n, 1.0)
    shift = jnp.where(m.count == 0, batch_mean, m.shift)
    d = jnp.where(w[:, None] > 0, f - shift, 0.0)
    s, s_c = _kahan(m.sum, m.sum_c, jnp.sum(d, axis=0))
    o, o_c = _kahan(m.outer, m.outer_c,
                    jnp.matmul(d.T, d, precision=jax.lax.Precision.HIGHEST))
    return Moments(m.count + n.astype(jnp.int32), shift, s, s_c, o, o_c)


def finalize(m: Moments) -> tuple[np.ndarray, np.ndarray]:
    """`(mu [D], sigma [D, D])` in float64 on the host (unbiased covariance); needs 2 images."""
    n = int(m.count)
    if n < 2:
        raise UserError(f"FID statistics need at least 2 images; got {n}")
    s1 = np.asarray(m.sum, np.float64) - np.asarray(m.sum_c, np.float64)
    s2 = np.asarray(m.outer, np.float64) - np.asarray(m.outer_c, np.float64)
    mu = np.asarray(m.shift, np.float64) + s1 / n
    sigma = (s2 - np.outer(s1, s1) / n) / (n - 1)
    return mu, 0.5 * (sigma + sigma.T)


# ---------------------------------------------------------------------------------------------
# Images -> Inception -> moments

@functools.partial(jax.jit, static_argnames=("graphdef",), donate_argnums=(1,))
def inception_step(params, moments: Moments, x, mask, *, graphdef) -> Moments:
    """One batch: network inputs `x` [B, 299, 299, 3] (from `preprocess`) -> updated moments."""
    return update_moments(moments, apply(params, x, graphdef=graphdef), mask)


class InceptionStatistics:
    """Streaming FID statistics of images: `add` batches of pixels, then `result()`.

    `batch_size` images go through the network per step, sharded over `mesh` (default: the
    devices that split `batch_size` evenly, `sharding.batch_mesh`); shorter batches are padded
    and masked, so one compiled program serves any image count. `resize` picks the detector's
    preprocessing (`inception.preprocess`: "tf" = EDM/StyleGAN3, "pytorch-fid")."""

    def __init__(self, net: FIDNetwork, batch_size: int = 64, resize: str = "tf", mesh=None):
        from jaxdiff.sharding import batch_mesh, replicate

        self.net, self.batch_size, self.resize = net, int(batch_size), resize
        self.mesh = batch_mesh(self.batch_size) if mesh is None else mesh
        self.params = replicate(net.params, self.mesh)
        self.moments = replicate(init_moments(FEATURE_DIM), self.mesh)

    def add(self, images) -> None:
        """Fold `[n, H, W, C]` host pixels in [0, 255] (uint8, or float; C = 3 or 1), any n."""
        images = np.asarray(images)
        b = self.batch_size
        for start in range(0, len(images), b):
            chunk = images[start:start + b]
            mask = np.zeros((b,), np.float32)
            mask[:len(chunk)] = 1.0
            if len(chunk) < b:
                chunk = np.concatenate([chunk, np.zeros((b - len(chunk), *chunk.shape[1:]),
                                                        chunk.dtype)])
            self.add_batch(chunk, mask)

    def add_batch(self, x, mask=None) -> None:
        """Fold one batch of exactly `batch_size` images, `[B, H, W, C]` pixels in [0, 255]:
        a host array, or a jax.Array (e.g. samples made on device, see `inception.to_pixels`;
        it stays on device and is only resharded onto the mesh if placed otherwise). `mask`
        [B]: 1 for rows to count (default all)."""
        from jaxdiff.sharding import shard_batch

        if x.shape[0] != self.batch_size:
            raise ValueError(f"add_batch takes batches of {self.batch_size} rows, got "
                             f"{x.shape[0]}; use add() for other counts")
        if mask is None:
            mask = np.ones((self.batch_size,), np.float32)
        if not isinstance(mask, jax.Array):
            mask = np.asarray(mask, np.float32)
        # `put` (via shard_batch) handles global arrays of several processes and host arrays
        # alike: a global jax.Array already on the mesh's batch sharding is not moved.
        x, mask = shard_batch((x, mask), self.mesh)
        self.moments = inception_step(self.params, self.moments,
                                      preprocess(x, mode=self.resize), mask,
                                      graphdef=self.net.graphdef)

    @property
    def count(self) -> int:
        return int(self.moments.count)

    def result(self) -> tuple[np.ndarray, np.ndarray]:
        """`(mu [2048], sigma [2048, 2048])` float64 of all images added."""
        return finalize(self.moments)


def image_statistics(net: FIDNetwork, batches: Iterable, *, batch_size: int = 64,
                     resize: str = "tf", mesh=None) -> tuple[np.ndarray, np.ndarray, int]:
    """`(mu, sigma, count)` of images given as an iterable of `[n, H, W, C]` pixel arrays."""
    acc = InceptionStatistics(net, batch_size, resize, mesh)
    for batch in batches:
        acc.add(batch)
    mu, sigma = acc.result()
    return mu, sigma, acc.count


# ---------------------------------------------------------------------------------------------
# Reference statistics files

def load_reference(path, dim: int = FEATURE_DIM) -> tuple[np.ndarray, np.ndarray]:
    """`(mu, sigma)` float64 from an EDM-format `.npz` (`mu` [D], `sigma` [D, D]). Refuses a
    missing file (`MissingInputError`), missing keys, and a feature dimension other than `dim`
    (both named)."""
    p = Path(os.path.expanduser(os.fspath(path)))
    if not p.is_file():
        raise MissingInputError(
            f"FID reference statistics {p}: no such file. EDM's are at {EDM_REFS_URL} "
            f"(e.g. cifar10-32x32.npz, imagenet-64x64.npz); or compute them with `jaxdiff "
            f"fid-ref --dataset NAME --split train --out {p.name}`")
    try:
        with np.load(p, allow_pickle=False) as f:
            if "mu" not in f.files or "sigma" not in f.files:
                raise UserError(f"{p}: FID reference statistics need arrays 'mu' and 'sigma'; "
                                f"the file holds {sorted(f.files)}")
            mu, sigma = f["mu"], f["sigma"]
    except UserError:
        raise
    except (OSError, ValueError) as e:
        raise UserError(f"{p}: not a readable .npz of FID statistics ({e})") from None
    return check_statistics(mu, sigma, f"the reference statistics {p}", dim)


def save_reference(path, mu, sigma, **meta) -> str:
    """Write `(mu, sigma)` as EDM's `.npz` (float64), plus scalar `meta` (str or number) such as
    count / detector / resize / source. Atomic; returns the path."""
    from jaxdiff.files import atomic_savez

    mu, sigma = check_statistics(mu, sigma, "statistics to save")
    bad = [k for k in meta if k in ("mu", "sigma")]
    if bad:
        raise ValueError(f"meta keys {bad} would overwrite the statistics")
    os.makedirs(os.path.dirname(os.path.abspath(os.fspath(path))), exist_ok=True)
    return atomic_savez(path, mu=mu, sigma=sigma, **{k: np.asarray(v) for k, v in meta.items()})


def dataset_statistics(net: FIDNetwork, dataset: str, split: str = "train", *, data_dir=None,
                       batch_size: int = 64, resize: str = "tf", limit: int | None = None,
                       mesh=None) -> tuple[np.ndarray, np.ndarray, int]:
    """`(mu, sigma, count)` of a dataset split (`jaxdiff.data.load`: TFDS or the embedded digits;
    the decoded split is memory-mapped from jaxdiff's cache) streamed through the Inception.
    `limit`: the first `limit` images only (all by default, as EDM's `fid.py ref`)."""
    from jaxdiff.data import load

    ds = load(dataset, split, data_dir, mmap=True)
    n = len(ds.images) if limit is None else min(int(limit), len(ds.images))
    chunk = 16 * batch_size   # host rows read from the memory map at a time
    batches = (ds.images[s:min(s + chunk, n)] for s in range(0, n, chunk))
    return image_statistics(net, batches, batch_size=batch_size, resize=resize, mesh=mesh)


def describe_detector(resize: str) -> str:
    """The `detector` string `save_reference` records."""
    return f"FID Inception-v3 ({FID_WEIGHTS_NAME}), pool3, resize={resize}"
