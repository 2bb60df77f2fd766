"""Photo datasets (ImageNet subsets, ImageNette, Tiny-ImageNet): chosen classes of a prepared
TFDS source, each photo decoded and transformed once, then cached as uint8.

    located source (imagenet2012, imagenette/<config>, tiny_imagenet)
    -> label index of the split (every record's label, read once, cached: `records.label_index`)
    -> the rows of the entry's classes (WordNet ids looked up in the source's label names)
    -> decode + `transforms.resize_crop` to res x res, photo by photo (`records.decode_rows`;
       undecodable photos skipped, counted, named in a warning), written straight into the
       cache entry's memory-mapped `images.npy` a chunk of records at a time (host memory holds
       one chunk, never the subset: ImageNet-1k-scale classes fit)
    -> cache entry {images [N, res, res, 3] uint8, labels [N] int32, rows [N] (source records),
       undecodable [K] (source records)} — later runs read it back (memory-mapped with
       `mmap=True`) and never decode again.

A subset whose classes are missing from the source (no such label, or no photo of it in the
split) is refused with `MissingClassesError` naming the WordNet ids. The cached `rows` say
which source record every image came from, so a streaming sampler can read the same images
from the source directly (see `records`).
"""

from __future__ import annotations

import functools
import os
import shutil
import warnings

import numpy as np

from jaxdiff.data import cache as _cache
from jaxdiff.data import records
from jaxdiff.data.datadirs import DatasetNotFoundError, Located, candidate_dirs, find_prepared
from jaxdiff.data.registry import PhotoSource
from jaxdiff.data.transforms import resize_crop

# Bump when the decoded content for the same key changes (decoder, transform, selection rules).
PHOTOS_FORMAT = 1


class MissingClassesError(DatasetNotFoundError):
    """The prepared source lacks classes the dataset needs (the message names their wnids)."""


def locate_source(name: str, photos: PhotoSource, data_dir=None) -> tuple[Located, str]:
    """The first of `photos.tfds_names` found in the data-directory search order (every
    candidate name in the first directory, then the next directory): `(located, tfds_name)`;
    `DatasetNotFoundError` naming every directory and name tried otherwise."""
    tried = candidate_dirs(data_dir)
    for root, _ in tried:
        for tfds_name in photos.tfds_names:
            found = find_prepared(root, tfds_name)
            if found is not None:
                return found, tfds_name
    lines = "\n".join(f"  {root}  ({why})" for root, why in tried)
    wanted = " or ".join(f"<DIR>/{n}/<version>/" for n in photos.tfds_names)
    raise DatasetNotFoundError(
        f"dataset {name!r} needs a prepared {' / '.join(photos.tfds_names)}, not found. "
        f"Searched, in order:\n{lines}\nA prepared dataset is a folder {wanted} with "
        f"dataset_info.json, features.json and array_record shards. To get it: {photos.hint}.")


def source_classes(name: str, e, rs: records.RecordSplit) -> tuple[str, ...]:
    """The entry's classes as the source names them, in label order: its `wnids`, or all of
    the source's labels (which must then be as many as the registry's classes)."""
    if e.photos.wnids is not None:
        return tuple(e.photos.wnids)
    if len(rs.label_names) != len(e.class_names):
        raise DatasetNotFoundError(
            f"{name}: the prepared source at {rs.located.path} has {len(rs.label_names)} "
            f"classes, {name} has {len(e.class_names)}; prepare it again ({e.photos.hint})")
    return tuple(rs.label_names)


def class_rows(name: str, e, rs: records.RecordSplit
               ) -> tuple[np.ndarray, np.ndarray, tuple[str, ...]]:
    """`(rows, labels, wnids)`: the source rows of the entry's classes (ascending), their labels
    in the entry's order, and the classes as named in the source. `MissingClassesError` naming
    every class the source lacks or has no photo of in this split."""
    photos = e.photos
    wnids = source_classes(name, e, rs)
    where = {w: i for i, w in enumerate(rs.label_names)}
    absent = [w for w in wnids if w not in where]
    if not absent:
        source_ids = np.asarray([where[w] for w in wnids], np.int64)
        index = records.label_index(rs)
        counts = np.bincount(index, minlength=len(rs.label_names))[source_ids]
        absent = [w for w, n in zip(wnids, counts) if n == 0]
    if absent:
        readable = dict(zip(wnids, e.class_names))
        listed = ", ".join(f"{w} ({readable[w]})" for w in absent)
        raise MissingClassesError(
            f"{name}: the prepared source at {rs.located.path} has no {rs.split!r} images of "
            f"{len(absent)} of its {len(wnids)} classes: {listed}. Prepare the full source "
            f"({photos.hint})")
    lut = np.full(len(rs.label_names), -1, np.int32)
    lut[source_ids] = np.arange(len(wnids), dtype=np.int32)
    rows = np.flatnonzero(lut[index] >= 0)
    return rows, lut[index[rows]], tuple(wnids)


def open_split(name: str, e, split: str, data_dir=None) -> records.RecordSplit:
    located, tfds_name = locate_source(name, e.photos, data_dir)
    return records.open_split(located, tfds_name, e.photos.tfds_split(split))


def class_counts(name: str, e, split: str = "train", data_dir=None) -> tuple[int, ...]:
    """Photos per class of `split` by label, from the label index (no photo decoded; photos
    that fail to decode later are still counted here)."""
    rs = open_split(name, e, split, data_dir)
    _, labels, wnids = class_rows(name, e, rs)
    return tuple(int(c) for c in np.bincount(labels, minlength=len(wnids)))


def check_classes(name: str, e, data_dir=None) -> None:
    """Cheap presence check (no record read): the source is prepared and its label names hold
    every class of the entry; `MissingClassesError` / `DatasetNotFoundError` otherwise."""
    for split in dict(e.photos.splits).values():
        located, tfds_name = locate_source(name, e.photos, data_dir)
        rs = records.open_split(located, tfds_name, split)
        absent = [w for w in source_classes(name, e, rs) if w not in set(rs.label_names)]
        if absent:
            raise MissingClassesError(
                f"{name}: the prepared source at {located.path} has no classes "
                f"{', '.join(absent)} among its labels (it is not {e.photos.tfds_names[0]} "
                f"as {name} needs it; {e.photos.hint})")


def load_photos(name: str, e, split: str, data_dir=None, *, res: int,
                cache: bool = True, mmap: bool = False) -> dict:
    """The entry's photos of `split` at res x res: {"images" [N, res, res, 3] uint8, "labels"
    [N] int32, "rows" [N] int64, "undecodable" [K] int64, "class_names"}; decoded once and
    cached (see the module docstring)."""
    rs = open_split(name, e, split, data_dir)
    st = os.stat(rs.located.path / "dataset_info.json")
    p = e.photos
    key = {"source": "photos", "format": PHOTOS_FORMAT, "path": str(rs.located.path),
           "version": rs.located.version, "stamp": [st.st_mtime_ns, st.st_size],
           "split": rs.split, "wnids": list(p.wnids) if p.wnids else None, "res": res,
           "fit": p.fit, "antialias": p.antialias, "name": name}
    path = _cache.cache_path(name, split, key) if cache else None
    fields = ("images", "labels", "rows", "undecodable")
    got = _cache.read(path, fields, mmap=mmap) if cache else None
    if got is not None and _valid(got, res):
        return {**got, "class_names": source_classes(name, e, rs)}
    if got is not None:  # an entry of another shape under this key: rebuild it
        del got
        shutil.rmtree(path, ignore_errors=True)
    rows, labels, wnids = class_rows(name, e, rs)
    print(f"[jaxdiff data] {name} {split}: decoding {len(rows)} photos of {rs.located.path} to "
          f"{res}x{res}{' (once: then cached)' if cache else ' (cache off)'}", flush=True)
    transform = functools.partial(resize_crop, res=res, fit=p.fit, antialias=p.antialias)
    if cache:
        try:
            with _cache.building(path) as tmp:
                if tmp is not None:
                    _decode_into(tmp, rs, rows, labels, transform, res)
        except OSError as err:  # e.g. no room for the entry: decode into memory instead
            warnings.warn(f"not caching to {path}: {err}", stacklevel=2)
        got = _cache.read(path, fields, mmap=mmap)
        if got is not None and _valid(got, res):
            return {**got, "class_names": tuple(wnids)}
    out = records.decode_rows(rs, rows, transform)  # no cache (asked, or not writable)
    images = out.images if len(out.rows) else np.zeros((0, res, res, 3), np.uint8)
    return {"images": images, "labels": labels[np.searchsorted(rows, out.rows)],
            "rows": out.rows, "undecodable": out.failed, "class_names": tuple(wnids)}


def _decode_into(tmp, rs, rows, labels, transform, res: int) -> None:
    """Decode `rows` straight into the cache entry being built in `tmp` (`images.npy` a memory
    map filled a chunk of records at a time: the subset is never in memory at once), plus
    `labels`, `rows` and `undecodable`."""
    shape = (len(rows), res, res, 3)
    images = np.lib.format.open_memmap(tmp / "images.npy", mode="w+", dtype=np.uint8,
                                       shape=shape)
    # Reserve the disk space now: a full disk is an OSError here, not a SIGBUS mid-write.
    if hasattr(os, "posix_fallocate"):   # Linux; elsewhere a full disk fails while writing
        with open(tmp / "images.npy", "r+b") as f:
            os.posix_fallocate(f.fileno(), 0, images.offset + images.nbytes)
    out = records.decode_rows(rs, rows, transform, out=images)
    images.flush()
    del images
    if len(out.failed):  # undecodable photos: the file holds len(rows) slots, keep the first ok
        _shrink(tmp / "images.npy", len(out.rows))
    np.save(tmp / "labels.npy", labels[np.searchsorted(rows, out.rows)], allow_pickle=False)
    np.save(tmp / "rows.npy", out.rows, allow_pickle=False)
    np.save(tmp / "undecodable.npy", out.failed, allow_pickle=False)


def _shrink(file, n: int, chunk: int = 1024) -> None:
    """Rewrite the `.npy` file to its first `n` rows, copying `chunk` rows at a time."""
    src = np.load(file, mmap_mode="r")
    part = file.with_suffix(".part")
    dst = np.lib.format.open_memmap(part, mode="w+", dtype=src.dtype, shape=(n, *src.shape[1:]))
    for s in range(0, n, chunk):
        dst[s:s + chunk] = src[s:min(s + chunk, n)]
    dst.flush()
    del src, dst
    os.replace(part, file)


def _valid(arrays: dict, res: int) -> bool:
    im, lab = arrays["images"], arrays["labels"]
    return (im.dtype == np.uint8 and im.ndim == 4 and im.shape[1:] == (res, res, 3)
            and lab.dtype == np.int32 and len(lab) == len(im) == len(arrays["rows"]))
