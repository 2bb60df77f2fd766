"""Expert trajectories for TM on CIFAR-100 (32 px, ConvNet-D3): the MTT recipe as FreD and DDiF
run it (no ZCA, CIFAR-10 normalisation statistics, as their TM utils normalise CIFAR-100).

    jaxdiff experts --config experts_cifar100
    jaxdiff distill --config distill_cifar100:10,ddif_tm    # reads runs/experts_cifar100
Recipe (dd-common.md §8.1): 100 experts x 50 epochs, SGD lr 0.01, no momentum or weight decay,
batch 256, per-sample DSA; 51 snapshots of 504,420 parameters per expert (2 MB each). MTT's own
CIFAR-100 IPC 1 / 50 rows use ZCA (--config.zca=True, and distil with the same store).
Expected time and memory per device:
"""
# plan estimate (`jaxdiff plan ... --config.plan.accelerator=h200 --config.plan.precision=tf32`,
# 2026-12-04; memory: XLA:CPU's buffer assignment of the compiled step, per device; time: the
# step's FLOPs at 30 % of an H200's tf32 peak — estimates, not measurements; docs/results.md §7):
#   one epoch of 10 parallel experts (196 steps): 8.95 GiB, 144 TFLOP, 0.97 s; 100 experts x
#   50 epochs ~ 8 min at that rate

from _experts_base import experts_config


def get_config(arg: str | None = None):
    if arg:
        raise ValueError(f"experts_cifar100 takes no argument, got {arg!r}")
    return experts_config(dataset="cifar100", image_size=0, buffer_dir="runs/experts_cifar100",
                          stats="cifar10")
