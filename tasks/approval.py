"""Approval: pause the run with a typed form until a permitted person approves exactly this plan, or rejects it."""

from __future__ import annotations

import time
from datetime import UTC, datetime

from prefect import get_run_logger, pause_flow_run
from prefect.exceptions import FlowPauseTimeout
from prefect.input import RunInput
from prefect.runtime import flow_run

from dbpromote.config import DatabaseTarget
from dbpromote.errors import ApprovalRejected
from dbpromote.models.approval import Approval, ApprovalRequest, approval_form, refusal
from dbpromote.notify import notify, run_url
from dbpromote.records import write_record

# A paused run asks the server this often whether it was answered: at 10 s, production started 9 s after
# `dbpromote approve` on the stack (benchmarks/latency.py); reading one flow run every 2 s costs the server nothing.
ANSWER_POLL_S = 2


def wait_for_approval(request: ApprovalRequest, timeout_s: int, poll_s: int) -> Approval:
    """Pause until a permitted approver decides; a refused answer is logged and the run keeps waiting."""
    from dbpromote.config import load_target

    logger = get_run_logger()
    allowed = load_target(request.target).approvers
    deadline = time.monotonic() + timeout_s
    notify(f"dbpromote: {request.action} waits for approval", f"{request.notice}: {run_url(flow_run.get_id())}")
    while True:
        answer = _pause_for_answer(request, deadline, timeout_s, poll_s)
        if reason := refusal(request, answer, allowed):
            logger.warning("approval refused: %s; still waiting", reason)
            continue
        if answer.decision == "reject":
            raise ApprovalRejected(
                f"{answer.approver} rejected {request.action} ({answer.comment or 'no comment'}); "
                f"{request.target} is untouched: {request.on_reject}."
            )
        logger.info("%s approved %s (%s)", answer.approver.strip(), request.action, request.subject)
        return Approval(
            target=request.target,
            action=request.action,
            subject=request.subject,
            items=request.items,
            approver=answer.approver.strip(),
            comment=answer.comment,
            approved_at=datetime.now(UTC).isoformat(),
            flow_run_id=str(flow_run.get_id() or ""),
            acknowledged_risks=request.risks,
        )


def _pause_for_answer(request: ApprovalRequest, deadline: float, timeout_s: int, poll_s: int) -> RunInput:
    """The next answer given in the form; no answer before the deadline is a rejection."""
    remaining = int(deadline - time.monotonic())
    try:
        if remaining <= 0:
            raise FlowPauseTimeout("approval timed out")
        return pause_flow_run(
            wait_for_input=approval_form(bool(request.risks)).with_initial_data(description=request.description),
            timeout=remaining,
            poll_interval=poll_s,
        )
    except FlowPauseTimeout:
        raise ApprovalRejected(
            f"No approval for {request.action} within {timeout_s} s, which counts as a rejection; "
            f"{request.target} is untouched: {request.on_reject}."
        ) from None


def record_approval(target: DatabaseTarget, target_name: str, approval: Approval) -> str:
    """The audit record, as JSON in the bucket beside the target's backups; returns its URI."""
    return write_record(target, target_name, "approvals", approval.flow_run_id, approval.model_dump())
