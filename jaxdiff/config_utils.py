"""Config files (`configs/*.py` with `get_config()`) and `--config.a.b=value` overrides.

The convention of the Flax examples and big_vision, without absl: a config is an
`ml_collections.ConfigDict`; overrides are parsed as Python literals when possible and must name
an existing key (an unknown key is rejected with the list of valid keys).
"""

from __future__ import annotations

import ast
import importlib.util
import inspect
import sys
from pathlib import Path

import ml_collections

REPO_CONFIGS = Path(__file__).resolve().parent.parent / "configs"


def config_search_dirs() -> list[Path]:
    return [Path.cwd() / "configs", REPO_CONFIGS]


def resolve_config_path(name_or_path: str) -> Path:
    """A path to a config file, or a preset name looked up in `configs/` (cwd, then the repo)."""
    p = Path(name_or_path)
    if p.suffix == ".py" and p.exists():
        return p.resolve()
    stem = p.stem if p.suffix == ".py" else name_or_path
    for d in config_search_dirs():
        cand = d / f"{stem}.py"
        if cand.exists():
            return cand.resolve()
    known = sorted({f.stem for d in config_search_dirs() if d.is_dir() for f in d.glob("*.py")
                    if not f.stem.startswith("_")})
    raise FileNotFoundError(f"unknown config {name_or_path!r}: not a file, and no preset of that "
                            f"name in {[str(d) for d in config_search_dirs()]}. Presets: {known}")


def split_preset_argument(name_or_path: str) -> tuple[str, str | None]:
    """`"preset:ARG"` -> ("preset", "ARG"); anything without a ':' -> (it, None). The argument
    selects a setting of a preset that has several (`get_config(arg)`)."""
    name, sep, arg = name_or_path.partition(":")
    return (name, arg) if sep else (name_or_path, None)


def load_config(name_or_path: str) -> ml_collections.ConfigDict:
    """Import a config file and call its `get_config()`; `"name:ARG"` calls `get_config("ARG")`
    (presets with several settings, e.g. `distill_imagenet_subset:imagewoof,128,10,ddif_tm`)."""
    name_or_path, arg = split_preset_argument(name_or_path)
    path = resolve_config_path(name_or_path)
    spec = importlib.util.spec_from_file_location(f"jaxdiff_config_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    # Presets may import shared helpers that sit beside them (e.g. configs/_distill_base.py).
    sys.path.insert(0, str(path.parent))
    try:
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(path.parent))
    if not hasattr(module, "get_config"):
        raise ValueError(f"config file {path} defines no get_config()")
    if arg is None:
        config = module.get_config()
    else:
        takes = inspect.signature(module.get_config).parameters
        if not takes:
            raise ValueError(f"config {path.stem} takes no argument; drop ':{arg}'")
        config = module.get_config(arg)
    if not isinstance(config, ml_collections.ConfigDict):
        config = ml_collections.ConfigDict(config)
    return config


def all_keys(config: ml_collections.ConfigDict, prefix: str = "") -> list[str]:
    """Dotted names of every leaf of the config."""
    keys = []
    for k, v in config.items():
        name = f"{prefix}{k}"
        if isinstance(v, ml_collections.ConfigDict):
            keys.extend(all_keys(v, name + "."))
        else:
            keys.append(name)
    return keys


def _parse_value(text: str):
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text  # a bare string such as `cifar10_jpeg`


def set_values(config: ml_collections.ConfigDict, **values) -> ml_collections.ConfigDict:
    """Set already-typed values by dotted key from Python (`set_values(c, **{"a.b": 3})`);
    returns `config`. The command line goes through `apply_override` instead."""
    for dotted, value in values.items():
        node = config
        *path, leaf = dotted.split(".")
        for part in path:
            node = node[part]
        node[leaf] = value
    return config


_BOOLEANS = {"true": True, "yes": True, "on": True, "1": True,
             "false": False, "no": False, "off": False, "0": False}


def parse_bool(dotted: str, text: str) -> bool:
    """The boolean a user typed for key `dotted`: true/false, yes/no, on/off or 1/0, any case."""
    value = _BOOLEANS.get(str(text).strip().lower())
    if value is None:
        raise TypeError(f"config key {dotted!r} expects a boolean (true/false, yes/no, on/off or "
                        f"1/0, any case), got {text!r}")
    return value


def apply_override(config: ml_collections.ConfigDict, dotted: str, text: str) -> None:
    """Set `config.<dotted> = literal(text)`, keeping the field's type; clear errors otherwise."""
    parts = dotted.split(".")
    node = config
    for i, part in enumerate(parts):
        valid = all_keys(config)
        if not isinstance(node, ml_collections.ConfigDict) or part not in node:
            raise KeyError(f"unknown config key {dotted!r}. Valid keys: {', '.join(valid)}")
        if i < len(parts) - 1:
            node = node[part]
    leaf = parts[-1]
    old = node[leaf]
    if isinstance(old, bool):
        node[leaf] = parse_bool(dotted, text)
        return
    value = _parse_value(text)
    if isinstance(old, str) and not isinstance(value, str):
        value = text  # e.g. --config.data.name=123 where a string is expected
    if old is None or isinstance(old, ml_collections.ConfigDict):
        node[leaf] = value
        return
    if isinstance(old, (tuple, list)) and not isinstance(value, (tuple, list)):
        value = (value,)
    try:
        node[leaf] = type(old)(value) if isinstance(old, (tuple, list)) else value
    except TypeError as e:
        raise TypeError(f"config key {dotted!r} expects {type(old).__name__}, got {text!r}") from e


def parse_overrides(argv: list[str]) -> tuple[str | None, list[tuple[str, str]], list[str]]:
    """Split argv into (config name/path, [(dotted key, value text)], remaining args)."""
    config = None
    overrides, rest = [], []
    i = 0
    while i < len(argv):
        a = argv[i]
        if a == "--config" and i + 1 < len(argv):
            config = argv[i + 1]
            i += 2
            continue
        if a.startswith("--config="):
            config = a.split("=", 1)[1]
        elif a.startswith("--config."):
            body = a[len("--config."):]
            if "=" in body:
                k, v = body.split("=", 1)
            elif i + 1 < len(argv) and not argv[i + 1].startswith("--"):
                k, v = body, argv[i + 1]   # "-1" is a value, "--resume" is the next flag
                i += 1
            else:
                raise ValueError(f"override {a} has no value: write {a}=VALUE")
            overrides.append((k, v))
        else:
            rest.append(a)
        i += 1
    return config, overrides, rest


def build_config(name_or_path: str, overrides: list[tuple[str, str]]) -> ml_collections.ConfigDict:
    config = load_config(name_or_path)
    for k, v in overrides:
        apply_override(config, k, v)
    return config

