"""The journal: find the crashed promotion a run carries on, and record each step of a target as it starts, is
approved and completes (records beside the target's backups, under the promotion's id)."""

from __future__ import annotations

from uuid import UUID

from prefect import get_client
from prefect.client.schemas.filters import FlowFilter, FlowFilterName, FlowRunFilter
from prefect.client.schemas.objects import FlowRun
from prefect.client.schemas.sorting import FlowRunSort

from dbpromote.config import DatabaseTarget, load_target
from dbpromote.errors import InputError
from dbpromote.models.approval import Approval, Deployment, WindowRun
from dbpromote.models.journal import TAG_PREFIX, Journal, TargetJournal
from dbpromote.models.plan import Plan
from dbpromote.models.report import StepReport
from dbpromote.records import read_records, write_record
from dbpromote.run_context import in_threads, run_logger
from dbpromote.runs import resumable_run

# How far back a promotion looks for a crashed run with its parameters to carry on.
RECENT_RUNS = 50


def open_journal(
    this_run: str,
    project: str,
    through: list[str],
    to: str,
    resume: str,
    targets: list[str] | None = None,
) -> Journal:
    """The journal of the promotion the run `this_run` carries on (`resume`, or the newest crashed run with the
    same parameters), or a new one, with the steps of each of `targets` (through's, its groups' members
    included); the run is tagged with its promotion either way."""
    with get_client(sync_client=True) as client:
        run = client.read_flow_run(UUID(this_run)) if this_run else None
        again = run is not None and any(tag.startswith(TAG_PREFIX) for tag in run.tags)
        if again:  # this very run once more: its suspension for an approval was answered; it starts from the top
            crashed, promotion = None, promotion_of(run)
        else:
            crashed = (
                resumed_run(client, resume, project, through, to)
                if resume
                else last_crashed(client, this_run, project, through, to)
            )
            promotion = promotion_of(crashed) if crashed else this_run
            if run is not None:
                client.update_flow_run(run.id, tags=sorted(set(run.tags) | {TAG_PREFIX + promotion}))
    journal = Journal(promotion=promotion or "adhoc", carries_on=str(crashed.id) if crashed else "")
    if crashed or again:
        names = targets or through
        read = in_threads(lambda target: read_target_journal(load_target(target), journal.promotion), names)
        journal.targets = dict(zip(names, read, strict=True))
        run_logger().info("carrying on promotion %s", journal.promotion)
    return journal


def resumed_run(client, resume: str, project: str, through: list[str], to: str) -> FlowRun:
    """The run named to be resumed: a promotion of the same project, targets and goal that ended unfinished."""
    run, flow = resumable_run(client, resume)
    if flow != "promote" or not same_promotion(run, project, through, to):
        raise InputError(
            f"Run {resume} is not a promotion of {project} through {','.join(through)}; resume it with "
            f"`dbpromote resume {resume}`, which takes its parameters from the run."
        )
    return run


def last_crashed(client, this_run: str, project: str, through: list[str], to: str) -> FlowRun | None:
    """The newest crashed promotion with these parameters, unless one completed or was cancelled after it (a
    deliberate end); a run that failed is passed over (`dbpromote resume RUN` carries one on by name)."""
    runs = client.read_flow_runs(
        flow_filter=FlowFilter(name=FlowFilterName(any_=["promote"])),
        flow_run_filter=FlowRunFilter(),
        sort=FlowRunSort.START_TIME_DESC,
        limit=RECENT_RUNS,
    )
    for run in runs:
        if str(run.id) == this_run or not same_promotion(run, project, through, to) or not run.state:
            continue
        if run.state.is_crashed():
            return run
        if run.state.is_completed() or run.state.is_cancelled():
            return None
    return None


def same_promotion(run: FlowRun, project: str, through: list[str], to: str) -> bool:
    parameters = run.parameters or {}
    return (parameters.get("project"), list(parameters.get("through") or []), parameters.get("to") or "") == (
        project,
        list(through),
        to,
    )


def promotion_of(run: FlowRun) -> str:
    """The promotion a run belongs to: its tag, or the run itself when it was the first."""
    tagged = [tag.removeprefix(TAG_PREFIX) for tag in run.tags if tag.startswith(TAG_PREFIX)]
    return tagged[0] if tagged else str(run.id)


def read_target_journal(database: DatabaseTarget, promotion: str) -> TargetJournal:
    """What the promotion's runs recorded for one target; the newest record of each step wins."""
    journal = TargetJournal()
    for record in reversed(read_records(database, "steps", scope=promotion)):  # oldest first
        if record["step"] == "started":
            journal.started = Plan.model_validate(record["plan"])
        elif record["step"] == "approved":
            journal.approval = Approval.model_validate(record["approval"])
        elif record["step"] == "deployed":
            journal.deployed = Deployment.model_validate(record["deployment"])
        elif record["step"] == "window":
            journal.window = WindowRun.model_validate(record["window"])
        elif record["step"] == "completed":
            journal.completed = StepReport.model_validate(record["report"])
    return journal


def record_step(
    journal: Journal, target: str, run_id: str, step: Plan | Approval | Deployment | WindowRun | StepReport
) -> str:
    """A target's step in the promotion's journal: its whole plan before it starts, its approval, the app deploy
    between its phases, the window it ran in (or the reason it did not wait), its report when it (or a phase of
    it) completed, by the run `run_id`; the record's URI."""
    kind = {
        Plan: ("started", "plan"),
        Approval: ("approved", "approval"),
        Deployment: ("deployed", "deployment"),
        WindowRun: ("window", "window"),
        StepReport: ("completed", "report"),
    }
    name, field = kind[type(step)]
    record = {"promotion": journal.promotion, "flow_run_id": run_id, "step": name, field: step.model_dump()}
    return write_record(load_target(target), "steps", run_id, record, scope=journal.promotion)
