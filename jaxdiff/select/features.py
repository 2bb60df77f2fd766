"""Per-sample last-layer gradients and diagonal Hessians of softmax cross-entropy, in closed form.

For a linear head `z = W x + b` (W: [C, D], b: [C]) on penultimate features x and the
cross-entropy loss `L = -log softmax(z)_y`, with `p = softmax(z)` and `r = p - onehot(y)`:

    dL/db_c        = r_c                 d2L/db_c^2        = p_c (1 - p_c)
    dL/dW_cd       = r_c x_d             d2L/dW_cd^2       = p_c (1 - p_c) x_d^2

(lcmat.md §3 Step 2; the Hessian diagonal is exact, as BackPACK's `BatchDiagHessian` computes it).
Both live in the spec's layout, **bias block first, then W row-major**:

    g = [g_b (C entries), vec(g_W) (entry C + c*D + d)]   in R^{C(D+1)}

i.e. `g = kron_layout(r, x)` and `h = kron_layout(a, x**2)` with `a = p (1 - p)`.

Every per-sample vector here is a Kronecker product `u ⊗ [1, v]`, so the selection methods never
materialise them: inner products factor as

    g_i . g_j = (r_i . r_j) (1 + x_i . x_j),

which costs O(C + D) per pair instead of O(C D) (10x fewer FLOPs for CIFAR-10's 10 x 513 head),
and the per-coordinate variance of h needs only [C, D] accumulators. The materialising functions
(`last_layer_grad`, `last_layer_diag_hessian`) exist for tests, small problems and users.

Scaling: the functions return gradients of the *per-sample* loss. The LCMat reference computes them
under a batch-mean loss (BackPACK scales every per-sample quantity by 1/B, B the size of the batch
the sample is in); `reference_batch_scale` reproduces that factor, including the quirk that the
last (short) batch of every class is scaled up (lcmat.md §3, "Scaling quirk").
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax

# Distances are computed through the norm expansion |a|^2 + |b|^2 - 2 a.b, which cancels
# catastrophically if the products are rounded to TF32/bf16 (the default for float32 matmuls on
# some accelerators). Selection matmuls therefore always run at full float32 precision.
HIGHEST = lax.Precision.HIGHEST


def _dot(a: jax.Array, b: jax.Array) -> jax.Array:
    """`a @ b.T` at full precision: [A, K] x [B, K] -> [A, B]."""
    return jnp.einsum("ak,bk->ab", a, b, precision=HIGHEST)


# ---------------------------------------------------------------------------------------------
# Factors: the per-sample quantities every closed form is built from
# ---------------------------------------------------------------------------------------------


def ce_residual(
    logits: jax.Array, labels: jax.Array, *, softmax_before_ce: bool = False
) -> jax.Array:
    """dL/dz of cross-entropy for every sample: `[N, C]` float32.

    Args:
      logits: `[N, C]` float, the head's outputs z.
      labels: `[N]` int, in [0, C).
      softmax_before_ce: if True, differentiate DeepCore's old, buggy loss `CE(softmax(z))`
        (softmax applied to the logits before a cross-entropy that applies it again; removed in
        DeepCore commit ca3fb21, lcmat.md §6). With q = softmax(z), u = softmax(q) - onehot(y),
        its logit gradient is `J_q^T u = q * (u - q.u)`. Off by default: jaxdiff's baselines use
        the correct cross-entropy.

    Returns:
      `p - onehot(y)` (or the buggy variant), float32.
    """
    logits = jnp.asarray(logits, jnp.float32)
    onehot = jax.nn.one_hot(labels, logits.shape[-1], dtype=logits.dtype)
    p = jax.nn.softmax(logits, axis=-1)
    if not softmax_before_ce:
        return p - onehot
    u = jax.nn.softmax(p, axis=-1) - onehot
    return p * (u - jnp.sum(p * u, axis=-1, keepdims=True))


def ce_curvature(logits: jax.Array) -> jax.Array:
    """Diagonal of d2L/dz2 for cross-entropy: `a = p (1 - p)`, `[N, C]` float32 (label-free)."""
    p = jax.nn.softmax(jnp.asarray(logits, jnp.float32), axis=-1)
    return p * (1.0 - p)


def kron_layout(u: jax.Array, v: jax.Array) -> jax.Array:
    """Materialise `[u_c] ++ [u_c v_d]` (bias block first, then row-major): `[N, C(D+1)]`.

    Args:
      u: `[N, C]` per-class factor (r for gradients, a for Hessian diagonals).
      v: `[N, D]` per-feature factor (x for gradients, x**2 for Hessian diagonals).
    """
    n, c = u.shape
    outer = u[:, :, None] * v[:, None, :]
    return jnp.concatenate([u, outer.reshape(n, c * v.shape[-1])], axis=-1)


@functools.partial(jax.jit, static_argnames=("softmax_before_ce",))
def last_layer_grad(
    embeddings: jax.Array,
    logits: jax.Array,
    labels: jax.Array,
    *,
    scale: jax.Array | None = None,
    softmax_before_ce: bool = False,
) -> jax.Array:
    """Per-sample gradient of CE w.r.t. (b, W) of the last linear layer: `[N, C(D+1)]`.

    Args:
      embeddings: `[N, D]` penultimate features x (the head's input).
      logits: `[N, C]` head outputs z = W x + b.
      labels: `[N]` int labels.
      scale: optional `[N]` per-sample factor (e.g. `reference_batch_scale`).
      softmax_before_ce: see `ce_residual`.

    Returns:
      `g = [r, vec(r ⊗ x)] * scale`, the spec's layout (lcmat.md §3 Step 2).
    """
    r = ce_residual(logits, labels, softmax_before_ce=softmax_before_ce)
    if scale is not None:
        r = r * scale[:, None]
    return kron_layout(r, jnp.asarray(embeddings, jnp.float32))


@jax.jit
def last_layer_diag_hessian(
    embeddings: jax.Array, logits: jax.Array, *, scale: jax.Array | None = None
) -> jax.Array:
    """Exact per-sample diagonal of the CE Hessian w.r.t. (b, W): `[N, C(D+1)]`.

    `h = [a, vec(a ⊗ x**2)] * scale` with `a = p (1 - p)` (independent of the label).
    """
    a = ce_curvature(logits)
    if scale is not None:
        a = a * scale[:, None]
    x = jnp.asarray(embeddings, jnp.float32)
    return kron_layout(a, x * x)


# ---------------------------------------------------------------------------------------------
# Factored inner products and distances (never materialise g)
# ---------------------------------------------------------------------------------------------


def kron_gram(u_a: jax.Array, v_a: jax.Array, u_b: jax.Array, v_b: jax.Array) -> jax.Array:
    """`G[i, j] = kron_layout(u_a, v_a)[i] . kron_layout(u_b, v_b)[j]`: `[A, B]`.

    Equals `(u_a u_b^T) * (1 + v_a v_b^T)`: two small matmuls instead of one over C(D+1) dims.
    """
    return _dot(u_a, u_b) * (1.0 + _dot(v_a, v_b))


def kron_sq_norms(u: jax.Array, v: jax.Array) -> jax.Array:
    """`|kron_layout(u, v)[i]|^2 = |u_i|^2 (1 + |v_i|^2)`: `[N]`."""
    return jnp.sum(u * u, axis=-1) * (1.0 + jnp.sum(v * v, axis=-1))


@jax.jit
def pairwise_kron_distances(
    u_a: jax.Array,
    v_a: jax.Array,
    sq_a: jax.Array,
    u_b: jax.Array,
    v_b: jax.Array,
    sq_b: jax.Array,
) -> jax.Array:
    """Euclidean distances between Kronecker-layout vectors: `[A, B]`.

    `sqrt(max(|a|^2 + |b|^2 - 2 a.b, 0))`, the reference's norm expansion (lcmat.md §3 Step 4:
    negative round-off is clipped to 0 where the reference replaces the NaN by 0).
    `sq_*` are `kron_sq_norms` of the same rows (passed in so they are computed once).
    """
    d2 = sq_a[:, None] + sq_b[None, :] - 2.0 * kron_gram(u_a, v_a, u_b, v_b)
    return jnp.sqrt(jnp.maximum(d2, 0.0))


def pairwise_l1_distances(h_a: jax.Array, h_b: jax.Array, *, unroll: int = 10) -> jax.Array:
    """`|h_a[i] - h_b[j]|_1` for all pairs: `[A, B]`, from `h_a: [A, K]`, `h_b: [B, K]`.

    Accumulates one coordinate at a time into the `[A, B]` result (a `fori_loop` over K), so
    every step is a vectorised pass over a cache-sized block. XLA:CPU runs this about 4x faster
    than the fused `sum(|a[:, None, :] - b[None]|, -1)`, whose reduction runs along the short
    minor axis; neither ever holds the `[A, B, K]` differences (10 GB for a 5,000-sample class
    in the reference's broadcast).
    """
    h_bt = h_b.T  # [K, B]: coordinate k of every b is one contiguous row

    def add(k, acc):
        return acc + jnp.abs(h_a[:, k][:, None] - h_bt[k][None, :])

    init = jnp.zeros((h_a.shape[0], h_b.shape[0]), jnp.result_type(h_a, h_b))
    return lax.fori_loop(0, h_a.shape[-1], add, init, unroll=max(1, min(unroll, h_a.shape[-1])))


# ---------------------------------------------------------------------------------------------
# Diagonal-Hessian coordinates with the largest variance (LCMat's h^K)
# ---------------------------------------------------------------------------------------------


def _weighted_mean(values: jax.Array, valid: jax.Array, count: jax.Array) -> jax.Array:
    return jnp.sum(jnp.where(valid[:, None], values, 0.0), axis=0) / count


@jax.jit
def diag_hessian_variance(
    curvature: jax.Array, embeddings: jax.Array, valid: jax.Array | None = None
) -> jax.Array:
    """Population variance (ddof 0) over samples of every coordinate of h: `[C(D+1)]`.

    Args:
      curvature: `[N, C]` the (already scaled) `a = p (1 - p)` factor of h.
      embeddings: `[N, D]` features x (h's W block is `a_c x_d^2`).
      valid: optional `[N]` bool; only valid rows count (padded class tables).

    Two passes, like numpy's `var`: the mean first, then the mean squared deviation, so the
    ranking matches `np.var(h, axis=0)` rather than suffering the cancellation of E[h^2]-E[h]^2.
    The deviations are formed one class at a time (`[N, D]`), never as the full `[N, C, D]` h.
    """
    n = curvature.shape[0]
    valid = jnp.ones((n,), bool) if valid is None else valid
    count = jnp.maximum(jnp.sum(valid), 1).astype(jnp.float32)
    a = curvature
    x2 = embeddings * embeddings
    mean_b = _weighted_mean(a, valid, count)  # [C]
    mean_w = _dot(jnp.where(valid[:, None], a, 0.0).T, x2.T) / count  # [C, D]
    var_b = _weighted_mean(jnp.square(a - mean_b), valid, count)
    x2 = jnp.where(valid[:, None], x2, 0.0)

    def class_var(args):  # one class at a time: [N, D] temporaries, never [N, C, D]
        a_c, m_c = args
        dev = a_c[:, None] * x2 - m_c
        return jnp.sum(jnp.where(valid[:, None], jnp.square(dev), 0.0), axis=0)

    var_w = lax.map(class_var, (a.T, mean_w)) / count
    return jnp.concatenate([var_b, var_w.reshape(-1)])


@functools.partial(jax.jit, static_argnames=("k",))
def top_variance_coordinates(variance: jax.Array, k: int) -> jax.Array:
    """Indices of the k largest variances, descending (ties: lower index first): `[k]` int32.

    The reference takes `np.argsort(var)[::-1][:K]`; the two orders differ only among exactly
    tied variances straddling position k.
    """
    return lax.top_k(variance, k)[1].astype(jnp.int32)


@jax.jit
def diag_hessian_coordinates(
    curvature: jax.Array, embeddings: jax.Array, coords: jax.Array
) -> jax.Array:
    """Selected coordinates of h for every sample, `h[:, coords]` without materialising h: `[N, K]`.

    `coords` index the spec's layout: k < C is bias entry k (value a_k); otherwise
    k = C + c*D + d is W entry (c, d) (value a_c x_d^2).
    """
    c_num = curvature.shape[-1]
    d_num = embeddings.shape[-1]
    is_bias = coords < c_num
    w = jnp.maximum(coords - c_num, 0)
    cls = jnp.where(is_bias, coords, w // d_num)
    feat = w % d_num
    x2 = jnp.take(embeddings, feat, axis=-1) ** 2
    return jnp.take(curvature, cls, axis=-1) * jnp.where(is_bias, 1.0, x2)


# ---------------------------------------------------------------------------------------------
# The reference's per-batch scaling
# ---------------------------------------------------------------------------------------------


@functools.partial(jax.jit, static_argnames=("length", "batch_size"))
def reference_batch_scale(count: jax.Array | int, length: int, batch_size: int) -> jax.Array:
    """1/B per sample for a class iterated in order with batches of `batch_size`: `[length]`.

    The reference takes per-sample gradients and Hessians of a batch-*mean* loss, so sample i of a
    class with `count` samples is scaled by 1 / (size of its batch): `1/batch_size` except in the
    last, short batch (CIFAR-10: 5000 = 39*128 + 8, so the last 8 samples get 16x the scale of the
    rest). Positions `>= count` (padding) get 0.
    """
    pos = jnp.arange(length)
    count = jnp.asarray(count, jnp.int32)
    start = (pos // batch_size) * batch_size
    size = jnp.minimum(batch_size, count - start)
    return jnp.where(pos < count, 1.0 / jnp.maximum(size, 1).astype(jnp.float32), 0.0)
