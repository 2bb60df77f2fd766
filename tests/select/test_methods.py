"""Class-balanced selection methods against NumPy references of the published algorithms."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdiff.select import features as F
from jaxdiff.select import greedy as G
from jaxdiff.select import methods as M
from jaxdiff.sharding import data_mesh

C, D = 3, 6
COUNTS = (41, 37, 30)


@pytest.fixture
def data(key):
    """A small labelled set with classes interleaved (so class tables must gather)."""
    k1, k2, k3 = jax.random.split(key, 3)
    labels = np.concatenate([np.full(n, c) for c, n in enumerate(COUNTS)])
    labels = np.asarray(jax.random.permutation(k3, labels))
    n = labels.size
    x = jax.nn.relu(jax.random.normal(k1, (n, D)) + 0.3)
    w = jax.random.normal(k2, (C, D))
    logits = x @ w.T
    return labels, x, logits


def _per_class(sel, labels):
    """Split a Selection into per-class lists (and check it is class-major)."""
    idx = np.asarray(sel.indices)
    assert np.all(np.diff(labels[idx]) >= 0), "indices must be sorted by class"
    return [list(idx[labels[idx] == c]) for c in range(C)]


# ------------------------------------------------------------------------------------------
# NumPy references
# ------------------------------------------------------------------------------------------


def np_greedy(sim, k):
    cur, picks = np.zeros(sim.shape[0]), []
    for _ in range(k):
        gains = np.maximum(sim - cur[None], 0.0).sum(1)
        gains[picks] = -np.inf
        picks.append(int(np.argmax(gains)))
        cur = np.maximum(cur, sim[picks[-1]])
    return picks


def np_softmax(z):
    e = np.exp(z - z.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def np_grad_hess(x, z, c, scale):
    x, z = np.asarray(x, np.float64), np.asarray(z, np.float64)
    p = np_softmax(z)
    r = p - np.eye(z.shape[1])[c]
    a = p * (1 - p)
    g = np.concatenate([r, (r[:, :, None] * x[:, None]).reshape(len(x), -1)], 1)
    h = np.concatenate([a, (a[:, :, None] * x[:, None] ** 2).reshape(len(x), -1)], 1)
    return g * scale[:, None], h * scale[:, None]


def np_l2(g):
    sq = (g * g).sum(1)
    d = np.sqrt(np.maximum(sq[:, None] + sq[None] - 2 * g @ g.T, 0))
    np.fill_diagonal(d, 0.0)
    return d


def np_lcmat_class(x, z, c, k, eps, num_coords, const, scale):
    """lcmat.md §3: top-K variance Hessian coordinates, s = C - l2(g) - eps l1(h^K), greedy.
    Returns the picks, the distances d and their maximum."""
    g, h = np_grad_hess(x, z, c, scale)
    pick = np.argsort(-np.var(h, axis=0), kind="stable")[:num_coords]
    hk = h[:, pick]
    d = np_l2(g) + eps * np.abs(hk[:, None] - hk[None]).sum(-1)
    return np_greedy(const - d, k), d, d.max()


def _class_rows(labels, c):
    return np.flatnonzero(labels == c)


def assert_same_greedy_up_to_ties(got, ref, dist, const, rtol=1e-6):
    """Two facility-location pick sequences agree until their first difference, and there the
    two candidates' float64 gains tie (isolated pairs of points give exact ties in real
    arithmetic, which float32 round-off then breaks either way)."""
    near = np.full(dist.shape[0], const, np.float64)
    for a, b in zip(got, ref):
        if a != b:
            gains = np.maximum(near[None] - dist[[a, b]], 0).sum(1)
            np.testing.assert_allclose(gains[0], gains[1], rtol=rtol)
            return
        near = np.minimum(near, dist[a])
    assert len(got) == len(ref)


# ------------------------------------------------------------------------------------------
# Budgets and bad input
# ------------------------------------------------------------------------------------------


def test_budgets_use_bankers_rounding():
    labels = np.repeat(np.arange(4), [25, 35, 5000, 15])
    budgets = M.class_budgets(labels, 4, 0.1)
    assert list(budgets) == [2, 4, 500, 2]  # round(2.5) = 2, round(3.5) = 4, round(1.5) = 2
    assert list(budgets) == [round(0.1 * n) for n in (25, 35, 5000, 15)]
    assert list(M.class_budgets(np.repeat(np.arange(10), 5000), 10, 0.001)) == [5] * 10


@pytest.mark.parametrize("fraction", [0.0, -0.1, 1.5, float("nan"), float("inf")])
def test_fraction_out_of_range(fraction):
    with pytest.raises(ValueError, match=r"fraction must lie in \(0, 1\]"):
        M.class_budgets(np.zeros(10, int), 1, fraction)


def test_bad_inputs(data):
    labels, x, logits = data
    with pytest.raises(TypeError, match="fraction"):
        M.class_budgets(labels, C, True)
    with pytest.raises(ValueError, match=r"fraction=0.015 selects 0 samples of class 2 "
                                         r"\(round\(0\.015 \* 30\) = 0\); .*> 0\.5 / 30"):
        M.uniform(None, labels, C, 0.015)
    with pytest.raises(ValueError, match=r"fraction > 0\.5 / 30"):
        M.uniform(None, labels, C, 0.01)
    bad = labels.copy()
    bad[5] = 3
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 3\).*labels\[5\] = 3"):
        M.uniform(None, bad, C, 0.5)
    bad[5] = -1
    with pytest.raises(ValueError, match=r"labels\[5\] = -1"):
        M.lcmat_s(None, bad, C, 0.5, embeddings=x, logits=logits)
    with pytest.raises(TypeError, match="labels must be integers"):
        M.uniform(None, labels.astype(np.float32), C, 0.5)
    with pytest.raises(ValueError, match=r"classes \[3\] have no samples"):
        M.uniform(None, labels, 4, 0.5)
    with pytest.raises(ValueError, match="logits have 3 classes but num_classes=4"):
        M.craig(None, labels % 2, 4, 0.5, embeddings=x, logits=logits)
    with pytest.raises(ValueError, match="embeddings has 107 samples"):
        M.herding(None, labels, C, 0.5, embeddings=x[:-1])
    with pytest.raises(ValueError, match="embeddings is required"):
        M.select("lcmat_s", None, labels, C, 0.5, embeddings=None, logits=logits)
    with pytest.raises(TypeError, match="select\\('lcmat_s'\\).*logits"):
        M.select("lcmat_s", None, labels, C, 0.5, embeddings=x)
    with pytest.raises(TypeError, match="select\\('uniform'\\)"):
        M.select("uniform", None, labels, C, 0.5, embeddings=x)
    with pytest.raises(ValueError, match="num_coords=100 exceeds the 21 last-layer"):
        M.lcmat_s(None, labels, C, 0.5, embeddings=x, logits=logits, num_coords=100)
    with pytest.raises(ValueError, match=r"greedy must be one of \['naive', 'lazy', "
                                         r"'lazy_recompute'\]"):
        M.lcmat_s(None, labels, C, 0.5, embeddings=x, logits=logits, num_coords=4,
                  greedy="stochastic")
    with pytest.raises(ValueError, match="random: pass a PRNG key"):
        M.kcenter(None, labels, C, 0.5, embeddings=x)
    with pytest.raises(ValueError, match="correct must be"):
        M.forgetting(None, labels, C, 0.5, correct=np.zeros(labels.size, bool))


def test_get_method_lists_valid_names():
    assert M.get_method("LCMat-S") is M.lcmat_s
    with pytest.raises(ValueError, match="unknown selection method 'glister'; valid names: "
                                         "craig, forgetting, gradmatch, grand, herding, kcenter, "
                                         "lcmat_s, uniform"):
        M.get_method("glister")


# ------------------------------------------------------------------------------------------
# LCMat-S
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("reference_scaling", [False, True])
def test_lcmat_s_matches_numpy_reference(data, reference_scaling):
    labels, x, logits = data
    kw = dict(eps=3.0, num_coords=8, constant=10.0, batch_size=16)
    sel = M.lcmat_s(None, labels, C, 0.2, embeddings=x, logits=logits,
                    reference_scaling=reference_scaling, **kw)
    got = _per_class(sel, labels)
    budgets = M.class_budgets(labels, C, 0.2)
    for c in range(C):
        rows = _class_rows(labels, c)
        n = rows.size
        if reference_scaling:  # batches of 16 in class order; the last one is short
            size = np.minimum(16, n - (np.arange(n) // 16) * 16)
            scale = 1.0 / size
        else:
            scale = np.full(n, 1 / 16)
        picks, d, dmax = np_lcmat_class(x[rows], logits[rows], c, budgets[c], kw["eps"],
                                        kw["num_coords"], kw["constant"], scale)
        pos = {r: i for i, r in enumerate(rows)}
        assert_same_greedy_up_to_ties([pos[i] for i in got[c]], picks, d, kw["constant"])
        np.testing.assert_allclose(sel.info["max_distance"][c], dmax, rtol=1e-4)
    np.testing.assert_array_equal(sel.weights, np.ones(sum(budgets)))


def test_lcmat_s_curvature_term_and_flags_matter(data):
    labels, x, logits = data
    kw = dict(embeddings=x, logits=logits, num_coords=8, batch_size=16)
    base = M.lcmat_s(None, labels, C, 0.2, eps=3.0, **kw).indices
    assert not np.array_equal(base, M.lcmat_s(None, labels, C, 0.2, eps=0.0, **kw).indices)
    assert not np.array_equal(
        base, M.lcmat_s(None, labels, C, 0.2, eps=3.0, reference_scaling=True, **kw).indices)


def test_lcmat_s_lazy_equals_naive_and_constant_invariance(data):
    labels, x, logits = data
    # (the same static configuration as the numpy-reference test, so naive compiles once)
    kw = dict(embeddings=x, logits=logits, num_coords=8, eps=0.5, batch_size=16)
    naive = M.lcmat_s(None, labels, C, 0.2, greedy="naive", **kw)
    budgets = M.class_budgets(labels, C, 0.2)
    for greedy in ("lazy", "lazy_recompute"):
        lazy = M.lcmat_s(None, labels, C, 0.2, greedy=greedy, block_size=8, **kw)
        for c, (a, b) in enumerate(zip(_per_class(lazy, labels), _per_class(naive, labels))):
            rows = _class_rows(labels, c)
            g, h = np_grad_hess(x[rows], logits[rows], c, np.full(rows.size, 1 / 16))
            hk = h[:, np.argsort(-np.var(h, axis=0), kind="stable")[:8]]
            d = np_l2(g) + 0.5 * np.abs(hk[:, None] - hk[None]).sum(-1)
            pos = {r: i for i, r in enumerate(rows)}
            assert_same_greedy_up_to_ties([pos[i] for i in a], [pos[i] for i in b], d, 10.0)
            assert len(a) == budgets[c]
        np.testing.assert_allclose(naive.info["max_distance"], lazy.info["max_distance"],
                                   rtol=1e-6)
        assert np.all(np.asarray(lazy.info["evaluations"]) <
                      np.asarray(naive.info["evaluations"]))
    assert float(np.max(naive.info["max_distance"])) < 10.0  # so C = 10 vs 1000 cannot matter
    big = M.lcmat_s(None, labels, C, 0.2, constant=1000.0, **kw)
    np.testing.assert_array_equal(naive.indices, big.indices)


def test_lcmat_s_hyperparameters_do_not_recompile(data, monkeypatch):
    labels, x, logits = data
    traces = []
    kernel = M.lcmat_kernel

    def counting_kernel(*args):
        traces.append(1)
        return kernel(*args)

    monkeypatch.setattr(M, "lcmat_kernel", counting_kernel)
    for eps, const in [(0.01, 10.0), (0.5, 20.0), (2.0, 5.0)]:
        M.lcmat_s(None, labels, C, 0.2, embeddings=x, logits=logits, num_coords=8, eps=eps,
                  constant=const, batch_size=16)
    assert len(traces) == 1


# ------------------------------------------------------------------------------------------
# Baselines
# ------------------------------------------------------------------------------------------


def test_craig_matches_numpy_and_weights_are_cluster_sizes(data):
    labels, x, logits = data
    sel = M.craig(None, labels, C, 0.2, embeddings=x, logits=logits)
    got = _per_class(sel, labels)
    w = np.asarray(sel.weights)
    budgets = M.class_budgets(labels, C, 0.2)
    start = 0
    for c in range(C):
        rows = _class_rows(labels, c)
        g, _ = np_grad_hess(x[rows], logits[rows], c, np.ones(rows.size))
        d = np_l2(g)
        const = d.max() + 1e-3  # DeepCore's shift
        picks = np_greedy(const - d, budgets[c])
        pos = {r: i for i, r in enumerate(rows)}
        mine = [pos[i] for i in got[c]]
        assert_same_greedy_up_to_ties(mine, picks, d, const)
        sizes = np.bincount(np.argmin(d[mine], axis=0), minlength=len(mine))  # of our picks
        wc = w[start:start + budgets[c]]
        np.testing.assert_array_equal(wc, sizes)
        assert wc.sum() == rows.size
        start += budgets[c]


def _padded_class(labels, c, *arrays, length=max(COUNTS)):
    """Class c's rows of each array, zero-padded to `length`, and the validity mask."""
    rows = _class_rows(labels, c)
    pad = [jnp.zeros((length,) + a.shape[1:], a.dtype).at[:rows.size].set(a[rows])
           for a in arrays]
    return rows, jnp.arange(length) < rows.size, pad


def test_gradmatch_equals_dense_omp(data):
    """The factored (Kronecker) OMP inside GradMatch equals OMP on materialised gradients."""
    labels, x, logits = data
    sel = M.gradmatch(None, labels, C, 0.2, embeddings=x, logits=logits, lam=0.1)
    got = _per_class(sel, labels)
    w = np.asarray(sel.weights)
    budgets = M.class_budgets(labels, C, 0.2)
    start = 0
    for c in range(C):
        rows, valid, (xc, zc) = _padded_class(labels, c, x, logits)
        g = F.last_layer_grad(xc, zc, jnp.full(valid.size, c))
        ref = G.omp(g, jnp.zeros((valid.size, 0)), budgets[c], max_budget=int(budgets.max()),
                    valid=valid, lam=0.1)
        k = budgets[c]
        assert got[c] == list(rows[np.asarray(ref.indices)[:k]])
        np.testing.assert_allclose(w[start:start + k], ref.weights[:k] * rows.size,
                                   rtol=1e-3, atol=1e-4)
        start += k
    assert np.all(w >= 0) and np.all(np.asarray(sel.info["relative_residual"]) < 1)


def test_forgetting_counts_and_ranking(data, key):
    labels, _, _ = data
    n = labels.size
    correct = np.asarray(jax.random.bernoulli(key, 0.6, (6, n)))
    events = np.sum(correct[:-1] & ~correct[1:], axis=0)
    np.testing.assert_array_equal(M.forgetting_events(correct), events)
    sel = M.forgetting(key, labels, C, 0.2, correct=correct)
    budgets = M.class_budgets(labels, C, 0.2)
    for c, picks in enumerate(_per_class(sel, labels)):
        ev = events[_class_rows(labels, c)]
        assert list(events[picks]) == sorted(events[picks], reverse=True)
        assert events[picks].min() >= np.sort(ev)[::-1][budgets[c] - 1]  # a true top-k
    # All-zero counts (e.g. a cached selection model): ties are random, not dataset order.
    zeros = np.zeros((3, n), bool)
    a = M.forgetting(jax.random.key(1), labels, C, 0.2, correct=zeros).indices
    b = M.forgetting(jax.random.key(2), labels, C, 0.2, correct=zeros).indices
    assert not np.array_equal(a, b)
    # Never-learned samples first when asked.
    never = correct.copy()
    rows0 = _class_rows(labels, 0)
    never[:, rows0[:2]] = False
    unlearned = set(rows0[~never[:, rows0].any(0)])
    assert 2 <= len(unlearned) < budgets[0]
    first = _per_class(M.forgetting(key, labels, C, 0.2, correct=never,
                                    unlearned_first=True), labels)[0]
    assert set(first[:len(unlearned)]) == unlearned


def test_grand_scores_and_ranking(data, key):
    labels, x, logits = data
    n = labels.size
    xs = jnp.stack([x, 2 * x, x + 1])  # R = 3 "models"
    zs = jnp.stack([logits, -logits, 0.5 * logits])
    ref = np.mean([np.linalg.norm(np_grad_hess(xs[i], zs[i], labels, np.ones(n))[0], axis=1)
                   for i in range(3)], axis=0)
    np.testing.assert_allclose(M.grand_scores(xs, zs, labels), ref, rtol=1e-5)
    sel = M.grand(None, labels, C, 0.2, embeddings=xs, logits=zs)
    budgets = M.class_budgets(labels, C, 0.2)
    for c, picks in enumerate(_per_class(sel, labels)):
        rows = _class_rows(labels, c)
        assert picks == list(rows[np.argsort(-ref[rows], kind="stable")[:budgets[c]]])


def test_herding_and_kcenter_per_class(data, key):
    labels, x, _ = data
    budgets = M.class_budgets(labels, C, 0.2)
    herd = _per_class(M.herding(None, labels, C, 0.2, embeddings=x), labels)
    kc = _per_class(M.kcenter(key, labels, C, 0.2, embeddings=x), labels)
    for c in range(C):
        rows, valid, (xc,) = _padded_class(labels, c, x)
        k, kmax = int(budgets[c]), int(budgets.max())
        ref = G.herding(xc, k, max_budget=kmax, valid=valid)
        assert herd[c] == list(rows[np.asarray(ref)[:k]])
        first = int(np.flatnonzero(rows == kc[c][0])[0])
        ref = G.k_center_greedy(xc, first, k, max_budget=kmax, valid=valid)
        assert kc[c] == list(rows[np.asarray(ref)[:k]])
    other = M.kcenter(jax.random.fold_in(key, 1), labels, C, 0.2, embeddings=x)
    assert _per_class(other, labels) != kc


def test_uniform_is_class_balanced_and_keyed(data, key):
    labels, _, _ = data
    sel = M.uniform(key, labels, C, 0.3)
    picks = _per_class(sel, labels)
    assert [len(p) for p in picks] == list(M.class_budgets(labels, C, 0.3))
    assert len(set(np.asarray(sel.indices))) == sel.indices.size
    np.testing.assert_array_equal(sel.indices, M.uniform(key, labels, C, 0.3).indices)
    assert not np.array_equal(sel.indices, M.uniform(jax.random.fold_in(key, 1), labels, C,
                                                     0.3).indices)


def test_one_device_equals_eight(data, key):
    """Classes spread over 8 devices (3 real + 5 padding classes) give the same selection."""
    labels, x, logits = data
    kw = dict(embeddings=x, logits=logits, num_coords=8, batch_size=16)
    one = M.select("lcmat_s", key, labels, C, 0.2, **kw)
    eight = M.select("lcmat_s", key, labels, C, 0.2, mesh=data_mesh(8), **kw)
    np.testing.assert_array_equal(one.indices, eight.indices)
    np.testing.assert_array_equal(one.weights, eight.weights)
    np.testing.assert_allclose(one.info["max_distance"], eight.info["max_distance"], rtol=1e-6)
