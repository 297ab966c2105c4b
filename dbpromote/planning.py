"""Plans: the migrations a target still needs (or reverses), described by the project itself through the probe and
checked against the target before anything is applied."""

from __future__ import annotations

import json
import tempfile
from dataclasses import asdict

import psycopg

from dbpromote.config import DatabaseTarget, DjangoProject
from dbpromote.errors import ConfigError, InputError, PreflightError
from dbpromote.lint import squawk_risks
from dbpromote.models.plan import Plan, PlannedMigration, assign_phases, classify_risks, parse_target_migration
from dbpromote.postgres import connect
from dbpromote.probe import FailureAnswer, PlanAnswer, ProbeSession, run_probe
from dbpromote.probe.protocol import AppChanges


def compute_plan(
    project: DjangoProject,
    target: DatabaseTarget,
    to: str = "",
    probe: ProbeSession | None = None,
    previous: dict | None = None,
) -> Plan:
    """The plan, refused when the project has conflicting migrations or model changes without migrations; asked
    of `probe` when given (a Django already started), of a probe of its own when not. `previous`: the running
    release's tables as its own code defines them (`check --previous-code`), instead of the migration state."""
    parse_target_migration(to)
    if previous is not None:
        with tempfile.NamedTemporaryFile("w", suffix=".json") as tables:
            tables.write(json.dumps(previous))
            tables.flush()
            asked = run_probe(project, target, "plan", "--to", to, "--previous", tables.name)
    else:
        asked = probe.plan(to, target) if probe else run_probe(project, target, "plan", "--to", to)
    answer = plan_answer(asked, project, target.name, to)
    check_conflicts(answer)
    check_model_changes(answer.model_changes, project, target.name)
    check_history(answer, target.name)
    migrations = _planned(answer)
    classify_risks(migrations, project.lint_ignore)
    assign_phases(migrations)
    notes = [
        f"{squash} is partly applied: Django applies the rest of what it replaces" for squash in answer.partial_squashes
    ]
    notes += [f"lint rule {rule} is ignored for this project: {why}" for rule, why in project.lint_ignore.items()]
    with connect(target) as conn:
        check_extensions(conn, answer.extensions, target.name)
        check_owners(conn, target, migrations)
        notes += other_schemas(conn, target)
        version = conn.info.server_version
    squawk_risks(migrations, f"{version // 10000}.{version % 10000}", project.lint_ignore)
    return Plan(
        target=target.name,
        to=to,
        applied=answer.applied,
        migrations=migrations,
        notes=notes,
        file_hashes=answer.file_hashes,
    )


def check_conflicts(answer: PlanAnswer) -> None:
    """Several leaf nodes in an app: `migrate` refuses to run, and nothing can be planned or replayed."""
    if answer.conflicts:
        listed = "; ".join(f"{app}: {', '.join(names)}" for app, names in answer.conflicts.items())
        raise PreflightError(
            f"Conflicting migrations (several leaf nodes) in {listed}; "
            "merge them with `manage.py makemigrations --merge` and commit the result."
        )


def plan_back(project: DjangoProject, target: DatabaseTarget, state: list[tuple[str, str]]) -> Plan:
    """The migrations to reverse, in order, to bring a target back to an applied state (a backup's)."""
    answer = run_probe(project, target, "plan-back", "--state", json.dumps(state))
    answer = plan_answer(answer, project, target.name, "")
    migrations = _planned(answer, backwards=True)
    classify_risks(migrations)
    return Plan(target=target.name, applied=answer.applied, migrations=migrations)


def check_model_changes(changes: list[AppChanges], project: DjangoProject, target_name: str) -> None:
    """Models that differ from their migrations stop a promotion: the project's own apps need the migrations
    written; an installed package's need an acknowledgement (its migrations are not the project's to write)."""
    own = [change for change in changes if not change.package]
    if own:
        raise PreflightError(
            f"Models changed without migrations in {describe_changes(own)}; "
            "run `manage.py makemigrations` and commit the migrations."
        )
    unacknowledged = [c for c in changes if c.app not in project.acknowledged_package_changes]
    if unacknowledged:
        apps = ",".join(change.app for change in unacknowledged)
        raise PreflightError(
            f"Installed packages' models differ from their own migrations in {describe_changes(unacknowledged)} "
            f"(seen from {target_name}'s plan); these are not yours to migrate: upgrade or pin the package, or "
            f"accept them with `dbpromote project add NAME --acknowledge-package-changes {apps}`."
        )


def check_history(answer: PlanAnswer, target_name: str) -> None:
    """A django_migrations row with no migration file: `migrate` would apply the file's new name over it."""
    if answer.unknown_applied:
        rows = ", ".join(f"{app}.{name}" for app, name in answer.unknown_applied)
        raise PreflightError(
            f"django_migrations on {target_name} records {rows}, which the project has no migration file for "
            "(deleted or renamed); restore the file, or if it was renamed, delete the old row and record the new "
            "name with `manage.py migrate APP NEW_NAME --fake`."
        )


def check_extensions(conn: psycopg.Connection, extensions: dict[str, str], target_name: str) -> None:
    """Every extension the plan creates is on the server, and the migration role may create it."""
    for name, migration in extensions.items():
        row = conn.execute(
            """
            SELECT e.installed_version IS NOT NULL, v.trusted, r.rolsuper
            FROM pg_available_extensions e
            JOIN pg_available_extension_versions v ON v.name = e.name AND v.version = e.default_version
            JOIN pg_roles r ON r.rolname = current_user
            WHERE e.name = %s
            """,
            [name],
        ).fetchone()
        if row is None:
            raise PreflightError(
                f"{migration} creates the extension {name}, which the server of {target_name} does not have; "
                "install it on the server (PostgreSQL's own extensions come with its contrib package) or ask "
                "your provider to enable it, then run again."
            )
        installed, trusted, superuser = row
        if not (installed or trusted or superuser):
            raise PreflightError(
                f"{migration} creates the extension {name}, which only a superuser may create on {target_name}; "
                f"run `CREATE EXTENSION {name}` there as one first, then run again."
            )


def check_owners(conn: psycopg.Connection, target: DatabaseTarget, migrations: list) -> None:
    """Tables the plan's SQL alters must belong to the migration role (PostgreSQL lets only owners alter them)."""
    foreign = conn.execute(
        """
        SELECT c.relname, pg_get_userbyid(c.relowner) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE n.nspname = %s AND c.relkind IN ('r', 'p') AND NOT pg_has_role(current_user, c.relowner, 'USAGE')
        """,
        [target.schema_name],
    ).fetchall()
    for table, owner in foreign:
        quoted = f'"{table}"'
        users = [m.label for m in migrations if any(quoted in statement for statement in m.sql)]
        if users:
            raise PreflightError(
                f"{', '.join(users)} change {table} on {target.name}, which belongs to {owner}, not to the "
                f"migration role; make it the owner first (ALTER TABLE {table} OWNER TO the role in the target's "
                "URL, as a superuser or as the owner), then run again."
            )


def other_schemas(conn: psycopg.Connection, target: DatabaseTarget) -> list[str]:
    """Tables outside the project's schema: migrations and RLS leave them alone; backups include them."""
    rows = conn.execute(
        """
        SELECT n.nspname, count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE c.relkind IN ('r', 'p') AND n.nspname <> %s AND n.nspname NOT IN ('pg_catalog', 'information_schema')
          AND n.nspname NOT LIKE 'pg\\_%%'
        GROUP BY 1 ORDER BY 1
        """,
        [target.schema_name],
    ).fetchall()
    if not rows:
        return []
    listed = ", ".join(f"{schema} ({count} tables)" for schema, count in rows)
    return [f"tables outside {target.schema_name}: {listed}; migrations and RLS leave them alone, backups hold them"]


def describe_changes(changes: list[AppChanges]) -> str:
    """`app (operation; operation)` per app, as makemigrations would write them."""
    return ", ".join(f"{change.app} ({'; '.join(change.operations[:5])})" for change in changes)


def _planned(answer: PlanAnswer, backwards: bool = False) -> list[PlannedMigration]:
    return [PlannedMigration.model_validate(asdict(m) | {"backwards": backwards}) for m in answer.migrations]


def plan_answer(answer, project: DjangoProject, target_name: str, to: str = "") -> PlanAnswer:
    """The probe's plan, or the error its failure means."""
    if isinstance(answer, FailureAnswer):
        raise _probe_error(answer, project, target_name, to)
    if not isinstance(answer, PlanAnswer):
        raise ConfigError(f"The probe answered a plan request with a {answer.kind}; reinstall dbpromote.")
    return answer


def _probe_error(failure: FailureAnswer, project: DjangoProject, target_name: str, to: str) -> Exception:
    reason, message = failure.reason, failure.message  # masked by run_probe
    if reason == "settings" and failure.variable:
        return ConfigError(
            f"The settings module {project.settings_module!r} does not load: it needs {failure.variable} ({message}); "
            f"give it with `dbpromote project add NAME --env {failure.variable}=VALUE`, or `--env-secret "
            f"{failure.variable}=BLOCK` when it is a secret, or `--env-file PATH`."
        )
    if reason == "alias":
        return ConfigError(
            f"{message}; name the alias target {target_name!r} is with `dbpromote target add {target_name} "
            "--database-alias ALIAS`."
        )
    if reason == "settings":
        return ConfigError(
            f"The settings module {project.settings_module!r} does not load ({message}); "
            "fix it with `dbpromote project add NAME --settings MODULE`."
        )
    if reason == "interpreter":
        return ConfigError(f"{message}; point the project at an interpreter with Django installed (--python).")
    if reason == "target":
        return InputError(f"Unknown target migration {to!r} ({message}); list them with `manage.py showmigrations`.")
    if reason == "state":
        return PreflightError(
            f"{target_name} cannot return to that migration state: {message}; restore the backup instead."
        )
    if reason == "backwards":
        return PreflightError(
            f"Target {to!r} on {target_name}: {message}; promote only moves forward, use the rollback flow instead."
        )
    return PreflightError(f"The project could not plan against {target_name}: {message}; fix the error above first.")
