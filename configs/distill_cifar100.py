"""CIFAR-100 (`cifar100`, 32 px) with DDiF, FreD or vanilla pixels: the references' settings.

Argument IPC,METHOD (default 10,ddif_tm):
    jaxdiff experts --config experts_cifar100                   # TM needs experts
    jaxdiff distill --config distill_cifar100:10,ddif_tm
    jaxdiff distill --config distill_cifar100:50,fred_dm
IPC: 1, 10, 50. METHOD: ddif_tm ddif_dm ddif_dc fred_tm fred_dm fred_dc pixel_tm pixel_dm.
Network ConvNet-D3, instance norm, width 128; evaluation 5 runs x 1000 epochs with DSA (FreD's
DC: 300 epochs without augmentation, fred.md §5). The table values are left to jaxdiff's tables
(`jaxdiff.distill.presets`, filled and printed when the run resolves): DDiF's SIREN (2 layers,
width 10 / 15 / 30) and TM rows (syn_steps 60, max_start_epoch 40, lr_lr 1e-5), FreD's TM rows
(syn_steps 50 / 20 / 80, max_start_epoch 15 / 40 / 40, lr_lr 1e-5; also used for pixel), the
optimisers (DDiF Adam 1e-4 TM / 5e-5 DM, DC; FreD SGD 1e8 TM / 1e6 DM / 1e3 DC; pixel SGD 1000
TM / 1 DM); FreD K = 64 (its CIFAR scripts; UNVERIFIED for CIFAR-100), all instances per
student step (UNVERIFIED for DDiF: the paper's appendix).
Normalisation (dd-common.md §1.1): every TM run and DDiF's DM/DC use the CIFAR-10 statistics
(MTT, DDiF and FreD's TM utils), FreD's and pixel DM use the CIFAR-100 ones (`data.stats`).
Iterations: TM 15,000 (pixel: MTT's 5,000), DM 20,000, DC 1,000. No ZCA (FreD refuses it, DDiF's
scripts leave it off).
Expected time and memory per iteration on one device (all instances per student step; a run
that does not fit stops before any work naming the knobs: loss.tm.batch_syn, tesla, devices):
"""
# plan estimate (`jaxdiff plan ... --config.plan.accelerator=h200 --config.plan.precision=tf32`,
# 2026-12-04; memory: XLA:CPU's buffer assignment of the compiled step, per device; time: the
# step's FLOPs at 30 % of an H200's tf32 peak — estimates, not measurements; docs/results.md §7):
#   ddif_tm IPC 10: 85.1 GiB, 628 TFLOP, 4.2 s;  fred_tm IPC 10: 145 GiB (does not fit one
#   H200: 131 GiB), 364 TFLOP, 2.5 s;  ddif_dm IPC 10: 22.2 GiB, 5.0 TFLOP, 0.03 s

from _fullscale import as_int, choose, distill_config, method_parts, parse_arg

PRESET = "distill_cifar100"
METHODS = ("ddif_tm", "ddif_dm", "ddif_dc", "fred_tm", "fred_dm", "fred_dc", "pixel_tm",
           "pixel_dm")
BUFFER_DIR = "runs/experts_cifar100"


def get_config(arg: str | None = None):
    a = parse_arg(arg, ("ipc", "method"), "10,ddif_tm", PRESET)
    ipc = choose(as_int(a["ipc"], "IPC", PRESET), (1, 10, 50), "IPC", PRESET)
    param, loss = method_parts(a["method"], PRESET, METHODS)
    stats = "cifar10" if loss == "tm" or param == "ddif" else "cifar100"
    c = distill_config(dataset="cifar100", image_size=0, ipc=ipc, param=param, loss=loss,
                       run_dir=f"runs/distill_cifar100_ipc{ipc}_{a['method']}", stats=stats)
    if loss == "tm":
        c.loss.tm.buffer_dir = BUFFER_DIR
        c.loss.tm.mode = "remat"
        if param == "pixel":   # vanilla MTT: 5,000 iterations, the step size not clipped
            c.iterations = 5000
            c.loss.tm.min_syn_lr = 0.0
    if (param, loss) == ("fred", "dc"):   # FreD's DC: no DSA, 300-epoch evaluation
        c.loss.dsa_strategy = c.eval.dsa_strategy = "none"
        c.eval.epochs = 300
    return c
