"""`jaxdiff train-discriminator`: config -> `TrainDiscriminatorSpec`.

The denoiser run `model_dir` is read here (its `model.json`: data set, image size, classes), so a
missing or unfinished run is refused before any work. DiffRS sampling with the trained
discriminator is `jaxdiff sample --config sample_digits_diffrs`; the `diffrs` section earlier
versions of this command read is no longer used, but it stays in the checkpoint fingerprint
(filled with its old defaults when absent) so runs started before the change still resume.
"""

from __future__ import annotations

import dataclasses

from jaxdiff.checkpoint import RUN_CONTROL_KEYS
from jaxdiff.diffusion.saved import EXTRACTORS, discriminator_spec, read_model_spec
from jaxdiff.specs.base import Resolution, Resolver, SpecError
from jaxdiff.specs.common import RunSpec, run_spec

DRIVE_KEYS = ("resume", "progress", "stop_after", "run_dir")
# The `diffrs` section of the preset before the DiffRS demo moved to `jaxdiff sample`.
LEGACY_DIFFRS = dict(steps=18, sigma_min=0.002, sigma_max=80.0, rho=7.0, gamma=0.75,
                     warmup=256, warmup_batch=128, num_samples=64, batch_size=32, max_iter=105)


@dataclasses.dataclass(frozen=True)
class FakeSpec:
    """`num` unguided samples of the denoiser (EMA, deterministic Heun on a `steps`-level Karras
    grid), generated in batches of `batch_size`: the discriminator's negatives."""

    num: int
    batch_size: int
    steps: int
    sigma_min: float
    sigma_max: float
    rho: float


@dataclasses.dataclass(frozen=True)
class DiscTrainSpec:
    steps: int
    batch_size: int           # real and fake images per step, each
    lr: float
    weight_decay: float


@dataclasses.dataclass(frozen=True)
class TrainDiscriminatorSpec:
    model_dir: str
    model_spec: dict          # the denoiser's model.json
    data_dir: str
    dataset: str
    image_size: int
    num_classes: int          # 0 = unconditional discriminator
    disc: dict                # `saved.discriminator_spec`
    fake: FakeSpec
    train: DiscTrainSpec
    stop_after: int
    run: RunSpec
    resolution: Resolution


def resolve(config) -> TrainDiscriminatorSpec:
    """Resolve a `jaxdiff train-discriminator` config; SpecError on bad values."""
    r = Resolver("train-discriminator", config)
    model_dir = r.path("model_dir")
    if not model_dir:
        raise SpecError("config key 'model_dir' must name a `jaxdiff train-denoiser` run dir")
    try:
        model = read_model_spec(model_dir)
    except FileNotFoundError as e:
        raise SpecError(f"config key 'model_dir': {e}") from None
    conditional = r.flag("conditional")
    if conditional and not model["num_classes"]:
        raise SpecError("config key 'conditional' = True needs a class-conditional denoiser; "
                        f"the one in {model_dir} is unconditional")
    num_classes = int(model["num_classes"]) if conditional else 0
    dataset = model.get("dataset", "digits")
    image_size = int(model.get("image_size", model["image_shape"][0]))
    disc = discriminator_spec(
        extractor=r.choice("disc.extractor", EXTRACTORS), width=r.integer("disc.width", minimum=1),
        depth=r.integer("disc.depth", minimum=1), emb_dim=r.integer("disc.emb_dim", minimum=1),
        num_classes=num_classes, image_shape=model["image_shape"], dataset=dataset,
        image_size=image_size)
    f, t = "fake", "train"
    fake = FakeSpec(r.integer(f"{f}.num", minimum=1), r.integer(f"{f}.batch_size", minimum=1),
                    r.integer(f"{f}.steps", minimum=1),
                    *r.sigma_range(f),
                    r.number(f"{f}.rho", 0.0, strict=True))
    train = DiscTrainSpec(r.integer(f"{t}.steps", minimum=1),
                          r.integer(f"{t}.batch_size", minimum=1),
                          r.number(f"{t}.lr", 0.0, strict=True),
                          r.number(f"{t}.weight_decay", 0.0))
    if r.has("diffrs"):
        r.note("diffrs: not used (DiffRS sampling is `jaxdiff sample --config "
               "sample_digits_diffrs`); kept in the checkpoint fingerprint")
    else:
        r.fill("diffrs", dict(LEGACY_DIFFRS), "the section's old defaults, unused: kept so runs "
               "started before DiffRS moved to `jaxdiff sample` resume")
    return TrainDiscriminatorSpec(model_dir, model, r.get("data_dir", ""), dataset, image_size,
                                  num_classes, disc, fake, train,
                                  r.integer("stop_after", minimum=0), run_spec(r),
                                  r.resolution(ignore=RUN_CONTROL_KEYS + DRIVE_KEYS))
