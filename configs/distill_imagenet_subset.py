"""ImageNet subsets at 128 px (ImageNette, ImageWoof, ImageFruit, ImageYellow, ImageMeow,
ImageSquawk) with DDiF or FreD: the settings of the papers' ImageNet-subset tables.

Argument SUBSET,RES,IPC,METHOD (default imagenette,128,1,ddif_tm):
    jaxdiff experts --config experts_imagenet_subset:imagewoof,128          # TM needs experts
    jaxdiff distill --config distill_imagenet_subset:imagewoof,128,10,ddif_tm
    jaxdiff distill --config distill_imagenet_subset:imagenette,256,1,ddif_dm
SUBSET: imagenette imagewoof imagefruit imageyellow imagemeow imagesquawk (from TFDS imagenet2012;
imagenette_tfds: ImageNette from TFDS imagenette). RES: 128 (256 only for ddif_dm at IPC 1, DDiF's
one 256 px setting). IPC: 1, 10, 50 (FreD: 1, 10). METHOD: ddif_tm ddif_dm ddif_dc fred_tm
fred_dm fred_dc.
Data: ImageNet's train split for distillation, its validation split (50 per class) for the test;
each photo squashed to RES x RES (bilinear, no antialiasing), ImageNet statistics, decoded once
into jaxdiff's cache (docs: jaxdiff.data.photos). Network ConvNet-D5 at 128 px (depth by image
size; D6 at 256), instance norm, width 128; DSA everywhere; evaluation 5 runs x 1000 epochs.
Settings (ddif.md §3, §5, §6; fred.md §3, §6):
* ddif_tm: SIREN 3 layers, width 20 / 20 / 40 (IPC 1 / 10 / 50), w0 30/40, warm-up 5000 Adam
  steps at 5e-4; syn_steps 20 / 40 / 40, expert_epochs 2, max_start_epoch 10 / 20 / 20, lr_lr
  1e-6 / 1e-5 / 1e-5, lr_teacher 0.01; Adam lr_nf 1e-4 and batch_syn 102 (DDiF's ImageNette IPC 1
  script; the other IPCs' values are in the paper's appendix, UNVERIFIED: the same used);
  15,000 iterations, evaluation every 500.
* ddif_dm / ddif_dc: Adam lr_nf 5e-5, all instances (the ImageNette IPC 1 scripts); DM 20,000
  iterations, batch_real 256; DC 1,000 iterations, loop counts of the budget IPC.
* fred_tm: K = 2048 coefficients per channel (8 / 80 instances per class), SGD lr_freq 1e9
  momentum 0.5 (FreD's ImageNet script), all instances per student step; syn_steps 20,
  expert_epochs 2, max_start_epoch 10, lr_lr 1e-6, lr_teacher 0.01. FreD gives no IPC 50 row.
* fred_dm / fred_dc: K 2048, lr_freq 1e6 / 1e5, 1,000 iterations (FreD's ImageNet-A..E
  scripts; FreD reports no DM/DC on these six subsets).
Expected time and memory per iteration on one device: the estimates below (`jaxdiff plan`
prints them for any setting and device count; a run that does not fit stops before any work).
"""
# plan estimate (`jaxdiff plan ... --config.plan.accelerator=h200 --config.plan.precision=tf32`,
# 2026-12-04; memory: XLA:CPU's buffer assignment of the compiled step, per device; time: the
# step's FLOPs at 30 % of an H200's tf32 peak — estimates, not measurements; docs/results.md §7):
#   ddif_tm IPC 1 / 10 / 50: 18.7 / 54.2 / 119.9 GiB, 40.6 / 81.5 / 83.4 TFLOP, 0.27 / 0.55 / 0.56 s
#   fred_tm IPC 1: 11.6 GiB, 31.8 TFLOP, 0.21 s;  ddif_dm IPC 1: 23.8 GiB, 3.6 TFLOP, 0.02 s

from _fullscale import (as_int, choose, distill_config, method_parts, parse_arg, set_opt,
                        set_tm)

PRESET = "distill_imagenet_subset"
SUBSETS = ("imagenette", "imagewoof", "imagefruit", "imageyellow", "imagemeow", "imagesquawk",
           "imagenette_tfds")
METHODS = ("ddif_tm", "ddif_dm", "ddif_dc", "fred_tm", "fred_dm", "fred_dc")
# (param, loss) -> the IPCs the references give settings for, per resolution
SETTINGS = {("ddif", "tm"): {128: (1, 10, 50)}, ("ddif", "dm"): {128: (1, 10, 50), 256: (1,)},
            ("ddif", "dc"): {128: (1, 10, 50)}, ("fred", "tm"): {128: (1, 10)},
            ("fred", "dm"): {128: (1, 10)}, ("fred", "dc"): {128: (1, 10)}}
# DDiF (TM/hyper_params.py ImageNet_128): SIREN width and the TM rows, by IPC
DDIF_WIDTH = {(128, 1): 20, (128, 10): 20, (128, 50): 40, (256, 1): 40}
DDIF_TM = {1: (20, 2, 10, 1e-6), 10: (40, 2, 20, 1e-5), 50: (40, 2, 20, 1e-5)}
FRED_TM = {1: (20, 2, 10, 1e-6), 10: (20, 2, 10, 1e-6)}   # FreD TM/hyper_params.py 'ImageNet'


def get_config(arg: str | None = None):
    a = parse_arg(arg, ("subset", "res", "ipc", "method"), "imagenette,128,1,ddif_tm", PRESET)
    subset = choose(a["subset"], SUBSETS, "SUBSET", PRESET)
    res, ipc = as_int(a["res"], "RES", PRESET), as_int(a["ipc"], "IPC", PRESET)
    param, loss = method_parts(a["method"], PRESET, METHODS)
    by_res = SETTINGS[param, loss]
    choose(res, tuple(by_res), "RES", PRESET, f" (the references' {a['method']} resolutions)")
    choose(ipc, by_res[res], "IPC", PRESET,
           f" (the references' {a['method']} settings at {res} px)")
    c = distill_config(dataset=subset, image_size=res, ipc=ipc, param=param, loss=loss,
                       run_dir=f"runs/distill_{subset}_{res}_ipc{ipc}_{a['method']}")
    buffer_dir = f"runs/experts_{subset}_{res}"
    if param == "ddif":
        d = c.param.ddif
        d.depth, d.width, d.w0_initial, d.w0 = 3, DDIF_WIDTH[res, ipc], 30.0, 40.0
        d.warmup_steps, d.warmup_lr = 5000, 5e-4
        if loss == "tm":
            steps, epochs, start, lr_lr = DDIF_TM[ipc]
            set_tm(c, syn_steps=steps, expert_epochs=epochs, max_start_epoch=start, lr_lr=lr_lr,
                   lr_teacher=0.01, batch_syn=102, buffer_dir=buffer_dir)
            set_opt(c, "adam", 1e-4)
        else:
            set_opt(c, "adam", 5e-5)
    else:
        c.param.fred.k = 2048
        if loss == "tm":
            steps, epochs, start, lr_lr = FRED_TM[ipc]
            set_tm(c, syn_steps=steps, expert_epochs=epochs, max_start_epoch=start, lr_lr=lr_lr,
                   lr_teacher=0.01, batch_syn=0, buffer_dir=buffer_dir)
            set_opt(c, "sgd", 1e9, 0.5)
        else:
            set_opt(c, "sgd", 1e6 if loss == "dm" else 1e5, 0.5)
            c.iterations, c.eval_every = 1000, 500
    return c
