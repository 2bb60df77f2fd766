"""DiffRS vs the base Heun sampler on digits, end to end: quality, cost and discriminator checks.

    python -m benchmarks.diffrs_digits --model-dir runs/dn_unet400 --disc-dir runs/disc_unet400_big \
        --num 2048 --seeds 0,1 --gammas 0.5,0.75

Inputs: a `jaxdiff train-denoiser` run and a `jaxdiff train-discriminator` run trained against
it (commands in docs/results_diffusion.md §2). Prints JSON lines:

* `disc_check` (per VP time tau): the discriminator's P(logit > 0), mean and std of its logit on
  real training images, held-out real test images, the fakes it was trained on and *fresh* base
  samples (another seed). Separates a calibrated discriminator (overlapping logits) from a
  saturated one (every fake at the same very negative logit: no ranking among fakes).
* `tables`: log M / log M' at each gamma and the mean warm-up log-ratio per grid point.
* one `sample` line per (sampler, seed): Frechet distance on the digits quality net's features
  against the test split (`fd`, 359 images) and against all 1,797 digits (`fd_all`, a
  lower-variance reference; the quality net saw the training part, equally for all samplers),
  class histogram, mean entropy, the discriminator's mean logit at sigma = 0 and fraction
  classified real, NFE (algorithmic / executed per sample), transition accept rate, restarts,
  rejection-depth histogram, wall seconds (incl. compile of the first call).

Heun 18 steps on the Karras grid (sigma 0.002..80, rho 7); DiffRS pool 128 slots; warm-up 512
base trajectories (seed 999); max_iter unbounded unless `--max-iter`.
"""

from __future__ import annotations

import argparse
import json
import time

import jax
import jax.numpy as jnp
import numpy as np

from jaxdiff import data as jdata
from jaxdiff.diffusion import discriminator as D
from jaxdiff.diffusion import rejection as R
from jaxdiff.diffusion import schedules, solvers
from jaxdiff.diffusion import quality_net as QN
from jaxdiff.diffusion.saved import load_discriminator, load_model


def emit(rec: dict) -> None:
    print(json.dumps(rec), flush=True)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model-dir", required=True)
    ap.add_argument("--disc-dir", required=True)
    ap.add_argument("--num", type=int, default=512, help="samples per run")
    ap.add_argument("--seeds", default="0,1")
    ap.add_argument("--gammas", default="0.5,0.75")
    ap.add_argument("--max-iter", type=int, default=0, help="0: unbounded")
    a = ap.parse_args(argv)
    seeds = [int(s) for s in a.seeds.split(",")]
    gammas = [float(g) for g in a.gammas.split(",")]
    max_iter = a.max_iter or np.iinfo(np.int32).max
    ns = a.num

    model, disc = load_model(a.model_dir), load_discriminator(a.disc_dir)
    shape = tuple(model.image_shape)
    sig = schedules.karras_sigmas(18, 0.002, 80.0, 7.0)
    mst, dst = model.state(True), disc.state()
    net = QN.get_quality_net(QN.QualityNetSpec("digits", image_size=8))
    train_real = jdata.to_model_space(jdata.load("digits", "train", image_size=8).images)
    test_real = jdata.to_model_space(jdata.load("digits", "test", image_size=8).images)
    all_real = np.concatenate([train_real, test_real])

    @jax.jit
    def base(mst, key):
        x = solvers.prior_sample(key, (ns, *shape), sig[0])
        return solvers.sample(solvers.heun(), model.make_denoise(mst), x, sig, key, None)[0]

    @jax.jit
    def warm(mst, dst):
        return R.warmup_logits(model.make_denoise(mst), disc.make_logit(dst), sig,
                               jax.random.key(999), 512, shape, batch_size=128)

    @jax.jit
    def diffrs(mst, dst, key, logits, gamma, max_iter):
        return R.diffrs(model.make_denoise(mst), disc.make_logit(dst), sig, logits, gamma, key,
                        num_samples=ns, batch_size=128, sample_shape=shape, max_iter=max_iter)

    vp_logit = jax.jit(lambda dst, x, t: D.vp_logit_of(disc.graphdef, *dst)(x, t))
    logit0 = jax.jit(lambda dst, x: disc.make_logit(dst)(x, jnp.zeros((x.shape[0],))))

    # Discriminator check on held-out data (fresh fakes: another seed than the training fakes).
    with np.load(f"{a.disc_dir}/fake.npz") as z:
        train_fake = z["samples"][:512]
    fresh = np.asarray(base(mst, jax.random.key(12345)))[:512]
    sets = {"real_train": train_real[:512], "real_test": test_real, "fake_train": train_fake,
            "fake_fresh": fresh}
    for tau in (0.0, 0.05, 0.1, 0.2):
        rec = {"bench": "disc_check", "tau": tau}
        for name, x in sets.items():
            x = jnp.asarray(x)
            t = jnp.full((x.shape[0],), tau)
            noise = jax.random.normal(jax.random.fold_in(jax.random.key(7), int(tau * 1000)),
                                      x.shape)
            lg = np.asarray(vp_logit(dst, D.perturb_vp(x, t, noise), t))
            rec[name] = {"p_real": round(float(np.mean(lg > 0)), 3),
                         "mean": round(float(lg.mean()), 2), "std": round(float(lg.std()), 2)}
        emit(rec)

    w = warm(mst, dst)
    for g in gammas:
        tab = R.rejection_tables(w, g)
        emit({"bench": "tables", "gamma": g,
              "log_m": np.round(np.asarray(tab.log_m), 2).tolist(),
              "log_m_prime": np.round(np.asarray(tab.log_m_prime), 2).tolist(),
              "warmup_mean_logit": np.round(np.asarray(w.mean(0)), 2).tolist()})

    def report(name, seed, x, extra):
        q = QN.sample_quality(x, test_real, net)
        qa = QN.sample_quality(x, all_real, net)
        l0 = np.asarray(logit0(dst, jnp.asarray(x)))
        emit({"bench": "sample", "sampler": name, "seed": seed, "num": ns,
              "fd": round(q["frechet_distance"], 3), "fd_all": round(qa["frechet_distance"], 3),
              "class_histogram": q["class_histogram"], "mean_entropy": round(q["mean_entropy"], 3),
              "disc_logit0": round(float(l0.mean()), 2),
              "disc_frac_real": round(float((l0 > 0).mean()), 3), **extra})

    for s in seeds:
        t0 = time.perf_counter()
        x = np.asarray(jax.block_until_ready(base(mst, jax.random.key(s))))
        report("heun", s, x, {"nfe_algorithmic": 35, "nfe_executed": 35,
                              "seconds": round(time.perf_counter() - t0, 1)})
        for g in gammas:
            t0 = time.perf_counter()
            x, info = diffrs(mst, dst, jax.random.key(s), w, jnp.float32(g), jnp.int32(max_iter))
            x = np.asarray(jax.block_until_ready(x))
            info = jax.device_get(info)
            tests = max(int(np.sum(info.transition_tests)), 1)
            report(f"diffrs_gamma{g:g}", s, x, {
                "nfe_algorithmic": round(float(info.algorithmic_nfe) / ns, 1),
                "nfe_executed": round(float(info.executed_nfe) / ns, 1),
                "transition_accept_rate": round(float(np.sum(info.transition_accepts)) / tests, 3),
                "restarts": int(info.restarts), "complete": bool(info.complete),
                "depth_hist": np.asarray(info.depth_hist).tolist(),
                "seconds": round(time.perf_counter() - t0, 1)})


if __name__ == "__main__":
    main()
