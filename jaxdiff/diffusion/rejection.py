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
from jaxdiff.files import fingerprint
from jaxdiff.diffusion.solvers import check_sigmas, heun, sample

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
    canon = json.loads(json.dumps(key, sort_keys=True, default=str))
    if os.path.exists(stem + ".npz") and os.path.exists(stem + ".json"):
        with open(stem + ".json") as f:
            stored = json.load(f)
        if stored != canon:
            raise ValueError(f"cache {stem}.json holds another key: {stored} != {canon}")
        with np.load(stem + ".npz") as z:
            return {k: z[k] for k in z.files}
    out = {k: np.asarray(v) for k, v in compute().items()}
    tmp = stem + ".tmp.npz"
    np.savez(tmp, **out)
    os.replace(tmp, stem + ".npz")
    with open(stem + ".json.tmp", "w") as f:
        json.dump(canon, f, indent=2, sort_keys=True)
    os.replace(stem + ".json.tmp", stem + ".json")
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
    tt: jax.Array
    ta: jax.Array
    mt: jax.Array
    ma: jax.Array
    pt: jax.Array
    pa: jax.Array
    depth: jax.Array
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
    sigmas = check_sigmas(sigmas).astype(dtype)
    n = sigmas.shape[0] - 1
    sample_shape = tuple(int(s) for s in sample_shape)
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
    max_iter = jnp.asarray(_INT_MAX if max_iter is None else max_iter, jnp.int32)
    max_rounds = jnp.asarray(_INT_MAX if max_rounds is None else max_rounds, jnp.int32)
    B = batch_size
    shape = (B, *sample_shape)
    s0 = sigmas[0]
    i32 = jnp.int32

    offset = jnp.asarray(offset, jnp.int32)

    def sample_key(sid):
        gid = (sid + offset).astype(jnp.uint32)
        return jax.vmap(lambda i: jax.random.fold_in(key, i))(gid)

    def prior_draw(sid, ctr):
        ks = sample_key(sid)
        eps = jax.vmap(lambda k, c: jax.random.normal(jax.random.fold_in(k, c), sample_shape,
                                                      dtype))(ks, ctr)
        return eps * s0

    def event(sid, ctr):
        """`(log u [B], eps [B, ...])` of each slot's current event."""
        ks = sample_key(sid)

        def one(k, c):
            ek = jax.random.fold_in(k, c)
            u = jax.random.uniform(jax.random.fold_in(ek, 0), (), jnp.float32)
            eps = jax.random.normal(jax.random.fold_in(ek, 1), sample_shape, dtype)
            return jnp.log(u), eps

        return jax.vmap(one)(ks, ctr)

    def cond_of(sid):
        if labels is None:
            return None
        return labels[jnp.clip(sid, 0, num_samples - 1)]

    def pin(a):
        """Constrain pool-axis arrays (a pytree; None passes) to `sharding`."""
        if sharding is None:
            return a
        return jax.tree.map(lambda v: lax.with_sharding_constraint(v, sharding), a)

    def pin_state(st: _State) -> _State:
        return st._replace(x=pin(st.x), idx=pin(st.idx), lprev=pin(st.lprev), nfe=pin(st.nfe),
                           sid=pin(st.sid), ctr=pin(st.ctr))

    def den(x, sigma, c):
        out = denoise(*pin((x, sigma, c)))
        if jnp.shape(out) != shape or jnp.result_type(out) != jnp.dtype(dtype):
            raise ValueError(f"denoiser returned {jnp.shape(out)} {jnp.result_type(out)} for x "
                             f"{shape} {jnp.dtype(dtype)}")
        return out

    def disc(x, sigma, c):
        out = jnp.asarray(disc_logit(*pin((x, sigma, c))))
        if out.size != B:
            raise ValueError(f"disc_logit must return [B]={B} logits, got shape {out.shape}")
        return out.reshape(B).astype(jnp.float32)

    def active_of(st):
        return st.sid < num_samples

    def where_b(m, a, b):
        return jnp.where(broadcast_like(m, a), a, b)

    # ---- phases ------------------------------------------------------------------------------

    def prior_phase(st: _State) -> _State:
        pending0 = active_of(st) & (st.idx == 0)

        def cond(c):
            return jnp.any(c[1])

        def body(c):
            st, pending = pin_state(c[0]), pin(c[1])
            cnd = cond_of(st.sid)
            logit = disc(st.x, jnp.broadcast_to(s0, (B,)), cnd)
            logu, eps = event(st.sid, st.ctr)
            acc = logu < logit - log_m[0]
            rej = pending & ~acc
            ok = pending & acc
            stats = st.stats._replace(
                pt=st.stats.pt + jnp.sum(pending, dtype=i32),
                pa=st.stats.pa + jnp.sum(ok, dtype=i32),
                disc_alg=st.stats.disc_alg + jnp.sum(pending, dtype=i32),
                disc_exe=st.stats.disc_exe + B)
            st = st._replace(
                x=where_b(rej, eps * s0, st.x),
                lprev=jnp.where(ok, logit, st.lprev),
                ctr=st.ctr + pending.astype(jnp.uint32),
                stats=stats)
            return st, rej

        st, _ = lax.while_loop(cond, body, (st, pin(pending0)))
        return st

    def step_phase(st: _State) -> _State:
        active = active_of(st)
        cnd = cond_of(st.sid)
        i = jnp.clip(st.idx, 0, n - 1)
        s, s_next = sigmas[i], sigmas[i + 1]
        x = st.x
        sb, snb = broadcast_like(s, x), broadcast_like(s_next, x)
        # Same expressions as solvers.heun_update, with per-slot sigmas.
        d = (x - den(x, s, cnd)) / sb
        x_e = x + (snb - sb) * d
        need2 = active & (s_next > 0)
        any2 = jnp.any(need2)

        def correct(_):
            s_safe = jnp.where(s_next > 0, s_next, 1.0)
            ssb = broadcast_like(s_safe, x)
            d2 = (x_e - den(x_e, s_safe, cnd)) / ssb
            return x + (snb - sb) * (0.5 * (d + d2))

        x_h = lax.cond(any2, correct, lambda _: x_e, None)
        x_new = where_b(need2, x_h, x_e)
        per = active.astype(i32) * (1 + need2.astype(i32))
        stats = st.stats._replace(
            alg_nfe=st.stats.alg_nfe + jnp.sum(per),
            exe_nfe=st.stats.exe_nfe + B * (1 + any2.astype(i32)))
        return st._replace(x=where_b(active, x_new, x), idx=st.idx + active.astype(i32),
                           nfe=st.nfe + per, stats=stats)

    def cascade_phase(st: _State) -> _State:
        pending0 = active_of(st)
        start = st.idx

        def cond(c):
            return jnp.any(c[1])

        def body(c):
            st, pending, first = pin_state(c[0]), pin(c[1]), pin(c[2])
            i = jnp.clip(st.idx, 0, n)
            s = sigmas[i]
            cnd = cond_of(st.sid)
            logit = disc(st.x, s, cnd)
            logu, eps = event(st.sid, st.ctr)
            thr = jnp.where(first, st.lprev + log_mp[i], log_m[i])
            acc = logu < logit - thr
            ok = pending & acc
            rej = pending & ~acc
            ip = jnp.clip(i - 1, 0, n)
            step_std = jnp.sqrt(jnp.maximum(jnp.square(sigmas[ip]) - jnp.square(s), 0.0))
            x = where_b(rej, st.x + broadcast_like(step_std, st.x) * eps, st.x)
            idx = st.idx - rej.astype(i32)
            fell = rej & (idx == 0)
            ended = ok | fell
            depth = jnp.where(ended, start - idx, n + 1)  # n + 1: dropped
            onehot = lambda m: jnp.zeros((n + 1,), i32).at[i].add(m.astype(i32))  # noqa: E731
            stats = st.stats._replace(
                tt=st.stats.tt + onehot(pending & first),
                ta=st.stats.ta + onehot(ok & first),
                mt=st.stats.mt + onehot(pending & ~first),
                ma=st.stats.ma + onehot(ok & ~first),
                depth=st.stats.depth.at[depth].add(1, mode="drop"),
                disc_alg=st.stats.disc_alg + jnp.sum(pending, dtype=i32),
                disc_exe=st.stats.disc_exe + B)
            st = st._replace(x=x, idx=idx, lprev=jnp.where(ok, logit, st.lprev),
                             ctr=st.ctr + pending.astype(jnp.uint32), stats=stats)
            return st, pending & ~ended, first & ~pending

        st, _, _ = lax.while_loop(cond, body, (st, pin(pending0), pin(pending0)))
        return st

    def budget_phase(st: _State) -> _State:
        active = active_of(st)
        restart = active & (st.nfe + 2 * (n - st.idx) - 1 > max_iter)
        fresh = prior_draw(st.sid, st.ctr)
        return st._replace(
            x=where_b(restart, fresh, st.x),
            idx=jnp.where(restart, 0, st.idx),
            nfe=jnp.where(restart, 0, st.nfe),
            lprev=jnp.where(restart, 0.0, st.lprev),
            ctr=st.ctr + restart.astype(jnp.uint32),
            stats=st.stats._replace(restarts=st.stats.restarts + jnp.sum(restart, dtype=i32)))

    def harvest_phase(st: _State) -> _State:
        fin = active_of(st) & (st.idx == n)
        widx = jnp.where(fin, st.sid, num_samples)  # out of range: dropped
        out = st.out.at[widx].set(st.x, mode="drop")
        out_nfe = st.out_nfe.at[widx].set(st.nfe, mode="drop")
        rank = jnp.cumsum(fin.astype(i32)) - 1
        nfin = jnp.sum(fin, dtype=i32)
        new_sid = jnp.where(fin, jnp.minimum(st.next_id + rank, num_samples), st.sid)
        zero = jnp.zeros((B,), jnp.uint32)
        fresh = prior_draw(new_sid, zero)
        return st._replace(
            x=where_b(fin, fresh, st.x),
            idx=jnp.where(fin, 0, st.idx),
            nfe=jnp.where(fin, 0, st.nfe),
            lprev=jnp.where(fin, 0.0, st.lprev),
            sid=new_sid,
            ctr=jnp.where(fin, jnp.uint32(1), st.ctr),
            next_id=st.next_id + nfin,
            done=st.done + nfin,
            out=out, out_nfe=out_nfe)

    # ---- driver ------------------------------------------------------------------------------

    sid0 = jnp.minimum(jnp.arange(B, dtype=i32), num_samples)
    zn = jnp.zeros((n + 1,), i32)
    z = jnp.zeros((), i32)
    st = _State(
        x=prior_draw(sid0, jnp.zeros((B,), jnp.uint32)),
        idx=jnp.zeros((B,), i32),
        lprev=jnp.zeros((B,), jnp.float32),
        nfe=jnp.zeros((B,), i32),
        sid=sid0,
        ctr=jnp.ones((B,), jnp.uint32),
        next_id=jnp.asarray(min(B, num_samples), i32),
        done=z, rounds=z,
        out=jnp.zeros((num_samples, *sample_shape), dtype),
        out_nfe=jnp.zeros((num_samples,), i32),
        stats=_Stats(zn, zn, zn, zn, z, z, zn, z, z, z, z, z),
    )
    st = prior_phase(pin_state(st))

    def outer_cond(st):
        return (st.done < num_samples) & (st.rounds < max_rounds)

    def outer_body(st):
        st = step_phase(pin_state(st))
        st = cascade_phase(st)
        st = budget_phase(st)
        st = harvest_phase(st)
        st = prior_phase(st)
        return st._replace(rounds=st.rounds + 1)

    st = lax.while_loop(outer_cond, outer_body, st)
    s = st.stats
    info = DiffRSInfo(
        sample_nfe=st.out_nfe, transition_tests=s.tt, transition_accepts=s.ta,
        marginal_tests=s.mt, marginal_accepts=s.ma, prior_tests=s.pt, prior_accepts=s.pa,
        depth_hist=s.depth, restarts=s.restarts, algorithmic_nfe=s.alg_nfe,
        executed_nfe=s.exe_nfe, disc_algorithmic=s.disc_alg, disc_executed=s.disc_exe,
        rounds=st.rounds, complete=st.done >= num_samples)
    return st.out, info


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
