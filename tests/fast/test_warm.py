"""Where a warm server's socket is (dbpromote/warm.py): one per worker and environment, in a directory only its
user can enter, and none where that directory is anyone else's to read or replace."""

import ast
import os
import sys
import tempfile
from pathlib import Path

import pytest

from dbpromote import warm
from dbpromote.warm import server_path, warm_command

ENV = {"PATH": "/usr/bin", "PREFECT_API_URL": "http://127.0.0.1:4200/api", "DBPROMOTE_GCS_RETRY_TIMEOUT_S": "120"}


@pytest.fixture
def tmpdir_here(tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    return tmp_path


def test_one_server_per_worker_and_environment_whatever_the_runs_own_variables(tmpdir_here):
    path = server_path(ENV, 100)
    assert path.parent == tmpdir_here / f"dbpromote-warm-{os.getuid()}" and path.suffix == ".sock"
    assert (path.parent.stat().st_mode & 0o777) == 0o700
    one_run = ENV | {"PREFECT__FLOW_RUN_ID": "a", "PREFECT__CONTROL_TOKEN": "t1"}
    another = ENV | {"PREFECT__FLOW_RUN_ID": "b", "PREFECT__CONTROL_TOKEN": "t2"}
    assert server_path(one_run, 100) == server_path(another, 100) == path
    assert server_path(ENV, 101) != path  # another worker
    assert server_path(ENV | {"DBPROMOTE_GCS_RETRY_TIMEOUT_S": "5"}, 100) != path  # runs with other settings


def test_no_server_where_its_directory_is_open_to_others_or_a_link(tmpdir_here):
    home = tmpdir_here / f"dbpromote-warm-{os.getuid()}"
    home.mkdir(mode=0o777)
    home.chmod(0o777)
    assert server_path(ENV, 100) is None
    home.rmdir()
    elsewhere = tmpdir_here / "elsewhere"
    elsewhere.mkdir(mode=0o700)
    home.symlink_to(elsewhere)
    assert server_path(ENV, 100) is None


def test_the_pools_command_names_the_interpreter_quoted():
    assert warm_command("/opt/my venv/bin/python") == "'/opt/my venv/bin/python' -m dbpromote.warm"


def test_the_client_imports_the_standard_library_alone():
    """It starts for every run: Prefect and the flows are imported by the server, inside its functions."""
    tree = ast.parse(Path(warm.__file__).read_text())
    top = [node for node in tree.body if isinstance(node, ast.Import | ast.ImportFrom)]
    modules = {alias.name for node in top if isinstance(node, ast.Import) for alias in node.names}
    modules |= {node.module for node in top if isinstance(node, ast.ImportFrom)}
    assert {m for m in modules if m.split(".")[0] not in sys.stdlib_module_names} == set()


def test_one_command_server_per_environment_whatever_the_shells_own_variables(tmpdir_here):
    path = server_path(ENV, warm.CLI)
    assert server_path(ENV | {"_": "/usr/local/bin/dbpromote", "PWD": "/srv/app", "SHLVL": "3"}, warm.CLI) == path
    assert server_path(ENV, 100) != path  # a worker's runs
    assert server_path(ENV | {"PREFECT_API_URL": "https://prefect.example.com/api"}, warm.CLI) != path


def test_the_command_is_the_warm_client():
    from importlib.metadata import entry_points

    (script,) = [e for e in entry_points(group="console_scripts") if e.name == "dbpromote"]
    assert script.value == "dbpromote.warm:cli"
