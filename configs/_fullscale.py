"""Shared pieces of the full-scale presets (ImageNet subsets, Tiny-ImageNet, CIFAR-100): the
preset argument, the per-method settings, the run directories. Not a preset itself.

A preset takes its setting as one argument string (`get_config("imagewoof,128,10,ddif_tm")`,
on the command line `--config distill_imagenet_subset:imagewoof,128,10,ddif_tm`). The values a
setting fixes (learning rates, TM table rows, SIREN shape, FreD K) are written into the config,
so choose the setting with the argument: overriding `ipc` alone would keep the other values of
the argument's setting.
"""

from __future__ import annotations

from _distill_base import base_config

# What every preset header says until the integrator records the fit check's figures.
PLAN_NOTE = "plan estimate: see docs/results.md (jaxdiff plan)"


def parse_arg(arg: str | None, fields: tuple[str, ...], default: str, preset: str) -> dict:
    """`"a,b,c"` -> {field: text} for `fields` (positional); None or "" -> `default`."""
    text = arg if arg else default
    parts = [p.strip() for p in str(text).split(",")]
    if len(parts) != len(fields) or not all(parts):
        raise ValueError(f"{preset}: the preset argument is {','.join(f.upper() for f in fields)}"
                         f" (e.g. {preset}:{default}), got {text!r}")
    return dict(zip(fields, parts))


def as_int(value: str, key: str, preset: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"{preset}: {key} must be an integer, got {value!r}") from None


def choose(value, allowed, key: str, preset: str, why: str = ""):
    """`value` if in `allowed`, else a ValueError listing them (and `why` they are the only
    ones: the settings the references give)."""
    if value not in allowed:
        listed = ", ".join(str(a) for a in allowed)
        raise ValueError(f"{preset}: {key} = {value!r} is not one of {listed}{why}")
    return value


def method_parts(method: str, preset: str, methods) -> tuple[str, str]:
    """"ddif_tm" -> ("ddif", "tm") after checking it is one of `methods`."""
    choose(method, methods, "METHOD", preset)
    param, loss = method.split("_")
    return param, loss


def distill_config(*, dataset: str, image_size: int, ipc: int, param: str, loss: str,
                   run_dir: str, stats: str = "") -> object:
    """The common part of a full-scale distill preset: dataset, IPC, parameterisation, loss,
    ConvNet of the depth for the image size (0: D5 at 128 px, D4 at 64, D3 at 32), the
    references' evaluation (5 runs x 1000 epochs, DSA), iteration counts of each loss (TM 15,000
    and evaluation every 500: FreD/DDiF TM; DM 20,000 / 2,000; DC 1,000 / 500)."""
    c = base_config()
    c.data.name = dataset
    c.data.image_size = image_size
    # Normalisation statistics by name (jaxdiff.data.STATS; "" = the dataset's own): read by the
    # data spec once it supports the key (see docs); the references differ on CIFAR-100.
    c.data.stats = stats
    c.ipc = ipc
    c.param.name = param
    c.loss.name = loss
    c.model.depth = 0
    c.iterations, c.eval_every = {"tm": (15000, 500), "dm": (20000, 2000),
                                  "dc": (1000, 500)}[loss]
    c.eval.epochs, c.eval.num_runs = 1000, 5
    c.eval.compare_random = True
    c.log_every = 50
    c.checkpoint_every = 500
    c.run_dir = run_dir
    return c


def set_tm(c, *, syn_steps: int, expert_epochs: int, max_start_epoch: int, lr_lr: float,
           lr_teacher: float, batch_syn: int, buffer_dir: str) -> None:
    """The TM section (dd-common.md §8; α clipped at 1e-3 as FreD/DDiF do)."""
    t = c.loss.tm
    t.syn_steps, t.expert_epochs, t.max_start_epoch = syn_steps, expert_epochs, max_start_epoch
    t.lr_lr, t.lr_teacher, t.batch_syn = lr_lr, lr_teacher, batch_syn
    t.buffer_dir = buffer_dir
    t.mode = "remat"
    t.min_syn_lr = 1e-3


def set_opt(c, name: str, lr: float, momentum: float = 0.0) -> None:
    c.opt.name, c.opt.lr, c.opt.momentum = name, lr, momentum
