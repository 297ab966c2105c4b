"""Flow runs as the CLI sees them: trigger a deployment, list runs and those waiting for approval, answer or end
them, and find the run that holds a target."""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from uuid import UUID

import anyio
from prefect import get_client
from prefect.client.orchestration import SyncPrefectClient
from prefect.client.schemas.filters import (
    FlowRunFilter,
    FlowRunFilterExpectedStartTime,
    FlowRunFilterParentTaskRunId,
    FlowRunFilterState,
    FlowRunFilterStateType,
)
from prefect.client.schemas.objects import FlowRun, State, StateType
from prefect.client.schemas.responses import OrchestrationResult, SetStateStatus
from prefect.client.schemas.sorting import FlowRunSort
from prefect.deployments import run_deployment
from prefect.events.clients import get_events_subscriber
from prefect.events.filters import EventFilter, EventResourceFilter
from prefect.exceptions import ObjectNotFound, PrefectHTTPStatusError
from prefect.input.run_input import keyset_from_paused_state
from prefect.utilities.asyncutils import run_coro_as_sync

from dbpromote import waits
from dbpromote.errors import ApprovalRejected, ConfigError, InputError, PreflightError
from dbpromote.models.approval import ApprovalForm, approval_form_titled
from dbpromote.notify import run_url

# A waiting command reads its run again on each of its events (the server's event stream), and every WAIT_POLL_S
# besides, should the stream fall silent (reconnecting). Polled once a second instead, a `--wait` returned half a
# second after the run's end on average, a second at worst.
WAIT_POLL_S = 5
# A wait the event stream cannot end polls this often: where the stream cannot be reached (a proxy refusing
# websockets), or while the run stays paused for something other than what is awaited (paused_for).
POLL_ALONE_S = 1


def trigger(deployment: str, parameters: dict, *, idempotency_key: str | None = None) -> FlowRun:
    """Create a run of a deployment (`flow/deployment`) for the worker; returned at once, so a command prints its
    id and URL (where the approval is given) before waiting for anything (`wait_for`). A run that would change a
    target another unfinished run holds is refused here, at the terminal, before it exists."""
    if deployment.partition("/")[0] in APPROVAL_FLOWS and parameters.get("swap", True):  # swap: see restore
        refuse_if_held(targets_in(parameters))
    try:
        return run_deployment(deployment, parameters=parameters, timeout=0, idempotency_key=idempotency_key)
    except (ValueError, ObjectNotFound):
        raise ConfigError(
            f"Deployment {deployment!r} is not on the Prefect server (deployed before this dbpromote had it?); "
            "deploy with `dbpromote deploy` (or `dbpromote stack up` for the local stack)."
        ) from None


def wait_for(run_id: UUID | str, *, paused: bool = False, timeout_s: float | None = None) -> FlowRun:
    """The run once it ends (with paused: once it pauses or ends), or as it stands after timeout_s. Read again the
    moment the server's event stream tells of a change of its state."""
    return run_coro_as_sync(_wait_for(UUID(str(run_id)), paused, timeout_s))


async def _wait_for(run_id: UUID, paused: bool, timeout_s: float | None) -> FlowRun:
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    async with get_client() as client, contextlib.AsyncExitStack() as stack:
        changes = None
        while True:
            run = await client.read_flow_run(run_id)
            reached = run.state and (run.state.is_final() or paused and run.state.is_paused())
            left = None if deadline is None else deadline - time.monotonic()
            if reached or left is not None and left <= 0:
                return run
            if changes is None:
                changes = await next_change_of(run_id, stack)
            with anyio.move_on_after(WAIT_POLL_S if left is None else min(WAIT_POLL_S, left)):
                await changes()


async def next_change_of(run_id: UUID, stack: contextlib.AsyncExitStack) -> Callable[[], Awaitable]:
    """A wait for the run's next event, subscribed for as long as `stack` is open: the stream replays the minute
    before it is subscribed, so a change after the last read is not missed. Where the stream cannot be reached (a
    proxy refusing websockets), a wait of POLL_ALONE_S instead."""
    try:
        its_events = EventFilter(resource=EventResourceFilter(id=[f"prefect.flow-run.{run_id}"]))
        events = await stack.enter_async_context(get_events_subscriber(filter=its_events))
        return lambda: anext(events)
    except Exception:  # noqa: BLE001 - polling, which always works, is what is left
        return lambda: anyio.sleep(POLL_ALONE_S)


def paused_for(run_id: UUID | str, kind: str, timeout_s: float = 600) -> FlowRun:
    """The run once it waits for `kind` ("approval", "deploy" or "window", as waits_for tells them apart); a
    RuntimeError when it ends first, a TimeoutError when it does not in timeout_s."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        run = wait_for(run_id, paused=True, timeout_s=5)
        if run.state.is_final():
            raise RuntimeError(f"run {run_id} ended {run.state.name} before it waited for {kind}: {run.state.message}")
        if run.state.is_paused() and waits_for(run) == kind:
            return run
        time.sleep(POLL_ALONE_S)  # paused for something else: wait_for(paused=True) would return at once
    raise TimeoutError(f"run {run_id} did not wait for {kind} within {timeout_s:g} s")


# The flows that pause for a person's approval, and that change a target's schema: one at a time per target.
APPROVAL_FLOWS = ("promote", "restore", "rollback", "reconcile", "fix", "fix-undo")
NOT_FINAL = [StateType.SCHEDULED, StateType.PENDING, StateType.RUNNING, StateType.PAUSED, StateType.CANCELLING]


def pending_approvals() -> list[FlowRun]:
    """Runs paused for approval (promotions, restores, rollbacks, reconciliations, fixes), oldest first."""
    return [run for run, flow in flow_runs([StateType.PAUSED]) if flow in APPROVAL_FLOWS]


def flow_runs(states: list[StateType] | None = None, limit: int = 200) -> list[tuple[FlowRun, str]]:
    """dbpromote's top-level flow runs (not the steps or fleet members inside them) in these states, the newest
    `limit` of those due by now (not the schedules' runs of the coming days), oldest first, each with its flow's
    name. Asked of the server as such: a page of every run, sorted by id, missed the newest once a fleet's member
    runs filled it."""
    state = FlowRunFilterState(type=FlowRunFilterStateType(any_=states)) if states else None
    due = FlowRunFilterExpectedStartTime(before_=datetime.now(UTC) + timedelta(minutes=1))
    top = FlowRunFilterParentTaskRunId(is_null_=True)
    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(
            flow_run_filter=FlowRunFilter(state=state, expected_start_time=due, parent_task_run_id=top),
            sort=FlowRunSort.EXPECTED_START_TIME_DESC,
            limit=limit,
        )
        flows = {flow_id: client.read_flow(flow_id).name for flow_id in {run.flow_id for run in runs}}
    return sorted(((run, flows[run.flow_id]) for run in runs), key=lambda pair: pair[0].created)


def run_targets(run: FlowRun) -> list[str]:
    """The targets (and groups) a run acts on, from its parameters."""
    return targets_in(run.parameters or {})


def targets_in(parameters: dict) -> list[str]:
    """The targets (and groups) named by a flow's parameters."""
    named = parameters.get("through") or parameters.get("targets") or [parameters.get("target")]
    return [str(name) for name in named if name]


def refuse_if_held(targets: list[str], excluding: UUID | str | None = None) -> None:
    """A PreflightError naming the unfinished run (other than `excluding`, the asking run's id) that holds any of
    these targets."""
    for run, flow, shared in holders(targets, excluding):
        raise PreflightError(
            f"{', '.join(shared)} {'is' if len(shared) == 1 else 'are'} held by run {run.id} ({flow}, "
            f"{run.state.name if run.state else 'unknown state'}, created {run.created:%Y-%m-%d %H:%M} UTC); "
            f"nothing was run: wait for it to end, or end it with `dbpromote cancel {run.id} --reason TEXT`."
        )


def holders(targets: list[str], excluding: UUID | str | None = None) -> list[tuple[FlowRun, str, list[str]]]:
    """The unfinished promotions, restores, rollbacks, reconciliations, fixes and undoes (other than `excluding`)
    that hold any of these targets, each with its flow's name and the targets it holds; a group holds, and is held
    through, each of its members."""
    members = group_members()
    wanted = _expanded(targets, members)
    found = []
    for run, flow in flow_runs(NOT_FINAL):
        if flow in APPROVAL_FLOWS and str(run.id) != str(excluding):
            shared = [target for target in wanted if target in _expanded(run_targets(run), members)]
            if shared:
                found.append((run, flow, shared))
    return found


def group_members() -> dict[str, list[str]]:
    """Every target group's members, by group name (one read of the server's group blocks)."""
    from dbpromote.config import TargetGroup

    with get_client(sync_client=True) as client:
        try:
            documents = client.read_block_documents_by_type(TargetGroup.get_block_type_slug(), include_secrets=False)
        except PrefectHTTPStatusError as error:
            if error.response.status_code != 404:
                raise
            return {}  # no group was ever saved on this server: the block type is not there yet
    return {document.name: list(document.data.get("members", [])) for document in documents}


def _expanded(names: list[str], members: dict[str, list[str]]) -> list[str]:
    """The names with each group replaced by its members, in order, each once."""
    return list(dict.fromkeys(target for name in names for target in members.get(name, [name])))


def cancel_run(run_id: str, reason: str, wait_s: float = 15) -> State:
    """End a run with the reason recorded in its state. A running one is asked to stop (its worker ends the
    process); if no worker does within wait_s (it died with its worker), it is marked Cancelled all the same."""
    from prefect.states import Cancelled, Cancelling

    message = f"cancelled: {reason}"
    with get_client(sync_client=True) as client:
        run = read_run(client, run_id)
        if run.state and run.state.is_final():
            raise InputError(f"Run {run_id} has already ended ({run.state.name}); nothing to cancel.")
        if run.state and run.state.is_running():
            client.set_flow_run_state(run.id, Cancelling(message=message), force=True)
            deadline = time.monotonic() + wait_s
            while time.monotonic() < deadline:
                state = client.read_flow_run(run.id).state
                if state and state.is_final():
                    return state
                time.sleep(1)
        client.set_flow_run_state(run.id, Cancelled(message=message), force=True)
        return client.read_flow_run(run.id).state


def read_run(client, run_id: str) -> FlowRun:
    try:
        return client.read_flow_run(UUID(run_id))
    except (ValueError, ObjectNotFound):
        raise InputError(f"No flow run {run_id!r}; list the runs with `dbpromote runs --all`.") from None


RESUMABLE = ("promote", "fix")


def resumable_run(client, run_id: str) -> tuple[FlowRun, str]:
    """A promotion's or a fix's run that ended unfinished (crashed, failed, cancelled), which a new run can carry
    on; and its flow's name."""
    run = read_run(client, run_id)
    flow = client.read_flow(run.flow_id).name
    if flow not in RESUMABLE:
        raise InputError(
            f"Run {run_id} is a {flow} run; only a promotion or a fix is resumed (start the others again)."
        )
    state = run.state
    if state is None or not state.is_final():
        raise InputError(
            f"Run {run_id} is still {state.name if state else 'unknown'} as far as Prefect knows; if its process "
            "died, it is marked Crashed within two minutes of its last heartbeat: resume it then, or end it with "
            f"`dbpromote cancel {run_id} --reason TEXT`."
        )
    if state.is_completed():
        raise InputError(f"Run {run_id} completed; there is nothing of it to resume.")
    return run, flow


def resume_run(run_id: str) -> FlowRun:
    """A new run of the deployment carrying on the given run, with its parameters. A promotion's successor reads
    the journal of the run before it; a fix's work is named by its first run's id, however many carry it on."""
    with get_client(sync_client=True) as client:
        run, flow = resumable_run(client, run_id)
    parameters = run.parameters or {}
    first = parameters.get("resume") if flow == "fix" else None
    return trigger(f"{flow}/{flow}", parameters | {"resume": first or str(run.id)})


def refuse_unfit_answer(client, run: FlowRun, run_input: dict) -> None:
    """An ApprovalRejected, before anything is sent, for an answer the run would not count: its approver is not on
    the target's list, or (enrolled approvers) the code is not their current one. The run's own judgement, from
    who may answer as the run stored it beside the wait; the code is not used up here (the run uses it)."""
    from dbpromote.models.approval import Answerers, answerers_key

    try:
        stored = client.read_flow_run_input(run.id, answerers_key(run.state.state_details.pause_key))
    except ObjectNotFound:
        return  # a run of an earlier dbpromote: it judges the answer itself
    approver, decision = run_input["approver"], run_input["decision"]
    reason = Answerers.model_validate_json(stored).refusal(approver, decision, run_input.get("code", ""), use=False)
    if reason:
        done = "approved" if decision == "approve" else "rejected"
        raise ApprovalRejected(
            f"Not {done}: {reason}; nothing was sent and run {run.id} still waits: answer as a permitted "
            "approver, with their current code where approvers are enrolled."
        )


def paused_form(client, run: FlowRun, wait_s: float = 15) -> type[ApprovalForm]:
    """The approval form of a paused run, from the schema the flow stores just after pausing (allowed a moment)."""
    key = keyset_from_paused_state(run.state)["schema"]
    deadline = time.monotonic() + wait_s
    while True:
        try:
            form = approval_form_titled(json.loads(client.read_flow_run_input(run.id, key)).get("title", ""))
            break
        except ObjectNotFound:
            if time.monotonic() > deadline:
                form = None
                break
            time.sleep(0.5)
    if form is None:
        raise InputError(
            f"Run {run.id} is paused without an approval form; it is not a promotion waiting for approval."
        )
    return form


def answer_approval(
    run_id: str,
    decision: str,
    approver: str,
    comment: str,
    acknowledge_risks: bool,
    code: str = "",
    ask_code: Callable[[], str] | None = None,
) -> None:
    """Resume a paused promotion with a decision; the server validates it against the run's form. Where its
    approvers are enrolled, code is the approver's current one-time code (asked for with ask_code when empty)."""
    run_input = {"decision": decision, "approver": approver, "comment": comment}
    with get_client(sync_client=True) as client:
        run = read_run(client, run_id)
        if run.state and run.state.is_crashed():
            again = f"`dbpromote resume {run_id}`" if client.read_flow(run.flow_id).name == "promote" else "a new run"
            raise InputError(
                f"Run {run_id} crashed (its process died) and can no longer be answered; nothing was approved: "
                f"carry it on with {again}."
            )
        if not (run.state and run.state.is_paused()):
            raise InputError(
                f"Run {run_id} is not waiting for approval (it is {run.state.name if run.state else '?'}); "
                "list the runs waiting with `dbpromote pending`."
            )
        if waits_for(run) == "deploy":
            raise InputError(
                f"Run {run_id} waits for the application's deploy, not for an approval; once the new release "
                f"serves everywhere, say so with `dbpromote deployed {run_id} --release LABEL --by YOUR_NAME`."
            )
        if waits_for(run) == "window":
            raise InputError(
                f"Run {run_id} was approved and waits for its maintenance window; it runs then by itself (to run it "
                f"now: `dbpromote run-now {run_id} --by YOUR_NAME --reason TEXT`)."
            )
        fields = paused_form(client, run).model_fields
        if "code" in fields:
            code = code or (ask_code() if ask_code else "")
            if not code:
                raise InputError(
                    f"The approvers of run {run_id} are enrolled: give your current one-time code with --code."
                )
            run_input["code"] = code
        if "acknowledge_risky_operations" in fields:
            if decision == "approve" and not acknowledge_risks:
                raise InputError(
                    f"The plan of run {run_id} has risky operations; read them at {run_url(run.id)} "
                    "and approve again with --acknowledge-risks."
                )
            run_input["acknowledge_risky_operations"] = acknowledge_risks
        refuse_unfit_answer(client, run, run_input)
        response = resume(client, run, run_input)
    if response.status == SetStateStatus.REJECT:
        raise ApprovalRejected(f"The server refused the answer ({response.details.reason}); correct it and try again.")


# A suspended run's process ends a moment after its Suspended (its logs and events sent first; 0.5 s on the stack).
# A process worker started with --limit that is offered the run again before it has seen that process end stops
# for good (Prefect 3.8.8: "this borrower is already holding one of this CapacityLimiter's tokens"; both of
# tests/test_fleet.py's workers, once `approve` answered 0.2 s after the run suspended). An answer therefore waits
# for the process to end where it can see it (the worker that ran it is on this machine), and otherwise until
# SUSPENDED_EXIT_S after the run suspended.
SUSPENDED_EXIT_S = 2.5
# A process that has not ended in this long after its Suspended is stuck at exit; the answer goes anyway.
SUSPENDED_EXIT_LIMIT_S = 30.0
# The worker releases the run's slot in the same pass of its event loop that reaps the process: a margin.
REAPED_MARGIN_S = 0.1


def resume(client: SyncPrefectClient, run: FlowRun, run_input: dict) -> OrchestrationResult:
    """The paused run resumed with run_input; a suspended one once its process has ended."""
    if run.state and run.state.name == "Suspended":
        wait_for_its_process(run)
    return client.resume_flow_run(run.id, run_input=run_input)


def wait_for_its_process(run: FlowRun) -> None:
    """Until a suspended run's process has ended: watched where its worker runs on this machine, else until
    SUSPENDED_EXIT_S after it suspended."""
    since = (datetime.now(UTC) - run.state.timestamp).total_seconds()
    floor_s = max(0.0, SUSPENDED_EXIT_S - since)
    here = worker_is_here(run.labels.get("prefect.worker.name"))
    if not (here and run.infrastructure_pid):
        time.sleep(floor_s)
        return
    process = Path(f"/proc/{run.infrastructure_pid}")
    ours = is_runs_process(process, run.id)
    deadline = time.monotonic() + (SUSPENDED_EXIT_LIMIT_S - since if ours else floor_s)
    while ours is not False and process.exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    time.sleep(REAPED_MARGIN_S)


def worker_is_here(name: str | None) -> bool:
    """Whether a process worker of that name (the one that ran a run, by its labels) runs on this machine."""
    for cmdline in Path("/proc").glob("[0-9]*/cmdline") if name else ():
        with contextlib.suppress(OSError):
            args = cmdline.read_bytes().split(b"\0")
            if b"worker" in args and b"start" in args and name.encode() in args:
                return True
    return False


def is_runs_process(process: Path, run_id: UUID) -> bool | None:
    """Whether a process (its /proc entry) is the run's own by the run id in its environment: False when it has
    ended or is another process of this user's (the pid reused), None when that cannot be read (a zombie, or another
    user's process)."""
    try:
        environment = (process / "environ").read_bytes()
    except FileNotFoundError:
        return False
    except OSError:
        return None
    return f"PREFECT__FLOW_RUN_ID={run_id}".encode() in environment.split(b"\0") if environment else None


def waits_for(run: FlowRun) -> str:
    """What a paused run waits for: "approval", "deploy" (the app's, between a promotion's two phases) or "window"
    (a maintenance window), by its wait's key (dbpromote/waits.py)."""
    return waits.kind((run.state.state_details.pause_key if run.state and run.state.state_details else None) or "")


def waits_for_deploy(run: FlowRun) -> bool:
    """Whether a paused run waits for the application's deploy between its two phases."""
    return waits_for(run) == "deploy"


def window_opens(run: FlowRun) -> datetime | None:
    """When the maintenance window a paused run waits for opens; None when it waits for something else."""
    return waits.opens_at(run.state.state_details.pause_key or "") if waits_for(run) == "window" else None


def answer_wait(run_id: str, kind: str, answer: dict) -> None:
    """Resume a promotion waiting for the app deploy or its maintenance window (`kind`) with the form's answer."""
    with get_client(sync_client=True) as client:
        run = read_run(client, run_id)
        if not (run.state and run.state.is_paused() and waits_for(run) == kind):
            state = run.state.name if run.state else "unknown"
            what = "a deploy" if kind == "deploy" else "its maintenance window"
            raise InputError(
                f"Run {run_id} is not waiting for {what} (it is {state}); nothing was sent: `dbpromote pending` "
                "lists the runs that wait, and what for."
            )
        response = resume(client, run, answer)
    if response.status == SetStateStatus.REJECT:
        raise InputError(f"The server refused the answer ({response.details.reason}); correct it and try again.")
