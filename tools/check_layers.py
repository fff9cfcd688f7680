#!/usr/bin/env python3
"""Fail when an import points up the layers of DESIGN.md, or modules import in a circle.

Usage: ``python tools/check_layers.py [ROOT]`` (ROOT: the repo root; by default the folder
above this script). Stdlib only, so it runs before anything is installed.

Each top-level folder of ROOT that holds an ``__init__.py`` or is named in
:data:`PACKAGE_RANKS` (never tests/, bench/, tools/) is the package ``aipg.<folder>``
(pyproject's ``package-dir``). Every ``.py`` file in it is parsed with :mod:`ast`, and every
import -- at module level, inside a function, under ``if TYPE_CHECKING:`` alike; absolute
or relative -- that names a module of ours is resolved to that module's file. Imports of
anything else (stdlib, third party) are ignored.

Exit status 1 with one line per violation (upward or sibling import, a forbidden pair, a
sub-layer import that points up, an import of ours that names no module, a cycle between
files); exit status 0 with a one-line summary otherwise.
"""

from __future__ import annotations

import ast
import sys
from collections import deque
from dataclasses import dataclass
from pathlib import Path

# --- the rules -------------------------------------------------------------------------

TOP = "aipg"  # every package folder installs as aipg.<folder>

# Imports point to a lower rank, or stay inside their own package. Equal ranks are
# siblings that must not know each other: gossip moves bytes and knows nothing of models
# (node joins the two); devnet and testing are separate harnesses built on node.
PACKAGE_RANKS: dict[str, int] = {
    "wire": 0,  # records, keys, the codec: imports nothing of ours
    "gossip": 1,  # transport, secure channel, pubsub, request/response
    "models": 1,  # manifests, blob store, ONNX sessions, runners
    "pouw": 2,  # jobs, receipts, verification (models: what a job runs)
    "stake": 3,  # ledger and consensus (pouw: certificates are block contents)
    "node": 4,  # the running node wires every layer below into one nursery
    "devnet": 5,  # local multi-node networks
    "testing": 5,  # test-only fakes and harnesses
    "cli": 6,  # the aipg-node command
}

# Imports the ranks would allow but the design forbids, each with the reason.
FORBIDDEN: dict[tuple[str, str], str] = {
    ("cli", "testing"): "the shipped command must not depend on test-only fakes",
    ("pouw", "gossip"): "pouw is a pure state machine, tested without a network (DESIGN.md)",
    ("stake", "gossip"): "stake is a pure state machine, tested without a network (DESIGN.md)",
}

# Sub-layers inside a package: (path prefix inside the package folder, rank). A file
# belongs to the sub-layer of the longest prefix that matches its path ("" matches every
# file) and imports only modules of its own sub-layer or lower ones.
SUBLAYERS: dict[str, tuple[tuple[str, int], ...]] = {
    "node": (
        ("", 0),  # node's own top-level modules: config, data dir, messages, metrics
        ("protocol/", 1),  # gossip topics and request/response handlers
        ("services/", 2),  # the long-running services built on the protocols
        ("http/", 3),  # the HTTP API over the services
        ("app.py", 4),  # starts everything in one nursery: nothing imports it
    ),
}

SKIP_DIRS = frozenset({"tests", "bench", "tools"})  # never part of the installed packages


# --- the module tree -------------------------------------------------------------------


@dataclass(frozen=True)
class Module:
    name: str  # aipg.node.http.routes
    path: str  # node/http/routes.py, relative to ROOT
    package: str  # node
    is_package: bool  # an __init__.py


@dataclass(frozen=True)
class Import:
    source: Module
    line: int
    target: Module


def find_modules(root: Path) -> tuple[dict[str, Module], set[str], list[str]]:
    """Every module of ours under ``root`` by dotted name, the names of folders without an
    ``__init__.py`` (namespace packages: nothing to import), and the problems found."""
    modules: dict[str, Module] = {}
    namespaces: set[str] = {TOP}
    problems: list[str] = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        name = folder.name
        if name in SKIP_DIRS or name.startswith((".", "_")):
            continue
        if name not in PACKAGE_RANKS and not (folder / "__init__.py").exists():
            continue
        if name not in PACKAGE_RANKS:
            problems.append(
                f"{name}/: package {TOP}.{name} has no rank; add it to PACKAGE_RANKS "
                f"in tools/check_layers.py"
            )
            continue
        for path in sorted(folder.rglob("*.py")):
            rel = path.relative_to(root)
            if any(part.startswith((".", "__pycache__")) for part in rel.parts[:-1]):
                continue
            parts = [TOP, *rel.parts[:-1]]
            is_package = path.name == "__init__.py"
            if not is_package:
                parts.append(path.stem)
            dotted = ".".join(parts)
            modules[dotted] = Module(dotted, rel.as_posix(), name, is_package)
            for i in range(2, len(parts)):
                namespaces.add(".".join(parts[:i]))
    namespaces.difference_update(modules)
    return modules, namespaces, problems


def read_imports(
    root: Path, module: Module, modules: dict[str, Module], namespaces: set[str]
) -> tuple[list[Import], list[str]]:
    """The imports of ours in ``module``, each resolved to a module, and the problems."""
    try:
        tree = ast.parse((root / module.path).read_bytes(), filename=module.path)
    except (SyntaxError, ValueError) as e:
        return [], [f"{module.path}: cannot parse: {e}"]
    found: list[Import] = []
    problems: list[str] = []

    def resolve(dotted: str, line: int, statement: str) -> None:
        target = modules.get(dotted)
        if target is not None:
            found.append(Import(module, line, target))
        elif dotted not in namespaces:
            problems.append(f"{module.path}:{line}: `{statement}`: no module {dotted} in the tree")

    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if is_ours(alias.name):
                    resolve(alias.name, node.lineno, f"import {alias.name}")
        elif isinstance(node, ast.ImportFrom):
            statement = "from " + "." * node.level + (node.module or "") + " import ..."
            base = absolute_name(module, node.level, node.module)
            if base is None:
                problems.append(
                    f"{module.path}:{node.lineno}: `{statement}` climbs above the {TOP} package"
                )
                continue
            if not is_ours(base):
                continue
            for alias in node.names:
                submodule = f"{base}.{alias.name}"
                if alias.name != "*" and (submodule in modules or submodule in namespaces):
                    resolve(submodule, node.lineno, statement)  # `from . import y`
                else:
                    resolve(base, node.lineno, statement)  # `from .y import z`
    return found, problems


def is_ours(dotted: str) -> bool:
    return dotted == TOP or dotted.startswith(TOP + ".")


def absolute_name(module: Module, level: int, name: str | None) -> str | None:
    """The absolute module an ``ImportFrom`` names, or None when it climbs above the top."""
    if level == 0:
        return name
    package = module.name.split(".") if module.is_package else module.name.split(".")[:-1]
    if level - 1 >= len(package):
        return None
    base = package[: len(package) - (level - 1)]
    return ".".join([*base, name] if name else base)


# --- the checks ------------------------------------------------------------------------


def layer_violation(imp: Import) -> str | None:
    """Why ``imp`` breaks the package ranks or a package's sub-layers, or None."""
    src, dst = imp.source.package, imp.target.package
    where = f"{imp.source.path}:{imp.line}: {src}"
    if src == dst:
        return sublayer_violation(imp)
    if (src, dst) in FORBIDDEN:
        return f"{where} imports {imp.target.name}: {FORBIDDEN[src, dst]}"
    src_rank, dst_rank = PACKAGE_RANKS[src], PACKAGE_RANKS[dst]
    if dst_rank == src_rank:
        return (
            f"{where} (rank {src_rank}) imports {imp.target.name} ({dst}, rank {dst_rank}): "
            f"{src} and {dst} are siblings and must not import each other"
        )
    if dst_rank > src_rank:
        return (
            f"{where} (rank {src_rank}) imports {imp.target.name} ({dst}, rank {dst_rank}): "
            f"imports only point to a lower rank"
        )
    return None


def sublayer_violation(imp: Import) -> str | None:
    table = SUBLAYERS.get(imp.source.package)
    if table is None:
        return None
    src_prefix, src_rank = sublayer(table, imp.source)
    dst_prefix, dst_rank = sublayer(table, imp.target)
    if dst_rank <= src_rank:
        return None
    pkg = imp.source.package
    return (
        f"{imp.source.path}:{imp.line}: sub-layer {pkg}/{src_prefix} ({src_rank}) imports "
        f"{imp.target.name} (sub-layer {pkg}/{dst_prefix}, {dst_rank}): a module imports "
        f"only its own sub-layer or lower ones"
    )


def sublayer(table: tuple[tuple[str, int], ...], module: Module) -> tuple[str, int]:
    inside = module.path.split("/", 1)[1]  # the path inside the package folder
    matches = [(prefix, rank) for prefix, rank in table if inside.startswith(prefix)]
    if not matches:
        return "(none)", 0
    return max(matches, key=lambda match: len(match[0]))


def cycles(imports: list[Import]) -> list[str]:
    """One line per strongly connected component of more than one file: its files in
    order, and one cycle through the first of them with the line of each import."""
    edges: dict[str, dict[str, int]] = {}
    for imp in imports:
        edges.setdefault(imp.source.path, {}).setdefault(imp.target.path, imp.line)
    lines = []
    for component in strongly_connected(edges):
        if len(component) < 2:
            continue
        files = sorted(component)
        path = shortest_cycle(files[0], edges, set(component))
        example = " -> ".join(f"{src}:{edges[src][dst]}" for src, dst in path) + f" -> {files[0]}"
        lines.append(f"cycle among {len(files)} modules: {', '.join(files)} (e.g. {example})")
    return sorted(lines)


def strongly_connected(edges: dict[str, dict[str, int]]) -> list[list[str]]:
    """Tarjan's algorithm, iterative (no recursion limit on long import chains)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    components: list[list[str]] = []
    nodes = sorted(set(edges) | {dst for targets in edges.values() for dst in targets})
    for start in nodes:
        if start in index:
            continue
        work = [(start, iter(sorted(edges.get(start, {}))))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is None:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    component = []
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        component.append(member)
                        if member == node:
                            break
                    components.append(component)
            elif child not in index:
                index[child] = low[child] = len(index)
                stack.append(child)
                on_stack.add(child)
                work.append((child, iter(sorted(edges.get(child, {})))))
            elif child in on_stack:
                low[node] = min(low[node], index[child])
    return components


def shortest_cycle(
    start: str, edges: dict[str, dict[str, int]], component: set[str]
) -> list[tuple[str, str]]:
    """The edges of a shortest cycle from ``start`` back to it inside ``component``."""
    came_from: dict[str, str] = {}
    queue = deque([start])
    while queue:
        node = queue.popleft()
        for child in sorted(edges.get(node, {})):
            if child not in component:
                continue
            if child == start:
                path = [(node, start)]
                while node != start:
                    path.append((came_from[node], node))
                    node = came_from[node]
                return path[::-1]
            if child not in came_from:
                came_from[child] = node
                queue.append(child)
    raise AssertionError(f"{start} is in a strongly connected component but on no cycle")


def check(root: Path) -> tuple[list[str], str]:
    """The violations under ``root`` (one line each) and a one-line summary."""
    modules, namespaces, problems = find_modules(root)
    imports: list[Import] = []
    for module in modules.values():
        found, unresolved = read_imports(root, module, modules, namespaces)
        imports.extend(found)
        problems.extend(unresolved)
    layered = [v for v in map(layer_violation, imports) if v is not None]
    violations = sorted(problems) + sorted(set(layered)) + cycles(imports)
    packages = len({m.package for m in modules.values()})
    summary = (
        f"check_layers: {len(modules)} modules in {packages} packages, {len(imports)} imports "
        f"of ours: no upward imports, no cycles"
    )
    return violations, summary


def main(argv: list[str]) -> int:
    if len(argv) > 2:
        print("usage: python tools/check_layers.py [ROOT]", file=sys.stderr)
        return 2
    root = Path(argv[1]) if len(argv) == 2 else Path(__file__).resolve().parent.parent
    if not root.is_dir():
        print(f"check_layers: {root} is not a folder", file=sys.stderr)
        return 2
    violations, summary = check(root)
    for line in violations:
        print(line)
    if violations:
        print(f"check_layers: {len(violations)} violations", file=sys.stderr)
        return 1
    print(summary)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
