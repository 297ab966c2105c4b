"""The package as a user installs it: a wheel in a fresh venv puts only `dbpromote` on sys.path, and works."""

import site
import subprocess
import sys
import time
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
    for module in (
        "flows/promote.py",
        "tasks/plan.py",
        "planning.py",
        "deploying.py",
        "deployments/prefect.yaml",
        "probe/django_probe.py",
    ):
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


def test_an_installed_wheel_runs_the_stack_deploys_backs_up_and_promotes_from_an_empty_folder(tmp_path, stack):
    """As a team installs it: the wheel and its dependencies in a fresh venv, used from an empty folder outside the
    checkout. `stack up` seeds the sample project shipped in the package and keeps its state in ./.dbpromote;
    `deploy` registers the deployments from the package; a backup and a promotion (approved) complete."""
    import os
    import shutil
    import tempfile
    from uuid import UUID

    run([sys.executable, "-m", "pip", "wheel", str(REPO), "--no-deps", "--no-build-isolation", "-q", "-w", tmp_path])
    (wheel,) = tmp_path.glob("dbpromote-*.whl")
    venv = tmp_path / "venv"
    run([sys.executable, "-m", "venv", venv])
    run([venv / "bin" / "pip", "install", "-q", wheel])  # its dependencies from the registry, as pinned
    # An empty folder the postgres system user can reach (pytest's own are private to root), as a team's would be.
    folder = Path(tempfile.mkdtemp(prefix="dbpromote-ops-"))
    folder.chmod(0o711)
    # A user's shell: no variable of this test session's stack or of the repository.
    env = {key: value for key, value in os.environ.items() if not key.startswith(("PREFECT_", "DBPROMOTE_"))}
    system = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
    env |= {"PATH": f"{venv / 'bin'}:{system}", "PREFECT_HOME": str(tmp_path / "prefect-home")}
    for variable in ("STORAGE_EMULATOR_HOST", "PYTHONPATH"):
        env.pop(variable, None)
    dbpromote = str(venv / "bin" / "dbpromote")

    def typed(*args: str, check: bool = True) -> subprocess.CompletedProcess:
        result = subprocess.run([dbpromote, *args], cwd=folder, env=env, capture_output=True, text=True)
        assert not check or result.returncode == 0, result.stdout + result.stderr
        return result

    try:
        typed("stack", "up")
        assert (folder / ".dbpromote" / "state.json").is_file()
        (site_packages,) = venv.glob("lib/python*/site-packages")
        assert not (site_packages / ".dbpromote").exists()
        deployed = typed("deploy").stdout
        assert "deployed promote/promote" in deployed and "deployed backup/backup" in deployed
        assert typed("backup", "staging", "--wait").stdout.splitlines()[-1] == "finished: Completed"

        waiting = subprocess.Popen(
            [dbpromote, "promote", "--project", "tenant-backend", "--through", "staging,production", "--wait",
             "--no-deploy-wait-on-staging"],
            cwd=folder, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        run_id = UUID(waiting.stdout.readline().split()[0])
        deadline = time.monotonic() + 300
        while str(run_id) not in typed("pending").stdout:
            assert waiting.poll() is None and time.monotonic() < deadline, waiting.communicate()
            time.sleep(1)
        typed("approve", str(run_id), "--approver", "ops", "--comment", "from the wheel", "--acknowledge-risks")
        # Production is deployed rolling (the default) and the sample release breaks the one before it.
        while f"{run_id}  promote" not in (pending := typed("pending").stdout) or "the app deploy" not in pending:
            assert waiting.poll() is None and time.monotonic() < deadline + 300, waiting.communicate()
            time.sleep(1)
        typed("deployed", str(run_id), "--release", "wheel", "--by", "ops")
        out, err = waiting.communicate(timeout=600)
        assert waiting.returncode == 0 and out.splitlines()[-1] == "finished: Completed", out + err
    finally:
        typed("stack", "down", check=False)
        shutil.rmtree(folder, ignore_errors=True)
