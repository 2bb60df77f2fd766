"""Expert trajectories on the embedded digits (16x16, ConvNet-D2 width 128): CPU-sized.

Command: jaxdiff experts --config experts_digits
Runtime here (2 CPU cores): 4 experts x 15 epochs, all 4 in one vmapped program, took 3.3 CPU-
minutes (user 2.0 + sys 1.3; 16.6 min wall at load average ~15 on the shared machine), i.e.
about 2 minutes on an idle machine. Test accuracy 93.2 +- 0.6 % after 15 epochs.
Recipe (dd-common.md §8.1): SGD lr 0.01, no momentum/weight decay, batch 256, per-sample DSA
(digits strategy: no flip), one snapshot per epoch. The references use 100 experts x 50 epochs.
"""

import ml_collections


def get_config():
    c = ml_collections.ConfigDict()
    c.data = dict(name="digits", data_dir="", image_size=16)
    c.zca = False
    c.zca_reg = 0.1
    c.model = dict(name="convnet", depth=0, width=128, norm="instancenorm")  # depth 0 = by size
    c.num_experts = 4
    c.parallel = 4          # experts per compiled program (vmapped); results do not depend on it
    c.epochs = 15           # snapshots 0..15
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
    c.buffer_dir = "runs/experts_digits"
    return c
