"""Layers one way: alignlab's modules import each other without cycles and only downwards through declared layers.

Every module under src/alignlab is parsed (no import runs), with the imports inside functions too: an import put
in a function to dodge a cycle at load time is still a cycle in the design. Importing `alignlab.x.y` runs the
package `alignlab.x` first, so it counts as importing `alignlab.x` too, except for the importer's own packages
(already running when it loads)."""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

from conftest import REPO

SRC = REPO / "src"

# Lowest first; a module may import its own layer and the ones below it. A package name covers its modules.
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    (
        "base",
        (
            "alignlab",
            "alignlab.errors",
            "alignlab.artifacts",
            "alignlab.safe_load",
            "alignlab.run_state",
            "alignlab.console",
            "alignlab.devices",
            "alignlab.generation",
            "alignlab.steering",
            "alignlab.preemption",
            "alignlab.distributed",
            "alignlab.tracking",
        ),
    ),
    ("config", ("alignlab.config",)),
    ("data", ("alignlab.data",)),
    ("models", ("alignlab.models",)),
    ("evaluation", ("alignlab.evaluation",)),
    ("training", ("alignlab.training",)),
    ("rl", ("alignlab.rl",)),
    ("stages", ("alignlab.stages",)),
    ("launch", ("alignlab.launch",)),  # starts ranks; knows nothing of the pipeline
    ("pipeline", ("alignlab.pipeline",)),
    (
        "commands",
        (
            "alignlab.rank",
            "alignlab.eval_command",
            "alignlab.sweep",
            "alignlab.slurm",
            "alignlab.report",
            "alignlab.rejudge",
        ),
    ),
    ("cli", ("alignlab.cli", "alignlab.__main__")),
]
STAGE_REGISTRY = "alignlab.stages"  # the only module that imports a stage entry point (tests may too)


@dataclass(frozen=True)
class Import:
    source: str  # the importing module
    target: str  # an alignlab module it makes Python load
    where: str  # file:line of the import statement

    def __str__(self) -> str:
        return f"{self.where}: {self.source} imports {self.target}"


def modules(src: Path = SRC) -> dict[str, Path]:
    """Module name -> file. A package (`x/__init__.py`) shadows a module file `x.py` beside it, as in Python."""
    found = {}
    for path in sorted((src / "alignlab").rglob("*.py")):
        parts = path.relative_to(src).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        elif (path.with_suffix("") / "__init__.py").is_file():
            continue
        found[".".join(parts)] = path
    return found


def imports(src: Path = SRC) -> list[Import]:
    """Every alignlab module each module loads, with the statement's file and line."""
    mods = modules(src)
    out = []
    for name, path in mods.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        own = {".".join(name.split(".")[:i]) for i in range(1, name.count(".") + 2)}  # itself and its packages
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            for target in _targets(node, package, mods):
                for loaded in _with_packages(target):
                    if loaded in mods and loaded not in own:
                        out.append(Import(name, loaded, f"{path.relative_to(src.parent)}:{node.lineno}"))
    return list(dict.fromkeys(out))  # `from x import a, b` is one import of x


def _targets(node: ast.AST, package: str, mods: dict[str, Path]) -> list[str]:
    if isinstance(node, ast.Import):
        return [a.name for a in node.names if a.name.split(".")[0] == "alignlab"]
    if not isinstance(node, ast.ImportFrom):
        return []
    base = node.module or ""
    if node.level:  # relative: from the importer's package, one level up per extra dot
        up = package.split(".")[: len(package.split(".")) - node.level + 1]
        base = ".".join(up + ([node.module] if node.module else []))
    if base.split(".")[0] != "alignlab":
        return []
    return [f"{base}.{a.name}" if f"{base}.{a.name}" in mods else base for a in node.names]


def _with_packages(target: str) -> list[str]:
    parts = target.split(".")
    return [".".join(parts[:i]) for i in range(2, len(parts) + 1)]


def layer_of(module: str) -> int | None:
    """The index in LAYERS of the entry naming the module or a package of it (the root `alignlab` only itself)."""
    for i, (_, names) in enumerate(LAYERS):
        if any(module == n or (n != "alignlab" and module.startswith(n + ".")) for n in names):
            return i
    return None


def cycles(edges: list[Import]) -> list[tuple[list[Import], set[str]]]:
    """Each strongly connected component of the import graph (Tarjan), with one cycle through it (the shortest from
    its first module)."""
    graph: dict[str, dict[str, Import]] = {}
    for e in edges:
        graph.setdefault(e.source, {}).setdefault(e.target, e)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    components: list[set[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph.get(v, {}):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = set()
            while True:
                w = stack.pop()
                component.add(w)
                if w == v:
                    break
            components.append(component)

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return [(_cycle_in(sorted(c)[0], c, graph), c) for c in components if len(c) > 1]


def _cycle_in(start: str, component: set[str], graph: dict[str, dict[str, Import]]) -> list[Import]:
    """The shortest path of imports from `start` back to itself inside its component (breadth first)."""
    paths: dict[str, list[Import]] = {start: []}
    queue = [start]
    while queue:
        v = queue.pop(0)
        for w, e in sorted(graph.get(v, {}).items()):
            if w == start:
                return paths[v] + [e]
            if w in component and w not in paths:
                paths[w] = paths[v] + [e]
                queue.append(w)
    raise AssertionError(f"no cycle through {start}")


def layer_violations(edges: list[Import]) -> list[str]:
    problems = []
    for e in edges:
        low, high = layer_of(e.source), layer_of(e.target)
        if low is None or high is None:
            continue  # reported by test_every_module_has_a_layer
        if high > low:
            problems.append(f"{e} (layer '{LAYERS[low][0]}' imports the higher layer '{LAYERS[high][0]}')")
    return problems


def stage_imports(edges: list[Import]) -> list[str]:
    return [
        f"{e} (a stage entry point; only {STAGE_REGISTRY} imports it)"
        for e in edges
        if e.target.startswith(STAGE_REGISTRY + ".") and e.source != STAGE_REGISTRY
    ]


def describe(cycle: list[Import], component: set[str]) -> str:
    modules_in = ", ".join(sorted(component))
    return f"modules importing each other: {modules_in}\n  for one:\n    " + "\n    -> ".join(map(str, cycle))


def test_no_import_cycles():
    found = cycles(imports())
    assert not found, "import cycles:\n" + "\n".join(describe(c, members) for c, members in found)


def test_every_module_has_a_layer():
    missing = sorted(m for m in modules() if layer_of(m) is None)
    assert not missing, f"modules in no layer of LAYERS (declare them): {missing}"


def test_layers_import_only_downwards():
    problems = layer_violations(imports())
    assert not problems, "imports of a higher layer:\n" + "\n".join("  " + p for p in problems)


def test_stage_entry_points_are_imported_only_by_the_registry():
    problems = stage_imports(imports())
    assert not problems, "\n".join(problems)


def test_the_check_sees_imports_inside_functions_and_package_inits(tmp_path):
    """A cycle hidden in a function, and one through a package's __init__, are both found, named by file:line."""
    src = tmp_path / "src"
    pkg = src / "alignlab"
    (pkg / "data").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "errors.py").write_text("")
    (pkg / "data" / "__init__.py").write_text("def load():\n    from alignlab.config import SourceConfig\n")
    (pkg / "data" / "bias.py").write_text("KINDS = ()\n")
    (pkg / "config.py").write_text("from alignlab.data.bias import KINDS\n")
    found = cycles(imports(src))
    assert len(found) == 1 and found[0][1] == {"alignlab.config", "alignlab.data"}
    assert {str(e) for e in found[0][0]} == {
        "src/alignlab/config.py:1: alignlab.config imports alignlab.data",
        "src/alignlab/data/__init__.py:2: alignlab.data imports alignlab.config",
    }
    higher = "(layer 'config' imports the higher layer 'data')"
    assert layer_violations(imports(src)) == [
        f"src/alignlab/config.py:1: alignlab.config imports alignlab.data {higher}",
        f"src/alignlab/config.py:1: alignlab.config imports alignlab.data.bias {higher}",
    ]
