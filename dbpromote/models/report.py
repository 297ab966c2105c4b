"""What a step reports: migrations applied, checks, RLS coverage and proof, rehearsals, and one target's step."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

from dbpromote.models.backup import Backup
from dbpromote.models.plan import Plan


class MigrationResult(BaseModel):
    label: str
    duration_s: float
    attempts: int
    already_applied: bool = False
    strongest_lock: str = Field("", description="The strongest table lock it held (taken first, or sampled)")
    lock_held_s: float = Field(0.0, description="How long it held the lock it took first (atomic migrations)")
    longest_app_wait_s: float = Field(0.0, description="The longest an application session waited behind it")
    sessions_blocked: int = Field(0, description="Application sessions that waited behind it")


class Check(BaseModel):
    name: str
    passed: bool
    detail: str = ""


class Verification(BaseModel):
    checks: list[Check]

    @property
    def passed(self) -> bool:
        return all(check.passed for check in self.checks)

    @property
    def failures(self) -> list[Check]:
        return [check for check in self.checks if not check.passed]


class TableCoverage(BaseModel):
    table: str
    rls_enabled: bool
    policy: str  # "current", "missing", "drift"
    missing_grants: list[str] = Field(default_factory=list)
    action: str = ""  # what apply did: "created", "replaced (drift)", "granted", "" = nothing


class Coverage(BaseModel):
    """The RLS state of one target's tenant tables, and what applying it issued."""

    target: str
    tables: list[TableCoverage]
    orphaned_policies: list[str] = Field(default_factory=list)
    ddl_statements: int = 0

    @property
    def gaps(self) -> list[str]:
        return [t.table for t in self.tables if not t.rls_enabled or t.policy != "current" or t.missing_grants]

    @property
    def drift(self) -> list[str]:
        return [t.table for t in self.tables if t.policy == "drift" or t.action.startswith("replaced")]


class TableProof(BaseModel):
    """One tenant table's proof: on its own rows of two tenants, on synthetic rows made (and rolled back) where it
    has fewer, or, where no synthetic row fits its constraints, on its policy as the catalog holds it."""

    table: str
    passed: bool
    detail: str
    proven_by: Literal["rows", "synthetic rows", "policy"] = "rows"


class Isolation(BaseModel):
    target: str
    tables: list[TableProof]
    role_problems: list[str] = Field(default_factory=list)
    bypassing_views: list[str] = Field(default_factory=list)

    @property
    def passed(self) -> bool:
        return all(t.passed for t in self.tables) and not self.role_problems and not self.bypassing_views


class Rehearsal(BaseModel):
    """A plan run first on a copy of a target's newest backup: durations on production-sized data."""

    target: str
    backup_uri: str
    slow_s: float
    migrations: list[MigrationResult]

    @property
    def slow(self) -> list[MigrationResult]:
        return [result for result in self.migrations if result.duration_s > self.slow_s]

    def risk(self, label: str) -> str:
        """The risk a slow migration carries, or '' when it ran within the bound."""
        for result in self.slow:
            if result.label == label:
                return (
                    f"took {result.duration_s:.1f} s on a rehearsal with {self.target}'s data (bound "
                    f"{self.slow_s:g} s): expect its locks to be held about that long on {self.target}"
                )
        return ""


class ProofFailure(BaseModel):
    table: str
    model: str
    action: Literal["reads", "writes"]
    sqlstate: str = ""
    error: str


class CompatibilityProof(BaseModel):
    """The running release's models (the state at the plan's applied migrations) run against the migrated
    database: a SELECT and an INSERT per managed model, rolled back (probe/compatibility.py)."""

    models: int
    failures: list[ProofFailure]
    duration_s: float

    def findings(self, plan: Plan) -> list[str]:
        """The proof beside what was computed: each computed break it reproduced (with the SQL error), each it did
        not, and each failure nothing computed; never one without the other."""
        computed = {
            (change.table, action): (m.label, change)
            for m in plan.migrations
            for change in m.breaking
            if change.severity == "breaks"
            for action in change.breaks.split(" and ")
        }
        failed = {(failure.table, failure.action): failure for failure in self.failures}
        lines = []
        for key, (label, change) in computed.items():
            if key in failed:
                lines.append(f"proven: {label}: {change.model} {key[1]} fail: {failed[key].error}")
            else:
                lines.append(f"computed, not reproduced by the proof: {label}: {change.model} {key[1]}")
        lines += [
            f"the proof fails where nothing was computed: {f.model} {f.action}: {f.error}"
            for key, f in failed.items()
            if key not in computed
        ]
        return lines


class Health(BaseModel):
    """What the application answered after the target migrated (dbpromote/health.py): each check's line."""

    passed: bool
    checks: list[str]

    @property
    def detail(self) -> str:
        return "; ".join(self.checks)


class Aftermath(BaseModel):
    """What the database went through in the minutes after the target migrated (dbpromote/watch.py)."""

    seconds: float
    samples: int
    most_waiting: int = Field(description="Sessions waiting for a lock at once, at most")
    longest_wait_s: float = Field(description="The longest any session had waited for a lock when sampled")
    deadlocks: int
    rollbacks: int
    commits: int
    most_connections: int

    def line(self) -> str:
        return (
            f"{self.seconds:.0f} s watched ({self.samples} samples): {self.deadlocks} deadlock(s), {self.rollbacks} "
            f"rollback(s) to {self.commits} commit(s), at most {self.most_waiting} session(s) waiting for a lock "
            f"(the longest {self.longest_wait_s:.1f} s), at most {self.most_connections} connection(s)"
        )


class StepReport(BaseModel):
    """What happened on one target: enough to say where the database is and how to return."""

    target: str
    plan: Plan
    backup: Backup | None = None
    migrations: list[MigrationResult] = []
    verification: Verification | None = None
    rls: Coverage | None = None
    isolation: Isolation | None = None
    proof: CompatibilityProof | None = Field(None, description="The running release's models on the new schema")
    health: Health | None = Field(None, description="The application asked after the target migrated")
    aftermath: Aftermath | None = Field(None, description="The database watched after the target migrated")
    error: str = ""
    worker: str = Field("", description="The Prefect worker whose process ran the step (a fleet's members)")

    @property
    def last_committed(self) -> str:
        done = [result.label for result in self.migrations]
        if done:
            return done[-1]
        applied = sorted(f"{app}.{name}" for app, name in self.plan.applied)
        return f"{applied[-1]} (nothing of this plan)" if applied else "an empty schema (nothing of this plan)"

    def way_back(self) -> str:
        if any(m.backwards for m in self.plan.migrations):
            done = [result.label for result in self.migrations]
            again = ", ".join(done) if done else "nothing (none was reversed)"
            lines = [f"apply again what was reversed, with a promotion: {again}"]
            if self.backup:
                lines.append(f"or restore {self.backup.uri} (taken before the rollback)")
            return "; ".join(lines)
        reverse = ", ".join(
            f"`manage.py migrate {app} {name}`"
            for app, name in self.plan.last_applied_by_app().items()
            if any(m.app == app for m in self.plan.migrations)
        )
        irreversible = [m.label for m in self.plan.migrations if not m.reversible]
        lines = []
        if reverse:
            note = f" (not possible: {', '.join(irreversible)} cannot be reversed)" if irreversible else ""
            lines.append(f"reverse with {reverse}{note}")
        if self.backup:
            lines.append(f"or restore {self.backup.uri} (taken before any change)")
        return "; ".join(lines) or "nothing to undo"
