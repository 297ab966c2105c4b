"""Runs inside the target project's own interpreter and prints one JSON document: its plan, or one migration applied.

This file is executed as a script (`python django_probe.py plan ...`), never imported by the worker: it may use
only the standard library and what the project itself has installed (Django and its database driver). The
database to use comes from DBPROMOTE_DATABASE_URL in the environment (never the command line, which `ps` shows)
and replaces the host, port, name, user and password of the project's default database.
"""

import argparse
import contextlib
import io
import json
import os
import sys
import time
import traceback
from urllib.parse import unquote, urlsplit

RETRYABLE_SQLSTATES = {"55P03": "lock_not_available", "40P01": "deadlock_detected"}


class LockNotGranted(Exception):
    """The locks a migration needs were not granted within lock_timeout."""


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("command", choices=["plan", "migrate"])
    parser.add_argument("--settings", required=True)
    parser.add_argument("--to", default="", help="app:migration, or empty for every leaf")
    parser.add_argument("--app", default="")
    parser.add_argument("--name", default="")
    parser.add_argument("--lock-timeout-ms", type=int, default=0)
    parser.add_argument("--statement-timeout-ms", type=int, default=0)
    args = parser.parse_args()
    out = sys.stdout
    # Everything Django or a migration prints goes to stderr: stdout carries only our JSON.
    sys.stdout = sys.stderr
    try:
        setup_django(args)
        result = plan(args.to) if args.command == "plan" else migrate_one(args)
    except ProbeError as error:
        result = {"ok": False, "error": {"kind": error.kind, "message": str(error)}}
    except Exception as error:  # reported to the worker, which decides what it means
        result = {"ok": False, "error": describe_exception(error)}
    out.write(json.dumps(result) + "\n")
    return 0 if result.get("ok", True) else 1


class ProbeError(Exception):
    def __init__(self, kind: str, message: str):
        super().__init__(message)
        self.kind = kind


def setup_django(args) -> None:
    os.environ["DJANGO_SETTINGS_MODULE"] = args.settings
    sys.path.insert(0, os.getcwd())
    try:
        import django
        from django.conf import settings
    except ImportError as error:
        raise ProbeError("interpreter", f"Django is not importable: {error}") from None
    try:
        databases = settings.DATABASES
    except ImportError as error:
        raise ProbeError("settings", f"{args.settings}: {error}") from None
    url = os.environ.get("DBPROMOTE_DATABASE_URL")
    if url:
        databases["default"].update(database_from_url(url))
    options = databases["default"].setdefault("OPTIONS", {})
    timeouts = []
    if args.lock_timeout_ms:
        timeouts.append(f"-c lock_timeout={args.lock_timeout_ms}")
    if args.statement_timeout_ms:
        timeouts.append(f"-c statement_timeout={args.statement_timeout_ms}")
    if timeouts:
        # OPTIONS["options"] replaces PGOPTIONS, so extend what the project set instead of relying on PGOPTIONS.
        options["options"] = " ".join([options.get("options", ""), *timeouts]).strip()
    django.setup()


def database_from_url(url: str) -> dict:
    parts = urlsplit(url)
    return {
        "HOST": parts.hostname or "",
        "PORT": str(parts.port or ""),
        "NAME": unquote(parts.path.lstrip("/")),
        "USER": unquote(parts.username or ""),
        "PASSWORD": unquote(parts.password or ""),
    }


def plan(to: str) -> dict:
    from django.apps import apps
    from django.db import connection
    from django.db.migrations.autodetector import MigrationAutodetector
    from django.db.migrations.executor import MigrationExecutor
    from django.db.migrations.state import ProjectState

    executor = MigrationExecutor(connection)
    loader = executor.loader
    conflicts = {app: sorted(names) for app, names in loader.detect_conflicts().items()}
    applied = sorted([app, name] for app, name in loader.applied_migrations)
    result = {"applied": applied, "conflicts": conflicts, "changes_without_migrations": [], "migrations": []}
    if conflicts:
        return result
    changes = MigrationAutodetector(loader.project_state(), ProjectState.from_apps(apps)).changes(graph=loader.graph)
    result["changes_without_migrations"] = sorted(changes)
    if to:
        app, _, name = to.partition(":")
        if (app, name) not in loader.graph.nodes:
            raise ProbeError("target", f"{to} is not a migration of this project")
        targets = [(app, name)]
    else:
        targets = loader.graph.leaf_nodes()
    for migration, backwards in executor.migration_plan(targets):
        if backwards:
            raise ProbeError(
                "backwards", f"{to} is behind the database's applied state ({migration.app_label}.{migration.name})"
            )
        result["migrations"].append(describe_migration(executor, migration))
    return result


def describe_migration(executor, migration) -> dict:
    operations = []
    for operation in migration.operations:
        entry = {"kind": type(operation).__name__, "description": operation.describe()}
        model_name = getattr(operation, "model_name", None) or getattr(operation, "name", None)
        if isinstance(model_name, str):
            entry["model"] = model_name.lower()
        field = getattr(operation, "field", None)
        if field is not None:
            entry["null"] = bool(field.null)
            entry["has_default"] = field.has_default() or getattr(field, "db_default", None) is not None
        operations.append(entry)
    sql = executor.loader.collect_sql([(migration, False)])
    return {
        "app": migration.app_label,
        "name": migration.name,
        "atomic": migration.atomic,
        "reversible": all(operation.reversible for operation in migration.operations),
        "operations": operations,
        "sql": sql,
    }


def migrate_one(args) -> dict:
    from django.core.management import call_command
    from django.db import connection
    from django.db.migrations.executor import MigrationExecutor

    key = (args.app, args.name)
    executor = MigrationExecutor(connection)
    if key not in executor.loader.graph.nodes:
        raise ProbeError("target", f"{args.app}.{args.name} is not a migration of this project")
    if key in executor.loader.applied_migrations:
        return {"ok": True, "already_applied": True, "duration_s": 0.0}
    steps = [(m.app_label, m.name, backwards) for m, backwards in executor.migration_plan([key])]
    if steps != [(args.app, args.name, False)]:
        raise ProbeError("order", f"{args.app}.{args.name} is not the next migration to apply; the plan is {steps}")
    migration = executor.loader.graph.nodes[key]
    MigrationExecutor.apply_migration = locks_first(MigrationExecutor.apply_migration, args.lock_timeout_ms)
    started = time.monotonic()
    try:
        call_command("migrate", args.app, args.name, interactive=False, verbosity=1, stdout=io.StringIO())
    except LockNotGranted as error:
        return {"ok": False, "atomic": True, "error": {"kind": "lock", "sqlstate": "55P03", "message": str(error)}}
    except Exception as error:
        return {"ok": False, "atomic": migration.atomic, "error": describe_exception(error)}
    return {"ok": True, "already_applied": False, "duration_s": round(time.monotonic() - started, 3)}


def locks_first(apply_migration, lock_timeout_ms: int):
    """Wrap apply_migration so an atomic migration takes every table lock it needs in one statement first.

    Otherwise a migration that alters two tables holds the first lock (queueing the application's queries behind
    it) while waiting for the second; lock_timeout bounds each wait, not their sum.
    """
    from django.db import transaction

    def apply_with_locks_first(self, state, migration, fake=False, fake_initial=False):
        if fake or not migration.atomic:
            return apply_migration(self, state, migration, fake, fake_initial)
        with transaction.atomic(using=self.connection.alias):
            tables = tables_to_lock(self.connection, state, migration)
            if tables:
                lock_tables(self.connection, tables, lock_timeout_ms)
            return apply_migration(self, state, migration, fake, fake_initial)

    return apply_with_locks_first


def tables_to_lock(connection, state, migration) -> list[str]:
    """Existing tables the migration's schema operations alter, or reference through a new foreign key."""
    existing = set(connection.introspection.table_names())
    tables = set()
    for operation in migration.operations:
        if type(operation).__name__ == "CreateModel":
            names = []
        else:
            names = [getattr(operation, "model_name_lower", None) or getattr(operation, "name_lower", None)]
        field = getattr(operation, "field", None)
        remote = getattr(getattr(field, "remote_field", None), "model", None)
        for name in filter(None, names):
            model_state = state.models.get((migration.app_label, name))
            if model_state is not None:
                tables.add(model_state.options.get("db_table") or f"{migration.app_label}_{name}")
        if isinstance(remote, str) and "." in remote:
            app_label, model = remote.lower().split(".", 1)
            model_state = state.models.get((app_label, model))
            if model_state is not None:
                tables.add(model_state.options.get("db_table") or f"{app_label}_{model}")
    return sorted(tables & existing)


def lock_tables(connection, tables: list[str], lock_timeout_ms: int) -> None:
    quoted = ", ".join(connection.ops.quote_name(table) for table in tables)
    with connection.cursor() as cursor:
        # Bound the whole statement, not each of its lock waits: it must not hold `a` while queueing for `b`.
        cursor.execute("SELECT current_setting('statement_timeout')")
        (previous,) = cursor.fetchone()
        cursor.execute("SELECT set_config('statement_timeout', %s, true)", [str(lock_timeout_ms or 0)])
        try:
            cursor.execute(f"LOCK TABLE {quoted} IN ACCESS EXCLUSIVE MODE")
        except Exception as error:
            sqlstate = find_sqlstate(error)
            if sqlstate in ("55P03", "57014", "40P01"):
                raise LockNotGranted(f"locks on {', '.join(tables)} not granted within {lock_timeout_ms} ms") from None
            raise
        cursor.execute("SELECT set_config('statement_timeout', %s, true)", [previous])


def find_sqlstate(error: BaseException) -> str:
    seen = error
    while seen is not None:
        for attribute in ("sqlstate", "pgcode"):
            value = getattr(seen, attribute, None)
            if isinstance(value, str):
                return value
        seen = seen.__cause__ or seen.__context__
    return ""


def describe_exception(error: BaseException) -> dict:
    sqlstate = find_sqlstate(error)
    kind = "lock" if sqlstate in RETRYABLE_SQLSTATES else "error"
    message = f"{type(error).__name__}: {error}".strip()
    return {"kind": kind, "sqlstate": sqlstate, "message": message, "traceback": traceback.format_exc(limit=8)}


if __name__ == "__main__":
    with contextlib.suppress(BrokenPipeError):
        sys.exit(main())
