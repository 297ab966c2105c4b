"""The plan: the migrations a target still needs, as the project describes them, with their risks and hash."""

from __future__ import annotations

import hashlib
import json
from typing import Literal, NamedTuple

from pydantic import BaseModel, Field

from dbpromote.errors import InputError
from dbpromote.probe.protocol import UNKNOWN_SQL, OperationInfo


class Rule(NamedTuple):
    """A lint rule dbpromote checks with what only Django knows (which table is new, what a RunPython does)."""

    name: str
    reason: str
    fix: str

    def risk(self, what: str) -> str:
        """How the approval form lists it: what, why, the rule and a one-line fix."""
        return f"{what}: {self.reason} [{self.name}: {self.fix}]"


# Operation kinds a reviewer must acknowledge: they lose data, break running code, lock tables for long or run
# code nobody can review as SQL. An index or constraint on a table the same plan creates is none of these.
RULES = {
    "RemoveField": Rule(
        "drop-column-still-read",
        "drops a column the previous release's code may still read while the new one rolls out",
        "remove the field from the model in one release (SeparateDatabaseAndState), drop the column in the next",
    ),
    "DeleteModel": Rule(
        "drop-table-still-read",
        "drops a table the previous release's code may still read while the new one rolls out",
        "remove the model in one release (SeparateDatabaseAndState), drop the table in the next",
    ),
    "RenameField": Rule(
        "rename-column",
        "renames a column (running code that uses the old name breaks)",
        "add the new column, write both, switch reads, drop the old one in a later release",
    ),
    "RenameModel": Rule(
        "rename-table",
        "renames a table (running code that uses the old name breaks)",
        "keep the table name with Meta.db_table, or move the data in steps across releases",
    ),
    "AlterField": Rule(
        "alter-column",
        "may change a column's type (rewrites the table under an exclusive lock)",
        "add a column of the new type, backfill it in batches, switch to it",
    ),
    "AddIndex": Rule(
        "index-not-concurrent",
        "builds an index without CONCURRENTLY (blocks writes while it builds)",
        "use AddIndexConcurrently (django.contrib.postgres.operations) in a migration with atomic = False",
    ),
    "AddConstraint": Rule(
        "constraint-on-existing-table",
        "adds a constraint that scans the table under lock",
        "build its index CONCURRENTLY first (unique), or add a CHECK/foreign key NOT VALID and validate it later",
    ),
    "AlterUniqueTogether": Rule(
        "unique-on-existing-table",
        "adds a unique constraint that scans the table under lock",
        "build a unique index CONCURRENTLY first, then add the constraint USING INDEX",
    ),
    "RunPython": Rule(
        "runpython",
        "runs Python code (not reviewable as SQL)",
        "read the function; keep it idempotent and batch large updates",
    ),
    "RunSQL": Rule("runsql", "runs hand-written SQL", "read the SQL; give it reverse_sql"),
}
ON_A_NEW_TABLE_IS_SAFE = ("AddIndex", "AddConstraint", "AlterUniqueTogether")
NOT_NULL_WITHOUT_DEFAULT = Rule(
    "not-null-without-default",
    "NOT NULL without a default fails on existing rows",
    "give the field a default (db_default keeps it in the database) or add it nullable and backfill",
)
RUNPYTHON_WITHOUT_REVERSE = Rule(
    "runpython-without-reverse",
    "has no reverse_code, so this migration cannot be rolled back",
    "give it reverse_code (migrations.RunPython.noop when nothing needs undoing)",
)
RUNPYTHON_IMPORTS_MODELS = Rule(
    "runpython-imports-models",
    "uses the project's current models instead of the historical ones (breaks once the models change)",
    "use apps.get_model('app', 'Model') inside the function",
)


# What to do instead, by what a migration breaks for the release still running (probe/compatibility.py).
COMPATIBLE_RECIPES = {
    "column-gone": "remove the field from the model first (SeparateDatabaseAndState, state only) and drop the "
    "column a release later; for a rename, add the new column, write both, then drop the old one",
    "table-gone": "remove the model from the state first (SeparateDatabaseAndState) and drop the table a release "
    "later; for a rename, keep the table name with Meta.db_table",
    "type-changed": "add a column of the new type, write both, switch reads, drop the old column a release later",
    "not-null-without-db-default": "give the field a db_default (Django 5) so the database fills it, or add it "
    "null=True, backfill, and make it NOT NULL a release later",
    "becomes-not-null": "make it NOT NULL a release after the code stops writing NULL",
    "new-unique": "ship the code that keeps it unique a release before the constraint",
    "new-check": "ship the code that satisfies it a release before the constraint",
}
BEFORE_DEPLOY, AFTER_DEPLOY = "before-deploy", "after-deploy"


class BreakingChange(BaseModel):
    """What a migration breaks for the release that runs while it is applied (the models at the applied
    migrations): computed from the migration states by the probe."""

    kind: str
    table: str
    model: str
    field: str
    breaks: str = Field(description="'reads and writes' or 'writes'")
    what: str
    severity: Literal["breaks", "warning"] = "breaks"

    def line(self, label: str) -> str:
        """One sentence: where, what, what fails, and the fix."""
        fails = "fail" if self.severity == "breaks" else "may fail"
        fix = COMPATIBLE_RECIPES.get(self.kind, "change it in two releases")
        return f"{label}: {self.model}: {self.what}, so the running release's {self.breaks} {fails} ({fix})"


class PlannedMigration(BaseModel):
    app: str
    name: str
    atomic: bool
    reversible: bool
    operations: list[OperationInfo]  # as the probe described each (its protocol's dataclass, validated here)
    sql: list[str]
    risks: list[str] = Field(default_factory=list)
    backwards: bool = False
    parents: list[str] = Field(default_factory=list, description="app.name of the migrations it depends on")
    marker: str = Field("", description="django-safemigrate's `safe`: always, before_deploy or after_deploy")
    marker_delay_s: float | None = None
    breaking: list[BreakingChange] = Field(default_factory=list)
    phase: Literal["before-deploy", "after-deploy"] = BEFORE_DEPLOY
    phase_reason: str = ""

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
    notes: list[str] = Field(default_factory=list, description="What the approver should know; not in the hash")
    file_hashes: dict[str, str] = Field(
        default_factory=dict, description="app.name -> SHA-256 of each migration's file; recorded when applied"
    )
    deferred: list[str] = Field(
        default_factory=list, description="Pending migrations left for a later phase (after the app deploy)"
    )

    @property
    def hash(self) -> str:
        """Stable over what would run: the migrations, in order and direction, with their SQL and atomicity."""
        payload = [_identity(m) for m in self.migrations]
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]

    def is_rest_of(self, earlier: Plan) -> bool:
        """What remains of `earlier` once some of its migrations were applied (all of it, or none): the same
        migrations, with the same SQL, in the same order. Applied are the first of its before-deploy migrations (a
        deploy's first phase, whole or crashed part-way), then the beginning of the rest (a crash leaves its end).
        A plan that gained or changed a migration, or lost one out of that order, is not."""
        if self.target != earlier.target:
            return False
        mine = {m.label for m in self.migrations}
        before = [m.label for m in earlier.migrations if m.phase == BEFORE_DEPLOY]
        first = 0
        while first < len(before) and before[first] not in mine:
            first += 1
        rest = [m for m in earlier.migrations if m.label not in before[:first]]
        return len(self.migrations) <= len(rest) and self.runs_as(rest[len(rest) - len(self.migrations) :])

    def runs_as(self, expected: list[PlannedMigration]) -> bool:
        """Whether this plan runs exactly the `expected` steps: the same migrations in order, the same SQL where
        it was known when `expected` was planned (SQL that reads the live schema is known only once the plan's
        earlier migrations are applied: such a step runs whatever they leave it to run, as `migrate` would)."""
        return len(self.migrations) == len(expected) and all(
            _identity(mine) == _identity(theirs) or (_step(mine) == _step(theirs) and sql_unknown(theirs))
            for mine, theirs in zip(self.migrations, expected, strict=True)
        )

    def only(self, labels: set[str]) -> Plan:
        """The part of the plan made of these migrations; the others are deferred (left pending on purpose)."""
        kept = [m for m in self.migrations if m.label in labels]
        deferred = [m.label for m in self.migrations if m.label not in labels]
        return self.model_copy(update={"migrations": kept, "deferred": [*self.deferred, *deferred]})

    @property
    def risks(self) -> list[str]:
        return [f"{m.label}: {risk}" for m in self.migrations for risk in m.risks]

    @property
    def breaking(self) -> list[str]:
        """What breaks the running release, one sentence each (warnings included)."""
        return [change.line(m.label) for m in self.migrations for change in m.breaking]

    def phase(self, phase: str) -> list[PlannedMigration]:
        return [m for m in self.migrations if m.phase == phase]

    @property
    def two_phases(self) -> bool:
        """Some migrations run before the app deploy and some only after it."""
        return bool(self.phase(BEFORE_DEPLOY)) and bool(self.phase(AFTER_DEPLOY))

    @property
    def labels(self) -> list[str]:
        return [m.label for m in self.migrations]

    def last_applied_by_app(self) -> dict[str, str]:
        """Per app, the newest applied migration: the reverse target that returns to this state."""
        last: dict[str, str] = {}
        for app, name in sorted(self.applied):
            last[app] = name
        return last


def _identity(migration: PlannedMigration) -> tuple:
    """What makes two planned migrations the same step: the plan hash covers exactly this."""
    return (migration.app, migration.name, migration.atomic, migration.sql, migration.backwards)


def _step(migration: PlannedMigration) -> tuple:
    """A planned migration but for its SQL."""
    return (migration.app, migration.name, migration.atomic, migration.backwards)


def sql_unknown(migration: PlannedMigration) -> bool:
    return any(line.startswith(UNKNOWN_SQL) for line in migration.sql)


# What reversing an operation loses or runs.
RISKY_REVERSALS = {
    "CreateModel": "reversing drops the table and every row in it",
    "AddField": "reversing drops the column and every value in it",
    "RunPython": "reversing runs Python code (not reviewable as SQL)",
    "RunSQL": "reversing runs hand-written SQL",
}


def classify_risks(migrations: list[PlannedMigration], ignore: dict[str, str] | None = None) -> None:
    """Attach the risks of each migration, by dbpromote's Django-aware rules; a rule in `ignore` (rule -> the
    project's reason) is not one."""
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
            rules = []
            if operation.kind == "AddField" and operation.null is False and operation.has_default is False:
                rules.append(NOT_NULL_WITHOUT_DEFAULT)
            if operation.kind == "RunPython" and not operation.reversible:
                rules.append(RUNPYTHON_WITHOUT_REVERSE)
            if operation.kind == "RunPython" and operation.imports_models:
                rules.append(RUNPYTHON_IMPORTS_MODELS)
            if rule := RULES.get(operation.kind):
                if not (operation.kind in ON_A_NEW_TABLE_IS_SAFE and (migration.app, operation.model) in created):
                    rules.append(rule)
            migration.risks += [r.risk(operation.description) for r in rules if r.name not in (ignore or {})]


def assign_phases(migrations: list[PlannedMigration]) -> None:
    """Each forward migration's phase: after the app deploy when its authors marked it so (django-safemigrate's
    after_deploy), when it breaks the running release, or when it depends on one that runs after the deploy (the
    graph's order is kept); before it otherwise, so the release being deployed finds what it needs."""
    after: set[str] = set()
    for migration in migrations:
        reasons = []
        if migration.marker == "after_deploy":
            reasons.append("marked after_deploy")
        if any(change.severity == "breaks" for change in migration.breaking):
            reasons.append("breaks the running release")
        if waits_for := sorted(set(migration.parents) & after):
            reasons.append(f"depends on {', '.join(waits_for)}")
        if reasons and not migration.backwards:
            migration.phase, migration.phase_reason = AFTER_DEPLOY, "; ".join(reasons)
            after.add(migration.label)


def parse_target_migration(to: str) -> tuple[str, str] | None:
    """APP:MIGRATION as a pair; None for "every leaf"; a ConfigError for anything else."""
    if not to:
        return None
    app, sep, name = to.partition(":")
    if not (sep and app and name) or ":" in name:
        raise InputError(f"Target migration {to!r} is malformed; write it as APP:MIGRATION, e.g. core:0008_default.")
    return app, name


def describe_change(before: Plan, after: Plan) -> str:
    new = [label for label in after.labels if label not in before.labels]
    gone = [label for label in before.labels if label not in after.labels]
    parts = [f"new: {', '.join(new)}" if new else "", f"no longer pending: {', '.join(gone)}" if gone else ""]
    return "; ".join(part for part in parts if part) or "the same migrations now produce different SQL"
