"""LiDAR vs gradient guidance, best-of-N, SVDD and FK steering on the trained digits denoiser with
the class log-probability reward: reward against wall time and against NFE.

    python -m benchmarks.lidar_digits [--model-dir runs/train_denoiser_digits]
           [--targets 3,8] [--particles 32] [--steps 25] [--rounds 3]
           [--plot benchmarks/results/lidar_digits.png] [--out benchmarks/results/lidar_digits.jsonl]

Setting:
  * model: the EMA denoiser of `jaxdiff train-denoiser --config train_denoiser_digits`
    (unconditional 8x8 U-Net); main sampler DDIM(eta = 1), `--steps` Karras steps
    (sigma 80 -> 0.002 -> 0).
  * "prompts": target classes (`--targets`); reward `r_t(x) = log p(y = t | clip(x))` of the digits
    quality net (`jaxdiff.diffusion.quality_net`, the spec `jaxdiff sample` uses; model space
    [-1, 1] for both networks); `--particles` samples per target.
  * With lam = 1 the tilted target p(x) p(t | x) is the class-conditional p(x | t). Beside the
    guided reward we report `heldout_accuracy`: the fraction of samples that a second quality net
    (seed 1, never used for guidance) classifies as the target (guards against adversarial
    reward hacking), and `diversity`: the mean pairwise L2 distance between samples of one
    target (mode collapse shows as a drop).
  * LiDAR: lookahead n in {3, 10, 50} (`--ns`) samples per target by DPM-Solver++(2M) in delta
    in {3, 5, 10} (`--deltas`) steps, rewards once; guidance lam in `--lidar-lams` (default 1)
    at scales `--lidar-scales`.
    Its wall time = lookahead phase + guided phase (both measured); NFE per output sample adds
    the lookahead's amortised `n * delta / particles`.
  * Gradient guidance (DPS / UG forward): lam = 1 at scales `--grad-scales`; per step one denoiser
    VJP and one reward VJP (backwards counted separately).
  * best-of-N (N = 4, 8): N x the draws, keep the best of each N; SVDD-PM with M = 4 candidates
    (argmax); FK steering with 4 particles, DIFF potential, lam in {1, 4}, resampling every step.
Every distinct program is AOT-compiled (compile time reported) and timed round-robin
(`--rounds` rounds after one warm-up call) in one process, medians reported; hyperparameters are
traced, so every (scale, lam) setting of one program costs the same time. Headline: for every
gradient-guidance point, the fastest LiDAR point with at least its reward and the time ratio.

Output: JSON lines (stdout and `--out`), a PNG (`--plot`) titled with the load average.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks.common import compile_aot, emit, environment, time_interleaved
from jaxdiff.diffusion import guidance as GD
from jaxdiff.diffusion import lookahead as L
from jaxdiff.diffusion import schedules as sch
from jaxdiff.diffusion import solvers as S
from jaxdiff.diffusion import quality_net as QN
from jaxdiff.diffusion.saved import load_model


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model-dir", default="runs/train_denoiser_digits")
    ap.add_argument("--targets", default="3,8")
    ap.add_argument("--particles", type=int, default=32)
    ap.add_argument("--steps", type=int, default=25)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--ns", default="3,10,50")
    ap.add_argument("--deltas", default="3,5,10")
    ap.add_argument("--lidar-scales", default="1,4")
    ap.add_argument("--lidar-lams", default="1")
    ap.add_argument("--grad-scales", default="0.25,1,4")
    ap.add_argument("--only-lidar", action="store_true",
                    help="skip the baselines except base and gradient guidance (extra LiDAR sweeps)")
    ap.add_argument("--no-svdd", action="store_true")
    ap.add_argument("--plot", default="benchmarks/results/lidar_digits.png")
    ap.add_argument("--out", default="benchmarks/results/lidar_digits.jsonl")
    args = ap.parse_args(argv)
    t_start = time.perf_counter()
    targets = jnp.asarray([int(t) for t in args.targets.split(",")], jnp.int32)
    P, N, T = len(targets), args.particles, args.steps
    ns = [int(v) for v in args.ns.split(",")]
    deltas = [int(v) for v in args.deltas.split(",")]
    lidar_scales = [float(v) for v in args.lidar_scales.split(",")]
    grad_scales = [float(v) for v in args.grad_scales.split(",")]
    lidar_lams = [float(v) for v in args.lidar_lams.split(",")]
    env = environment()
    out_f = open(args.out, "w") if args.out else None
    if args.out:
        os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)

    m = load_model(args.model_dir)
    state = m.state(True)
    shape = tuple(m.image_shape)
    net = QN.get_quality_net(QN.QualityNetSpec("digits", image_size=shape[0]))
    judge = QN.get_quality_net(QN.QualityNetSpec("digits", image_size=shape[0], seed=1))
    key = jax.random.key(0)
    sig = sch.karras_sigmas(T)
    x_T = jax.vmap(lambda p: S.prior_sample(key, (N, *shape), 80.0, offset=p * N))(
        jnp.arange(P))

    def reward_fn(net, label):
        return lambda x: net.log_prob(jnp.clip(x, -1, 1), jnp.full((x.shape[0],), label))

    # ---- programs: per-target work vmapped over the P targets ----
    def base(state, net, x_T):
        den = m.make_denoise(state)
        return jax.vmap(lambda xt: GD.base_sample(key, den, xt, sig)[0])(x_T)

    def grad(state, net, x_T, scale):
        den = m.make_denoise(state)
        return jax.vmap(lambda t, xt: GD.gradient_guidance_sample(
            key, den, reward_fn(net, t), xt, sig, lam=1.0, scale=scale)[0])(targets, x_T)

    def bon(state, net, x_T, g):
        den = m.make_denoise(state)
        return jax.vmap(lambda t, xt: GD.best_of_n(key, den, reward_fn(net, t), xt, sig,
                                                   group_size=g)[0])(targets, x_T)

    def svdd(state, net, x_T):
        den = m.make_denoise(state)
        return jax.vmap(lambda t, xt: GD.svdd_sample(key, den, reward_fn(net, t), xt, sig,
                                                     num_candidates=4)[0])(targets, x_T)

    def fk(state, net, x_T, lam):
        den = m.make_denoise(state)
        return jax.vmap(lambda t, xt: GD.fk_steering_sample(
            key, den, reward_fn(net, t), xt, sig, num_particles=4, lam=lam)[0])(targets, x_T)

    def look_phase(state, net, lkey, n, delta):
        den = m.make_denoise(state)
        return jax.vmap(lambda t: L.lookahead_phase(jax.random.fold_in(lkey, t), den,
                                                    reward_fn(net, t), (n, *shape),
                                                    steps=delta))(targets)

    def lidar(state, look, x_T, scale, lam):
        den = m.make_denoise(state)
        return jax.vmap(lambda lk, xt: GD.lidar_sample(key, den, lk, xt, sig, lam=lam,
                                                       scale=scale)[0])(look, x_T)

    compiled, compile_s, calls = {}, {}, {}

    def add(name, fn, *a):
        compiled[name], compile_s[name] = compile_aot(fn, *a)
        calls[name] = (compiled[name], a)

    lkey = jax.random.fold_in(key, 2)
    x_bon = {g: jax.vmap(lambda p: S.prior_sample(key, (g * N, *shape), 80.0,
                                                  offset=10_000 + p * g * N))(jnp.arange(P))
             for g in (4, 8)}
    add("base", base, state, net, x_T)
    add("grad", grad, state, net, x_T, jnp.float32(1.0))
    bons = () if args.only_lidar else (4, 8)
    for g in bons:
        add(f"bon{g}", functools.partial(bon, g=g), state, net, x_bon[g])
    if not (args.no_svdd or args.only_lidar):
        add("svdd4", svdd, state, net, x_T)
    if not args.only_lidar:
        add("fk4", fk, state, net, x_T, jnp.float32(1.0))
    looks = {}
    for n in ns:
        for d in deltas:
            add(f"look_n{n}_d{d}", functools.partial(look_phase, n=n, delta=d), state, net, lkey)
            looks[n, d] = compiled[f"look_n{n}_d{d}"](state, net, lkey)
        add(f"lidar_n{n}", lidar, state, looks[n, deltas[0]], x_T, jnp.float32(1.0),
            jnp.float32(1.0))
    print(f"# compiled {len(compiled)} programs in {sum(compile_s.values()):.1f} s; timing "
          f"{args.rounds} rounds", flush=True)
    times = time_interleaved(calls, warmup=1, repeats=args.rounds)
    med = {k: statistics.median(v) for k, v in times.items()}
    load = [round(v, 2) for v in os.getloadavg()]

    # ---- evaluation ----
    jreward = jax.jit(lambda net, x: jax.vmap(lambda t, xs: reward_fn(net, t)(xs))(targets, x))
    jpred = jax.jit(lambda net, x: jnp.argmax(net.logits(jnp.clip(x.reshape(-1, *shape), -1, 1)),
                                              -1).reshape(x.shape[:2]))

    def diversity(x):
        f = np.asarray(x).reshape(P, N, -1)
        d = np.sqrt(np.maximum(((f[:, :, None] - f[:, None]) ** 2).sum(-1), 0))
        return float(d.sum() / (P * N * (N - 1)))

    rows = []

    def record(method, x, wall, nfe_fwd, nfe_bwd, reward_calls, **extra):
        r = float(jnp.mean(jreward(net, x)))
        acc = float(jnp.mean(jpred(judge, x) == targets[:, None]))
        row = {"method": method, "reward": round(r, 4), "heldout_accuracy": round(acc, 4),
               "diversity": round(diversity(x), 4), "wall_s": round(wall, 4),
               "nfe_fwd_per_sample": round(nfe_fwd, 3), "nfe_bwd_per_sample": nfe_bwd,
               "reward_calls_per_sample": round(reward_calls, 4), "T": T, "targets": P,
               "particles": N, "loadavg_after": load, **extra}
        rows.append(row)
        emit(row, env=env)
        if out_f:
            out_f.write(json.dumps({**row, "env": env}) + "\n")
            out_f.flush()

    record("base", compiled["base"](state, net, x_T), med["base"], T, 0, 0,
           compile_s=round(compile_s["base"], 2))
    for g in bons:
        record(f"best_of_{g}", compiled[f"bon{g}"](state, net, x_bon[g]), med[f"bon{g}"], g * T,
               0, g, compile_s=round(compile_s[f"bon{g}"], 2))
    for scale in grad_scales:
        record("gradient_guidance", compiled["grad"](state, net, x_T, jnp.float32(scale)),
               med["grad"], T, T, T, scale=scale, lam=1.0, compile_s=round(compile_s["grad"], 2))
    if "svdd4" in compiled:
        record("svdd_4", compiled["svdd4"](state, net, x_T), med["svdd4"], 1 + 4 * (T - 1), 0,
               4 * T, compile_s=round(compile_s["svdd4"], 2))
    for lam in ((1.0, 4.0) if "fk4" in compiled else ()):
        record("fk_4", compiled["fk4"](state, net, x_T, jnp.float32(lam)), med["fk4"], T, 0, T,
               lam=lam, compile_s=round(compile_s["fk4"], 2))
    for n in ns:
        for d in deltas:
            look = looks[n, d]
            t_look, t_main = med[f"look_n{n}_d{d}"], med[f"lidar_n{n}"]
            look_nfe = float(look.cost.denoiser_fwd[0]) / n  # per lookahead sample
            for scale, lam in ((s_, l_) for l_ in lidar_lams for s_ in lidar_scales):
                x = compiled[f"lidar_n{n}"](state, look, x_T, jnp.float32(scale),
                                            jnp.float32(lam))
                record("lidar", x, t_look + t_main, T + n * look_nfe / N, 0, n / N, n=n, delta=d,
                       scale=scale, lam=lam, lookahead_s=round(t_look, 4),
                       guided_s=round(t_main, 4),
                       lookahead_reward_mean=round(float(jnp.mean(look.rewards)), 4),
                       lookahead_reward_max=round(float(jnp.mean(jnp.max(look.rewards, 1))), 4),
                       compile_s=round(compile_s[f"lidar_n{n}"], 2))
    # ---- headline: LiDAR vs gradient guidance at equal reward ----
    lid = [r for r in rows if r["method"] == "lidar"]
    for g in (r for r in rows if r["method"] == "gradient_guidance"):
        ok = [r for r in lid if r["reward"] >= g["reward"]]
        head = {"method": "headline_lidar_vs_gradient", "gradient_scale": g["scale"],
                "gradient_reward": g["reward"], "gradient_wall_s": g["wall_s"]}
        if ok:
            best = min(ok, key=lambda r: r["wall_s"])
            head.update(lidar=f"n={best['n']},delta={best['delta']},scale={best['scale']}",
                        lidar_reward=best["reward"], lidar_wall_s=best["wall_s"],
                        time_ratio_gradient_over_lidar=round(g["wall_s"] / best["wall_s"], 3),
                        nfe_ratio=round((g["nfe_fwd_per_sample"] + g["nfe_bwd_per_sample"])
                                        / best["nfe_fwd_per_sample"], 3))
        else:
            head["lidar"] = "no LiDAR point reaches this reward"
        emit(head, env=env)
        if out_f:
            out_f.write(json.dumps({**head, "env": env}) + "\n")
    total = time.perf_counter() - t_start
    print(f"# total {total:.0f} s, loadavg {load}", flush=True)
    if args.plot:
        plot(rows, args.plot, env, load, P, N, T)


def plot(rows, path, env, load, P, N, T):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(18, 5))
    xval = lambda r, k: r["wall_s"] if k == "wall_s" else (  # noqa: E731
        r["nfe_fwd_per_sample"] + r["nfe_bwd_per_sample"])
    panels = ((axes[0], "wall_s", "reward", f"wall time per run of {P} x {N} samples [s]"),
              (axes[1], "nfe", "reward", "denoiser fwd (+ bwd) per sample"),
              (axes[2], "nfe", "heldout_accuracy", "denoiser fwd (+ bwd) per sample"))
    others = (("base", "s"), ("best_of_4", "D"), ("best_of_8", "D"), ("gradient_guidance", "^"),
              ("svdd_4", "v"), ("fk_4", "P"))
    for ax, xk, yk, xlabel in panels:
        for method, marker in others:
            pts = [r for r in rows if r["method"] == method]
            if not pts:
                continue
            ax.scatter([xval(r, xk) for r in pts], [r[yk] for r in pts], marker=marker, s=50,
                       label=method)
            for r in pts:
                tag = f"s={r['scale']:g}" if "scale" in r else (
                    f"lam={r['lam']:g}" if "lam" in r else "")
                if tag:
                    ax.annotate(tag, (xval(r, xk), r[yk]), fontsize=7)
        groups = sorted({(r["scale"], r["lam"]) for r in rows if r["method"] == "lidar"})
        colors = ("tab:red", "tab:purple", "tab:brown", "tab:pink", "tab:olive", "tab:cyan",
                  "black", "tab:gray", "gold")
        for (scale, lam), color in zip(groups, colors):
            pts = [r for r in rows if r["method"] == "lidar" and (r["scale"], r["lam"]) == (
                scale, lam)]
            ax.scatter([xval(r, xk) for r in pts], [r[yk] for r in pts], c=color, marker="o",
                       s=30, label=f"LiDAR scale={scale:g}" + (f" lam={lam:g}" if lam != 1 else ""))
            for r in pts:
                ax.annotate(f"{r['n']}/{r['delta']}", (xval(r, xk), r[yk]), fontsize=6)
        ax.set_xscale("log")
        ax.set_xlabel(xlabel)
        ax.set_ylabel({"reward": "mean reward log p(target | x)",
                       "heldout_accuracy": "held-out classifier: fraction = target"}[yk])
    axes[0].legend(fontsize=7)
    fig.suptitle(f"digits 8x8 U-Net, DDIM(eta=1) T={T}: LiDAR (labels n/delta) vs baselines, "
                 f"{env['device']}, loadavg {load} (shared 2-core machine)", fontsize=9)
    fig.tight_layout()
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    fig.savefig(path, dpi=110)
    print(f"wrote {path}", flush=True)


if __name__ == "__main__":
    main()
