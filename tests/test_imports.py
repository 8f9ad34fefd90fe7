"""The core never imports the orchestration libraries (architecture: "a researcher must be able to
``from hyporay.attacks import pgd`` in a notebook with nothing else running")."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CORE = ["hyporay.attacks", "hyporay.metrics", "hyporay.trainers", "hyporay.variants", "hyporay.models",
        "hyporay.data", "hyporay.audit"]
HEAVY = ("ray", "mlflow", "optuna")


def test_core_modules_import_no_ray_mlflow_or_optuna():
    """Guards the layering: importing (and using) the core in a fresh interpreter loads no ray, mlflow or optuna
    module, directly or through a dependency; read from sys.modules, so indirect imports count too."""
    code = (
        "import importlib, json, sys\n"
        f"for name in {CORE!r}:\n"
        "    importlib.import_module(name)\n"
        "import torch\n"
        "from hyporay.attacks import pgd\n"
        "from hyporay.models import build_model\n"
        "m = build_model('mlp', in_shape=(1, 8, 8), num_classes=10, mean=(0.5,), std=(0.5,))\n"
        "pgd(m, torch.rand(4, 1, 8, 8), torch.zeros(4, dtype=torch.long), eps=0.1, step_size=0.05, steps=1)\n"
        f"print(json.dumps(sorted(n for n in sys.modules if n.split('.')[0] in {HEAVY!r})))\n"
    )
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    loaded = json.loads(r.stdout.strip().splitlines()[-1])
    assert loaded == [], f"the core pulled in {loaded}"



# --- every import points down: no circle, at module level or inside a function -------------------------------

def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph(root: Path = ROOT / "hyporay") -> dict[str, set[str]]:
    """{module: the hyporay modules it imports}, read with ast from every file under ``root``: imports at module
    level, inside functions and under ``if TYPE_CHECKING`` alike. ``from pkg import name`` counts as importing the
    module ``pkg.name`` when that is a module, else ``pkg``."""
    import ast

    files = {_module_name(p): p for p in root.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for mod, path in files.items():
        is_pkg = path.name == "__init__.py"
        edges = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    pkg = mod.split(".") if is_pkg else mod.split(".")[:-1]
                    pkg = pkg[:len(pkg) - node.level + 1]
                    base = ".".join(pkg + ([base] if base else []))
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in files else base for a in node.names]
            else:
                continue
            edges |= {t for t in targets if t in files and t != mod}
        graph[mod] = edges
    return graph


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_circle_finder_finds_a_circle_through_a_function_level_import(tmp_path):
    """The check below can fail: a circle closed only by an import inside a function is found."""
    pkg = tmp_path / "hyporay"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "sub" / "a.py").write_text("from hyporay.sub import b\n")
    (pkg / "sub" / "b.py").write_text("def f():\n    from . import c\n")
    (pkg / "sub" / "c.py").write_text("import hyporay.sub.a\n")
    global ROOT
    saved, ROOT = ROOT, tmp_path
    try:
        found = circles(import_graph(pkg))
    finally:
        ROOT = saved
    assert found == [["hyporay.sub.a", "hyporay.sub.b", "hyporay.sub.c"]]


def test_no_import_circle_anywhere_in_hyporay():
    found = circles(import_graph())
    assert found == [], "import circles (each a set of modules importing each other):\n" + "\n".join(
        " <-> ".join(c) for c in found)


def test_analysis_reads_a_runs_table_not_the_engine():
    """The analysis layer is a function of the runs table (``hyporay.tracking.runs``): it never imports the engine."""
    graph = import_graph()
    bad = sorted(f"{m} imports {t}" for m, ts in graph.items() if m.startswith("hyporay.analysis")
                 for t in ts if t == "hyporay.engine" or t.startswith("hyporay.engine."))
    assert bad == []


def test_no_private_name_is_imported_across_modules():
    """``from hyporay.x import _name`` couples two modules through what one of them calls private."""
    import ast

    bad = []
    for path in (ROOT / "hyporay").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("hyporay"):
                bad += [f"{path.relative_to(ROOT)}: {node.module}.{a.name}" for a in node.names
                        if a.name.startswith("_") and not a.name.startswith("__")]
    assert bad == []
