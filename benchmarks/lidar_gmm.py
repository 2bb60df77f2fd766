"""LiDAR vs gradient guidance (and the base sampler, best-of-N) on a Gaussian mixture: reward
against wall time and NFE.

    python -m benchmarks.lidar_gmm            # ~2 min at load 15 on the shared 2-core machine
    python -m benchmarks.lidar_gmm --quick    # fewer steps/repeats
    python -m benchmarks.lidar_gmm --plot benchmarks/results/lidar_gmm.png

Setting (an analytic stand-in for "prompts + a classifier reward"):
  * data: a mixture of K = 8 isotropic Gaussians (std 1) in d = 64, means ~ N(0, 0.35**2 I)
    (overlapping: the Bayes classifier is ~90 % accurate on the data), one class per component;
    the exact posterior-mean denoiser (`gmm.posterior_mean`).
  * P = 8 "prompts": prompt p asks for class p with reward `r_p(x) = log p(c = p | x)` (the Bayes
    classifier, `rewards.class_log_posterior_reward`); N = 32 particles per prompt.
  * With lam = 1 the tilted target `p(x) p(p | x)` is the class-conditional `p(x | c = p)`: its
    mean reward and accuracy are reported as `target_*` (exact sampling, 256 per prompt), and
    `mmd_to_target` (RBF MMD^2 per prompt, mean over prompts; ~0 = the right distribution) says
    whether a method samples the tilted target or over/under-tilts it (a reward *above* the
    target's means over-tilting, i.e. lost diversity, not better sampling).
  * Main sampler: DDIM(eta = 1), T steps on a Karras grid (sigma 80 -> 0.002 -> 0).
  * LiDAR: lookahead n in {3, 10, 50} samples per prompt by DPM-Solver++(2M) with delta in
    {3, 5, 10} steps, rewards once, guidance with lam = 1 at scales {1, 4}.
  * Gradient guidance (DPS / UG forward): lam = 1, scales {1, 2, 4}; one denoiser VJP and one
    reward VJP per step.
  * best-of-N with N = 4 (4x the particles, keep the best of every 4).
Every program is AOT-compiled (compile time reported), then all are timed round-robin
(`time_interleaved`, medians) so load drift hits them alike. LiDAR's wall time = its lookahead
phase + its guided phase (both measured); NFE per output sample includes the lookahead's
`n * delta / N` amortised share. The exact GMM denoiser is cheap (O(K d) per sample), so the
guidance arithmetic (O(n d)) and the gradient's VJP are a larger share of the time than with a
U-Net; the NFE columns are the hardware-independent comparison.

Prints JSON lines (benchmarks/common.py); `--plot` writes a PNG (reward vs wall time and vs
NFE, titled with the load average).
"""

from __future__ import annotations

import argparse
import functools
import os
import statistics

import jax
import jax.numpy as jnp

from benchmarks.common import compile_aot, emit, environment, time_interleaved
from jaxdiff.diffusion import gmm as G
from jaxdiff.diffusion import guidance as GD
from jaxdiff.diffusion import lookahead as L
from jaxdiff.diffusion import quality as Q
from jaxdiff.diffusion import schedules as sch
from jaxdiff.diffusion import solvers as S

D, K, P, N = 64, 8, 8, 32


def make_problem(key):
    means = 0.35 * jax.random.normal(key, (K, D))
    return G.gaussian_mixture(jnp.ones(K), means, jnp.ones(K))


def prompt_reward(g):
    """`reward(x [n, D], label) -> [n]`, the log class posterior (vmappable over the label)."""

    def reward(x, label):
        logits, _, _ = G.component_terms(g, x, jnp.zeros((x.shape[0],)), None)
        logp = jax.nn.log_softmax(logits, axis=-1)  # one component per class
        return jnp.take_along_axis(logp, jnp.broadcast_to(label, (x.shape[0], 1)), 1)[:, 0]

    return reward


def accuracy(g, x, labels):
    logits, _, _ = G.component_terms(g, x.reshape(-1, D), jnp.zeros((x.size // D,)), None)
    pred = jnp.argmax(logits, -1).reshape(x.shape[:-1])
    return jnp.mean(pred == labels[:, None])


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--plot", default="benchmarks/results/lidar_gmm.png")
    args = ap.parse_args(argv)
    T = 25 if args.quick else 50
    repeats = 3 if args.quick else 9
    ns = (3, 10, 50)
    deltas = (3, 5, 10)
    env = environment()
    key = jax.random.key(0)
    g = make_problem(jax.random.fold_in(key, 1))
    den = G.denoiser(g)
    reward = prompt_reward(g)
    labels = jnp.arange(P, dtype=jnp.int32)
    sig = sch.karras_sigmas(T)
    x_T = jax.vmap(lambda p: S.prior_sample(key, (N, D), 80.0, offset=p * N))(labels)  # [P, N, D]
    x_T4 = jax.vmap(lambda p: S.prior_sample(key, (4 * N, D), 80.0, offset=10_000 + p * 4 * N))(
        labels)

    # ---- programs (per-prompt work vmapped over P prompts) ----
    def base(x_T):
        return jax.vmap(lambda xt: GD.base_sample(key, den, xt, sig)[0])(x_T)

    def look_phase(lkey, n, delta):
        def one(p):
            return L.lookahead_phase(jax.random.fold_in(lkey, p), den,
                                     lambda x: reward(x, p), (n, D), steps=delta)
        return jax.vmap(one)(labels)

    def lidar(look, x_T, scale):
        return jax.vmap(lambda lk, xt: GD.lidar_sample(key, den, lk, xt, sig, lam=1.0,
                                                       scale=scale)[0])(look, x_T)

    def grad(x_T, scale):
        return jax.vmap(lambda p, xt: GD.gradient_guidance_sample(
            key, den, lambda x: reward(x, p), xt, sig, lam=1.0, scale=scale)[0])(labels, x_T)

    def bon(x_T4):
        return jax.vmap(lambda p, xt: GD.best_of_n(key, den, lambda x: reward(x, p), xt, sig,
                                                   group_size=4)[0])(labels, x_T4)

    compiled, compile_s, calls = {}, {}, {}
    lkey = jax.random.fold_in(key, 2)

    def add(name, fn, *a):
        compiled[name], compile_s[name] = compile_aot(fn, *a)
        calls[name] = (compiled[name], a)

    add("base", base, x_T)
    add("grad", grad, x_T, jnp.float32(1.0))
    add("bon4", bon, x_T4)
    for n in ns:
        for d in deltas:
            add(f"look_n{n}_d{d}", functools.partial(look_phase, n=n, delta=d), lkey)
        add(f"lidar_n{n}", lidar, compiled[f"look_n{n}_d{deltas[0]}"](lkey), x_T,
            jnp.float32(1.0))
    times = time_interleaved(calls, warmup=1, repeats=repeats)
    med = {k: statistics.median(v) for k, v in times.items()}
    load = [round(v, 2) for v in os.getloadavg()]

    # exact target (lam = 1): class-conditional samples
    tgt = jax.vmap(lambda p: G.sample(g, jax.random.fold_in(key, 3), 256, cond=p))(labels)
    tgt_r = float(jnp.mean(jax.vmap(reward)(tgt, labels)))
    tgt_acc = float(accuracy(g, tgt, labels))

    rows = []

    def record(method, x, wall, nfe_fwd, nfe_bwd, reward_calls, **extra):
        r = float(jnp.mean(jax.vmap(reward)(x, labels)))
        mmd = float(jnp.mean(jax.vmap(Q.mmd_rbf)(x, tgt)))
        row = {"method": method, "reward": round(r, 4), "accuracy": round(float(accuracy(g, x, labels)), 4),
               "mmd_to_target": round(mmd, 5),
               "wall_s": round(wall, 4), "nfe_fwd_per_sample": nfe_fwd,
               "nfe_bwd_per_sample": nfe_bwd, "reward_calls_per_sample": reward_calls,
               "target_reward": round(tgt_r, 4), "target_accuracy": round(tgt_acc, 4),
               "T": T, "P": P, "N": N, "d": D, "K": K, "loadavg_after": load, **extra}
        rows.append(row)
        emit(row, env=env)

    record("base", compiled["base"](x_T), med["base"], T, 0, 0, compile_s=compile_s["base"])
    record("best_of_4", compiled["bon4"](x_T4), med["bon4"], 4 * T, 0, 4,
           compile_s=compile_s["bon4"])
    for scale in (1.0, 2.0, 4.0):
        record("gradient_guidance", compiled["grad"](x_T, jnp.float32(scale)), med["grad"], T, T, T,
               scale=scale, lam=1.0, compile_s=compile_s["grad"])
    for n in ns:
        for d in deltas:
            look = compiled[f"look_n{n}_d{d}"](lkey)
            t_look, t_main = med[f"look_n{n}_d{d}"], med[f"lidar_n{n}"]
            for scale in (1.0, 4.0):
                x = compiled[f"lidar_n{n}"](look, x_T, jnp.float32(scale))
                record("lidar", x, t_look + t_main, T + n * d / N, 0, n / N, n=n, delta=d,
                       scale=scale, lam=1.0, lookahead_s=round(t_look, 4),
                       guided_s=round(t_main, 4), lookahead_reward=round(float(look.rewards.max(1).mean()), 4),
                       compile_s=compile_s[f"lidar_n{n}"])
    if args.plot:
        plot(rows, args.plot, env, load)


def plot(rows, path, env, load):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(17, 4.8))
    panels = ((axes[0], "wall_s", "reward", "wall time per run of P x N samples [s]"),
              (axes[1], "nfe", "reward", "denoiser forwards per sample (+ backwards for grad.)"),
              (axes[2], "nfe", "mmd_to_target", "denoiser forwards per sample (+ backwards)"))
    xval = lambda r, k: r["wall_s"] if k == "wall_s" else (  # noqa: E731
        r["nfe_fwd_per_sample"] + r["nfe_bwd_per_sample"])
    for ax, xkey, ykey, xlabel in panels:
        for method, marker in (("base", "s"), ("best_of_4", "D"), ("gradient_guidance", "^")):
            pts = [r for r in rows if r["method"] == method]
            ax.scatter([xval(r, xkey) for r in pts], [r[ykey] for r in pts], marker=marker, s=50,
                       label=method)
            for r in pts:
                if "scale" in r:
                    ax.annotate(f"s={r['scale']:g}", (xval(r, xkey), r[ykey]), fontsize=7)
        for scale, color in ((1.0, "tab:red"), (4.0, "tab:purple")):
            pts = [r for r in rows if r["method"] == "lidar" and r["scale"] == scale]
            ax.scatter([xval(r, xkey) for r in pts], [r[ykey] for r in pts], c=color, marker="o",
                       s=30, label=f"LiDAR scale={scale:g}")
            for r in pts:
                ax.annotate(f"{r['n']}/{r['delta']}", (xval(r, xkey), r[ykey]), fontsize=6)
        if ykey == "reward":
            ax.axhline(rows[0]["target_reward"], ls="--", c="gray", lw=1, label="exact tilted target")
            ax.set_ylabel("mean reward log p(c | x)")
        else:
            ax.axhline(0.0, ls="--", c="gray", lw=1)
            ax.set_ylabel("MMD^2 to the exact tilted target (lower is better)")
        ax.set_xscale("log")
        ax.set_xlabel(xlabel)
    axes[0].legend(fontsize=7)
    fig.suptitle(f"LiDAR (labels n/delta) vs gradient guidance, GMM d={D}, K={K}, "
                 f"{env['device']}, loadavg {load} (shared 2-core machine)", fontsize=9)
    fig.tight_layout()
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    fig.savefig(path, dpi=110)
    print(f"wrote {path}", flush=True)


if __name__ == "__main__":
    main()
