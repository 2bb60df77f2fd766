"""Expert trajectories on the embedded digits (16x16, ConvNet-D2 width 128): CPU-sized.

Command: jaxdiff experts --config experts_digits
Runtime here (2 CPU cores): 4 experts x 15 epochs, all 4 in one vmapped program, took 3.3 CPU-
minutes (user 2.0 + sys 1.3; 16.6 min wall at load average ~15 on the shared machine), i.e.
about 2 minutes on an idle machine. Test accuracy 93.2 +- 0.6 % after 15 epochs.
Recipe (dd-common.md §8.1): SGD lr 0.01, no momentum/weight decay, batch 256, per-sample DSA
(digits strategy: no flip), one snapshot per epoch. The references use 100 experts x 50 epochs.
"""

from _experts_base import experts_config


def get_config():
    c = experts_config(dataset="digits", image_size=16, buffer_dir="runs/experts_digits")
    c.num_experts = 4
    c.parallel = 4          # all 4 in one vmapped program
    c.epochs = 15           # snapshots 0..15
    return c
