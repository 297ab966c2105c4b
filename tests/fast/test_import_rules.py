"""The layout's rules, read from the imports: the library (dbpromote/) never imports the flows, the tasks or the
deployments that are built on it, and the benchmarks import no tests.

The library still reaches into them in the places listed in STILL_TO_MOVE (issue 31: each step's logic moves into
the library, its task a thin wrapper): a new import of that kind fails here, and so does a listed one that is gone
(take it off the list)."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
BUILT_ON_THE_LIBRARY = ("dbpromote.tasks", "dbpromote.flows", "dbpromote.deployments")
STILL_TO_MOVE = {
    ("dbpromote/cli/promotion.py", "dbpromote.deployments.deploy"),
    ("dbpromote/cli/promotion.py", "dbpromote.flows.fix"),
    ("dbpromote/cli/promotion.py", "dbpromote.flows.promote"),
    ("dbpromote/cli/schema.py", "dbpromote.flows.drift"),
    ("dbpromote/localstack/__init__.py", "dbpromote.deployments.deploy"),
    ("dbpromote/localstack/services.py", "dbpromote.deployments.deploy"),
}


def imported(path: Path) -> set[str]:
    """Every module `path` imports, at its top or inside a function."""
    modules = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            modules |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            modules.add(node.module)
    return modules


def test_the_library_imports_nothing_built_on_it_but_what_is_listed_to_move():
    found = {
        (str(path.relative_to(ROOT)), module)
        for path in sorted((ROOT / "dbpromote").rglob("*.py"))
        for module in imported(path)
        if module.startswith(BUILT_ON_THE_LIBRARY)
    }
    assert found - STILL_TO_MOVE == set(), "the library imports what is built on it"
    assert STILL_TO_MOVE - found == set(), "moved into the library: take these off STILL_TO_MOVE"


def test_the_benchmarks_import_no_tests():
    found = {
        str(path.relative_to(ROOT))
        for path in sorted((ROOT / "benchmarks").rglob("*.py"))
        if any(module == "tests" or module.startswith("tests.") for module in imported(path))
    }
    assert found == set()
