"""What a person is asked: the approval requests (a promotion's plan, a group's waves, a rollback, a restore, a
reconciliation, a fix and its undo) and the texts of the deploy and window waits, as the forms show them."""

from __future__ import annotations

from dbpromote.models.approval import ApprovalRequest
from dbpromote.models.backup import Backup
from dbpromote.models.fix import FixRun, FixScript
from dbpromote.models.plan import AFTER_DEPLOY, Plan, PlannedMigration
from dbpromote.models.report import Rehearsal, StepReport
from dbpromote.reporting.markdown import breaking_section, fix_lines, plan_table, proof_lines, rehearsal_lines


def describe_window_wait(
    project: str, target: str, plan: Plan, needs: list[str], opening: str, expected_s: float
) -> str:
    """The window form's text: what waits, until when, why, and how to run it now instead."""
    return "\n".join(
        [
            f"## {target} waits for its maintenance window starting {opening}",
            "",
            f"{project} plan {plan.hash}: {', '.join(plan.labels)}. Each of these stalls the application while it "
            "runs, so it runs in a window:",
            "",
            *[f"- {need}" for need in needs],
            "",
            f"The step takes about {expected_s:.0f} s by the run that measured it; the run starts it in the first "
            "window with that much time left, and holds no worker until then.",
            "",
            "### To run it now instead",
            "",
            "Answer here with your name and the reason it cannot wait (kept in the promotion's journal), or run "
            f"`dbpromote run-now RUN --by YOUR_NAME --reason TEXT`. To stop here, cancel the run: nothing of "
            f"this step has run on {target}.",
        ]
    )


def describe_deploy_wait(project: str, target: str, plan: Plan, done: list[str]) -> str:
    """The deploy form's text: what ran, what waits and why, and how to answer."""
    after = [m.label for m in plan.phase(AFTER_DEPLOY)]
    lines = [
        f"## Deploy the new release of **{project}** now: {target} waits for it",
        "",
        f"{target} ran the migrations the running release survives: {', '.join(done) or 'none were pending'}.",
        "",
        f"These wait until only the new release uses {target}: {', '.join(after)}.",
        *breaking_section(plan),
        "",
        "### What to do",
        "",
        f"Deploy the release with these migrations to every instance that uses {target} (let the rollout finish: "
        "no instance of the previous release may be left), then answer here with the release's label, or run "
        f"`dbpromote deployed RUN --release LABEL`. The plan is checked again before the rest runs. To stop "
        f"here instead, cancel the run: {target} stays at the before-deploy phase, which the previous release "
        "survives.",
    ]
    return "\n".join(lines)


def describe_promotion(
    project: str,
    target: str,
    plan: Plan,
    reports: list[StepReport],
    rehearsal: Rehearsal | None,
    drift: str,
    when: str = "",
) -> str:
    lines = [
        f"## Approve promoting **{project}** to **{target}**",
        "",
        f"Plan **{plan.hash}**: {len(plan.migrations)} migration(s).",
        "",
        *plan_table(plan),
        *breaking_section(plan),
    ]
    if plan.risks:
        lines += ["", "**Risky operations (acknowledge to approve):**", ""] + [f"- {risk}" for risk in plan.risks]
    if plan.notes:
        lines += ["", "**Notes on this database:**", ""] + [f"- {note}" for note in plan.notes]
    if drift:
        lines += ["", f"**Drift of {target}:** {drift}"]
    if rehearsal is not None:
        lines += ["", *rehearsal_lines(rehearsal)]
    for report in reports:
        lines += ["", f"### Already done on {report.target}", ""]
        lines += ["| migration | seconds | attempts | strongest lock | held here (s) | longest app wait (s) |"]
        lines += ["|---|---|---|---|---|---|"]
        lines += [
            f"| {r.label} | {r.duration_s:.2f} | {r.attempts} | {r.strongest_lock or '-'} "
            f"| {r.lock_held_s or r.duration_s:.2f} | {r.longest_app_wait_s:.2f} |"
            for r in report.migrations
        ]
        if report.backup:
            lines += ["", f"Backup: {report.backup.uri}"]
        if report.verification:
            lines += ["", f"Verify: {'all checks passed' if report.verification.passed else 'FAILED'}"]
        if report.proof:
            lines += ["", *proof_lines(report.proof, report.plan, report.target)]
    lines += sql_section(plan)
    lines += [
        "",
        "### What happens next",
        "",
        f"On approve: the plan is recomputed on {target} and must still be {plan.hash}; then {target} is "
        "backed up to GCS, migrated one migration at a time, verified. On reject or timeout: nothing runs "
        f"on {target}.",
    ]
    if plan.two_phases:
        lines += [
            "",
            f"Where {target} is deployed rolling, it runs the before-deploy migrations first, then waits for the "
            "new release's deploy (`dbpromote deployed RUN --release LABEL --by NAME`) before the after-deploy ones.",
        ]
    if when:
        lines += ["", f"**When:** {target} {when}. Approving now is fine: the run waits, suspended, until then."]
    return "\n".join(lines)


def sql_section(plan: Plan) -> list[str]:
    lines = ["", "### SQL", ""]
    for m in plan.migrations:
        lines += [f"**{m.label}**{m.direction}", "```sql", "\n".join(m.sql) or "-- no SQL", "```"]
    return lines


def promotion_request(
    project: str,
    target: str,
    plan: Plan,
    reports: list[StepReport],
    rehearsal: Rehearsal | None = None,
    drift: str = "",
    when: str = "",
) -> ApprovalRequest:
    """A promotion's approval: a migration the rehearsal found slow becomes a risk to acknowledge; `when` says when
    the step runs where it waits for a maintenance window."""
    if rehearsal is not None:
        plan = plan.model_copy(deep=True)
        for migration in plan.migrations:
            if risk := rehearsal.risk(migration.label):
                migration.risks.append(risk)
    return ApprovalRequest(
        action=f"promoting to {target}",
        target=target,
        subject=plan.hash,
        items=plan.labels,
        risks=plan.risks,
        description=describe_promotion(project, target, plan, reports, rehearsal, drift, when),
        notice=f"{project} plan {plan.hash} ({len(plan.migrations)} migrations) passed on "
        f"{', '.join(r.target for r in reports)} and waits for approval on {target}",
        on_reject="fix the release and start a new promotion",
    )


def group_request(
    project: str,
    group: str,
    first: str,
    plan: Plan,
    reports: list[StepReport],
    when: str,
    in_waves: list[list[str]],
    drift: dict[str, list[str]],
    limits: str,
) -> ApprovalRequest:
    """One approval for a group's members (asked on the first that needs it): the plan, the members in their
    waves (the canary first), the members with the same drift said once, and the group's limits."""
    waiting = [member for wave in in_waves for member in wave]
    request = promotion_request(project, group, plan, reports, None, "", when).model_copy(
        update={"target": first, "action": f"promoting to group {group} ({len(waiting)} members)"}
    )
    shape = [f"| {n or 'canary'} | {', '.join(wave)} |" for n, wave in enumerate(in_waves)]
    drifted = [f"- **{', '.join(members)}**: {status}" for status, members in drift.items() if status]
    request.description += "\n".join(
        ["", "", f"### The members of {group}, in waves", "", "| wave | members |", "|---|---|", *shape]
        + (["", "### Drift", "", *drifted] if drifted else [])
        + ["", limits]
    )
    return request


def rollback_request(project: str, target: str, plan: Plan, backup: Backup) -> ApprovalRequest:
    lines = [
        f"## Approve rolling back **{project}** on **{target}**",
        "",
        f"Back to the migration state of {backup.uri} (taken {backup.created_at}); "
        f"{len(plan.migrations)} migration(s) reversed, in this order:",
        "",
        "| migration | atomic | risks |",
        "|---|---|---|",
    ]
    lines += [f"| {m.label} | {m.atomic} | {'; '.join(m.risks) or '-'} |" for m in plan.migrations]
    lines += sql_section(plan)
    lines += [
        "",
        "### What happens next",
        "",
        f"On approve: {target} is backed up to GCS, then each migration is reversed under lock_timeout, the "
        f"state checked and RLS brought up to date. On reject or timeout: nothing changes.",
    ]
    return ApprovalRequest(
        action=f"rolling back {target}",
        target=target,
        subject=plan.hash,
        items=plan.labels,
        risks=plan.risks,
        description="\n".join(lines),
        notice=f"rolling back {project} on {target} ({len(plan.migrations)} migrations) waits for approval",
    )


def restore_request(target: str, backup: Backup) -> ApprovalRequest:
    state = ", ".join(f"{app}.{name}" for app, name in backup.migration_state) or "no migrations"
    return ApprovalRequest(
        action=f"restoring {target} from a backup",
        target=target,
        subject=backup.uri,
        items=[backup.uri],
        description="\n".join(
            [
                f"## Approve restoring **{target}** from a backup",
                "",
                f"- backup: {backup.uri}",
                f"- taken {backup.created_at} ({backup.size_bytes} bytes), flow run {backup.flow_run_id or '-'}",
                f"- its migration state: {state}",
                "",
                "### What happens next",
                "",
                f"On approve: the backup is restored into a new database and checked against its manifest; then "
                f"{target}'s sessions are ended and its database is renamed aside (kept) and replaced by the "
                f"restored one. Every change made to {target} since the backup is then only in the kept database. "
                f"On reject or timeout: nothing changes.",
            ]
        ),
        notice=f"restoring {target} from {backup.uri} waits for approval",
    )


def reconcile_request(target: str, migration: PlannedMigration, file_hash: str, drift: str) -> ApprovalRequest:
    return ApprovalRequest(
        action=f"recording {migration.label} as applied on {target}",
        target=target,
        subject=f"{migration.label}@{file_hash}",
        items=[migration.label],
        description="\n".join(
            [
                f"## Approve recording **{migration.label}** as applied on **{target}** (`migrate --fake`)",
                "",
                f"Someone applied its effect by hand. Proven: {target}'s schema equals a replay of its recorded "
                f"migrations plus this one ({drift}).",
                "",
                "```sql",
                "\n".join(migration.sql) or "-- no SQL",
                "```",
                "",
                "### What happens next",
                "",
                f"On approve: django_migrations on {target} records {migration.label}; nothing else runs. On reject "
                "or timeout: nothing changes.",
            ]
        ),
        notice=f"recording {migration.label} as applied on {target} waits for approval",
    )


def fix_request(target: str, script: FixScript, dry: FixRun, done: list[FixRun]) -> ApprovalRequest:
    """A data fix's approval: the script, its hash and purpose, what its dry run would change here and what it
    changed on the targets before; a fix not scoped to tenants is a risk to acknowledge."""
    scope = f"as the application role for tenant(s) {', '.join(dry.tenants)} (RLS confines it to them)"
    risks = [] if dry.tenants else [f"{script.name}: unscoped: runs as the migration role over every tenant's rows"]
    lines = [
        f"## Approve the data fix **{script.name}** on **{target}**",
        "",
        f"Purpose: {script.purpose or '(none given)'}. Script hash **{script.hash}**; runs "
        f"{scope if dry.tenants else 'unscoped, as the migration role'}.",
        "",
        f"### Its dry run on {target} (rolled back): {dry.rows} rows",
        "",
        *fix_lines(dry),
    ]
    for run in done:
        lines += ["", f"### Done on {run.target}: {run.rows} rows", "", *fix_lines(run)]
    language = "python" if script.python else "sql"
    lines += ["", "### The script", "", f"```{language}", script.source.strip(), "```", "", "### What happens next", ""]
    lines.append(
        f"On approve: {target} is backed up, then the script runs and commits only if it changes exactly the rows "
        "counted above; the before-image of every changed row is saved first (`dbpromote fix-undo` puts them back). "
        "On reject or timeout: nothing changes."
    )
    return ApprovalRequest(
        action=f"fixing data on {target} with {script.name}",
        target=target,
        subject=f"{script.hash}:{dry.rows}",
        items=[t.table for t in dry.tables],
        risks=risks,
        description="\n".join(lines),
        notice=f"the data fix {script.name} ({dry.rows} rows) waits for approval on {target}",
    )


def undo_request(target: str, record: dict) -> ApprovalRequest:
    return ApprovalRequest(
        action=f"undoing the fix {record['script']} on {target}",
        target=target,
        subject=record["before_images"],
        items=[t["table"] for t in record["tables"]],
        description=f"## Approve putting back the {record['rows']} rows the fix **{record['script']}** "
        f"({record['script_hash']}, run {record['flow_run_id']}) changed on **{target}**\n\nFrom "
        f"{record['before_images']}. Refused without changing anything if any of them changed again since.",
        notice=f"undoing the fix {record['script']} on {target} waits for approval",
    )


def who_may_answer(allowed: list[str], coded: bool, needed: int, so_far: list[str]) -> str:
    """The form's paragraph on who may answer, how they prove it, and who has approved so far."""
    if coded:
        lines = [f"Approvers: {', '.join(allowed)}; each answer carries the approver's current one-time code."]
    else:
        lines = [
            "This target has no enrolled approvers: the name given is taken at its word "
            f"({'anyone' if not allowed else 'one of ' + ', '.join(allowed)}); enrol them with "
            "`dbpromote approver add NAME`."
        ]
    if needed > 1:
        lines.append(
            f"{needed} different approvers must approve; so far: {', '.join(so_far) or 'nobody'} "
            f"({len(so_far)} of {needed}). One rejection ends it."
        )
    return "\n\n".join(["", "### Who approves", "", *lines])
