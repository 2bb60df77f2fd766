"""CIFAR-10 IPC 1 with DM, CPU-sized: the docs/results.md comparison of random real / pixel /
FreD / DDiF at the same budget, iterations and evaluation.

Commands (one per parameterisation; random real images are evaluated by each run as well):
    jaxdiff distill --config distill_cifar10_cpu --config.param.name=pixel
    jaxdiff distill --config distill_cifar10_cpu --config.param.name=fred
    jaxdiff distill --config distill_cifar10_cpu --config.param.name=ddif
Sizes: 200 DM iterations with 32 real images per class (the references: 20,000 with 256),
DDiF warm-up 1000 steps (5000), evaluation 3 runs x 100 epochs (5 x 1000): small enough that all
three runs finish within an hour here, far too small to reproduce the papers' accuracies. Everything else as
configs/distill_cifar10.py. Runtime here (2 CPU cores): see the header of each row in
docs/results.md (roughly 10-20 minutes per run on an idle machine).
"""

from distill_cifar10 import get_config as full_config


def get_config():
    c = full_config()
    c.iterations = 200
    c.loss.batch_real = 32
    c.param.ddif.warmup_steps = 1000
    c.eval.epochs = 100
    c.eval.num_runs = 3
    c.log_every = 10
    c.checkpoint_every = 50
    c.run_dir = "runs/distill_cifar10_cpu"
    return c
