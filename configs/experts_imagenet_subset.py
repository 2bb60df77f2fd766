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
Expected time and memory per expert-epoch and device (an estimate of the fit check):
"""
# plan estimate: see docs/results.md (jaxdiff plan)

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
    return experts_config(dataset=subset, image_size=res, buffer_dir=f"runs/experts_{subset}_{res}")
