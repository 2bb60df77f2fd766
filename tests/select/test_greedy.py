"""Greedy selection primitives against brute force and plain NumPy references."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.optimize import nnls as scipy_nnls

from jaxdiff.select import greedy as G
from jaxdiff.select.features import kron_layout

# ------------------------------------------------------------------------------------------
# NumPy references (written from the spec's pseudo-code, lcmat.md §3 Step 5)
# ------------------------------------------------------------------------------------------


def np_facility_location(sim, k, valid=None):
    """Naive greedy: gains Σ_i max(0, s_ji - cur_i) over valid i, first index on ties."""
    sim = np.asarray(sim, np.float64)
    n = sim.shape[0]
    valid = np.ones(n, bool) if valid is None else np.asarray(valid)
    cur = np.zeros(n)
    picks = []
    for _ in range(k):
        gains = (np.maximum(sim - cur[None], 0.0) * valid[None]).sum(1)
        gains[~valid] = -np.inf
        gains[picks] = -np.inf
        j = int(np.argmax(gains))
        picks.append(j)
        cur = np.maximum(cur, sim[j])
    return picks


def fl_value(sim, subset):
    return np.maximum(np.asarray(sim, np.float64)[list(subset)].max(0), 0.0).sum()


def _dist(x):
    x = np.asarray(x, np.float64)
    return np.linalg.norm(x[:, None] - x[None], axis=-1)


def _rows(mat):
    return lambda j: mat[j]


# ------------------------------------------------------------------------------------------
# Facility location
# ------------------------------------------------------------------------------------------


def test_naive_greedy_matches_numpy_with_padding(key):
    x = jax.random.normal(key, (30, 4))
    dist = jnp.asarray(_dist(x), jnp.float32)
    sim = 10.0 - np.asarray(dist, np.float64)  # the reference's similarity form
    valid = jnp.arange(30) < 26  # last 4 rows are padding: never picked, never counted
    res = G.naive_greedy(dist, 6, constant=10.0, max_budget=8, valid=valid)
    assert list(np.asarray(res.indices)) == np_facility_location(sim, 6, valid) + [-1, -1]
    picks = list(np.asarray(res.indices[:6]))
    ref_value = np.maximum(sim[picks][:, :26].max(0), 0).sum()
    np.testing.assert_allclose((10.0 - np.asarray(res.nearest)[:26]).sum(), ref_value, rtol=1e-5)
    np.testing.assert_allclose(np.asarray(res.gains).sum(), ref_value, rtol=1e-5)
    assert float(res.max_distance) == pytest.approx(float(np.asarray(dist)[:26, :26].max()))


@jax.jit
def _naive_and_lazy(dist, valid):
    n = dist.shape[0]
    naive = G.naive_greedy(dist, 9, constant=0.0, max_budget=10, valid=valid)
    lazy = G.lazy_greedy(_rows(dist), n, 9, constant=0.0, max_budget=10, valid=valid,
                         block_size=6, refresh_block=3)
    return naive, lazy


def test_lazy_equals_naive_exactly_with_ties():
    """Integer similarities sum exactly in float32, so the two greedies must agree bit for bit,
    including first-index tie-breaking (small integers make ties frequent). A similarity matrix
    S is run as constant 0 and distances -S."""
    n = 23
    valid = jnp.arange(n) < 20
    for seed in range(4):
        rng = np.random.default_rng(seed)
        a = rng.integers(0, 4, (n, n)).astype(np.float32)
        sim = a + a.T  # symmetric, many ties
        naive, lazy = _naive_and_lazy(jnp.asarray(-sim), valid)
        np.testing.assert_array_equal(naive.indices, lazy.indices)
        np.testing.assert_array_equal(naive.gains, lazy.gains)
        np.testing.assert_array_equal(naive.nearest, lazy.nearest)
        assert list(np.asarray(naive.indices[:9])) == np_facility_location(sim, 9, valid)
        assert float(naive.max_distance) == float(lazy.max_distance)
        assert int(lazy.evaluations) < int(naive.evaluations)


def test_lazy_equals_naive_on_distances(key):
    dist = jnp.asarray(_dist(jax.random.normal(key, (60, 3))), jnp.float32)
    naive = G.naive_greedy(dist, 12, constant=10.0, max_budget=12)
    lazy = jax.jit(lambda d: G.lazy_greedy(_rows(d), 60, 12, constant=10.0, max_budget=12,
                                           block_size=16))(dist)
    np.testing.assert_array_equal(naive.indices, lazy.indices)
    assert int(lazy.evaluations) < int(naive.evaluations) // 2


def test_greedy_within_one_minus_one_over_e_of_brute_force(key):
    for trial in range(5):
        d = _dist(jax.random.normal(jax.random.fold_in(key, trial), (10, 2)))
        k = 3
        best = max(fl_value(5.0 - d, s) for s in itertools.combinations(range(10), k))
        res = G.naive_greedy(jnp.asarray(d, jnp.float32), k, constant=5.0, max_budget=k)
        value = fl_value(5.0 - d, np.asarray(res.indices))
        assert value >= (1 - 1 / np.e) * best - 1e-6
        assert value <= best + 1e-5


def test_picks_independent_of_constant_and_common_scale(key):
    """If C exceeds every distance, C - d gives the k-medoid picks for any C and any scaling."""
    d = _dist(jax.random.normal(key, (25, 3)))
    base = np_facility_location(d.max() + 1e-3 - d, 7)  # DeepCore/CRAIG's shift
    for c, s in [(100.0, 1.0), (d.max() * 3, 1.0), (10.0, 0.1), (1e3, 7.0)]:
        res = G.naive_greedy(jnp.asarray(s * d, jnp.float32), 7, constant=c, max_budget=7)
        assert list(np.asarray(res.indices)) == base


def test_blockwise_matrix_equals_full(key):
    x = jax.random.normal(key, (37, 5))
    full = jnp.asarray(_dist(x), jnp.float32)

    def rows(j):  # computed from the features, like the methods do
        return jnp.sqrt(jnp.sum((x[j][:, None] - x[None]) ** 2, -1))

    build = jax.jit(G.distance_matrix, static_argnums=(0, 1), static_argnames="block_size")
    for block in (8, 64):  # a tail block shifted back, and one block larger than n
        np.testing.assert_allclose(build(rows, 37, block_size=block), full, rtol=1e-5, atol=1e-5)


def test_budget_is_traced_no_recompile(key):
    dist = jnp.asarray(_dist(jax.random.normal(key, (20, 2))), jnp.float32)
    traces = []

    @jax.jit
    def run(budget, constant):
        traces.append(1)
        return G.naive_greedy(dist, budget, constant=constant, max_budget=8).indices

    out3, out8 = run(3, 10.0), run(8, 20.0)
    assert len(traces) == 1
    np.testing.assert_array_equal(out3[:3], out8[:3])  # greedy picks are nested
    assert list(np.asarray(out3[3:])) == [-1] * 5


def test_assign_to_selected_cluster_sizes(key):
    dist = jnp.asarray(_dist(jax.random.normal(key, (40, 3))), jnp.float32)
    valid = jnp.arange(40) < 35
    picks = jnp.array([3, 17, 8, -1], jnp.int32)
    slot, sizes = G.assign_to_selected(_rows(dist), picks, valid)
    ref = np.argmin(np.asarray(dist)[[3, 17, 8]][:, :35], axis=0)
    np.testing.assert_array_equal(np.asarray(slot)[:35], ref)
    assert list(np.asarray(slot)[35:]) == [-1] * 5
    np.testing.assert_array_equal(sizes, [np.sum(ref == i) for i in range(3)] + [0])
    assert float(sizes.sum()) == 35


# ------------------------------------------------------------------------------------------
# k-center greedy and herding
# ------------------------------------------------------------------------------------------


def np_k_center(x, first, k, valid):
    x = np.asarray(x, np.float64)
    picks = [first]
    mins = np.linalg.norm(x - x[first], axis=1)
    for _ in range(k - 1):
        m = np.where(valid, mins, -np.inf)
        m[picks] = -np.inf
        j = int(np.argmax(m))
        picks.append(j)
        mins = np.minimum(mins, np.linalg.norm(x - x[j], axis=1))
    return picks


def np_herding(x, k, valid):
    x = np.asarray(x, np.float64)[valid]
    mu = x.mean(0)
    picks, total = [], np.zeros_like(mu)
    for t in range(k):
        dist = np.linalg.norm((t + 1) * mu - total - x, axis=1)
        dist[picks] = np.inf
        j = int(np.argmin(dist))
        picks.append(j)
        total += x[j]
    return picks


def test_k_center_greedy_matches_numpy(key):
    x = jax.random.normal(key, (50, 6))
    valid = np.arange(50) < 44
    out = G.k_center_greedy(x, 5, 9, max_budget=10, valid=jnp.asarray(valid))
    assert list(np.asarray(out)) == np_k_center(x, 5, 9, valid) + [-1]


def test_herding_matches_numpy(key):
    x = jax.random.normal(key, (50, 6)) + 1.0
    valid = np.arange(50) < 44
    out = G.herding(x, 9, max_budget=10, valid=jnp.asarray(valid))
    assert list(np.asarray(out)) == np_herding(x, 9, valid) + [-1]
    # The mean of the picks approaches the pool mean.
    xs = np.asarray(x)[:44]
    errs = [np.linalg.norm(xs[np.asarray(out)[:t]].mean(0) - xs.mean(0)) for t in (1, 9)]
    assert errs[1] < errs[0]


# ------------------------------------------------------------------------------------------
# NNLS and OMP
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("lam", [0.0, 0.5])
def test_nnls_gram_matches_scipy(key, lam):
    rng = np.random.default_rng(int(jax.random.randint(key, (), 0, 1000)))
    for _ in range(4):
        a = rng.normal(size=(30, 12))
        b = rng.normal(size=30)
        mask = rng.random(12) < 0.8
        am = a[:, mask]
        aug = np.vstack([am, np.sqrt(lam) * np.eye(am.shape[1])])
        ref = np.zeros(12)
        ref[mask] = scipy_nnls(aug, np.concatenate([b, np.zeros(am.shape[1])]))[0]
        q = a.T @ a + lam * np.eye(12)
        w = G.nnls_gram(jnp.asarray(q, jnp.float32), jnp.asarray(a.T @ b, jnp.float32),
                        jnp.asarray(mask))
        np.testing.assert_allclose(w, ref, rtol=1e-4, atol=1e-5)
        assert np.all(np.asarray(w) >= 0) and np.all(np.asarray(w)[~mask] == 0)
        assert 0 < np.sum(ref > 0) < mask.sum()  # the constraint is active: a real test


def np_omp(atoms, target, k, lam):
    """Reference OMP: argmax correlation with the residual, ridge refit on the support."""
    picks, w = [], np.zeros(0)
    for _ in range(k):
        resid = target - atoms[picks].T @ w if picks else target
        proj = atoms @ resid
        proj[picks] = -np.inf
        picks.append(int(np.argmax(proj)))
        a = atoms[picks]
        w = np.linalg.solve(a @ a.T + lam * np.eye(len(picks)), a @ target)
    return picks


@pytest.mark.parametrize("lam", [0.0, 1.0])
def test_omp_picks_match_numpy_on_kron_atoms(key, lam):
    k1, k2 = jax.random.split(key)
    u = jax.random.normal(k1, (40, 3))
    v = jax.random.normal(k2, (40, 4))
    atoms = np.asarray(kron_layout(u, v), np.float64)
    res = G.omp(u, v, 6, max_budget=7, lam=lam)
    assert list(np.asarray(res.indices)) == np_omp(atoms, atoms.mean(0), 6, lam) + [-1]
    assert np.all(np.asarray(res.weights) >= 0) and float(res.weights[6]) == 0


def test_omp_recovers_exact_sparse_combination(key):
    """A target that is a positive combination of 4 atoms is recovered exactly (lam = 0)."""
    k1, k2 = jax.random.split(key)
    n, m = 40, 200
    dense = jax.random.normal(k1, (n, m)) / np.sqrt(m)  # nearly orthogonal unit-ish atoms
    support = np.array([3, 11, 25, 31])
    coef = np.array([1.0, 0.7, 1.3, 0.9])
    t = np.zeros(n)
    t[support] = coef  # target = Σ_s coef_s a_s
    res = G.omp(dense, jnp.zeros((n, 0)), 4, max_budget=4, lam=0.0,
                target_weights=jnp.asarray(t, jnp.float32))
    assert sorted(np.asarray(res.indices)) == list(support)
    order = np.argsort(np.asarray(res.indices))
    np.testing.assert_allclose(np.asarray(res.weights)[order], coef, rtol=1e-4)
    assert float(res.relative_residual) < 1e-3


def test_omp_padding_is_ignored(key):
    """Padded rows change nothing (same shapes as test_omp_picks_match_numpy: one compile)."""
    k1, k2 = jax.random.split(key)
    u = jax.random.normal(k1, (40, 3))
    v = jax.random.normal(k2, (40, 4))
    valid = jnp.arange(40) < 33
    padded = G.omp(u, v, 6, max_budget=7, valid=valid, lam=1.0)
    atoms = np.asarray(kron_layout(u, v), np.float64)[:33]
    assert list(np.asarray(padded.indices)) == np_omp(atoms, atoms.mean(0), 6, 1.0) + [-1]
    full = G.omp(u[:33], v[:33], 6, max_budget=7, lam=1.0)
    np.testing.assert_array_equal(full.indices, padded.indices)
    np.testing.assert_allclose(full.weights, padded.weights, rtol=1e-5, atol=1e-7)
