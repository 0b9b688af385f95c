"""The import graph of src/cygate, Cython modules included: no cycles, no upward imports.

``make lint`` runs import-linter (``[tool.importlinter]`` in pyproject.toml) on the Python
modules; its graph (grimp) does not read ``.pyx`` and ``.pxd`` files, so a compiled module could
import upwards, or close a cycle, unseen. This script reads every module of the package (``.py``
with the ``ast`` module, imports inside functions and under ``TYPE_CHECKING`` included;
``.pyx``/``.pxd`` by their ``import``, ``from ... import`` and ``cimport`` lines), then fails,
naming the modules, on

- any cycle among the modules (each cycle's members and the imports that close it), and
- any import against the layers contract of pyproject.toml (the contract with ``containers``
  and ``layers``; a layer ``a | b`` holds independent siblings).

Usage: ``python scripts/import_cycles.py [--repo DIR]`` (exit status 1 when it finds any).
"""

from __future__ import annotations

import argparse
import ast
import re
import sys
import tomllib
from collections.abc import Iterable, Mapping
from pathlib import Path

_CYTHON_IMPORT = re.compile(r"^\s*(?:from\s+([\w.]+)\s+c?import\b|c?import\s+([\w.]+))")


def module_files(src: Path, package: str) -> dict[str, Path]:
    """Every module of ``package`` under ``src`` by dotted name (a ``.pxd`` only when it has no
    ``.pyx`` of the same name: both describe one module)."""
    found: dict[str, Path] = {}
    for path in sorted((src / package).rglob("*")):
        if path.suffix not in (".py", ".pyx", ".pxd") or not path.is_file():
            continue
        parts = list(path.relative_to(src).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        name = ".".join(parts)
        if path.suffix == ".pxd" and name in found:
            continue
        found[name] = path
    return found


def _resolve(name: str, modules: Mapping[str, Path]) -> str | None:
    """The module ``name`` is (or lives in): ``a.b.c`` is ``a.b`` when ``c`` is a name in it."""
    while name and name not in modules:
        name = name.rpartition(".")[0]
    return name or None


def _python_imports(name: str, path: Path, modules: Mapping[str, Path]) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join([*base, node.module] if node.module else base)
            else:
                target = node.module or ""
            for alias in node.names:  # `from pkg import module` imports the module
                full = f"{target}.{alias.name}"
                out.add(full if full in modules else target)
    return out


def _cython_imports(path: Path) -> set[str]:
    out: set[str] = set()
    for line in path.read_text(encoding="utf-8").splitlines():
        match = _CYTHON_IMPORT.match(line)
        if match:
            out.add(match.group(1) or match.group(2))
    return out


def import_graph(src: Path, package: str) -> dict[str, set[str]]:
    """Module -> the package's modules it imports (itself excluded)."""
    modules = module_files(src, package)
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        if path.suffix == ".py":
            raw = _python_imports(name, path, modules)
        else:
            raw = _cython_imports(path)
            pxd = path.with_suffix(".pxd")
            if path.suffix == ".pyx" and pxd.is_file():
                raw |= _cython_imports(pxd)
        deps = {_resolve(n, modules) for n in raw if n == package or n.startswith(package + ".")}
        graph[name] = {d for d in deps if d is not None and d != name}
    return graph


def cycles(graph: Mapping[str, Iterable[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in graph:
                continue
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return sorted(found)


def layers_contract(pyproject: Path) -> tuple[str, list[list[str]]] | None:
    """(container, layers high to low, each a list of sibling names) of the first layers
    contract of ``[tool.importlinter]``, or None without one."""
    config = tomllib.loads(pyproject.read_text(encoding="utf-8"))
    contracts = config.get("tool", {}).get("importlinter", {}).get("contracts", [])
    for contract in contracts:
        if contract.get("type") == "layers" and contract.get("containers"):
            layers = [[s.strip() for s in re.split(r"[|:]", layer)] for layer in contract["layers"]]
            return contract["containers"][0], layers
    return None


def upward_imports(
    graph: Mapping[str, Iterable[str]], container: str, layers: list[list[str]]
) -> list[str]:
    """Imports of a layer's module from a higher layer, or from an independent sibling."""
    rank = {name: i for i, layer in enumerate(layers) for name in layer}

    def top(module: str) -> str | None:
        if not module.startswith(container + "."):
            return None
        return module[len(container) + 1 :].split(".")[0]

    found = []
    for importer, imported in sorted((a, b) for a, deps in graph.items() for b in deps):
        ta, tb = top(importer), top(imported)
        if ta is None or tb is None or ta == tb or ta not in rank or tb not in rank:
            continue
        if rank[tb] <= rank[ta]:
            how = "a higher layer" if rank[tb] < rank[ta] else "an independent sibling"
            found.append(f"{importer} imports {imported} ({how})")
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repo", type=Path, default=Path(__file__).resolve().parents[1])
    parser.add_argument("--package", default="cygate")
    args = parser.parse_args(argv)
    graph = import_graph(args.repo / "src", args.package)
    problems = []
    for component in cycles(graph):
        problems.append("import cycle: " + ", ".join(component))
        members = set(component)
        problems += [f"    {m} -> {', '.join(sorted(graph[m] & members))}" for m in component]
    contract = layers_contract(args.repo / "pyproject.toml")
    if contract is not None:
        problems += upward_imports(graph, *contract)
    for line in problems:
        print(line, file=sys.stderr)
    if problems:
        return 1
    print(f"import graph: {len(graph)} modules, no cycles, no upward imports")
    return 0


if __name__ == "__main__":
    sys.exit(main())
