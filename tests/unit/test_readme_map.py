"""README's "Where things are" table points at code that exists: each file, and each name in it."""
from __future__ import annotations

import ast
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def defined_names(path: Path) -> set:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
            if isinstance(node, ast.ClassDef):
                names.update(f"{node.name}.{n.name}" for n in node.body
                             if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)))
        elif isinstance(node, ast.Assign):
            names.update(t.id for t in node.targets if isinstance(t, ast.Name))
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names.add(node.target.id)
    return names


def test_every_answer_in_where_things_are_exists():
    text = (REPO / "README.md").read_text()
    table = text[text.index("## Where things are"):text.index("## Layout")]
    rows = [r for r in table.splitlines() if r.startswith("| ") and not r.startswith("| question") and "---" not in r]
    assert len(rows) >= 15
    for row in rows:
        _, files, names = [c.strip() for c in row.strip("|").split("|")]
        paths = [REPO / p for p in re.findall(r"`([^`]+\.py|[^`]+/)`", files)]
        assert paths and all(p.exists() for p in paths), row
        sources = [p for p in paths if p.is_file()] or [f for d in paths for f in d.glob("*.py")]
        known = set().union(*(defined_names(p) for p in sources))
        # `__main__.provision_tools` style: module-qualified names resolve in that module
        for name in re.findall(r"`([A-Za-z_][\w.]*)`", names):
            short = name.split(".", 1)[1] if "." in name and name.split(".")[0] in {p.stem for p in sources} else name
            assert short in known or name in known, (row, name)
