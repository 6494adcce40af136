"""The layers of docs/DESIGN.md, checked on every module's imports (top level and inside
functions): common <- services, trainer, scoring <- seqkd; services and trainer never import each
other; scoring imports only common (no Ray at all); only seqkd/console.py reaches into Ray's
private modules (its log plumbing, for which Ray has no public API)."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FORBIDDEN = {"common": {"services", "trainer", "scoring", "seqkd"},
             "services": {"trainer", "scoring", "seqkd"}, "trainer": {"services", "scoring", "seqkd"},
             "scoring": {"services", "trainer", "seqkd", "ray"}, "seqkd": set()}
PRIVATE_RAY_ALLOWED = {"seqkd/console.py"}


def imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
    return names


def imported_packages(path: Path) -> set[str]:
    return {name.split(".")[0] for name in imported_modules(path)}


def test_no_module_imports_across_its_layer():
    broken = []
    for layer, forbidden in FORBIDDEN.items():
        modules = sorted((ROOT / layer).rglob("*.py"))
        assert modules, layer
        for path in modules:
            for bad in imported_packages(path) & forbidden:
                broken.append(f"{path.relative_to(ROOT)} imports {bad}")
    assert not broken, "\n".join(broken)


def test_only_the_console_imports_rays_private_modules():
    reaching = sorted(str(path.relative_to(ROOT)) for layer in FORBIDDEN for path in (ROOT / layer).rglob("*.py")
                      if any(m == "ray._private" or m.startswith("ray._private.") for m in imported_modules(path)))
    assert reaching == sorted(PRIVATE_RAY_ALLOWED)


def test_the_check_sees_imports_inside_functions(tmp_path):
    probe = tmp_path / "m.py"
    probe.write_text("def f():\n    from trainer.run import train\n    import services.labeling\n")
    assert imported_packages(probe) == {"trainer", "services"}
