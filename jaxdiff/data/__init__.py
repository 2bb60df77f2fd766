"""jaxdiff.data: datasets as host uint8 arrays, normalisation statistics, ZCA, per-class access.

    ds = load("cifar10_jpeg", "train")            # Dataset(images [N,H,W,C] uint8, labels, info)
    x = normalize(ds.images, ds.info)               # float32, (x/255 - mean)/std
    x = normalize(ds.images, with_stats(ds.info, "lcmat_cifar"))   # another method's statistics
    zca = fit_zca(ds.images / 255.0); xw = zca_apply(zca, x01)       # whitening (MTT --zca)
    idx = sample_per_class(0, ds.labels, ds.info.num_classes, 10)    # 10 per class

Module map: registry (names, shapes, classes, statistics), datadirs (data-dir search), cache
(decoded-array cache), sources (`load`), digits (scikit-learn digits and its split), transforms
(resize, the references' photo transform, normalise), zca, classes; photo datasets: imagenet
(the subsets' class lists), photos (select, decode once, cache), records (TFDS row access, label
index, decoding), tfds_writer (TFDS directories without TensorFlow), tiny_imagenet (`python -m
jaxdiff.data.tiny_imagenet ZIP --out DIR`).
"""

from jaxdiff.data.classes import class_indices, sample_per_class
from jaxdiff.data.digits import DIGITS_SPLIT_SEED, digits_split_indices
from jaxdiff.data.datadirs import DatasetNotFoundError, Located, candidate_dirs, locate
from jaxdiff.data.registry import (
    DATASET_NAMES,
    SPLITS,
    STATS,
    DatasetInfo,
    Stats,
    get_info,
    with_stats,
)
from jaxdiff.data.imagenet import SUBSETS
from jaxdiff.data.photos import MissingClassesError
from jaxdiff.data.sources import Dataset, check_available, load, train_class_counts
from jaxdiff.data.transforms import (MODEL_SPACE, denormalize, model_space_to_display,
                                     model_space_to_uint8, normalize, normalize_with,
                                     resize_bilinear, to_display, to_model_space)
from jaxdiff.data.zca import ZCA, fit_zca, zca_apply, zca_invert

__all__ = [
    "DATASET_NAMES", "DIGITS_SPLIT_SEED", "MODEL_SPACE", "SPLITS", "STATS", "SUBSETS", "ZCA",
    "Dataset", "DatasetInfo", "DatasetNotFoundError", "Located", "MissingClassesError", "Stats", "candidate_dirs", "check_available",
    "class_indices",
    "denormalize", "digits_split_indices", "fit_zca", "get_info", "load", "locate",
    "model_space_to_display", "model_space_to_uint8", "normalize", "normalize_with",
    "resize_bilinear", "sample_per_class", "to_display", "to_model_space", "train_class_counts",
    "with_stats", "zca_apply", "zca_invert",
]
