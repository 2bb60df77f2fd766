"""The references' per-setting defaults for `jaxdiff distill` as plain tables (read by
`jaxdiff.specs.distill.resolve` where a config says "auto" or 0).

Sources (see the specs for the evidence level of each figure):

* pixel: DC/DSA `--lr_img 0.1`, DM `--lr_img 1.0`, SGD momentum 0.5 (dd-common.md §5, §7);
* FreD: `lr_freq` DC 1e3, DM 1e6, SGD momentum 0.5, unnormalised DCT (fred.md §6) — with
  `dct_norm="ortho"` these rates do not apply and "auto" is refused;
* TM: MTT/FreD/DDiF learning rates and FreD's TM table (syn_steps, expert_epochs,
  max_start_epoch, lr_lr, lr_teacher) per (dataset, IPC);
* DDiF: Adam `lr_nf` 5e-5 for DM and DC (the ImageNette scripts; CIFAR values are in the paper's
  appendix, UNVERIFIED: ddif.md §5), SIREN depth/width of the reference's `hyper_params.py`.

DDiF's DM steps its optimiser once per class inside the class loop. With the per-instance
(masked) optimiser that equals one joint step on the summed loss: class c's fields get gradient
only from class c's term, and the other classes' fields are left untouched by each per-class
step, so the sequence of per-class steps and the joint step update every field identically.
"""

from __future__ import annotations

from typing import NamedTuple

# (param, loss) -> (optimizer, learning rate, momentum)
OPTIMIZER_DEFAULTS = {
    ("pixel", "dm"): ("sgd", 1.0, 0.5),
    ("pixel", "dc"): ("sgd", 0.1, 0.5),
    ("fred", "dm"): ("sgd", 1e6, 0.5),
    ("fred", "dc"): ("sgd", 1e3, 0.5),
    ("ddif", "dm"): ("adam", 5e-5, 0.0),
    ("ddif", "dc"): ("adam", 5e-5, 0.0),
    # TM: MTT lr_img 1000 (CIFAR-10 IPC1, [U/T]); FreD lr_freq 1e8; DDiF lr_nf 1e-4 (the
    # ImageNette script; the CIFAR value is in the paper's appendix, UNVERIFIED).
    ("pixel", "tm"): ("sgd", 1000.0, 0.5),
    ("fred", "tm"): ("sgd", 1e8, 0.5),
    ("ddif", "tm"): ("adam", 1e-4, 0.0),
}

# TM per (dataset family, ipc): (syn_steps, expert_epochs, max_start_epoch, lr_lr, lr_teacher),
# FreD's TM/hyper_params.py (fred.md §6), used for pixel and FreD.
TM_DEFAULTS = {
    ("cifar10", 1): (50, 2, 5, 1e-7, 1e-2),
    ("cifar10", 10): (40, 2, 15, 1e-5, 1e-2),
    ("cifar10", 50): (30, 2, 40, 1e-5, 1e-3),
    ("cifar100", 1): (50, 2, 15, 1e-5, 1e-2),
    ("cifar100", 10): (20, 2, 40, 1e-5, 1e-2),
    ("cifar100", 50): (80, 2, 40, 1e-5, 1e-2),
}

# DDiF's own TM/hyper_params.py (ddif.md §6): syn_steps 60 everywhere, lr_lr 1e-5.
DDIF_TM_DEFAULTS = {
    ("cifar10", 1): (60, 2, 10, 1e-5, 1e-2),
    ("cifar10", 10): (60, 2, 10, 1e-5, 1e-2),
    ("cifar10", 50): (60, 2, 40, 1e-5, 1e-2),
    ("cifar100", 1): (60, 2, 40, 1e-5, 1e-2),
    ("cifar100", 10): (60, 2, 40, 1e-5, 1e-2),
    ("cifar100", 50): (60, 2, 40, 1e-5, 1e-2),
}

# jaxdiff dataset name -> the key of the reference presets
DATASET_FAMILY = {"cifar10": "cifar10", "cifar10_jpeg": "cifar10", "cifar100": "cifar100"}


class TMDefaults(NamedTuple):
    """One row of a TM table (dd-common.md §8.4, fred.md §6, ddif.md §6)."""

    syn_steps: int
    expert_epochs: int
    max_start_epoch: int
    lr_lr: float
    lr_teacher: float


def optimizer_default(param: str, loss: str) -> tuple[str, float, float]:
    """`(optimizer, learning rate, momentum)` of the references for (param, loss); LCMat-C uses
    DC's (it is DC's machinery with another matching loss). KeyError when there is none."""
    return OPTIMIZER_DEFAULTS[(param, "dc" if loss == "lcmat" else loss)]


def tm_default(dataset: str, ipc: int, param: str) -> TMDefaults:
    """The TM row for (dataset family, IPC): DDiF's own table for DDiF, FreD's for pixel and
    FreD. KeyError when the references have none."""
    table = DDIF_TM_DEFAULTS if param == "ddif" else TM_DEFAULTS
    return TMDefaults(*table[(DATASET_FAMILY.get(dataset), ipc)])
