"""Train an EDM U-Net denoiser on CIFAR-10 (TFDS `cifar10_jpeg`, prepared under ../shared/tfds or
$JAXDIFF_DATA_DIR), class-conditional with 10 % label dropout (so it supports CFG).

Command: jaxdiff train-denoiser --config train_denoiser_cifar10
Runtime (estimate, not run end to end): this U-Net (3 resolutions, 64 base channels, 2 blocks,
5.66 M parameters) costs 896 GFLOP per training step at batch 128 (XLA cost_analysis), 104x the
digits preset's 8.6 GFLOP. The digits preset runs at ~80 GFLOP/s on the 2-core CPU, so here
expect ~11 s per step: CPU is only good for a smoke test (--config.train.steps=20). On one
H100-class GPU at an assumed 50-100 TFLOP/s effective, ~10-20 ms per step: 200k steps in roughly
1-2 hours (unmeasured; no GPU was available).
"""

import ml_collections

from train_denoiser_digits import get_config as _digits


def get_config():
    c = _digits()
    c.data = dict(name="cifar10_jpeg", data_dir="", image_size=0)
    c.model = dict(name="unet", base_channels=64, channel_mult=(1, 2, 2), num_blocks=2,
                   attention=True, hidden=256, depth=3, emb_dim=64)
    c.conditional = True
    c.train = dict(steps=200_000, batch_size=128, lr=2e-4, warmup_steps=1000, grad_clip=1.0,
                   ema_decay=0.9999, ema_warmup=True, sigma_data=0.5, p_mean=-1.2, p_std=1.2,
                   label_dropout=0.1)
    c.sample = dict(every=10_000, num=100, solver="heun", steps=18, sigma_min=0.002, sigma_max=80.0, rho=7.0)
    c.log_every = 100
    c.checkpoint_every = 5000
    c.run_dir = "runs/train_denoiser_cifar10"
    return c
