"""Report: one markdown artifact and one table artifact per environment step, including the way back."""

from __future__ import annotations

from prefect import task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE

from dbpromote.models.report import StepReport

SQL_PREVIEW_LINES = 12


def render_markdown(report: StepReport) -> str:
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


@task(name="report", cache_policy=NO_CACHE)
def publish_report(report: StepReport) -> str:
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
