"""Who may import whom: nothing under client/ imports the daemon; oracd_protocol is stdlib-only; the daemon
has no import cycles.

The code is parsed with ``ast``, never imported, so an import hidden in a function,
a ``try`` or an ``importlib.import_module("...")`` call counts too.
"""
from __future__ import annotations

import ast
import sys
from pathlib import Path
from typing import Dict, Iterator, List, Set, Tuple

import pytest

REPO = Path(__file__).resolve().parents[2]
CLIENT = REPO / "client"
PROTOCOL = CLIENT / "oracd_protocol"


def imported_modules(source: str, filename: str = "<source>") -> Iterator[Tuple[int, str, int]]:
    """(line, absolute module name, relative level) for every import in ``source``."""
    for node in ast.walk(ast.parse(source, filename)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name, 0
        elif isinstance(node, ast.ImportFrom):
            yield node.lineno, node.module or "", node.level
        elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant) \
                and isinstance(node.args[0].value, str):
            f = node.func
            name = f.attr if isinstance(f, ast.Attribute) else getattr(f, "id", "")
            if name in ("import_module", "__import__"):
                yield node.lineno, node.args[0].value, 0


def top(module: str) -> str:
    return module.split(".", 1)[0]


def daemon_imports(source: str, filename: str = "<source>") -> List[str]:
    return [f"{filename}:{line}: {mod}" for line, mod, level in imported_modules(source, filename)
            if level == 0 and top(mod) == "oracd"]


def non_stdlib_imports(source: str, filename: str = "<source>") -> List[str]:
    return [f"{filename}:{line}: {mod}" for line, mod, level in imported_modules(source, filename)
            if level == 0 and top(mod) not in sys.stdlib_module_names and top(mod) != "oracd_protocol"]


def python_files(root: Path) -> List[Path]:
    return sorted(p for p in root.rglob("*.py") if "__pycache__" not in p.parts)


def test_the_checks_can_fail():
    """Guards against a toothless check: the same functions flag what they must, and only that."""
    bad = ("import oracd\nimport oracd.errors as e\nfrom oracd.profiles import X\n"
           "def f():\n    from oracd import eval\n    importlib.import_module('oracd.rpc')\n")
    assert len(daemon_imports(bad)) == 5
    fine = "import oracd_client\nfrom oracd_protocol import errors\nfrom . import oracd\nimport oracdx\n"
    assert daemon_imports(fine) == []
    assert non_stdlib_imports("import json\nfrom collections import deque\nfrom .errors import X\n"
                               "from oracd_protocol.names import Y\nfrom __future__ import annotations\n") == []
    assert len(non_stdlib_imports("import pydantic\nfrom anyio import run\nimport oracd_client\n")) == 3


def test_nothing_under_client_imports_the_daemon():
    files = python_files(CLIENT)
    names = {p.relative_to(CLIENT).as_posix() for p in files}
    assert {"oracd_client/cli/eval.py", "oracd_client/compat/legacy.py", "oracd_protocol/blocking.py",
            "orac/llama_cpp_client.py"} <= names, names      # it really looks at the client
    bad = [hit for p in files for hit in daemon_imports(p.read_text(encoding="utf-8"), str(p.relative_to(REPO)))]
    assert not bad, "client code imports the daemon package:\n" + "\n".join(bad)


def test_oracd_protocol_imports_only_the_standard_library():
    files = python_files(PROTOCOL)
    assert len(files) >= 6, files
    bad = [hit for p in files for hit in non_stdlib_imports(p.read_text(encoding="utf-8"), str(p.relative_to(REPO)))]
    assert not bad, "oracd_protocol must stay stdlib-only:\n" + "\n".join(bad)


# ---------------------------------------------------------------------- inside the daemon
PURE = ["states", "swap_queue", "backoff", "hang", "wedge", "failures", "exits"]


def resolved_imports(path: Path) -> List[str]:
    """Absolute module names a daemon module imports (relative imports resolved)."""
    package = ".".join(path.relative_to(REPO).with_suffix("").parts[:-1])
    out = []
    for _, mod, level in imported_modules(path.read_text(), str(path)):
        if level:
            base = package.split(".")[: len(package.split(".")) - (level - 1)]
            mod = ".".join(base + ([mod] if mod else []))
        out.append(mod)
    return out


@pytest.mark.parametrize("name", PURE)
def test_the_supervisors_decisions_are_pure_leaves(name):
    """The pure decisions import only the standard library: unit-tested in milliseconds, no I/O in them."""
    path = REPO / "oracd" / "child" / f"{name}.py"
    bad = [m for m in resolved_imports(path) if top(m) not in sys.stdlib_module_names]
    assert not bad, bad


def test_config_imports_nothing_of_the_daemon_but_itself_and_pure_checks():
    allowed = {"oracd.config", "oracd.workers.hello", "oracd.safe_read"}   # safe_read: a leaf (below)
    assert not [m for m in resolved_imports(REPO / "oracd" / "safe_read.py") if top(m) == "oracd"]
    for path in (REPO / "oracd" / "config").glob("*.py"):
        bad = [m for m in resolved_imports(path) if top(m) == "oracd"
               and not any(m == a or m.startswith(a + ".") for a in allowed)]
        assert not bad, (path.name, bad)


# ---------------------------------------------------------------------- no import cycles
def daemon_modules() -> Dict[str, Path]:
    """Every module of the daemon package by its dotted name (a package by its own name)."""
    out = {}
    for p in python_files(REPO / "oracd"):
        parts = p.relative_to(REPO).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = p
    return out


def module_graph(sources: Dict[str, Tuple[str, bool]]) -> Dict[str, Set[str]]:
    """name -> the known modules it imports, from (source, is_package) per module.  Every import counts:
    at the top, inside a function, under ``if TYPE_CHECKING:`` (a cycle for the type checker is one for
    the reader too).  ``from pkg import name`` is an edge to ``pkg.name`` when that is a module."""
    graph: Dict[str, Set[str]] = {}
    for name, (source, is_package) in sources.items():
        package = name if is_package else name.rpartition(".")[0]
        edges: Set[str] = set()
        for node in ast.walk(ast.parse(source, name)):
            if isinstance(node, ast.Import):
                edges.update(a.name for a in node.names if a.name in sources)
            elif isinstance(node, ast.ImportFrom):
                mod = node.module or ""
                if node.level:
                    base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                    mod = ".".join(base + ([mod] if mod else []))
                for alias in node.names:
                    sub = f"{mod}.{alias.name}"
                    if sub in sources:
                        edges.add(sub)
                    elif mod in sources:
                        edges.add(mod)
        edges.discard(name)
        graph[name] = edges
    return graph


def cycles(graph: Dict[str, Set[str]]) -> List[List[str]]:
    """The strongly connected components with more than one module (Tarjan, iterative), each sorted."""
    index: Dict[str, int] = {}
    low: Dict[str, int] = {}
    stack: List[str] = []
    on_stack: Set[str] = set()
    found: List[List[str]] = []
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    m = stack.pop()
                    on_stack.discard(m)
                    component.append(m)
                    if m == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def test_the_cycle_check_can_fail():
    """A cycle through a TYPE_CHECKING import, a relative import and a function-level import are all found."""
    sources = {
        "p": ("", True),
        "p.a": ("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .b import B\n", False),
        "p.b": ("from . import c\n", False),
        "p.c": ("def f():\n    import p.a\n", False),
        "p.d": ("from p import a\nfrom .a import x\n", False),
    }
    graph = module_graph(sources)
    assert graph["p.d"] == {"p.a"} and graph["p.b"] == {"p.c"}
    assert cycles(graph) == [["p.a", "p.b", "p.c"]]
    sources["p.c"] = ("import json\n", False)
    assert cycles(module_graph(sources)) == []


def test_the_daemon_has_no_import_cycles():
    """Each module can be read (and tested) bottom-up: none needs, even for its type hints, one that needs it."""
    modules = daemon_modules()
    assert {"oracd.serve", "oracd.child.supervisor", "oracd.api.methods", "oracd.metrics"} <= set(modules)
    graph = module_graph({name: (p.read_text(encoding="utf-8"), p.name == "__init__.py")
                          for name, p in modules.items()})
    found = cycles(graph)
    assert not found, "import cycles in oracd/:\n" + "\n".join(" <-> ".join(c) for c in found)
