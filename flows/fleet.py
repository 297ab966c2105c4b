"""A group's step in a promotion: one approval for every member, then the members in waves, canary first. The waves
run in lanes: deployment runs of migrate-lane on whichever workers take them, all started at once, each running its
share of every wave one member after another as task runs named after them, on one Django probe moved from member
to member, every member under Prefect's global concurrency limit of its database server. A lane starts a member of
a later wave once every member of the waves before it has ended, in every lane. Prefect is the engine: dbpromote
starts runs and reads their states, nothing more."""

from __future__ import annotations

import json
import re
import time
from datetime import UTC, datetime
from typing import NamedTuple
from uuid import UUID

from dbpromote.flows.environment import migrate_target, server_limit
from dbpromote.flows.parts import flow, in_the_calling_run
from dbpromote.tasks.journal import record_kept
from prefect import get_client, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.client.schemas.filters import (
    FlowRunFilter,
    FlowRunFilterId,
    FlowRunFilterState,
    FlowRunFilterStateType,
    FlowRunFilterTags,
    TaskRunFilter,
    TaskRunFilterFlowRunId,
    TaskRunFilterState,
    TaskRunFilterStateType,
    TaskRunFilterTags,
)
from prefect.client.schemas.objects import TERMINAL_STATES, FlowRun, StateType, TaskRun
from prefect.client.schemas.sorting import TaskRunSort
from prefect.concurrency.sync import concurrency
from prefect.deployments import run_deployment
from prefect.runtime import flow_run

from dbpromote import journal as journals
from dbpromote.config import DatabaseTarget, TargetGroup, load_project, load_target, resolved_once
from dbpromote.errors import MigrationError
from dbpromote.journal import read_target_journal
from dbpromote.models.approval import Approval
from dbpromote.models.fleet import MemberOutcome, Share, deal, waves
from dbpromote.models.journal import Journal
from dbpromote.models.plan import Plan
from dbpromote.models.report import StepReport
from dbpromote.probe import ProbeSession
from dbpromote.records import write_record
from dbpromote.reporting import markdown_alone, publish_group
from dbpromote.reporting.forms import group_request
from dbpromote.run_context import in_threads
from dbpromote.runs import NOT_FINAL
from dbpromote.waits import record_approval, wait_for_approval, wait_for_window
from dbpromote.windows import Measured, WindowNeed, when_it_runs

LANE_DEPLOYMENT = "migrate-lane/migrate-lane"
# The tag of a group run's member task runs, in every lane: FLEET_TAG + "<promotion run>:<group>"; and each
# member's own. Lanes count the group's failures by the first; the promotion reads each member's outcome by both.
FLEET_TAG = "dbpromote-fleet:"
MEMBER_TAG = "dbpromote-member:"
# How often the promotion reads its lanes' states: a lane takes seconds at least, a read costs the server one query.
LANE_POLL_S = 1.0
# How often a lane waiting for the waves before its next member reads the group's member runs: a wave ends when its
# slowest member does, and the lanes waiting read two lists a poll.
WAVE_POLL_S = 0.5
FAILED = [StateType.FAILED, StateType.CRASHED]
ENDED = FlowRunFilterState(type=FlowRunFilterStateType(any_=list(TERMINAL_STATES)))
GOING = FlowRunFilterState(type=FlowRunFilterStateType(any_=NOT_FINAL))
# How long a lane waits at its end for the server to record its members' final states (events; well under a
# second on an idle server, seconds under a fleet's load).
SETTLE_S = 60


class GroupWindow(NamedTuple):
    """A group's members that wait for their shared maintenance window, and what the wait needs."""

    members: list[str]
    database: DatabaseTarget
    plan: Plan
    need: WindowNeed


class GroupStep:
    """One group's step in a promotion: its approval, its members in waves, the outcome of each as the run's table
    artifact and the members' records show it."""

    def __init__(
        self,
        project: str,
        name: str,
        group: TargetGroup,
        journal: Journal,
        to: str,
        now: dict[str, Plan],
        plans: dict[str, Plan],
    ):
        """`now`: each member's plan as preflight saw it; `plans`: the plan each member runs (what a crashed run of
        the promotion left of it continued)."""
        self.project, self.name, self.group, self.journal, self.to = project, name, group, journal, to
        self.now, self.plans = now, plans
        self.wave_size, self.max_failures = group.sizes()
        self.outcomes: dict[str, MemberOutcome] = {}
        self.reports: dict[str, StepReport] = {}
        self.fleet = ""  # the tag of this run's member task runs (FLEET_TAG), once it runs

    def promote(
        self,
        members: list[str],
        reports: list[StepReport],
        drift: dict[str, str],
        measured: Measured,
        now_reason: str,
        timeout_s: int,
        poll_s: int,
    ) -> tuple[Approval | None, list[StepReport]]:
        """The group's step in a promotion: its approval (and the maintenance window it runs in), then its waves; its
        members read once for the approval and once again for the run, after any wait. The approval given, if any,
        and the members' reports."""
        with resolved_once(members):
            window = self.window_need(members, measured)
            when = when_it_runs(window.database.windows, window.need, datetime.now(UTC), now_reason) if window else ""
            approval = self.approve(members, reports, drift, timeout_s, poll_s, when)
        self.wait_for_window(window, now_reason)
        with resolved_once(members):
            return approval, self.run(members)

    def skip(self, members: list[str]) -> None:
        """Divergent members left out (--skip-divergent): reported, never touched."""
        for member in members:
            plan = self.plans[member]
            detail = f"divergent: its plan is {plan.hash} ({len(plan.migrations)} migrations)"
            self.outcomes[member] = MemberOutcome(member=member, wave=0, outcome="skipped", detail=detail)

    def approve(
        self,
        members: list[str],
        reports: list[StepReport],
        drift: dict[str, str],
        timeout_s: int,
        poll_s: int,
        when: str,
    ) -> Approval | None:
        """One approval for every member still to do that requires one (they share one approval policy: `group
        add` checks it); recorded on each of them. None when none needs it (or a crashed run got it)."""
        now, plans = self.now, self.plans
        waiting = [m for m in members if not self.journal.completed(m, now[m]) and load_target(m).requires_approval]
        needed = [m for m in waiting if not self.journal.approval(m, plans[m])]
        if not needed:
            return None
        alike: dict[str, list[str]] = {}  # members with the same drift, said once
        for member in waiting:
            alike.setdefault(drift.get(member, "").replace(member, "each"), []).append(member)
        in_waves = [wave for wave in waves(waiting, *self.shape()) if wave]
        limits = (
            f"Up to {self.group.parallel} at once, at most {self.group.per_server} per database server; halts when "
            f"{self.max_failures} fail (every canary must succeed)."
        )
        plan = plans[needed[0]]
        request = group_request(self.project, self.name, needed[0], plan, reports, when, in_waves, alike, limits)
        approval = wait_for_approval(request, timeout_s, poll_s)
        run_id = str(flow_run.get_id() or "")

        def record(member: str) -> None:  # written here, not as a task run each: a group of 100 is 100 task runs fewer
            given = approval.model_copy(update={"target": member})
            record_approval(load_target(member), given)
            journals.record_step(self.journal, member, run_id, given)

        in_threads(record, needed)
        return approval

    def window_need(self, members: list[str], measured: Measured) -> GroupWindow | None:
        """The members still to migrate that need a maintenance window, one of their targets (they share their
        windows: check_promotion_input), and the need: an opening with room for every wave at the slowest member's
        pace by staging's run."""
        now = self.now
        waiting = [member for member in members if now[member].migrations]
        targets = {member: load_target(member) for member in waiting}
        needs = {m: measured.need(now[m], t.window_lock_s) for m, t in targets.items() if t.windows}
        needs = {member: need for member, need in needs.items() if need}
        if not needs:
            return None
        first = next(iter(needs))
        rounds = len([wave for wave in waves(waiting, *self.shape()) if wave])
        slowest = max(need.expected_s for need in needs.values())
        need = needs[first].model_copy(update={"expected_s": round(slowest * rounds, 1)})
        return GroupWindow(list(needs), targets[first], now[first], need)

    def wait_for_window(self, window: GroupWindow | None, now_reason: str) -> None:
        """Suspended until the members' window opens (or a person runs them now); recorded on each member."""
        if window is None:
            return
        if ran := wait_for_window(self.project, window.database, self.name, window.plan, window.need, now_reason):
            for member in window.members:
                record_kept(self.journal, member, ran.model_copy(update={"target": member}))

    def shape(self) -> tuple[int, Share]:
        return self.group.canary, self.wave_size

    def run(self, members: list[str]) -> list[StepReport]:
        """Every member not done before, wave by wave; halts (raising, once the running ones end) when a canary
        fails or failures reach the bound. The reports of the members migrated, in member order."""
        self.fleet = f"{FLEET_TAG}{flow_run.get_id() or 'adhoc'}:{self.name}"
        done = {m: report for m in members if (report := self.journal.completed(m, self.now[m]))}
        try:
            return self._run(members, done)
        finally:
            self.record()
            publish_group(self.name, self.table())

    def _run(self, members: list[str], done: dict[str, StepReport]) -> list[StepReport]:
        """The lanes, after the server limits are set; raises naming the failed members when halted."""
        self.reports |= done
        bound = self.max_failures.of(len(members))
        for member in self.group.members:
            if member in done:
                self.outcomes[member] = MemberOutcome(member=member, wave=0, outcome="done before")
        with get_client(sync_client=True) as client:
            for server in {server_limit(load_target(member)) for member in members}:
                client.upsert_global_concurrency_limit_by_name(server, self.group.per_server)
        planned = [[member for member in wave if member not in done] for wave in waves(members, *self.shape())]
        if any(planned):
            runs = {
                self.start(n, share, planned, bound): share
                for n, share in enumerate(deal(planned, self.group.parallel))
            }
            self.finish(runs, self.wait_for_lanes(list(runs)), planned, bound)
        for number, wave in enumerate(planned):
            for member in wave:
                self.outcomes.setdefault(member, MemberOutcome(member=member, wave=number, outcome="not started"))
            said = ", ".join(f"{member} {self.outcomes[member].outcome}" for member in wave)
            get_run_logger().info("group %s wave %d: %s", self.name, number, said or "nothing to do")
        if self.failed():
            why = "its canary failed" if any(o.wave == 0 for o in self.failed()) else f"{len(self.failed())} failed"
            raise MigrationError(
                f"Group {self.name} halted ({why}): "
                + "; ".join(f"{o.member}: {o.detail}" for o in self.failed())
                + f"; not started: {', '.join(self.not_started()) or 'none'}. Fix the cause and run the same "
                "promotion again: members done are left alone, the others run."
            )
        return [self.reports[m] for m in self.group.members if m in self.reports]

    def start(self, lane: int, members: list[str], planned: list[list[str]], bound: int) -> str:
        """A lane: a deployment run of migrate-lane, as a subflow of this promotion; its id. Members whose plans
        differ by their target alone (staging vouched for them: the same migrations, the same SQL) share one copy of
        it in the run's parameters, the lane naming each member in its own: a copy a member (7.3 KB for the sample)
        took the lanes of 1,000 members past the server's limit on a run's parameters (512 KB: 1.8 MB a lane)."""
        shared = {member: self.plans[member].model_copy(update={"target": ""}).model_dump_json() for member in members}
        plans = {plan: number for number, plan in enumerate(dict.fromkeys(shared.values()))}
        parameters = {
            "project": self.project,
            "group": self.name,
            "lane": lane,
            "members": {member: plans[shared[member]] for member in members},
            "plans": [json.loads(plan) for plan in plans],
            "waves": planned,
            "to": self.to,
            "promotion": self.journal.promotion,
            "fleet": self.fleet,
            "bound": bound,
        }
        run = run_deployment(LANE_DEPLOYMENT, parameters=parameters, timeout=0, as_subflow=True, tags=[self.fleet])
        get_run_logger().info("group %s: lane %d (%s) started as run %s", self.name, lane, ", ".join(members), run.id)
        return str(run.id)

    def wait_for_lanes(self, lane_ids: list[str]) -> dict[str, FlowRun]:
        """The lanes' runs once every one has ended, counted until then: a lane's run carries its members' plans,
        which the server serializes on each read (reads of lanes were its costliest requests in a group of 40)."""
        lanes = FlowRunFilter(id=FlowRunFilterId(any_=[UUID(lane) for lane in lane_ids]))
        going = FlowRunFilter(id=lanes.id, state=GOING)
        with get_client(sync_client=True) as client:
            while client.count_flow_runs(flow_run_filter=going):
                time.sleep(LANE_POLL_S)
            return {str(run.id): run for run in client.read_flow_runs(flow_run_filter=lanes)}

    def finish(
        self, runs: dict[str, list[str]], ended: dict[str, FlowRun], planned: list[list[str]], bound: int
    ) -> None:
        """Each member's outcome from its task run in its lane: its report when it completed, its error sentence
        when not; a member its lane never reached is failed when its lane ended under it (not started when the
        group halted, or the lane stopped at a wave it could not start: _run)."""
        wave_of = {member: number for number, wave in enumerate(planned) for member in wave}
        steps = member_steps(self.fleet, list(runs))
        completed = [member for member, step in steps.items() if step.state and step.state.is_completed()]
        reports = dict(zip(completed, in_threads(self.recorded_report, completed), strict=True))
        for lane_id, members in runs.items():
            for member in [member for member in members if member in steps]:
                step, lane = steps[member], ended[lane_id]
                self.outcomes[member] = self.outcome(wave_of[member], member, lane_id, step, lane, reports.get(member))
        for lane_id, members in runs.items():
            lane = ended[lane_id].state
            for member in [member for member in members if member not in steps]:
                if not (lane.is_completed() or self.halted(bound)):  # else not started (_run)
                    detail = f"its lane (run {lane_id}) ended {lane.name} before it started: {lane.message}"
                    facts = {"member": member, "wave": wave_of[member], "member_run": lane_id}
                    self.outcomes[member] = MemberOutcome(outcome="failed", detail=detail, **facts)

    def recorded_report(self, member: str) -> StepReport | None:
        """The report a member's step recorded in the promotion's journal."""
        return read_target_journal(load_target(member), self.journal.promotion).completed

    def outcome(
        self, number: int, member: str, lane_id: str, step: TaskRun, lane: FlowRun, report: StepReport | None
    ) -> MemberOutcome:
        """A member's outcome from its task run: migrated with the report its step recorded, or failed and why."""
        facts = {"member": member, "wave": number, "member_run": lane_id}
        facts |= {"started": when(step.start_time), "ended": when(step.end_time) or datetime.now(UTC).isoformat()}
        if step.state and step.state.is_completed():
            if report is not None:  # recorded by the member's step in the journal
                self.reports[member] = report
                return MemberOutcome(outcome="migrated", worker=report.worker, **facts)
            detail = "its step completed without recording its report in the journal; run the promotion again"
        elif step.state and step.state.is_final():
            detail = re.sub(r"^(Task|Flow) run encountered an exception[^:]*: ", "", step.state.message or "")
        else:
            detail = f"its lane (run {lane_id}) ended {lane.state.name} while it ran: {lane.state.message}"
        return MemberOutcome(outcome="failed", detail=detail, **facts)

    def halted(self, bound: int) -> bool:
        return len(self.failed()) >= bound

    def failed(self) -> list[MemberOutcome]:
        return [o for o in self.outcomes.values() if o.outcome == "failed"]

    def not_started(self) -> list[str]:
        return [o.member for o in self.outcomes.values() if o.outcome == "not started"]

    def record(self) -> None:
        """Each member's outcome in its own records, under this run."""
        run_id = str(flow_run.get_id() or "")

        def write(outcome: MemberOutcome) -> None:
            record = outcome.model_dump() | {"flow_run_id": run_id, "group": self.name}
            record["promotion"] = self.journal.promotion
            write_record(load_target(outcome.member), "fleet", run_id, record)

        in_threads(write, list(self.outcomes.values()))

    def table(self) -> list[dict]:
        order = {member: n for n, member in enumerate(self.group.members)}
        rows = sorted(self.outcomes.values(), key=lambda o: order.get(o.member, len(order)))
        shown = {"member", "wave", "outcome", "worker", "detail", "started", "ended"}
        return [outcome.model_dump(include=shown) for outcome in rows]


@flow(name="migrate-lane", flow_run_name="{group} lane {lane}")
def migrate_lane(
    project: str,
    group: str,
    lane: int,
    members: dict[str, int],
    plans: list[Plan],
    waves: list[list[str]],
    to: str,
    promotion: str,
    fleet: str,
    bound: int,
) -> None:
    """A lane of a group's run: its members (each with its plan in `plans`), its share of every wave of `waves`, one
    after another in this process, each a task run named after it with its own backup, migrations, verification,
    RLS proof, report and journal entry, all on one Django probe moved from member to member (Django and the
    project are imported once a lane, not three times a member). Before each member it counts the failures of the
    group's run in every lane (task runs tagged `fleet`) and stops at `bound`, leaving the rest not started; before
    the first member of a later wave it waits until every member of the waves before has ended in every lane, and
    stops when a canary failed. The member after a failed one gets a new probe. The lane fails at its end naming its
    members that failed; the promotion reads why from their runs.

    Every lane starts at once: those with no canary start their process and probe while the canary migrates, and a
    lane runs through the waves rather than a new one starting for each (a lane's start cost the group of 30 of
    benchmarks/fleet.py seven seconds a wave).
    """
    failed: list[str] = []
    started: list[str] = []
    buckets: set[tuple[str, str]] = set()  # checked once a lane: its members share one or a few
    wave_of = {member: number for number, wave in enumerate(waves) for member in wave}
    with resolved_once():  # the project read once a lane, not once a member (a block read: ~50 ms, ~28 ms the server's)
        probe = ProbeSession(load_project(project), load_target(next(iter(members))))
        try:
            reached = 0  # the waves before this one have ended in every lane
            for member, shared in members.items():
                plan = plans[shared].model_copy(update={"target": member})  # a copy shared by members: start()
                if wave_of[member] > reached:
                    if not wait_for_waves_before(fleet, wave_of[member], waves):
                        get_run_logger().info(
                            "the group halted before wave %d; %s not started", wave_of[member], member
                        )
                        break
                    reached = wave_of[member]
                if len(set(failed_members(fleet)) | set(failed)) >= bound:
                    get_run_logger().info("the group halted: %d failed; %s not started", bound, member)
                    break
                step = migrate_member.with_options(tags=[fleet, MEMBER_TAG + member])
                started.append(member)
                try:
                    step(project, member, to, plan, promotion, probe, buckets)
                except Exception:  # any failure is the member's, recorded in its task run; the lane goes on
                    failed.append(member)
                    probe.__exit__()
                    probe = ProbeSession(load_project(project), load_target(member))
        finally:
            probe.__exit__()
    settle(fleet, started)
    if failed:
        raise MigrationError(f"{', '.join(failed)} failed in {group}'s lane {lane}; the promotion's run says why.")


def wait_for_waves_before(fleet: str, number: int, waves: list[list[str]]) -> bool:
    """Until every member of the waves before wave `number` has ended, in any lane: whether the lane may go on
    (not when a canary failed, or a lane ended before one of its members of those waves did: it never will)."""
    earlier = {member for wave in waves[:number] for member in wave}
    while True:
        steps = member_steps(fleet)
        ended = {member for member, step in steps.items() if step.state and step.state.is_final()}
        if any(member in ended and not steps[member].state.is_completed() for member in waves[0]):
            return False
        if earlier <= ended:
            return True
        ended_lanes = FlowRunFilter(tags=FlowRunFilterTags(all_=[fleet]), state=ENDED)
        with get_client(sync_client=True) as client:
            lanes = client.read_flow_runs(flow_run_filter=ended_lanes)
        if any(set(run.parameters.get("members", {})) & (earlier - ended) for run in lanes):
            return False
        time.sleep(WAVE_POLL_S)


@task(name="migrate-member", task_run_name="migrate {member}", cache_policy=NO_CACHE)
def migrate_member(
    project: str, member: str, to: str, plan: Plan, promotion: str, probe: ProbeSession, buckets: set
) -> StepReport:
    """A member's step in its lane, under one slot of its server's global concurrency limit from its first
    connection to its last (no more than per_server members of any promotion migrate on one server at once):
    its whole plan in the promotion's journal before, its report after (in the bucket, where the promotion reads
    it: no worker's disk), both written by this task run itself. The step's parts (its checks, backup, each
    migration, verify, RLS, its report) run inside this task run too, retried as their tasks would be
    (flows/parts.py): a task run costs the server ~66 ms of CPU, and a member's parts were fourteen of them. Its
    report is its markdown artifact alone (reporting.markdown_alone)."""
    journal, run_id = Journal(promotion=promotion), str(flow_run.get_id() or "")
    with resolved_once(), markdown_alone():
        journals.record_step(journal, member, run_id, plan)
        with concurrency(server_limit(load_target(member)), occupy=1, strict=True):
            report = migrate_target(project, member, to, plan, probe, buckets, in_the_calling_run)
        journals.record_step(journal, member, run_id, report)
    return report


def settle(fleet: str, started: list[str]) -> None:
    """Until the server has the final state of each member this lane started: task run states reach it as events,
    after the flow run's own end at times (seen: a lane Completed while its last member still read Running), and
    the promotion reads each member's outcome once its lanes have ended."""
    lane = str(flow_run.get_id() or "")
    deadline = time.monotonic() + SETTLE_S
    while lane and time.monotonic() < deadline:
        steps = member_steps(fleet, [lane])
        if all(member in steps and steps[member].state.is_final() for member in started):
            return
        time.sleep(0.2)


def failed_members(fleet: str) -> list[str]:
    """The members of a group's run that failed so far, in any lane."""
    with get_client(sync_client=True) as client:
        state = TaskRunFilterState(type=TaskRunFilterStateType(any_=FAILED))
        runs = client.read_task_runs(task_run_filter=TaskRunFilter(tags=TaskRunFilterTags(all_=[fleet]), state=state))
    return [member_of(run) for run in runs]


def member_steps(fleet: str, lane_ids: list[str] | None = None) -> dict[str, TaskRun]:
    """The member task runs of the group's run (of the lanes `lane_ids` alone, when given), by member. Paged by the
    rows read, in a fixed order: a member's run that reached the server between two pages (it is created by an
    event) must not make a page repeat for good (seen: a lane that asked for the page after its six members forever,
    its seventh one first in the order)."""
    found: dict[str, TaskRun] = {}
    with get_client(sync_client=True) as client:
        filtered = TaskRunFilter(tags=TaskRunFilterTags(all_=[fleet]))
        if lane_ids is not None:
            filtered.flow_run_id = TaskRunFilterFlowRunId(any_=[UUID(lane) for lane in lane_ids])
        read = 0
        while page := client.read_task_runs(task_run_filter=filtered, sort=TaskRunSort.ID_DESC, limit=200, offset=read):
            found |= {member_of(run): run for run in page}
            read += len(page)
    return found


def member_of(run: TaskRun) -> str:
    return next(tag.removeprefix(MEMBER_TAG) for tag in run.tags if tag.startswith(MEMBER_TAG))


def when(moment: datetime | None) -> str:
    return moment.isoformat() if moment else ""
