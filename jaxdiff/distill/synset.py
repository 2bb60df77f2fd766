"""The on-disk format of a labelled image set (a distilled set, or a real subset).

`<run_dir>/synthetic.npz` (uncompressed NumPy archive) with:

* `images`  `[N, H, W, C]` float32 — in the dataset's normalised space (x/255 − mean)/std, or in
  ZCA space when `zca` is true;
* `labels`  `[N]` int32, class-sorted;
* `dataset` the dataset name (str); `mean`, `std` `[C]` float32 the normalisation statistics;
* `zca`     bool; `lr` float32 — the learning rate to evaluate with (MTT's learned α), NaN if none;
* `method`  a free-text description (e.g. "ddif/dm ipc1").

`jaxdiff evaluate` and `jaxdiff show` read it; distillation pipelines also keep their raw
parameters in their Orbax checkpoints.
"""

from __future__ import annotations

import os
import zipfile
from typing import NamedTuple

import numpy as np

from jaxdiff.errors import MissingInputError, UserError
from jaxdiff.files import atomic_savez

FILENAME = "synthetic.npz"


class LabelledSet(NamedTuple):
    images: np.ndarray
    labels: np.ndarray
    dataset: str
    mean: np.ndarray
    std: np.ndarray
    zca: bool = False
    lr: float = float("nan")
    method: str = ""


def save_synset(path: str | os.PathLike, s: LabelledSet) -> str:
    """Write `s` atomically (temp file + rename); `path` is a file or a run directory."""
    path = os.fspath(path)
    if os.path.isdir(path) or not path.endswith(".npz"):
        path = os.path.join(path, FILENAME)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    images = np.asarray(s.images, np.float32)
    labels = np.asarray(s.labels, np.int32)
    if images.ndim != 4 or labels.shape != images.shape[:1]:
        raise ValueError(f"expected images [N,H,W,C] and labels [N]; got {images.shape}, {labels.shape}")
    atomic_savez(path, images=images, labels=labels, dataset=np.array(s.dataset),
                 mean=np.asarray(s.mean, np.float32), std=np.asarray(s.std, np.float32),
                 zca=np.array(bool(s.zca)), lr=np.array(s.lr, np.float32),
                 method=np.array(s.method))
    return path


def load_synset(path: str | os.PathLike) -> LabelledSet:
    """Read a set written by `save_synset`; `path` is the file or the run directory holding it."""
    path = os.fspath(path)
    if os.path.isdir(path):
        path = os.path.join(path, FILENAME)
    if not os.path.isfile(path):
        raise MissingInputError(f"no labelled image set at {path} (expected a {FILENAME} "
                                "written by `jaxdiff distill` or `jaxdiff evaluate`)")
    try:
        with np.load(path, allow_pickle=False) as z:
            missing = sorted({"images", "labels", "dataset", "mean", "std"} - set(z.files))
            if missing:
                raise UserError(f"{path} is not an image set of `jaxdiff distill`/`evaluate`: "
                                f"it lacks {missing} (it has {sorted(z.files)})")
            get = lambda k, cast: cast(z[k]) if k in z.files else LabelledSet._field_defaults[k]  # noqa: E731
            s = LabelledSet(images=z["images"], labels=z["labels"], dataset=str(z["dataset"]),
                            mean=z["mean"], std=z["std"], zca=get("zca", bool),
                            lr=get("lr", float), method=get("method", str))
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
        if isinstance(e, UserError):
            raise
        raise UserError(f"{path} is not a readable .npz image set ({type(e).__name__}: {e}); "
                        f"point at a run directory or its {FILENAME}") from None
    if s.images.ndim != 4 or len(s.labels) != len(s.images):
        raise UserError(f"{path}: images {s.images.shape} and labels {s.labels.shape} are not "
                        "[N, H, W, C] images with one label each")
    return s
