"""The machinery every command's `resolve(config) -> Spec` uses (config -> frozen, typed spec).

A `Resolver` reads a config (a `ConfigDict` or a dict; the caller's object is never mutated):

* `r.get("loss.batch_real")` reads a value by dotted key;
* `r.fill(key, value, source)` replaces an "auto"/0 sentinel by a default from a table: the value
  goes into the resolved config (`r.resolved_config`, whose fingerprint guards checkpoints and
  which `config.json` records) and a note names the table;
* `r.derive(key, value, source)` records a value computed from other keys or from the dataset
  (a network depth from the image size, a DSA strategy from the dataset): a note only, the config
  keeps what the user wrote;
* `r.adjust(key, old, new, why)` records a value that could not be honoured as given (never
  silently: the note says why);
* the checks (`choice`, `integer`, `number`, ...) raise `SpecError` naming the key, the value
  and what is allowed.

Every spec carries a `Resolution` (`spec.resolution`): the notes, the resolved config and its
fingerprint. `print_resolved` prints the notes as one block; `write_config` writes them with the
resolved config to the run's `config.json`.
"""

from __future__ import annotations

import copy
import dataclasses
import os
from collections.abc import Iterable, Mapping
from typing import Any

from jaxdiff.checkpoint import MESH_KEYS, RUN_CONTROL_KEYS, config_fingerprint, resume_fingerprints
from jaxdiff.errors import UserError
from jaxdiff.files import atomic_write_json


class SpecError(UserError):
    """A config value that cannot be used; the message names the key, the value and the fix."""


@dataclasses.dataclass(frozen=True)
class Resolution:
    """What `resolve` filled in and the config it resolved to.

    Attributes:
      command: the `jaxdiff` command (`distill`, `sample`, ...).
      notes: one line per filled-in, derived or adjusted value, naming its source.
      config: the resolved config as a plain dict (sentinels replaced by table defaults).
      fingerprint: `config_fingerprint(config, ignore)`: the config's identity (`config.json`).
      resume_fingerprints: `checkpoint.resume_fingerprints(config, ignore)`: what a checkpoint
        must carry to resume (the first leaves out the device count, so a resume may change it;
        the second is `fingerprint`, which checkpoints older than that rule carry).
      resume_safe: the (dotted) keys, and everything under them, that a `--resume` may change:
        `ignore`, the device count (`checkpoint.MESH_KEYS`) and the command's own (e.g. select's
        methods, to extend a table). Any other change is refused (`pipelines.common`).
      resumable: whether the command continues a run (`--resume`); a command that does not
        (evaluate, sample) may write into its own earlier run directory again.
    """

    command: str
    notes: tuple[str, ...]
    config: dict
    fingerprint: str
    resume_fingerprints: tuple[str, ...]
    resume_safe: tuple[str, ...] = ()
    resumable: bool = True


def _to_dict(config) -> dict:
    if hasattr(config, "to_dict"):
        return config.to_dict()
    return copy.deepcopy(dict(config))


class Resolver:
    """Reads one command's config and records every value it fills in (see the module doc)."""

    def __init__(self, command: str, config):
        self.command = command
        self._config = _to_dict(config)
        self._notes: list[str] = []

    # ------------------------------------------------------------------ reading
    def has(self, key: str) -> bool:
        node = self._config
        for part in key.split("."):
            if not isinstance(node, Mapping) or part not in node:
                return False
            node = node[part]
        return True

    def get(self, key: str, default: Any = dataclasses.MISSING) -> Any:
        """The value at dotted `key`; `default` when absent (SpecError without a default)."""
        node = self._config
        for part in key.split("."):
            if not isinstance(node, Mapping) or part not in node:
                if default is not dataclasses.MISSING:
                    return default
                raise SpecError(f"config key {key!r} is missing from the {self.command} config")
            node = node[part]
        return node

    def section(self, key: str) -> dict:
        """A copy of the sub-config at `key` as a dict ({} when absent)."""
        value = self.get(key, {})
        return copy.deepcopy(dict(value)) if isinstance(value, Mapping) else {}

    # ------------------------------------------------------------------ recording
    def _set(self, key: str, value: Any) -> None:
        node = self._config
        *path, leaf = key.split(".")
        for part in path:
            node = node.setdefault(part, {})
        node[leaf] = value

    def fill(self, key: str, value: Any, source: str) -> Any:
        """Replace a sentinel at `key` by `value` from table `source` (recorded in the config)."""
        self._set(key, value)
        self._notes.append(f"{key} = {_show(value)}  ({source})")
        return value

    def derive(self, key: str, value: Any, source: str) -> Any:
        """Record a value computed for `key` (the config keeps what was written)."""
        self._notes.append(f"{key} -> {_show(value)}  ({source})")
        return value

    def adjust(self, key: str, old: Any, new: Any, why: str) -> Any:
        """Record that `key` = `old` is used as `new`, and why."""
        self._notes.append(f"{key} = {_show(old)} adjusted to {_show(new)}  ({why})")
        return new

    def note(self, text: str) -> None:
        self._notes.append(text)

    def resolution(self, ignore: tuple[str, ...] = RUN_CONTROL_KEYS, *,
                   resume_safe: tuple[str, ...] = (), resumable: bool = True) -> Resolution:
        """The notes so far, the resolved config and its fingerprint (leaving out `ignore`);
        `resume_safe`: further keys a `--resume` may change; `resumable`: see `Resolution`."""
        return Resolution(self.command, tuple(self._notes), copy.deepcopy(self._config),
                          config_fingerprint(self._config, ignore),
                          resume_fingerprints(self._config, ignore),
                          tuple(ignore) + MESH_KEYS + tuple(resume_safe), resumable)

    @property
    def resolved_config(self) -> dict:
        return copy.deepcopy(self._config)

    # ------------------------------------------------------------------ checks
    def choice(self, key: str, allowed: Iterable[str]) -> str:
        """The value at `key`, which must be one of `allowed`."""
        return choice(self.get(key), allowed, key)

    def integer(self, key: str, minimum: int | None = None, maximum: int | None = None) -> int:
        return integer(self.get(key), key, minimum, maximum)

    def number(self, key: str, minimum: float | None = None, *, strict: bool = False,
               maximum: float | None = None) -> float:
        return number(self.get(key), key, minimum, strict=strict, maximum=maximum)

    def sigma_range(self, prefix: str) -> tuple[float, float]:
        """`(prefix.sigma_min, prefix.sigma_max)`: a noise range, both > 0, min below max."""
        lo = self.number(f"{prefix}.sigma_min", 0.0, strict=True)
        hi = self.number(f"{prefix}.sigma_max", 0.0, strict=True)
        if hi <= lo:
            raise SpecError(f"config keys '{prefix}.sigma_min' = {lo:g} and '{prefix}.sigma_max' "
                            f"= {hi:g}: sigma_max must be above sigma_min (EDM: 0.002 and 80)")
        return lo, hi

    def flag(self, key: str) -> bool:
        value = self.get(key)
        if not isinstance(value, (bool, int)) or value not in (0, 1):
            raise SpecError(f"config key {key!r} = {value!r} must be true or false")
        return bool(value)

    def path(self, key: str) -> str:
        """The value at `key` as an absolute, user-expanded path ('' stays '')."""
        value = self.get(key)
        return absolute_path(value) if value else ""


def choice(value: Any, allowed: Iterable[str], key: str) -> str:
    """`value` if it is one of `allowed`; otherwise SpecError naming the key and the choices."""
    allowed = tuple(allowed)
    if value not in allowed:
        raise SpecError(f"config key {key!r} = {value!r} is not one of {sorted(allowed)}")
    return value


def integer(value: Any, key: str, minimum: int | None = None, maximum: int | None = None) -> int:
    """`value` as an int (no fractional part, no bool) within [minimum, maximum]."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or int(value) != value:
        raise SpecError(f"config key {key!r} = {value!r} must be an integer")
    value = int(value)
    if minimum is not None and value < minimum:
        raise SpecError(f"config key {key!r} = {value} must be >= {minimum}")
    if maximum is not None and value > maximum:
        raise SpecError(f"config key {key!r} = {value} must be <= {maximum}")
    return value


def number(value: Any, key: str, minimum: float | None = None, *, strict: bool = False,
           maximum: float | None = None) -> float:
    """`value` as a finite float, `> minimum` when `strict`, else `>= minimum`."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value \
            or value in (float("inf"), float("-inf")):
        raise SpecError(f"config key {key!r} = {value!r} must be a finite number")
    value = float(value)
    if minimum is not None and (value <= minimum if strict else value < minimum):
        raise SpecError(f"config key {key!r} = {value:g} must be {'>' if strict else '>='} "
                        f"{minimum:g}")
    if maximum is not None and value > maximum:
        raise SpecError(f"config key {key!r} = {value:g} must be <= {maximum:g}")
    return value


def absolute_path(path: str) -> str:
    return os.path.abspath(os.path.expanduser(str(path)))


def _show(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    return repr(value)


# ---------------------------------------------------------------------- output
def print_resolved(resolution: Resolution) -> None:
    """Print the notes of `resolution` as one block (nothing filled in: one line saying so)."""
    tag = f"[jaxdiff {resolution.command}]"
    if not resolution.notes:
        print(f"{tag} resolved: every value as given", flush=True)
        return
    lines = "\n".join(f"  {n}" for n in resolution.notes)
    print(f"{tag} resolved:\n{lines}", flush=True)


def write_config(run_dir: str, resolution: Resolution) -> str:
    """Write `config.json`: the resolved config and the notes of how it was resolved."""
    return atomic_write_json(os.path.join(run_dir, "config.json"),
                             {"command": resolution.command, "config": resolution.config,
                              "resolved": list(resolution.notes),
                              "fingerprint": resolution.fingerprint})
