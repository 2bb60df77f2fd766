"""The benchmark's host-driven, shrinking-batch DiffRS loop (`benchmarks.diffrs_cpu.LoopDiffRS`)
reproduces `rejection.diffrs_sample`: same samples (to ulps), per-sample NFE and test counts.

Oracle as in tests/diffusion/test_rejection.py: data N(0, SQ^2 I), model the exact reverse process of
N(0, SP^2 I), the analytic log-ratio as the discriminator.
"""

import functools

import jax
import numpy as np

from benchmarks.diffrs_cpu import LoopDiffRS, check_equal
from jaxdiff.diffusion import rejection as R
from jaxdiff.diffusion import schedules as sch


from tests.helpers import gauss_den, oracle_logit


@functools.partial(jax.jit, static_argnames=("ns", "bs", "shape"))
def _sm(sigmas, log_m, log_mp, key, max_iter, *, ns, bs, shape):
    return R.diffrs_sample(gauss_den, oracle_logit, sigmas, R.DiffRSTables(log_m, log_mp), key,
                           num_samples=ns, batch_size=bs, sample_shape=shape, max_iter=max_iter)


def test_loop_baseline_matches_state_machine(key):
    n, ns, shape = 5, 12, (2,)
    sig = sch.karras_sigmas(n, 0.002, 80.0, 7.0)
    warm = jax.jit(lambda s: R.warmup_logits(gauss_den, oracle_logit, s, jax.random.key(7), 64,
                                             shape))(sig)
    loop = LoopDiffRS(lambda p, x, s: gauss_den(x, s), lambda p, x, s: oracle_logit(x, s), shape)
    for gamma, max_iter in ((0.95, 2 * n), (0.9, None)):  # with budget restarts, then without
        tab = R.rejection_tables(warm, gamma)
        mi = np.iinfo(np.int32).max if max_iter is None else max_iter
        x_sm, info = _sm(sig, tab.log_m, tab.log_m_prime, key, mi, ns=ns, bs=4, shape=shape)
        x_lp, li = loop(None, None, sig, tab, key, num_samples=ns, max_iter=max_iter)
        assert bool(info.complete)
        check_equal(x_sm, info, x_lp, li, rtol=1e-5, atol=1e-6)
        # Not vacuous: rejections and cascades happened; the batch shrank and was padded.
        assert int(info.transition_accepts.sum()) < int(info.transition_tests.sum())
        assert int(info.marginal_tests.sum()) > 0
        assert li.executed_nfe >= li.algorithmic_nfe and li.rounds > 2 * n
        assert li.device_calls > li.rounds
        if max_iter is not None:
            assert li.restarts > 0
    assert {s for _, s in loop._cache} >= {1, 2, 4, 8, 16}
