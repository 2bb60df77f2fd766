"""DiffRS (`jaxdiff.diffusion.rejection`) against exact answers.

Oracles (spec diffrs.md §14): data q_0 = N(0, s_q^2 I), the "pretrained model" the exact reverse
process of p_0 = N(0, s_p^2 I) (D = s_p^2/(s_p^2 + sigma^2) x), and the analytic log-ratio
log q_sigma/p_sigma as the discriminator. Plus: a constant discriminator (nothing rejected: the
base Heun sampler), batch invariance, and a straightforward per-sample Python loop of the
reference semantics that the masked while_loop state machine must reproduce.

Note on bit-exactness: XLA:CPU contracts a*b + c into FMAs inside fused kernels, so two programs
with different fusion (the state machine, `solvers.sample`, eager Python) can differ in the last
ulp whenever a product is inexact. The bit-for-bit checks therefore use a dyadic double (sigmas
powers of two, D = x/2: every product exact) and the general checks use ulp-level tolerances with
exactly equal accept/reject decisions.
"""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdiff import sharding as shd
from jaxdiff.diffusion import discriminator as DD
from jaxdiff.diffusion import rejection as R
from jaxdiff.diffusion import schedules as sch
from jaxdiff.diffusion import solvers as S

from tests.helpers import SP, SQ, gauss_den, oracle_logit



def oracle_vp_logit(x_vp, tau, cond=None):
    """The same oracle written in the discriminator's VP coordinates (x_vp, tau)."""
    sigma = sch.vp_linear_sigma(tau)
    return oracle_logit(x_vp * jnp.sqrt(1.0 + jnp.square(sigma))[:, None], sigma)


def const_logit(x, sigma, cond=None):
    return jnp.zeros((x.shape[0],), jnp.float32)


def half_den(x, sigma, cond=None):
    return x * 0.5


DYADIC = jnp.array([8.0, 4.0, 2.0, 1.0, 0.5, 0.25, 0.0])


@functools.partial(jax.jit, static_argnames=("den", "disc", "ns", "bs", "shape", "sharding"))
def _drs(sigmas, logits, gamma, key, max_iter, offset=0, *, den, disc, ns, bs, shape,
         sharding=None):
    return R.diffrs(den, disc, sigmas, logits, gamma, key, num_samples=ns, batch_size=bs,
                    sample_shape=shape, max_iter=max_iter, offset=offset, sharding=sharding)


@functools.partial(jax.jit, static_argnames=("den", "ns", "shape"))
def _heun(sigmas, key, *, den, ns, shape):
    x_T = S.prior_sample(key, (ns, *shape), sigmas[0])
    return S.sample(S.heun(), den, x_T, sigmas)[0]


@functools.partial(jax.jit, static_argnames=("disc", "num", "shape"))
def _warm(sigmas, key, *, disc, num, shape):
    return R.warmup_logits(gauss_den, disc, sigmas, key, num, shape, batch_size=num // 2)


def _grid(n):
    return sch.karras_sigmas(n, 0.002, 80.0, 7.0)


def test_constant_discriminator_is_base_heun(key):
    """log ratio 0 everywhere: M = M' = 1, nothing is rejected, and every sample is the base
    Heun sampler's (same prior draw, same steps): bit for bit on the dyadic double (every product
    exact, so FMA contraction cannot differ), to ulps on the Gaussian double."""
    n = DYADIC.shape[0] - 1
    logits = jnp.zeros((16, n + 1))
    x, info = _drs(DYADIC, logits, 0.75, key, 10**6, den=half_den, disc=const_logit, ns=11,
                   bs=4, shape=(3,))
    base = _heun(DYADIC, key, den=half_den, ns=11, shape=(3,))
    np.testing.assert_array_equal(np.asarray(x), np.asarray(base))
    assert bool(info.complete)
    np.testing.assert_array_equal(info.sample_nfe, 2 * n - 1)
    assert int(info.algorithmic_nfe) == 11 * (2 * n - 1)
    assert int(info.depth_hist[0]) == 11 * n and int(info.depth_hist[1:].sum()) == 0
    np.testing.assert_array_equal(info.transition_accepts, info.transition_tests)
    assert int(info.marginal_tests.sum()) == 0 and int(info.restarts) == 0
    assert int(info.prior_tests) == int(info.prior_accepts) == 11

    sig = _grid(5)
    x, info = _drs(sig, jnp.zeros((16, 6)), 0.9, key, 10**6, den=gauss_den, disc=const_logit,
                   ns=8, bs=4, shape=(1,))
    base = _heun(sig, key, den=gauss_den, ns=8, shape=(1,))
    np.testing.assert_allclose(np.asarray(x), np.asarray(base), rtol=2e-6, atol=1e-6)
    assert int(info.algorithmic_nfe) == 8 * 9


def python_loop_sample(den, disc, sigmas, log_m, log_mp, key, i, max_iter, shape):
    """One sample of DiffRS, written as the reference's per-slot logic (spec §4, §6, §8), with
    jaxdiff's per-sample random stream (rejection.py docstring). Returns
    (x, nfe, algorithmic nfe, list of (kind, idx, accepted), depths)."""
    sig = np.asarray(sigmas, np.float32)
    log_m, log_mp = np.asarray(log_m), np.asarray(log_mp)
    n = len(sig) - 1
    sk = jax.random.fold_in(key, i)
    c = 0
    events, depths = [], []

    def fresh(c):
        return sig[0] * jax.random.normal(jax.random.fold_in(sk, c), shape)[None], c + 1

    def event(c):
        ek = jax.random.fold_in(sk, c)
        u = jax.random.uniform(jax.random.fold_in(ek, 0), ())
        eps = jax.random.normal(jax.random.fold_in(ek, 1), shape)[None]
        return float(jnp.log(u)), eps, c + 1

    def logit(x, s):
        return float(disc(x, jnp.full((1,), s, jnp.float32))[0])

    x, c = fresh(c)
    idx, nfe, alg, lprev = 0, 0, 0, 0.0
    while True:
        if idx == 0:  # (a) prior test, fresh noise until accepted
            while True:
                lg = logit(x, sig[0])
                logu, eps, c = event(c)
                ok = logu < np.float32(lg - log_m[0])
                events.append(("prior", 0, ok))
                if ok:
                    lprev = lg
                    break
                x = sig[0] * eps
        s, sn = sig[idx], sig[idx + 1]  # (b) one Heun step (Euler onto sigma = 0)
        d = (x - den(x, jnp.full((1,), s), None)) / s
        x_e = x + (sn - s) * d
        if sn > 0:
            d2 = (x_e - den(x_e, jnp.full((1,), sn), None)) / sn
            x = x + (sn - s) * (0.5 * (d + d2))
            nfe, alg = nfe + 2, alg + 2
        else:
            x = x_e
            nfe, alg = nfe + 1, alg + 1
        idx += 1
        start, first = idx, True  # (c) transition test, then the marginal cascade
        while True:
            lg = logit(x, sig[idx])
            logu, eps, c = event(c)
            thr = np.float32(lprev + log_mp[idx]) if first else log_m[idx]
            ok = logu < np.float32(lg - thr)
            events.append(("transition" if first else "marginal", idx, ok))
            if ok:
                lprev = lg
                break
            x = x + float(np.sqrt(max(sig[idx - 1] ** 2 - sig[idx] ** 2, 0.0))) * eps
            idx -= 1
            first = False
            if idx == 0:
                break
        depths.append(start - idx)
        if nfe + 2 * (n - idx) - 1 > max_iter:  # (d) budget restart
            x, c = fresh(c)
            idx, nfe, lprev = 0, 0, 0.0
        if idx == n:  # (e) harvest
            return np.asarray(x[0]), nfe, alg, events, depths


def test_state_machine_matches_python_loop(key):
    """Same decisions (per-sample NFE, every test's outcome, cascade depths, restarts) and the
    same samples (to ulps) as the per-sample Python loop, with rejections, cascades to the prior
    and budget restarts all exercised."""
    n, ns, shape = 5, 8, (1,)
    sig = _grid(n)
    warm = _warm(sig, jax.random.key(7), disc=oracle_logit, num=64, shape=shape)
    gamma, max_iter = 0.95, 2 * n  # one spare NFE: any rejection beyond the last step restarts
    x, info = _drs(sig, warm, gamma, key, max_iter, den=gauss_den, disc=oracle_logit, ns=ns,
                   bs=4, shape=shape)
    tab = R.rejection_tables(warm, gamma)
    ref = [python_loop_sample(gauss_den, oracle_logit, sig, tab.log_m, tab.log_m_prime, key, i,
                              max_iter, shape) for i in range(ns)]
    np.testing.assert_array_equal(info.sample_nfe, [r[1] for r in ref])
    np.testing.assert_allclose(np.asarray(x), np.stack([r[0] for r in ref]), rtol=1e-5,
                               atol=1e-6)
    events = [e for r in ref for e in r[3]]
    tt = np.bincount([e[1] for e in events if e[0] == "transition"], minlength=n + 1)
    ta = np.bincount([e[1] for e in events if e[0] == "transition" and e[2]], minlength=n + 1)
    mt = np.bincount([e[1] for e in events if e[0] == "marginal"], minlength=n + 1)
    np.testing.assert_array_equal(info.transition_tests, tt)
    np.testing.assert_array_equal(info.transition_accepts, ta)
    np.testing.assert_array_equal(info.marginal_tests, mt)
    assert int(info.prior_tests) == sum(e[0] == "prior" for e in events)
    np.testing.assert_array_equal(
        info.depth_hist, np.bincount([d for r in ref for d in r[4]], minlength=n + 1))
    assert int(info.algorithmic_nfe) == sum(r[2] for r in ref)
    # The oracle rejects (the test is not vacuous) and the budget bit.
    assert int(info.transition_accepts.sum()) < int(info.transition_tests.sum())
    assert int(info.restarts) > 0 and int(info.marginal_tests.sum()) > 0


def test_batch_invariance(key):
    """Pools of 1, 4 and 16 slots give the same samples, per-sample NFE and algorithmic NFE
    (randomness is per sample id); executed NFE depends on the pool. `offset` shifts ids."""
    n, ns, shape = 5, 8, (1,)  # shapes shared with the Python-loop test (one compile fewer)
    sig = _grid(n)
    warm = _warm(sig, jax.random.key(7), disc=oracle_logit, num=64, shape=shape)
    outs = [_drs(sig, warm, 0.9, key, 10**6, den=gauss_den, disc=oracle_logit, ns=ns, bs=bs,
                 shape=shape) for bs in (1, 4, 16)]
    x0, i0 = outs[0]
    for x, info in outs[1:]:
        # Each pool size is its own compiled program, so float rounding may differ (the suite's
        # unoptimised XLA:CPU code: 1e-5 relative after 5 steps); the decisions must not.
        np.testing.assert_allclose(np.asarray(x), np.asarray(x0), rtol=1e-5, atol=1e-6)
        np.testing.assert_array_equal(info.sample_nfe, i0.sample_nfe)
        assert int(info.algorithmic_nfe) == int(i0.algorithmic_nfe)
        assert int(info.disc_algorithmic) == int(i0.disc_algorithmic)
        np.testing.assert_array_equal(info.depth_hist, i0.depth_hist)
    assert int(outs[2][1].executed_nfe) >= int(i0.algorithmic_nfe)
    # offset: rows are global sample ids (same compiled program).
    x3, i3 = _drs(sig, warm, 0.9, key, 10**6, 3, den=gauss_den, disc=oracle_logit, ns=ns, bs=4,
                  shape=shape)
    np.testing.assert_allclose(np.asarray(x3[:5]), np.asarray(x0[3:]), rtol=1e-6, atol=1e-7)
    np.testing.assert_array_equal(i3.sample_nfe[:5], i0.sample_nfe[3:])
    assert int(i0.executed_nfe) == int(i0.algorithmic_nfe)  # one slot: nothing is masked


def test_sharded_pool_matches_one_device(key):
    """A pool of 16 slots sharded over 8 devices (2 slots each) gives bit-identical samples and
    statistics to the unsharded pool on one device, with rejections, cascades and budget
    restarts exercised: randomness is per sample id and every pool-wide reduction is an integer
    count. (Checked: with one slot per device, B = 8, the samples are a few ulps apart, because
    a [1, ...] shard compiles like a pool of 1 - bit-equal to B = 1 on one device; see
    test_batch_invariance. Hence two slots per device.)"""
    n, ns, bs, shape = 5, 24, 16, (1,)
    sig = _grid(n)
    warm = _warm(sig, jax.random.key(7), disc=oracle_logit, num=64, shape=shape)
    seen = []  # shardings the partitioner chose for the denoiser's input

    def spy_den(x, sigma, cond=None):
        jax.debug.inspect_array_sharding(x, callback=seen.append)
        return gauss_den(x, sigma, cond)

    args = (sig, warm, 0.95, key, 2 * n)  # max_iter: one spare NFE, so restarts happen
    x1, i1 = _drs(*args, den=gauss_den, disc=oracle_logit, ns=ns, bs=bs, shape=shape)
    x8, i8 = _drs(*args, den=spy_den, disc=oracle_logit, ns=ns, bs=bs, shape=shape,
                  sharding=shd.batch_sharding(shd.data_mesh(8)))
    # Not vacuous: the 8-device program ran on 8 devices with the pool split 8 ways.
    assert x1.sharding.num_devices == 1 and x8.sharding.num_devices == 8
    assert seen and all(s.shard_shape((bs, *shape)) == (bs // 8, *shape) for s in seen)
    np.testing.assert_array_equal(np.asarray(x8), np.asarray(x1))
    for name, a, b in zip(R.DiffRSInfo._fields, i1, i8):
        np.testing.assert_array_equal(np.asarray(b), np.asarray(a), err_msg=name)
    assert bool(i8.complete) and int(i8.restarts) > 0
    assert int(i8.transition_accepts.sum()) < int(i8.transition_tests.sum())
    assert int(i8.depth_hist[1:].sum()) > 0


def test_sharded_pool_size_must_divide_mesh(key):
    t = R.DiffRSTables(jnp.zeros(4), jnp.zeros(4))
    with pytest.raises(ValueError, match="batch_size=12 must be a multiple of the mesh size 8"):
        R.diffrs_sample(gauss_den, oracle_logit, _grid(3), t, key, num_samples=24, batch_size=12,
                        sample_shape=(1,), sharding=shd.batch_sharding(shd.data_mesh(8)))


def test_gaussian_oracle_variance_moves_to_data(key):
    """Model N(0, 1), data N(0, 0.25), exact log-ratio discriminator, 8-step Heun (whose own
    output variance is 1.67: discretisation error on top of the model's 1.0). The DiffRS output
    variance falls monotonically with gamma from the base sampler's toward 0.25; at gamma = 1 it
    closes >= 85% of the gap (measured 0.30, 96%; DiffRS with a deterministic base sampler is a
    heuristic, not an exact sampler of q - the cascade re-tests re-noised rejected states against
    marginal ratios - so the gap does not close fully; at N = 18 it reaches 0.32).
    The VP-coordinate oracle through `ve_logit` gives the same logits and the same samples."""
    n, ns, shape = 8, 2000, (1,)
    sig = _grid(n)
    warm = _warm(sig, jax.random.key(2), disc=oracle_logit, num=1000, shape=shape)
    base = _heun(sig, key, den=gauss_den, ns=ns, shape=shape)
    v_base = float(jnp.var(base))
    assert v_base > SP**2
    vs, nfes = [], []
    for g in (0.0, 0.75, 1.0):
        x, info = _drs(sig, warm, g, key, 10**6, den=gauss_den, disc=oracle_logit, ns=ns,
                       bs=128, shape=shape)
        assert bool(info.complete)
        vs.append(float(jnp.var(x)))
        nfes.append(int(info.algorithmic_nfe) / ns)
    assert v_base > vs[0] > vs[1] > vs[2], vs
    assert (v_base - vs[2]) / (v_base - SQ**2) > 0.85, vs
    assert nfes[0] < nfes[2] and nfes[0] > 2 * n - 1  # more rejections cost more NFE
    # VP conversion path: same logits to float tolerance, same samples.
    vp = DD.ve_logit(oracle_vp_logit)
    xs = base[:64] + 0.0
    for s in (0.0, 0.01, 0.5, 3.0, 80.0):
        sv = jnp.full((64,), s)
        np.testing.assert_allclose(vp(xs, sv), oracle_logit(xs, sv), rtol=1e-4, atol=2e-5)
    x_vp, info_vp = _drs(sig, warm, 0.75, key, 10**6, den=gauss_den, disc=vp, ns=ns, bs=128,
                         shape=shape)
    x_ve, info_ve = _drs(sig, warm, 0.75, key, 10**6, den=gauss_den, disc=oracle_logit, ns=ns,
                         bs=128, shape=shape)
    agree = np.mean(np.asarray(info_vp.sample_nfe) == np.asarray(info_ve.sample_nfe))
    assert agree > 0.97, agree  # identical up to decisions flipped by float rounding


def test_warmup_logits_and_quantile_tables(key):
    """`warmup_logits` = the discriminator along `solvers.sample` Heun trajectories; tables =
    numpy linear quantiles of the marginal and transition log-ratios, clamped at 0 (or not)."""
    n, num, shape = 4, 40, (2,)
    sig = _grid(n)
    w = np.asarray(_warm(sig, key, disc=oracle_logit, num=num, shape=shape))
    x_T = S.prior_sample(key, (num, *shape), sig[0])
    _, aux = S.sample(S.heun(), gauss_den, x_T, sig, return_trajectory=True)
    ref = np.stack([oracle_logit(aux.trajectory[k], jnp.full((num,), sig[k]))
                    for k in range(n + 1)], 1)
    np.testing.assert_allclose(w, ref, rtol=1e-5, atol=1e-6)
    for g in (0.0, 0.3, 0.75, 1.0):
        for clamp in (True, False):
            t = R.rejection_tables(w, g, clamp_zero=clamp)
            lm = np.quantile(w, g, axis=0)
            lmp = np.concatenate([[0.0], np.quantile(w[:, 1:] - w[:, :-1], g, axis=0)])
            if clamp:
                lm, lmp = np.maximum(lm, 0), np.maximum(lmp, 0)
            np.testing.assert_allclose(t.log_m, lm, rtol=1e-5, atol=1e-6)
            np.testing.assert_allclose(t.log_m_prime, lmp, rtol=1e-5, atol=1e-6)
    # gamma = 1: the largest clean-sample log-ratio, below its supremum d log(SP / SQ) (x = 0).
    assert float(R.rejection_tables(w, 1.0, clamp_zero=False).log_m[n]) < \
        shape[0] * math.log(SP / SQ)
    with pytest.raises(ValueError, match="gamma"):
        R.rejection_tables(w, 1.5)


def test_hyperparameters_traced_no_recompile(key):
    n = 4
    sig = _grid(n)
    warm = _warm(sig, key, disc=oracle_logit, num=32, shape=(1,))

    @jax.jit
    def run(sigmas, gamma, max_iter, k):
        return R.diffrs(gauss_den, oracle_logit, sigmas, warm, gamma, k, num_samples=4,
                        batch_size=2, sample_shape=(1,), max_iter=max_iter)

    a = run(sig, 0.5, 100, key)
    b = run(sch.karras_sigmas(n, 0.01, 40.0, 5.0), 0.9, 12, key)
    assert run._cache_size() == 1
    assert not np.array_equal(np.asarray(a[0]), np.asarray(b[0]))


def test_cache_roundtrip(tmp_path):
    calls = []

    def compute():
        calls.append(1)
        return {"logits": np.arange(6.0).reshape(2, 3)}

    k = {"model": "run/1", "disc": "d/2", "n": 18, "gamma": 0.75}
    a = R.load_or_compute(str(tmp_path), k, compute)
    b = R.load_or_compute(str(tmp_path), dict(k), compute)
    np.testing.assert_array_equal(a["logits"], b["logits"])
    assert len(calls) == 1
    R.load_or_compute(str(tmp_path), dict(k, n=35), compute)
    assert len(calls) == 2


def test_bad_inputs(key):
    sig = _grid(3)
    t = R.DiffRSTables(jnp.zeros(4), jnp.zeros(4))
    with pytest.raises(ValueError, match="end at 0"):
        R.diffrs_sample(gauss_den, oracle_logit, sig[:-1], R.DiffRSTables(jnp.zeros(3),
                        jnp.zeros(3)), key, num_samples=2, batch_size=2, sample_shape=(1,))
    with pytest.raises(ValueError, match="tables"):
        R.diffrs_sample(gauss_den, oracle_logit, sig, R.DiffRSTables(jnp.zeros(3), jnp.zeros(3)),
                        key, num_samples=2, batch_size=2, sample_shape=(1,))
    with pytest.raises(ValueError, match="labels"):
        R.diffrs_sample(gauss_den, oracle_logit, sig, t, key, num_samples=2, batch_size=2,
                        sample_shape=(1,), labels=jnp.zeros(3, jnp.int32))
    with pytest.raises(ValueError, match="batch_size"):
        R.diffrs_sample(gauss_den, oracle_logit, sig, t, key, num_samples=2, batch_size=0,
                        sample_shape=(1,))
