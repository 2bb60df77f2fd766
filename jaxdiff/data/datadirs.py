"""Where prepared TFDS data lives: the data-directory search order and the on-disk check.

Search order (the first directory holding `<dir>/<tfds_name>/<version>/dataset_info.json` wins):

1. the explicit `data_dir` argument — if given, it is the *only* directory searched;
2. `$JAXDIFF_DATA_DIR`;
3. `$TFDS_DATA_DIR`;
4. a `shared/tfds` folder beside the repository checkout (`<repo>/../shared/tfds`, found relative
   to this source file), or inside it (`<repo>/shared/tfds`, how copied working trees carry it);
5. `~/tensorflow_datasets` (TFDS's own default).

Only existing directories among 4 are listed. We check the disk ourselves before calling TFDS
because TFDS's own errors for absent data are misleading (for catalogue datasets it reports an
unsupported TFRECORD format rather than "not found").
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import NamedTuple

from jaxdiff.errors import MissingInputError

_VERSION_RE = re.compile(r"^\d+\.\d+\.\d+$")
_REPO_ROOT = Path(__file__).resolve().parents[2]


class DatasetNotFoundError(MissingInputError):
    """A dataset is absent from every searched data directory (the message says where and how)."""


class Located(NamedTuple):
    """A prepared dataset on disk: `data_dir` (the TFDS root), `version` ("3.0.2"), `path`."""

    data_dir: Path
    version: str
    path: Path


def candidate_dirs(data_dir: str | os.PathLike | None = None) -> list[tuple[Path, str]]:
    """`[(directory, where it came from)]` in search order (see module docstring)."""
    if data_dir is not None:
        return [(Path(data_dir).expanduser(), "data_dir argument")]
    out = []
    for var in ("JAXDIFF_DATA_DIR", "TFDS_DATA_DIR"):
        if os.environ.get(var):
            out.append((Path(os.environ[var]).expanduser(), f"${var}"))
    for shared in (_REPO_ROOT.parent / "shared" / "tfds", _REPO_ROOT / "shared" / "tfds"):
        if shared.is_dir():
            out.append((shared.resolve(), "shared/tfds beside the checkout"))
    out.append((Path("~/tensorflow_datasets").expanduser(), "TFDS default"))
    seen, unique = set(), []
    for d, why in out:
        if d not in seen:
            seen.add(d)
            unique.append((d, why))
    return unique


def _version_key(v: str) -> tuple[int, ...]:
    return tuple(int(p) for p in v.split("."))


def find_prepared(root: Path, tfds_name: str) -> Located | None:
    """The newest `root/tfds_name/<version>/` holding a `dataset_info.json`, or None."""
    base = root / tfds_name
    if not base.is_dir():
        return None
    versions = [p.name for p in base.iterdir()
                if _VERSION_RE.match(p.name) and (p / "dataset_info.json").is_file()]
    if not versions:
        return None
    v = max(versions, key=_version_key)
    return Located(root.resolve(), v, (base / v).resolve())


def locate(tfds_name: str, data_dir=None, *, hint: str = "") -> Located:
    """Find `tfds_name` in the search order; `DatasetNotFoundError` naming every directory tried."""
    tried = candidate_dirs(data_dir)
    for root, _ in tried:
        found = find_prepared(root, tfds_name)
        if found is not None:
            return found
    lines = "\n".join(f"  {root}  ({why})" for root, why in tried)
    raise DatasetNotFoundError(
        f"dataset {tfds_name!r} was not found. Searched, in order:\n{lines}\n"
        f"A prepared dataset is a folder <DIR>/{tfds_name}/<version>/ with dataset_info.json, "
        f"features.json and array_record shards. To get it: "
        f"{hint or 'prepare it with tfds build'}.")


def disable_gcs() -> None:
    """Make TFDS never touch Google Cloud Storage (it can wait ~60 s per try when offline).

    `try_gcs=False` covers the data itself; TFDS also probes GCS for metadata unless its
    module-level switch is set (jax-practice.md §6.1). The switch is private, so set it only if
    it exists.
    """
    os.environ.setdefault("NO_GCE_CHECK", "true")
    try:
        from tensorflow_datasets.core.utils import gcs_utils
    except ImportError:
        return
    if hasattr(gcs_utils, "_is_gcs_disabled"):
        gcs_utils._is_gcs_disabled = True
