"""Expert trajectories for TM on Tiny-ImageNet (64 px, 200 classes, ConvNet-D4): the MTT recipe.

    jaxdiff experts --config experts_tiny
    jaxdiff distill --config distill_tiny:10,fred_tm       # reads runs/experts_tiny_imagenet
Data: `python -m jaxdiff.data.tiny_imagenet tiny-imagenet-200.zip --out DIR` once, then
JAXDIFF_DATA_DIR=DIR. Recipe (dd-common.md §8.1): 100 experts x 50 epochs, SGD lr 0.01, no
momentum or weight decay, batch 256, per-sample DSA, no ZCA; ConvNet-D4 (depth by image size),
width 128, instance norm; 51 snapshots of 857,160 parameters per expert (3.4 MB each).
Expected time and memory per device:
"""
# plan estimate (`jaxdiff plan ... --config.plan.accelerator=h200 --config.plan.precision=tf32`,
# 2026-12-04; memory: XLA:CPU's buffer assignment of the compiled step, per device; time: the
# step's FLOPs at 30 % of an H200's tf32 peak — estimates, not measurements; docs/results.md §7):
#   one epoch of 10 parallel experts (391 steps): 36.1 GiB, 1.23 PFLOP, 8.3 s; 100 experts x
#   50 epochs ~ 70 min at that rate

from _experts_base import experts_config


def get_config(arg: str | None = None):
    if arg:
        raise ValueError(f"experts_tiny takes no argument, got {arg!r}")
    return experts_config(dataset="tiny_imagenet", image_size=64,
                          buffer_dir="runs/experts_tiny_imagenet")
