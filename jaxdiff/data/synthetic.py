"""Synthetic prepared datasets in the TFDS layout (written with `tfds_writer`, no TensorFlow),
for smoke tests, benchmarks and fit checks of the full-scale presets where the real data is
absent: a fake `imagenet2012` (TFDS's real 1000-label list, photos for chosen classes only,
optional undecodable records), a fake `imagenette`, a fake official Tiny-ImageNet zip (made
into a dataset by the real `tiny_imagenet.prepare`) and a fake `cifar100`.

Photos are smooth random colour fields of varied sizes (JPEG-friendly, so files stay small) and
each writer returns what it wrote — the photos as PIL decodes them back — so a test can compare
a loader with an independent computation. Point `data_dir` / JAXDIFF_DATA_DIR at the root.
"""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import numpy as np
from PIL import Image

from jaxdiff.data import tfds_writer
from jaxdiff.data.imagenet import SUBSETS
from jaxdiff.data.registry import CIFAR100_CLASSES

def imagenet_labels() -> list[str]:
    """TFDS imagenet2012's 1000 label names (sorted WordNet ids), from the TFDS package."""
    import tensorflow_datasets as tfds
    path = Path(tfds.__file__).parent / "datasets" / "imagenet2012" / "labels.txt"
    return path.read_text().split()


def photo(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """`[h, w, 3] uint8`: a smooth random field (bilinear upsampling of a 4x4 colour grid)."""
    grid = rng.uniform(0, 255, (4, 4, 3))
    ys, xs = np.linspace(0, 3, h), np.linspace(0, 3, w)
    y0, x0 = np.minimum(ys.astype(int), 2), np.minimum(xs.astype(int), 2)
    fy, fx = (ys - y0)[:, None, None], (xs - x0)[None, :, None]
    g = lambda a, b: grid[a][:, b]  # noqa: E731
    img = ((1 - fy) * (1 - fx) * g(y0, x0) + (1 - fy) * fx * g(y0, x0 + 1)
           + fy * (1 - fx) * g(y0 + 1, x0) + fy * fx * g(y0 + 1, x0 + 1))
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def _jpeg(img: np.ndarray) -> tuple[bytes, np.ndarray]:
    data = tfds_writer.encode(img, "jpeg", quality=90)
    with Image.open(io.BytesIO(data)) as im:
        return data, np.asarray(im.convert("RGB"))


def _sizes(rng, n, lo, hi):
    return [(int(rng.integers(lo, hi)), int(rng.integers(lo, hi))) for _ in range(n)]


def write_imagenet2012(root: Path, counts: dict, *, corrupt=(), seed: int = 0,
                       size_range=(100, 190), version: str = "5.1.0") -> dict:
    """A fake `root/imagenet2012/<version>/`: for each `{wnid: (n_train, n_validation)}` that
    many photos (records shuffled as TFDS does, so classes interleave); `corrupt`: file names
    (train: "<wnid>_<k>.JPEG", validation: "ILSVRC2012_val_<row>.JPEG") whose bytes are cut to
    a third (an undecodable JPEG). Returns {split: [(row, wnid, decoded photo or None,
    file_name)]} in record order."""
    rng = np.random.default_rng(seed)
    labels = imagenet_labels()
    feats = tfds_writer.features(labels, text_keys=("file_name",))
    written, splits = {}, {}
    for s_i, split in enumerate(("train", "validation")):
        items = [(w, k) for w, n in counts.items() for k in range(n[s_i])]
        order = rng.permutation(len(items))
        rows, examples = [], []
        for row, j in enumerate(order):
            wnid, k = items[j]
            name = f"{wnid}_{k}.JPEG" if split == "train" else f"ILSVRC2012_val_{row:08d}.JPEG"
            h, w = _sizes(rng, 1, *size_range)[0]
            data, decoded = _jpeg(photo(rng, h, w))
            if name in set(corrupt):
                data, decoded = data[: len(data) // 3], None   # truncated JPEG
            examples.append(tfds_writer.Example(data, labels.index(wnid), {"file_name": name}))
            rows.append((row, wnid, decoded, name))
        splits[split], written[split] = examples, rows
    tfds_writer.write_dataset(root / "imagenet2012" / version, "imagenet2012", version, feats,
                              splits)
    return written


def write_imagenette(root: Path, n_train: int, n_val: int, *, config: str = "full-size-v2",
                     seed: int = 1) -> dict:
    """A fake TFDS `imagenette/<config>/1.0.0/` (labels: the ten sorted wnids, as TFDS's
    imagenette_labels.txt); returns {split: [(row, wnid, decoded photo, file_name)]}."""
    rng = np.random.default_rng(seed)
    wnids = sorted(SUBSETS["imagenette"].wnids)
    feats = tfds_writer.features(wnids)
    written, splits = {}, {}
    for split, n in (("train", n_train), ("validation", n_val)):
        rows, examples = [], []
        for row in range(n * len(wnids)):
            wnid = wnids[int(rng.integers(len(wnids)))] if row >= len(wnids) else wnids[row]
            data, decoded = _jpeg(photo(rng, *_sizes(rng, 1, 140, 200)[0]))
            examples.append(tfds_writer.Example(data, wnids.index(wnid)))
            rows.append((row, wnid, decoded, f"row {row}"))
        splits[split], written[split] = examples, rows
    tfds_writer.write_dataset(root / "imagenette" / config / "1.0.0", "imagenette", "1.0.0",
                              feats, splits)
    return written


def fake_wnids(n: int) -> list[str]:
    """n distinct WordNet-id-like names (not sorted, like the official wnids.txt)."""
    return [f"n{(7919 * i + 104729) % 10**8:08d}" for i in range(n)]


def write_tiny_zip(path: Path, wnids: list[str], n_train: int, n_val: int, seed: int = 2) -> dict:
    """A fake official `tiny-imagenet-200.zip` (wnids.txt, train/<wnid>/images/*.JPEG with a
    boxes file, val/images + val_annotations.txt, one grayscale photo); returns
    {"train": {(wnid, file): photo}, "validation": {file: (wnid, photo)}} as PIL decodes them."""
    rng = np.random.default_rng(seed)
    out = {"train": {}, "validation": {}}
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as z:
        z.writestr("tiny-imagenet-200/wnids.txt", "\n".join(wnids) + "\n")
        z.writestr("tiny-imagenet-200/words.txt", "".join(f"{w}\tthing {w}\n" for w in wnids))
        for w in wnids:
            z.writestr(f"tiny-imagenet-200/train/{w}/{w}_boxes.txt", "")
            for k in range(n_train):
                img = photo(rng, 64, 64)
                if (w, k) == (wnids[0], 0):   # grayscale JPEGs exist in the official data
                    img = img[..., :1].repeat(3, axis=2)
                    data = tfds_writer.encode(img[..., :1], "jpeg")
                else:
                    data = tfds_writer.encode(img, "jpeg", quality=90)
                z.writestr(f"tiny-imagenet-200/train/{w}/images/{w}_{k}.JPEG", data)
                with Image.open(io.BytesIO(data)) as im:
                    out["train"][(w, f"{w}_{k}.JPEG")] = np.asarray(im.convert("RGB"))
        lines = []
        for i in range(n_val * len(wnids)):
            w = wnids[(i * 7) % len(wnids)]
            name = f"val_{i}.JPEG"
            data = tfds_writer.encode(photo(rng, 64, 64), "jpeg", quality=90)
            z.writestr(f"tiny-imagenet-200/val/images/{name}", data)
            lines.append(f"{name}\t{w}\t0\t0\t63\t63")
            with Image.open(io.BytesIO(data)) as im:
                out["validation"][name] = (w, np.asarray(im.convert("RGB")))
        z.writestr("tiny-imagenet-200/val/val_annotations.txt", "\n".join(lines) + "\n")
    return out


def write_cifar100(root: Path, n_train: int, n_test: int, seed: int = 3) -> dict:
    """A fake TFDS `cifar100/3.0.2/` with the catalogue's features (PNG image, label,
    coarse_label, id): `n_train` / `n_test` photos per class, class-sorted. Returns
    {split: (images [N, 32, 32, 3], labels [N])}."""
    rng = np.random.default_rng(seed)
    feats = tfds_writer.features(CIFAR100_CLASSES, encoding="png", shape=(32, 32, 3),
                                 text_keys=("id",),
                                 label_keys={"coarse_label": [str(i) for i in range(20)]})
    out, splits = {}, {}
    for split, n in (("train", n_train), ("test", n_test)):
        labels = np.repeat(np.arange(100), n)
        images = rng.integers(0, 256, (len(labels), 32, 32, 3), dtype=np.uint8)
        splits[split] = [tfds_writer.Example(img, int(lab), {"id": f"{split}_{i}",
                                                             "coarse_label": int(lab) // 5})
                         for i, (img, lab) in enumerate(zip(images, labels))]
        out[split] = (images, labels)
    tfds_writer.write_dataset(root / "cifar100" / "3.0.2", "cifar100", "3.0.2", feats, splits,
                              encoding="png")
    return out
