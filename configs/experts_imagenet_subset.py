"""Expert trajectories for TM on an ImageNet subset at 128 px (ConvNet-D5), the MTT recipe that
FreD and DDiF use for their ImageNet-subset tables.

Argument SUBSET,RES (default imagenette,128):
    jaxdiff experts --config experts_imagenet_subset:imagewoof,128
    jaxdiff distill --config distill_imagenet_subset:imagewoof,128,1,ddif_tm   # reads them
SUBSET: imagenette imagewoof imagefruit imageyellow imagemeow imagesquawk imagenette_tfds.
RES: 128 (the references' TM resolution). Writes runs/experts_SUBSET_RES (what the distill
preset reads). Recipe (dd-common.md §8.1): 100 experts x 50 epochs, SGD lr 0.01, no momentum or
weight decay, batch 256, per-sample DSA, no ZCA; ConvNet-D5 (depth by image size), width 128,
instance norm; 51 snapshots of 615,690 parameters per expert (2.5 MB each, ~12.5 GB in all).
4 experts train in one program (parallel 4): 10, as for CIFAR, needs ~144 GiB per device at
128 px. Expected time and memory per device:
"""
# plan estimate (`jaxdiff plan ... --config.plan.accelerator=h200 --config.plan.precision=tf32`,
# 2026-12-04; memory: XLA:CPU's buffer assignment of the compiled step, per device; time: the
# step's FLOPs at 30 % of an H200's tf32 peak — estimates, not measurements; docs/results.md §7):
#   one step of 4 experts (batch 256 each): 57.7 GiB, 5.2 TFLOP, 0.035 s; ImageNet's ~13,000
#   train photos of a subset -> ~51 steps per epoch, 100 experts x 50 epochs ~ 37 min at that rate

from _experts_base import experts_config
from _fullscale import as_int, choose, parse_arg

PRESET = "experts_imagenet_subset"
SUBSETS = ("imagenette", "imagewoof", "imagefruit", "imageyellow", "imagemeow", "imagesquawk",
           "imagenette_tfds")


def get_config(arg: str | None = None):
    a = parse_arg(arg, ("subset", "res"), "imagenette,128", PRESET)
    subset = choose(a["subset"], SUBSETS, "SUBSET", PRESET)
    res = choose(as_int(a["res"], "RES", PRESET), (128,), "RES", PRESET,
                 " (the references train ImageNet-subset experts at 128 px)")
    c = experts_config(dataset=subset, image_size=res, buffer_dir=f"runs/experts_{subset}_{res}")
    c.parallel = 4   # the fit check: 10 parallel experts need ~144 GiB per device at 128 px
    return c
