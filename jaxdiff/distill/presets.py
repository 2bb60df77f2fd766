"""The references' per-setting defaults for `jaxdiff distill`, filled in where a config says "auto".

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

from jaxdiff.distill.params.neural_field import ddif_preset

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
_DATASET_FAMILY = {"cifar10": "cifar10", "cifar10_jpeg": "cifar10", "cifar100": "cifar100"}


def resolve_auto(config) -> list[str]:
    """Replace "auto"/0 entries of a distill config in place; returns what was filled in."""
    filled = []
    param, loss = config.param.name, config.loss.name
    if config.opt.name == "auto" or not config.opt.lr:
        if (param, "dc" if loss == "lcmat" else loss) not in OPTIMIZER_DEFAULTS:
            raise ValueError(f"no default optimiser for param.name={param!r} with "
                             f"loss.name={loss!r}; set opt.name and opt.lr explicitly")
        if param == "fred" and config.param.fred.dct_norm == "ortho":
            raise ValueError("the references' FreD learning rates are for the unnormalised DCT; "
                             "with param.fred.dct_norm='ortho' set opt.lr explicitly "
                             "(see jaxdiff.distill.params.ortho_learning_rates)")
        # LCMat-C is DC's machinery with another matching loss: DC's rates.
        name, lr, momentum = OPTIMIZER_DEFAULTS[(param, "dc" if loss == "lcmat" else loss)]
        if config.opt.name == "auto":
            config.opt.name, config.opt.momentum = name, momentum
            filled.append(f"opt.name={name}, opt.momentum={momentum}")
        if not config.opt.lr:
            config.opt.lr = lr
            filled.append(f"opt.lr={lr:g}")
    if loss == "tm" and (not config.loss.tm.syn_steps or not config.loss.tm.max_start_epoch
                         or not config.loss.tm.lr_lr):
        family = _DATASET_FAMILY.get(config.data.name)
        table = DDIF_TM_DEFAULTS if param == "ddif" else TM_DEFAULTS
        if (family, config.ipc) not in table:
            raise ValueError(f"no TM defaults for {config.data.name!r} IPC {config.ipc}; set "
                             "loss.tm.syn_steps, loss.tm.max_start_epoch and loss.tm.lr_lr")
        steps, epochs, max_start, lr_lr, lr_teacher = table[(family, config.ipc)]
        tm = config.loss.tm
        if not tm.syn_steps:
            tm.syn_steps, tm.expert_epochs = steps, epochs
        if not tm.max_start_epoch:
            tm.max_start_epoch = max_start
        if not tm.lr_lr:
            tm.lr_lr, tm.lr_teacher = lr_lr, lr_teacher
        filled.append(f"loss.tm syn_steps={tm.syn_steps} expert_epochs={tm.expert_epochs} "
                      f"max_start_epoch={tm.max_start_epoch} lr_lr={tm.lr_lr:g} "
                      f"lr_teacher={tm.lr_teacher:g}")
    if param == "ddif" and (not config.param.ddif.depth or not config.param.ddif.width):
        family = _DATASET_FAMILY.get(config.data.name)
        if family is None:
            raise ValueError(f"no DDiF SIREN preset for dataset {config.data.name!r}; set "
                             "param.ddif.depth and param.ddif.width")
        s = ddif_preset(family, config.ipc)
        config.param.ddif.depth, config.param.ddif.width = s.depth, s.width
        config.param.ddif.w0_initial, config.param.ddif.w0 = s.w0_initial, s.w0
        filled.append(f"param.ddif depth={s.depth} width={s.width} w0={s.w0_initial}/{s.w0}")
    return filled
