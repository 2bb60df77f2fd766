"""Row access to a prepared TFDS dataset of photos: label index, chosen rows, JPEG decoding.

ImageNet-scale splits are read by row, never whole: `open_split` gives an ArrayRecord data source
whose image feature is *not* decoded by TFDS (`SkipDecoding`: the record's encoded bytes come
back), so

* `label_index` reads every record's label once per split and caches the `[N]` label array
  (the image bytes pass through but are not decoded); which rows belong to which class is then
  known without touching the data again;
* `decode_rows` reads only the rows asked for, decodes them with PIL (what torchvision's
  `ImageFolder` loader does: `Image.open(f).convert("RGB")`) and applies a per-photo transform,
  in worker threads (PIL and NumPy release the GIL). Photos that fail to decode are skipped,
  counted and named, never fatal.

`decode_rows` can fill a caller's array (`out=`, e.g. a memory-mapped cache file), so a subset is
decoded holding one chunk of records at a time. No TensorFlow is needed.
"""

from __future__ import annotations

import io
import os
import warnings
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import NamedTuple

import numpy as np

from jaxdiff.data import cache as _cache
from jaxdiff.data.datadirs import DatasetNotFoundError, Located, disable_gcs

_CHUNK = 1024      # records read per `__getitems__` call


class RecordSplit(NamedTuple):
    """One split of a prepared dataset opened for row access.

    Attributes:
      source: a TFDS ArrayRecord data source returning {"image": bytes, "label": int, ...}.
      label_names: the label feature's class names (index = label), e.g. WordNet ids.
      located: where the dataset lives (`datadirs.Located`).
      split: the TFDS split name ("train", "validation").
    """

    source: object
    label_names: tuple[str, ...]
    located: Located
    split: str

    def __len__(self) -> int:
        return len(self.source)


def _builder(located: Located, tfds_name: str):
    """A TFDS builder for the prepared directory: from its own dataset_info.json and
    features.json (what is on disk, also for catalogue names), else the catalogue's builder
    class (directories prepared by TFDS versions that wrote no features.json)."""
    import tensorflow_datasets as tfds

    disable_gcs()
    try:
        return tfds.builder_from_directory(str(located.path))
    except Exception:  # noqa: BLE001 - e.g. no features.json; try the catalogue next
        try:
            return tfds.builder(f"{tfds_name}:{located.version}", data_dir=str(located.data_dir),
                                try_gcs=False)
        except Exception as err:  # noqa: BLE001 - TFDS raises assorted types
            raise DatasetNotFoundError(
                f"could not open the prepared dataset at {located.path} ({tfds_name}): "
                f"{type(err).__name__}: {err}") from err


def open_split(located: Located, tfds_name: str, split: str) -> RecordSplit:
    """Open `split` of the dataset at `located` for row access (image bytes not decoded)."""
    import tensorflow_datasets as tfds

    builder = _builder(located, tfds_name)
    if split not in builder.info.splits:
        raise DatasetNotFoundError(
            f"the prepared dataset at {located.path} has no split {split!r} (it has "
            f"{', '.join(sorted(builder.info.splits))}); prepare it again with that split")
    try:
        source = builder.as_data_source(split=split,
                                        decoders={"image": tfds.decode.SkipDecoding()})
    except NotImplementedError as err:  # prepared as TFRecord: no random access
        raise DatasetNotFoundError(
            f"dataset {tfds_name!r} at {located.path} is not in array_record format, which "
            f"row access needs; rebuild it with `tfds build {tfds_name} --data_dir DIR "
            f"--file_format=array_record`. TFDS said: {err}") from err
    names = tuple(builder.info.features["label"].names)
    return RecordSplit(source, names, located, split)


def _read(rs: RecordSplit, rows: Sequence[int]) -> list[dict]:
    getitems = getattr(rs.source, "__getitems__", None)
    rows = [int(r) for r in rows]
    return getitems(rows) if getitems is not None else [rs.source[r] for r in rows]


def label_index(rs: RecordSplit, *, cache: bool = True) -> np.ndarray:
    """`[len(rs)] int32`: the label of every record of the split, read once and cached (keyed
    by the dataset's location, version and dataset_info.json stamp, like decoded splits)."""
    st = os.stat(rs.located.path / "dataset_info.json")
    key = {"source": "label-index", "path": str(rs.located.path), "version": rs.located.version,
           "split": rs.split, "stamp": [st.st_mtime_ns, st.st_size]}
    path = _cache.cache_path("_label_index", rs.split, key) if cache else None
    got = _cache.read(path, ("labels",)) if cache else None
    if got is not None and got["labels"].shape == (len(rs),):
        return got["labels"]
    n = len(rs)
    print(f"[jaxdiff data] reading the labels of the {n} records of {rs.located.path} split "
          f"{rs.split!r} (once: cached)", flush=True)
    labels = np.empty(n, np.int32)
    for s in range(0, n, _CHUNK):
        labels[s:s + _CHUNK] = [int(ex["label"]) for ex in _read(rs, range(s, min(s + _CHUNK, n)))]
    if cache:
        _cache.write(path, {"labels": labels})
    return labels


def decode_image(data: bytes) -> np.ndarray:
    """Encoded bytes -> `[H, W, 3] uint8` RGB (PIL, as torchvision's default loader: any mode
    converted to RGB). Raises on bytes PIL cannot decode (truncated, not an image)."""
    from PIL import Image

    with Image.open(io.BytesIO(data)) as img:
        return np.asarray(img.convert("RGB"), np.uint8)


class Decoded(NamedTuple):
    """`decode_rows`'s result: `images [M, ...] uint8` and `rows [M]` (int64) of the photos
    that decoded, in the order asked; `failed` the rows that did not, `failed_names` their
    record names (the `file_name`/`id` feature when the dataset has one, else "row N")."""

    images: np.ndarray
    rows: np.ndarray
    failed: np.ndarray
    failed_names: tuple[str, ...]


def _record_name(ex: dict, row: int) -> str:
    for key in ("file_name", "id"):
        if key in ex:
            v = ex[key]
            return v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v)
    return f"row {row}"


def decode_rows(rs: RecordSplit, rows: Sequence[int],
                transform: Callable[[np.ndarray], np.ndarray], *, workers: int | None = None,
                out: np.ndarray | None = None) -> Decoded:
    """Read `rows` of the split, decode each photo (`decode_image`) and apply `transform`
    (`[H, W, 3] uint8 ->` a fixed-shape uint8 array) in `workers` threads (default: the CPU
    count, at most 32). Undecodable photos are skipped (see `Decoded`).

    `out`: optional `[len(rows), *shape]` uint8 array to fill (e.g. a memory-mapped file, so a
    subset larger than memory is decoded holding one chunk of records at a time); the photos
    that decoded are packed at its front and `Decoded.images` is a view of it.
    """
    rows = np.asarray(rows, np.int64)
    if out is not None and (out.shape[0] != len(rows) or out.dtype != np.uint8):
        raise ValueError(f"out must be [{len(rows)}, ...] uint8, got {out.shape} {out.dtype}")
    workers = workers or min(32, os.cpu_count() or 1)

    def one(item):
        data, row = item
        try:
            return transform(decode_image(data))
        except Exception:  # noqa: BLE001 - PIL raises OSError, SyntaxError, ValueError, ...
            return None

    buf, ok, failed, names = out, [], [], []
    with ThreadPoolExecutor(workers) as pool:
        for s in range(0, len(rows), _CHUNK):
            chunk = rows[s:s + _CHUNK]
            records = _read(rs, chunk)
            out = pool.map(one, [(ex["image"], r) for ex, r in zip(records, chunk)])
            for ex, r, img in zip(records, chunk, out):
                if img is None:
                    failed.append(r)
                    names.append(_record_name(ex, int(r)))
                    continue
                if buf is None:   # one array for the whole result: no list of photos + stack
                    buf = np.empty((len(rows), *img.shape), np.uint8)
                elif buf.shape[1:] != img.shape:
                    raise ValueError(f"transform gave {img.shape}, out holds {buf.shape[1:]}")
                buf[len(ok)] = img
                ok.append(r)
    if failed:
        shown = ", ".join(names[:5]) + (", ..." if len(names) > 5 else "")
        warnings.warn(f"{len(failed)} of {len(rows)} images in {rs.located.path} split "
                      f"{rs.split!r} could not be decoded and were skipped: {shown}",
                      stacklevel=2)
    images = np.zeros((0,), np.uint8) if buf is None else buf[:len(ok)]
    return Decoded(images, np.asarray(ok, np.int64), np.asarray(failed, np.int64), tuple(names))
