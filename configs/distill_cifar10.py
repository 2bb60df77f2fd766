"""CIFAR-10 (`cifar10_jpeg`) distillation with the references' defaults, for any parameterisation
and DM or DC: choose with overrides, everything else follows the specs (jaxdiff.distill.presets).

Commands (accelerator-sized; on this 2-core CPU a DM iteration at IPC 1 takes ~1-3 s, so the
20,000 DM iterations are days — use configs/distill_cifar10_cpu.py here):
    jaxdiff distill --config distill_cifar10 --config.param.name=ddif --config.ipc=1
    jaxdiff distill --config distill_cifar10 --config.param.name=fred --config.ipc=10
    jaxdiff distill --config distill_cifar10 --config.param.name=pixel --config.loss.name=dc
Defaults: DM 20,000 iterations, DC 1,000 (set `iterations` for DC), batch_real 256, DSA on,
ConvNet-D3; evaluation 5 runs x 1000 epochs, final-epoch accuracy (dd-common.md §11). FreD K=64
(fred.md §3); DDiF SIREN from the reference's table for the IPC, warm-up 5000 Adam steps.
"""

from _distill_base import base_config


def get_config():
    c = base_config()
    c.data.name = "cifar10_jpeg"
    c.ipc = 1
    c.iterations = 20000
    c.eval_every = 0
    c.eval.epochs = 1000
    c.eval.num_runs = 5
    c.eval.compare_random = True
    c.checkpoint_every = 500
    c.log_every = 50
    c.run_dir = "runs/distill_cifar10"
    return c
