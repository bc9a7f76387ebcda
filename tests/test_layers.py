"""The layout is the architecture: imports point one way, and the maths stays pure.

    losses  <-  qv  <-  trainers  <-  jobs  <-  cli          (each may import those to its left, never to its right)
    data, evaluation, rewards, models, generation, files, plots, hardware, progress   beside them: below trainers, jobs
    and cli

Checked on every import statement of `src/tirl`, those inside functions included.
"""

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "tirl"
BESIDE = {"data", "evaluation", "rewards", "models", "generation", "files", "plots", "hardware", "progress"}
# what each part may import from tirl (besides itself)
ALLOWED = {
    "losses": set(),
    "qv": {"losses", "files", "progress"},
    "trainers": {"losses", "qv"} | BESIDE,
    "jobs": {"losses", "qv", "trainers"} | BESIDE,
    "cli": {"losses", "qv", "trainers", "jobs", "__init__"} | BESIDE,
    **{name: {"losses", "qv"} | BESIDE for name in BESIDE},
    "__init__": {"trainers"},
}


def part_of(module: str) -> str:
    """`tirl.trainers.base` -> "trainers"; `tirl` -> "__init__"."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def modules():
    for path in sorted(SRC.rglob("*.py")):
        rel = path.relative_to(SRC.parent).with_suffix("")
        name = ".".join(p for p in rel.parts if p != "__init__")
        yield name, path.name == "__init__.py", ast.parse(path.read_text())


def tirl_imports(module: str, is_package: bool, tree: ast.AST):
    """Every `tirl.*` module imported anywhere in `tree` (relative imports resolved)."""
    package = module if is_package else module.rsplit(".", 1)[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (a.name for a in node.names if a.name.split(".")[0] == "tirl")
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] == "tirl":
                yield from ([target] if node.module else [f"{target}.{a.name}" for a in node.names])


def test_the_tree_has_the_parts_the_rules_name():
    found = {part_of(name) for name, _, _ in modules()}
    assert found == set(ALLOWED), found ^ set(ALLOWED)


@pytest.mark.parametrize("part", sorted(ALLOWED))
def test_imports_point_one_way(part):
    wrong = []
    for name, is_package, tree in modules():
        if part_of(name) != part:
            continue
        for target in tirl_imports(name, is_package, tree):
            other = part_of(target)
            if other != part and other not in ALLOWED[part]:
                wrong.append(f"{name} imports {target}")
    assert not wrong, wrong


def test_the_maths_is_pure():
    """`tirl.losses` reads no environment, imports nothing inside a function, and nothing beyond torch (and the
    standard library's maths)."""
    for path in sorted((SRC / "losses").glob("*.py")):
        tree = ast.parse(path.read_text())
        for fn in (n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef)):
            nested = [n for n in ast.walk(fn) if isinstance(n, ast.Import | ast.ImportFrom)]
            assert not nested, f"{path.name}: {fn.name} imports inside the function"
        roots = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        roots |= {(n.module or "").split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and not n.level}
        assert roots <= {"__future__", "collections", "contextlib", "dataclasses", "math", "typing", "torch"}, \
            (path.name, roots)
        names = {n.attr for n in ast.walk(tree) if isinstance(n, ast.Attribute)}
        names |= {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)}
        assert not names & {"environ", "getenv"}, path.name
