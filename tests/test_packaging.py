"""The package as a user installs it: a wheel in a fresh venv puts only `dbpromote` on sys.path, and works."""

import site
import subprocess
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
GENERIC = ("flows", "tasks", "deployments")


def run(command: list, **kwargs) -> subprocess.CompletedProcess:
    result = subprocess.run(command, capture_output=True, text=True, **kwargs)
    assert result.returncode == 0, result.stdout + result.stderr
    return result


def test_the_wheel_installs_flows_tasks_and_deployments_under_dbpromote_only(tmp_path):
    run([sys.executable, "-m", "pip", "wheel", str(REPO), "--no-deps", "--no-build-isolation", "-q", "-w", tmp_path])
    (wheel,) = tmp_path.glob("dbpromote-*.whl")
    venv = tmp_path / "venv"
    run([sys.executable, "-m", "venv", venv])
    run([venv / "bin" / "pip", "install", "-q", "--no-deps", wheel])

    # Only the fresh venv on sys.path, run outside the repository: what a user's project would see.
    check = f"import importlib.util as u; print([name for name in {GENERIC!r} if u.find_spec(name)])"
    assert run([venv / "bin" / "python", "-c", check], cwd=tmp_path).stdout.strip() == "[]"
    (installed,) = venv.glob("lib/python*/site-packages/dbpromote")
    for module in ("flows/promote.py", "tasks/plan.py", "deployments/deploy.py", "probe/django_probe.py"):
        assert (installed / module).is_file(), module

    # With the dependencies (this environment's site-packages, no .pth files: no editable install), the installed
    # command runs and every deployed flow imports from the installed package.
    deps = {"PYTHONPATH": ":".join(site.getsitepackages()), "PATH": "/usr/bin:/bin"}
    usage = run([venv / "bin" / "dbpromote", "--help"], cwd=tmp_path, env=deps).stdout
    assert "promote" in usage and "stack" in usage
    entrypoints = [entry["entrypoint"].partition(":") for entry in deployments()]
    imports = "; ".join(
        f"from dbpromote.{path.removesuffix('.py').replace('/', '.')} import {name}" for path, _, name in entrypoints
    )
    run([venv / "bin" / "python", "-c", imports], cwd=tmp_path, env=deps)


def deployments() -> list[dict]:
    return yaml.safe_load((REPO / "prefect.yaml").read_text())["deployments"]


def test_every_prefect_yaml_entrypoint_loads_its_flow_from_the_repository():
    from prefect.flows import load_flow_from_entrypoint

    for deployment in deployments():
        path, _, name = deployment["entrypoint"].partition(":")
        assert (REPO / path).is_file(), deployment
        flow = load_flow_from_entrypoint(str(REPO / deployment["entrypoint"]))
        assert flow.fn.__name__ == name, deployment
