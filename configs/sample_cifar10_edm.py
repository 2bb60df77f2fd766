"""EDM's CIFAR-10 benchmark: 50,000 class-conditional samples of `edm-cifar10-32x32-cond-vp`
with EDM's deterministic Heun sampler (18 steps, NFE 35), scored by FID.

Argument GUIDANCE (default none): none | diffrs | dg
    jaxdiff sample --config sample_cifar10_edm                  # EDM alone (paper: FID 1.79)
    jaxdiff sample --config sample_cifar10_edm:dg               # + Discriminator Guidance
    jaxdiff sample --config sample_cifar10_edm:diffrs           # + DiffRS (DG's discriminator)
    jaxdiff sample --config sample_cifar10_edm --config.num_samples=5000   # a reproducible part

Files (downloaded once by you; jaxdiff never downloads; a missing one is named with its URL):
  checkpoints/edm-cifar10-32x32-cond-vp.pkl
      https://nvlabs-fi-cdn.nvidia.com/edm/pretrained/edm-cifar10-32x32-cond-vp.pkl
      (or a directory from `jaxdiff import-checkpoint FILE --out DIR`, then model_dir=DIR)
  checkpoints/pt_inception-2015-12-05-6726825d.pth   (the FID Inception, 95 MB)
      https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/pt_inception-2015-12-05-6726825d.pth
  checkpoints/cifar10-32x32.npz   (EDM's reference statistics of the 50,000 training images)
      https://nvlabs-fi-cdn.nvidia.com/edm/fid-refs/cifar10-32x32.npz
      (or computed here: jaxdiff fid-ref --dataset cifar10 --split train --out FILE)
  dg / diffrs: checkpoints/dg/32x32_classifier.pt (ADM's classifier, DG's 32 px release) and
      checkpoints/dg/discriminator_250.pt (DG's conditional CIFAR-10 head); URLs in
      `jaxdiff.models.dg` (Google Drive folders of alsdudrla10/DG's README)

Sample i is drawn from `fold_in(seed, i)` with class i mod 10, so any subset of the 50,000 is
the same images on any mesh and process count. EDM's own generate.py draws the classes at
random per seed instead; FID is computed the same way (EDM's TF-resize detector on the uint8
images EDM saves, reference statistics of the whole training set). DG's settings (its README,
CIFAR-10 conditional: `generate.py --dg_weight_1st_order=1 --cond=1 --boosting=1`): weight 1 on
the Euler evaluation, 0 on the Heun correction, tau window [0.01, 1]; DG's `boosting` (a larger
weight for low-log-ratio samples) is not implemented, so expect FID slightly above DG's 1.64.
Runtime: on an accelerator, see docs/results_diffusion.md; on this 2-core CPU ~0.03 images/s
(not a CPU benchmark).
"""

import ml_collections

GUIDANCE = ("none", "diffrs", "dg")


def guidance_section(name: str, preset: str) -> dict:
    if name not in GUIDANCE:
        raise ValueError(f"{preset}: GUIDANCE {name!r} is not one of {GUIDANCE}")
    if name == "none":
        return dict(name="none")
    if name == "dg":
        return dict(name="dg", classifier="checkpoints/dg/32x32_classifier.pt",
                    head="checkpoints/dg/discriminator_250.pt", weight=1.0, weight_2nd=0.0,
                    time_min=0.01, time_max=1.0, time="auto")
    # DiffRS on DG's discriminator: import it once (python -c "from jaxdiff.models import dg;
    # dg.import_discriminator(...)", see README) and point disc_dir at the result.
    return dict(name="diffrs", disc_dir="checkpoints/dg/imported", gamma=0.75, warmup=1024,
                warmup_batch=256, max_iter=0, clamp_zero=True, warmup_seed=0)


def get_config(arg: str | None = None):
    c = ml_collections.ConfigDict()
    c.source = "edm"
    c.model_dir = "checkpoints/edm-cifar10-32x32-cond-vp.pkl"
    c.expect = dict(image_size=32, num_classes=10)   # the network the FID reference is for
    c.use_ema = True
    c.data_dir = ""
    c.solver = dict(name="heun", steps=18, sigma_min=0.002, sigma_max=80.0, rho=7.0,
                    s_churn=0.0, s_tmin=0.0, s_tmax=1e9, s_noise=1.0, eta=0.0)
    c.num_samples = 50000
    c.batch_size = 512               # per call, over all devices; a multiple of the device count
    c.labels = "cycle"
    c.guidance = guidance_section(arg or "none", "sample_cifar10_edm")
    c.gmm = dict(image_shape=(4, 4, 1), num_components=4, std=0.2, mean_scale=0.6, seed=0)
    c.quality = dict(enabled=False, num_real=0, seed=0, width=32, feature_dim=64, epochs=20,
                     batch_size=128, lr=1e-3)
    c.fid = dict(ref="checkpoints/cifar10-32x32.npz",
                 weights="checkpoints/pt_inception-2015-12-05-6726825d.pth", resize="tf")
    c.save_samples = False           # samples.npz of all images (150 MB at 50,000); grid always
    c.num_devices = 0
    c.seed = 0
    c.grid_max = 100
    c.progress = True
    c.run_dir = f"runs/sample_cifar10_edm_{arg or 'none'}"
    return c
