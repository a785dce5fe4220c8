"""The tree reads as the architecture (DESIGN.md section 2): what lives at the top, and who may import what."""

import ast
from pathlib import Path

import fastgauss

PACKAGE = Path(fastgauss.__file__).parent
TOP_LEVEL_MODULES = {"__init__.py", "__main__.py", "reference.py"}


def _modules():
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE)
        if rel.parts[0] != "kernels":  # installed from kernels/, checked by the compile gate
            yield rel, path


def _subpackage(parts: list[str]) -> tuple[str, ...]:
    """The subpackage a dotted path (under fastgauss) belongs to: ops/<family> count apart."""
    return tuple(parts[:2]) if parts[:1] == ["ops"] else tuple(parts[:1])


def test_no_top_level_module_but_init_main_and_reference():
    top = {p.name for p in PACKAGE.glob("*.py")}
    assert top == TOP_LEVEL_MODULES, f"move {sorted(top - TOP_LEVEL_MODULES)} into a subpackage"


def test_no_module_imports_a_private_name_from_another_subpackage():
    found = []
    for rel, path in _modules():
        parts = list(rel.with_suffix("").parts)
        package = parts[:-1] if parts[-1] != "__init__" else parts[:-1]
        mine = _subpackage(parts if parts[-1] != "__init__" else parts[:-1])
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.ImportFrom) or not node.level:
                continue
            base = package[: len(package) - (node.level - 1)] if node.level > 1 else package
            target = base + (node.module.split(".") if node.module else [])
            if not target or target[0] == "kernels" or _subpackage(target) == mine:
                continue
            private = [c for c in target if c.startswith("_") and c != "_core"]
            private += [a.name for a in node.names if a.name.startswith("_")]
            if private:
                found.append(f"{rel}:{node.lineno} imports {', '.join(private)} from {'.'.join(target)}")
    assert not found, "\n".join(found)


def test_tests_and_benchmarks_mirror_each_op_family():
    repo = PACKAGE.parent
    missing = []
    for family in sorted(p.name for p in (PACKAGE / "ops").iterdir() if (p / "__init__.py").exists()):
        for path in (repo / "kernels" / f"{family}.py", repo / "tests" / "ops" / f"test_{family}.py",
                     repo / "benchmarks" / family / f"bench_{family}.py",
                     repo / "benchmarks" / family / f"gpu_check_{family}.py"):
            if not path.exists():
                missing.append(str(path.relative_to(repo)))
    assert not missing, f"an op family without its mirror: {missing}"
    loose = sorted(p.name for p in (repo / "benchmarks").glob("bench_*.py"))
    assert not loose, f"move {loose} into benchmarks/<family>/"
