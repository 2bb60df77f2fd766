"""Sample the digits denoiser trained by `train_denoiser_digits` and score the samples.

Command: jaxdiff sample --config sample_digits
         (GMM oracle, no training needed: jaxdiff sample --config sample_digits --config.source=gmm)
Runtime here (2 CPU cores): 512 samples, Heun 18 steps (35 NFE), 8x8 U-Net: 17 s of CPU time
(39 s wall at load average ~15, of which 30 s sampling), plus ~7 s once to train the quality net.

Quality: Frechet distance on the features of a small ConvNet classifier trained on digits
(jaxdiff.diffusion.quality_net; trained once, ~10 s, then cached), NOT Inception FID; plus the
classifier's accuracy on class-conditional samples and its mean entropy.
"""

import ml_collections


def get_config():
    c = ml_collections.ConfigDict()
    c.source = "run"                 # run | gmm
    c.model_dir = "runs/train_denoiser_digits"
    c.use_ema = True
    c.data_dir = ""                  # TFDS root for the quality net's data ('' = default search)
    # Solvers: euler, heun, edm (alias edm_stochastic: s_churn...), ddim (eta), dpmpp_2m.
    c.solver = dict(name="heun", steps=18, sigma_min=0.002, sigma_max=80.0, rho=7.0,
                    s_churn=0.0, s_tmin=0.0, s_tmax=1e9, s_noise=1.0, eta=0.0)
    c.num_samples = 512
    c.batch_size = 128               # fixed per call; a multiple of the device count
    c.labels = "cycle"               # conditional models: cycle | none | a class number
    c.guidance = dict(name="none")   # none, diffrs, lidar, gradient, best_of_n, svdd, fk
    c.gmm = dict(image_shape=(4, 4, 1), num_components=4, std=0.2, mean_scale=0.6, seed=0)
    c.quality = dict(enabled=True, num_real=0, seed=0, width=32, feature_dim=64, epochs=20,
                     batch_size=128, lr=1e-3)
    # Inception FID (jaxdiff.fid): on when `ref` names reference statistics (EDM's .npz format,
    # or `jaxdiff fid-ref`); `weights`: pytorch-fid's Inception file ('' = $JAXDIFF_FID_WEIGHTS).
    c.fid = dict(ref="", weights="", resize="tf")
    c.save_samples = True            # samples.npz of all samples (False: only the grid's)
    c.num_devices = 0                # 0 = all visible devices
    c.seed = 0
    c.grid_max = 100
    c.progress = True
    c.run_dir = "runs/sample_digits"
    return c
