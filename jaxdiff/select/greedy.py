"""Greedy subset selection on one candidate pool (one class), as fixed-shape jitted loops.

* Facility location (lcmat.md §3 Steps 4-5; CRAIG): maximise F(S) = Σ_i max(0, max_{j∈S} s_ji)
  with similarities s = C - d (a constant minus a dissimilarity d, e.g. a distance):
  - `naive_greedy`: every step evaluates every candidate's gain (the reference's NaiveGreedy);
  - `lazy_greedy`: Minoux's lazy evaluations with stale upper bounds; it picks exactly what
    `naive_greedy` picks (same first-index tie-breaking) and never stores the n x n matrix;
  - `distance_matrix`: the n x n matrix built in row blocks from a row function.
* `k_center_greedy` (farthest-point traversal), `herding` (feature-mean matching),
* `omp` (GradMatch's orthogonal matching pursuit) with `nnls_gram`, an active-set (Lawson-Hanson)
  non-negative least squares on a Gram matrix.

Conventions. A pool has a static size n (padded) and a `valid` mask whose padded rows neither count
towards objectives nor get picked. Budgets are traced int32 scalars; outputs have the static length
`max_budget`, entries past the budget are -1 (indices) and 0 (gains, weights). Loops are
`lax.fori_loop`/`lax.while_loop` with masks, so nothing syncs with the host. Ties go to the lowest
index (`jnp.argmax`), as in the references.

Facility location works in *distance form*. With s = C - d, the reference's state
cur_i = max(0, max_{j∈S} s_ji) is C - m_i with m_i = min(C, min_{j∈S} d_ji), and its gain
Σ_i max(0, s_ji - cur_i) equals Σ_i max(0, m_i - d_ji): the same numbers in exact arithmetic, but
float32 never rounds C - d at the scale of C (LCMat's C = 10 against distances ~0.05 would lose
four digits and turn gain differences into round-off). A plain similarity matrix S is the case
C = 0, d = -S.

Dissimilarities are given as `rows(j) -> [b, n]` for candidate indices `j: [b]`: entry `[t, i]`
is d between candidate j_t and point i (row j_t of the matrix D[j, i]; the selection
dissimilarities are symmetric).
"""

from __future__ import annotations

import functools
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
from jax import lax
from jax.scipy.linalg import solve_triangular

from jaxdiff.select.features import kron_gram

Rows = Callable[[jax.Array], jax.Array]  # rows(j: [b] int32) -> [b, n] float32 dissimilarities

_NEG_INF = -jnp.inf


def _valid(valid: jax.Array | None, n: int) -> jax.Array:
    return jnp.ones((n,), bool) if valid is None else jnp.asarray(valid, bool)


def _weights(valid: jax.Array) -> jax.Array:
    """Masks on n x n operands are applied arithmetically (x * w, x + log w): XLA:CPU fuses a
    broadcast float vector into the reduction, but materialises a `where` with a broadcast
    predicate as a second n x n array (+100 MB at n = 5000)."""
    return valid.astype(jnp.float32)


def _steps(budget: jax.Array, max_budget: int) -> jax.Array:
    """Trip count of a greedy loop. A traced bound makes `fori_loop` a `while_loop` that runs
    exactly `budget` steps; masking each step with `lax.cond` instead would make XLA copy the
    loop's large operands (the n x n matrix) into the conditional."""
    return jnp.clip(budget, 0, max_budget)


# ---------------------------------------------------------------------------------------------
# Facility location
# ---------------------------------------------------------------------------------------------


class GreedyResult(NamedTuple):
    """Output of the facility-location greedies.

    indices: `[max_budget]` int32 picks in pick order, -1 past the budget.
    gains: `[max_budget]` float32 marginal gain F(S + j) - F(S) of each pick, 0 past the budget.
    nearest: `[n]` float32 `m_i = min(C, min_{j in S} d_ji)`; F(S) = Σ_{valid i} (C - m_i).
    evaluations: int32 scalar, number of single-candidate gains computed (naive: budget * n).
    max_distance: float32 scalar, the largest d between valid points (all pairs are seen by both
      greedies). If it exceeds C, some similarities are negative and floored by the objective, so
      the picks depend on C (lcmat.md §3 "Equivalent view"); otherwise they do not.
    """

    indices: jax.Array
    gains: jax.Array
    nearest: jax.Array
    evaluations: jax.Array
    max_distance: jax.Array


def facility_location_gains(
    dist_rows: jax.Array, nearest: jax.Array, valid: jax.Array
) -> jax.Array:
    """Marginal gains `Σ_i valid_i max(0, m_i - d_ji)` of candidates j: `[b]`.

    Args:
      dist_rows: `[b, n]` dissimilarities of b candidates to the n points.
      nearest: `[n]` current `m_i = min(C, min_{j in S} d_ji)` (all C for S empty).
      valid: `[n]` bool, points that count.
    """
    return jnp.sum(jnp.maximum(nearest - dist_rows, 0.0) * _weights(valid), axis=-1)


def facility_location_costs(
    dist_rows: jax.Array, nearest: jax.Array, valid: jax.Array
) -> jax.Array:
    """Costs `Σ_i valid_i min(m_i, d_ji)` after adding candidate j: `[b]`.

    gain_j = Σ_i m_i - cost_j, so both rank candidates alike. The greedies rank the *first* step
    by cost: there every m_i = C and every gain is ≈ nC, so float32 gains would bury the
    differences Σ_i d_ji that decide the first pick (the medoid) under the rounding of nC.
    """
    return jnp.sum(jnp.minimum(nearest, dist_rows) * _weights(valid), axis=-1)


def _blocks(n: int, block_size: int) -> jax.Array:
    """`[num_blocks, block_size]` row indices covering 0..n-1 (the tail repeats row n-1)."""
    block_size = max(1, min(block_size, n))
    num = -(-n // block_size)
    return jnp.minimum(jnp.arange(num * block_size, dtype=jnp.int32), n - 1).reshape(
        num, block_size
    )


def distance_matrix(rows: Rows, n: int, *, block_size: int = 256) -> jax.Array:
    """The full `[n, n]` matrix `D[j, i] = rows([j])[0, i]`, built `block_size` rows at a time.

    Blocks are written in place into the output (the last block is shifted back to end at row n,
    recomputing a few rows, so no block runs past the end and nothing is sliced or copied). Peak
    extra memory is one block's intermediates (e.g. LCMat's `[block, n, K]` L1 terms are reduced
    inside a fused loop), so a 5,000-sample class needs the 100 MB matrix and little more.
    """
    block_size = max(1, min(block_size, n))
    num = -(-n // block_size)
    first = rows(jnp.arange(block_size, dtype=jnp.int32))
    out = jnp.zeros((n, first.shape[-1]), first.dtype)

    def body(b, out):
        start = jnp.minimum(b * block_size, n - block_size)
        block = rows(start + jnp.arange(block_size, dtype=jnp.int32))
        return lax.dynamic_update_slice(out, block, (start, 0))

    return lax.fori_loop(1, num, body, lax.dynamic_update_slice(out, first, (0, 0)))


def _max_distance(dist: jax.Array, valid: jax.Array) -> jax.Array:
    """Row maxima over valid columns: `[b]`."""
    return jnp.max(dist + jnp.where(valid, 0.0, _NEG_INF), axis=-1)


@functools.partial(jax.jit, static_argnames=("max_budget",))
def naive_greedy(
    dist: jax.Array,
    budget: jax.Array | int,
    *,
    constant: jax.Array | float,
    max_budget: int,
    valid: jax.Array | None = None,
) -> GreedyResult:
    """Facility location on s = constant - dist by naive greedy (argmax of every gain each step).

    Args:
      dist: `[n, n]` float32, `D[j, i]` = dissimilarity of candidate j to point i.
      budget: int32 scalar (traced), number of picks, <= number of valid points.
      constant: C (traced); pass 0 with dist = -S to run on a similarity matrix S.
      max_budget: static length of the outputs (>= budget).
      valid: optional `[n]` bool mask of real points (padded pools).

    Equals the reference loop (lcmat.md §3 Step 5): coverage starts at 0, gains are
    Σ_i max(0, s_ji - cur_i), picked candidates are excluded, the first index wins ties (the
    first step is ranked by `facility_location_costs`, the same order computed without the nC
    offset).
    """
    n = dist.shape[0]
    valid = _valid(valid, n)
    budget = jnp.asarray(budget, jnp.int32)
    constant = jnp.asarray(constant, jnp.float32)
    max_d = jnp.max(jnp.where(valid, _max_distance(dist, valid), _NEG_INF))
    start = jnp.full((n,), constant, jnp.float32)
    first = jnp.argmin(jnp.where(valid, facility_location_costs(dist, start, valid), jnp.inf))

    def pick(t, state):
        indices, gains, near, taken = state
        g = facility_location_gains(dist, near, valid)
        g = jnp.where(taken | ~valid, _NEG_INF, g)
        j = jnp.where(t == 0, first, jnp.argmax(g)).astype(jnp.int32)
        return (
            indices.at[t].set(j),
            gains.at[t].set(g[j]),
            jnp.minimum(near, dist[j]),
            taken.at[j].set(True),
        )

    init = (
        jnp.full((max_budget,), -1, jnp.int32),
        jnp.zeros((max_budget,), jnp.float32),
        start,
        jnp.zeros((n,), bool),
    )
    indices, gains, near, _ = lax.fori_loop(0, _steps(budget, max_budget), pick, init)
    evals = jnp.minimum(budget, max_budget) * jnp.sum(valid).astype(jnp.int32)
    return GreedyResult(indices, gains, near, evals, max_d)


def lazy_greedy(
    rows: Rows,
    n: int,
    budget: jax.Array | int,
    *,
    constant: jax.Array | float,
    max_budget: int,
    valid: jax.Array | None = None,
    block_size: int = 256,
    refresh_block: int = 16,
) -> GreedyResult:
    """Facility location on s = constant - d by lazy greedy (Minoux 1978), never storing n x n.

    Gains only shrink as S grows (submodularity), so stale gains are upper bounds. Each step
    re-evaluates the candidate with the largest bound until the largest bound is a fresh gain;
    that candidate is then the first-index argmax of the true gains, i.e. exactly the pick of
    `naive_greedy` (in exact arithmetic; in float32 a row computed alone and the same row computed
    in a block may differ in the last bit, so gains that tie to within round-off may be resolved
    differently).

    Args:
      rows: `rows(j: [b]) -> [b, n]` dissimilarities of candidates j to all points.
      n: pool size (static). Other arguments as in `naive_greedy`.
      block_size: rows per block for the one full pass that computes the first gains.
      refresh_block: stale candidates re-evaluated together (static; 1 is textbook lazy greedy).

    Memory: O(block_size * n). Work: one full pass plus the re-evaluated rows (`evaluations`).
    Versus `naive_greedy` on a stored matrix: naive needs the n x n matrix but each of its
    evaluations is a cheap pass over a stored row, while each lazy evaluation recomputes a row
    from features; lazy wins when the matrix does not fit or rows are cheap.
    """
    valid = _valid(valid, n)
    refresh_block = max(1, min(refresh_block, n))
    budget = jnp.asarray(budget, jnp.int32)
    constant = jnp.asarray(constant, jnp.float32)
    start = jnp.full((n,), constant, jnp.float32)

    def first_pass(j):
        d = rows(j)
        return (facility_location_gains(d, start, valid),
                facility_location_costs(d, start, valid), _max_distance(d, valid))

    g0, c0, m0 = lax.map(first_pass, _blocks(n, block_size))
    bounds = jnp.where(valid, g0.reshape(-1)[:n], _NEG_INF)
    first = jnp.argmin(jnp.where(valid, c0.reshape(-1)[:n], jnp.inf))
    max_d = jnp.max(jnp.where(valid, m0.reshape(-1)[:n], _NEG_INF))

    def row(j):
        return rows(j[None])[0]

    def pick(t, state):
        indices, gains, near, bounds, evals = state
        fresh = jnp.where(t == 0, valid, jnp.zeros((n,), bool))

        def stale_top(s):
            b, f, _ = s
            j = jnp.argmax(b)
            return ~f[j] & jnp.isfinite(b[j])

        def refresh(s):
            # Re-evaluate the `refresh_block` stale candidates with the largest bounds at once:
            # a block of rows is a matrix product, far cheaper per row than one matrix-vector
            # product, and the acceptance test below is unchanged (the top must be fresh).
            b, f, e = s
            top, js = lax.top_k(jnp.where(f, _NEG_INF, b), refresh_block)
            live = jnp.isfinite(top)
            g = facility_location_gains(rows(js), near, valid)
            js = jnp.where(live, js, n)  # out of bounds: dropped by the scatters
            return (b.at[js].set(g, mode="drop"), f.at[js].set(True, mode="drop"),
                    e + jnp.sum(live).astype(jnp.int32))

        bounds, _, evals = lax.while_loop(stale_top, refresh, (bounds, fresh, evals))
        j = jnp.where(t == 0, first, jnp.argmax(bounds)).astype(jnp.int32)
        return (
            indices.at[t].set(j),
            gains.at[t].set(bounds[j]),
            jnp.minimum(near, row(j)),
            bounds.at[j].set(_NEG_INF),
            evals,
        )

    init = (
        jnp.full((max_budget,), -1, jnp.int32),
        jnp.zeros((max_budget,), jnp.float32),
        start,
        bounds,
        jnp.sum(valid).astype(jnp.int32),
    )
    indices, gains, near, _, evals = lax.fori_loop(0, _steps(budget, max_budget), pick, init)
    return GreedyResult(indices, gains, near, evals, max_d)


def assign_to_selected(
    rows: Rows, indices: jax.Array, valid: jax.Array | None = None
) -> tuple[jax.Array, jax.Array]:
    """Assign every point to its nearest pick; count the points per pick (CRAIG's weights).

    Args:
      rows: dissimilarity row function of the pool.
      indices: `[k]` picks, -1 for unused slots.
      valid: optional `[n]` mask; invalid points are assigned nowhere (-1) and counted nowhere.

    Returns:
      `(assignment [n] int32` slot in `indices` (-1 for invalid points),
      `sizes [k] float32` number of valid points assigned to each slot; they sum to the number of
      valid points). Ties go to the earliest pick.
    """
    used = indices >= 0
    d = rows(jnp.maximum(indices, 0))  # [k, n]
    n = d.shape[-1]
    valid = _valid(valid, n)
    d = jnp.where(used[:, None], d, jnp.inf)
    slot = jnp.argmin(d, axis=0).astype(jnp.int32)
    slot = jnp.where(valid, slot, -1)
    sizes = jnp.sum(
        (slot[None, :] == jnp.arange(indices.shape[0])[:, None]) & valid[None, :], axis=1
    )
    return slot, sizes.astype(jnp.float32)


# ---------------------------------------------------------------------------------------------
# k-center greedy and herding
# ---------------------------------------------------------------------------------------------


def _row_distances(x: jax.Array, y: jax.Array) -> jax.Array:
    """Euclidean distances of the rows of x `[n, D]` to one point y `[D]` (direct, no expansion)."""
    d = x - y
    return jnp.sqrt(jnp.sum(d * d, axis=-1))


@functools.partial(jax.jit, static_argnames=("max_budget",))
def k_center_greedy(
    x: jax.Array,
    first: jax.Array | int,
    budget: jax.Array | int,
    *,
    max_budget: int,
    valid: jax.Array | None = None,
) -> jax.Array:
    """Farthest-point traversal (Sener & Savarese 2018; DeepCore `k_center_greedy`): `[max_budget]`.

    Pick `first`, then repeatedly the valid, unpicked point farthest (Euclidean) from its nearest
    pick. The first pick counts towards the budget, as in DeepCore.

    Args:
      x: `[n, D]` features (embeddings).
      first: int32 scalar, the first pick (DeepCore draws it uniformly at random).
      budget: traced int32 scalar; `max_budget` static.
    """
    n = x.shape[0]
    valid = _valid(valid, n)
    budget = jnp.asarray(budget, jnp.int32)
    first = jnp.asarray(first, jnp.int32)
    x = jnp.asarray(x, jnp.float32)

    def pick(t, state):
        indices, mins, taken = state
        j = jnp.argmax(jnp.where(taken | ~valid, _NEG_INF, mins)).astype(jnp.int32)
        j = jnp.where(t == 0, first, j)
        return (
            indices.at[t].set(j),
            jnp.minimum(mins, _row_distances(x, x[j])),
            taken.at[j].set(True),
        )

    init = (
        jnp.full((max_budget,), -1, jnp.int32),
        jnp.full((n,), jnp.inf, jnp.float32),
        jnp.zeros((n,), bool),
    )
    return lax.fori_loop(0, _steps(budget, max_budget), pick, init)[0]


@functools.partial(jax.jit, static_argnames=("max_budget",))
def herding(
    x: jax.Array,
    budget: jax.Array | int,
    *,
    max_budget: int,
    valid: jax.Array | None = None,
) -> jax.Array:
    """Herding by greedy feature-mean matching (Welling 2009; iCaRL's rule): `[max_budget]`.

    Step t (0-based) picks the valid, unpicked j minimising `|(t+1) mu - Σ_{s in S} x_s - x_j|`,
    i.e. the point that brings the mean of the picks closest to the pool mean mu.

    Note: DeepCore's `herding` takes the *argmax* of this distance (the point that moves the mean
    farthest away); jaxdiff implements the method as published.
    """
    n = x.shape[0]
    valid = _valid(valid, n)
    budget = jnp.asarray(budget, jnp.int32)
    x = jnp.asarray(x, jnp.float32)
    count = jnp.maximum(jnp.sum(valid), 1).astype(jnp.float32)
    mu = jnp.sum(jnp.where(valid[:, None], x, 0.0), axis=0) / count

    def pick(t, state):
        indices, total, taken = state
        target = (t + 1).astype(jnp.float32) * mu - total
        dist = _row_distances(x, target)
        j = jnp.argmin(jnp.where(taken | ~valid, jnp.inf, dist)).astype(jnp.int32)
        return indices.at[t].set(j), total + x[j], taken.at[j].set(True)

    init = (
        jnp.full((max_budget,), -1, jnp.int32),
        jnp.zeros_like(mu),
        jnp.zeros((n,), bool),
    )
    return lax.fori_loop(0, _steps(budget, max_budget), pick, init)[0]


# ---------------------------------------------------------------------------------------------
# Orthogonal matching pursuit (GradMatch) and non-negative least squares
# ---------------------------------------------------------------------------------------------


@functools.partial(jax.jit, static_argnames=("max_iter",))
def nnls_gram(
    q: jax.Array,
    c: jax.Array,
    mask: jax.Array | None = None,
    *,
    max_iter: int | None = None,
    tol: float | None = None,
) -> jax.Array:
    """argmin_{w >= 0} ½ wᵀ q w - cᵀ w over the masked coordinates (w = 0 elsewhere): `[k]`.

    With `q = AᵀA + lam I` and `c = Aᵀb` this is `min_{w>=0} |A w - b|^2 + lam |w|^2`. Solved by
    Lawson-Hanson's active-set method on the Gram matrix with fixed-shape masks: exact (up to the
    linear solves' round-off) after finitely many steps. (`optax.nnls` is a projected-gradient
    method whose accuracy depends on its iteration count and on the conditioning of the Gram
    matrix, which is poor for the correlated gradients of one class; it also needs A, not AᵀA.)

    Args:
      q: `[k, k]` symmetric positive definite on the masked block.
      c: `[k]`.
      mask: optional `[k]` bool, coordinates that may be non-zero.
      max_iter: outer iterations (default 3k); tol: KKT tolerance on the gradient c - q w
        (default 1e-5 * max|c|).
    """
    k = c.shape[0]
    mask = jnp.ones((k,), bool) if mask is None else mask
    max_iter = 3 * k if max_iter is None else max_iter
    c = jnp.where(mask, c, 0.0)
    tol = 1e-5 * jnp.max(jnp.abs(c)) if tol is None else tol
    eye = jnp.eye(k, dtype=q.dtype)

    def solve(p):
        qm = jnp.where(p[:, None] & p[None, :], q, eye)
        return jnp.where(p, jnp.linalg.solve(qm, jnp.where(p, c, 0.0)), 0.0)

    def grad(w):
        return c - jnp.dot(q, w, precision=lax.Precision.HIGHEST)

    def outer_cond(s):
        w, p, it = s
        return (it < max_iter) & jnp.any(mask & ~p & (grad(w) > tol))

    def outer_body(s):
        w, p, it = s
        j = jnp.argmax(jnp.where(mask & ~p, grad(w), _NEG_INF))
        p = p.at[j].set(True)

        def inner_cond(t):
            _, p, z, it2 = t
            return jnp.any(p & (z <= 0.0)) & (it2 < k)

        def inner_body(t):
            w, p, z, it2 = t
            neg = p & (z <= 0.0)
            den = w - z
            step = jnp.where(neg & (den > 0), w / jnp.where(den > 0, den, 1.0), jnp.inf)
            alpha = jnp.minimum(jnp.min(step), 1.0)
            w = w + alpha * (z - w)
            # The blocking coordinate lands on 0 (up to round-off); drop it and any non-positive.
            p = p & (w > 0.0) & ~(neg & (step <= alpha))
            w = jnp.where(p, w, 0.0)
            return w, p, solve(p), it2 + 1

        _, p, z, _ = lax.while_loop(inner_cond, inner_body, (w, p, solve(p), 0))
        # (Clipping only matters if the inner loop hit its iteration bound: stay feasible.)
        return jnp.where(p, jnp.maximum(z, 0.0), 0.0), p, it + 1

    w0 = jnp.zeros((k,), q.dtype)
    w, _, _ = lax.while_loop(outer_cond, outer_body, (w0, jnp.zeros((k,), bool), 0))
    return w


class OMPResult(NamedTuple):
    """indices: `[max_budget]` int32 picks in order (-1 past the budget).
    weights: `[max_budget]` float32 non-negative weights w with Σ_s w_s a_s ≈ Σ_i t_i a_i
      (NNLS on the support, possibly 0 for some picks; 0 past the budget).
    relative_residual: float32 scalar `|Σ_i t_i a_i - Σ_s w_s a_s| / |Σ_i t_i a_i|`.
    """

    indices: jax.Array
    weights: jax.Array
    relative_residual: jax.Array


@functools.partial(jax.jit, static_argnames=("max_budget",))
def omp(
    u: jax.Array,
    v: jax.Array,
    budget: jax.Array | int,
    *,
    max_budget: int,
    target_weights: jax.Array | None = None,
    valid: jax.Array | None = None,
    lam: float | jax.Array = 1.0,
) -> OMPResult:
    """Non-negative orthogonal matching pursuit over Kronecker atoms a_i = kron_layout(u_i, v_i).

    GradMatch (Killamsetty et al. 2021, DeepCore `orthogonal_matching_pursuit`): approximate the
    target b = Σ_i t_i a_i (default t = 1/n over valid i: the pool's mean gradient) by few atoms.
    Each step picks the unpicked valid atom with the largest (signed) correlation a_j . resid, then
    refits ridge weights on the support, `(G_SS + lam I) w = A_S^T b` (incremental Cholesky, O(k^2)
    per step). The final weights solve `min_{w >= 0} |A_S w - b|^2 + lam |w|^2` (`nnls_gram`).

    Everything runs on inner products `a_i . a_j = (u_i . u_j)(1 + v_i . v_j)`, so per-sample
    gradients (u = r, v = x) are never materialised. A dense dictionary is the case v: `[n, 0]`.

    Differences from DeepCore: the first step is also ridge-regularised (DeepCore's is not), and
    the final step solves the regularised NNLS above rather than DeepCore's NNLS on the normal
    equations `min_{w>=0} |(G_SS + lam I) w - A_S^T b|`.

    Args:
      u: `[n, P]`, v: `[n, Q]` atom factors.
      budget: traced int32 scalar; `max_budget` static.
      target_weights: optional `[n]` t.
      valid: optional `[n]` mask of real atoms (padding is never picked nor part of b).
      lam: ridge coefficient (traced).
    """
    n = u.shape[0]
    valid = _valid(valid, n)
    budget = jnp.asarray(budget, jnp.int32)
    u = jnp.asarray(u, jnp.float32)
    v = jnp.asarray(v, jnp.float32)
    lam = jnp.asarray(lam, jnp.float32)
    if target_weights is None:
        target_weights = valid / jnp.maximum(jnp.sum(valid), 1).astype(jnp.float32)
    t = jnp.where(valid, target_weights, 0.0)

    # b = Σ_i t_i u_i ⊗ [1, v_i] = U^T diag(t) [1, V]; c_j = a_j . b = u_j^T B [1, v_j].
    v1 = jnp.concatenate([jnp.ones((n, 1), jnp.float32), v], axis=-1)
    hp = lax.Precision.HIGHEST
    big_b = jnp.einsum("np,n,nq->pq", u, t, v1, precision=hp)
    c = jnp.einsum("np,pq,nq->n", u, big_b, v1, precision=hp)
    b_sq = jnp.sum(big_b * big_b)

    k = max_budget
    eye = jnp.eye(k, dtype=jnp.float32)

    def pick(step, state):
        indices, gcols, chol, w = state
        proj = c - jnp.dot(gcols, w, precision=hp)
        taken = jnp.zeros((n,), bool).at[jnp.maximum(indices, 0)].max(indices >= 0)
        j = jnp.argmax(jnp.where(taken | ~valid, _NEG_INF, proj)).astype(jnp.int32)
        col = kron_gram(u, v, u[j][None], v[j][None])[:, 0]  # a_i . a_j for all i
        indices = indices.at[step].set(j)
        gcols = gcols.at[:, step].set(col)
        # Incremental Cholesky of G_SS + lam I: the new row is L^{-1} m and a new diagonal.
        m = jnp.where(jnp.arange(k) < step, col[jnp.maximum(indices, 0)], 0.0)
        ell = solve_triangular(chol, m, lower=True)
        diag = jnp.sqrt(jnp.maximum(col[j] + lam - jnp.sum(ell * ell), 1e-30))
        chol = chol.at[step].set(ell.at[step].set(diag))
        rhs = jnp.where(jnp.arange(k) <= step, c[jnp.maximum(indices, 0)], 0.0)
        w = solve_triangular(chol.T, solve_triangular(chol, rhs, lower=True), lower=False)
        return indices, gcols, chol, w

    init = (
        jnp.full((k,), -1, jnp.int32),
        jnp.zeros((n, k), jnp.float32),
        eye,
        jnp.zeros((k,), jnp.float32),
    )
    indices, gcols, _, _ = lax.fori_loop(0, _steps(budget, k), pick, init)

    used = indices >= 0
    safe = jnp.maximum(indices, 0)
    g_ss = jnp.where(used[:, None] & used[None, :], gcols[safe], 0.0)
    c_s = jnp.where(used, c[safe], 0.0)
    weights = nnls_gram(g_ss + lam * eye, c_s, used)
    resid_sq = b_sq - 2.0 * jnp.dot(weights, c_s) + weights @ (g_ss @ weights)
    rel = jnp.sqrt(jnp.maximum(resid_sq, 0.0) / jnp.maximum(b_sq, 1e-30))
    return OMPResult(indices, weights, rel)
