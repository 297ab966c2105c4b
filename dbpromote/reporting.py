"""Reports: the steps return results, and this turns them into what a person reads in the Prefect UI (markdown,
table and progress artifacts) and into the records `dbpromote drift` prints. The work never builds its report."""

from __future__ import annotations

import time

from prefect.artifacts import (
    create_markdown_artifact,
    create_progress_artifact,
    create_table_artifact,
    update_progress_artifact,
)
from prefect.runtime import flow_run

from dbpromote.config import load_target
from dbpromote.models.drift import DriftReport
from dbpromote.models.report import Coverage, Isolation, StepReport
from dbpromote.records import write_record
from dbpromote.run_context import in_a_run

SQL_PREVIEW_LINES = 12


def render_markdown(report: StepReport) -> str:
    """An environment step's report: its plan, backup, migrations, proofs, verification, RLS and the way back."""
    plan = report.plan
    lines = [f"# {report.target}: plan {plan.hash}", ""]
    if report.error:
        lines += [f"**FAILED**: {report.error}", "", f"Database is at the state after **{report.last_committed}**.", ""]
    lines += ["## Plan", "", *plan.table(), *plan.breaking_section()]
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
        lines += [
            "",
            "## Migrations applied",
            "",
            "| migration | seconds | attempts | strongest lock | longest app wait (s) | app sessions blocked |",
            "|---|---|---|---|---|---|",
        ]
        lines += [
            f"| {r.label} | {r.duration_s:.2f} | {r.attempts} | {r.strongest_lock or '-'}"
            f"{f' ({r.lock_held_s:.2f} s)' if r.lock_held_s else ''} | "
            f"{r.longest_app_wait_s:.2f} | {r.sessions_blocked} |"
            for r in report.migrations
        ]
    if report.proof:
        lines += ["", "## The running release on the new schema", "", *report.proof.markdown_lines(plan, report.target)]
    if report.health:
        verdict = "healthy" if report.health.passed else "UNHEALTHY"
        lines += ["", f"## The application: {verdict}", ""] + [f"- {check}" for check in report.health.checks]
    if report.aftermath:
        lines += ["", "## After the migration", "", report.aftermath.line()]
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


def publish_step_report(report: StepReport) -> str:
    """The step's report as the run's markdown artifact, and its migrations as a table artifact."""
    key = "".join(ch if ch.isalnum() else "-" for ch in f"dbpromote-{report.target}".lower())
    markdown = render_markdown(report)
    create_markdown_artifact(markdown, key=key, description=f"Promotion step on {report.target}")
    if report.migrations:
        create_table_artifact(
            [
                r.model_dump(
                    include={
                        "label",
                        "duration_s",
                        "attempts",
                        "strongest_lock",
                        "longest_app_wait_s",
                        "sessions_blocked",
                    }
                )
                for r in report.migrations
            ],
            key=f"{key}-migrations",
            description=f"Migrations applied on {report.target}",
        )
    return markdown


def _key(kind: str, target: str) -> str:
    return f"{kind}-{target}".lower().replace("_", "-")


def publish_coverage(coverage: Coverage) -> None:
    """A target's RLS coverage as a table artifact: each tenant table, its policy, its grants, what was done."""
    if in_a_run():
        create_table_artifact(
            [
                {
                    "table": t.table,
                    "rls": t.rls_enabled,
                    "policy": t.policy,
                    "missing grants": ", ".join(t.missing_grants),
                    "applied": t.action or "-",
                }
                for t in coverage.tables
            ],
            key=_key("rls-coverage", coverage.target),
            description=f"RLS coverage on {coverage.target}: {coverage.ddl_statements} DDL statements issued",
        )


def publish_isolation(isolation: Isolation, app_role: str) -> None:
    """The proof of tenant isolation, table by table, as a table artifact."""
    if in_a_run():
        create_table_artifact(
            [t.model_dump() for t in isolation.tables],
            key=_key("rls-proof", isolation.target),
            description=f"Tenant isolation proven as {app_role} on {isolation.target}",
        )


def publish_drift(report: DriftReport) -> None:
    """The report as the run's table artifact and as a record under the run (what `dbpromote drift` prints)."""
    run_id = str(flow_run.get_id() or "")
    rows = [
        {"object": d.object, "kind": d.kind, "expected": d.expected, "live": d.live, "fix": d.fix}
        for d in report.differences
    ]
    create_table_artifact(
        rows or [{"object": "-", "kind": "no drift", "expected": "", "live": "", "fix": ""}],
        key=_key("drift", report.target),
        description=report.summary(),
    )
    target = load_target(report.target)
    write_record(target, report.target, "drift", run_id, report.model_dump(mode="json"), scope=run_id)


class BackupProgress:
    """A Prefect progress artifact, estimated from bytes dumped over the database's size on disk."""

    def __init__(self, total: int, name: str):
        self.total, self.last = max(total, 1), 0.0
        self.artifact = create_progress_artifact(0.0, description=f"Backup {name}") if in_a_run() else None

    def update(self, dumped: int) -> None:
        if self.artifact and time.monotonic() - self.last > 2:
            self.last = time.monotonic()
            update_progress_artifact(self.artifact, min(99.0, 100.0 * dumped / self.total))

    def done(self) -> None:
        if self.artifact:
            update_progress_artifact(self.artifact, 100.0)
