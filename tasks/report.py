"""Report: one markdown artifact and one table artifact per environment step, including the way back."""

from __future__ import annotations

from prefect import task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from pydantic import BaseModel

from tasks.backup import Backup
from tasks.migrate import MigrationResult
from tasks.plan import Plan
from tasks.rls import Coverage, Isolation
from tasks.verify import Verification

SQL_PREVIEW_LINES = 12


class StepReport(BaseModel):
    """What happened on one target: enough to say where the database is and how to return."""

    target: str
    plan: Plan
    backup: Backup | None = None
    migrations: list[MigrationResult] = []
    verification: Verification | None = None
    rls: Coverage | None = None
    isolation: Isolation | None = None
    error: str = ""

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

    def markdown_lines(self) -> list[str]:
        lines = [
            f"### Rehearsal on {self.target}'s data",
            "",
            f"Restored {self.backup_uri} into a scratch database and ran the plan there first.",
            "",
            "| migration | seconds | attempts | slower than " + f"{self.slow_s:g} s |",
            "|---|---|---|---|",
        ]
        slow = {result.label for result in self.slow}
        lines += [
            f"| {r.label} | {r.duration_s:.2f} | {r.attempts} | {'**yes**' if r.label in slow else '-'} |"
            for r in self.migrations
        ]
        return lines


def render_markdown(report: StepReport) -> str:
    plan = report.plan
    lines = [f"# {report.target}: plan {plan.hash}", ""]
    if report.error:
        lines += [f"**FAILED**: {report.error}", "", f"Database is at the state after **{report.last_committed}**.", ""]
    lines += ["## Plan", "", "| migration | atomic | reversible | risks |", "|---|---|---|---|"]
    for m in plan.migrations:
        lines.append(f"| {m.label} | {m.atomic} | {m.reversible} | {'; '.join(m.risks) or '-'} |")
    for m in plan.migrations:
        preview = "\n".join(m.sql[:SQL_PREVIEW_LINES]) + ("\n..." if len(m.sql) > SQL_PREVIEW_LINES else "")
        lines += ["", f"### {m.label}", "```sql", preview, "```"]
    if report.backup:
        b = report.backup
        lines += [
            "",
            "## Backup",
            "",
            f"- {b.uri}",
            f"- {b.size_bytes} bytes, CRC32C {b.crc32c}",
            f"- {b.duration_s:.1f} s, server {b.server_version}, verified by a full read-back",
        ]
    if report.migrations:
        lines += ["", "## Migrations applied", "", "| migration | seconds | attempts |", "|---|---|---|"]
        lines += [f"| {r.label} | {r.duration_s:.2f} | {r.attempts} |" for r in report.migrations]
    if report.verification:
        lines += ["", "## Verify", "", "| check | result | detail |", "|---|---|---|"]
        lines += [
            f"| {c.name} | {'pass' if c.passed else 'FAIL'} | {c.detail or '-'} |" for c in report.verification.checks
        ]
    if report.rls:
        changed = [f"{t.table}: {t.action}" for t in report.rls.tables if t.action]
        lines += [
            "",
            "## Row-Level Security",
            "",
            f"{len(report.rls.tables)} tenant tables; "
            f"{report.rls.ddl_statements} DDL statements issued; changed: {', '.join(changed) or 'nothing'}",
        ]
        if report.rls.orphaned_policies:
            lines.append(f"Policies on tables without the tenant column: {', '.join(report.rls.orphaned_policies)}")
    if report.isolation:
        lines.append(f"Isolation proven as the application role on {len(report.isolation.tables)} tables.")
    lines += ["", "## The way back", "", report.way_back()]
    return "\n".join(lines)


@task(name="report")
def publish_report(report: StepReport) -> str:
    key = "".join(ch if ch.isalnum() else "-" for ch in f"dbpromote-{report.target}".lower())
    markdown = render_markdown(report)
    create_markdown_artifact(markdown, key=key, description=f"Promotion step on {report.target}")
    if report.migrations:
        create_table_artifact(
            [{"migration": r.label, "seconds": r.duration_s, "attempts": r.attempts} for r in report.migrations],
            key=f"{key}-migrations",
            description=f"Migrations applied on {report.target}",
        )
    return markdown
