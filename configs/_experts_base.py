"""Shared defaults of the expert presets (not a preset itself): the MTT recipe of
dd-common.md §8.1, which FreD and DDiF reuse — 100 experts x 50 epochs, SGD lr 0.01 without
momentum or weight decay, batch 256, per-sample DSA, one snapshot per epoch, no ZCA."""

import ml_collections


def experts_config(*, dataset: str, image_size: int, buffer_dir: str, stats: str = ""):
    c = ml_collections.ConfigDict()
    # stats: normalisation statistics by name ("" = the dataset's own); experts and the
    # distillation that reads them must agree (the store records mean and std)
    c.data = dict(name=dataset, data_dir="", image_size=image_size, stats=stats)
    c.zca = False
    c.zca_reg = 0.1
    c.model = dict(name="convnet", depth=0, width=128, norm="instancenorm")  # depth by size
    c.num_experts = 100
    c.parallel = 10         # experts per compiled program (vmapped); results do not depend on it
    c.epochs = 50           # snapshots 0..50
    c.lr = 0.01             # lr_teacher
    c.batch_size = 256
    c.dsa_strategy = "auto"
    c.seed = 0
    c.num_devices = 0       # split groups over this many devices (0 = all)
    # Stop (nothing final written; finished epochs kept) when an expert's mean train loss in
    # an epoch exceeds this many times the chance-level cross-entropy log(classes); 0: never.
    c.divergence_limit = 100.0
    c.progress = True
    c.resume = False
    c.buffer_dir = buffer_dir
    return c
