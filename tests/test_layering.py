"""The layers of docs/DESIGN.md, checked on every module's imports (top level and inside
functions): common <- services, trainer <- seqkd; services and trainer never import each other."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FORBIDDEN = {"common": {"services", "trainer", "seqkd"}, "services": {"trainer", "seqkd"},
             "trainer": {"services", "seqkd"}, "seqkd": set()}


def imported_packages(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def test_no_module_imports_across_its_layer():
    broken = []
    for layer, forbidden in FORBIDDEN.items():
        modules = sorted((ROOT / layer).rglob("*.py"))
        assert modules, layer
        for path in modules:
            for bad in imported_packages(path) & forbidden:
                broken.append(f"{path.relative_to(ROOT)} imports {bad}")
    assert not broken, "\n".join(broken)


def test_the_check_sees_imports_inside_functions(tmp_path):
    probe = tmp_path / "m.py"
    probe.write_text("def f():\n    from trainer.run import train\n    import services.labeling\n")
    assert imported_packages(probe) == {"trainer", "services"}
