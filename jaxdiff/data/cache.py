"""Decoded-array cache: one directory of `.npy` files per entry, published by an atomic rename.

Decoding 50,000 JPEGs takes seconds; reading the decoded uint8 arrays back takes a few hundredths
of a second (memory-mapped read of `.npy` files, then one copy — `np.load` of an `.npz` is ~20x
slower because it streams through `zipfile`). Entries live under `$JAXDIFF_CACHE_DIR` (default
`~/.cache/jaxdiff`), one per (name, split, version, resolved data dir, image size, ...) key; the
key is hashed into the directory name, so a different data dir or size never reads another's
arrays.

Atomicity: arrays are written into a fresh temporary directory next to the target, fsynced, and
the directory is renamed onto the target name. A rename either happens completely or not at all,
so an interrupted write leaves no entry (only a `*.tmp` directory that is ignored), never a
truncated one. If two processes race, the loser's rename fails and it discards its copy. An
unreadable entry is treated as a miss, removed and rewritten.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import warnings
from pathlib import Path

import numpy as np

from jaxdiff.files import fingerprint

# Bump when the cached content for the same key changes meaning (decode, resize, split rules).
CACHE_FORMAT = 1


def cache_dir() -> Path:
    """`$JAXDIFF_CACHE_DIR`, else `~/.cache/jaxdiff`."""
    return Path(os.environ.get("JAXDIFF_CACHE_DIR") or "~/.cache/jaxdiff").expanduser()


def cache_path(name: str, split: str, key: dict) -> Path:
    """Entry directory for `key` (a JSON-serialisable dict describing the content)."""
    digest = fingerprint({"format": CACHE_FORMAT, **key})
    return cache_dir() / name / f"{split}-{digest}"


def read(path: Path, names: tuple[str, ...], *, mmap: bool = False
         ) -> dict[str, np.ndarray] | None:
    """The cached arrays `names`, or None when absent or unreadable (a warning says which).

    `mmap=True` returns read-only memory maps of the files (rows are read when indexed: a split
    larger than memory can be sampled); otherwise ordinary in-memory copies.
    """
    if not path.is_dir():
        return None
    try:
        # mmap + copy: a plain sequential copy out of the page cache, and the returned arrays are
        # ordinary writable memory, independent of the file.
        mapped = {k: np.load(path / f"{k}.npy", mmap_mode="r", allow_pickle=False)
                  for k in names}
        return mapped if mmap else {k: np.array(a) for k, a in mapped.items()}
    except (OSError, ValueError, EOFError) as e:
        warnings.warn(f"ignoring unreadable cache entry {path}: {e}", stacklevel=3)
        shutil.rmtree(path, ignore_errors=True)
        return None


class building:
    """`with building(path) as tmp:` fill the fresh directory `tmp` (None when it cannot be
    created: full or read-only disk, a warning says so), and on a clean exit every file in it
    is fsynced and the directory published at `path` by one rename. So large entries can be
    written piece by piece (e.g. into `np.lib.format.open_memmap` files) without holding them
    in memory, with the same atomicity as `write`: an exception or interrupt removes `tmp`,
    and losing a race to another process keeps the winner's entry."""

    def __init__(self, path: Path):
        self.path, self.tmp = Path(path), None

    def __enter__(self) -> Path | None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.tmp = Path(tempfile.mkdtemp(dir=self.path.parent, prefix=self.path.name + ".",
                                             suffix=".tmp"))
        except OSError as e:
            warnings.warn(f"not caching to {self.path}: {e}", stacklevel=2)
        return self.tmp

    def __exit__(self, exc_type, exc, tb) -> None:
        if self.tmp is None:
            return
        if exc_type is not None:  # interrupted: drop the partial copy, never touch an entry
            shutil.rmtree(self.tmp, ignore_errors=True)
            return
        try:
            for f in self.tmp.iterdir():
                fd = os.open(f, os.O_RDONLY)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
            os.chmod(self.tmp, 0o755)  # mkdtemp makes it 0700; a shared cache stays readable
            os.rename(self.tmp, self.path)
        except OSError as e:  # disk full, or another process published the same entry first
            shutil.rmtree(self.tmp, ignore_errors=True)
            if not self.path.is_dir():
                warnings.warn(f"not caching to {self.path}: {e}", stacklevel=2)
        except BaseException:
            shutil.rmtree(self.tmp, ignore_errors=True)
            raise


def write(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """Publish `arrays` at `path` atomically; failing to write (full, read-only disk) only warns."""
    try:
        with building(path) as tmp:
            if tmp is None:
                return
            for k, a in arrays.items():
                np.save(tmp / f"{k}.npy", np.ascontiguousarray(a), allow_pickle=False)
    except OSError as e:  # disk full while writing: `building` removed the partial copy
        warnings.warn(f"not caching to {path}: {e}", stacklevel=2)
