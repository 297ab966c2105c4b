"""The layout's rules, read from the code: the library (dbpromote/) never imports the flows, the tasks or the
deployments built on it; every task is a thin wrapper around the library; nothing runs a task's body past Prefect;
the benchmarks import no tests."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
BUILT_ON_THE_LIBRARY = ("dbpromote.tasks", "dbpromote.flows", "dbpromote.deployments")


def imported(path: Path) -> set[str]:
    """Every module `path` imports, at its top or inside a function."""
    modules = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            modules |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            modules.add(node.module)
    return modules


def test_the_library_imports_nothing_built_on_it():
    found = {
        (str(path.relative_to(ROOT)), module)
        for path in sorted((ROOT / "dbpromote").rglob("*.py"))
        for module in imported(path)
        if module.startswith(BUILT_ON_THE_LIBRARY)
    }
    assert found == set(), "the library imports what is built on it"


def test_the_benchmarks_import_no_tests():
    found = {
        str(path.relative_to(ROOT))
        for path in sorted((ROOT / "benchmarks").rglob("*.py"))
        if any(module == "tests" or module.startswith("tests.") for module in imported(path))
    }
    assert found == set()


# A task's body: the call into the library, and at most its report (an artifact, an event) and the return.
TASK_STATEMENTS = 3


def tasks_of(path: Path) -> list[ast.FunctionDef]:
    """The functions of a module decorated with Prefect's @task (bare or called)."""
    return [
        node
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.FunctionDef)
        and any(
            (decorator.func if isinstance(decorator, ast.Call) else decorator).id == "task"
            for decorator in node.decorator_list
            if isinstance(decorator.func if isinstance(decorator, ast.Call) else decorator, ast.Name)
        )
    ]


def test_every_task_is_a_thin_wrapper_around_the_library():
    """No SQL and no logic in tasks/: a task names its step, its retries and cache policy, and calls the library."""
    too_long, with_sql = [], []
    for path in sorted((ROOT / "tasks").glob("*.py")):
        for step in tasks_of(path):
            body = step.body[1:] if ast.get_docstring(step) else step.body
            if len(body) > TASK_STATEMENTS:
                too_long.append(f"{path.name}:{step.name} ({len(body)} statements)")
        if {"psycopg", "psycopg.sql"} & imported(path):
            with_sql.append(path.name)
    assert too_long == [] and with_sql == []
    assert all("task(" in path.read_text() for path in (ROOT / "tasks").glob("*.py") if path.name != "__init__.py"), (
        "a module of tasks/ without a task: its functions belong to the library"
    )


def test_nothing_calls_a_tasks_function_past_prefect():
    """`task.fn(...)` runs a task's body outside any run: call the library's function instead."""
    found = []
    for path in sorted(ROOT.glob("*/**/*.py")):
        if path.is_relative_to(ROOT / ".venv"):
            continue
        tree = ast.parse(path.read_text())
        names = {
            alias.asname or alias.name
            for node in ast.walk(tree)
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("dbpromote.tasks")
            for alias in node.names
        }
        found += [
            f"{path.relative_to(ROOT)}:{node.lineno}"
            for node in ast.walk(tree)
            if isinstance(node, ast.Attribute) and node.attr == "fn"
            and isinstance(node.value, ast.Name) and node.value.id in names
        ]  # fmt: skip
    assert found == []


MARKDOWN = ("# ", "## ", "### ", "|---", "| ")


def markdown_built(path: Path) -> list[str]:
    """The string pieces of a module that start a markdown heading or table."""
    return [
        f"{path.name}:{node.lineno} {node.value[:30]!r}"
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value.startswith(MARKDOWN)
    ]


def test_markdown_is_built_in_the_reporting_package_only():
    """Steps return results; dbpromote/reporting/ turns them into what a person reads (and asks it with)."""
    found = [
        line
        for path in sorted(
            [*(ROOT / "dbpromote").rglob("*.py"), *(ROOT / "flows").glob("*.py"), *(ROOT / "tasks").glob("*.py")]
        )
        if not path.is_relative_to(ROOT / "dbpromote" / "reporting")
        for line in markdown_built(path)
    ]
    assert found == []


def test_no_function_takes_a_target_and_its_name_side_by_side():
    """A target is resolved once at the edge of a step and handed down: it says its own name (`target.name`)."""
    found = []
    for path in sorted(ROOT.glob("*/**/*.py")):
        if path.is_relative_to(ROOT / ".venv"):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef):
                arguments = node.args.args
                found += [
                    f"{path.relative_to(ROOT)}:{node.lineno} {node.name}({first.arg}, {second.arg})"
                    for first, second in zip(arguments, arguments[1:], strict=False)
                    if first.annotation is not None and "DatabaseTarget" in ast.unparse(first.annotation)
                    and second.arg in ("target_name", "name", "target")
                    and (second.annotation is None or ast.unparse(second.annotation) == "str")
                ]  # fmt: skip
    assert found == []
