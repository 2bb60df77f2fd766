"""What jaxdiff knows about each dataset: shapes, classes, split sizes and normalisation statistics.

The statistics are the per-channel mean/std of pixels scaled to [0, 1] that the reference code uses
(dd-common.md §1.1, DC/MTT `get_dataset`). They are properties of the *method* as much as of the
data — CIFAR-100 references disagree, LCMat uses another CIFAR std — so every consumer can
override them: `with_stats(info, "lcmat_cifar")`, `get_info(..., stats=...)`, `load(...,
stats=...)` or `normalize(images, info, stats=...)`.

Two kinds of TFDS entries: fixed-shape datasets decoded whole (`source="tfds"`: CIFAR, MNIST,
SVHN), and photo datasets (`source="photos"`: the ImageNet subsets, ImageNette from TFDS,
Tiny-ImageNet) whose chosen classes are decoded photo by photo, transformed to the resolution
the references use and cached (`jaxdiff.data.photos`).
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

from jaxdiff.data import imagenet as _imagenet

SPLITS = ("train", "test")


class Stats(NamedTuple):
    """Per-channel statistics of pixels in [0, 1]: `mean`, `std`, each a tuple of C floats."""

    mean: tuple[float, ...]
    std: tuple[float, ...]


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
    """Static facts about one split of a dataset as loaded (hashable, so usable as a static arg).

    Attributes:
      name: the jaxdiff dataset name (`load` accepts it).
      num_classes: number of classes; labels are ints in `[0, num_classes)`.
      class_names: `num_classes` human-readable names, index = label.
      image_shape: `(H, W, C)` of the loaded images (after any `image_size` resize).
      mean, std: per-channel statistics, `C` floats each, of pixels scaled to [0, 1].
      num_examples: number of examples in the loaded split (`get_info`: the registry's size, 0
        where it depends on the prepared data, e.g. an ImageNet subset's train split).
      undecodable: photos of the split that failed to decode and were skipped (photo datasets;
        `load` reports it, `get_info` says 0).
    """

    name: str
    num_classes: int
    class_names: tuple[str, ...]
    image_shape: tuple[int, int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    num_examples: int
    undecodable: int = 0

    @property
    def stats(self) -> Stats:
        return Stats(self.mean, self.std)


@dataclasses.dataclass(frozen=True)
class PhotoSource:
    """Where a photo dataset's images come from and how they become training images.

    Attributes:
      tfds_names: prepared TFDS datasets to look for, in order (first found wins), e.g.
        ("imagenet2012",) or the `imagenette/<config>` variants.
      splits: `((jaxdiff split, TFDS split), ...)`: "test" is the TFDS "validation" split.
      wnids: the classes to keep, in label order (the source's label names, e.g. WordNet ids);
        None keeps every class of the source in its own order.
      fit: "squash" (the references: Resize((res, res)), aspect ratio not kept) or
        "short_side_crop" (shorter side to res, centre crop); see `transforms.resize_crop`.
      antialias: antialias when shrinking (the references' tensor Resize does not).
      hint: how to prepare the source (shown when it is missing).
    """

    tfds_names: tuple[str, ...]
    splits: tuple[tuple[str, str], ...]
    wnids: tuple[str, ...] | None
    fit: str = "squash"
    antialias: bool = False
    hint: str = ""

    def tfds_split(self, split: str) -> str:
        return dict(self.splits)[split]


@dataclasses.dataclass(frozen=True)
class _Entry:
    """Registry row. `source` is 'tfds' (read with `tfds.data_source(tfds_name)`), 'photos'
    (`photos` says from where and how; `jaxdiff.data.photos`) or 'sklearn'."""

    source: str
    tfds_name: str
    image_shape: tuple[int, int, int]
    class_names: tuple[str, ...]
    stats: Stats
    split_sizes: dict
    prepare_hint: str
    # Images per class of the train split, by label (fixed by the dataset's construction); None
    # where it is only known from the data (the embedded digits, whose counts come from its
    # split, and the photo datasets: `sources.train_class_counts` counts them in the data).
    train_class_counts: tuple[int, ...] | None = None
    photos: PhotoSource | None = None


CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship",
                   "truck")
# CIFAR-100 fine labels in label order (the dataset's fine_label_names.txt, alphabetical).
CIFAR100_CLASSES = (
    "apple", "aquarium_fish", "baby", "bear", "beaver", "bed", "bee", "beetle", "bicycle", "bottle",
    "bowl", "boy", "bridge", "bus", "butterfly", "camel", "can", "castle", "caterpillar", "cattle",
    "chair", "chimpanzee", "clock", "cloud", "cockroach", "couch", "crab", "crocodile", "cup",
    "dinosaur", "dolphin", "elephant", "flatfish", "forest", "fox", "girl", "hamster", "house",
    "kangaroo", "keyboard", "lamp", "lawn_mower", "leopard", "lion", "lizard", "lobster", "man",
    "maple_tree", "motorcycle", "mountain", "mouse", "mushroom", "oak_tree", "orange", "orchid",
    "otter", "palm_tree", "pear", "pickup_truck", "pine_tree", "plain", "plate", "poppy",
    "porcupine", "possum", "rabbit", "raccoon", "ray", "road", "rocket", "rose", "sea", "seal",
    "shark", "shrew", "skunk", "skyscraper", "snail", "snake", "spider", "squirrel", "streetcar",
    "sunflower", "sweet_pepper", "table", "tank", "telephone", "television", "tiger", "tractor",
    "train", "trout", "tulip", "turtle", "wardrobe", "whale", "willow_tree", "wolf", "woman",
    "worm",
)
DIGIT_CLASSES = tuple(str(d) for d in range(10))
FASHION_MNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
                         "Sneaker", "Bag", "Ankle boot")

# Named statistics (dd-common.md §1.1, lcmat.md "Data").
STATS: dict[str, Stats] = {
    "mnist": Stats((0.1307,), (0.3081,)),
    "fashion_mnist": Stats((0.2861,), (0.3530,)),
    "svhn": Stats((0.4377, 0.4438, 0.4728), (0.1980, 0.2010, 0.1970)),
    "cifar10": Stats((0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)),
    # DC and FreD's DM/DC utils; MTT, DDiF and FreD's TM utils reuse "cifar10" for CIFAR-100.
    "cifar100": Stats((0.5071, 0.4866, 0.4409), (0.2673, 0.2564, 0.2762)),
    # DeepCore / LCMat coreset selection: CIFAR-10 mean with a different std.
    "lcmat_cifar": Stats((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    # torchvision ImageNet statistics (dd-common.md marks these as not re-checked).
    "imagenet": Stats((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    # scikit-learn digits: pixels scaled to uint8 (see digits.py), statistics of the 1438-image
    # train split at the native 8x8 size, population std (ddof=0), rounded to 4 decimals like
    # the table above; tests/data/test_digits.py recomputes them.
    "digits": Stats((0.3055,), (0.3759,)),
}


def _tfds_hint(name: str) -> str:
    return (f"prepare it on a machine with TensorFlow: `pip install tensorflow tensorflow-datasets "
            f"&& tfds build {name} --data_dir DIR --file_format=array_record`, copy DIR to this "
            f"machine, then pass data_dir=DIR or set JAXDIFF_DATA_DIR=DIR")


_REGISTRY: dict[str, _Entry] = {
    "cifar10": _Entry("tfds", "cifar10", (32, 32, 3), CIFAR10_CLASSES, STATS["cifar10"],
                      {"train": 50000, "test": 10000}, _tfds_hint("cifar10"), (5000,) * 10),
    "cifar10_jpeg": _Entry(
        "tfds", "cifar10_jpeg", (32, 32, 3), CIFAR10_CLASSES, STATS["cifar10"],
        {"train": 50000, "test": 10000},
        "cifar10_jpeg is a prepared JPEG re-encoding of CIFAR-10 (not a TFDS catalogue builder): "
        "copy its folder (cifar10_jpeg/3.0.2/ with dataset_info.json, features.json and the "
        "array_record shards) into DIR, then pass data_dir=DIR or set JAXDIFF_DATA_DIR=DIR",
        (5000,) * 10),
    "cifar100": _Entry("tfds", "cifar100", (32, 32, 3), CIFAR100_CLASSES, STATS["cifar100"],
                       {"train": 50000, "test": 10000}, _tfds_hint("cifar100"), (500,) * 100),
    "mnist": _Entry("tfds", "mnist", (28, 28, 1), DIGIT_CLASSES, STATS["mnist"],
                    {"train": 60000, "test": 10000}, _tfds_hint("mnist"),
                    (5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949)),
    "fashion_mnist": _Entry("tfds", "fashion_mnist", (28, 28, 1), FASHION_MNIST_CLASSES,
                            STATS["fashion_mnist"], {"train": 60000, "test": 10000},
                            _tfds_hint("fashion_mnist"), (6000,) * 10),
    "svhn_cropped": _Entry("tfds", "svhn_cropped", (32, 32, 3), DIGIT_CLASSES, STATS["svhn"],
                           {"train": 73257, "test": 26032}, _tfds_hint("svhn_cropped"),
                           (4948, 13861, 10585, 8497, 7458, 6882, 5727, 5595, 5045, 4659)),
    "digits": _Entry("sklearn", "", (8, 8, 1), DIGIT_CLASSES, STATS["digits"],
                     {"train": 1438, "test": 359}, "digits is embedded in scikit-learn"),
}

_VALIDATION_AS_TEST = (("train", "train"), ("test", "validation"))
# The ImageNet subsets (jaxdiff.data.imagenet) at the references' 128 px, from TFDS
# imagenet2012; the test split is ImageNet's validation split (50 photos per class).
for _name, _subset in _imagenet.SUBSETS.items():
    _REGISTRY[_name] = _Entry(
        "photos", "imagenet2012", (128, 128, 3), _subset.names, STATS["imagenet"],
        {"train": 0, "test": 500}, _imagenet.IMAGENET_HINT,
        photos=PhotoSource(("imagenet2012",), _VALIDATION_AS_TEST, _subset.wnids,
                           hint=_imagenet.IMAGENET_HINT))
# ImageNette from TFDS `imagenette` (fast.ai's photos of the same ten classes, its own splits),
# labels in the references' order.
_REGISTRY["imagenette_tfds"] = _Entry(
    "photos", "imagenette", (128, 128, 3), _imagenet.SUBSETS["imagenette"].names,
    STATS["imagenet"], {"train": 0, "test": 0}, _imagenet.IMAGENETTE_HINT,
    photos=PhotoSource(tuple(f"imagenette/{c}" for c in _imagenet.IMAGENETTE_CONFIGS),
                       _VALIDATION_AS_TEST, _imagenet.SUBSETS["imagenette"].wnids,
                       hint=_imagenet.IMAGENETTE_HINT))
# Tiny-ImageNet (200 classes, 64 px, ImageNet statistics: dd-common.md §1.1), prepared from the
# official zip by `python -m jaxdiff.data.tiny_imagenet`: labels = sorted WordNet ids (the
# references' ImageFolder order), test = the official validation split. Class names here are
# label numbers; a loaded split carries the WordNet ids.
_REGISTRY["tiny_imagenet"] = _Entry(
    "photos", "tiny_imagenet", (64, 64, 3), tuple(str(i) for i in range(200)), STATS["imagenet"],
    {"train": 100000, "test": 10000}, _imagenet.TINY_HINT,
    photos=PhotoSource(("tiny_imagenet",), _VALIDATION_AS_TEST, None, hint=_imagenet.TINY_HINT))

DATASET_NAMES: tuple[str, ...] = tuple(_REGISTRY)


def entry(name: str) -> _Entry:
    """The registry row for `name`; `ValueError` listing the known names otherwise."""
    try:
        return _REGISTRY[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown dataset {name!r}; known datasets: "
                         f"{', '.join(DATASET_NAMES)}") from None


def check_split(split: str) -> str:
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; valid splits: {', '.join(SPLITS)}")
    return split


def as_size(image_size) -> tuple[int, int] | None:
    """`None`, an int `S` (-> `(S, S)`) or `(H, W)`; validated positive."""
    if image_size is None:
        return None
    if isinstance(image_size, int):
        size = (image_size, image_size)
    else:
        size = tuple(int(s) for s in image_size)
    if len(size) != 2 or min(size) < 1:
        raise ValueError(f"image_size must be a positive int or (height, width), "
                         f"got {image_size!r}")
    return size


def get_info(name: str, split: str = "train", *, image_size=None, stats=None) -> DatasetInfo:
    """The `DatasetInfo` that `load(name, split, image_size=..., stats=...)` returns, without
    loading data (`num_examples` from the registry; 0 where only the data knows). `stats`: other
    normalisation statistics (see `with_stats`), None for the dataset's own."""
    e = entry(name)
    check_split(split)
    size = as_size(image_size)
    shape = e.image_shape if size is None else (*size, e.image_shape[2])
    info = DatasetInfo(name=name, num_classes=len(e.class_names), class_names=e.class_names,
                       image_shape=shape, mean=e.stats.mean, std=e.stats.std,
                       num_examples=e.split_sizes[split])
    return info if stats is None else with_stats(info, stats)


def with_stats(info: DatasetInfo, stats: Stats | str | tuple) -> DatasetInfo:
    """A copy of `info` with other normalisation statistics.

    `stats` is a `Stats`, a `(mean, std)` pair, or a key of `STATS` (e.g. "lcmat_cifar", or
    "cifar10" to normalise CIFAR-100 as MTT/DDiF do). The channel count must match.
    """
    s = resolve_stats(stats)
    channels = info.image_shape[2]
    if len(s.mean) != channels or len(s.std) != channels:
        raise ValueError(f"statistics have {len(s.mean)} mean / {len(s.std)} std values, "
                         f"{info.name} images have {channels} channels")
    return dataclasses.replace(info, mean=s.mean, std=s.std)


def resolve_stats(stats: Stats | str | tuple) -> Stats:
    """Normalise a `Stats`, `(mean, std)` pair or `STATS` key into a `Stats` of float tuples."""
    if isinstance(stats, str):
        if stats not in STATS:
            raise ValueError(f"unknown statistics {stats!r}; known: {', '.join(STATS)}")
        return STATS[stats]
    mean, std = stats
    mean = tuple(float(m) for m in (mean if hasattr(mean, "__len__") else (mean,)))
    std = tuple(float(s) for s in (std if hasattr(std, "__len__") else (std,)))
    if len(mean) != len(std):
        raise ValueError(f"mean has {len(mean)} values but std has {len(std)}")
    if min(std) <= 0:
        raise ValueError(f"std must be positive, got {std}")
    return Stats(mean, std)
