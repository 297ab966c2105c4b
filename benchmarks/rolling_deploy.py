"""Benchmark: what the release running during a promotion goes through, and what proving it costs.

The sample release (v1 -> head: a rename, a drop, a NOT NULL column without a database default) is promoted
through staging and production as typed, the approval given at once, while four clients of the previous release
(its models at v1: a SELECT and an INSERT per model, rolled back, in a loop; benchmarks/clients/old_release_load.py) run
against production:
- **two phases** (production deployed rolling): the old release serves until production waits for the deploy;
  then it is gone (the deploy) and `dbpromote deployed` lets the after-deploy phase run;
- **one phase** (production deployed `stopped`, as every promotion ran before): the old release serves throughout.
Errors seen by the old release: goal 0 with two phases (the baseline, one phase, shows what they save). Then the
proof's own time (the probe's figure) on a schema of 120 models and more (a generated app beside the sample's),
goal <= 2 s, beside the time of the whole probe command.

Needs the local stack (`dbpromote stack up`); resets both sample databases.
"""

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import local_stack, stack  # points this process at the local stack

DBPROMOTE = str(Path(sys.executable).parent / "dbpromote")
CLIENTS = 4
MODELS = 120


def typed(*args: str) -> str:
    result = subprocess.run([DBPROMOTE, *args], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def load(stop: Path) -> list[subprocess.Popen]:
    """Four clients of the release at v1 against production."""
    env = {"DATABASE_URL": stack.database_url("production"), "PATH": "/usr/bin:/bin"}
    command = [sys.executable, str(Path(__file__).parent / "clients" / "old_release_load.py"), "--settings"]
    command += ["tenant_backend.settings", "--applied", json.dumps([["core", "0001_initial"]]), "--stop", str(stop)]
    return [
        subprocess.Popen(command, cwd=local_stack.SAMPLE_PROJECT, env=env, stdout=subprocess.PIPE, text=True)
        for _ in range(CLIENTS)
    ]


def ended(clients: list[subprocess.Popen], stop: Path) -> dict:
    stop.touch()
    figures = [json.loads(client.communicate(timeout=60)[0]) for client in clients]
    return {key: sum(f[key] for f in figures) for key in ("rounds", "statements", "errors")} | {
        "first": next((f["first"] for f in figures if f["first"]), "")
    }


def waiting(run_id: str, for_deploy: bool) -> None:
    from dbpromote.runs import paused_for

    paused_for(run_id, "deploy" if for_deploy else "approval")


def promotion(deploy: str) -> dict:
    """The release promoted as typed with production deployed `deploy`, the old release's load on production."""
    from dbpromote.config import DatabaseTarget
    from dbpromote.runs import wait_for

    local_stack.reset()
    saved = DatabaseTarget.load("production")
    saved.model_copy(update={"deploy": deploy}).save("production", overwrite=True)
    stop = Path(tempfile.mkdtemp()) / "stop"
    clients = load(stop)
    try:
        run_id = typed(
            "promote", "--project", "tenant-backend", "--through", "staging,production",
            "--no-deploy-wait-on-staging", "--until-paused",
        ).split()[0]  # fmt: skip
        typed("approve", run_id, "--approver", "benchmark", "--acknowledge-risks")
        if deploy == "rolling":
            waiting(run_id, for_deploy=True)
            seen = ended(clients, stop)  # the deploy: the previous release no longer serves
            typed("deployed", run_id, "--release", "head", "--by", "benchmark")
        state = wait_for(run_id, timeout_s=600).state
        assert state.is_completed(), f"{state.name}: {state.message}"
        if deploy != "rolling":
            seen = ended(clients, stop)
    finally:
        stop.touch()
        saved.save("production", overwrite=True)
    return seen


def proof_time() -> tuple[float, float, int]:
    """The proof on the sample with MODELS more models: its own seconds, the probe command's, the models."""
    from dbpromote.config import DjangoProject, load_target
    from dbpromote.probe import run_probe

    folder = Path(tempfile.mkdtemp()) / "project"
    subprocess.run(["cp", "-r", str(local_stack.SAMPLE_PROJECT), str(folder)], check=True)
    app = folder / "wide"
    (app / "migrations").mkdir(parents=True)
    (app / "__init__.py").write_text("")
    (app / "migrations" / "__init__.py").write_text("")
    fields = '("id", models.BigAutoField(primary_key=True)), ("name", models.CharField(max_length=80)), '
    fields += '("count", models.IntegerField(default=0)), ("note", models.TextField(null=True))'
    operations = "\n".join(f"        migrations.CreateModel('Model{n}', [{fields}])," for n in range(MODELS))
    (app / "migrations" / "0001_initial.py").write_text(
        "from django.db import migrations, models\n\n\nclass Migration(migrations.Migration):\n"
        f"    dependencies = []\n    operations = [\n{operations}\n    ]\n"
    )
    settings = folder / "tenant_backend" / "settings.py"
    settings.write_text(settings.read_text() + '\nINSTALLED_APPS = [*INSTALLED_APPS, "wide"]\n')
    env = {"DATABASE_URL": stack.database_url("staging"), "PATH": "/usr/bin:/bin"}
    subprocess.run([sys.executable, "manage.py", "migrate", "-v0"], cwd=folder, env=env, check=True)
    project = DjangoProject(path=str(folder), settings_module="tenant_backend.settings", python=sys.executable)
    state = json.dumps([["core", "0001_initial"], ["wide", "0001_initial"]])
    started = time.monotonic()
    answer = run_probe(project, load_target("staging"), "prove", "--state", state)
    return answer.duration_s, time.monotonic() - started, answer.models


def main() -> None:
    one = promotion("stopped")
    two = promotion("rolling")
    proof_s, command_s, models = proof_time()
    for name, seen in (("one phase (stopped)", one), ("two phases (rolling)", two)):
        print(
            f"{name:22} the previous release ran {seen['statements']} statements in {seen['rounds']} rounds: "
            f"{seen['errors']} failed{': ' + seen['first'] if seen['first'] else ''}"
        )
    print(f"proof on {models} models: {proof_s:.2f} s of its own, {command_s:.2f} s as a probe command")
    saved = one["errors"] - two["errors"]
    print(f"goal old-release-errors-two-phases: {two['errors']} (goal 0; one phase: {one['errors']}, "
          f"{saved} saved): {'met' if two['errors'] == 0 else 'NOT MET'}")  # fmt: skip
    print(f"goal proof-time-{models}-models: {proof_s:.2f} s (goal <= 2 s): {'met' if proof_s <= 2 else 'NOT MET'}")


if __name__ == "__main__":
    main()
