"""Prepare Tiny-ImageNet for jaxdiff from the official zip, without TensorFlow:

    python -m jaxdiff.data.tiny_imagenet tiny-imagenet-200.zip --out DIR

(http://cs231n.stanford.edu/tiny-imagenet-200.zip; an extracted `tiny-imagenet-200/` folder
works too.) Writes the TFDS-format dataset `DIR/tiny_imagenet/1.0.0/` that `jaxdiff.data.load(
"tiny_imagenet", data_dir=DIR)` reads (or set JAXDIFF_DATA_DIR=DIR):

* labels: the 200 WordNet ids of `wnids.txt`, sorted — the references' class order (MTT / FreD
  build it with torchvision `ImageFolder`, which sorts the class folders);
* split "train": the 100,000 photos of `train/<wnid>/images/`, by class, then file name;
* split "validation" (jaxdiff's "test"): the 10,000 photos of `val/images/`, labelled by
  `val/val_annotations.txt` (FreD's evaluation set; the official test split has no labels);
* every photo's JPEG bytes as they are in the zip (no re-encoding), with its file name. Some
  photos are grayscale; they are converted to RGB when read, as PIL/ImageFolder do.
"""

from __future__ import annotations

import argparse
import sys
import zipfile
from pathlib import Path
from typing import Iterator

from jaxdiff.data import tfds_writer

NAME, VERSION = "tiny_imagenet", "1.0.0"
NUM_CLASSES = 200


class _Archive:
    """Read files of the official zip, or of its extracted folder, by path below
    `tiny-imagenet-200/`."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.zip = zipfile.ZipFile(self.path) if self.path.is_file() else None
        names = self.zip.namelist() if self.zip else [
            str(p.relative_to(self.path)).replace("\\", "/") for p in self.path.rglob("*")
            if p.is_file()]
        wnids = [n for n in names if n.endswith("wnids.txt")]
        if not wnids:
            raise FileNotFoundError(f"{path}: no wnids.txt; expected the official "
                                    "tiny-imagenet-200.zip or its extracted folder")
        self.prefix = wnids[0][: -len("wnids.txt")]
        self.names = [n[len(self.prefix):] for n in names if n.startswith(self.prefix)]

    def read(self, name: str) -> bytes:
        if self.zip:
            return self.zip.read(self.prefix + name)
        return (self.path / (self.prefix + name)).read_bytes()

    def text(self, name: str) -> str:
        return self.read(name).decode("utf-8")


def _train(a: _Archive, wnids: list[str]) -> Iterator[tfds_writer.Example]:
    by_class = {w: [] for w in wnids}
    for n in a.names:
        parts = n.split("/")
        if len(parts) == 4 and parts[0] == "train" and parts[2] == "images" \
                and parts[3].upper().endswith(".JPEG"):
            if parts[1] not in by_class:
                raise ValueError(f"train/{parts[1]} is not one of the classes of wnids.txt")
            by_class[parts[1]].append(n)
    for label, w in enumerate(wnids):
        for n in sorted(by_class[w]):
            yield tfds_writer.Example(a.read(n), label, {"file_name": n.rsplit("/", 1)[1]})


def _validation(a: _Archive, wnids: list[str]) -> Iterator[tfds_writer.Example]:
    label = {w: i for i, w in enumerate(wnids)}
    rows = [line.split("\t") for line in a.text("val/val_annotations.txt").splitlines()
            if line.strip()]
    for file_name, wnid, *_ in sorted(rows):
        if wnid not in label:
            raise ValueError(f"val/val_annotations.txt labels {file_name} with {wnid}, which "
                             "is not in wnids.txt")
        yield tfds_writer.Example(a.read(f"val/images/{file_name}"), label[wnid],
                                  {"file_name": file_name})


def prepare(archive: str | Path, out: str | Path, *, num_classes: int = NUM_CLASSES) -> Path:
    """Build `out/tiny_imagenet/1.0.0/` from the official zip (or folder); returns its path.
    `num_classes`: the expected class count (200; tests use fewer)."""
    a = _Archive(Path(archive))
    wnids = sorted(w.strip() for w in a.text("wnids.txt").split() if w.strip())
    if len(wnids) != num_classes or len(set(wnids)) != num_classes:
        raise ValueError(f"{archive}: wnids.txt lists {len(set(wnids))} classes, expected "
                         f"{num_classes}")
    feats = tfds_writer.features(wnids, shape=(64, 64, 3), text_keys=("file_name",))
    return tfds_writer.write_dataset(
        Path(out) / NAME / VERSION, NAME, VERSION, feats,
        {"train": _train(a, wnids), "validation": _validation(a, wnids)},
        description="Tiny-ImageNet (200 classes, 64x64), prepared by jaxdiff.data.tiny_imagenet "
                    "from the official tiny-imagenet-200.zip; labels are the sorted WordNet ids, "
                    "validation is the official labelled validation split.")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m jaxdiff.data.tiny_imagenet",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("archive", help="tiny-imagenet-200.zip (or its extracted folder)")
    p.add_argument("--out", required=True, help="data directory to write tiny_imagenet/ into")
    args = p.parse_args(argv)
    try:
        path = prepare(args.archive, args.out)
    except (OSError, ValueError, zipfile.BadZipFile) as e:
        print(f"prepare tiny_imagenet: {e}", file=sys.stderr)
        return 2
    print(f"wrote {path}; use it with --config.data.data_dir={args.out} or "
          f"JAXDIFF_DATA_DIR={args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
