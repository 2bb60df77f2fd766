"""Reward guidance for `jaxdiff sample`: LiDAR and its test-time baselines as `GUIDANCE` builders
(the seam of `jaxdiff.pipelines.sample`), plus the digits rewards.

    jaxdiff sample --config lidar_digits                          # LiDAR, class_logprob reward
    jaxdiff sample --config lidar_digits --config.guidance.name=gradient --config.guidance.scale=...

Builders (`config.guidance.name`), all registered lazily in `sample._LAZY_GUIDANCE`:

* `lidar`     lookahead phase (`num_lookahead` samples, `lookahead_steps` steps of
              `lookahead_solver`, rewards once), optional subset (`subset` > 0 of them, mode
              `subset_mode` "random" | "top"), then the main solver (`config.solver`: any core
              solver, DDIM with eta = 1 in the reference) with the LiDAR-shifted denoiser
              (`diffusion.guidance.lidar_sample`) using `lam`, `scale`, `window`.
* `gradient`  DPS / Universal-Guidance forward guidance through Tweedie's estimate
              (`gradient_guidance_sample`): `lam`, `scale`, `window`; needs a differentiable
              reward (a clear ValueError otherwise).
* `best_of_n` `group_size` base-solver draws per output sample, the highest-reward one kept.
* `svdd`      SVDD-PM: `num_candidates` DDIM(eta) candidates per step, `temperature` (0 = argmax).
              Needs `solver.name = ddim` (eta from `solver.eta`).
* `fk`        FK steering (SMC) over groups of `num_particles` consecutive samples: `lam`,
              `potential`, `resample` ("all" or "start,end,freq" on the step index), `ess_threshold`.
              Needs `solver.name = ddim`.

Lookahead phase: once per run. LiDAR's point is that the lookahead set (and its reward calls)
is a one-off cost shared by every particle, so the set is drawn on the first batch from
`fold_in(key, 0x7FFFFFF2)` (independent of the batch offset; the same stream as
`diffusion.guidance.lidar`), validated on the host (NaN rewards -> ValueError), cached for the
run and reused by every later batch. Its grid is a `lookahead_steps`-step Karras grid between the
main grid's `sigmas[0]` and last positive level (rho `lookahead_rho`). For a conditional model the
lookahead sample j gets the label the sampler would give sample j (`config.labels`; use a fixed
class, or "none", so that lookahead and particles share one condition).

Rewards (`guidance.reward` section; `reward(x0: [N, H, W, C]) -> [N]`, on clean samples in the
denoiser's data space):

* `class_logprob`  `log p(y = reward.target | x)`. Source `run`: the quality network of
                   `jaxdiff.pipelines.quality_net` (`reward.quality` = its spec; the defaults equal
                   `sample_digits`'s `quality` section, so the cached net is shared). Both the
                   denoiser and the quality net work in the model space `uint8 / 127.5 - 1`
                   (`denoiser_io.to_model_space`, pixels in [-1, 1]), so no rescaling is needed;
                   with `reward.clip` the sample is clipped to [-1, 1] first (what `to_uint8`
                   stores). Source `gmm`: the mixture's exact class posterior (Bayes classifier).
                   Differentiable.
* `brightness`     mean pixel value (in [-1, 1] model units; a linear, differentiable statistic).
* `ink`            fraction of pixels above `reward.threshold` (a count of lit pixels: piecewise
                   constant, NOT differentiable; `gradient` refuses it).

aux figures (per batch; `generate` averages them over batches):
  `nfe` denoiser evaluations along one trajectory per output sample (best-of-N: of each draw);
  `denoiser_fwd`, `denoiser_bwd`, `reward_fwd`, `reward_bwd` per output sample (exact counts of
  the guided phase: a batched call on B rows counts B); LiDAR adds `lookahead_denoiser_fwd` and
  `lookahead_reward_fwd` (totals of the one-off lookahead phase, not per sample: amortise over the
  run's sample count), `lookahead_reward_mean` / `lookahead_reward_max`; best-of-N / SVDD / FK add
  `reward_mean` of the returned samples' final rewards where the method computes them.
  `nfe_executed` = `denoiser_fwd` (per output sample, guided phase).

Hyperparameters (`lam`, `scale`, the window, eta, temperature, ESS threshold) are traced into the
jitted samplers; shapes, step counts, n, k, candidate and particle counts are static.
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

REWARDS = ("class_logprob", "brightness", "ink")
DIFFERENTIABLE = {"class_logprob": True, "brightness": True, "ink": False}

REWARD_DEFAULTS = dict(name="class_logprob", target=0, clip=True, threshold=0.0,
                       quality=dict(seed=0, width=32, feature_dim=64, epochs=20, batch_size=128,
                                    lr=1e-3))
COMMON = dict(lam=1.0, scale=1.0, window=(0.0, 1e9))
DEFAULTS = {
    "lidar": dict(num_lookahead=50, lookahead_steps=5, lookahead_solver="dpmpp_2m",
                  lookahead_rho=7.0, subset=0, subset_mode="random", **COMMON),
    "gradient": dict(COMMON),
    "best_of_n": dict(group_size=4),
    "svdd": dict(num_candidates=4, temperature=0.0),
    "fk": dict(num_particles=4, lam=1.0, potential="diff", resample="all", ess_threshold=0.5),
}


# --------------------------------------------------------------------------------------------
# Config helpers
# --------------------------------------------------------------------------------------------


def _section(gcfg, method: str) -> dict:
    """The method's hyperparameters: DEFAULTS[method] overridden by `gcfg` (unknown keys are
    ignored only if they belong to another method's defaults or are `name` / `reward`)."""
    out = dict(DEFAULTS[method])
    known = {"name", "reward"} | {k for d in DEFAULTS.values() for k in d}
    for k in gcfg.keys():
        if k not in known:
            raise ValueError(f"config key 'guidance.{k}' is not a {method!r} hyperparameter; "
                             f"valid: {sorted(DEFAULTS[method])} and 'reward'")
        if k in out:
            out[k] = gcfg[k]
    return out


def _positive_int(v, key: str, minimum: int = 1) -> int:
    iv = int(v)
    if iv != v or iv < minimum:
        raise ValueError(f"config key 'guidance.{key}' must be an integer >= {minimum}, got {v}")
    return iv


def _positive(v, key: str, strict: bool = True) -> float:
    f = float(v)
    if not np.isfinite(f) or f < 0 or (strict and f == 0):
        raise ValueError(f"config key 'guidance.{key}' must be a finite number "
                         f"{'>' if strict else '>='} 0, got {v}")
    return f


def _window(w) -> tuple[float, float]:
    w = tuple(float(v) for v in w)
    if len(w) != 2 or not (0 <= w[0] <= w[1]):
        raise ValueError(f"config key 'guidance.window' must be (sigma_lo, sigma_hi) with "
                         f"0 <= sigma_lo <= sigma_hi, got {w}")
    return w


def _require_ddim(ctx, method: str):
    if ctx.solver_name != "ddim":
        raise ValueError(f"guidance {method!r} uses the DDIM(eta) kernel: config key "
                         f"'solver.name' = {ctx.solver_name!r} must be 'ddim' (eta = solver.eta)")


# --------------------------------------------------------------------------------------------
# Rewards
# --------------------------------------------------------------------------------------------


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


def _reward_cfg(rcfg) -> dict:
    out = {k: v for k, v in REWARD_DEFAULTS.items()}
    out["quality"] = dict(REWARD_DEFAULTS["quality"])
    if rcfg is None:
        return out
    for k in rcfg.keys():
        if k not in out:
            raise ValueError(f"config key 'guidance.reward.{k}' is unknown; valid: "
                             f"{sorted(REWARD_DEFAULTS)}")
        if k == "quality":
            for q in rcfg[k].keys():
                if q not in out["quality"]:
                    raise ValueError(f"config key 'guidance.reward.quality.{q}' is unknown; "
                                     f"valid: {sorted(out['quality'])}")
                out["quality"][q] = rcfg[k][q]
        else:
            out[k] = rcfg[k]
    return out


def build_reward(rcfg, source, data_dir: str = "") -> Reward:
    """The `Reward` of the `guidance.reward` section for a `sample.LoadedSource`.

    Raises ValueError for an unknown reward name, a target class outside the model's classes, or
    `class_logprob` on a source that is neither a mixture nor an image data set.
    """
    c = _reward_cfg(rcfg)
    name = str(c["name"])
    if name not in REWARDS:
        raise ValueError(f"config key 'guidance.reward.name' = {name!r} is not one of "
                         f"{list(REWARDS)}")
    clip = bool(c["clip"])
    prep = (lambda x: jnp.clip(x, -1.0, 1.0)) if clip else (lambda x: x)  # noqa: E731
    if name == "brightness":
        def make(_):
            return lambda x: jnp.mean(prep(x).reshape(x.shape[0], -1).astype(jnp.float32), -1)
        return Reward(name, (), make, True, f"mean pixel value{' (clipped)' if clip else ''}")
    if name == "ink":
        thr = float(c["threshold"])

        def make(_):
            return lambda x: jnp.mean((x.reshape(x.shape[0], -1) > thr).astype(jnp.float32), -1)
        return Reward(name, (), make, False, f"fraction of pixels > {thr:g} (not differentiable)")
    # class_logprob
    target = int(c["target"])
    if source.gmm is not None:
        g = source.gmm
        if not 0 <= target < g.num_components or not np.any(np.asarray(g.labels) == target):
            raise ValueError(f"config key 'guidance.reward.target' = {target} is not a class of "
                             f"the mixture (0 .. {g.num_components - 1})")

        def make(gm):
            r = RW.class_log_posterior_reward(gm, target)
            return lambda x: r(x).astype(jnp.float32)
        return Reward(name, g, make, True, f"log p(y={target} | x), exact mixture posterior")
    if not source.dataset:
        raise ValueError("reward 'class_logprob' needs an image data set source (a trained "
                         "digits model) or source=gmm")
    from jaxdiff.pipelines import quality_net as QN

    q = c["quality"]
    spec = QN.QualityNetSpec(source.dataset, image_size=source.image_size, seed=int(q["seed"]),
                             width=int(q["width"]), feature_dim=int(q["feature_dim"]),
                             epochs=int(q["epochs"]), batch_size=int(q["batch_size"]),
                             lr=float(q["lr"]), data_dir=data_dir)
    net = QN.get_quality_net(spec)
    if not 0 <= target < net.num_classes:
        raise ValueError(f"config key 'guidance.reward.target' = {target} outside "
                         f"[0, {net.num_classes})")

    def make(qn):
        # The quality net reads model-space images (uint8 / 127.5 - 1), the denoiser's space.
        return lambda x: qn.log_prob(prep(x), jnp.full((x.shape[0],), target, jnp.int32))
    return Reward(name, net, make, True,
                  f"log p(y={target} | x) of the {source.dataset} quality net "
                  f"(test acc. {100 * net.test_accuracy:.1f} %)")


# --------------------------------------------------------------------------------------------
# Shared pieces
# --------------------------------------------------------------------------------------------


def _cost_aux(cost: L.Cost, rows: int) -> dict:
    per = {k: v.astype(jnp.float32) / rows for k, v in cost._asdict().items()}
    return {**per, "nfe_executed": per["denoiser_fwd"]}


class _Setup(NamedTuple):
    b: int
    shape: tuple
    bsh: Any
    label_fn: Any
    make_denoise: Callable


def _setup(ctx) -> _Setup:
    return _Setup(ctx.batch_size, tuple(ctx.source.sample_shape), shd.batch_sharding(ctx.mesh),
                  ctx.label_fn, ctx.source.make_denoise)


def _prior(s: _Setup, key, offset, sigma0, rows_per_sample: int = 1):
    """x_T `[B * m, ...]` of output samples offset .. offset + B - 1, m draws each (draw j of
    sample i has global index (offset + i) * m + j), and the labels `[B * m]`."""
    m = rows_per_sample
    x_T = solvers.prior_sample(key, (s.b * m, *s.shape), sigma0, offset=offset * m)
    x_T = jax.lax.with_sharding_constraint(x_T, s.bsh)
    idx = (jnp.arange(s.b * m, dtype=jnp.int32) // m) + offset
    cond = None if s.label_fn is None else s.label_fn(idx)
    return x_T, cond


def _reward_for(gcfg, ctx) -> Reward:
    return build_reward(gcfg["reward"] if "reward" in gcfg else None, ctx.source)


def _scalars(*vals):
    return tuple(jnp.float32(v) for v in vals)


# --------------------------------------------------------------------------------------------
# Builders
# --------------------------------------------------------------------------------------------


def lidar_builder(ctx, gcfg):
    """`GuidanceBuilder` for LiDAR (see the module docstring)."""
    p = _section(gcfg, "lidar")
    n = _positive_int(p["num_lookahead"], "num_lookahead")
    delta = _positive_int(p["lookahead_steps"], "lookahead_steps")
    k = int(p["subset"])
    if k < 0 or k > n:
        raise ValueError(f"config key 'guidance.subset' = {k} must be in [0, num_lookahead={n}] "
                         "(0 = use the whole lookahead set)")
    mode = str(p["subset_mode"])
    if mode not in ("random", "top"):
        raise ValueError(f"config key 'guidance.subset_mode' = {mode!r} is not 'random' or 'top'")
    look_solver = str(p["lookahead_solver"])
    solvers.get_solver(look_solver)  # clear error for unknown names
    rho = _positive(p["lookahead_rho"], "lookahead_rho")
    lam, scale = _positive(p["lam"], "lam"), _positive(p["scale"], "scale", strict=False)
    lo, hi = _window(p["window"])
    reward = _reward_for(gcfg, ctx)
    s = _setup(ctx)
    rstate = shd.replicate(reward.state, ctx.mesh)

    @jax.jit
    def phase1(state, rstate, key, lsig):
        den, rf = s.make_denoise(state), reward.make(rstate)
        cond = None if s.label_fn is None else s.label_fn(jnp.arange(n, dtype=jnp.int32))
        look = L.lookahead_phase(jax.random.fold_in(key, GD.LOOKAHEAD_STREAM), den, rf,
                                 (n, *s.shape), sigmas=lsig, solver=look_solver, cond=cond)
        if k:
            look = L.select_lookahead(look, k, key=jax.random.fold_in(key, GD.SUBSET_STREAM),
                                      mode=mode)
        return look

    @jax.jit
    def phase2(state, look, key, offset, sigmas, hparams, lam, scale, lo, hi):
        solver = solvers.get_solver(ctx.solver_name, **hparams)
        x_T, cond = _prior(s, key, offset, sigmas[0])
        x, aux = GD.lidar_sample(key, s.make_denoise(state), look, x_T, sigmas, lam=lam,
                                 scale=scale, window=(lo, hi), solver=solver, cond=cond,
                                 offset=offset)
        x = jax.lax.with_sharding_constraint(x, s.bsh)
        out = {"nfe": aux.nfe, **_cost_aux(aux.cost, s.b),
               "lookahead_denoiser_fwd": look.cost.denoiser_fwd.astype(jnp.float32),
               "lookahead_reward_fwd": look.cost.reward_fwd.astype(jnp.float32),
               "lookahead_size": jnp.sum(look.mask).astype(jnp.float32),
               "lookahead_reward_mean": jnp.sum(jnp.where(look.mask, look.rewards, 0.0))
               / jnp.maximum(jnp.sum(look.mask), 1),
               "lookahead_reward_max": jnp.max(jnp.where(look.mask, look.rewards, -jnp.inf))}
        return x, out

    cache: dict[bytes, L.LookaheadSet] = {}

    def lookahead(state, key, sigmas) -> L.LookaheadSet:
        """The run's lookahead set (drawn on the first call, then cached)."""
        host = np.asarray(sigmas, np.float32)
        pos = host[host > 0]
        lsig = L.lookahead_grid(delta, float(pos[-1]), float(host[0]), rho)
        ck = np.asarray(jax.random.key_data(key)).tobytes() + np.asarray(lsig).tobytes()
        if ck not in cache:
            look = phase1(state, rstate, key, lsig)
            L.check_lookahead_set(look)  # NaN/Inf rewards -> ValueError (host side)
            cache[ck] = look
        return cache[ck]

    def fn(state, key, offset, sigmas, hparams):
        look = lookahead(state, key, sigmas)
        return phase2(state, look, key, offset, sigmas, hparams, *_scalars(lam, scale, lo, hi))

    fn.lookahead = lookahead  # for benchmarks / tests: the cached set
    fn.reward = reward
    return fn


def gradient_builder(ctx, gcfg):
    """`GuidanceBuilder` for DPS / UG forward gradient guidance (differentiable rewards only)."""
    p = _section(gcfg, "gradient")
    lam, scale = _positive(p["lam"], "lam"), _positive(p["scale"], "scale", strict=False)
    lo, hi = _window(p["window"])
    reward = _reward_for(gcfg, ctx)
    if not reward.differentiable:
        raise ValueError(f"guidance 'gradient' differentiates the reward, but "
                         f"'guidance.reward.name' = {reward.name!r} is not differentiable "
                         f"({reward.description}); use lidar, best_of_n, svdd or fk")
    s = _setup(ctx)
    rstate = shd.replicate(reward.state, ctx.mesh)

    @jax.jit
    def run(state, rstate, key, offset, sigmas, hparams, lam, scale, lo, hi):
        solver = solvers.get_solver(ctx.solver_name, **hparams)
        x_T, cond = _prior(s, key, offset, sigmas[0])
        x, aux = GD.gradient_guidance_sample(key, s.make_denoise(state), reward.make(rstate), x_T,
                                             sigmas, lam=lam, scale=scale, window=(lo, hi),
                                             solver=solver, cond=cond, offset=offset)
        return jax.lax.with_sharding_constraint(x, s.bsh), {"nfe": aux.nfe,
                                                            **_cost_aux(aux.cost, s.b)}

    def fn(state, key, offset, sigmas, hparams):
        return run(state, rstate, key, offset, sigmas, hparams, *_scalars(lam, scale, lo, hi))

    fn.reward = reward
    return fn


def best_of_n_builder(ctx, gcfg):
    """`GuidanceBuilder` for best-of-N: output sample i is the best of draws
    `(offset + i) * N + j`, j < N (`N = group_size`), of the configured base solver."""
    p = _section(gcfg, "best_of_n")
    m = _positive_int(p["group_size"], "group_size")
    reward = _reward_for(gcfg, ctx)
    s = _setup(ctx)
    rstate = shd.replicate(reward.state, ctx.mesh)

    @jax.jit
    def run(state, rstate, key, offset, sigmas, hparams):
        solver = solvers.get_solver(ctx.solver_name, **hparams)
        x_T, cond = _prior(s, key, offset, sigmas[0], m)
        x, aux = GD.best_of_n(key, s.make_denoise(state), reward.make(rstate), x_T, sigmas,
                              group_size=m, solver=solver, cond=cond, offset=offset * m)
        return jax.lax.with_sharding_constraint(x, s.bsh), {
            "nfe": aux.nfe, **_cost_aux(aux.cost, s.b), "reward_mean": jnp.mean(aux.rewards)}

    def fn(state, key, offset, sigmas, hparams):
        return run(state, rstate, key, offset, sigmas, hparams)

    fn.reward = reward
    return fn


def svdd_builder(ctx, gcfg):
    """`GuidanceBuilder` for SVDD-PM (DDIM(eta) kernel, `solver.name = ddim`)."""
    _require_ddim(ctx, "svdd")
    p = _section(gcfg, "svdd")
    m = _positive_int(p["num_candidates"], "num_candidates")
    temp = _positive(p["temperature"], "temperature", strict=False)
    reward = _reward_for(gcfg, ctx)
    s = _setup(ctx)
    rstate = shd.replicate(reward.state, ctx.mesh)

    @jax.jit
    def run(state, rstate, key, offset, sigmas, hparams, temp):
        x_T, cond = _prior(s, key, offset, sigmas[0])
        x, aux = GD.svdd_sample(key, s.make_denoise(state), reward.make(rstate), x_T, sigmas,
                                num_candidates=m, temperature=temp, eta=hparams["eta"],
                                cond=cond, offset=offset)
        return jax.lax.with_sharding_constraint(x, s.bsh), {
            "nfe": aux.nfe, **_cost_aux(aux.cost, s.b), "reward_mean": jnp.mean(aux.rewards)}

    def fn(state, key, offset, sigmas, hparams):
        return run(state, rstate, key, offset, sigmas, hparams, jnp.float32(temp))

    fn.reward = reward
    return fn


def _resample_mask(spec, steps: int) -> np.ndarray:
    if str(spec) == "all":
        return np.ones(steps, bool)
    try:
        start, end, freq = (int(v) for v in str(spec).split(","))
    except ValueError:
        raise ValueError(f"config key 'guidance.resample' = {spec!r} must be 'all' or "
                         "'start,end,freq' (step indices)") from None
    return GD.fk_resample_schedule(steps, start, end, freq)


def fk_builder(ctx, gcfg):
    """`GuidanceBuilder` for FK steering (DDIM(eta) kernel, `solver.name = ddim`); groups of
    `num_particles` consecutive output samples are one SMC population."""
    _require_ddim(ctx, "fk")
    p = _section(gcfg, "fk")
    k = _positive_int(p["num_particles"], "num_particles")
    if ctx.batch_size % k:
        raise ValueError(f"config key 'guidance.num_particles' = {k} must divide "
                         f"'batch_size' = {ctx.batch_size}")
    lam = _positive(p["lam"], "lam")
    potential = str(p["potential"])
    if potential not in GD.FK_POTENTIALS:
        raise ValueError(f"config key 'guidance.potential' = {potential!r} is not one of "
                         f"{list(GD.FK_POTENTIALS)}")
    thr = _positive(p["ess_threshold"], "ess_threshold", strict=False)
    resample = p["resample"]
    _resample_mask(resample, 2)  # validate the format eagerly
    reward = _reward_for(gcfg, ctx)
    s = _setup(ctx)
    rstate = shd.replicate(reward.state, ctx.mesh)

    @jax.jit
    def run(state, rstate, key, offset, sigmas, hparams, mask, lam, thr):
        x_T, cond = _prior(s, key, offset, sigmas[0])
        x, aux = GD.fk_steering_sample(key, s.make_denoise(state), reward.make(rstate), x_T,
                                       sigmas, num_particles=k, lam=lam, potential=potential,
                                       resample_steps=mask, ess_threshold=thr,
                                       eta=hparams["eta"], cond=cond, offset=offset)
        resampled = jnp.mean(aux.trace["resampled"].astype(jnp.float32))
        return jax.lax.with_sharding_constraint(x, s.bsh), {
            "nfe": aux.nfe, **_cost_aux(aux.cost, s.b), "reward_mean": jnp.mean(aux.rewards),
            "resample_fraction": resampled}

    def fn(state, key, offset, sigmas, hparams):
        mask = jnp.asarray(_resample_mask(resample, int(np.shape(sigmas)[0]) - 1))
        return run(state, rstate, key, offset, sigmas, hparams, mask, *_scalars(lam, thr))

    fn.reward = reward
    return fn


BUILDERS = {"lidar": lidar_builder, "gradient": gradient_builder, "best_of_n": best_of_n_builder,
            "svdd": svdd_builder, "fk": fk_builder}
