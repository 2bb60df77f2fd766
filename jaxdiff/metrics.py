"""Metric logging for drivers: JSON lines (always) and TensorBoard (when tensorboardX is installed).

The library core is silent; pipelines write metrics here (jax-practice.md §7). Only process 0
writes in multi-host runs.
"""

from __future__ import annotations

import json
import math
import os
import time
from typing import Any, Mapping

import jax
import numpy as np

from jaxdiff.errors import UserError
from jaxdiff.files import atomic_write_text


def _to_python(v: Any):
    if isinstance(v, (jax.Array, np.ndarray, np.generic)):
        v = np.asarray(v)
        return v.item() if v.ndim == 0 else v.tolist()
    return v


class MetricWriter:
    """Append `{"step": s, "time": t, **metrics}` lines to `<run_dir>/metrics.jsonl`.

    Args:
      run_dir: the run directory (created if missing).
      tensorboard: also write TensorBoard scalars via tensorboardX if it is importable.
    """

    def __init__(self, run_dir: str | os.PathLike, *, tensorboard: bool = True):
        self.run_dir = os.fspath(run_dir)
        self.active = jax.process_index() == 0
        self.path = os.path.join(self.run_dir, "metrics.jsonl")
        self._tb = None
        if self.active:
            os.makedirs(self.run_dir, exist_ok=True)
            if tensorboard:
                try:
                    from tensorboardX import SummaryWriter  # optional dependency
                    self._tb = SummaryWriter(os.path.join(self.run_dir, "tb"))
                except ImportError:
                    pass

    def write(self, step: int, metrics: Mapping[str, Any]) -> None:
        if not self.active:
            return
        row = {"step": int(step), "time": time.time()}
        row.update({k: _to_python(v) for k, v in metrics.items()})
        with open(self.path, "a") as f:
            f.write(json.dumps(row) + "\n")
        if self._tb is not None:
            for k, v in row.items():
                if k not in ("step", "time") and isinstance(v, (int, float)) and math.isfinite(v):
                    self._tb.add_scalar(k, v, step)

    def drop_after(self, step: int) -> int:
        """Remove the rows of steps after `step` (a resume from the checkpoint at `step` logs
        them again); returns how many were removed. The file is replaced atomically."""
        rows = read_metrics(self.run_dir)
        keep = [r for r in rows if r.get("step", 0) <= step]
        if self.active and len(keep) < len(rows):
            atomic_write_text(self.path, "".join(json.dumps(r) + "\n" for r in keep))
        return len(rows) - len(keep)

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()


def read_metrics(run_dir: str | os.PathLike) -> list[dict]:
    """All rows of `<run_dir>/metrics.jsonl` (empty list when absent)."""
    path = os.path.join(os.fspath(run_dir), "metrics.jsonl")
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def check_finite(step: int, **values) -> None:
    """Raise FloatingPointError naming the step and the quantity if any value is NaN/Inf."""
    for name, v in values.items():
        arr = np.asarray(v)
        if not np.all(np.isfinite(arr)):
            raise FloatingPointError(
                f"non-finite {name} at step {step}: {arr if arr.size < 8 else 'array with NaN/Inf'}; "
                "stopping. The last good checkpoint is kept.")


# A training loss more than this many times its first logged value has diverged (the default of
# each loop command's `divergence_limit` config key; 0 there turns the check off).
LOSS_DIVERGENCE_LIMIT = 100.0


class DivergenceError(UserError):
    """A run that blew up but stayed finite (a loss grown by orders of magnitude, a synthetic set
    far outside the data's range): stopped before anything final is written; the message names
    the step, the value, the limit and the config key that sets it."""


def check_growth(step: int, name: str, value: float, reference: float, limit: float, *,
                 reference_is: str = "its first logged value") -> None:
    """Raise `DivergenceError` when `value > limit * reference` (`limit` 0: never; a reference
    <= 0 cannot be grown from). `reference_is` says what the reference is, for the message."""
    if not limit or not reference > 0 or value <= limit * reference:
        return
    raise DivergenceError(
        f"the run diverged at step {step}: {name} = {value:.4g} is more than divergence_limit = "
        f"{limit:g} times {reference_is} ({reference:.4g}). Nothing final was written; the last "
        "checkpoint before it is kept. Lower the learning rate (or set "
        "--config.divergence_limit=0 to never stop)")
