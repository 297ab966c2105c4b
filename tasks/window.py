"""The wait for a maintenance window: the run suspended (no worker process held) until the window opens, or until a
person runs the step now and says why."""

from __future__ import annotations

import hashlib
import time
from datetime import UTC, datetime

from dbpromote.tasks.approval import suspendable
from prefect import get_run_logger, suspend_flow_run
from prefect.deployments import run_deployment
from prefect.exceptions import ObjectNotFound
from prefect.runtime import flow_run

from dbpromote import events, waits
from dbpromote.config import DatabaseTarget
from dbpromote.errors import ConfigError, PreflightError
from dbpromote.models.approval import THE_WINDOW, WindowForm, WindowRun, describe_window_wait
from dbpromote.models.plan import Plan
from dbpromote.notify import notify, run_url
from dbpromote.windows import Opening, WindowNeed, next_opening

# The deployment whose scheduled run opens a window (prefect.yaml, flows/window.py).
OPENER = "open-window/open-window"
# A window wait that nobody resumed by an hour after its window closed (its opener never ran: no worker in all
# that time) fails, and `dbpromote resume` carries the promotion on to the next window.
CLOSED_GRACE_S = 3600


def wait_for_window(
    project: str, database: DatabaseTarget, target: str, plan: Plan, need: WindowNeed, now_reason: str
) -> WindowRun | None:
    """Nothing when the target has no windows or the step needs none; otherwise the window the step runs in (the
    one open now, when the step still fits in it, or the first that opens later with room for it, suspended until
    then), or the reason a person gave to run it now."""
    if not (database.windows and need):
        return None
    started = datetime.now(UTC)
    record = {"target": target, "plan_hash": plan.hash, "needs": need.reasons, "flow_run_id": str(flow_run.get_id())}
    if now_reason:
        get_run_logger().warning("%s runs outside its windows now: %s", target, now_reason)
        return WindowRun(**record, started_at=started.isoformat(), opened_by="--now", reason=now_reason)
    opening = next_opening(database.windows, started, need.expected_s)
    if opening is None:
        raise PreflightError(
            f"No maintenance window of {target} ({'; '.join(database.windows)}) is long enough for its step "
            f"({need.expected_s:.0f} s by {need.measured_on}): {'; '.join(need.reasons)}; nothing more was run on "
            f"{target}: give it a longer window (`dbpromote target add --window`), or run it now with --now "
            "--reason TEXT."
        )
    if opening.opens > started:
        answer = _suspend_until(project, target, plan, need, opening)
        if answer.opened_by != THE_WINDOW:
            get_run_logger().warning("%s runs outside its windows, by %s: %s", target, answer.opened_by, answer.reason)
            return WindowRun(
                **record, started_at=datetime.now(UTC).isoformat(), opened_by=answer.opened_by, reason=answer.reason
            )
    get_run_logger().info("%s runs in its window %s", target, opening.window)
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
    return waits.window_key(opening.opens, subject)


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
