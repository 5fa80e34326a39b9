"""The import layers of ../shared/DESIGN.md, read from the source with `ast`, kept one-way.

Run `python tests/test_layers.py` to print the module graph, its layers and any violation.

Rules, checked on every module of the project's packages:
1. imports only go down the layers below (a sibling layer, e.g. heads -> models, is not "down");
2. no import cycle between modules;
3. an import inside a function only defers a heavy library (torch, ray, optuna, ...): the
   imported module must pull in, at its top level, a heavy library that the importing module
   does not already import at its top level. Anything else belongs at the top of the file.
"""
from __future__ import annotations

import ast
import graphlib
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# Bottom to top: each top-level folder is one layer, and a module's layer is its folder's. Folders of
# one rank are siblings (neither may import the other). A new folder must be placed here.
LAYERS = (
    ("common", 0),  # shared mechanics: registry, option checks, statuses, the CLI guard
    ("models", 1),  # backbones
    ("heads", 1),  # output heads and their speed layer (heads/speed/)
    ("training", 2),  # the Ray-free core: data, loader, config, optimizers, engine, one-run CLI
    ("search_spaces", 3),  # the named search spaces
    ("tuning", 4),  # the Ray Tune side: search, trials, experiment folder, console
    ("analysis", 5),  # DataFrames, retrain, reports, the study
    ("tools", 6),  # benchmarks
)
PACKAGES = tuple(name for name, _ in LAYERS)
# Nothing these layers reach, at the top of a file or inside a function, may import these:
# the core must train without Ray and Optuna installed.
RAY_FREE = ("common", "models", "heads", "training")
RAY_SIDE = {"ray", "optuna", "optuna_dashboard"}
HEAVY = {"torch", "torchvision", "timm", "ray", "optuna", "matplotlib", "pandas", "sklearn", "pyarrow", "scipy"}


@dataclass(frozen=True)
class Edge:
    src: str
    dst: str  # a project module, or a third-party top-level name
    deferred: bool  # inside a function
    line: int


def layer_of(module: str) -> tuple[str, int]:
    folder = module.split(".")[0]
    ranks = dict(LAYERS)
    if folder not in ranks:
        raise KeyError(f"module {module} is in no layer: add its folder {folder!r} to LAYERS")
    return folder, ranks[folder]


def project_modules(root: Path = ROOT) -> dict[str, Path]:
    mods = {}
    for pkg in PACKAGES:
        for path in sorted((root / pkg).rglob("*.py")) if (root / pkg).is_dir() else []:
            parts = path.relative_to(root).with_suffix("").parts
            mods[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return mods


def _deferred_nodes(tree: ast.AST) -> set[int]:
    """ids of import nodes that sit inside a function body."""
    inner = set()
    for fn in ast.walk(tree):
        if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            inner |= {id(n) for n in ast.walk(fn) if isinstance(n, (ast.Import, ast.ImportFrom))}
    return inner


def _resolve(name: str, modules: dict) -> str:
    """A dotted name -> the project module it denotes, or the third-party top-level name."""
    while name not in modules and "." in name:
        name = name.rsplit(".", 1)[0]
    return name


def module_edges(modules: dict[str, Path]) -> list[Edge]:
    edges = []
    for mod, path in modules.items():
        tree = ast.parse(path.read_text(), str(path))
        deferred = _deferred_nodes(tree)
        package = mod if path.name == "__init__.py" else mod.rpartition(".")[0]
        for node in ast.walk(tree):
            targets = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:  # relative import
                    anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(anchor + ([base] if base else []))
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
            for t in targets:
                dst = _resolve(t, modules)
                if dst != mod and dst.split(".")[0] != "__future__":
                    edges.append(Edge(mod, dst, id(node) in deferred, node.lineno))
        edges += _dynamic_imports(mod, tree, modules)
    return list(dict.fromkeys(edges))  # `from x import a, b` is one edge


def _dynamic_imports(package: str, tree: ast.AST, modules: dict) -> list[Edge]:
    """`import_submodules(__name__, skip=(...))` in a package imports its public submodules."""
    edges = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and getattr(node.func, "id", getattr(node.func, "attr", "")) == \
                "import_submodules":
            skip = next((ast.literal_eval(k.value) for k in node.keywords if k.arg == "skip"), ())
            for m in modules:
                sub = m[len(package) + 1:]
                if m.startswith(package + ".") and "." not in sub and not sub.startswith("_") and sub not in skip:
                    edges.append(Edge(package, m, False, node.lineno))
    return edges


def heavy_at_top(modules: dict, edges: list[Edge]) -> dict[str, set[str]]:
    """For each project module, the heavy libraries it loads through top-level imports (transitively)."""
    top = {m: {e.dst for e in edges if e.src == m and not e.deferred} for m in modules}
    # Importing a.b runs a/__init__ first: its imports count too.
    for m in modules:
        parts = m.split(".")
        top[m] |= {".".join(parts[:i]) for i in range(1, len(parts)) if ".".join(parts[:i]) in modules}
    memo: dict[str, set[str]] = {}

    def visit(m: str, stack: frozenset) -> set[str]:
        if m not in modules:
            return {m.split(".")[0]} & HEAVY
        if m in memo:
            return memo[m]
        found = set()
        for d in top[m]:
            if d not in stack:
                found |= visit(d, stack | {d})
        memo[m] = found
        return found

    return {m: visit(m, frozenset({m})) for m in modules}


def violations(modules: dict, edges: list[Edge]) -> list[str]:
    found = []
    internal = [e for e in edges if e.dst in modules]
    for e in internal:
        (src_layer, src_rank), (dst_layer, dst_rank) = layer_of(e.src), layer_of(e.dst)
        if dst_rank > src_rank or (dst_rank == src_rank and dst_layer != src_layer):
            found.append(f"upward import: {e.src} ({src_layer}) imports {e.dst} ({dst_layer}), line {e.line}")
    graph = {m: {e.dst for e in internal if e.src == m} for m in modules}
    try:
        tuple(graphlib.TopologicalSorter(graph).static_order())
    except graphlib.CycleError as exc:
        found.append(f"import cycle: {' -> '.join(exc.args[1])}")
    found += ray_reached_from_the_core(modules, edges)
    heavy = heavy_at_top(modules, edges)
    for e in internal:
        if e.deferred and not heavy[e.dst] - heavy[e.src] - {e.dst}:
            found.append(f"function-level import defers nothing heavy: {e.src} imports {e.dst} inside a "
                         f"function, line {e.line} (move it to the top of the file)")
    return found


def ray_reached_from_the_core(modules: dict, edges: list[Edge]) -> list[str]:
    """Modules of the Ray-free layers that reach ray or optuna through any chain of imports."""
    graph: dict[str, set[str]] = {}
    for e in edges:
        graph.setdefault(e.src, set()).add(e.dst)
    found = []
    for start in sorted(m for m in modules if m.split(".")[0] in RAY_FREE):
        seen, todo = {start}, [start]
        while todo:
            for d in graph.get(todo.pop(), ()):
                if d not in seen and (d in modules or d.split(".")[0] in RAY_SIDE):
                    seen.add(d)
                    todo.append(d)
        if reached := sorted(d for d in seen if d.split(".")[0] in RAY_SIDE):
            found.append(f"the Ray-free {start} reaches {', '.join(reached)}")
    return found


def describe(modules: dict, edges: list[Edge]) -> str:
    lines = []
    for name, rank in sorted(LAYERS, key=lambda x: x[1]):
        lines.append(f"[{rank}] {name}")
        for m in sorted(x for x in modules if layer_of(x)[0] == name):
            deps = sorted({e.dst + ("*" if e.deferred else "") for e in edges if e.src == m and e.dst in modules})
            lines.append(f"    {m:28s} -> {', '.join(deps) or '-'}")
    internal = [e for e in edges if e.dst in modules]
    lines.append(f"(* = imported inside a function) {len(modules)} modules, {len(internal)} project imports, "
                 f"{sum(e.deferred for e in internal)} of them inside functions; "
                 f"{sum(e.deferred for e in edges if e.dst not in modules)} third-party imports inside functions")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- the tests
def test_the_project_imports_only_go_down():
    modules = project_modules()
    edges = module_edges(modules)
    print(describe(modules, edges))
    assert not violations(modules, edges), "\n".join(violations(modules, edges))


def test_the_readme_layout_names_every_module():
    """Its table says the same as the folders: each public module, by path or in its folder's row."""
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("## Layout"):readme.index("\n## ", readme.index("## Layout") + 1)]
    rows = {line.split("|")[1].strip(" `"): line for line in section.splitlines() if line.startswith("| `")}
    missing = []
    for module, path in project_modules().items():
        folder, name = path.parent.relative_to(ROOT).as_posix(), path.name
        if name.startswith("_"):
            continue
        if f"{folder}/{name}" not in section and name not in rows.get(f"{folder}/", ""):
            missing.append(f"{folder}/{name}")
    assert not missing, f"the README's layout table misses {missing}"


def test_every_module_has_a_layer():
    for m in project_modules():
        layer_of(m)


def _graph(tmp_path: Path, files: dict[str, str]) -> dict[str, Path]:
    for rel, text in files.items():
        path = tmp_path / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return project_modules(tmp_path)


def test_a_planted_upward_import_is_caught(tmp_path):
    modules = _graph(tmp_path, {"common/__init__.py": "", "heads/__init__.py": "import common\n",
                                "training/__init__.py": "", "training/engine.py": "import heads\n",
                                "heads/bad.py": "from training.engine import x\n"})
    found = violations(modules, module_edges(modules))
    assert "upward import: heads.bad (heads) imports training.engine (training), line 1" in found


def test_a_sibling_import_and_a_cycle_are_caught(tmp_path):
    modules = _graph(tmp_path, {"models/__init__.py": "from models import a\n", "models/a.py": "import heads\n",
                                "heads/__init__.py": "", "common/__init__.py": "from common import b\n",
                                "common/b.py": "import common\n"})
    found = violations(modules, module_edges(modules))
    assert any(f.startswith("upward import: models.a (models) imports heads (heads)") for f in found)
    assert any(f.startswith("import cycle: common") and "common.b" in f for f in found)


def test_the_core_may_not_reach_ray_even_through_a_deferred_import(tmp_path):
    modules = _graph(tmp_path, {"common/__init__.py": "", "common/tune.py": "import ray.tune\n",
                                "training/__init__.py": "", "training/engine.py": "def f():\n    import optuna\n",
                                "training/train.py": "def g():\n    from common import tune\n",
                                "tuning/__init__.py": "import ray\n"})
    found = ray_reached_from_the_core(modules, module_edges(modules))
    assert found == ["the Ray-free common.tune reaches ray", "the Ray-free training.engine reaches optuna",
                     "the Ray-free training.train reaches ray"]


def test_a_module_outside_the_layer_folders_is_named(tmp_path):
    with pytest.raises(KeyError, match="module scripts.x is in no layer: add its folder 'scripts' to LAYERS"):
        layer_of("scripts.x")


def test_a_function_level_import_must_defer_something_heavy(tmp_path):
    modules = _graph(tmp_path, {"common/__init__.py": "", "common/light.py": "import json\n",
                                "common/heavy.py": "import torch\n",
                                "tuning/__init__.py": "",
                                "tuning/a.py": "def f():\n    from common import light\n"
                                               "    from common import heavy\n"})
    found = violations(modules, module_edges(modules))
    assert found == ["function-level import defers nothing heavy: tuning.a imports common.light inside a "
                     "function, line 2 (move it to the top of the file)"]


if __name__ == "__main__":
    mods = project_modules()
    es = module_edges(mods)
    print(describe(mods, es))
    bad = violations(mods, es)
    print(f"\n{len(bad)} violation(s)" + "".join(f"\n  {b}" for b in bad))
    sys.exit(1 if bad else 0)
