"""Write a prepared TFDS dataset directory without TensorFlow (for `prepare-tiny` and test data).

The layout is the one `tfds build --file_format=array_record` produces and `tfds.data_source` /
`tfds.builder_from_directory` read:

    <root>/<name>[/<config>]/<version>/
        dataset_info.json                       name, version, file format, split shard lengths
        features.json                           the feature spec (image, label, extra text)
        label.labels.txt                        class names, one a line (index = label)
        <name>-<split>.array_record-00000-of-0000N   serialized tf.train.Example records

Images are stored as already-encoded bytes (a JPEG file's bytes as they are, or PNG/JPEG
written by PIL), so TFDS's serializer never needs TensorFlow to encode them. Records are
written with ArrayRecord's `group_size:1` (what TFDS writes: one record per chunk, so any row can
be read alone).
"""

from __future__ import annotations

import io
import json
import os
import shutil
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import NamedTuple

import numpy as np

_TEMPLATE = "{DATASET}-{SPLIT}.{FILEFORMAT}-{SHARD_X_OF_Y}"


class Example(NamedTuple):
    """One record: `image` (encoded bytes, or a uint8 `[H, W, C]` array PIL encodes in the
    dataset's format), `label` (int), `extra` ({feature: value} for the other features: a str
    for a text feature such as a file name, an int for an extra class label)."""

    image: bytes | np.ndarray
    label: int
    extra: Mapping[str, str | int] = {}


def features(class_names, *, encoding: str = "jpeg", shape=(None, None, 3),
             text_keys: Iterable[str] = (), label_keys: Mapping[str, Iterable[str]] = {}):
    """A TFDS `FeaturesDict`: `image` (Image of `shape`, `encoding`), `label` (ClassLabel of
    `class_names`), one Text feature per `text_keys` (e.g. "file_name", "id") and one more
    ClassLabel per `label_keys` ({key: class names}, e.g. CIFAR-100's "coarse_label")."""
    import tensorflow_datasets as tfds

    spec = {"image": tfds.features.Image(shape=tuple(shape), encoding_format=encoding),
            "label": tfds.features.ClassLabel(names=list(class_names))}
    spec.update({k: tfds.features.Text() for k in text_keys})
    spec.update({k: tfds.features.ClassLabel(names=list(v)) for k, v in label_keys.items()})
    return tfds.features.FeaturesDict(spec)


def encode(image: np.ndarray, encoding: str = "jpeg", quality: int = 95) -> bytes:
    """`[H, W, C] uint8` -> JPEG or PNG bytes (PIL)."""
    from PIL import Image

    buf = io.BytesIO()
    img = Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image)
    if encoding == "jpeg":
        img.save(buf, format="JPEG", quality=quality)
    else:
        img.save(buf, format="PNG")
    return buf.getvalue()


def write_dataset(directory: str | os.PathLike, name: str, version: str, feature_dict,
                  splits: Mapping[str, Iterable[Example]], *, description: str = "",
                  encoding: str = "jpeg", examples_per_shard: int = 50_000) -> Path:
    """Write `splits` ({split name: examples}) as a prepared dataset in `directory` (the
    `<root>/<name>[/<config>]/<version>` folder; created, must not exist or be empty) and return
    it. `feature_dict` comes from `features`; every example's extra keys must be its text
    features. The directory is written under a temporary name and renamed when complete."""
    from array_record.python import array_record_module

    final = Path(directory)
    if final.exists() and any(final.iterdir()):
        raise FileExistsError(f"{final} exists and is not empty")
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.parent / f".{final.name}.partial"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    feature_dict.save_config(str(tmp))
    feature_dict.save_metadata(str(tmp))
    info_splits = []
    for split, examples in splits.items():
        lengths, nbytes, writer, count = [], 0, None, 0
        paths = []
        for ex in examples:
            if writer is None or count == examples_per_shard:
                if writer is not None:
                    writer.close()
                    lengths.append(count)
                paths.append(tmp / f"{name}-{split}.array_record-{len(paths):05d}")
                writer = array_record_module.ArrayRecordWriter(str(paths[-1]), "group_size:1")
                count = 0
            image = ex.image if isinstance(ex.image, bytes) else encode(ex.image, encoding)
            record = {"image": io.BytesIO(image), "label": int(ex.label), **dict(ex.extra)}
            writer.write(feature_dict.serialize_example(record))
            count += 1
        if writer is not None:
            writer.close()
            lengths.append(count)
        for i, p in enumerate(paths):   # TFDS names shards NNNNN-of-MMMMM
            done = p.with_name(f"{p.name}-of-{len(paths):05d}")
            p.rename(done)
            nbytes += done.stat().st_size
        info_splits.append({"name": split, "filepathTemplate": _TEMPLATE,
                            "shardLengths": [str(n) for n in lengths], "numBytes": str(nbytes)})
    info = {"name": name, "version": version, "fileFormat": "array_record",
            "description": description, "moduleName": "jaxdiff.data.tfds_writer",
            "disableShuffling": True, "splits": info_splits,
            "supervisedKeys": {"tuple": {"items": [{"featureKey": "image"},
                                                   {"featureKey": "label"}]}}}
    (tmp / "dataset_info.json").write_text(json.dumps(info, indent=2))
    if final.exists():
        final.rmdir()
    tmp.rename(final)
    return final
