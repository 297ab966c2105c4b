"""Approval: pause the run with a typed form until a permitted person approves exactly this plan, or rejects it."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime
from typing import Literal

from prefect import get_run_logger, pause_flow_run
from prefect.exceptions import FlowPauseTimeout
from prefect.input import RunInput
from prefect.runtime import flow_run
from pydantic import BaseModel, Field, create_model

from dbpromote.config import DatabaseTarget
from dbpromote.errors import ApprovalRejected
from tasks.gcs import gcs_client, gcs_retry
from tasks.notify import notify, run_url
from tasks.plan import Plan
from tasks.report import StepReport

# A Literal, not an Enum: the UI's form renders an inline enum as a choice, but not one behind a $ref.
Decision = Literal["approve", "reject"]


class Approval(BaseModel):
    """Who approved what, when: recorded in the run's report and in the bucket beside the backups."""

    target: str
    plan_hash: str
    migrations: list[str]
    approver: str
    comment: str
    approved_at: str
    flow_run_id: str
    acknowledged_risks: list[str]


def approval_form(plan: Plan) -> type[RunInput]:
    """The form the UI renders: a decision with no default forces a choice; risky plans need an acknowledgement."""
    fields: dict = {
        "decision": (Decision, Field(description="approve runs the plan on this environment; reject stops here")),
        "approver": (str, Field(min_length=1, description="Your name, as the target's approvers list has it")),
        "comment": (str, Field(default="", description="Why; shown in the report and the audit record")),
    }
    if plan.risks:
        fields["acknowledge_risky_operations"] = (
            bool,
            Field(description="I have read the risky operations listed above and accept them"),
        )
    return create_model("PromotionApproval", __base__=RunInput, **fields)


def describe(project: str, target: str, plan: Plan, reports: list[StepReport]) -> str:
    lines = [
        f"## Approve promoting **{project}** to **{target}**",
        "",
        f"Plan **{plan.hash}**: {len(plan.migrations)} migration(s).",
        "",
        "| migration | atomic | reversible | risks |",
        "|---|---|---|---|",
    ]
    lines += [f"| {m.label} | {m.atomic} | {m.reversible} | {'; '.join(m.risks) or '-'} |" for m in plan.migrations]
    if plan.risks:
        lines += ["", "**Risky operations (acknowledge to approve):**", ""] + [f"- {risk}" for risk in plan.risks]
    for report in reports:
        lines += ["", f"### Already done on {report.target}", "", "| migration | seconds | attempts |", "|---|---|---|"]
        lines += [f"| {r.label} | {r.duration_s:.2f} | {r.attempts} |" for r in report.migrations]
        if report.backup:
            lines += ["", f"Backup: {report.backup.uri}"]
        if report.verification:
            lines += ["", f"Verify: {'all checks passed' if report.verification.passed else 'FAILED'}"]
    lines += ["", "### SQL", ""]
    for m in plan.migrations:
        lines += [f"**{m.label}**", "```sql", "\n".join(m.sql) or "-- no SQL", "```"]
    lines += [
        "",
        "### What happens next",
        "",
        f"On approve: the plan is recomputed on {target} and must still be {plan.hash}; then {target} is "
        "backed up to GCS, migrated one migration at a time, verified. On reject or timeout: nothing runs "
        f"on {target}.",
    ]
    return "\n".join(lines)


def wait_for_approval(
    project: str, target_name: str, plan: Plan, reports: list[StepReport], timeout_s: int, poll_s: int
) -> Approval:
    """Pause until a permitted approver decides; a refused answer is logged and the run keeps waiting."""
    from dbpromote.config import load_target

    logger = get_run_logger()
    allowed = load_target(target_name).approvers
    form = approval_form(plan)
    description = describe(project, target_name, plan, reports)
    deadline = time.monotonic() + timeout_s
    notify(
        f"dbpromote: {project} waits for approval on {target_name}",
        f"{project} plan {plan.hash} ({len(plan.migrations)} migrations) passed on "
        f"{', '.join(r.target for r in reports)} and waits for approval on {target_name}: "
        f"{run_url(flow_run.get_id())}",
    )
    while True:
        remaining = int(deadline - time.monotonic())
        try:
            if remaining <= 0:
                raise FlowPauseTimeout("approval timed out")
            answer = pause_flow_run(
                wait_for_input=form.with_initial_data(description=description), timeout=remaining, poll_interval=poll_s
            )
        except FlowPauseTimeout:
            raise ApprovalRejected(
                f"No approval for {target_name} within {timeout_s} s, which counts as a rejection; {target_name} "
                "is untouched: start a new promotion when someone can approve."
            ) from None
        if allowed and answer.approver not in allowed:
            logger.warning(
                "approval refused: %r may not approve %s (approvers: %s); still waiting",
                answer.approver,
                target_name,
                ", ".join(allowed),
            )
            continue
        if answer.decision == "reject":
            raise ApprovalRejected(
                f"{answer.approver} rejected promoting to {target_name} ({answer.comment or 'no comment'}); "
                f"{target_name} is untouched: fix the release and start a new promotion."
            )
        if plan.risks and not getattr(answer, "acknowledge_risky_operations", False):
            logger.warning(
                "approval by %s refused: the risky operations were not acknowledged; still waiting", answer.approver
            )
            continue
        logger.info("%s approved plan %s for %s", answer.approver, plan.hash, target_name)
        return Approval(
            target=target_name,
            plan_hash=plan.hash,
            migrations=plan.labels,
            approver=answer.approver,
            comment=answer.comment,
            approved_at=datetime.now(UTC).isoformat(),
            flow_run_id=str(flow_run.get_id() or ""),
            acknowledged_risks=plan.risks,
        )


def record_approval(target: DatabaseTarget, target_name: str, approval: Approval) -> str:
    """The audit record, as JSON in the bucket beside the target's backups; returns its URI."""
    name = f"{target.prefix}/{target_name}/approvals/{approval.approved_at}-{approval.flow_run_id[:8]}.json"
    blob = gcs_client().bucket(target.bucket).blob(name)
    blob.upload_from_string(
        json.dumps(approval.model_dump(), indent=2), content_type="application/json", retry=gcs_retry()
    )
    return f"gs://{target.bucket}/{name}"
