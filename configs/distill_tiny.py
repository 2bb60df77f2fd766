"""Tiny-ImageNet (200 classes, 64 px) with FreD or vanilla pixels: the references' settings.

Argument IPC,METHOD (default 10,fred_tm):
    python -m jaxdiff.data.tiny_imagenet tiny-imagenet-200.zip --out DIR    # once; then
    export JAXDIFF_DATA_DIR=DIR
    jaxdiff experts --config experts_tiny                                      # TM needs experts
    jaxdiff distill --config distill_tiny:10,fred_tm
IPC: 1, 10, 50. METHOD: fred_tm fred_dm pixel_tm pixel_dm (DDiF has no Tiny-ImageNet setting).
Data: the official train split (500 per class) for distillation, the official validation split
(50 per class) for the test; ImageNet statistics. Network ConvNet-D4 (depth by image size),
instance norm, width 128; DSA everywhere; evaluation 5 runs x 1000 epochs.
Settings (fred.md §3, §6; dd-common.md §7, §8.4):
* fred_tm: FreD TM/hyper_params.py 'Tiny': syn_steps 30 / 40 / 40 (IPC 1 / 10 / 50),
  expert_epochs 2, max_start_epoch 30 / 40 / 40, lr_lr 1e-4, lr_teacher 0.01; all instances per
  student step; 15,000 iterations. K = 256 (16 / 160 / 800 instances per class) and lr_freq
  3e8 are UNVERIFIED (the paper's appendix): 3e8 makes the step per coefficient, lr / (4 N^2),
  ~1.8e4 as between FreD's CIFAR (1e8 at 32 px: 2.4e4) and ImageNet (1e9 at 128 px: 1.5e4)
  scripts.
* fred_dm: K 256, lr_freq 1e6 (FreD's DM scripts), 20,000 iterations, batch_real 256.
* pixel_tm (MTT): syn_steps 10 / 20 / 80, expert_epochs 2, max_start_epoch 10 / 40 / 40, lr_img
  1e4, lr_lr 1e-4, lr_teacher 0.01 (dd-common.md §8.4, UNVERIFIED there); 5,000 iterations,
  the learned step size not clipped (vanilla MTT).
* pixel_dm (DM): lr_img 1, 20,000 iterations, batch_real 256.
Memory: fred_tm with all instances in every student step (batch_syn 0, FreD's convention; its
Tiny value is not in the code) needs ~1.2 TiB per device at IPC 10 — the run stops before any
work; lower loss.tm.batch_syn (e.g. 800: every instance once per iteration at syn_steps 40),
use loss.tm.mode=tesla or more devices. Expected time and memory per iteration on one device:
"""
# plan estimate (`jaxdiff plan ... --config.plan.accelerator=h200 --config.plan.precision=tf32`,
# 2026-12-04; memory: XLA:CPU's buffer assignment of the compiled step, per device; time: the
# step's FLOPs at 30 % of an H200's tf32 peak — estimates, not measurements; docs/results.md §7):
#   fred_tm IPC 10 (batch_syn 0): 1,159 GiB (does not fit one device), 6.22 PFLOP, 42 s

from _fullscale import (as_int, choose, distill_config, method_parts, parse_arg, set_opt,
                        set_tm)

PRESET = "distill_tiny"
METHODS = ("fred_tm", "fred_dm", "pixel_tm", "pixel_dm")
FRED_TM = {1: (30, 2, 30), 10: (40, 2, 40), 50: (40, 2, 40)}     # FreD 'Tiny'
MTT_TM = {1: (10, 2, 10), 10: (20, 2, 40), 50: (80, 2, 40)}      # dd-common.md §8.4
BUFFER_DIR = "runs/experts_tiny_imagenet"


def get_config(arg: str | None = None):
    a = parse_arg(arg, ("ipc", "method"), "10,fred_tm", PRESET)
    ipc = choose(as_int(a["ipc"], "IPC", PRESET), (1, 10, 50), "IPC", PRESET)
    param, loss = method_parts(a["method"], PRESET, METHODS)
    c = distill_config(dataset="tiny_imagenet", image_size=64, ipc=ipc, param=param, loss=loss,
                       run_dir=f"runs/distill_tiny_ipc{ipc}_{a['method']}")
    if param == "fred":
        c.param.fred.k = 256
    if loss == "tm":
        steps, epochs, start = (FRED_TM if param == "fred" else MTT_TM)[ipc]
        set_tm(c, syn_steps=steps, expert_epochs=epochs, max_start_epoch=start, lr_lr=1e-4,
               lr_teacher=0.01, batch_syn=0, buffer_dir=BUFFER_DIR)
        set_opt(c, "sgd", 3e8 if param == "fred" else 1e4, 0.5)
        if param == "pixel":   # vanilla MTT: 5,000 iterations, the step size not clipped
            c.iterations = 5000
            c.loss.tm.min_syn_lr = 0.0
    else:
        set_opt(c, "sgd", 1e6 if param == "fred" else 1.0, 0.5)
    return c
