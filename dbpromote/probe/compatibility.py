"""Which planned migrations the running release survives: runs inside the project's interpreter, with the probe.

The running release's models are the migration state at the database's applied migrations (what the previous
release's code was migrated with), taken from the project's own files: no checkout of the old release is needed.
`breaking_changes` compares those models with the database each planned migration leaves, from the migration
states alone; `prove` runs those models against a database that has migrated, through Django's query compiler.

Like django_probe.py, this file may use only the standard library and Django.
"""

import copy
import random
import re
import time
import uuid
from dataclasses import asdict, dataclass
from dataclasses import field as attribute
from datetime import date, datetime, timedelta, timezone
from datetime import time as clock
from decimal import Decimal

# Each statement of the proof is bounded: it runs on staging, where someone may hold a lock.
PROOF_STATEMENT_TIMEOUT_MS = 5000
PROOF_LOCK_TIMEOUT_MS = 2000
# Column types a column may change to and keep every value the previous release reads and writes.
WIDER_INTEGERS = ["smallint", "integer", "bigint"]


@dataclass(frozen=True)
class Column:
    field: str
    null: bool
    db_default: bool
    type: str  # the database type, or "-> app.model" for a relation
    primary_key: bool


@dataclass
class Table:
    model: str  # app.Model
    columns: dict[str, Column] = attribute(default_factory=dict)
    uniques: set = attribute(default_factory=set)  # tuples of columns
    checks: set = attribute(default_factory=set)  # constraint names


def leaves(graph, keys: set) -> list:
    """The newest of `keys`: those no other key of the set depends on."""
    parents = {parent.key for key in keys for parent in graph.node_map[key].parents}
    return sorted(keys - parents)


def previous_state(loader, applied):
    """The models of the release that migrated the database to `applied`: the migration state there."""
    keys = {tuple(key) for key in applied} & set(loader.graph.nodes)
    return loader.project_state(leaves(loader.graph, keys), at_end=True) if keys else None


def breaking_changes(loader, connection, steps, previous: dict | None = None) -> list[list[dict]]:
    """For each planned (migration, backwards) step, what it breaks for the running release's models: found when
    the database it leaves no longer serves them (each finding once, at the migration that causes it). Those
    models are the state at the applied migrations, or `previous` (the previous release's own code, read by
    `current_models` in its tree) where its columns are in the database. The database's state is followed, not
    the models': SeparateDatabaseAndState counts by its database_operations, so removing a field from the state
    alone breaks nothing."""
    state = previous_state(loader, loader.applied_migrations)
    if state is None:  # an empty database: no release is running on it
        return [[] for _ in steps]
    old = schema(state, connection)
    if previous is not None:
        old = {name: in_database(table, old[name]) for name, table in from_json(previous).items() if name in old}
    seen: set = set()
    dropped: set = set()  # (table, column), or (table, "") for a table, that raw SQL drops or renames
    found = []
    for migration, backwards in steps:
        if backwards:
            found.append([])
            continue
        operations = list(database_operations(migration.operations))
        for operation in operations:
            operation.state_forwards(migration.app_label, state)
            dropped |= raw_sql_drops(operation)
            if type(operation).__name__ == "RenameField":  # its new column is the other end of a column-gone
                seen.add((None, f"{migration.app_label}.{operation.model_name_lower}.{operation.new_name}"))
        now = schema(state, connection, only=set(old))
        new = [f for f in compare(old, now, operations, dropped) if key(f) not in seen and renamed(f) not in seen]
        seen |= {key(f) for f in new}
        found.append(new)
    return found


def current_models(connection) -> dict:
    """The tables of the models this tree's code defines (not its migrations), as JSON: what `breaking_changes`
    takes as `previous`."""
    from django.apps import apps
    from django.db.migrations.state import ProjectState

    return {
        name: {
            "model": table.model,
            "columns": {column: asdict(value) for column, value in table.columns.items()},
            "uniques": sorted(list(columns) for columns in table.uniques),
            "checks": sorted(table.checks),
        }
        for name, table in schema(ProjectState.from_apps(apps), connection).items()
    }


def from_json(tables: dict) -> dict[str, Table]:
    return {
        name: Table(
            model=table["model"],
            columns={column: Column(**value) for column, value in table["columns"].items()},
            uniques={tuple(columns) for columns in table["uniques"]},
            checks=set(table["checks"]),
        )
        for name, table in tables.items()
    }


def in_database(code: Table, database: Table) -> Table:
    """The code's table less the columns the database never had (the code's own problem, not a migration's)."""
    columns = {column: value for column, value in code.columns.items() if column in database.columns}
    return Table(model=code.model, columns=columns, uniques=code.uniques, checks=code.checks)


def key(finding: dict) -> tuple:
    return finding["table"], finding["field"], finding["kind"]


def renamed(finding: dict) -> tuple:
    """How a RenameField marks the new column it leaves (not a column the old release misses)."""
    return None, f"{finding['model'].lower()}.{finding['field']}"


# What hand-written SQL takes away from the tables it names (a database-only drop after a state-only removal).
NAME = r'(?:"?\w+"?\.)?"?(\w+)"?'
RAW_DROPS = [
    re.compile(
        rf"ALTER\s+TABLE\s+(?:IF\s+EXISTS\s+)?(?:ONLY\s+)?{NAME}\s+DROP\s+(?!CONSTRAINT\b)(?:COLUMN\s+)?(?:IF\s+EXISTS\s+)?{NAME}",
        re.I,
    ),
    re.compile(
        rf"ALTER\s+TABLE\s+(?:IF\s+EXISTS\s+)?(?:ONLY\s+)?{NAME}\s+RENAME\s+(?:COLUMN\s+)?(?!TO\b){NAME}\s+TO", re.I
    ),
]
RAW_TABLE_DROPS = [
    re.compile(rf"DROP\s+TABLE\s+(?:IF\s+EXISTS\s+)?{NAME}", re.I),
    re.compile(rf"ALTER\s+TABLE\s+(?:IF\s+EXISTS\s+)?(?:ONLY\s+)?{NAME}\s+RENAME\s+TO\b", re.I),
]


def raw_sql_drops(operation) -> set:
    """(table, column) pairs, and (table, "") for whole tables, that a RunSQL's forward SQL drops or renames."""
    if type(operation).__name__ != "RunSQL":
        return set()
    sql = operation.sql if isinstance(operation.sql, list | tuple) else [operation.sql]
    text = "\n".join(item[0] if isinstance(item, list | tuple) else str(item) for item in sql)
    found = {(table, column) for pattern in RAW_DROPS for table, column in pattern.findall(text)}
    return found | {(table, "") for pattern in RAW_TABLE_DROPS for table in pattern.findall(text)}


def database_operations(operations):
    """The operations that change the database, SeparateDatabaseAndState's database side in its place."""
    from django.db.migrations.operations import SeparateDatabaseAndState

    for operation in operations:
        if isinstance(operation, SeparateDatabaseAndState):
            yield from database_operations(operation.database_operations)
        else:
            yield operation


def schema(state, connection, only: set | None = None) -> dict[str, Table]:
    """The tables the managed models of a state have, each with its columns, unique column sets and checks."""
    from django.db.backends.utils import truncate_name

    longest = connection.ops.max_name_length()
    tables: dict[str, Table] = {}
    for (app_label, _), model in state.models.items():
        if model.options.get("proxy") or not model.options.get("managed", True):
            continue
        name = model.options.get("db_table") or truncate_name(f"{app_label}_{model.name_lower}", longest)
        label = f"{app_label}.{model.name}"
        for field_name, field in model.fields.items():  # auto-created many-to-many tables
            if field.many_to_many and not field.remote_field.through:
                through = field.db_table or truncate_name(f"{name}_{field_name}", longest)
                if only is None or through in only:
                    tables[through] = Table(model=f"{label}.{field_name}")
        if only is not None and name not in only:
            continue
        tables[name] = table = Table(model=label)
        columns = {}
        for field_name, field in model.fields.items():
            if field.many_to_many:
                continue
            bound = copy.copy(field)  # the state's field is shared (and named by whoever resolved a state last)
            bound.name = None
            bound.set_attributes_from_name(field_name)
            if bound.column is None:  # not a column (ForeignObject)
                continue
            columns[field_name] = bound.column
            table.columns[bound.column] = Column(
                field=field_name,
                null=bool(field.null),
                db_default=has_db_default(field),
                type=column_type(bound, connection),
                primary_key=bool(field.primary_key),
            )
            if field.unique and not field.primary_key:
                table.uniques.add((bound.column,))
        for together in model.options.get("unique_together") or ():
            table.uniques.add(tuple(columns.get(name, name) for name in together))
        for constraint in model.options.get("constraints", []):
            fields = getattr(constraint, "fields", None)
            if type(constraint).__name__ == "UniqueConstraint" and fields:
                table.uniques.add(tuple(columns.get(name, name) for name in fields))
            elif type(constraint).__name__ == "CheckConstraint":
                table.checks.add(constraint.name)
    return tables


def has_db_default(field) -> bool:
    from django.db.models import NOT_PROVIDED

    return getattr(field, "db_default", NOT_PROVIDED) is not NOT_PROVIDED


def column_type(field, connection) -> str:
    if field.is_relation:
        return f"-> {str(field.remote_field.model).lower()}"
    try:
        return field.db_type(connection) or type(field).__name__
    except Exception:  # a third-party field that needs its model to say
        return type(field).__name__


def compare(old: dict[str, Table], now: dict[str, Table], operations, dropped: set) -> list[dict]:
    """What the previous release's models meet in the database `now` (less what raw SQL `dropped`), table by table."""
    found = []
    for name, table in old.items():
        if name not in now or (name, "") in dropped:
            what = f"its table {name} is renamed or dropped ({cause(operations, table)})"
            found.append(finding("table-gone", name, table, "", "reads and writes", what))
            continue
        found += compare_columns(name, table, now[name], operations, dropped)
        for columns in sorted(now[name].uniques - table.uniques):
            what = f"a new unique constraint on ({', '.join(columns)}): its writes may violate it"
            found.append(finding("new-unique", name, table, ",".join(columns), "writes", what, "warning"))
        for check in sorted(now[name].checks - table.checks):
            what = f"a new check constraint {check}: its writes may violate it"
            found.append(finding("new-check", name, table, check, "writes", what, "warning"))
    return found


def compare_columns(name: str, table: Table, now: Table, operations, dropped: set) -> list[dict]:
    found = []
    for column, before in table.columns.items():
        after = None if (name, column) in dropped else now.columns.get(column)
        if after is None:
            what = f"column {column} is renamed or dropped ({cause(operations, table, before.field)})"
            found.append(finding("column-gone", name, table, before.field, "reads and writes", what))
        elif after.type != before.type and not widens(before.type, after.type):
            breaks = "writes" if base(before.type) == base(after.type) else "reads and writes"
            what = f"column {column} changes type from {before.type} to {after.type}"
            found.append(finding("type-changed", name, table, before.field, breaks, what))
        elif before.null and not after.null and not after.db_default:
            what = f"column {column} becomes NOT NULL: its writes may leave it NULL"
            found.append(finding("becomes-not-null", name, table, before.field, "writes", what, "warning"))
    for column, after in now.columns.items():
        if column in table.columns or after.null or after.db_default or after.primary_key:
            continue
        what = f"new column {column} is NOT NULL with no database default: its INSERTs leave it out"
        found.append(finding("not-null-without-db-default", name, table, after.field, "writes", what))
    return found


def finding(kind, table_name, table, field_name, breaks, what, severity="breaks") -> dict:
    return {
        "kind": kind,
        "table": table_name,
        "model": table.model,
        "field": field_name,
        "breaks": breaks,
        "what": what,
        "severity": severity,
    }


def cause(operations, table: Table, field_name: str = "") -> str:
    """The description of the operation that touches the model (and field), or the migration's first one."""
    model = table.model.split(".")[1].lower()
    for operation in operations:
        names = {str(getattr(operation, attribute, "") or "").lower() for attribute in MODEL_ATTRIBUTES}
        fields = {getattr(operation, attribute, "") for attribute in ("name", "old_name")}
        if model in names and (not field_name or field_name in fields or "model_name" not in vars(operation)):
            return operation.describe()
    return operations[0].describe() if operations else "raw SQL"


MODEL_ATTRIBUTES = ("model_name", "name", "old_name")


def base(column_type: str) -> str:
    return column_type.split("(")[0].strip()


def widens(before: str, after: str) -> bool:
    """A type that holds every value of the previous one, read and written the same way."""
    if base(before) in WIDER_INTEGERS and base(after) in WIDER_INTEGERS:
        return WIDER_INTEGERS.index(base(after)) >= WIDER_INTEGERS.index(base(before))
    if base(before) == "varchar" and after == "text":
        return True
    if base(before) == base(after) in ("varchar", "numeric") and "(" in before and "(" in after:
        old, new = (tuple(int(n) for n in t.split("(")[1].rstrip(")").split(",")) for t in (before, after))
        return len(old) == len(new) and new[0] >= old[0] and new[1:] == old[1:]
    return False


@dataclass
class Sample:
    """Values for the columns an old model leaves NULL that the database requires, by internal type."""

    token: str = attribute(default_factory=lambda: uuid.uuid4().hex)

    def value(self, f):
        """A value of `f`'s type, unique where the column is; a foreign key's is any id (checked at commit, which
        never comes: Django's foreign keys are DEFERRABLE INITIALLY DEFERRED)."""
        if f.is_relation:
            return self.value(f.target_field)
        kind = f.get_internal_type()
        number = random.randint(1, 32000)  # noqa: S311 - a test value, not a secret
        values = {
            "DecimalField": Decimal(0),
            "FloatField": 0.0,
            "BooleanField": False,
            "DateField": date(2000, 1, 1),
            "DateTimeField": datetime(2000, 1, 1, tzinfo=timezone.utc),  # noqa: UP017 - the project may run Python 3.10
            "TimeField": clock(0),
            "DurationField": timedelta(0),
            "UUIDField": uuid.uuid4(),
            "JSONField": {},
            "BinaryField": b"",
            "GenericIPAddressField": "127.0.0.1",
            "ArrayField": [],
            "HStoreField": {},
        }
        if kind in values:
            return values[kind]
        if "Integer" in kind or "AutoField" in kind:
            return number
        if kind in ("CharField", "TextField", "SlugField", "FileField", "FilePathField", "EmailField", "URLField"):
            return f"{self.token}{number}"[: f.max_length or None]
        return None


def prove(connection, applied, find_sqlstate) -> dict:
    """The SELECT `Model.objects.all()[:1]` issues and an INSERT of a row the model builds (every field at its
    default, a sample value where it has none and the column needs one), of every managed model at the state
    `applied`, each in a savepoint rolled back, all in one transaction rolled back: what fails is what the release
    that ran at `applied` meets on this database. Sequences advance; nothing else stays."""
    from django.db import transaction
    from django.db.migrations.loader import MigrationLoader

    started = time.monotonic()
    state = previous_state(MigrationLoader(connection), applied)
    if state is None:
        return {"models": 0, "failures": [], "duration_s": 0.0}
    alias, sample, failures, models = connection.alias, Sample(), [], 0
    with transaction.atomic(using=alias):
        with connection.cursor() as cursor:
            cursor.execute(f"SET LOCAL statement_timeout = {PROOF_STATEMENT_TIMEOUT_MS}")
            cursor.execute(f"SET LOCAL lock_timeout = {PROOF_LOCK_TIMEOUT_MS}")
        for model in state.apps.get_models(include_auto_created=True):
            if model._meta.proxy or not model._meta.managed:
                continue
            models += 1
            for action, run in (("reads", read), ("writes", write)):
                try:
                    with transaction.atomic(using=alias):  # a savepoint, rolled back either way
                        run(model, alias, sample)
                        raise Undo
                except Undo:
                    pass
                except Exception as error:  # what the database (or Django reading its answer) said
                    failures.append(proof_failure(model, action, error, find_sqlstate(error)))
        transaction.set_rollback(True, using=alias)
    return {"models": models, "failures": failures, "duration_s": round(time.monotonic() - started, 3)}


class Undo(Exception):
    """Leaves a statement's savepoint rolled back when the statement succeeded."""


def read(model, alias, sample) -> None:
    list(model._base_manager.using(alias).all()[:1])


def write(model, alias, sample) -> None:
    """INSERT the row the model builds; raw: its own table only, as each table is proven on its own."""
    row = model()
    for f in model._meta.local_concrete_fields:
        if f is model._meta.auto_field:
            continue
        if getattr(row, f.attname) is None and not f.null:
            setattr(row, f.attname, sample.value(f))
    row.save_base(raw=True, force_insert=True, using=alias)


def proof_failure(model, action: str, error: Exception, sqlstate: str) -> dict:
    message = (str(error).strip().splitlines() or [""])[0]  # the line that names the column, not the row
    return {
        "table": model._meta.db_table,
        "model": model._meta.label,
        "action": action,
        "sqlstate": sqlstate,
        "error": f"{type(error).__name__}: {message}",
    }
