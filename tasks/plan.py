"""Plan: the migrations a target still needs, described by the project itself through the probe."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from pathlib import Path

from prefect import task
from pydantic import BaseModel, Field

from dbpromote.config import DatabaseTarget, DjangoProject
from dbpromote.errors import ConfigError, PreflightError, redact, retry_if_transient

PROBE = Path(__file__).with_name("django_probe.py")
PROBE_TIMEOUT_S = 600

# Operation kinds a reviewer must acknowledge: they lose data, break running code, lock tables for long or run
# code nobody can review as SQL.
RISKY_OPERATIONS = {
    "RemoveField": "drops a column",
    "DeleteModel": "drops a table",
    "RenameField": "renames a column (running code that uses the old name breaks)",
    "RenameModel": "renames a table (running code that uses the old name breaks)",
    "AlterField": "may change a column's type (rewrites the table under an exclusive lock)",
    "AddIndex": "builds an index without CONCURRENTLY (blocks writes while it builds)",
    "AddConstraint": "adds a constraint that scans the table under lock",
    "AlterUniqueTogether": "adds a unique constraint that scans the table under lock",
    "RunPython": "runs Python code (not reviewable as SQL)",
    "RunSQL": "runs hand-written SQL",
}


class Operation(BaseModel):
    kind: str
    description: str
    model: str | None = None
    null: bool | None = None
    has_default: bool | None = None


class PlannedMigration(BaseModel):
    app: str
    name: str
    atomic: bool
    reversible: bool
    operations: list[Operation]
    sql: list[str]
    risks: list[str] = Field(default_factory=list)
    backwards: bool = False

    @property
    def label(self) -> str:
        return f"{self.app}.{self.name}"

    @property
    def direction(self) -> str:
        return " (reverse)" if self.backwards else ""


class Plan(BaseModel):
    """What `migrate` would run on one target, and what is applied there already."""

    target: str
    to: str = ""
    applied: list[tuple[str, str]]
    migrations: list[PlannedMigration]

    @property
    def hash(self) -> str:
        """Stable over what would run: the migrations, in order and direction, with their SQL and atomicity."""
        payload = [(m.app, m.name, m.atomic, m.sql, m.backwards) for m in self.migrations]
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]

    @property
    def risks(self) -> list[str]:
        return [f"{m.label}: {risk}" for m in self.migrations for risk in m.risks]

    @property
    def labels(self) -> list[str]:
        return [m.label for m in self.migrations]

    def last_applied_by_app(self) -> dict[str, str]:
        """Per app, the newest applied migration: the reverse target that returns to this state."""
        last: dict[str, str] = {}
        for app, name in sorted(self.applied):
            last[app] = name
        return last


class ProbeResult(BaseModel):
    ok: bool = True
    applied: list[tuple[str, str]] = Field(default_factory=list)
    conflicts: dict[str, list[str]] = Field(default_factory=dict)
    changes_without_migrations: list[str] = Field(default_factory=list)
    migrations: list[PlannedMigration] = Field(default_factory=list)
    error: dict | None = None


def start_probe(project: DjangoProject, target: DatabaseTarget, *args: str, **popen) -> subprocess.Popen:
    """The probe in the project's interpreter against the target (its URL in the environment, never argv)."""
    env = os.environ | {"DBPROMOTE_DATABASE_URL": target.url.get_secret_value(), "PYTHONUNBUFFERED": "1"}
    command = [project.interpreter(), str(PROBE), *args, "--settings", project.settings_module]
    try:
        return subprocess.Popen(
            command, cwd=project.path, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, **popen
        )
    except FileNotFoundError:
        raise ConfigError(
            f"The project's interpreter {project.interpreter()} does not exist; set the right one with "
            "`dbpromote project add NAME --python PATH`."
        ) from None


def run_probe(project: DjangoProject, target: DatabaseTarget, *args: str, timeout: float = PROBE_TIMEOUT_S) -> dict:
    """Run the probe once; its JSON, or a ConfigError naming the fix."""
    process = start_probe(project, target, *args, stderr=subprocess.PIPE)
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        stdout, stderr = process.communicate()
    lines = stdout.decode(errors="replace").strip().splitlines()
    try:
        return json.loads(lines[-1])
    except (IndexError, json.JSONDecodeError):
        tail = redact(stderr.decode(errors="replace").strip()[-500:], target.url.get_secret_value())
        raise ConfigError(
            f"The project's interpreter {project.interpreter()} could not run the probe (exit {process.returncode}): "
            f"{tail}; check that it is the project's Python with Django installed."
        ) from None


# What reversing an operation loses or runs.
RISKY_REVERSALS = {
    "CreateModel": "reversing drops the table and every row in it",
    "AddField": "reversing drops the column and every value in it",
    "RunPython": "reversing runs Python code (not reviewable as SQL)",
    "RunSQL": "reversing runs hand-written SQL",
}


def classify_risks(migrations: list[PlannedMigration]) -> None:
    """Attach the risks of each migration; building an index on a table made in the same plan is not one."""
    created = set()
    for migration in migrations:
        migration.risks = []
        if migration.backwards:
            migration.risks = [
                f"{operation.description}: {RISKY_REVERSALS[operation.kind]}"
                for operation in migration.operations
                if operation.kind in RISKY_REVERSALS
            ]
            continue
        for operation in migration.operations:
            if operation.kind == "CreateModel" and operation.model:
                created.add((migration.app, operation.model))
                continue
            if operation.kind == "AddField" and operation.null is False and operation.has_default is False:
                migration.risks.append(f"{operation.description}: NOT NULL without a default fails on existing rows")
            reason = RISKY_OPERATIONS.get(operation.kind)
            if reason is None:
                continue
            on_new_table = operation.kind in ("AddIndex", "AddConstraint", "AlterUniqueTogether") and (
                (migration.app, operation.model) in created
            )
            if not on_new_table:
                migration.risks.append(f"{operation.description}: {reason}")


@task(name="plan", retries=2, retry_delay_seconds=2, retry_condition_fn=retry_if_transient)
def plan_migrations(project: DjangoProject, target: DatabaseTarget, target_name: str, to: str = "") -> Plan:
    """The pending migrations of one target up to `to` (app:migration) or every leaf."""
    return compute_plan(project, target, target_name, to)


def parse_target_migration(to: str) -> tuple[str, str] | None:
    """APP:MIGRATION as a pair; None for "every leaf"; a ConfigError for anything else."""
    if not to:
        return None
    app, sep, name = to.partition(":")
    if not (sep and app and name) or ":" in name:
        raise ConfigError(f"Target migration {to!r} is malformed; write it as APP:MIGRATION, e.g. core:0008_default.")
    return app, name


def compute_plan(project: DjangoProject, target: DatabaseTarget, target_name: str, to: str = "") -> Plan:
    parse_target_migration(to)
    probe = ProbeResult.model_validate(run_probe(project, target, "plan", "--to", to))
    if probe.error:
        raise _probe_error(probe.error, project, target_name, to)
    if probe.conflicts:
        listed = "; ".join(f"{app}: {', '.join(names)}" for app, names in probe.conflicts.items())
        raise PreflightError(
            f"Conflicting migrations (several leaf nodes) in {listed}; "
            "merge them with `manage.py makemigrations --merge` and commit the result."
        )
    if probe.changes_without_migrations:
        raise PreflightError(
            f"Models changed without migrations in {', '.join(probe.changes_without_migrations)}; "
            "run `manage.py makemigrations` and commit the migrations."
        )
    classify_risks(probe.migrations)
    return Plan(target=target_name, to=to, applied=probe.applied, migrations=probe.migrations)


@task(name="plan-rollback", retries=2, retry_delay_seconds=2, retry_condition_fn=retry_if_transient)
def plan_rollback(
    project: DjangoProject, target: DatabaseTarget, target_name: str, state: list[tuple[str, str]]
) -> Plan:
    """The migrations to reverse, in order, to bring a target back to an applied state (a backup's)."""
    probe = ProbeResult.model_validate(run_probe(project, target, "plan-back", "--state", json.dumps(state)))
    if probe.error:
        raise _probe_error(probe.error, project, target_name, "")
    for migration in probe.migrations:
        migration.backwards = True
    classify_risks(probe.migrations)
    return Plan(target=target_name, applied=probe.applied, migrations=probe.migrations)


def _probe_error(error: dict, project: DjangoProject, target_name: str, to: str) -> Exception:
    kind, message = error.get("kind"), redact(error.get("message", ""))
    if kind == "settings":
        return ConfigError(
            f"The settings module {project.settings_module!r} does not load ({message}); "
            "fix it with `dbpromote project add NAME --settings MODULE`."
        )
    if kind == "interpreter":
        return ConfigError(f"{message}; point the project at an interpreter with Django installed (--python).")
    if kind == "target":
        return ConfigError(f"Unknown target migration {to!r} ({message}); list them with `manage.py showmigrations`.")
    if kind == "state":
        return PreflightError(
            f"{target_name} cannot return to that migration state: {message}; restore the backup instead."
        )
    if kind == "backwards":
        return PreflightError(
            f"Target {to!r} on {target_name}: {message}; promote only moves forward, use the rollback flow instead."
        )
    return PreflightError(f"The project could not plan against {target_name}: {message}; fix the error above first.")
