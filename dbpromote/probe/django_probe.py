"""Runs inside the target project's own interpreter and prints one JSON answer: its plan, or one migration applied.

This file is executed as a script (`python django_probe.py plan ...`), never imported by the worker: it may use
only the standard library, its sibling protocol.py (the answers, shared with the worker), ../lifeline.py (it dies
with the worker) and what the project
itself has installed (Django and its database driver). The database to use comes from DBPROMOTE_DATABASE in the
environment (never the command line, which `ps` shows): the target's connection string as the worker's libpq parsed
it, as a DATABASES entry, which replaces the host, port, name, user and password of the project's alias and adds
the string's other parameters (sslmode, ...) to its OPTIONS.
"""

import argparse
import contextlib
import copy
import functools
import hashlib
import importlib.util
import io
import json
import os
import re
import signal
import sys
import time
import traceback
from pathlib import Path


def _load(name: str, path: Path):
    """A file of dbpromote's by path, under a name no project uses."""
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve their annotations through sys.modules
    spec.loader.exec_module(module)
    return module


HERE = Path(__file__).resolve().parent
protocol = _load("dbpromote_probe_protocol", HERE / "protocol.py")
lifeline = _load("dbpromote_lifeline", HERE.parent / "lifeline.py")
compatibility = _load("dbpromote_probe_compatibility", HERE / "compatibility.py")
# This folder leaves sys.path, so that none of its files can shadow a module of the project.
sys.path[:] = [entry for entry in sys.path if Path(entry or ".").resolve() != HERE]


class LockNotGranted(Exception):
    """The locks a migration needs were not granted within lock_timeout."""


class Stopped(Exception):
    """A migration step stopped between two statements because the worker asked (SIGUSR1)."""


class BetweenStatements:
    """The statements a step ran, and its stop before the next one once the worker asks (its watcher saw the
    application wait too long behind a migration that is not atomic, which cannot be rolled back): installed with
    Django's own connection.execute_wrapper. The one that runs when asked finishes; none starts after it."""

    def __init__(self):
        self.asked, self.ran = False, []
        signal.signal(signal.SIGUSR1, self.ask)

    def ask(self, *_):
        self.asked = True

    def __call__(self, execute, sql, params, many, context):
        recording = "django_migrations" in sql  # the record of an applied migration is never left half-done
        if self.asked and not recording:
            raise Stopped()
        result = execute(sql, params, many, context)
        if not (recording or sql.lstrip()[:6].upper() == "SELECT"):
            self.ran.append(" ".join(sql.split())[:200])
        return result

    def stopped(self) -> protocol.FailureAnswer:
        applied = "; ".join(self.ran) or "none of its statements"
        return protocol.FailureAnswer(reason="stopped", message=f"stopped between statements; applied: {applied}")


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("command", choices=["plan", "plan-back", "fake", "prove", "models", "serve", "fix-session"])
    parser.add_argument("--settings", required=True)
    parser.add_argument("--database", default="default", help="the DATABASES alias the target is")
    parser.add_argument("--to", default="", help="app:migration, or empty for every leaf")
    parser.add_argument("--lock-timeout-ms", type=int, default=0)
    parser.add_argument("--statement-timeout-ms", type=int, default=0)
    parser.add_argument("--script", default="", help="fix-session: the Python fix script's file")
    parser.add_argument(
        "--previous", default="", help="plan: a JSON file of the previous release's tables (the `models` answer)"
    )
    parser.add_argument(
        "--state",
        default="[]",
        help="plan-back: JSON [[app, name], ...], the applied set to return to; prove: the previous release's",
    )
    args = parser.parse_args()
    lifeline.end_with_parent()
    out = sys.stdout
    # Everything Django or a migration prints goes to stderr: stdout carries only our JSON.
    sys.stdout = sys.stderr
    result = answer(lambda: setup_django(args))  # None when Django is set up
    if result is None and args.command == "serve":
        return serve(args, out)
    if result is None and args.command == "fix-session":
        return fix_session(args, out)
    if result is None:
        connection = connections_for(args)
        commands = {
            "plan": lambda: plan(
                connection, args.to, json.loads(Path(args.previous).read_text()) if args.previous else None
            ),
            "plan-back": lambda: plan_back(connection, json.loads(args.state)),
            "fake": lambda: fake(connection, args),
            "prove": lambda: prove(connection, json.loads(args.state)),
            "models": lambda: models(connection),
        }
        result = answer(commands[args.command])
    out.write(protocol.encode(result) + "\n")
    return 1 if isinstance(result, protocol.FailureAnswer) else 0


def answer(step):
    """What a step returns, or its failure as the answer the worker reads."""
    try:
        return step()
    except ProbeError as error:
        return protocol.FailureAnswer(reason=error.reason, message=str(error), variable=error.variable)
    except Exception as error:  # reported to the worker, which decides what it means
        return describe_exception(error)


class ProbeError(Exception):
    """A failure the probe recognises, with its reason (protocol.FailureReason)."""

    def __init__(self, reason: str, message: str, variable: str = ""):
        super().__init__(message)
        self.reason, self.variable = reason, variable


def setup_django(args) -> None:
    """Django set up as `manage.py` does it, with the target's connection in the alias the target is."""
    os.environ["DJANGO_SETTINGS_MODULE"] = args.settings
    sys.path.insert(0, os.getcwd())
    try:
        import django
        from django.conf import settings
    except ImportError as error:
        raise ProbeError("interpreter", f"Django is not importable: {error}") from None
    with settings_errors(args.settings):
        databases = settings.DATABASES
        if args.database not in databases:
            raise ProbeError(
                "alias", f"DATABASES has no alias {args.database!r} (it has {', '.join(sorted(databases))})"
            )
        args.project_database = copy.deepcopy(databases[args.database])  # as the project wrote it: retarget()
        entry = json.loads(os.environ["DBPROMOTE_DATABASE"]) if os.environ.get("DBPROMOTE_DATABASE") else None
        point_at_target(databases[args.database], args, entry)
        django.setup()


def point_at_target(database: dict, args, entry: dict | None) -> None:
    """The target's host, port, name, user and password (`entry`) in the alias, PostgreSQL where the settings named
    no engine (a DATABASE_URL read without a default), and the step's timeouts added to the project's options."""
    if entry:
        with_target(database, entry)
    if not database.get("ENGINE"):
        database["ENGINE"] = "django.db.backends.postgresql"
    options = database.setdefault("OPTIONS", {})
    if os.environ.get("DBPROMOTE_APPLICATION_NAME"):  # how the worker's watcher finds this process's sessions
        options["application_name"] = os.environ["DBPROMOTE_APPLICATION_NAME"]
    # One connection per request, closed after it: a pool (Django 5.1+) would keep connections to the database a
    # request planned on (on_database) and hand them to the next.
    options.pop("pool", None)
    timeouts = []
    if args.lock_timeout_ms:
        timeouts.append(f"-c lock_timeout={args.lock_timeout_ms}")
    if args.statement_timeout_ms:
        timeouts.append(f"-c statement_timeout={args.statement_timeout_ms}")
    if timeouts:
        # OPTIONS["options"] replaces PGOPTIONS, so extend what the project set instead of relying on PGOPTIONS.
        options["options"] = " ".join([options.get("options", ""), *timeouts]).strip()


@contextlib.contextmanager
def settings_errors(module: str):
    """Whatever stops the settings (or the apps they name) from loading, as a settings failure that names, where
    it can tell, the environment variable or setting that was missing."""
    try:
        yield
    except ProbeError:
        raise
    except Exception as error:
        message = f"{type(error).__name__}: {error}" if not isinstance(error, ImportError) else str(error)
        raise ProbeError("settings", f"{module}: {message}", missing_variable(error)) from None


def missing_variable(error: Exception) -> str:
    """The environment variable a settings module looked for and did not find, or the empty setting; '' if none."""
    if isinstance(error, KeyError) and error.args:
        where = traceback.extract_tb(error.__traceback__)[-1].filename
        if where == "<frozen os>" or where.endswith(os.sep + "os.py"):  # os.environ["NAME"]
            return str(error.args[0])
    for pattern in ENVIRONMENT_HINTS:
        if found := pattern.search(str(error)):
            return found.group(1)
    return ""


# django-environ: "Set the X environment variable"; Django itself: "The X setting must not be empty."
ENVIRONMENT_HINTS = [
    re.compile(r"Set the (\w+) environment variable"),
    re.compile(r"The (\w+) setting must not be empty"),
]


def connections_for(args):
    """The connection of the target's alias: the only one a promotion opens."""
    from django.db import connections

    return connections[args.database]


def with_target(database: dict, entry: dict) -> None:
    """A target's connection (a DATABASES entry made from one parse of its string) in the alias's entry: its keys
    replace the project's, its other libpq parameters join the project's OPTIONS (its `options` after theirs)."""
    entry = dict(entry)
    extra = dict(entry.pop("OPTIONS", {}))
    database.update(entry)
    options = database.setdefault("OPTIONS", {})
    if extra.get("options") and options.get("options"):
        extra["options"] = f"{options['options']} {extra['options']}"
    options.update(extra)


def plan(connection, to: str, previous: dict | None = None):
    """What `migrate` would apply up to `to` (every leaf when empty), and what `makemigrations` would write; each
    migration with what it breaks for the running release (its tables `previous` when given, see
    compatibility.breaking_changes)."""
    from django.db.migrations.executor import MigrationExecutor

    executor = MigrationExecutor(connection)
    loader = executor.loader
    conflicts = {app: sorted(names) for app, names in loader.detect_conflicts().items()}
    applied = sorted((app, name) for app, name in loader.applied_migrations)
    result = protocol.PlanAnswer(applied=applied, migrations=[], conflicts=conflicts)
    if conflicts:
        return result
    result.file_hashes = file_hashes(loader)
    result.model_changes = model_changes(loader)
    result.unknown_applied, result.partial_squashes = history_findings(connection, loader)
    if to:
        app, _, name = to.partition(":")
        if (app, name) not in loader.graph.nodes:
            raise ProbeError("target", f"{to} is not a migration of this project")
        targets = [(app, name)]
    else:
        targets = loader.graph.leaf_nodes()
    steps = executor.migration_plan(targets)
    breaking = compatibility.breaking_changes(loader, connection, steps, previous)
    for (migration, backwards), sql, found in zip(steps, SqlCollector(executor).plan_sql(steps), breaking, strict=True):
        if backwards:
            raise ProbeError(
                "backwards", f"{to} is behind the database's applied state ({migration.app_label}.{migration.name})"
            )
        result.migrations.append(describe_migration(migration, sql, loader.graph))
        result.migrations[-1].breaking = [protocol.BreakingChange(**each) for each in found]
        for operation in migration.operations:
            if type(operation).__name__.endswith("Extension") and isinstance(getattr(operation, "name", None), str):
                result.extensions.setdefault(operation.name, f"{migration.app_label}.{migration.name}")
    return result


def models(connection):
    """The tables this tree's own models define, and what makemigrations would write for them: the previous
    release's code as it is, where it disagrees with its migrations."""
    from django.db.migrations.loader import MigrationLoader

    loader = MigrationLoader(None, ignore_no_migrations=True)
    return protocol.ModelsAnswer(tables=compatibility.current_models(connection), changes=model_changes(loader))


def prove(connection, applied: list):
    """The previous release's models (the state at `applied`) run against this database (compatibility.prove)."""
    return protocol.ProofAnswer(**compatibility.prove(connection, applied, find_sqlstate))


def file_hashes(loader) -> dict:
    """The SHA-256 of every migration's file, by app.name: a file edited after it was applied shows by its hash."""
    hashes = {}
    for (app, name), migration in loader.graph.nodes.items():
        source = getattr(sys.modules.get(type(migration).__module__), "__file__", None)
        if source:
            hashes[f"{app}.{name}"] = hashlib.sha256(Path(source).read_bytes()).hexdigest()[:16]
    return hashes


def replay(connection, into: str, plus: str, cache: str, salt: str):
    """The database's recorded history (see history()) and the key of the schema it produces (`replay_key`: that
    history and `plus`, every migration file, what else decides a replay in this interpreter (code_fingerprint) and
    the worker's `salt`), with what drift needs to judge names: the names the migrations give themselves, those a
    migration not yet applied refers to, and the live names Django generated.

    The names come from the replay the worker keeps under that key in `cache` when it has one (`replay`
    "cached"). Otherwise exactly those migrations, and `plus`, are applied to the empty database `into` on the same
    server, in dependency order, as `migrate` applies them ("replayed"); without `into` the answer only says that
    a replay is needed ("needed"), so the worker creates the scratch database only then."""
    from django.db.migrations.executor import MigrationExecutor

    recorded = history(connection)
    if recorded.conflicts:
        return recorded
    keys = {tuple(key) for key in recorded.applied} | ({tuple(plus.split(":", 1))} if plus else set())
    recorded.replay_key = replay_key(sorted(keys), recorded.file_hashes, salt)
    kept = Path(cache, f"{recorded.replay_key}.json") if cache else None
    if kept is not None and kept.is_file():
        names = json.loads(kept.read_text())
        recorded.explicit_names, recorded.names_used_later = names["explicit_names"], names["names_used_later"]
        recorded.replay = "cached"
    elif not into:
        recorded.replay = "needed"
        return recorded
    else:
        live = connection.settings_dict["NAME"]
        connection.close()
        connection.settings_dict["NAME"] = into
        executor = MigrationExecutor(connection)
        loader = executor.loader
        # On an empty database the loader uses a squash instead of what it replaces: it stands for them when all are.
        keys |= {squash for squash, migration in loader.replacements.items() if set(migration.replaces) <= keys}
        everything = executor.migration_plan(loader.graph.leaf_nodes(), clean_start=True)
        state = executor.migrate([], plan=[(m, False) for m, _ in everything if (m.app_label, m.name) in keys])
        recorded.explicit_names = explicit_names(state, connection)
        recorded.names_used_later = sorted(
            name for migration, _ in everything if (migration.app_label, migration.name) not in keys
            for name in names_referred_to(migration)
        )  # fmt: skip
        connection.close()
        connection.settings_dict["NAME"] = live
        recorded.replay = "replayed"
    tables = {name.rsplit(".", 1)[0] for name in recorded.explicit_names}
    recorded.django_named = django_named(connection, tables)
    connection.close()
    return recorded


def replay_key(keys: list, file_hashes: dict, salt: str) -> str:
    """What decides the schema a replay of `keys` makes, as one hash: those migrations, every migration file (a
    migration not applied yet names what it will find), this interpreter's code (code_fingerprint) and the
    worker's salt (the server, its extensions, the RLS settings)."""
    document = json.dumps([keys, sorted(file_hashes.items()), code_fingerprint(), salt])
    return hashlib.sha256(document.encode()).hexdigest()[:32]


@functools.cache
def code_fingerprint() -> str:
    """The code besides the migration files that decides what a replay makes, read once per process: Python and
    every installed distribution's version (Django's schema editor; the packages whose fields and functions the
    migrations import), and each of the project's own source files by size and modification time (a field class
    of its own edited in place). Stat, not content: a checkout that touches every file only costs a replay."""
    from importlib import metadata

    distributions = sorted(f"{d.metadata['Name']}=={d.version}" for d in metadata.distributions())
    files = []
    for root, directories, names in os.walk(os.getcwd()):
        if "pyvenv.cfg" in names:  # a virtualenv inside the project: its packages are the distributions above
            directories.clear()
            continue
        directories[:] = sorted(d for d in directories if not d.startswith(".") and d not in SKIPPED_DIRECTORIES)
        for name in sorted(n for n in names if n.endswith(".py")):
            stat = os.stat(os.path.join(root, name))
            files.append(f"{os.path.relpath(os.path.join(root, name))}:{stat.st_size}:{stat.st_mtime_ns}")
    return hashlib.sha256("\n".join([sys.version, *distributions, *files]).encode()).hexdigest()


SKIPPED_DIRECTORIES = {"__pycache__", "node_modules", "site-packages"}


def explicit_names(state, connection) -> list[str]:
    """ "table.name" of each index and constraint the migrations name themselves: the model state holds exactly those
    (Meta.indexes and Meta.constraints as the migrations wrote them, AddIndex, AddConstraint, RenameIndex); what
    unique_together, index_together, db_index, a foreign key or a field's check makes is named by the schema editor
    and is not there. A name longer than the server takes is cut as the server cuts it."""
    from django.db.backends.utils import truncate_name

    longest = connection.ops.max_name_length()
    names = set()
    for (app_label, model_name), model in state.models.items():
        table = model.options.get("db_table") or truncate_name(f"{app_label}_{model_name}", longest)
        for item in [*model.options.get("indexes", []), *model.options.get("constraints", [])]:
            if getattr(item, "name", None):
                names.add(f"{table}.{item.name[:longest]}")
    return sorted(names)


def names_referred_to(migration) -> set[str]:
    """The index and constraint names a migration's operations find by name (to remove, rename or alter)."""
    names = set()
    for operation in migration.operations:
        kind = type(operation).__name__
        if kind in ("RemoveIndex", "RemoveConstraint", "AlterConstraint"):
            names.add(operation.name)
        elif kind == "RenameIndex" and operation.old_name:
            names.add(operation.old_name)
    return names


def django_named(connection, tables: set[str]) -> list[str]:
    """ "table.name" of the indexes and constraints on `tables` whose name is the one Django's schema editor generates
    for them (from their table, columns and kind: unique_together, index_together, db_index, a field's check, a
    foreign key), found as Django finds them, by introspection."""
    suffixes = ("", "_idx", "_uniq", "_check", "_like")
    named = []
    editor = connection.SchemaEditorClass(connection)  # for its naming alone: nothing is executed
    with connection.cursor() as cursor:
        existing = set(connection.introspection.table_names(cursor))
        for table in sorted(tables & existing):
            for name, found in connection.introspection.get_constraints(cursor, table).items():
                columns = found["columns"] or []
                generated = {editor._create_index_name(table, columns, suffix) for suffix in suffixes}
                if found["foreign_key"]:
                    to_table, to_column = found["foreign_key"]
                    generated.add(editor._create_index_name(table, columns, f"_fk_{to_table}_{to_column}"))
                if name in generated:
                    named.append(f"{table}.{name}")
    return named


def history(connection):
    """What the database records as applied and what the project's files say of it, without planning: the
    conflicts, rows no file accounts for, partly applied squashes and each file's hash (what drift needs)."""
    from django.db.migrations.loader import MigrationLoader
    from django.db.migrations.recorder import MigrationRecorder

    loader = MigrationLoader(connection)
    conflicts = {app: sorted(names) for app, names in loader.detect_conflicts().items()}
    applied = sorted((app, name) for app, name in loader.applied_migrations)
    result = protocol.PlanAnswer(applied=applied, migrations=[], conflicts=conflicts, file_hashes=file_hashes(loader))
    result.unknown_applied, result.partial_squashes = history_findings(connection, loader)
    rows = MigrationRecorder(connection).migration_qs.values_list("app", "name", "applied")
    result.applied_at = {f"{app}.{name}": applied.isoformat() for app, name, applied in rows}
    return result


def history_findings(connection, loader) -> tuple[list, list]:
    """django_migrations rows of installed apps that no migration file (nor squash) accounts for, and squashes
    whose replaced migrations are only partly applied (Django then applies the rest of those, not the squash)."""
    from django.db.migrations.recorder import MigrationRecorder

    recorded = set(MigrationRecorder(connection).applied_migrations())
    replaced = {key for squash in loader.replacements.values() for key in squash.replaces}
    unknown = sorted(
        key
        for key in recorded
        if key[0] in loader.migrated_apps
        and key not in loader.graph.nodes
        and key not in replaced
        and key not in loader.replacements
    )
    partial = sorted(
        f"{app}.{name} ({sum(key in recorded for key in squash.replaces)} of {len(squash.replaces)} applied)"
        for (app, name), squash in loader.replacements.items()
        if 0 < sum(key in recorded for key in squash.replaces) < len(squash.replaces)
    )
    return unknown, partial


def model_changes(loader) -> list:
    """The migrations `makemigrations --check` would write, per app, computed as it computes them.

    Translations are deactivated first, as every management command does (`no_translations`): otherwise a package
    whose verbose names are translated into the site's language shows changes that are not there.
    """
    from django.apps import apps
    from django.db.migrations.autodetector import MigrationAutodetector
    from django.db.migrations.questioner import NonInteractiveMigrationQuestioner
    from django.db.migrations.state import ProjectState
    from django.utils import translation

    translation.deactivate_all()
    autodetector = MigrationAutodetector(
        loader.project_state(), ProjectState.from_apps(apps), NonInteractiveMigrationQuestioner(dry_run=True)
    )
    changes = autodetector.changes(graph=loader.graph)
    return [
        protocol.AppChanges(
            app=app,
            package=is_package(apps.get_app_config(app).path),
            operations=[operation.describe() for migration in migrations for operation in migration.operations],
        )
        for app, migrations in sorted(changes.items())
    ]


def is_package(app_path: str) -> bool:
    """Whether an app is installed from a package (its migrations are not the project's to write)."""
    path = Path(app_path).resolve()
    return "site-packages" in path.parts or "dist-packages" in path.parts or Path.cwd() not in path.parents


def plan_back(connection, state: list):
    """The migrations to reverse, in order, to return to the applied set `state` (e.g. recorded by a backup)."""
    from django.db.migrations.executor import MigrationExecutor

    executor = MigrationExecutor(connection)
    loader, graph = executor.loader, executor.loader.graph
    wanted = {tuple(pair) for pair in state}
    unknown = sorted(f"{app}.{name}" for app, name in wanted - set(graph.nodes))
    if unknown:
        raise ProbeError("state", f"the state to return to holds migrations this project does not have: {unknown}")
    targets = []
    for app in sorted({app for app, _ in graph.nodes}):
        mine = [key for key in wanted if key[0] == app]
        latest = [key for key in mine if set(mine) <= set(graph.forwards_plan(key))]
        if mine and not latest:
            raise ProbeError("state", f"the state to return to has several branches of {app}: {sorted(mine)}")
        targets.append(latest[0] if mine else (app, None))
    steps = executor.migration_plan(targets)
    forwards = [f"{m.app_label}.{m.name}" for m, backwards in steps if not backwards]
    if forwards:
        raise ProbeError("state", f"returning to that state would apply {forwards}, which are not applied here")
    applied = sorted((app, name) for app, name in loader.applied_migrations)
    sqls = SqlCollector(executor).plan_sql(steps)
    migrations = [describe_migration(m, sql, graph) for (m, _), sql in zip(steps, sqls, strict=True)]
    return protocol.PlanAnswer(applied=applied, migrations=migrations)


def describe_migration(migration, sql: list[str], graph):
    """A migration as the plan shows it: its operations, whether it can be reversed, its SQL, the migrations it
    depends on directly and the deploy phase its authors marked it with."""
    when, delay = safemigrate_marker(migration)
    return protocol.MigrationInfo(
        app=migration.app_label,
        name=migration.name,
        atomic=migration.atomic,
        reversible=is_reversible(migration),
        operations=[describe_operation(operation) for operation in migration.operations],
        sql=sql,
        parents=sorted(f"{p.key[0]}.{p.key[1]}" for p in graph.node_map[(migration.app_label, migration.name)].parents),
        marker=when,
        marker_delay_s=delay,
    )


SAFEMIGRATE_WHEN = ("always", "before_deploy", "after_deploy")


def safemigrate_marker(migration) -> tuple[str, float | None]:
    """django-safemigrate's `safe` attribute as (when, delay in seconds): `Safe.after_deploy(delay=...)` (5.0 on),
    the bare `Safe.after_deploy` (a classmethod), the Enum members of 2.x to 4.x and 1.x's True/False; ('', None)
    when the migration has none (read without importing django-safemigrate, which the project may not have)."""
    safe = getattr(migration, "safe", None)
    if callable(safe) and not hasattr(safe, "when"):
        safe = safe()
    if isinstance(safe, bool):
        return ("before_deploy" if safe else "after_deploy"), None
    when = getattr(safe, "when", safe)
    when = getattr(when, "value", when)
    if when not in SAFEMIGRATE_WHEN:
        return "", None
    delay = getattr(safe, "delay", None)
    return when, (delay.total_seconds() if delay is not None else None)


def is_reversible(migration) -> bool:
    return all(operation.reversible for operation in migration.operations)


class SqlCollector:
    """The SQL `sqlmigrate` prints for each migration of a plan, collected in one pass over the plan.

    sqlmigrate (the loader's collect_sql) rebuilds the project state from the graph for each migration: planning
    200 pending migrations that way is quadratic (4.1x `showmigrations --plan` on a Wagtail site, see
    benchmarks/plan.py). Here the state is carried from one migration to the next, as `migrate` carries it.
    """

    def __init__(self, executor):
        self.loader, self.connection, self.state = executor.loader, executor.connection, None

    def plan_sql(self, steps) -> list[list[str]]:
        return [self.migration_sql(migration, backwards) for migration, backwards in steps]

    def migration_sql(self, migration, backwards: bool) -> list[str]:
        """Its statements, or a line saying why there are none.

        Some operations read the live schema to write their SQL (dropping an index_together looks its constraint
        up): where the plan's earlier migrations are not applied yet, that SQL cannot be known in advance.
        """
        if backwards and not is_reversible(migration):
            self.state = None
            return []
        try:
            with self.connection.schema_editor(collect_sql=True, atomic=migration.atomic) as editor:
                if self.state is None:
                    self.state = self.loader.project_state((migration.app_label, migration.name), at_end=False)
                step = migration.unapply if backwards else migration.apply
                self.state = step(self.state, editor, collect_sql=True)
        except Exception as error:  # the migration itself will tell when it runs
            self.state = None  # half-applied to the state: the next migration starts from the graph
            return [f"{protocol.UNKNOWN_SQL}: {type(error).__name__}"]
        return editor.collected_sql


def describe_operation(operation):
    """Its kind and description, and what risk classification needs: the model, a field's null and default."""
    info = protocol.OperationInfo(kind=type(operation).__name__, description=operation.describe())
    model_name = getattr(operation, "model_name", None) or getattr(operation, "name", None)
    if isinstance(model_name, str):
        info.model = model_name.lower()
    field = getattr(operation, "field", None)
    if field is not None:
        info.null = bool(field.null)
        info.has_default = field.has_default() or getattr(field, "db_default", None) is not None
    info.reversible = bool(operation.reversible)
    if info.kind == "RunPython":
        info.imports_models = any(uses_current_models(f) for f in (operation.code, operation.reverse_code) if f)
    return info


# `from shop.models import Order` inside a function (Django's own modules are not the project's models).
MODELS_IMPORT = re.compile(
    r"^\s*(from\s+(?!django\b)[\w.]+\.models\s+import|import\s+(?!django\b)[\w.]+\.models\b)", re.M
)


def uses_current_models(function) -> bool:
    """The function reaches a model class of the project's current code (imported at the migration's top or
    inside it) instead of the historical one `apps.get_model` gives."""
    import inspect

    from django.db.models import Model

    code = getattr(function, "__code__", None)
    if code is None:
        return False
    for name in code.co_names:
        value = getattr(function, "__globals__", {}).get(name)
        if isinstance(value, type) and issubclass(value, Model):
            return True
    try:
        return bool(MODELS_IMPORT.search(inspect.getsource(function)))
    except (OSError, TypeError):
        return False


def migrate_one(connection, args):
    """Apply exactly one migration, the next one its dependencies allow, as `migrate APP NAME` applies it (the
    backend's preparation, pre_migrate with the plan) on the project state the step's last migration left in this
    process when it is the database's (kept_state); post_migrate waits for the step's end (after_migrating), as
    `migrate` sends it once after its whole plan."""
    from django.core.management.sql import emit_pre_migrate_signal
    from django.db.migrations.executor import MigrationExecutor

    key = (args.app, args.name)
    executor = MigrationExecutor(connection)
    if key not in executor.loader.graph.nodes:
        raise ProbeError("target", f"{args.app}.{args.name} is not a migration of this project")
    if key in executor.loader.applied_migrations:
        return protocol.StepAnswer(already_applied=True, duration_s=0.0)
    plan = executor.migration_plan([key])
    steps = [(m.app_label, m.name, backwards) for m, backwards in plan]
    if steps != [(args.app, args.name, False)]:
        raise ProbeError("order", f"{args.app}.{args.name} is not the next migration to apply; the plan is {steps}")
    executor.loader.check_consistent_history(connection)
    signal_handlers()
    state = kept_state(executor)

    def run():
        connection.prepare_database()
        emit_pre_migrate_signal(0, False, connection.alias, stdout=io.StringIO(), apps=state.apps, plan=plan)
        after = executor.migrate([key], plan=plan, state=state)
        KEPT[state_key(executor.loader.graph, {*executor.loader.applied_migrations, key})] = after

    return run_locked(args, run)


# The project state after the last migration this process applied, under the migration graph and applied set it
# stands for: the next migration of the step starts from it instead of rendering the project's models anew, as
# Django's own `migrate` carries one state through its plan. Rendering it for each migration (twice, and once more
# for post_migrate) was most of a migration's cost: a Wagtail site's 212 migrations took 56.8 s that way, 23.0 s
# with the state kept (benchmarks/migrate.py; `manage.py migrate` 11.2 s).
# At most one; any other request that migrates (a failure, a reverse, a fake) or moves to another database drops
# it, and a state whose graph or applied set is not exactly the database's is never used.
KEPT: dict = {}


def state_key(graph, applied) -> tuple[frozenset, frozenset]:
    return frozenset(graph.nodes), frozenset(applied)


def kept_state(executor):
    """The project state at the database's applied migrations: the kept one when it is that, else rendered anew;
    taken out of KEPT either way (a migration that fails leaves it half-changed)."""
    loader = executor.loader
    kept = KEPT.pop(state_key(loader.graph, loader.applied_migrations), None)
    KEPT.clear()
    return kept if kept is not None else executor._create_project_state(with_applied_migrations=True)


@functools.cache
def signal_handlers() -> None:
    """Each installed app's `management` module imported, as `migrate` does first: apps connect their migrate
    signal handlers there."""
    from importlib import import_module

    from django.apps import apps
    from django.utils.module_loading import module_has_submodule

    for app_config in apps.get_app_configs():
        if module_has_submodule(app_config.module, "management"):
            import_module(".management", app_config.name)


def after_migrating(connection, steps: list) -> protocol.StepAnswer:
    """Django's post_migrate, sent once after a step's migrations as `migrate` sends it after its plan (the content
    types and permissions of new models, and whatever else the project's apps do then): with the project state
    the database is at, its real apps' models rendered again as `migrate` renders them. `steps`: the step's
    migrations, [app, name, backwards] each, the plan the signal carries."""
    from django.apps import apps
    from django.core.management.sql import emit_post_migrate_signal
    from django.db.migrations.executor import MigrationExecutor
    from django.db.migrations.state import ModelState

    started = time.monotonic()
    signal_handlers()
    executor = MigrationExecutor(connection)
    state = kept_state(executor)
    graph = executor.loader.graph
    plan = [(graph.nodes[(app, name)], backwards) for app, name, backwards in steps if (app, name) in graph.nodes]
    state.clear_delayed_apps_cache()
    post_migrate_apps = state.apps
    # As django/core/management/commands/migrate.py does before the signal: real apps' models with relationships.
    with post_migrate_apps.bulk_update():
        model_keys = [(model.app_label, model.name_lower) for model in post_migrate_apps.real_models]
        for model_key in model_keys:
            post_migrate_apps.unregister_model(*model_key)
    post_migrate_apps.render_multiple([ModelState.from_model(apps.get_model(*key)) for key in model_keys])
    emit_post_migrate_signal(0, False, connection.alias, stdout=io.StringIO(), apps=post_migrate_apps, plan=plan)
    return protocol.StepAnswer(already_applied=False, duration_s=round(time.monotonic() - started, 3))


def fake(connection, args):
    """Record the next migration as applied without running it (`migrate APP NAME --fake`): someone applied its
    effect by hand, and the worker proved the schema equals what applying it gives."""
    from django.core.management import call_command
    from django.db.migrations.executor import MigrationExecutor

    app, _, name = args.to.partition(":")
    executor = MigrationExecutor(connection)
    if (app, name) not in executor.loader.graph.nodes:
        raise ProbeError("target", f"{app}.{name} is not a migration of this project")
    if (app, name) in executor.loader.applied_migrations:
        return protocol.StepAnswer(already_applied=True, duration_s=0.0)
    steps = [(m.app_label, m.name, backwards) for m, backwards in executor.migration_plan([(app, name)])]
    if steps != [(app, name, False)]:
        raise ProbeError("order", f"{app}.{name} is not the next migration to apply; the plan is {steps}")
    KEPT.clear()
    started = time.monotonic()
    call_command("migrate", app, name, fake=True, database=args.database, interactive=False, stdout=io.StringIO())
    return protocol.StepAnswer(already_applied=False, duration_s=round(time.monotonic() - started, 3))


def reverse_one(connection, args):
    """Reverse exactly one applied migration, which no applied migration may depend on."""
    from django.db.migrations.executor import MigrationExecutor

    key = (args.app, args.name)
    executor = MigrationExecutor(connection)
    graph, applied = executor.loader.graph, executor.loader.applied_migrations
    if key not in graph.nodes:
        raise ProbeError("target", f"{args.app}.{args.name} is not a migration of this project")
    if key not in applied:
        return protocol.StepAnswer(already_applied=True, duration_s=0.0)
    dependents = sorted(f"{app}.{name}" for app, name in graph.node_map[key].children if (app, name) in applied)
    if dependents:
        raise ProbeError("order", f"{args.app}.{args.name} cannot be reversed before {dependents}")
    migration = graph.nodes[key]
    KEPT.clear()
    return run_locked(args, lambda: executor.migrate([], plan=[(migration, True)]))


def serve(args, out) -> int:
    """Answer one request per line (JSON) until stdin closes: {"app", "name", "backwards"} applies or reverses one
    migration, {"plan": to} plans, {"replay": {...}} reads the history a drift check replays (replay()), on the
    target or, with "database" (a DATABASES entry), on another database of the same project for that request only
    (a fleet's members planned and checked by one process).

    Django starts once for a whole environment step instead of once per request (~0.4 s each); each request
    still runs in its own database session (closed after it), so a failed migration leaves nothing behind for the
    next; what is kept between them is the project state after the last migration (KEPT), never a connection.
    {"after_migrating": [[app, name, backwards], ...]} sends post_migrate once after a step's migrations.
    {"retarget": entry, ...} points the alias at another database for the requests after it (a lane's next
    member: retarget()).
    """
    signal.signal(signal.SIGUSR1, signal.SIG_IGN)  # a stop asked for between two steps stops nothing
    for line in sys.stdin:
        request = json.loads(line)
        connection = connections_for(args)
        result = answer(lambda request=request, connection=connection: handle(args, connection, request))
        connection.close()
        out.write(protocol.encode(result) + "\n")
        out.flush()
    return 0


def handle(args, connection, request: dict):
    """One request of serve()'s."""
    if "retarget" in request:
        return retarget(args, request)
    if "plan" in request:
        return on_database(connection, request.get("database"), lambda: plan(connection, request["plan"]))
    if "replay" in request:
        asked = request["replay"]
        return on_database(
            connection,
            request.get("database"),
            lambda: replay(connection, asked["into"], asked["plus"], asked["cache"], asked["salt"]),
        )
    if "prove" in request:
        return prove(connection, request["prove"])
    if "after_migrating" in request:
        return after_migrating(connection, request["after_migrating"])
    lock_timeout_ms = request.get("lock_timeout_ms") or args.lock_timeout_ms
    step = argparse.Namespace(
        **vars(args) | {"app": request["app"], "name": request["name"], "lock_timeout_ms": lock_timeout_ms}
    )
    with session_lock_timeout(connection, lock_timeout_ms):
        return (reverse_one if request.get("backwards") else migrate_one)(connection, step)


def retarget(args, request: dict):
    """The alias pointed at another database (`request["retarget"]`, a DATABASES entry) with its own timeouts, as
    if the process had started for it: a fresh copy of the alias as the project wrote it, the target's entry and
    timeouts on it (point_at_target), Django's defaults filled in, and a new connection object, so nothing of the
    database before (its connection, its OPTIONS, what Django cached of its server) reaches the next."""
    from django.db import DEFAULT_DB_ALIAS, connections

    KEPT.clear()  # nothing of one database's steps reaches the next
    connections[args.database].close()
    args.lock_timeout_ms = request.get("lock_timeout_ms", 0)
    args.statement_timeout_ms = request.get("statement_timeout_ms", 0)
    database = copy.deepcopy(args.project_database)
    point_at_target(database, args, request["retarget"])
    connections.settings[args.database] = connections.configure_settings({DEFAULT_DB_ALIAS: database})[DEFAULT_DB_ALIAS]
    del connections[args.database]
    return protocol.StepAnswer(already_applied=False, duration_s=0.0)


@contextlib.contextmanager
def session_lock_timeout(connection, lock_timeout_ms: int):
    """The request's sessions with this lock_timeout (a migration of concurrent operations waits for old snapshots
    by design: it gets a longer one), the session's own after."""
    options = connection.settings_dict.setdefault("OPTIONS", {})
    before = options.get("options", "")
    connection.close()
    options["options"] = " ".join(
        [re.sub(r"-c lock_timeout=\d+", "", before).strip(), f"-c lock_timeout={lock_timeout_ms}"]
    )
    try:
        yield
    finally:
        connection.close()
        options["options"] = before


def on_database(connection, entry: dict | None, work):
    """`work()` on the database `entry` connects to (the target's when None); the alias points back at the target
    after."""
    if not entry:
        return work()
    own = dict(connection.settings_dict) | {"OPTIONS": dict(connection.settings_dict.get("OPTIONS", {}))}
    connection.close()
    with_target(connection.settings_dict, entry)
    try:
        return work()
    finally:
        connection.close()
        connection.settings_dict.update(own)


def fix_session(args, out) -> int:
    """One transaction on the project's own connection, driven by the worker line by line (dbpromote/fixes.py drives
    the same steps over its own connection for an SQL script): {"sql", "params"} runs a statement and answers its
    rows; {"run": true} runs the Python fix script (Django set up, the ORM inside this transaction); {"end":
    "commit" | "rollback"} ends it. A failure is answered and ends the session, rolled back."""
    from django.db import transaction

    code = compile(Path(args.script).read_text(), args.script, "exec")
    connection = connections_for(args)
    with transaction.atomic(using=args.database):
        for line in sys.stdin:
            request = json.loads(line)
            if "end" in request:
                transaction.set_rollback(request["end"] != "commit", using=args.database)
                break
            result = answer(lambda request=request: fix_step(connection, code, request))
            out.write(protocol.encode(result) + "\n")
            out.flush()
            if isinstance(result, protocol.FailureAnswer):
                transaction.set_rollback(True, using=args.database)
                break
        else:
            transaction.set_rollback(True, using=args.database)  # the worker went away: nothing is committed
    out.write(protocol.encode(protocol.StepAnswer(already_applied=False, duration_s=0.0)) + "\n")
    out.flush()
    return 0


def fix_step(connection, code, request):
    if request.get("run"):
        exec(code, {"__name__": "__fix__"})  # noqa: S102 - the fix script the approver read
        return protocol.RowsAnswer()
    with connection.cursor() as cursor:
        cursor.execute(request["sql"], request.get("params"))
        return protocol.RowsAnswer(rows=[list(row) for row in cursor.fetchall()] if cursor.description else [])


def run_locked(args, run):
    """Run one migration step with locks taken first; the outcome as the worker reads it."""
    from django.db.migrations.executor import MigrationExecutor

    if not getattr(MigrationExecutor, "dbpromote_locks_first", False):
        for method in ("apply_migration", "unapply_migration"):
            setattr(MigrationExecutor, method, locks_first(getattr(MigrationExecutor, method)))
        MigrationExecutor.dbpromote_locks_first = True
    from django.db import connections

    started = time.monotonic()
    HELD.clear()
    STEP_LOCK_TIMEOUT["ms"] = args.lock_timeout_ms  # this step's, this target's: read when it locks
    between = BetweenStatements()
    try:
        with connections[args.database].execute_wrapper(between):
            run()
    except LockNotGranted as error:
        return protocol.FailureAnswer(reason="lock", sqlstate="55P03", message=str(error))
    except Stopped:
        return between.stopped()
    except Exception as error:
        return describe_exception(error)
    return protocol.StepAnswer(already_applied=False, duration_s=round(time.monotonic() - started, 3), **HELD)


# The table locks the last atomic step took first and how long it held them, for run_locked's answer: exact where
# sampling every 250 ms misses a migration that is over in 150 ms.
HELD: dict = {}
# The lock_timeout of the step in progress (its target's, or the request's own), read by locks_first when it locks:
# one process serves target after target (a lane) and request after request.
STEP_LOCK_TIMEOUT: dict = {"ms": 0}


def locks_first(step):
    """Wrap apply/unapply_migration so an atomic migration takes every table lock it needs in one statement first.

    Otherwise a migration that alters two tables holds the first lock (queueing the application's queries behind
    it) while waiting for the second; lock_timeout bounds each wait, not their sum. Reversing also records the
    migration as unapplied in the same transaction.
    """
    from django.db import transaction

    def step_with_locks_first(self, state, migration, *args, fake=False, **kwargs):
        if fake or not migration.atomic:
            return step(self, state, migration, *args, fake=fake, **kwargs)
        with transaction.atomic(using=self.connection.alias):
            tables = tables_to_lock(self.connection, state, migration)
            if tables:
                lock_tables(self.connection, tables, STEP_LOCK_TIMEOUT["ms"])
            taken = time.monotonic()
            result = step(self, state, migration, *args, fake=fake, **kwargs)
        if tables:
            HELD.update(strongest_lock=ACCESS_EXCLUSIVE, lock_held_s=round(time.monotonic() - taken, 3))
        return result

    return step_with_locks_first


def tables_to_lock(connection, state, migration) -> list[str]:
    """Existing tables the migration's operations touch (before or after it), or reference by a new foreign key."""
    from django.db.migrations.state import ProjectState

    existing = set(connection.introspection.table_names())
    # The state after it from a copy of the models alone: mutate_state(preserve=True) would copy the rendered
    # models too (StateApps.clone): 6.5 s of the 36 s the probes spent migrating a group of 30 (py-spy).
    after = ProjectState({key: model.clone() for key, model in state.models.items()}, state.real_apps)
    states = (state, migration.mutate_state(after, preserve=False))
    tables = set()
    for operation in migration.operations:
        models = [(migration.app_label, getattr(operation, attribute, None)) for attribute in MODEL_ATTRIBUTES]
        field = getattr(operation, "field", None)
        remote = getattr(getattr(field, "remote_field", None), "model", None)
        if isinstance(remote, str) and "." in remote:
            models.append(tuple(remote.lower().split(".", 1)))
        for app_label, name in models:
            for model_state in filter(None, (each.models.get((app_label, name)) for each in states if name)):
                tables.add(model_state.options.get("db_table") or f"{app_label}_{name}")
    return sorted(tables & existing)


ACCESS_EXCLUSIVE = "AccessExclusiveLock"  # as pg_locks names the mode lock_tables takes
MODEL_ATTRIBUTES = ("model_name_lower", "name_lower", "old_name_lower", "new_name_lower")


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
            if sqlstate in protocol.LOCK_SQLSTATES or sqlstate == protocol.QUERY_CANCELED:
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


def describe_exception(error: BaseException):
    sqlstate = find_sqlstate(error)
    return protocol.FailureAnswer(
        reason="lock" if sqlstate in protocol.LOCK_SQLSTATES else "error",
        sqlstate=sqlstate,
        message=f"{type(error).__name__}: {error}".strip(),
        traceback=traceback.format_exc(limit=8),
    )


if __name__ == "__main__":
    with contextlib.suppress(BrokenPipeError):
        sys.exit(main())
