"""EDM networks in jaxdiff: denoiser throughput of the official-size networks, and the FID
benchmark of `jaxdiff sample` at reduced sample counts.

    python -m benchmarks.fid_edm timing [--batch 64] [--repeats 3] [--net cifar10-ddpmpp]
    python -m benchmarks.fid_edm fid --config sample_cifar10_edm --num 1000 \
        [--guidance none|diffrs|dg] [--config.x=... passed on to jaxdiff sample]

`timing`: the network of `edm-cifar10-32x32-cond-vp.pkl` (SongUNet DDPM++: 128 channels,
channel_mult [2, 2, 2], 4 blocks, attention at 16x16, label_dim 10, augment_dim 9; 55.7M
parameters; `--net imagenet64-adm` for ADM at 64x64 instead) under the EDM preconditioner, with
random weights (throughput does not depend on the values), one denoiser call D(x; sigma) on a
batch: float32 against bfloat16 compute (float32 parameters), compiled ahead of time (compile
seconds reported), timed round-robin so load drift hits both alike. images/s of a whole EDM
Heun sample follows as batch / (NFE x seconds per call), NFE 35 (18 steps) for CIFAR-10 and
79 (40 steps) for ImageNet-64; the sampler adds only elementwise work between calls.

`fid`: runs `jaxdiff sample` with the given preset and `--config.num_samples=N` (the user's
network pickle, FID weights and reference statistics, see README "Pretrained EDM networks")
and prints the figures it wrote: FID, algorithmic and executed NFE, wall time, images/s.

Prints JSON lines (benchmarks/common.py); results are recorded in docs/results_diffusion.md.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from benchmarks.common import compile_aot, compiled_flops, emit, environment, summarize
from benchmarks.common import time_interleaved

# Constructor kwargs of the official networks (shared/specs/edm-checkpoints.md, section 2.4).
NETS = {
    "cifar10-ddpmpp": (dict(img_resolution=32, img_channels=3, label_dim=10, augment_dim=9,
                            model_channels=128, channel_mult=[2, 2, 2], num_blocks=4,
                            attn_resolutions=[16], dropout=0.13, embedding_type="positional",
                            encoder_type="standard", decoder_type="standard",
                            channel_mult_noise=1, resample_filter=[1, 1]), 35),
    "imagenet64-adm": (dict(img_resolution=64, img_channels=3, label_dim=1000, augment_dim=0,
                            model_type="DhariwalUNet", model_channels=192,
                            channel_mult=[1, 2, 3, 4], num_blocks=3,
                            attn_resolutions=[32, 16, 8], dropout=0.0), 79),
}


def random_network(kwargs: dict, seed: int = 0):
    """`(graphdef, params)` of an `EDMPrecondNet(**kwargs)` with N(0, 0.05^2) parameters."""
    from jaxdiff.models.edm import EDMPrecondNet

    graphdef, state = nnx.split(nnx.eval_shape(lambda: EDMPrecondNet(**kwargs)))
    leaves, tree = jax.tree.flatten(state)
    keys = jax.random.split(jax.random.key(seed), len(leaves))
    leaves = [0.05 * jax.random.normal(k, leaf.shape, leaf.dtype)
              for k, leaf in zip(keys, leaves)]
    return graphdef, jax.tree.unflatten(tree, leaves)


def timing(args) -> None:
    kwargs, nfe = NETS[args.net]
    graphdef, params = random_network(kwargs)
    count = sum(int(np.prod(p.shape)) for p in jax.tree.leaves(params))
    b, r, c = args.batch, kwargs["img_resolution"], kwargs["img_channels"]
    rng = np.random.default_rng(0)
    # sigma >= 1 so that D is mostly the network's output c_out F (c_skip x is what dominates
    # at small sigma, and would hide the bfloat16 error); x = sigma * N(0, 1) as in sampling.
    sigma = np.exp(rng.uniform(0.0, np.log(80.0), b)).astype(np.float32)
    x = jnp.asarray(rng.normal(size=(b, r, r, c)).astype(np.float32) * sigma[:, None, None, None])
    sigma = jnp.asarray(sigma)
    labels = jax.nn.one_hot(jnp.arange(b) % kwargs["label_dim"], kwargs["label_dim"])
    calls, base = {}, {"net": args.net, "parameters": count, "batch": b, "nfe_per_sample": nfe}
    for name, dtype in (("float32", jnp.float32), ("bfloat16", jnp.bfloat16)):
        def denoise(p, x, s, y, dtype=dtype):
            return nnx.merge(graphdef, p)(x, s, y, compute_dtype=dtype)

        compiled, seconds = compile_aot(denoise, params, x, sigma, labels)
        calls[name] = (compiled, (params, x, sigma, labels))
        emit({**base, "what": "compile", "compute_dtype": name, "compile_s": round(seconds, 2),
              "gflop_per_call": (compiled_flops(compiled) or float("nan")) / 1e9},
             env=environment())
    out = {k: np.asarray(f(*a), np.float32) for k, (f, a) in calls.items()}
    rel = float(np.max(np.abs(out["bfloat16"] - out["float32"])) /
                np.max(np.abs(out["float32"])))
    times = time_interleaved(calls, warmup=1, repeats=args.repeats)
    for name, t in times.items():
        s = summarize(t)
        emit({**base, "what": "denoiser_call", "compute_dtype": name, **s,
              "images_per_s_per_call": b / s["median_s"],
              "sample_images_per_s": b / (nfe * s["median_s"]),
              "bf16_vs_f32_max_rel": rel}, env=environment())


def fid(args, passthrough: list[str]) -> None:
    from jaxdiff import cli

    run_dir = os.path.abspath(args.run_dir or f"runs/fid_edm_{args.config}_{args.num}")
    argv = ["sample", "--config", args.config, f"--config.num_samples={args.num}",
            f"--config.guidance.name={args.guidance}", f"--config.run_dir={run_dir}",
            *passthrough]
    t0 = time.perf_counter()
    code = cli.main(argv)
    wall = time.perf_counter() - t0
    if code:
        raise SystemExit(code)
    with open(os.path.join(run_dir, "results.json")) as f:
        res = json.load(f)
    keep = ("fid", "fid_reference", "num_samples", "nfe", "nfe_executed", "sampling_seconds",
            "first_batch_seconds", "images_per_s", "guidance", "mesh_size", "devices", "source")
    emit({"what": "fid", "config": args.config, "wall_s": round(wall, 1),
          **{k: res[k] for k in keep if k in res}}, env=environment())


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="mode", required=True)
    t = sub.add_parser("timing")
    t.add_argument("--net", choices=sorted(NETS), default="cifar10-ddpmpp")
    t.add_argument("--batch", type=int, default=64)
    t.add_argument("--repeats", type=int, default=3)
    f = sub.add_parser("fid")
    f.add_argument("--config", default="sample_cifar10_edm")
    f.add_argument("--num", type=int, default=1000)
    f.add_argument("--guidance", default="none")
    f.add_argument("--run-dir", default="")
    args, rest = p.parse_known_args(argv)
    if args.mode == "timing":
        if rest:
            p.error(f"unknown arguments {rest}")
        timing(args)
    else:
        fid(args, rest)


if __name__ == "__main__":
    main(sys.argv[1:])
