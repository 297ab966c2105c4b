"""What the probe answers the worker: one JSON document per request, each a dataclass told apart by its `kind`.

Both sides use these definitions. The probe runs in the project's own interpreter, which has Django but maybe not
pydantic, so they are plain dataclasses from the standard library; the worker validates each answer with pydantic
(dbpromote/probe/__init__.py), and an answer that is none of them is an error that names it.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Literal

# SQLSTATEs meaning "the locks were not granted in time": the same migration may succeed on another attempt.
LOCK_SQLSTATES = {"55P03": "lock_not_available", "40P01": "deadlock_detected"}
# What a statement_timeout around a LOCK TABLE raises when it fires.
QUERY_CANCELED = "57014"
# The SQL line of a planned migration whose SQL reads a schema the plan's earlier migrations have not made yet.
UNKNOWN_SQL = "-- SQL not known before the earlier migrations of the plan are applied"

# Why the probe could not do what was asked: the worker turns each into one sentence naming the fix.
FailureReason = Literal[
    "interpreter",  # Django is not importable with the project's interpreter
    "settings",  # the settings module does not load (`variable`: the environment variable it missed, if known)
    "alias",  # the target's database alias is not in DATABASES
    "target",  # the requested migration is not one of the project's
    "backwards",  # the requested target is behind the applied state
    "state",  # a rollback's goal state cannot be reached by reversing
    "order",  # a migration requested out of its dependency order
    "lock",  # the locks were not granted within lock_timeout (retry)
    "stopped",  # a non-atomic migration stopped between statements when asked (SIGUSR1): `message` lists the applied
    "error",  # anything else the project or the database raised
]


@dataclass
class OperationInfo:
    kind: str
    description: str
    model: str | None = None
    null: bool | None = None
    has_default: bool | None = None
    reversible: bool = True
    imports_models: bool = False  # a RunPython function that uses the project's current model classes


@dataclass
class BreakingChange:
    """What a migration breaks for the release running before it (probe/compatibility.py): `breaks` its reads and
    writes or its writes; a "warning" is a write that may fail, depending on the values it writes."""

    kind: str  # table-gone, column-gone, type-changed, not-null-without-db-default, becomes-not-null, new-unique, ...
    table: str
    model: str  # app.Model of the running release (app.Model.field for an auto-created many-to-many table)
    field: str
    breaks: Literal["reads and writes", "writes"]
    what: str
    severity: Literal["breaks", "warning"] = "breaks"


@dataclass
class MigrationInfo:
    app: str
    name: str
    atomic: bool
    reversible: bool
    operations: list[OperationInfo]
    sql: list[str]
    parents: list[str] = field(default_factory=list)  # app.name of the migrations it depends on directly
    marker: str = ""  # django-safemigrate's `safe`: always, before_deploy or after_deploy ('' when not marked)
    marker_delay_s: float | None = None  # after_deploy(delay=...)
    breaking: list[BreakingChange] = field(default_factory=list)


@dataclass
class AppChanges:
    """What `makemigrations` would write for one app; `package`: the app is installed, not the project's own."""

    app: str
    package: bool
    operations: list[str]


@dataclass
class PlanAnswer:
    """A target's applied migrations and what `migrate` would run there (forwards or, for a rollback, backwards)."""

    applied: list[tuple[str, str]]
    migrations: list[MigrationInfo]
    conflicts: dict[str, list[str]] = field(default_factory=dict)
    model_changes: list[AppChanges] = field(default_factory=list)
    # What a database dbpromote did not create may bring: django_migrations rows of installed apps without a
    # migration file, squashes whose replaced migrations are only partly applied, extensions the plan creates.
    unknown_applied: list[tuple[str, str]] = field(default_factory=list)
    partial_squashes: list[str] = field(default_factory=list)
    extensions: dict[str, str] = field(default_factory=dict)  # extension -> the migration that creates it
    file_hashes: dict[str, str] = field(default_factory=dict)  # app.name -> SHA-256 of its file (16 hex digits)
    applied_at: dict[str, str] = field(default_factory=dict)  # app.name -> its django_migrations.applied, ISO 8601
    # A replay's "table.name" of every index and constraint the project names itself (Meta.indexes, Meta.constraints,
    # AddIndex, AddConstraint, RenameIndex): later migrations find those by name, unlike the names Django generates.
    explicit_names: list[str] = field(default_factory=list)
    names_used_later: list[str] = field(default_factory=list)  # what migrations not yet applied find by name
    django_named: list[str] = field(default_factory=list)  # live "table.name"s that Django's schema editor generated
    # A replay request's: the key of the schema the history produces, and whether the worker's replay under that key
    # was used ("cached"), the migrations were replayed ("replayed") or a scratch database is needed for it.
    replay_key: str = ""
    replay: Literal["", "cached", "replayed", "needed"] = ""
    kind: Literal["plan"] = "plan"


@dataclass
class StepAnswer:
    """One migration applied or reversed (or found already so)."""

    already_applied: bool
    duration_s: float
    kind: Literal["step"] = "step"
    strongest_lock: str = ""  # the table lock an atomic step took first, held to its commit
    lock_held_s: float = 0.0


@dataclass
class FailureAnswer:
    """What went wrong, and where the database said so its SQLSTATE."""

    reason: FailureReason
    message: str
    variable: str = ""
    sqlstate: str = ""
    traceback: str = ""
    kind: Literal["failure"] = "failure"


@dataclass
class ProofFailure:
    """A statement of the running release's models that failed on the migrated database."""

    table: str
    model: str
    action: Literal["reads", "writes"]
    sqlstate: str
    error: str


@dataclass
class ProofAnswer:
    """The running release's models (the state at the applied migrations given) run against a migrated database:
    a SELECT and an INSERT per managed model, all rolled back."""

    models: int
    failures: list[ProofFailure]
    duration_s: float
    kind: Literal["proof"] = "proof"


@dataclass
class ModelsAnswer:
    """The tables a tree's own models define (probe/compatibility.py current_models), and what makemigrations
    would write for it: where its models and its migrations disagree."""

    tables: dict
    changes: list[AppChanges] = field(default_factory=list)
    kind: Literal["models"] = "models"


@dataclass
class RowsAnswer:
    """What one statement of a fix session returned (values as JSON gives them; others as text)."""

    rows: list[list] = field(default_factory=list)
    kind: Literal["rows"] = "rows"


Answer = PlanAnswer | StepAnswer | FailureAnswer | RowsAnswer | ProofAnswer | ModelsAnswer


def encode(answer: Answer) -> str:
    """One line of JSON."""
    return json.dumps(asdict(answer), default=str)
