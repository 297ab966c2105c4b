"""A run waiting for a person or for time: an approval of exactly its plan, the app's deploy between a promotion's
two phases, a maintenance window. Each wait pauses the flow run (or suspends it, releasing its worker, when it runs
from a deployment) with a typed form, and writes what it waits for in its pause key: `pending` and the answers read
it (runs.py). An approval's key has neither prefix."""

from __future__ import annotations

import hashlib
import itertools
import time
from datetime import UTC, datetime

from prefect import get_run_logger, pause_flow_run, suspend_flow_run
from prefect.context import FlowRunContext
from prefect.deployments import run_deployment
from prefect.exceptions import FlowPauseTimeout, ObjectNotFound
from prefect.input import RunInput, create_flow_run_input, read_flow_run_input
from prefect.input.run_input import keyset_from_base_key
from prefect.runtime import flow_run

from dbpromote import events
from dbpromote.approvers import is_enrolled
from dbpromote.config import DatabaseTarget
from dbpromote.errors import ApprovalRejected, ConfigError, DeployNotConfirmed, PreflightError
from dbpromote.models.approval import (
    THE_WINDOW,
    Answerers,
    Approval,
    ApprovalRequest,
    DeployForm,
    Deployment,
    WindowForm,
    WindowRun,
    answerers_key,
    approval_form,
    refusal,
)
from dbpromote.models.plan import Plan
from dbpromote.notify import notify, run_url
from dbpromote.records import write_record
from dbpromote.reporting.forms import describe_deploy_wait, describe_window_wait, who_may_answer
from dbpromote.windows import Opening, WindowNeed, next_opening

DEPLOY_KEY_PREFIX = "deploy-"  # the app's deploy, between a promotion's two phases: `deployed` answers only these
WINDOW_KEY_PREFIX = "window-"  # a maintenance window, the opening's time after it
KEY_TIME = "%Y%m%d%H%M"  # pause keys take lowercase letters, digits and dashes only


def kind(pause_key: str) -> str:
    """ "deploy", "window" or "approval"."""
    if pause_key.startswith(DEPLOY_KEY_PREFIX):
        return "deploy"
    return "window" if pause_key.startswith(WINDOW_KEY_PREFIX) else "approval"


def key_at(opens: datetime, subject: str) -> str:
    """The key of a wait for the window opening at `opens`."""
    return f"{WINDOW_KEY_PREFIX}{opens:{KEY_TIME}}-{subject}"


def opens_at(pause_key: str) -> datetime | None:
    """When the window a paused run waits for opens, from its wait's key; None for another kind of wait."""
    if kind(pause_key) != "window":
        return None
    return datetime.strptime(pause_key.removeprefix(WINDOW_KEY_PREFIX).split("-")[0], KEY_TIME).replace(tzinfo=UTC)


# A paused run asks the server this often whether it was answered: at 10 s, production started 9 s after
# `dbpromote approve` on the stack (benchmarks/latency.py); reading one flow run every 2 s costs the server nothing.
ANSWER_POLL_S = 2
# How long a run waits for its approval before no answer counts as a rejection: a day, so a run started in the evening
# is still there for the morning's approver.
APPROVAL_TIMEOUT_S = 24 * 3600


def wait_for_approval(request: ApprovalRequest, timeout_s: int, poll_s: int) -> Approval:
    """Pause until as many permitted approvers as the target needs approve (each with a current one-time code where
    approvers are enrolled), or one rejects; a refused answer is logged and the run keeps waiting."""
    from dbpromote.config import load_target

    logger = get_run_logger()
    target = load_target(request.target)
    coded = target.min_approvers > 1 or any(is_enrolled(name) for name in target.approvers)
    deadline = time.monotonic() + timeout_s
    approved: list[RunInput] = []
    if not _answered(request, 1):  # a run carried on after its suspension was answered has told people before
        notify(f"dbpromote: {request.action} waits for approval", f"{request.notice}: {run_url(flow_run.get_id())}")
    for attempt in itertools.count(1):
        so_far = [answer.approver.strip() for answer in approved]
        form = approval_form(bool(request.risks), coded).with_initial_data(
            description=request.description + who_may_answer(target.approvers, coded, target.min_approvers, so_far)
        )
        answerers = Answerers(target=request.target, allowed=target.approvers, coded=coded, so_far=so_far)
        _keep(answerers_key(_pause_key(request, attempt)), answerers.model_dump())
        answer = _pause_for_answer(request, attempt, form, deadline, timeout_s, poll_s)
        code = getattr(answer, "code", "")
        reason = refusal(request, answer) or answerers.refusal(answer.approver, answer.decision, code)
        if reason:
            logger.warning("approval refused: %s; still waiting", reason)
            continue
        if answer.decision == "reject":
            raise ApprovalRejected(
                f"{answer.approver} rejected {request.action} ({answer.comment or 'no comment'}); "
                f"{request.target} is untouched: {request.on_reject}."
            )
        approved.append(answer)
        logger.info("%s approved %s (%s)", answer.approver.strip(), request.action, request.subject)
        if len(approved) >= target.min_approvers:
            return Approval(
                target=request.target,
                action=request.action,
                subject=request.subject,
                items=request.items,
                approver=approved[0].approver.strip(),
                approvers=[answer.approver.strip() for answer in approved],
                proven=coded,
                comment="; ".join(answer.comment for answer in approved if answer.comment),
                approved_at=datetime.now(UTC).isoformat(),
                flow_run_id=str(flow_run.get_id() or ""),
                acknowledged_risks=request.risks,
            )
    raise AssertionError("unreachable")


def _keep(key: str, value: dict) -> None:
    """A flow run input of this run, once: a run carried on after its suspension finds it there already."""
    if read_flow_run_input(key) is None:
        create_flow_run_input(key, value)


def _pause_key(request: ApprovalRequest, attempt: int) -> str:
    """The key of a wait for an answer: bound to what is approved, so a run carried on after its suspension finds
    the answer given to exactly this subject (a plan hash, a backup), and asks again if the subject changed."""
    subject = hashlib.sha256(f"{request.action}|{request.target}|{request.subject}".encode()).hexdigest()[:16]
    return f"approval-{subject}-{attempt}"


def suspendable() -> bool:
    """Whether this run is a deployment's, which the server can reschedule on any worker once answered."""
    context = FlowRunContext.get()
    return bool(context and context.flow_run and context.flow_run.deployment_id)


def _answered(request: ApprovalRequest, attempt: int) -> bool:
    """Whether this wait was answered already (this run suspended there, and was resumed with the answer)."""
    if not suspendable():
        return False
    keyset = keyset_from_base_key(f"suspended-{_pause_key(request, attempt)}")
    return read_flow_run_input(keyset["response"]) is not None


def _pause_for_answer(
    request: ApprovalRequest, attempt: int, form: type[RunInput], deadline: float, timeout_s: int, poll_s: int
) -> RunInput:
    """The next answer given in the form; no answer before the deadline is a rejection.

    A deployment's run suspends: its process exits and its worker is free while people decide (a day, maybe);
    the answer reschedules it, and the flow runs again from its start, where every step already done is found
    done (the promotion's journal, a fix's records) and this call returns the answer. A run started in-process
    (no deployment to reschedule it) pauses, its process waiting, as before.
    """
    remaining = int(deadline - time.monotonic())
    key = _pause_key(request, attempt)
    try:
        if remaining <= 0:
            raise FlowPauseTimeout("approval timed out")
        if suspendable():
            return suspend_flow_run(wait_for_input=form, timeout=remaining, key=key)
        return pause_flow_run(wait_for_input=form, timeout=remaining, poll_interval=poll_s, key=key)
    except FlowPauseTimeout:
        raise ApprovalRejected(
            f"No approval for {request.action} within {timeout_s} s, which counts as a rejection; "
            f"{request.target} is untouched: {request.on_reject}."
        ) from None


# What the pause of a deploy wait is keyed by: `dbpromote deployed` answers only these, `approve` never.
def wait_for_deploy(project: str, target: str, plan: Plan, done: list[str], timeout_s: int, poll_s: int) -> Deployment:
    """Suspend until someone says the new release serves everywhere (the UI's form, `dbpromote deployed` or
    Prefect's REST resume); the answer is the deploy as recorded. No answer in time fails the run, the target left
    at its before-deploy phase."""
    subject = hashlib.sha256(f"deploy|{target}|{plan.hash}".encode()).hexdigest()[:16]
    key = f"{DEPLOY_KEY_PREFIX}{subject}"
    if not (suspendable() and read_flow_run_input(keyset_from_base_key(f"suspended-{key}")["response"])):
        notify(
            f"dbpromote: {target} waits for the app deploy", f"{project} plan {plan.hash}: {run_url(flow_run.get_id())}"
        )
    form = DeployForm.with_initial_data(description=describe_deploy_wait(project, target, plan, done))
    events.emit(
        "dbpromote.deploy.waiting",
        target,
        {"project": project, "plan": plan.hash, "before_deploy": done},
    )
    try:
        if suspendable():
            answer = suspend_flow_run(wait_for_input=form, timeout=timeout_s, key=key)
        else:
            answer = pause_flow_run(wait_for_input=form, timeout=timeout_s, poll_interval=poll_s, key=key)
    except FlowPauseTimeout:
        raise DeployNotConfirmed(
            f"No deploy of the new release was confirmed for {target} within {timeout_s} s; {target} ran its "
            "before-deploy phase only, which the previous release survives: deploy the new release, then carry "
            f"the promotion on with `dbpromote resume {flow_run.get_id()}`."
        ) from None
    get_run_logger().info("%s deployed %s for %s", answer.deployed_by, answer.release, target)
    return Deployment(
        target=target,
        plan_hash=plan.hash,
        release=answer.release.strip(),
        deployed_by=answer.deployed_by.strip(),
        comment=answer.comment,
        deployed_at=datetime.now(UTC).isoformat(),
        flow_run_id=str(flow_run.get_id() or ""),
    )


def record_approval(target: DatabaseTarget, approval: Approval) -> str:
    """The audit record, as JSON in the bucket beside the target's backups; returns its URI."""
    return write_record(target, "approvals", approval.flow_run_id, approval.model_dump())


# The deployment whose scheduled run opens a window (prefect.yaml, flows/window.py).
OPENER = "open-window/open-window"
# A window wait that nobody resumed by an hour after its window closed (its opener never ran: no worker in all
# that time) fails, and `dbpromote resume` carries the promotion on to the next window.
CLOSED_GRACE_S = 3600


def wait_for_window(
    project: str, database: DatabaseTarget, waiting: str, plan: Plan, need: WindowNeed, now_reason: str
) -> WindowRun | None:
    """`waiting`: who waits, the target or the group it goes with (`database`: the target whose windows count).
    Nothing when the target has no windows or the step needs none; otherwise the window the step runs in (the
    one open now, when the step still fits in it, or the first that opens later with room for it, suspended until
    then), or the reason a person gave to run it now."""
    if not (database.windows and need):
        return None
    started = datetime.now(UTC)
    record = {"target": waiting, "plan_hash": plan.hash, "needs": need.reasons, "flow_run_id": str(flow_run.get_id())}
    if now_reason:
        get_run_logger().warning("%s runs outside its windows now: %s", waiting, now_reason)
        return WindowRun(**record, started_at=started.isoformat(), opened_by="--now", reason=now_reason)
    opening = next_opening(database.windows, started, need.expected_s)
    if opening is None:
        raise PreflightError(
            f"No maintenance window of {waiting} ({'; '.join(database.windows)}) is long enough for its step "
            f"({need.expected_s:.0f} s by {need.measured_on}): {'; '.join(need.reasons)}; nothing more was run on "
            f"{waiting}: give it a longer window (`dbpromote target add --window`), or run it now with --now "
            "--reason TEXT."
        )
    if opening.opens > started:
        answer = _suspend_until(project, waiting, plan, need, opening)
        if answer.opened_by != THE_WINDOW:
            get_run_logger().warning("%s runs outside its windows, by %s: %s", waiting, answer.opened_by, answer.reason)
            return WindowRun(
                **record, started_at=datetime.now(UTC).isoformat(), opened_by=answer.opened_by, reason=answer.reason
            )
    get_run_logger().info("%s runs in its window %s", waiting, opening.window)
    return WindowRun(
        **record,
        window=opening.window,
        opens_at=opening.opens.isoformat(),
        started_at=datetime.now(UTC).isoformat(),
        opened_by=THE_WINDOW,
    )


def window_key(target: str, plan: Plan, opening: Opening) -> str:
    """The wait's key: one per target, plan and opening, so a run carried on finds the answer given to this wait."""
    subject = hashlib.sha256(f"window|{target}|{plan.hash}|{opening.opens.isoformat()}".encode()).hexdigest()[:12]
    return key_at(opening.opens, subject)


def _suspend_until(project: str, target: str, plan: Plan, need: WindowNeed, opening: Opening) -> WindowForm:
    """Suspend until the window opens (its opener, a scheduled run of open-window, answers then) or a person answers.
    A run started in-process (no deployment to reschedule it) sleeps until then instead."""
    key = window_key(target, plan, opening)
    when = opening.describe()
    get_run_logger().info("%s waits for its window starting %s: %s", target, when, "; ".join(need.reasons))
    events.emit(
        "dbpromote.window.waiting",
        target,
        {"project": project, "plan": plan.hash, "window": opening.window, "opens": opening.opens.isoformat()},
    )
    if not suspendable():
        time.sleep(max(0.0, (opening.opens - datetime.now(UTC)).total_seconds()))
        return WindowForm(opened_by=THE_WINDOW, reason=f"the window {opening.window} opened")
    run_id = str(flow_run.get_id())
    notify(f"dbpromote: {target} waits for its window starting {when}", f"{project} {plan.hash}: {run_url(run_id)}")
    try:
        run_deployment(  # the opener: a scheduled run, idempotent, so a run carried on schedules none twice
            OPENER,
            parameters={"flow_run_id": run_id, "key": key, "target": target, "window": opening.window},
            scheduled_time=opening.opens,
            timeout=0,
            as_subflow=False,
            idempotency_key=f"{run_id}-{key}",
        )
    except ObjectNotFound:
        raise ConfigError(
            f"The {OPENER} deployment is not on this Prefect server, so nothing would open {target}'s window; "
            f"nothing more was run on {target}: register dbpromote's deployments with `dbpromote deploy`, then "
            f"`dbpromote resume {run_id}`."
        ) from None
    form = WindowForm.with_initial_data(
        description=describe_window_wait(project, target, plan, need.reasons, when, need.expected_s)
    )
    timeout = int((opening.closes - datetime.now(UTC)).total_seconds()) + CLOSED_GRACE_S
    return suspend_flow_run(wait_for_input=form, timeout=timeout, key=key)
