"""`load(name, split)`: whole splits as host uint8 arrays, from TFDS data or scikit-learn digits.

TFDS datasets are read with `tfds.data_source` (ArrayRecord random access; no TensorFlow), never
downloaded and never from GCS. Decoded arrays are cached (see `cache.py`), so only the first load
of a split pays for decoding. Photo datasets (ImageNet subsets, Tiny-ImageNet) go through
`photos.py`: only their classes' photos are decoded, transformed the references' way, cached.
"""

from __future__ import annotations

import dataclasses
import os
from typing import NamedTuple

import numpy as np

from jaxdiff.data import cache as _cache
from jaxdiff.data.digits import DIGITS_SPLIT_SEED, load_digits_split
from jaxdiff.data.datadirs import DatasetNotFoundError, Located, disable_gcs, locate
from jaxdiff.data.registry import DatasetInfo, as_size, check_split, entry, get_info
from jaxdiff.data.transforms import resize_bilinear

_CHUNK = 2048  # examples decoded per `__getitems__` call


class Dataset(NamedTuple):
    """One split in host memory.

    Attributes:
      images: `[N, H, W, C]` uint8 in 0..255.
      labels: `[N]` int32 in `[0, info.num_classes)`.
      info: `DatasetInfo` (shape after resize, classes, normalisation statistics).
    """

    images: np.ndarray
    labels: np.ndarray
    info: DatasetInfo


def load(name: str, split: str = "train", data_dir=None, *, image_size=None,
         cache: bool = True, mmap: bool = False, stats=None) -> Dataset:
    """Load a whole split of dataset `name` as uint8 arrays.

    Args:
      name: one of `DATASET_NAMES` (`cifar10`, `cifar10_jpeg`, `cifar100`, `mnist`,
        `fashion_mnist`, `svhn_cropped`, `digits`; the photo datasets `imagenette`, `imagewoof`,
        `imagefruit`, `imageyellow`, `imagemeow`, `imagesquawk` (from TFDS imagenet2012),
        `imagenette_tfds` (TFDS imagenette), `tiny_imagenet`).
      split: "train" or "test".
      data_dir: TFDS data root; when None the search order of `jaxdiff.data.datadirs` applies.
        Ignored for `digits`, which is embedded in scikit-learn.
      image_size: None (native size), an int S or `(H, W)`: resize with antialiased bilinear
        interpolation, half-pixel centres (`resize_bilinear`), rounded back to uint8. Photo
        datasets take a square S only and build it from each full-size photo with the
        references' transform (`transforms.resize_crop`), not from the native-size images.
      cache: read/write decoded arrays under `$JAXDIFF_CACHE_DIR` (default `~/.cache/jaxdiff`).
      mmap: return a cached split as read-only memory maps (rows are read from disk when
        indexed) instead of in-memory copies; a split decoded by this call is in memory anyway.
      stats: normalisation statistics for the returned `info` (a `STATS` key, `Stats` or
        `(mean, std)`; see `with_stats`), None for the dataset's own.

    Raises:
      ValueError: unknown name, split or image_size.
      DatasetNotFoundError (a FileNotFoundError): TFDS data absent from every searched directory;
        `photos.MissingClassesError` (one) when a photo source lacks classes of the dataset.
    """
    e = entry(name)
    check_split(split)
    size = as_size(image_size)
    if e.source == "photos":
        return _load_photos(name, e, split, data_dir, size, cache=cache, mmap=mmap, stats=stats)
    if e.source == "sklearn":
        located, key = None, {"source": "sklearn-digits", "split_seed": DIGITS_SPLIT_SEED}
    else:
        located = locate(e.tfds_name, data_dir, hint=e.prepare_hint)
        key = {"source": "tfds", "version": located.version, "data_dir": str(located.data_dir),
               "stamp": _stamp(located)}
    key.update(name=name, split=split, image_size=size)

    path = _cache.cache_path(name, split, key) if cache else None
    arrays = _cache.read(path, ("images", "labels"), mmap=mmap) if cache else None
    if arrays is not None and _valid(arrays, e, size):
        images, labels = arrays["images"], arrays["labels"]
    else:
        if e.source == "sklearn":
            images, labels = load_digits_split(split)
        else:
            images, labels = _read_tfds(name, e, split, located)
        if size is not None:
            images = resize_bilinear(images, size)
        if cache:
            _cache.write(path, {"images": images, "labels": labels})
    info = get_info(name, split, image_size=size, stats=stats)
    info = dataclasses.replace(info, num_examples=len(labels))
    return Dataset(images, labels, info)


def _load_photos(name, e, split, data_dir, size, *, cache, mmap, stats) -> Dataset:
    """A photo dataset's split at a square size (default: the registry's)."""
    from jaxdiff.data import photos

    if size is not None and size[0] != size[1]:
        raise ValueError(f"{name}: image_size must be square for photo datasets (the references "
                         f"resize to res x res), got {size}")
    res = size[0] if size is not None else e.image_shape[0]
    got = photos.load_photos(name, e, split, data_dir, res=res, cache=cache, mmap=mmap)
    info = get_info(name, split, image_size=size, stats=stats)
    info = dataclasses.replace(info, num_examples=len(got["labels"]),
                               undecodable=len(got["undecodable"]),
                               class_names=tuple(e.class_names if e.photos.wnids is not None
                                                 else got["class_names"]))
    return Dataset(got["images"], got["labels"], info)


def _stamp(located: Located) -> list[int]:
    """mtime and size of dataset_info.json, so rebuilding the data in place invalidates caches."""
    st = os.stat(located.path / "dataset_info.json")
    return [st.st_mtime_ns, st.st_size]


def _valid(arrays: dict, e, size) -> bool:
    images, labels = arrays.get("images"), arrays.get("labels")
    if images is None or labels is None or images.dtype != np.uint8 or labels.dtype != np.int32:
        return False
    shape = e.image_shape if size is None else (*size, e.image_shape[2])
    return images.ndim == 4 and images.shape[1:] == tuple(shape) and len(images) == len(labels)


def _read_tfds(name: str, e, split: str, located: Located) -> tuple[np.ndarray, np.ndarray]:
    """Decode a whole split: `(images [N, H, W, C] uint8, labels [N] int32)`."""
    import tensorflow_datasets as tfds

    disable_gcs()
    try:
        source = tfds.data_source(f"{e.tfds_name}:{located.version}", split=split,
                                  data_dir=str(located.data_dir), download=False, try_gcs=False)
    except NotImplementedError as err:  # prepared as TFRecord: no random access
        raise DatasetNotFoundError(
            f"dataset {e.tfds_name!r} at {located.path} is not in array_record format, which "
            f"random access needs; rebuild it with `tfds build {e.tfds_name} --data_dir DIR "
            f"--file_format=array_record`. TFDS said: {err}") from err
    except Exception as err:  # noqa: BLE001 - TFDS raises assorted types; say where we looked
        raise DatasetNotFoundError(
            f"could not open dataset {e.tfds_name!r} split {split!r} at {located.path}: "
            f"{type(err).__name__}: {err}") from err

    n = len(source)
    getitems = getattr(source, "__getitems__", None)
    images = np.empty((n, *e.image_shape), np.uint8)
    labels = np.empty((n,), np.int32)
    for s in range(0, n, _CHUNK):
        idx = list(range(s, min(s + _CHUNK, n)))
        batch = getitems(idx) if getitems is not None else [source[i] for i in idx]
        for j, ex in enumerate(batch):
            img = np.asarray(ex["image"])
            if img.shape != e.image_shape or img.dtype != np.uint8:
                raise ValueError(f"{name} {split} example {s + j}: image of shape {img.shape} "
                                 f"and dtype {img.dtype}, expected {e.image_shape} uint8")
            images[s + j] = img
            labels[s + j] = int(ex["label"])
    num_classes = len(e.class_names)
    if n and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(f"{name} {split}: labels outside [0, {num_classes})")
    return images, labels


def check_available(name: str, data_dir=None) -> None:
    """Raise `DatasetNotFoundError` (a `UserError`: every directory searched and how to prepare
    the data) unless `load(name, ..., data_dir=data_dir)` finds its data; cheap (no decode; a
    photo source's label names are checked for the dataset's classes)."""
    e = entry(name)
    if e.source == "photos":
        from jaxdiff.data import photos
        photos.check_classes(name, e, data_dir)
    elif e.source != "sklearn":
        locate(e.tfds_name, data_dir, hint=e.prepare_hint)


def train_class_counts(name: str, data_dir=None) -> tuple[int, ...]:
    """Images per class of the train split of `name`, by label, without decoding images:
    the registry's table (fixed by each dataset's construction), the embedded digits' from its
    split, a photo dataset's from the source's label index (read once per source and split,
    then cached; `data_dir` as for `load`). A run checks its loaded data against it (`distill`
    does, before use)."""
    e = entry(name)
    if e.train_class_counts is not None:
        return tuple(e.train_class_counts)
    if e.source == "photos":
        from jaxdiff.data import photos
        return photos.class_counts(name, e, "train", data_dir)
    _, labels = load_digits_split("train")
    return tuple(int(c) for c in np.bincount(labels, minlength=len(e.class_names)))
