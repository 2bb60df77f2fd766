"""Reward-guided batch samplers: LiDAR and its test-time baselines (lidar.md), in the
`batch_samplers` contract, with their settings and the rewards they steer by.

Methods (`REWARD_SAMPLERS`, each `make(ctx, settings, reward) -> BatchSampler`):

* `lidar`     lookahead phase (`num_lookahead` samples, `lookahead_steps` steps of
              `lookahead_solver`, rewards once), optional subset (`subset` > 0 of them, mode
              "random" | "top"), then the main solver with the LiDAR-shifted denoiser
              (`guidance.lidar_sample`) using `lam`, `scale`, `window`;
* `gradient`  DPS / Universal-Guidance forward guidance through Tweedie's estimate
              (`guidance.gradient_guidance_sample`); needs a differentiable reward;
* `best_of_n` `group_size` base-solver draws per output sample, the highest-reward one kept;
* `svdd`      SVDD-PM: `num_candidates` DDIM(eta) candidates per step, `temperature` (0 = argmax);
* `fk`        FK steering (SMC) over groups of `num_particles` consecutive samples.

LiDAR's lookahead set is a one-off cost shared by every particle: it is drawn on the first batch
from `fold_in(key, guidance.LOOKAHEAD_STREAM)` (independent of the batch offset), validated on the
host (NaN rewards -> ValueError), cached and reused by every later batch; its grid is a
`lookahead_steps`-step Karras grid between the main grid's first and last positive level.

Rewards (`RewardSettings`; `reward(x0 [N, H, W, C]) -> [N]` on clean samples in the denoiser's
space): `class_logprob` (log p(y = target | x): the quality network of the data set, or the exact
class posterior of an analytic mixture; differentiable), `brightness` (mean pixel value;
differentiable), `ink` (fraction of pixels above `threshold`; piecewise constant, not
differentiable).

aux per batch: `nfe`; `denoiser_fwd`, `denoiser_bwd`, `reward_fwd`, `reward_bwd` per output
sample (exact counts of the guided phase); LiDAR adds the one-off lookahead totals
`lookahead_denoiser_fwd`, `lookahead_reward_fwd`, `lookahead_size`, `lookahead_reward_mean`/
`_max`; best-of-N / SVDD / FK add `reward_mean`; `nfe_executed` = `denoiser_fwd`.
Hyperparameters (`lam`, `scale`, the window, temperature, ESS threshold) are traced; shapes,
step and candidate counts are static.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxdiff import sharding as shd
from jaxdiff.diffusion import guidance as GD
from jaxdiff.diffusion import lookahead as L
from jaxdiff.diffusion import rewards as RW
from jaxdiff.diffusion import solvers
from jaxdiff.diffusion.batch_samplers import BatchSampler, DenoiserSource, SamplingContext
from jaxdiff.diffusion.quality_net import QualityNetSpec, get_quality_net

REWARDS = ("class_logprob", "brightness", "ink")


# ----------------------------------------------------------------------------- settings
class RewardSettings(NamedTuple):
    """`name` in REWARDS; `target` class (class_logprob); `clip` samples to [-1, 1] first;
    `threshold` (ink); `quality`: the quality network of class_logprob on image data (defaults
    equal `sample_digits`'s quality section, so the cached net is shared)."""

    name: str = "class_logprob"
    target: int = 0
    clip: bool = True
    threshold: float = 0.0
    quality: dict = {"seed": 0, "width": 32, "feature_dim": 64, "epochs": 20,
                     "batch_size": 128, "lr": 1e-3}


class LidarSettings(NamedTuple):
    num_lookahead: int = 50
    lookahead_steps: int = 5
    lookahead_solver: str = "dpmpp_2m"
    lookahead_rho: float = 7.0
    subset: int = 0                  # 0 = the whole lookahead set
    subset_mode: str = "random"      # "random" | "top"
    lam: float = 1.0
    scale: float = 1.0
    window: tuple = (0.0, 1e9)       # (sigma_lo, sigma_hi) where guidance acts
    reward: RewardSettings = RewardSettings()


class GradientSettings(NamedTuple):
    lam: float = 1.0
    scale: float = 1.0
    window: tuple = (0.0, 1e9)
    reward: RewardSettings = RewardSettings()


class BestOfNSettings(NamedTuple):
    group_size: int = 4
    reward: RewardSettings = RewardSettings()


class SVDDSettings(NamedTuple):
    num_candidates: int = 4
    temperature: float = 0.0
    reward: RewardSettings = RewardSettings()


class FKSettings(NamedTuple):
    num_particles: int = 4
    lam: float = 1.0
    potential: str = "diff"          # guidance.FK_POTENTIALS
    resample: str = "all"            # "all" or "start,end,freq" on the step index
    ess_threshold: float = 0.5
    reward: RewardSettings = RewardSettings()


# ----------------------------------------------------------------------------- rewards
class Reward(NamedTuple):
    """A reward bound to its arrays.

    Attributes:
      name: one of `REWARDS`.
      state: array pytree passed into jitted samplers as an argument (quality net, mixture).
      make: `state -> reward_fn(x0: [N, ...]) -> [N] float32` (called inside the traced function).
      differentiable: whether gradient guidance may use it.
      description: one line for logs.
    """

    name: str
    state: Any
    make: Callable
    differentiable: bool
    description: str


def make_reward(settings: RewardSettings, source: DenoiserSource, data_dir: str = "") -> Reward:
    """The `Reward` of `settings` for `source`. ValueError for a target class the source does not
    have, or `class_logprob` on a source that is neither a mixture nor an image data set."""
    name, clip = settings.name, bool(settings.clip)
    if name not in REWARDS:
        raise ValueError(f"unknown reward {name!r}; valid: {list(REWARDS)}")
    prep = (lambda x: jnp.clip(x, -1.0, 1.0)) if clip else (lambda x: x)  # noqa: E731
    if name == "brightness":
        def make(_):
            return lambda x: jnp.mean(prep(x).reshape(x.shape[0], -1).astype(jnp.float32), -1)
        return Reward(name, (), make, True, f"mean pixel value{' (clipped)' if clip else ''}")
    if name == "ink":
        thr = float(settings.threshold)

        def make(_):
            return lambda x: jnp.mean((x.reshape(x.shape[0], -1) > thr).astype(jnp.float32), -1)
        return Reward(name, (), make, False, f"fraction of pixels > {thr:g} (not differentiable)")
    return _class_logprob(settings, source, data_dir, prep)


def _class_logprob(settings: RewardSettings, source: DenoiserSource, data_dir, prep) -> Reward:
    target = int(settings.target)
    if source.gmm is not None:
        g = source.gmm
        if not 0 <= target < g.num_components or not np.any(np.asarray(g.labels) == target):
            raise ValueError(f"config key 'guidance.reward.target' = {target} is not a class of "
                             f"the mixture (0 .. {g.num_components - 1})")

        def make(gm):
            r = RW.class_log_posterior_reward(gm, target)
            return lambda x: r(x).astype(jnp.float32)
        return Reward("class_logprob", g, make, True,
                      f"log p(y={target} | x), exact mixture posterior")
    if not source.dataset:
        raise ValueError("reward 'class_logprob' needs an image data set source (a trained "
                         "digits model) or source=gmm")
    q = settings.quality
    net = get_quality_net(QualityNetSpec(
        source.dataset, image_size=source.image_size, seed=int(q["seed"]), width=int(q["width"]),
        feature_dim=int(q["feature_dim"]), epochs=int(q["epochs"]),
        batch_size=int(q["batch_size"]), lr=float(q["lr"]), data_dir=data_dir))
    if not 0 <= target < net.num_classes:
        raise ValueError(f"config key 'guidance.reward.target' = {target} outside "
                         f"[0, {net.num_classes})")

    def make(qn):
        # The quality net reads model-space images (uint8 / 127.5 - 1), the denoiser's space.
        return lambda x: qn.log_prob(prep(x), jnp.full((x.shape[0],), target, jnp.int32))
    return Reward("class_logprob", net, make, True,
                  f"log p(y={target} | x) of the {source.dataset} quality net "
                  f"(test acc. {100 * net.test_accuracy:.1f} %)")


# ----------------------------------------------------------------------------- shared pieces
def _cost_aux(cost: L.Cost, rows: int) -> dict:
    per = {k: v.astype(jnp.float32) / rows for k, v in cost._asdict().items()}
    return {**per, "nfe_executed": per["denoiser_fwd"]}


def _prior(ctx: SamplingContext, key, offset, sigma0, rows_per_sample: int = 1):
    """x_T `[B * m, ...]` of output samples offset .. offset + B - 1, m draws each (draw j of
    sample i has global index (offset + i) * m + j), and the labels `[B * m]`."""
    m, b = rows_per_sample, ctx.batch_size
    x_T = solvers.prior_sample(key, (b * m, *ctx.source.sample_shape), sigma0, offset=offset * m)
    x_T = jax.lax.with_sharding_constraint(x_T, shd.batch_sharding(ctx.mesh))
    idx = (jnp.arange(b * m, dtype=jnp.int32) // m) + offset
    cond = None if ctx.label_fn is None else ctx.label_fn(idx)
    return x_T, cond


def _shard(ctx: SamplingContext, x):
    return jax.lax.with_sharding_constraint(x, shd.batch_sharding(ctx.mesh))


def _scalars(*vals):
    return tuple(jnp.float32(v) for v in vals)


def fk_resample_mask(spec: str, steps: int) -> np.ndarray:
    """`[steps]` bool of FK's resampling steps: "all", or "start,end,freq" on the step index."""
    if str(spec) == "all":
        return np.ones(steps, bool)
    try:
        start, end, freq = (int(v) for v in str(spec).split(","))
    except ValueError:
        raise ValueError(f"config key 'guidance.resample' = {spec!r} must be 'all' or "
                         "'start,end,freq' (step indices)") from None
    return GD.fk_resample_schedule(steps, start, end, freq)


# ----------------------------------------------------------------------------- samplers
def lidar_sampler(ctx: SamplingContext, p: LidarSettings, reward: Reward) -> BatchSampler:
    """LiDAR (see the module docstring); `fn.lookahead(state, key, sigmas)` is the cached set."""
    rstate = shd.replicate(reward.state, ctx.mesh)
    n, make_den = p.num_lookahead, ctx.source.make_denoise

    @jax.jit
    def phase1(state, rstate, key, lsig):
        cond = None if ctx.label_fn is None else ctx.label_fn(jnp.arange(n, dtype=jnp.int32))
        look = L.lookahead_phase(jax.random.fold_in(key, GD.LOOKAHEAD_STREAM), make_den(state),
                                 reward.make(rstate), (n, *ctx.source.sample_shape), sigmas=lsig,
                                 solver=p.lookahead_solver, cond=cond)
        if p.subset:
            look = L.select_lookahead(look, p.subset, mode=p.subset_mode,
                                      key=jax.random.fold_in(key, GD.SUBSET_STREAM))
        return look

    @jax.jit
    def phase2(state, look, key, offset, sigmas, hparams, lam, scale, lo, hi):
        solver = solvers.get_solver(ctx.solver_name, **hparams)
        x_T, cond = _prior(ctx, key, offset, sigmas[0])
        x, aux = GD.lidar_sample(key, make_den(state), look, x_T, sigmas, lam=lam, scale=scale,
                                 window=(lo, hi), solver=solver, cond=cond, offset=offset)
        used = jnp.maximum(jnp.sum(look.mask), 1)
        return _shard(ctx, x), {
            "nfe": aux.nfe, **_cost_aux(aux.cost, ctx.batch_size),
            "lookahead_denoiser_fwd": look.cost.denoiser_fwd.astype(jnp.float32),
            "lookahead_reward_fwd": look.cost.reward_fwd.astype(jnp.float32),
            "lookahead_size": jnp.sum(look.mask).astype(jnp.float32),
            "lookahead_reward_mean": jnp.sum(jnp.where(look.mask, look.rewards, 0.0)) / used,
            "lookahead_reward_max": jnp.max(jnp.where(look.mask, look.rewards, -jnp.inf))}

    cache: dict[bytes, L.LookaheadSet] = {}

    def lookahead(state, key, sigmas) -> L.LookaheadSet:
        """The run's lookahead set (drawn on the first call, then cached)."""
        host = np.asarray(sigmas, np.float32)
        lsig = L.lookahead_grid(p.lookahead_steps, float(host[host > 0][-1]), float(host[0]),
                                p.lookahead_rho)
        ck = np.asarray(jax.random.key_data(key)).tobytes() + np.asarray(lsig).tobytes()
        if ck not in cache:
            look = phase1(state, rstate, key, lsig)
            L.check_lookahead_set(look)  # NaN/Inf rewards -> ValueError (host side)
            cache[ck] = look
        return cache[ck]

    def fn(state, key, offset, sigmas, hparams):
        return phase2(state, lookahead(state, key, sigmas), key, offset, sigmas, hparams,
                      *_scalars(p.lam, p.scale, *p.window))

    fn.lookahead = lookahead  # for benchmarks / tests: the cached set
    fn.reward = reward
    return fn


def gradient_sampler(ctx: SamplingContext, p: GradientSettings, reward: Reward) -> BatchSampler:
    """DPS / UG forward gradient guidance (differentiable rewards only)."""
    if not reward.differentiable:
        raise ValueError(f"guidance 'gradient' differentiates the reward, but "
                         f"'guidance.reward.name' = {reward.name!r} is not differentiable "
                         f"({reward.description}); use lidar, best_of_n, svdd or fk")
    rstate = shd.replicate(reward.state, ctx.mesh)

    @jax.jit
    def run(state, rstate, key, offset, sigmas, hparams, lam, scale, lo, hi):
        solver = solvers.get_solver(ctx.solver_name, **hparams)
        x_T, cond = _prior(ctx, key, offset, sigmas[0])
        x, aux = GD.gradient_guidance_sample(key, ctx.source.make_denoise(state),
                                             reward.make(rstate), x_T, sigmas, lam=lam,
                                             scale=scale, window=(lo, hi), solver=solver,
                                             cond=cond, offset=offset)
        return _shard(ctx, x), {"nfe": aux.nfe, **_cost_aux(aux.cost, ctx.batch_size)}

    def fn(state, key, offset, sigmas, hparams):
        return run(state, rstate, key, offset, sigmas, hparams,
                   *_scalars(p.lam, p.scale, *p.window))

    fn.reward = reward
    return fn


def best_of_n_sampler(ctx: SamplingContext, p: BestOfNSettings, reward: Reward) -> BatchSampler:
    """Best-of-N: output sample i is the best of draws `(offset + i) * N + j`, j < N
    (`N = group_size`), of the configured base solver."""
    m = p.group_size
    rstate = shd.replicate(reward.state, ctx.mesh)

    @jax.jit
    def run(state, rstate, key, offset, sigmas, hparams):
        solver = solvers.get_solver(ctx.solver_name, **hparams)
        x_T, cond = _prior(ctx, key, offset, sigmas[0], m)
        x, aux = GD.best_of_n(key, ctx.source.make_denoise(state), reward.make(rstate), x_T,
                              sigmas, group_size=m, solver=solver, cond=cond, offset=offset * m)
        return _shard(ctx, x), {"nfe": aux.nfe, **_cost_aux(aux.cost, ctx.batch_size),
                                "reward_mean": jnp.mean(aux.rewards)}

    def fn(state, key, offset, sigmas, hparams):
        return run(state, rstate, key, offset, sigmas, hparams)

    fn.reward = reward
    return fn


def svdd_sampler(ctx: SamplingContext, p: SVDDSettings, reward: Reward) -> BatchSampler:
    """SVDD-PM on the DDIM(eta) kernel (eta from the solver's hyperparameters)."""
    rstate = shd.replicate(reward.state, ctx.mesh)

    @jax.jit
    def run(state, rstate, key, offset, sigmas, hparams, temp):
        x_T, cond = _prior(ctx, key, offset, sigmas[0])
        x, aux = GD.svdd_sample(key, ctx.source.make_denoise(state), reward.make(rstate), x_T,
                                sigmas, num_candidates=p.num_candidates, temperature=temp,
                                eta=hparams["eta"], cond=cond, offset=offset)
        return _shard(ctx, x), {"nfe": aux.nfe, **_cost_aux(aux.cost, ctx.batch_size),
                                "reward_mean": jnp.mean(aux.rewards)}

    def fn(state, key, offset, sigmas, hparams):
        return run(state, rstate, key, offset, sigmas, hparams, jnp.float32(p.temperature))

    fn.reward = reward
    return fn


def fk_sampler(ctx: SamplingContext, p: FKSettings, reward: Reward) -> BatchSampler:
    """FK steering on the DDIM(eta) kernel; groups of `num_particles` consecutive output samples
    are one SMC population."""
    rstate = shd.replicate(reward.state, ctx.mesh)

    @jax.jit
    def run(state, rstate, key, offset, sigmas, hparams, mask, lam, thr):
        x_T, cond = _prior(ctx, key, offset, sigmas[0])
        x, aux = GD.fk_steering_sample(key, ctx.source.make_denoise(state), reward.make(rstate),
                                       x_T, sigmas, num_particles=p.num_particles, lam=lam,
                                       potential=p.potential, resample_steps=mask,
                                       ess_threshold=thr, eta=hparams["eta"], cond=cond,
                                       offset=offset)
        resampled = jnp.mean(aux.trace["resampled"].astype(jnp.float32))
        return _shard(ctx, x), {"nfe": aux.nfe, **_cost_aux(aux.cost, ctx.batch_size),
                                "reward_mean": jnp.mean(aux.rewards),
                                "resample_fraction": resampled}

    def fn(state, key, offset, sigmas, hparams):
        mask = jnp.asarray(fk_resample_mask(p.resample, int(np.shape(sigmas)[0]) - 1))
        return run(state, rstate, key, offset, sigmas, hparams, mask,
                   *_scalars(p.lam, p.ess_threshold))

    fn.reward = reward
    return fn


# name -> (settings type, sampler factory); the table `jaxdiff sample` dispatches on.
REWARD_SAMPLERS: dict[str, tuple[type, Callable]] = {
    "lidar": (LidarSettings, lidar_sampler),
    "gradient": (GradientSettings, gradient_sampler),
    "best_of_n": (BestOfNSettings, best_of_n_sampler),
    "svdd": (SVDDSettings, svdd_sampler),
    "fk": (FKSettings, fk_sampler),
}
