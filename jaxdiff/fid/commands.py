"""`jaxdiff fid-ref` (reference statistics of a dataset split) and `jaxdiff fid` (score images).

    jaxdiff fid-ref --dataset cifar10 --split train --weights pt_inception-2015-12-05-6726825d.pth \
        --out cifar10-train.npz
    jaxdiff fid --images RUN_DIR/samples.npz --ref cifar10-32x32.npz --weights ...pth

Both check every input (weights file, reference file, image source, dataset) before loading the
network, and raise `UserError`s that `jaxdiff.cli` prints without a traceback (exit 2).

Image sources for `fid`: a `.npz` with `images` ([N, H, W, C] uint8, as `jaxdiff sample`
writes) or `samples` (float in [-1, 1], quantised to uint8 as EDM's PNGs are); a `.npz` of
statistics (`mu`, `sigma`), scored directly; or a directory of PNG/JPEG files (searched
recursively, sorted by relative path, as EDM's `ImageFolderDataset`), read a chunk at a time.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterator

import numpy as np

from jaxdiff.errors import MissingInputError, UserError
from jaxdiff.fid.weights import (FID_WEIGHTS_NAME, FID_WEIGHTS_URL, WEIGHTS_ENV,
                                 resolve_weights_path)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp")
# The choices of `inception.RESIZE_MODES` and `frechet.METHODS`, spelt out so that building the
# parser imports no jax (tests/fid/test_commands.py checks they agree).
RESIZE_CHOICES = ("tf", "pytorch-fid")
METHOD_CHOICES = ("eigh", "sqrtm")


def _check_out(out) -> str:
    out = os.path.abspath(os.fspath(out))
    if os.path.isdir(out):
        raise UserError(f"--out {out} is a directory; give the .npz file to write")
    return out


def fid_ref(dataset: str, split: str, out, *, weights=None, data_dir=None, batch_size: int = 64,
            resize: str = "tf", limit: int | None = None) -> dict:
    """Compute and write the EDM-format reference statistics of `dataset`/`split`; returns a
    summary dict (path, count, detector)."""
    from jaxdiff.data import check_available, get_info
    from jaxdiff.fid import inception, stats

    out = _check_out(out)
    try:
        get_info(dataset, split)
    except ValueError as e:
        raise UserError(str(e)) from None
    check_available(dataset, data_dir)
    path = resolve_weights_path(weights)
    inception.resize_matrix(2, 2, resize)         # validates the mode
    net = inception.load(path)
    mu, sigma, n = stats.dataset_statistics(net, dataset, split, data_dir=data_dir,
                                            batch_size=batch_size, resize=resize, limit=limit)
    detector = stats.describe_detector(resize)
    stats.save_reference(out, mu, sigma, count=n, detector=detector, resize=resize,
                         source=f"{dataset}:{split}")
    return {"path": out, "count": n, "detector": detector}


def _png_batches(root: Path, files: list[Path], chunk: int) -> Iterator[np.ndarray]:
    from PIL import Image

    for s in range(0, len(files), chunk):
        arrays = []
        for f in files[s:s + chunk]:
            with Image.open(f) as im:      # grayscale -> 3 equal channels, as EDM repeats
                arrays.append(np.asarray(im.convert("RGB")))
        shapes = {a.shape for a in arrays}
        if len(shapes) != 1:
            raise UserError(f"{root}: images of different sizes {sorted(shapes)[:3]}; FID "
                            f"needs one size")
        yield np.stack(arrays)


def open_images(path, chunk: int = 1024):
    """An image source -> `("stats", (mu, sigma))` or `("images", (iterator of uint8 batches,
    description))`. See the module docstring for the accepted sources."""
    p = Path(os.path.expanduser(os.fspath(path)))
    if p.is_dir():
        files = sorted((f for f in p.rglob("*") if f.suffix.lower() in IMAGE_SUFFIXES),
                       key=lambda f: f.relative_to(p).as_posix())
        if len(files) < 2:
            raise UserError(f"--images {p}: found {len(files)} image files "
                            f"({'/'.join(IMAGE_SUFFIXES)}); FID needs at least 2")
        return "images", (_png_batches(p, files, chunk), f"{len(files)} image files in {p}")
    if not p.is_file():
        raise MissingInputError(f"--images {p}: no such file or directory (give a .npz from "
                                f"`jaxdiff sample`, a .npz of statistics or a folder of PNGs)")
    try:
        with np.load(p, allow_pickle=False) as f:
            keys = set(f.files)
            if {"mu", "sigma"} <= keys:
                return "stats", (f["mu"], f["sigma"])
            if "images" in keys:
                images = f["images"]
            elif "samples" in keys:
                from jaxdiff.data import model_space_to_uint8
                images = model_space_to_uint8(f["samples"])
            else:
                raise UserError(f"--images {p}: holds {sorted(keys)}; expected 'images' "
                                f"(uint8 [N, H, W, C]), 'samples' (float in [-1, 1]) or "
                                f"'mu' and 'sigma'")
    except UserError:
        raise
    except (OSError, ValueError) as e:
        raise UserError(f"--images {p}: not a readable .npz ({e})") from None
    if images.ndim != 4 or images.shape[-1] not in (1, 3) or len(images) < 2:
        raise UserError(f"--images {p}: images of shape {images.shape}; expected [N >= 2, H, W, "
                        f"3 or 1]")
    if images.dtype != np.uint8:
        raise UserError(f"--images {p}: 'images' are {images.dtype}; expected uint8 pixels")
    batches = (images[s:s + chunk] for s in range(0, len(images), chunk))
    return "images", (batches, f"{len(images)} images from {p}")


def fid_score(images, ref, *, weights=None, batch_size: int = 64, resize: str = "tf",
              method: str = "eigh") -> dict:
    """FID of an image source against reference statistics (`.npz`): `{"fid", "count",
    "images", "ref", "resize"}` (count None when `images` is a statistics file)."""
    from jaxdiff.fid import frechet, inception, stats

    mu_ref, sigma_ref = stats.load_reference(ref)
    kind, value = open_images(images)
    if kind == "stats":
        mu, sigma = frechet.check_statistics(*value, f"--images {images}", inception.FEATURE_DIM)
        count, what = None, f"statistics {images}"
    else:
        batches, what = value
        inception.resize_matrix(2, 2, resize)
        net = inception.load(resolve_weights_path(weights))
        mu, sigma, count = stats.image_statistics(net, batches, batch_size=batch_size,
                                                  resize=resize)
    fid = frechet.fid_from_statistics(mu, sigma, mu_ref, sigma_ref, method=method)
    return {"fid": fid, "count": count, "images": what, "ref": os.path.abspath(ref),
            "resize": resize}


def add_arguments(sub) -> None:
    """Add the `fid-ref` and `fid` subcommands to `jaxdiff`'s subparsers."""
    common = dict(weights=dict(default=None, help=f"the FID Inception weights "
                               f"{FID_WEIGHTS_NAME} ({FID_WEIGHTS_URL}); default ${WEIGHTS_ENV}"),
                  batch=dict(type=int, default=64, help="images per step (default 64)"),
                  resize=dict(default="tf", choices=RESIZE_CHOICES,
                              help="detector preprocessing: tf = EDM/StyleGAN3 (default; "
                                   "EDM's reference files), pytorch-fid"))
    h = "reference FID statistics (EDM .npz: mu, sigma) of a dataset split"
    sp = sub.add_parser("fid-ref", help=h, description=h)
    sp.add_argument("--dataset", required=True, help="a jaxdiff dataset name, e.g. cifar10")
    sp.add_argument("--split", default="train", help="train (default, as EDM) or test")
    sp.add_argument("--out", required=True, help="the .npz file to write")
    sp.add_argument("--data-dir", default=None, help="TFDS data root (default: JAXDIFF_DATA_DIR)")
    sp.add_argument("--limit", type=int, default=None, help="use the first N images only")
    for name, kw in common.items():
        sp.add_argument(f"--{name}", **kw)
    h = "FID of images (samples.npz, a PNG folder or a statistics .npz) against a reference .npz"
    sp = sub.add_parser("fid", help=h, description=h)
    sp.add_argument("--images", required=True)
    sp.add_argument("--ref", required=True, help="reference statistics .npz (mu, sigma)")
    sp.add_argument("--method", default="eigh", choices=METHOD_CHOICES,
                    help="matrix square root: eigh (default, stable) or sqrtm (pytorch-fid/EDM)")
    for name, kw in common.items():
        sp.add_argument(f"--{name}", **kw)


def run(args) -> str:
    """Run a parsed `fid-ref` / `fid` command; returns the line to print."""
    if args.batch < 1:
        raise UserError(f"--batch {args.batch}: must be at least 1")
    if args.command == "fid-ref":
        r = fid_ref(args.dataset, args.split, args.out, weights=args.weights,
                    data_dir=args.data_dir, batch_size=args.batch, resize=args.resize,
                    limit=args.limit)
        return f"[jaxdiff fid-ref] wrote {r['path']} ({r['count']} images; {r['detector']})"
    r = fid_score(args.images, args.ref, weights=args.weights, batch_size=args.batch,
                  resize=args.resize, method=args.method)
    return f"FID {r['fid']:.6g} ({r['images']} vs {r['ref']}; resize={r['resize']})"
