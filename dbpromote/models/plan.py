"""The plan: the migrations a target still needs, as the project describes them, with their risks and hash."""

from __future__ import annotations

import hashlib
import json

from pydantic import BaseModel, Field

from dbpromote.errors import ConfigError

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
    notes: list[str] = Field(default_factory=list, description="What the approver should know; not in the hash")
    file_hashes: dict[str, str] = Field(
        default_factory=dict, description="app.name -> SHA-256 of each migration's file; recorded when applied"
    )

    @property
    def hash(self) -> str:
        """Stable over what would run: the migrations, in order and direction, with their SQL and atomicity."""
        payload = [_identity(m) for m in self.migrations]
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]

    def is_rest_of(self, earlier: Plan) -> bool:
        """What remains of `earlier` once its first migrations were applied (all of it, or none): the same
        migrations, with the same SQL, at its end. A plan that gained or changed a migration is not."""
        if self.target != earlier.target or len(self.migrations) > len(earlier.migrations):
            return False
        rest = earlier.migrations[len(earlier.migrations) - len(self.migrations) :]
        return [_identity(m) for m in self.migrations] == [_identity(m) for m in rest]

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


def _identity(migration: PlannedMigration) -> tuple:
    """What makes two planned migrations the same step: the plan hash covers exactly this."""
    return (migration.app, migration.name, migration.atomic, migration.sql, migration.backwards)


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


def parse_target_migration(to: str) -> tuple[str, str] | None:
    """APP:MIGRATION as a pair; None for "every leaf"; a ConfigError for anything else."""
    if not to:
        return None
    app, sep, name = to.partition(":")
    if not (sep and app and name) or ":" in name:
        raise ConfigError(f"Target migration {to!r} is malformed; write it as APP:MIGRATION, e.g. core:0008_default.")
    return app, name


def describe_change(before: Plan, after: Plan) -> str:
    new = [label for label in after.labels if label not in before.labels]
    gone = [label for label in before.labels if label not in after.labels]
    parts = [f"new: {', '.join(new)}" if new else "", f"no longer pending: {', '.join(gone)}" if gone else ""]
    return "; ".join(part for part in parts if part) or "the same migrations now produce different SQL"
