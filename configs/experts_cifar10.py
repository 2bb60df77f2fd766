"""Expert trajectories on CIFAR-10 (prepared `cifar10_jpeg`), ConvNet-D3, the MTT recipe.

Command: jaxdiff experts --config experts_cifar10 [--config.zca=True]
Runtime: accelerator-sized. Estimated from FLOPs (~0.3 GFLOP per image per training step, 51k
images x 50 epochs x 100 experts ~ 7.5e16 FLOP): roughly 1-2 GPU-hours on an H100-class GPU at
realistic ConvNet utilisation; on this 2-core CPU (~50 GFLOP/s) one expert-epoch takes ~5 min, so
the full buffer is out of reach here (use --config.num_experts=1 --config.epochs=2 to smoke-test).
Recipe (dd-common.md §8.1): 100 experts x 50 epochs, SGD lr 0.01, no momentum/weight decay,
batch 256, per-sample DSA, one snapshot per epoch (51 per expert, 1.28 MB each: ~6.5 GB).
MTT trains CIFAR-10 IPC 1/10 experts with ZCA and IPC 50 without (dd-common.md §8.4); FreD
refuses ZCA. Experts and distillation must agree on ZCA: the store records it.
"""

from _experts_base import experts_config


def get_config():
    c = experts_config(dataset="cifar10_jpeg", image_size=0, buffer_dir="runs/experts_cifar10")
    c.model.depth = 3
    return c
