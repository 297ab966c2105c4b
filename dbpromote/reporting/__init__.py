"""Reports: the steps return results, and this turns them into what a person reads in the Prefect UI (markdown,
table and progress artifacts) and into the records `dbpromote drift` prints. The work never builds its report."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

from prefect.artifacts import (
    create_markdown_artifact,
    create_progress_artifact,
    create_table_artifact,
    update_progress_artifact,
)
from prefect.runtime import flow_run

from dbpromote.config import load_target
from dbpromote.models.approval import Approval
from dbpromote.models.backup import Restored, Retained
from dbpromote.models.drift import DriftReport
from dbpromote.models.fix import FixRun, FixScript
from dbpromote.models.report import Coverage, Isolation, StepReport
from dbpromote.records import write_record
from dbpromote.reporting.markdown import fix_lines, render_markdown
from dbpromote.run_context import in_a_run

# A fleet member's step publishes its markdown report alone (which has its migrations, RLS and proof in it), not
# also its migrations, RLS coverage and isolation as tables: those were four artifacts more a member, each a request
# the server answers (a fifth of a lane's requests, benchmarks/fleet.py's profile), and a UI listing 5,000 artifacts
# for a fleet of 1,000.
_ONE_REPORT = ContextVar("one_report", default=False)


@contextmanager
def markdown_alone() -> Iterator[None]:
    """The step run inside publishes its markdown report and no table artifact (a fleet member's)."""
    token = _ONE_REPORT.set(True)
    try:
        yield
    finally:
        _ONE_REPORT.reset(token)


def tables_wanted() -> bool:
    return in_a_run() and not _ONE_REPORT.get()


def publish_step_report(report: StepReport) -> str:
    """The step's report as the run's markdown artifact, and its migrations as a table artifact."""
    key = "".join(ch if ch.isalnum() else "-" for ch in f"dbpromote-{report.target}".lower())
    markdown = render_markdown(report)
    create_markdown_artifact(markdown, key=key, description=f"Promotion step on {report.target}")
    if report.migrations and tables_wanted():
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
    if tables_wanted():
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
    if tables_wanted():
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
    write_record(target, "drift", run_id, report.model_dump(mode="json"), scope=run_id)


class BackupProgress:
    """A Prefect progress artifact, estimated from bytes dumped over the database's size on disk; made once a backup
    has taken longer than UPDATE_S (most of a fleet's are over in a fraction of that: an artifact and two updates
    a member for nothing anyone watches)."""

    UPDATE_S = 2

    def __init__(self, total: int, name: str):
        self.total, self.name, self.artifact = max(total, 1), name, None
        self.last = time.monotonic()
        self.wanted = in_a_run()

    def update(self, dumped: int) -> None:
        if self.wanted and time.monotonic() - self.last > self.UPDATE_S:
            self.last = time.monotonic()
            done = min(99.0, 100.0 * dumped / self.total)
            if self.artifact is None:
                self.artifact = create_progress_artifact(done, description=f"Backup {self.name}")
            else:
                update_progress_artifact(self.artifact, done)

    def done(self) -> None:
        if self.artifact:
            update_progress_artifact(self.artifact, 100.0)


def publish_promotion(
    project: str, through: list[str], run_id: str, reports: list[StepReport], approvals: list[Approval]
) -> None:
    """A promotion's summary: each environment's plan, migrations, time and backup, its approvals, the way back."""
    lines = [
        f"# Promotion of {project}",
        "",
        f"Flow run {run_id}",
        "",
        "| environment | plan | migrations | seconds | backup |",
        "|---|---|---|---|---|",
    ]
    for report in reports:
        seconds = sum(result.duration_s for result in report.migrations)
        backup = report.backup.uri if report.backup else "-"
        lines.append(f"| {report.target} | {report.plan.hash} | {len(report.migrations)} | {seconds:.1f} | {backup} |")
    for approval in approvals:
        lines += [
            "",
            f"Approved for **{approval.target}** by **{', '.join(approval.approvers or [approval.approver])}**"
            f"{' (each with a one-time code)' if approval.proven else ''} at {approval.approved_at} "
            f"for plan {approval.subject}: {approval.comment or '(no comment)'}",
        ]
    lines += ["", "## The way back", ""] + [f"- {r.target}: {r.way_back()}" for r in reports]
    create_markdown_artifact(
        "\n".join(lines), key="dbpromote-promotion", description=f"Promotion of {project} through {', '.join(through)}"
    )


def publish_fix(script: FixScript, runs: list[FixRun]) -> None:
    """A fix's summary: on each target, the rows it changed by table, its backup and its before-images."""
    lines = [f"# Fix {script.name} ({script.hash})", "", script.purpose or "", ""]
    for run in runs:
        scope = f"tenants {', '.join(run.tenants)}" if run.tenants else "unscoped"
        lines += [f"## {run.target}: {run.rows} rows, {scope}", "", *fix_lines(run), ""]
        lines += [f"Backup: {run.backup or '-'}; before-images: {run.before_images or '-'}", ""]
    create_markdown_artifact("\n".join(lines), key="dbpromote-fix", description=f"Fix {script.name}")


def publish_retention(retained: list[Retained]) -> None:
    """What retention kept (with why), deleted and swept, target by target."""
    lines = ["# Backup retention", ""]
    for result in retained:
        lines += [f"## {result.target}", "", f"Deleted {len(result.deleted)}:", ""]
        lines += [f"- {uri}" for uri in result.deleted] or ["- nothing"]
        lines += ["", "Kept:", ""] + [f"- {uri}: {why}" for uri, why in result.kept.items()] + [""]
        if result.swept:
            lines += ["Swept (never verified: left by a backup that stopped before its verification):", ""]
            lines += [f"- {uri}" for uri in result.swept] + [""]
    create_markdown_artifact("\n".join(lines), key="dbpromote-retention", description="Backup retention")


def publish_backup_verification(results: list[Restored], problems: list[str]) -> None:
    """Each target's newest backup restored and checked, and each that failed."""
    lines = ["# Backup verification", "", "| target | backup | tables | rows | seconds |", "|---|---|---|---|---|"]
    lines += [f"| {r.target} | {r.backup.uri} | {r.tables} | {r.rows} | {r.duration_s:.1f} |" for r in results]
    lines += [f"\n**FAILED** {problem}" for problem in problems]
    create_markdown_artifact("\n".join(lines), key="dbpromote-backup-verification", description="Backups restored")


def publish_restore(restored: Restored) -> None:
    """A restore: the backup, the database it went into, what was checked, and the database it replaced."""
    lines = [
        f"# Restore of {restored.target}",
        "",
        f"- backup: {restored.backup.uri} (taken {restored.backup.created_at})",
        f"- restored into database `{restored.database}` in {restored.duration_s:.1f} s",
        f"- checked: {restored.tables} tables, {restored.rows} rows match the backup's manifest; migration state "
        f"{len(restored.migration_state)} migrations matches",
    ]
    if restored.replaced:
        lines += [
            f"- `{restored.database}` is now the target's database; the previous one is kept as `{restored.replaced}` "
            f"(drop it with `DROP DATABASE {restored.replaced}` once you no longer need it)",
        ]
    create_markdown_artifact("\n".join(lines), key="dbpromote-restore", description=f"Restore of {restored.target}")


def publish_audit(project: str, findings: dict[str, dict], problems: list[str]) -> None:
    """An audit: each target's pending migrations, drift, RLS gaps and newest backup, and the problems found."""
    lines = [
        "# Audit",
        "",
        "| target | pending | drift | RLS gaps | newest backup | age (h) |",
        "|---|---|---|---|---|---|",
    ]
    lines += [
        f"| {name} | {len(f['pending'])} | {len(f['drift'])} | {', '.join(f['rls_gaps']) or '-'} | "
        f"{f['newest_backup'] or '-'} | "
        f"{f['backup_age_h'] if f['backup_age_h'] is not None else '-'} |"
        for name, f in findings.items()
    ]
    if problems:
        lines += ["", "**Problems:**", ""] + [f"- {problem}" for problem in problems]
    create_markdown_artifact("\n".join(lines), key="dbpromote-audit", description=f"Audit of {project}")


def publish_group(group: str, rows: list[dict]) -> None:
    """A group's members in this run: each one's wave, outcome, worker and times."""
    create_table_artifact(rows, key=f"dbpromote-group-{group}", description=f"Members of {group} in this run")
