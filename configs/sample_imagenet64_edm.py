"""EDM's ImageNet 64x64 benchmark: 50,000 class-conditional samples of
`edm-imagenet-64x64-cond-adm` (ADM network, EDM preconditioning) with EDM's deterministic Heun
sampler (40 steps, NFE 79), scored by FID.

Argument GUIDANCE (default none): none | diffrs | dg
    jaxdiff sample --config sample_imagenet64_edm                # EDM alone (paper: FID 2.44 det.)
    jaxdiff sample --config sample_imagenet64_edm:dg

Files (downloaded once by you; a missing one is named with its URL):
  checkpoints/edm-imagenet-64x64-cond-adm.pkl   (1.2 GB)
      https://nvlabs-fi-cdn.nvidia.com/edm/pretrained/edm-imagenet-64x64-cond-adm.pkl
  checkpoints/pt_inception-2015-12-05-6726825d.pth   (see sample_cifar10_edm)
  checkpoints/imagenet-64x64.npz
      https://nvlabs-fi-cdn.nvidia.com/edm/fid-refs/imagenet-64x64.npz
  dg / diffrs: checkpoints/dg/64x64_classifier.pt (guided-diffusion's ImageNet 64 classifier,
      https://openaipublic.blob.core.windows.net/diffusion/jul-2021/64x64_classifier.pt) and a
      discriminator head for it at checkpoints/dg/discriminator_imagenet64.pt: DG publishes
      none at 64 px; DiffRS trains one with DG's train.py on EDM's ImageNet-64 samples

Same seeding and FID protocol as sample_cifar10_edm (sample i: fold_in(seed, i), class i mod
1000). The classifier of DG at 64 px takes the cosine time convention ("auto" picks it).
"""

from sample_cifar10_edm import get_config as cifar10_config


def get_config(arg: str | None = None):
    c = cifar10_config("none")
    name = arg or "none"
    c.model_dir = "checkpoints/edm-imagenet-64x64-cond-adm.pkl"
    c.expect = dict(image_size=64, num_classes=1000)
    c.solver.steps = 40
    c.batch_size = 256
    if name == "dg":
        c.guidance = dict(name="dg", classifier="checkpoints/dg/64x64_classifier.pt",
                          head="checkpoints/dg/discriminator_imagenet64.pt", weight=1.0,
                          weight_2nd=0.0, time_min=0.01, time_max=1.0, time="auto")
    elif name == "diffrs":
        c.guidance = dict(name="diffrs", disc_dir="checkpoints/dg/imported_imagenet64",
                          gamma=0.75, warmup=1024, warmup_batch=256, max_iter=0,
                          clamp_zero=True, warmup_seed=0)
    elif name != "none":
        raise ValueError(f"sample_imagenet64_edm: GUIDANCE {name!r} is not one of "
                         "('none', 'diffrs', 'dg')")
    c.fid.ref = "checkpoints/imagenet-64x64.npz"
    c.run_dir = f"runs/sample_imagenet64_edm_{name}"
    return c
