"""Quickstart: distil scikit-learn digits (embedded, no download) into DDiF neural fields with DM,
then evaluate against random real images at the same budget and print both.

Command: jaxdiff distill --config quickstart
Runtime here (2 CPU cores): 171 s wall / 84 s user CPU measured in a fresh clone at load ~6
(other jobs running), i.e. about 1-1.5 min idle, after a ~30 s install. Result of that run:
DDiF 90.75 +- 0.69 % vs random real images at the same budget 71.59 +- 0.53 % (5 runs).
Digits are upsampled to 16x16 (one channel); the ConvNet has depth 2 at 16 px, so its embedding
has the same 2048 dimensions as ConvNet-D3 at 32 px. At IPC 1 the budget is 256 floats per class;
a grayscale SIREN with depth 2 and width 6 has 67 parameters, so DDiF stores 3 fields per class.
"""

from _distill_base import base_config


def get_config():
    c = base_config()
    c.data.name = "digits"
    c.data.image_size = 16
    c.ipc = 1
    c.param.name = "ddif"
    c.param.ddif.depth, c.param.ddif.width = 2, 6
    c.param.ddif.warmup_steps = 1000
    c.param.ddif.warmup_lr = 5e-3
    c.loss.name = "dm"
    c.loss.batch_real = 128
    c.opt.name, c.opt.lr = "adam", 1e-3
    c.model.width = 64
    c.iterations = 500
    c.eval.epochs = 300
    c.eval.num_runs = 5
    c.eval.compare_random = True
    c.log_every = 10
    c.checkpoint_every = 50
    c.run_dir = "runs/quickstart"
    return c
