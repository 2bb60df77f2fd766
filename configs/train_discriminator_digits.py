"""Train the DiffRS discriminator for the 8x8 digits denoiser.

Command: jaxdiff train-discriminator --config train_discriminator_digits
Needs:   a finished `jaxdiff train-denoiser --config train_denoiser_digits` run (model_dir).
Runtime here (2 shared CPU cores): see RUNTIME (measured, with the load average).

Real digits (label 1) vs `fake.num` unguided Heun samples of the denoiser (label 0); VP noise
importance-sampled as in DG; Adam 3e-4, L2 1e-7 (the reference's settings; the reference trains
50+ epochs at batch 128 on 50k+50k CIFAR images). `disc.extractor = "quality_net"` uses the
pretrained quality classifier as a frozen feature extractor (the reference's frozen ADM
classifier); "none" trains a conv head on the pixels.
Then DiffRS: jaxdiff sample --config sample_digits_diffrs   (loads runs/train_discriminator_digits)

This command only trains and evaluates the discriminator: the `diffrs` section (the DiffRS demo
earlier versions ran after training) was removed; its settings are the `guidance` section of
configs/sample_digits_diffrs.py. Runs started with the section's default values still resume
(specs.train_discriminator keeps those values in the checkpoint fingerprint).
"""

import ml_collections

RUNTIME = ("not measured at the default size; a 200-step run with fake.num=480 and 10-step grids "
           "took 81 s wall / 26 s CPU incl. compiles at load average ~16 on 2 cores")


def get_config():
    c = ml_collections.ConfigDict()
    c.model_dir = "runs/train_denoiser_digits"
    c.data_dir = ""
    c.conditional = False
    c.fake = dict(num=1440, batch_size=480, steps=18, sigma_min=0.002, sigma_max=80.0, rho=7.0)
    c.disc = dict(extractor="none", width=32, depth=2, emb_dim=64)
    c.train = dict(steps=1500, batch_size=64, lr=3e-4, weight_decay=1e-7)
    c.num_devices = 0
    c.seed = 0
    c.log_every = 50
    c.checkpoint_every = 500
    c.stop_after = 0
    # Stop (nothing final written, the last checkpoint kept) when the logged training loss exceeds
    # this many times its first logged value; 0: never.
    c.divergence_limit = 100.0
    c.progress = True
    c.resume = False
    c.run_dir = "runs/train_discriminator_digits"
    return c
