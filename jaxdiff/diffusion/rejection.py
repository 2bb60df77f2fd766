"""DiffRS: Diffusion Rejection Sampling (Na et al., ICML 2024; spec `diffrs.md`).

Each transition of the EDM deterministic Heun sampler is the proposal of a rejection sampler whose
acceptance ratio is estimated by a time-dependent discriminator (`logit = log q_sigma / p_sigma`):

    transition test after a Heun step idx-1 -> idx:  log u < l(x_idx) - lprev - log M'[idx]
    on rejection: x += sqrt(sigma_{idx-1}^2 - sigma_idx^2) eps, idx -= 1, then marginal tests
                  log u < l(x_idx) - log M[idx], re-noising one more level per failure, until
                  accepted or idx reaches 0;
    prior test at idx 0:  log u < l(x_0) - log M[0], on rejection fresh noise sigma_0 * eps;
    budget: restart a slot from the prior if  nfe + 2 (N - idx) - 1 > max_iter;
    harvest: a slot accepted at idx = N is a finished sample.

`lprev` is the log-ratio of the slot's last accepted state. `log M`, `log M'` are gamma-quantiles of
marginal and transition log-ratios over warm-up trajectories of the base sampler (`warmup_logits`,
`rejection_tables`), clamped at 0 by default (M >= 1, the reference's default).

Implementation (DESIGN.md §2, spec §13): a fixed pool of `batch_size` slots runs a masked,
fixed-shape `lax.while_loop` state machine with no host synchronisation. One outer round is
(reference ordering (b), (c), (d), (e), (a)):

    step     one Heun step on the full pool (the only denoiser calls; the second evaluation is
             skipped when no active slot needs it, i.e. every active slot is on its final step);
    cascade  inner while_loop: the discriminator on the full pool, tests committed on pending slots;
    budget   restarts;
    harvest  finished slots write their sample to the output buffer and take the next sample id;
    prior    inner while_loop of prior tests for the slots at idx 0.

Randomness is per *sample id*, not per slot (DESIGN.md §2): sample i uses
`sample_key = fold_in(key, i)` and a private event counter `c` (starting at 0):

  * every fresh prior draw (the first one, and budget restarts) is
    `sigma_0 * normal(fold_in(sample_key, c))`, then c += 1; the first draw is therefore exactly
    `solvers.prior_sample(key, ...)`'s;
  * every test (prior, transition, marginal) uses `ek = fold_in(sample_key, c)`, then c += 1:
    `u = uniform(fold_in(ek, 0))` and, if rejected, `eps = normal(fold_in(ek, 1))` (the re-noise
    of the cascade or the replacement draw of the prior test).

So sample i is a deterministic function of `(key, i)`: independent of the pool size, of which slot
runs it and of the other samples (batch invariance), and `output[i]` holds it.
The comparison is `log u < ...` with `u ~ U[0, 1)` (the reference adds 1e-7 to u, which can reject
a ratio of exactly 1; with a constant discriminator nothing here is ever rejected).

Cost accounting (spec §6, §13):
  * algorithmic NFE: every denoiser evaluation a sample needed (Euler + Heun, 1 on the final
    step), including work discarded by budget restarts (the reference's debug `total_nfe`);
  * executed NFE: `batch_size` x the number of batched denoiser calls;
  * discriminator calls likewise (algorithmic: slots tested; executed: `batch_size` x calls);
  * `sample_nfe[i]`: the reference's per-sample counter (reset on restart).

Slots whose sample id is >= `num_samples` are idle (masked); they cost executed but not
algorithmic work. Hyperparameters (tables, `max_iter`, sigmas, `max_rounds`) are traced:
changing them never recompiles. Shapes (`num_samples`, `batch_size`, sample shape, N) are static.

With `sharding`, the slot axis is split over a device mesh (each of n devices runs B / n slots).
Randomness follows sample ids and every pool-axis reduction is an integer count (or any/cumsum),
so the results are those of one device.
"""

from __future__ import annotations

import functools
import json
import math
import os
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jaxdiff.diffusion.schedules import broadcast_like
from jaxdiff.diffusion.solvers import check_sigmas, heun, heun_update, sample
from jaxdiff.files import atomic_savez, atomic_write_json, canonical_json, fingerprint

_INT_MAX = np.iinfo(np.int32).max

# --------------------------------------------------------------------------------------------
# Warm-up: quantile tables M, M'
# --------------------------------------------------------------------------------------------


class DiffRSTables(NamedTuple):
    """Acceptance constants in log space, indexed by grid position `k = 0..N`.

    Attributes:
      log_m: `[N + 1]` log M[k], marginal test constant (prior test uses k = 0).
      log_m_prime: `[N + 1]` log M'[k], transition test constant for the step k-1 -> k
        (entry 0 is unused and 0).
    """

    log_m: jax.Array
    log_m_prime: jax.Array


def warmup_logits(
    denoise: Callable,
    disc_logit: Callable,
    sigmas: jax.Array,
    key: jax.Array,
    num: int,
    sample_shape: tuple[int, ...],
    *,
    cond: Any = None,
    batch_size: int | None = None,
    offset: int = 0,
    dtype=jnp.float32,
) -> jax.Array:
    """Discriminator log-ratios along `num` base-sampler (deterministic Heun) trajectories.

    Trajectory i starts from `prior_sample(key, ..., offset=offset + i)` and is integrated with
    `solvers.sample(heun(), ...)`; at every grid point k the discriminator is evaluated on
    `(x_k, sigma_k)`, the clean end point included (sigma_N = 0).

    Args:
      denoise: `denoise(x [B, ...], sigma [B], cond) -> [B, ...]`.
      disc_logit: `disc_logit(x [B, ...], sigma [B], cond) -> [B]` log q/p estimate.
      sigmas: `[N + 1]` grid ending at 0 (may be traced).
      key: typed PRNG key (prior draws).
      num: W, the number of trajectories (static); a multiple of `batch_size`.
      sample_shape: per-sample shape, e.g. `(H, W, C)`.
      cond: `[num]` per-trajectory conditioning (labels) or None.
      batch_size: trajectories integrated at once (static; default all). Batches run under
        `lax.map`, so memory is bounded by one batch.

    Returns:
      `[num, N + 1]` float32 logits.
    """
    from jaxdiff.diffusion.solvers import prior_sample

    sigmas = check_sigmas(sigmas)
    bs = int(batch_size or num)
    if num < 1 or bs < 1 or num % bs:
        raise ValueError(f"num={num} must be a positive multiple of batch_size={bs}")
    nb = num // bs
    sigmas = sigmas.astype(dtype)
    n1 = sigmas.shape[0]
    sample_shape = tuple(int(s) for s in sample_shape)
    if cond is not None:
        cond = jax.tree.map(lambda c: jnp.reshape(c, (nb, bs) + jnp.shape(c)[1:]), cond)

    def one_batch(inp):
        b, c = inp
        off = jnp.asarray(offset, jnp.int32) + b * bs
        x_T = prior_sample(key, (bs, *sample_shape), sigmas[0], offset=off, dtype=dtype)
        _, aux = sample(heun(), denoise, x_T, sigmas, key, c, return_trajectory=True)

        def logit_k(inp_k):
            xk, sk = inp_k
            out = disc_logit(xk, jnp.broadcast_to(sk, (bs,)), c)
            return jnp.asarray(out, jnp.float32).reshape(bs)

        return lax.map(logit_k, (aux.trajectory, sigmas)).T  # [bs, N + 1]

    out = lax.map(one_batch, (jnp.arange(nb, dtype=jnp.int32), cond))
    return out.reshape(num, n1)


def rejection_tables(logits: jax.Array, gamma, *, clamp_zero=True) -> DiffRSTables:
    """log M and log M' as gamma-quantiles of warm-up log-ratios (spec §5).

        log M[k]  = Q_gamma{ l_k },             k = 0..N
        log M'[k] = Q_gamma{ l_k - l_{k-1} },   k = 1..N   (log M'[0] = 0)

    with linear-interpolation quantiles (PyTorch's and `jnp.quantile`'s default), then
    `max(., 0)` if `clamp_zero` (M >= 1; the reference's `--no_zero 0`).

    Args:
      logits: `[W, N + 1]` from `warmup_logits`.
      gamma: quantile in [0, 1] (traced; the reference's `--rej_percentile`, README 0.75).
      clamp_zero: bool, may be traced.
    """
    logits = jnp.asarray(logits, jnp.float32)
    if logits.ndim != 2 or logits.shape[1] < 2:
        raise ValueError(f"logits must be [W, N + 1] with N >= 1, got shape {logits.shape}")
    _check_unit(gamma, "gamma")
    gamma = jnp.asarray(gamma, jnp.float32)
    log_m = jnp.quantile(logits, gamma, axis=0, method="linear")
    trans = logits[:, 1:] - logits[:, :-1]
    log_mp = jnp.concatenate(
        [jnp.zeros((1,), jnp.float32), jnp.quantile(trans, gamma, axis=0, method="linear")])
    clamp = jnp.asarray(clamp_zero, bool)
    log_m = jnp.where(clamp, jnp.maximum(log_m, 0.0), log_m)
    log_mp = jnp.where(clamp, jnp.maximum(log_mp, 0.0), log_mp)
    return DiffRSTables(log_m, log_mp)


def _check_unit(v, name):
    try:
        host = np.asarray(v, np.float64)
    except (jax.errors.TracerArrayConversionError, jax.errors.ConcretizationTypeError, TypeError):
        return
    if host.ndim != 0 or not (0.0 <= float(host) <= 1.0):
        raise ValueError(f"{name} must be a scalar in [0, 1], got {v!r}")


def cache_key_hash(key: dict) -> str:
    """A stable 16-hex-digit hash of a JSON-able dict (sorted keys)."""
    return fingerprint(key)


def load_or_compute(cache_dir: str, key: dict, compute: Callable[[], dict]) -> dict[str, np.ndarray]:
    """Disk cache for warm-up results: `<cache_dir>/<prefix>-<hash(key)>.npz` (+ `.json` key).

    Cache the warm-up *logits* (they do not depend on gamma; `rejection_tables` is cheap), keyed
    by everything they depend on: model and discriminator identity (e.g. run dir + step or a
    parameter hash), grid (N, sigma_min, sigma_max, rho), warm-up size and seed. A stored key that
    differs from `key` (a hash collision) is an error.

    Args:
      cache_dir: directory (created).
      key: JSON-able dict; `key.get("name", "warmup")` prefixes the file name.
      compute: `() -> {name: array}` called on a miss.

    Returns:
      `{name: np.ndarray}`.
    """
    if not isinstance(key, dict) or not key:
        raise ValueError("key must be a non-empty dict describing what the cache depends on")
    os.makedirs(cache_dir, exist_ok=True)
    stem = os.path.join(cache_dir, f"{key.get('name', 'warmup')}-{cache_key_hash(key)}")
    canon = json.loads(canonical_json(key))
    if os.path.exists(stem + ".npz") and os.path.exists(stem + ".json"):
        with open(stem + ".json") as f:
            stored = json.load(f)
        if stored != canon:
            raise ValueError(f"cache {stem}.json holds another key: {stored} != {canon}")
        with np.load(stem + ".npz") as z:
            return {k: z[k] for k in z.files}
    out = {k: np.asarray(v) for k, v in compute().items()}
    atomic_savez(stem + ".npz", **out)
    atomic_write_json(stem + ".json", canon, sort_keys=True)   # written last: marks it complete
    return out


# --------------------------------------------------------------------------------------------
# The sampler
# --------------------------------------------------------------------------------------------


class DiffRSInfo(NamedTuple):
    """Statistics of a `diffrs_sample` run (all device arrays; no host syncs were made).

    Attributes:
      sample_nfe: `[num_samples]` int32, the reference's per-sample NFE (reset on restart).
      transition_tests / transition_accepts: `[N + 1]` int32 counts per grid index (0 unused).
      marginal_tests / marginal_accepts: `[N + 1]` int32 counts of cascade marginal tests.
      prior_tests / prior_accepts: int32 scalars.
      depth_hist: `[N + 1]` int32, cascades by depth (levels pushed back; 0 = accepted at once;
        a cascade that falls to idx 0 counts its full depth).
      restarts: int32, budget restarts.
      algorithmic_nfe / executed_nfe: int32 totals (see module docstring).
      disc_algorithmic / disc_executed: int32 totals of discriminator evaluations.
      rounds: int32, outer rounds run.
      complete: bool, every requested sample finished (False if `max_rounds` stopped the loop;
        unfinished output rows are zero).
    """

    sample_nfe: jax.Array
    transition_tests: jax.Array
    transition_accepts: jax.Array
    marginal_tests: jax.Array
    marginal_accepts: jax.Array
    prior_tests: jax.Array
    prior_accepts: jax.Array
    depth_hist: jax.Array
    restarts: jax.Array
    algorithmic_nfe: jax.Array
    executed_nfe: jax.Array
    disc_algorithmic: jax.Array
    disc_executed: jax.Array
    rounds: jax.Array
    complete: jax.Array

    @property
    def transition_accept_rate(self) -> jax.Array:
        """`[N + 1]` accepted / tested per index (NaN where untested, e.g. index 0)."""
        return jnp.asarray(self.transition_accepts) / jnp.asarray(self.transition_tests)

    @property
    def marginal_accept_rate(self) -> jax.Array:
        """`[N + 1]` accepted / tested marginal (cascade) tests per index (NaN where untested)."""
        return jnp.asarray(self.marginal_accepts) / jnp.asarray(self.marginal_tests)


class _Stats(NamedTuple):
    tt: jax.Array           # [N + 1] transition tests per index
    ta: jax.Array           # [N + 1] transition accepts
    mt: jax.Array           # [N + 1] marginal (cascade) tests
    ma: jax.Array           # [N + 1] marginal accepts
    pt: jax.Array           # prior tests
    pa: jax.Array           # prior accepts
    depth: jax.Array        # [N + 1] cascades by depth
    restarts: jax.Array
    alg_nfe: jax.Array
    exe_nfe: jax.Array
    disc_alg: jax.Array
    disc_exe: jax.Array


class _State(NamedTuple):
    x: jax.Array  # [B, ...]
    idx: jax.Array  # [B] int32 grid position
    lprev: jax.Array  # [B] f32 log-ratio of the last accepted state
    nfe: jax.Array  # [B] int32 per-trajectory NFE
    sid: jax.Array  # [B] int32 sample id (>= num_samples: idle slot)
    ctr: jax.Array  # [B] uint32 event counter of the sample
    next_id: jax.Array  # int32
    done: jax.Array  # int32 finished samples
    rounds: jax.Array  # int32
    out: jax.Array  # [num_samples, ...]
    out_nfe: jax.Array  # [num_samples] int32
    stats: _Stats


class _Pool(NamedTuple):
    """What every phase reads besides the state: the models, the grid and tables, the static
    shapes and the per-sample randomness (`key`, `offset`: sample i is `fold_in(key, offset + i)`).
    Built once per `diffrs_sample` call inside the trace."""

    denoise: Callable
    disc_logit: Callable
    sigmas: jax.Array      # [N + 1]
    log_m: jax.Array       # [N + 1]
    log_mp: jax.Array      # [N + 1]
    key: jax.Array
    offset: jax.Array
    labels: jax.Array | None
    max_iter: jax.Array
    num_samples: int
    batch_size: int
    sample_shape: tuple
    dtype: Any
    sharding: Any

    @property
    def n(self) -> int:
        return self.sigmas.shape[0] - 1


# --------------------------------------------------------------------------------------------
# Pool helpers: per-sample randomness, conditioning, placement, the two models
# --------------------------------------------------------------------------------------------


def _sample_keys(p: _Pool, sid):
    gid = (sid + p.offset).astype(jnp.uint32)
    return jax.vmap(lambda i: jax.random.fold_in(p.key, i))(gid)


def _prior_draw(p: _Pool, sid, ctr):
    """`sigma_0 * normal(fold_in(sample_key, ctr))` per slot: a fresh prior draw."""
    ks = _sample_keys(p, sid)
    eps = jax.vmap(lambda k, c: jax.random.normal(jax.random.fold_in(k, c), p.sample_shape,
                                                  p.dtype))(ks, ctr)
    return eps * p.sigmas[0]


def _event(p: _Pool, sid, ctr):
    """`(log u [B], eps [B, ...])` of each slot's current event (module docstring)."""
    def one(k, c):
        ek = jax.random.fold_in(k, c)
        u = jax.random.uniform(jax.random.fold_in(ek, 0), (), jnp.float32)
        eps = jax.random.normal(jax.random.fold_in(ek, 1), p.sample_shape, p.dtype)
        return jnp.log(u), eps

    return jax.vmap(one)(_sample_keys(p, sid), ctr)


def _cond_of(p: _Pool, sid):
    return None if p.labels is None else p.labels[jnp.clip(sid, 0, p.num_samples - 1)]


def _pin(p: _Pool, a):
    """Constrain pool-axis arrays (a pytree; None passes) to the pool's sharding."""
    if p.sharding is None:
        return a
    return jax.tree.map(lambda v: lax.with_sharding_constraint(v, p.sharding), a)


def _pin_state(p: _Pool, st: _State) -> _State:
    return st._replace(x=_pin(p, st.x), idx=_pin(p, st.idx), lprev=_pin(p, st.lprev),
                       nfe=_pin(p, st.nfe), sid=_pin(p, st.sid), ctr=_pin(p, st.ctr))


def _den(p: _Pool, x, sigma, c):
    out = p.denoise(*_pin(p, (x, sigma, c)))
    shape = (p.batch_size, *p.sample_shape)
    if jnp.shape(out) != shape or jnp.result_type(out) != jnp.dtype(p.dtype):
        raise ValueError(f"denoiser returned {jnp.shape(out)} {jnp.result_type(out)} for x "
                         f"{shape} {jnp.dtype(p.dtype)}")
    return out


def _disc(p: _Pool, x, sigma, c):
    out = jnp.asarray(p.disc_logit(*_pin(p, (x, sigma, c))))
    if out.size != p.batch_size:
        raise ValueError(f"disc_logit must return [B]={p.batch_size} logits, got shape "
                         f"{out.shape}")
    return out.reshape(p.batch_size).astype(jnp.float32)


def _active(p: _Pool, st: _State):
    return st.sid < p.num_samples


def _where(m, a, b):
    return jnp.where(broadcast_like(m, a), a, b)


# --------------------------------------------------------------------------------------------
# The phases of one outer round (diffrs.md §8: (b) step, (c) cascade, (d) budget, (e) harvest,
# then (a) prior tests for the next round)
# --------------------------------------------------------------------------------------------


def prior_phase(p: _Pool, st: _State) -> _State:
    """(a) Prior tests (diffrs.md §4.3): every slot at idx 0 is tested,
    `log u < l(x_0) - log M[0]`, and on rejection replaced by fresh noise `sigma_0 eps` and
    re-tested until accepted; an accept sets `lprev = l(x_0)`."""
    B, i32, s0 = p.batch_size, jnp.int32, p.sigmas[0]

    def body(c):
        st, pending = _pin_state(p, c[0]), _pin(p, c[1])
        logit = _disc(p, st.x, jnp.broadcast_to(s0, (B,)), _cond_of(p, st.sid))
        logu, eps = _event(p, st.sid, st.ctr)
        acc = logu < logit - p.log_m[0]
        rej, ok = pending & ~acc, pending & acc
        stats = st.stats._replace(
            pt=st.stats.pt + jnp.sum(pending, dtype=i32), pa=st.stats.pa + jnp.sum(ok, dtype=i32),
            disc_alg=st.stats.disc_alg + jnp.sum(pending, dtype=i32),
            disc_exe=st.stats.disc_exe + B)
        st = st._replace(x=_where(rej, eps * s0, st.x), lprev=jnp.where(ok, logit, st.lprev),
                         ctr=st.ctr + pending.astype(jnp.uint32), stats=stats)
        return st, rej

    pending0 = _pin(p, _active(p, st) & (st.idx == 0))
    st, _ = lax.while_loop(lambda c: jnp.any(c[1]), body, (st, pending0))
    return st


def step_phase(p: _Pool, st: _State) -> _State:
    """(b) One Heun step for every active slot, each at its own grid index idx -> idx + 1
    (`solvers.heun_update` with per-slot sigmas; the second evaluation runs, on the whole
    pool, only if some active slot is not on its final step; diffrs.md §6 counts)."""
    active = _active(p, st)
    i = jnp.clip(st.idx, 0, p.n - 1)
    s, s_next = p.sigmas[i], p.sigmas[i + 1]
    need2 = active & (s_next > 0)
    x_new, _ = heun_update(functools.partial(_den, p), st.x, s, s_next, _cond_of(p, st.sid),
                           needs_correction=need2)
    i32 = jnp.int32
    per = active.astype(i32) * (1 + need2.astype(i32))
    stats = st.stats._replace(
        alg_nfe=st.stats.alg_nfe + jnp.sum(per),
        exe_nfe=st.stats.exe_nfe + p.batch_size * (1 + jnp.any(need2).astype(i32)))
    return st._replace(x=_where(active, x_new, st.x), idx=st.idx + active.astype(i32),
                       nfe=st.nfe + per, stats=stats)


def cascade_phase(p: _Pool, st: _State) -> _State:
    """(c) The rejection cascade (diffrs.md §4.1-4.2): the first test of a slot after its step
    is the transition test `log u < l(x_idx) - lprev - log M'[idx]`; a rejection re-noises one
    level, `x += sqrt(sigma_{idx-1}^2 - sigma_idx^2) eps`, idx -= 1, followed by marginal tests
    `log u < l(x_idx) - log M[idx]` until accepted or idx = 0 (left to the prior test)."""
    start = st.idx

    def body(c):
        st, pending, first = _pin_state(p, c[0]), _pin(p, c[1]), _pin(p, c[2])
        i = jnp.clip(st.idx, 0, p.n)
        s = p.sigmas[i]
        logit = _disc(p, st.x, s, _cond_of(p, st.sid))
        logu, eps = _event(p, st.sid, st.ctr)
        acc = logu < logit - jnp.where(first, st.lprev + p.log_mp[i], p.log_m[i])
        ok, rej = pending & acc, pending & ~acc
        s_prev = p.sigmas[jnp.clip(i - 1, 0, p.n)]
        step_std = jnp.sqrt(jnp.maximum(jnp.square(s_prev) - jnp.square(s), 0.0))
        x = _where(rej, st.x + broadcast_like(step_std, st.x) * eps, st.x)
        idx = st.idx - rej.astype(jnp.int32)
        ended = ok | (rej & (idx == 0))
        stats = _cascade_stats(p, st.stats, i, pending, first, ok, ended,
                               depth=jnp.where(ended, start - idx, p.n + 1))
        st = st._replace(x=x, idx=idx, lprev=jnp.where(ok, logit, st.lprev),
                         ctr=st.ctr + pending.astype(jnp.uint32), stats=stats)
        return st, pending & ~ended, first & ~pending

    pending0 = _pin(p, _active(p, st))
    st, _, _ = lax.while_loop(lambda c: jnp.any(c[1]), body, (st, pending0, pending0))
    return st


def _cascade_stats(p: _Pool, stats: _Stats, i, pending, first, ok, ended, depth) -> _Stats:
    """Counts of one cascade round: tests/accepts per index by kind, cascade depths (index
    n + 1 = still running: dropped), discriminator calls."""
    i32 = jnp.int32
    onehot = lambda m: jnp.zeros((p.n + 1,), i32).at[i].add(m.astype(i32))  # noqa: E731
    return stats._replace(
        tt=stats.tt + onehot(pending & first), ta=stats.ta + onehot(ok & first),
        mt=stats.mt + onehot(pending & ~first), ma=stats.ma + onehot(ok & ~first),
        depth=stats.depth.at[depth].add(1, mode="drop"),
        disc_alg=stats.disc_alg + jnp.sum(pending, dtype=i32),
        disc_exe=stats.disc_exe + p.batch_size)


def budget_phase(p: _Pool, st: _State) -> _State:
    """(d) Budget restarts (diffrs.md §6): a slot whose `nfe + 2 (N - idx) - 1 > max_iter`
    starts again from a fresh prior draw (idx 0, nfe 0)."""
    restart = _active(p, st) & (st.nfe + 2 * (p.n - st.idx) - 1 > p.max_iter)
    fresh = _prior_draw(p, st.sid, st.ctr)
    return st._replace(
        x=_where(restart, fresh, st.x), idx=jnp.where(restart, 0, st.idx),
        nfe=jnp.where(restart, 0, st.nfe), lprev=jnp.where(restart, 0.0, st.lprev),
        ctr=st.ctr + restart.astype(jnp.uint32),
        stats=st.stats._replace(restarts=st.stats.restarts + jnp.sum(restart, dtype=jnp.int32)))


def harvest_phase(p: _Pool, st: _State) -> _State:
    """(e) Harvest (diffrs.md §7): slots accepted at idx = N write their sample to the output
    row of their sample id and take the next sample ids (fresh prior draws, counters reset)."""
    i32 = jnp.int32
    fin = _active(p, st) & (st.idx == p.n)
    widx = jnp.where(fin, st.sid, p.num_samples)  # out of range: dropped
    rank = jnp.cumsum(fin.astype(i32)) - 1
    nfin = jnp.sum(fin, dtype=i32)
    new_sid = jnp.where(fin, jnp.minimum(st.next_id + rank, p.num_samples), st.sid)
    fresh = _prior_draw(p, new_sid, jnp.zeros((p.batch_size,), jnp.uint32))
    return st._replace(
        x=_where(fin, fresh, st.x), idx=jnp.where(fin, 0, st.idx),
        nfe=jnp.where(fin, 0, st.nfe), lprev=jnp.where(fin, 0.0, st.lprev), sid=new_sid,
        ctr=jnp.where(fin, jnp.uint32(1), st.ctr), next_id=st.next_id + nfin,
        done=st.done + nfin, out=st.out.at[widx].set(st.x, mode="drop"),
        out_nfe=st.out_nfe.at[widx].set(st.nfe, mode="drop"))


def _initial_state(p: _Pool) -> _State:
    """Slots 0..B-1 take samples 0..B-1 (idle beyond num_samples) at their first prior draw."""
    B, i32 = p.batch_size, jnp.int32
    sid0 = jnp.minimum(jnp.arange(B, dtype=i32), p.num_samples)
    zn, z = jnp.zeros((p.n + 1,), i32), jnp.zeros((), i32)
    return _State(
        x=_prior_draw(p, sid0, jnp.zeros((B,), jnp.uint32)), idx=jnp.zeros((B,), i32),
        lprev=jnp.zeros((B,), jnp.float32), nfe=jnp.zeros((B,), i32), sid=sid0,
        ctr=jnp.ones((B,), jnp.uint32), next_id=jnp.asarray(min(B, p.num_samples), i32),
        done=z, rounds=z, out=jnp.zeros((p.num_samples, *p.sample_shape), p.dtype),
        out_nfe=jnp.zeros((p.num_samples,), i32),
        stats=_Stats(zn, zn, zn, zn, z, z, zn, z, z, z, z, z))


def _round(p: _Pool, st: _State) -> _State:
    """One outer round: (b) step, (c) cascade, (d) budget, (e) harvest, (a) prior."""
    st = step_phase(p, _pin_state(p, st))
    st = cascade_phase(p, st)
    st = budget_phase(p, st)
    st = harvest_phase(p, st)
    st = prior_phase(p, st)
    return st._replace(rounds=st.rounds + 1)


def _info(st: _State, num_samples: int) -> DiffRSInfo:
    s = st.stats
    return DiffRSInfo(
        sample_nfe=st.out_nfe, transition_tests=s.tt, transition_accepts=s.ta,
        marginal_tests=s.mt, marginal_accepts=s.ma, prior_tests=s.pt, prior_accepts=s.pa,
        depth_hist=s.depth, restarts=s.restarts, algorithmic_nfe=s.alg_nfe,
        executed_nfe=s.exe_nfe, disc_algorithmic=s.disc_alg, disc_executed=s.disc_exe,
        rounds=st.rounds, complete=st.done >= num_samples)


def diffrs_sample(
    denoise: Callable,
    disc_logit: Callable,
    sigmas: jax.Array,
    tables: DiffRSTables,
    key: jax.Array,
    *,
    num_samples: int,
    batch_size: int,
    sample_shape: tuple[int, ...],
    labels: jax.Array | None = None,
    max_iter=None,
    max_rounds=None,
    offset=0,
    dtype=jnp.float32,
    sharding: jax.sharding.NamedSharding | None = None,
) -> tuple[jax.Array, DiffRSInfo]:
    """Draw `num_samples` DiffRS samples with a pool of `batch_size` slots (jit from outside).

    Args:
      denoise: `denoise(x [B, ...], sigma [B], cond) -> x0_hat [B, ...]` (EDM/VE convention; bind
        parameters with a closure).
      disc_logit: `disc_logit(x [B, ...], sigma [B], cond) -> [B]` estimated log q_sigma/p_sigma
        at the VE state (x, sigma); the VE -> VP conversion lives in the wrapper
        (`jaxdiff.diffusion.discriminator.logit_fn`). Called with sigma = 0 at the final index.
      sigmas: `[N + 1]` strictly decreasing grid with `sigmas[N] = 0` (e.g. `karras_sigmas(N)`);
        may be traced.
      tables: `DiffRSTables` (`rejection_tables(warmup_logits(...), gamma)`); traced.
      key: typed PRNG key; sample i uses `fold_in(key, i)` (module docstring).
      num_samples: output rows (static).
      batch_size: slots in the pool, B (static).
      sample_shape: per-sample shape (static), e.g. `(8, 8, 1)`.
      labels: `[num_samples]` per-sample conditioning passed as `cond` (gathered per slot), or None.
      max_iter: per-trajectory NFE budget (traced int; None = unbounded, the reference's 999999;
        its CIFAR-10 README uses 105 = 3 x 35).
      max_rounds: safety bound on outer rounds (traced int; None = unbounded). If it stops the loop
        `info.complete` is False.
      offset: global index of output row 0 (traced int): row i is sample `offset + i` and uses
        `fold_in(key, offset + i)`, so consecutive calls with offsets 0, n, 2n, ... equal one
        big call (and `solvers.prior_sample(..., offset=offset)` gives the same first draws).
      sharding: placement of the pool, for arrays whose leading axis is the slot axis `[B, ...]`
        (e.g. `sharding.batch_sharding(mesh)`), or None (no constraint). When given, every
        per-slot array of the loop carries (x `[B, *sample_shape]`; idx, lprev, nfe, sample id,
        event counter and the pending masks `[B]`) and the inputs of the denoiser and
        discriminator calls are pinned to it with `with_sharding_constraint`, so each device
        steps and tests its own B / n slots. The loop carries are otherwise free for the
        partitioner to lay out (it may replicate them, doing the model work n times over).
        The output buffer `[num_samples, ...]` and the statistics are left unconstrained:
        harvest writes rows by sample id, which is not aligned with slots. Results do not
        depend on it (randomness is per sample id and every pool-axis reduction is an integer
        count). B must be a multiple of the number of devices the leading axis is split over.

    Returns:
      `(samples [num_samples, *sample_shape], DiffRSInfo)`.
    """
    p = _pool(denoise, disc_logit, sigmas, tables, key, num_samples=num_samples,
              batch_size=batch_size, sample_shape=sample_shape, labels=labels,
              max_iter=max_iter, offset=offset, dtype=dtype, sharding=sharding)
    max_rounds = jnp.asarray(_INT_MAX if max_rounds is None else max_rounds, jnp.int32)
    st = prior_phase(p, _pin_state(p, _initial_state(p)))
    st = lax.while_loop(lambda st: (st.done < p.num_samples) & (st.rounds < max_rounds),
                        functools.partial(_round, p), st)
    return st.out, _info(st, p.num_samples)


def _pool(denoise, disc_logit, sigmas, tables, key, *, num_samples, batch_size, sample_shape,
          labels, max_iter, offset, dtype, sharding) -> _Pool:
    """Check the arguments of `diffrs_sample` and bundle them (ValueError names the bad one)."""
    sigmas = check_sigmas(sigmas).astype(dtype)
    n = sigmas.shape[0] - 1
    num_samples, batch_size = int(num_samples), int(batch_size)
    if num_samples < 1:
        raise ValueError(f"num_samples must be >= 1, got {num_samples}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if sharding is not None and batch_size % _leading_shards(sharding):
        raise ValueError(f"batch_size={batch_size} must be a multiple of the mesh size "
                         f"{_leading_shards(sharding)} (devices the pool is sharded over)")
    _check_final_zero(sigmas)
    log_m = jnp.asarray(tables.log_m, jnp.float32)
    log_mp = jnp.asarray(tables.log_m_prime, jnp.float32)
    if log_m.shape != (n + 1,) or log_mp.shape != (n + 1,):
        raise ValueError(
            f"tables must be [N + 1] = [{n + 1}] for a grid of {n} steps; got log_m "
            f"{log_m.shape}, log_m_prime {log_mp.shape}")
    if labels is not None:
        labels = jnp.asarray(labels)
        if labels.shape[:1] != (num_samples,):
            raise ValueError(f"labels must be [num_samples]={num_samples}, got {labels.shape}")
    return _Pool(denoise, disc_logit, sigmas, log_m, log_mp, key,
                 jnp.asarray(offset, jnp.int32), labels,
                 jnp.asarray(_INT_MAX if max_iter is None else max_iter, jnp.int32),
                 num_samples, batch_size, tuple(int(s) for s in sample_shape), dtype, sharding)


def _leading_shards(sharding: jax.sharding.NamedSharding) -> int:
    """How many ways `sharding` splits an array's leading axis."""
    spec = sharding.spec
    if not spec or spec[0] is None:
        return 1
    names = spec[0] if isinstance(spec[0], tuple) else (spec[0],)
    return math.prod(sharding.mesh.shape[a] for a in names)


def _check_final_zero(sigmas):
    try:
        last = float(np.asarray(sigmas)[-1])
    except (jax.errors.TracerArrayConversionError, jax.errors.ConcretizationTypeError):
        return
    if last != 0.0:
        raise ValueError(f"sigmas must end at 0 (DiffRS scores the clean sample), got {last:g}")


def diffrs(
    denoise: Callable,
    disc_logit: Callable,
    sigmas: jax.Array,
    warmup: jax.Array,
    gamma,
    key: jax.Array,
    *,
    clamp_zero=True,
    **kwargs,
) -> tuple[jax.Array, DiffRSInfo]:
    """Convenience: `diffrs_sample` with tables `rejection_tables(warmup, gamma, clamp_zero)`.

    `warmup` is the `[W, N + 1]` output of `warmup_logits`; gamma is traced. Other keyword
    arguments (`num_samples`, `batch_size`, ..., `sharding`) go to `diffrs_sample`.
    """
    tables = rejection_tables(warmup, gamma, clamp_zero=clamp_zero)
    return diffrs_sample(denoise, disc_logit, sigmas, tables, key, **kwargs)
