"""The map of the package (docs/design.md, "The package"; README's layout) is the code's.

Every module of ``ride_predictor/`` is on the map, in an order where each imports only modules
above it; no module of the package imports the entry points (``main.py``, ``aws/``) or the
repository's other folders; the Lambda zip carries exactly the modules its handler reaches.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import build_zip

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "ride_predictor"
# Top-level names the package must never import: the entry points and the repository's tools.
OUTSIDE = {"main", "lambda_function", "lambda_settings", "kinesis_event", "kinesis_writer"} | {
    "bench",
    "devstack",
    "monitoring",
    "schemas",
    "tests",
    "training",
}


def _design_map() -> list[str]:
    """The numbered list of docs/design.md's "The package" section, in order."""
    text = (ROOT / "docs" / "design.md").read_text()
    section = text.split("\n## The package\n", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"^\d+\. `(\w+)`", section, flags=re.MULTILINE)


def _readme_map() -> list[str]:
    """The names in the README's code block of the package's modules, in order."""
    text = (ROOT / "README.md").read_text()
    block = text.split("The package, each module importing only", 1)[1].split("```", 2)[1]
    return [line.split()[0] for line in block.splitlines() if line.strip()]


def _imports(path: Path) -> set[str]:
    """Every module ``path`` imports, anywhere in it (function-level imports too)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            if node.module == "ride_predictor":
                names |= {f"ride_predictor.{alias.name}" for alias in node.names}
    return names


def _package_imports(name: str) -> set[str]:
    return {
        module.split(".")[1]
        for module in _imports(PACKAGE / f"{name}.py")
        if module.startswith("ride_predictor.")
    }


def test_every_module_is_on_the_map_once_and_the_readme_agrees() -> None:
    modules = {path.stem for path in PACKAGE.glob("*.py")} - {"__init__"}
    mapped = _design_map()
    assert len(mapped) == len(set(mapped))
    assert set(mapped) == modules
    assert _readme_map() == mapped


def test_each_module_imports_only_modules_above_it() -> None:
    mapped = _design_map()
    for position, name in enumerate(mapped):
        below = _package_imports(name) - set(mapped[:position])
        assert below == set(), f"{name} imports {sorted(below)}, not above it on the map"


def test_the_package_imports_no_entry_point_and_no_tool_of_the_repository() -> None:
    for path in PACKAGE.glob("*.py"):
        reached = {module.split(".")[0] for module in _imports(path)} & OUTSIDE
        assert reached == set(), f"{path.name} imports {sorted(reached)}"
    assert _imports(PACKAGE / "__init__.py") == set()  # importing the package imports nothing


def test_the_lambda_zip_carries_what_its_handler_reaches_and_no_pubsub_module() -> None:
    reached: set[str] = set()
    todo = [
        module.split(".")[1]
        for path in (ROOT / "aws").glob("*.py")
        for module in _imports(path)
        if module.startswith("ride_predictor.")
    ]
    while todo:
        name = todo.pop()
        if name not in reached:
            reached.add(name)
            todo += _package_imports(name)
    assert set(build_zip.CORE_MODULES) == reached | {"__init__"}
    assert not {"envelope", "dead_letters", "publisher", "service", "telemetry"} & reached


def test_the_map_checks_read_the_imports_and_the_map() -> None:
    # The tests above must not pass by reading no imports, or no map, at all.
    assert {"errors", "loaders", "messages"} <= _package_imports("inference")
    assert "ride_predictor.loaders" in _imports(PACKAGE / "model_holder.py")  # a from-import
    assert len(_design_map()) >= 10
