"""Files a run writes: atomic writes and content fingerprints (one place for both).

Atomic: every writer below writes to a temporary name beside the target (the process id in the
name, so two processes never share one) and publishes it with `os.replace`, so a crash leaves
either the old file or the new one, never a truncated one.

Multi-process runs: only process 0 writes (`jaxdiff.distributed.is_main`); on the others every
writer below returns the path without touching the disk, so library code writes unconditionally
and one copy of each file appears. A process that must read a file another one wrote waits at a
`distributed.barrier` first.

Fingerprints: `fingerprint(obj)` is the first hex digits of the sha256 of the object's canonical
JSON (sorted keys, `str()` for anything JSON cannot encode). Checkpoint config checks, the
decoded-data cache, the quality-network cache and the DiffRS warm-up cache all key on it, so the
digits of existing run directories and caches stay valid as long as this function does not
change.
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Any

import numpy as np

from jaxdiff.distributed import is_main


def canonical_json(obj: Any) -> str:
    """`json.dumps(obj, sort_keys=True, default=str)`: the text `fingerprint` hashes."""
    return json.dumps(obj, sort_keys=True, default=str)


def fingerprint(obj: Any, length: int = 16) -> str:
    """The first `length` hex digits of sha256(canonical_json(obj))."""
    return hashlib.sha256(canonical_json(obj).encode()).hexdigest()[:length]


def _tmp_name(path: str, suffix: str = "") -> str:
    return f"{path}.tmp{os.getpid()}{suffix}"


def json_default(o):
    """`json.dumps(default=...)` for arrays and NumPy scalars: lists and numbers."""
    return np.asarray(o).tolist()


def atomic_write_text(path: str | os.PathLike, text: str) -> str:
    """Write `text` to `path` atomically; returns the path."""
    path = os.fspath(path)
    if not is_main():
        return path
    tmp = _tmp_name(path)
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)
    return path


def atomic_write_json(path: str | os.PathLike, obj: Any, *, sort_keys: bool = False) -> str:
    """Write `obj` as indented JSON atomically (arrays and NumPy scalars become lists/numbers)."""
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=sort_keys,
                                              default=json_default))


def atomic_save_npy(path: str | os.PathLike, array: np.ndarray, *, fsync: bool = True) -> str:
    """`np.save` one array atomically; `fsync` first so a power cut cannot publish a hole."""
    path = os.fspath(path)
    if not is_main():
        return path
    tmp = _tmp_name(path)
    with open(tmp, "wb") as f:
        np.save(f, np.ascontiguousarray(array))
        if fsync:
            f.flush()
            os.fsync(f.fileno())
    os.replace(tmp, path)
    return path


def atomic_savez(path: str | os.PathLike, **arrays) -> str:
    """`np.savez(path, **arrays)` atomically (`path` should end in `.npz`)."""
    path = os.fspath(path)
    if not is_main():
        return path
    tmp = _tmp_name(path, ".npz")   # np.savez appends .npz to names without it
    np.savez(tmp, **{k: np.asarray(v) for k, v in arrays.items()})
    os.replace(tmp, path)
    return path
