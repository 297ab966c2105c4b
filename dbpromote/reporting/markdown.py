"""Markdown of results: what a person reads of a step, a plan, a drift check, a check for CI and a target's
interventions. Pure functions of the results; dbpromote/reporting publishes them (and forms.py asks with them)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from dbpromote.models.drift import WHY, objects_of, table_cell

if TYPE_CHECKING:
    from dbpromote.check import CheckReport
    from dbpromote.interventions import Intervention
    from dbpromote.models.drift import DriftReport
    from dbpromote.models.fix import FixRun
    from dbpromote.models.plan import Plan
    from dbpromote.models.report import CompatibilityProof, Rehearsal, StepReport

SQL_PREVIEW_LINES = 12


def render_markdown(report: StepReport) -> str:
    """An environment step's report: its plan, backup, migrations, proofs, verification, RLS and the way back."""
    lines = [f"# {report.target}: plan {report.plan.hash}", ""]
    if report.error:
        lines += [f"**FAILED**: {report.error}", "", f"Database is at the state after **{report.last_committed}**.", ""]
    for section in (_plan, _backup, _migrations, _after, _rls):
        lines += section(report)
    lines += ["", "## The way back", "", report.way_back()]
    return "\n".join(lines)


def _plan(report: StepReport) -> list[str]:
    """The plan's table, what breaks the running release, and each migration's SQL (its first lines)."""
    plan = report.plan
    lines = ["## Plan", "", *plan_table(plan), *breaking_section(plan)]
    for m in plan.migrations:
        preview = "\n".join(m.sql[:SQL_PREVIEW_LINES]) + ("\n..." if len(m.sql) > SQL_PREVIEW_LINES else "")
        lines += ["", f"### {m.label}", "```sql", preview, "```"]
    return lines


def _backup(report: StepReport) -> list[str]:
    if not (b := report.backup):
        return []
    return [
        "",
        "## Backup",
        "",
        f"- {b.uri}",
        f"- {b.size_bytes} bytes, CRC32C {b.crc32c}",
        f"- {b.duration_s:.1f} s, server {b.server_version}, verified by a full read-back",
    ]


def _migrations(report: StepReport) -> list[str]:
    """Each migration applied: its time, attempts, strongest lock and what the application waited behind it."""
    if not report.migrations:
        return []
    return [
        "",
        "## Migrations applied",
        "",
        "| migration | seconds | attempts | strongest lock | longest app wait (s) | app sessions blocked |",
        "|---|---|---|---|---|---|",
    ] + [
        f"| {r.label} | {r.duration_s:.2f} | {r.attempts} | {r.strongest_lock or '-'}"
        f"{f' ({r.lock_held_s:.2f} s)' if r.lock_held_s else ''} | "
        f"{r.longest_app_wait_s:.2f} | {r.sessions_blocked} |"
        for r in report.migrations
    ]


def _after(report: StepReport) -> list[str]:
    """What was checked after the migrations: the running release's proof, the application, the watch, verify."""
    lines = []
    if report.proof:
        lines += ["", "## The running release on the new schema", ""]
        lines += proof_lines(report.proof, report.plan, report.target)
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
    return lines


def _rls(report: StepReport) -> list[str]:
    """The RLS step: the tenant tables, the DDL it issued, what it changed; the isolation proof."""
    lines = []
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
    return lines


def plan_table(plan: Plan) -> list[str]:
    """The migrations as a markdown table: phase, atomicity, reversibility and risks."""
    lines = ["| migration | phase | atomic | reversible | risks |", "|---|---|---|---|---|"]
    for m in plan.migrations:
        phase = f"{m.phase} ({m.phase_reason})" if m.phase_reason else m.phase
        lines.append(
            f"| {m.label}{m.direction} | {phase} | {m.atomic} | {m.reversible} | {'; '.join(m.risks) or '-'} |"
        )
    return lines


def breaking_section(plan: Plan) -> list[str]:
    """What the release running during the migration meets, for a markdown report ([] when nothing)."""
    if not plan.breaking:
        return []
    head = "**Breaks the release that is running while it migrates** (so it runs after the app deploy):"
    return ["", head, ""] + [f"- {line}" for line in plan.breaking]


def rehearsal_lines(rehearsal: Rehearsal) -> list[str]:
    lines = [
        f"### Rehearsal on {rehearsal.target}'s data",
        "",
        f"Restored {rehearsal.backup_uri} into a scratch database and ran the plan there first.",
        "",
        "| migration | seconds | attempts | slower than " + f"{rehearsal.slow_s:g} s |",
        "|---|---|---|---|",
    ]
    slow = {result.label for result in rehearsal.slow}
    lines += [
        f"| {r.label} | {r.duration_s:.2f} | {r.attempts} | {'**yes**' if r.label in slow else '-'} |"
        for r in rehearsal.migrations
    ]
    return lines


def proof_lines(proof: CompatibilityProof, plan: Plan, target: str) -> list[str]:
    head = (
        f"The running release's {proof.models} models run against {target} after it migrated "
        f"({proof.duration_s:.2f} s, all rolled back): "
    )
    findings = proof.findings(plan)
    if not findings:
        return [head + "every SELECT and INSERT works."]
    return [head + f"{len(proof.failures)} statement(s) fail.", ""] + [f"- {line}" for line in findings]


def fix_lines(run: FixRun) -> list[str]:
    lines = ["| table | inserted | updated | deleted | sample keys |", "|---|---|---|---|---|"]
    lines += [
        f"| {t.table} | {t.inserted} | {t.updated} | {t.deleted} | {', '.join(t.sample_keys) or '-'} |"
        for t in run.tables
    ]
    return lines if run.tables else ["No row would change."]


def drift_markdown(report: DriftReport) -> str:
    """For an artifact or a pull request's comment: blocking differences as a table, the rest folded."""
    lines = [f"# Drift of {report.target}", "", report.summary(at_most=0 if report.found else 5), ""]
    if report.blocking:
        lines += ["| object | kind | expected | live | fix |", "|---|---|---|---|---|"]
        lines += [
            f"| {' | '.join(table_cell(cell) for cell in (d.object, d.kind, d.expected, d.live, d.fix))} |"
            for d in report.blocking
        ]
    if report.repaired:
        lines += [
            "",
            f"<details><summary>{len(report.repaired)} that a promotion's RLS step repairs by itself</summary>",
            "",
            objects_of(report.repaired),
            "",
            "</details>",
        ]
    if report.notes:
        lines += [
            "",
            f"<details><summary>{len(report.notes)} that differ only by a name Django generated (notes, never "
            "blocking)</summary>",
            "",
            "| object | name the replay gave | live name |",
            "|---|---|---|",
            *(f"| {table_cell(d.object)} | {table_cell(d.expected)} | {table_cell(d.live)} |" for d in report.notes),
            "",
            f"{WHY['generated'].capitalize()}.",
            "",
            "</details>",
        ]
    return "\n".join(lines)


def check_markdown(report: CheckReport) -> str:
    """A summary to post as a pull request's comment."""
    verdict = "blocking findings" if report.blocking else "nothing blocking"
    lines = [f"## dbpromote check: {report.project} against {report.target}: {verdict}", ""]
    if report.refused:
        lines += ["**A promotion would be refused:**", ""] + [f"- {reason}" for reason in report.refused] + [""]
    if report.plan is not None:
        lines += [f"### Plan {report.plan.hash}: {len(report.plan.migrations)} migration(s)", ""]
        if report.plan.migrations:
            lines += plan_table(report.plan)
        lines += breaking_section(report.plan)
        if report.plan.risks:
            allowed = " (allowed: to be acknowledged at approval)" if report.risks_allowed else ""
            lines += ["", f"**Risks{allowed}:**", ""] + [f"- {risk}" for risk in report.plan.risks]
        if report.plan.notes:
            lines += ["", "**Notes:**", ""] + [f"- {note}" for note in report.plan.notes]
        lines.append("")
    if report.drift is not None:
        lines += drift_markdown(report.drift).replace("# Drift", "### Drift", 1).splitlines()
    lines += [f"- {note}" for note in report.notes]
    return "\n".join(lines)


def interventions_markdown(target_name: str, found: list[Intervention]) -> str:
    """In the shape of the seed's migration notes: one entry per intervention, date, purpose, scripts used."""
    lines = [f"# Interventions on {target_name}", ""]
    for i in found:
        lines += [f"## {i.at[:10]}: {i.kind}", "", f"- when: {i.at[:19]} UTC (run {i.run})", f"- what: {i.what}"]
        lines += [f"- purpose: {i.purpose}"] if i.purpose else []
        lines += [f"- approved by: {', '.join(i.approvers)}"] if i.approvers else []
        lines += [f"- rows affected: {i.rows}"] if i.rows is not None else []
        lines += [f"- backup: {i.backup}"] if i.backup else []
        lines += (
            [f"- before-images (`dbpromote fix-undo {i.run} --target {target_name}`): {i.before_images}"]
            if (i.before_images)
            else []
        )
        lines.append("")
    return "\n".join(lines)
