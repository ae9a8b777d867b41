"""The house's rules, checked on the source: imports run one way (DESIGN.md §1), and every command leaves stats."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "cotforge"

# Stage order: a module may import only from its own rank or lower. Data moves forward, never back.
RANK = {
    "__init__": 0, "types": 0, "stats": 0, "resources": 0, "config": 0,
    "sources": 1, "media": 2, "teacher": 3, "dc": 4, "validate": 5, "metrics": 5, "store": 6, "report": 7,
    "steps": 8, "executors": 9, "review": 10, "train": 10, "sim": 10, "demo": 10, "cli": 11,
}
# Tools and drivers nobody may import but the command line (and, for sim and demo, themselves).
ONLY_FROM_CLI = {"cli", "executors", "sim", "demo"}


def top(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def imports(package: Path = PACKAGE) -> list[tuple[Path, int, str, str]]:
    """(file, line, importer's top package, imported cotforge module) for every import, at any depth."""
    found = []
    for path in sorted(package.rglob("*.py")):
        rel = path.relative_to(package.parent).with_suffix("")
        module = ".".join(rel.parts).removesuffix(".__init__")
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module]
            elif isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            for name in names:
                if name == "cotforge" or name.startswith("cotforge."):
                    found.append((path, node.lineno, top(module), name))
    return found


def test_every_package_has_a_rank() -> None:
    packages = {p.name for p in PACKAGE.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    modules = {p.stem for p in PACKAGE.glob("*.py")}
    assert packages | modules <= set(RANK), sorted((packages | modules) - set(RANK))


def violations(package: Path = PACKAGE) -> list[str]:
    found = []
    for path, line, importer, name in imports(package):
        imported = top(name)
        if imported == importer:
            continue
        if RANK[imported] > RANK[importer]:
            found.append(f"{path.name}:{line} {importer} imports later stage {name}")
        if imported in ONLY_FROM_CLI and importer != "cli":
            found.append(f"{path.name}:{line} {importer} imports {name} (only the CLI may)")
    return found


def test_imports_run_one_way() -> None:
    assert not violations(), "\n".join(violations())


def test_the_teacher_package_is_the_real_client_side_only() -> None:
    files = {p.name for p in (PACKAGE / "teacher").glob("*.py")}
    assert not {f for f in files if f.startswith("sim")}, "the simulator lives in cotforge/sim"
    assert "cache.py" not in files, "the response cache is a run-directory file: cotforge/store/cache.py"


@pytest.mark.parametrize(
    ("importer", "bad", "why"),
    [("steps/teacher.py", "cotforge.executors.local", "later stage"), ("teacher/client.py", "cotforge.store.cache", "later stage"),
     ("store/run.py", "cotforge.sim.server", "later stage"), ("report.py", "cotforge.cli.main", "later stage")],
)
def test_the_checker_catches_a_violation(importer: str, bad: str, why: str, tmp_path: Path) -> None:
    """A function-level import of a later stage, planted in a copy of the layout, is found."""
    package = tmp_path / "cotforge"
    target = package / importer
    target.parent.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    target.write_text(f"def later():\n    from {bad} import something\n")
    found = violations(package)
    assert len(found) >= 1 and why in found[0], found
