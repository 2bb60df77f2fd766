"""The layer rule of docs/architecture.md, checked by parsing every module's imports.

A lower layer importing a higher one fails, naming both files; so does an import cycle between
modules, an import of another module's private (`_name`) member, and dispatch through
`importlib` strings (the imports must show the architecture).
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "jaxdiff"

# rank of each top-level part of the package (docs/architecture.md, "Layers")
RANKS = {
    "cli": 6, "pipelines": 5, "specs": 4, "config_utils": 4,
    "diffusion": 3, "distill": 3, "select": 3, "fid": 3, "models": 2, "data": 1,
    "random": 0, "sharding": 0, "checkpoint": 0, "metrics": 0, "files": 0, "batching": 0,
    "feeding": 0, "torch_reader": 0, "noise_levels": 0, "xla_options": 0,
    "images": 0, "runtime": 0, "distributed": 0, "errors": 0, "ops": 0, "__init__": 0,
}
# Same-rank imports allowed between different parts (the library may share downwards).
SAME_RANK_ALLOWED = {("select", "distill"), ("fid", "diffusion")}


def _module_name(path: Path) -> str:
    rel = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _part(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def _imports(path: Path, module: str, known: dict[str, Path]):
    """`(line, imported module, imported names)` for every jaxdiff import in `path`, relative
    imports resolved; `from pkg import sub` counts as importing `pkg.sub` when it is a module."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                if a.name.split(".")[0] == "jaxdiff":
                    out.append((node.lineno, a.name, ()))
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            if base.split(".")[0] != "jaxdiff":
                continue
            names = tuple(a.name for a in node.names)
            for name in names:
                sub = f"{base}.{name}"
                if sub in known:
                    out.append((node.lineno, sub, ()))
            out.append((node.lineno, base, tuple(n for n in names if f"{base}.{n}" not in known)))
    return out


def test_lower_layers_never_import_higher_ones():
    known = _modules()
    bad = []
    for module, path in known.items():
        src = _part(module)
        for line, target, _ in _imports(path, module, known):
            dst = _part(target)
            if src == dst:
                continue
            rs, rd = RANKS[src], RANKS[dst]
            if rd > rs or (rd == rs and (src, dst) not in SAME_RANK_ALLOWED and rs != 0):
                bad.append(f"{path.relative_to(PACKAGE.parent)}:{line} ({src}, rank {rs}) "
                           f"imports {target} ({dst}, rank {rd})")
    assert not bad, "layer rule broken (docs/architecture.md):\n" + "\n".join(bad)


def test_every_part_has_a_rank():
    parts = {_part(m) for m in _modules()}
    assert parts <= set(RANKS), f"parts without a rank in RANKS: {sorted(parts - set(RANKS))}"


def test_no_import_of_another_modules_private_names():
    known = _modules()
    bad = []
    for module, path in known.items():
        for line, target, names in _imports(path, module, known):
            if target == module:
                continue
            private = [n for n in names if n.startswith("_") and not n.startswith("__")]
            if private:
                bad.append(f"{path.relative_to(PACKAGE.parent)}:{line} imports {private} "
                           f"from {target}")
        # module._private attribute access on an imported jaxdiff module alias
        tree = ast.parse(path.read_text())
        aliases = {}
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("jaxdiff"):
                for a in node.names:
                    if f"{node.module}.{a.name}" in known:
                        aliases[a.asname or a.name] = f"{node.module}.{a.name}"
            elif isinstance(node, ast.Import):
                for a in node.names:
                    if a.name.startswith("jaxdiff") and a.asname:
                        aliases[a.asname] = a.name
        for node in ast.walk(tree):
            if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
                    and node.value.id in aliases and node.attr.startswith("_")
                    and not node.attr.startswith("__")):
                bad.append(f"{path.relative_to(PACKAGE.parent)}:{node.lineno} uses "
                           f"{aliases[node.value.id]}.{node.attr}")
    assert not bad, "private names used across modules:\n" + "\n".join(bad)


def test_no_import_cycles():
    known = _modules()
    graph = {m: {t for _, t, _ in _imports(p, m, known) if t in known and t != m}
             for m, p in known.items()}
    # Package __init__ files re-export their children; an edge child -> package is how a child
    # reaches a sibling, so follow it as edges to the package's imports (not a cycle by itself).
    state, stack, cycles = {}, [], []

    def visit(m):
        state[m] = 1
        stack.append(m)
        for t in sorted(graph[m]):
            if t in stack and not m.startswith(t + "."):
                cycles.append(" -> ".join(stack[stack.index(t):] + [t]))
            elif state.get(t) is None:
                visit(t)
        stack.pop()
        state[m] = 2

    for m in sorted(graph):
        if state.get(m) is None:
            visit(m)
    assert not cycles, "import cycles:\n" + "\n".join(cycles)


def test_no_importlib_dispatch():
    bad = [str(p.relative_to(PACKAGE.parent)) for p in PACKAGE.rglob("*.py")
           if "importlib.import_module" in p.read_text()]
    assert not bad, f"dispatch by importlib strings in {bad}; use a table of imported functions"


def test_test_files_import_only_the_shared_helpers():
    """Tests mirror the package; what several test files share lives in tests/helpers.py."""
    tests_root = Path(__file__).resolve().parent
    bad = []
    for path in sorted(tests_root.rglob("*.py")):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            for name in names:
                top = name.split(".")
                if (top[0] == "tests" and name not in ("tests", "tests.helpers")
                        and not name.startswith("tests.helpers.")) or top[0].startswith("test_"):
                    bad.append(f"{path.relative_to(tests_root.parent)}:{node.lineno} imports {name}")
    assert not bad, "test files importing other test files:\n" + "\n".join(bad)
