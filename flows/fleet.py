"""A group's step in a promotion: one approval for every member, then the members in waves, canary first, each
member a deployment run of migrate-environment on whichever worker takes it, under Prefect's global concurrency
limit of its database server. Prefect is the engine: dbpromote starts runs and reads their states, nothing more."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import NamedTuple

from dbpromote.flows.environment import server_limit
from dbpromote.tasks.approval import record_approval, wait_for_approval
from dbpromote.tasks.journal import read_target_journal, record_kept, record_step
from dbpromote.tasks.window import wait_for_window
from prefect import get_client, get_run_logger
from prefect.artifacts import create_table_artifact
from prefect.deployments import run_deployment
from prefect.runtime import flow_run

from dbpromote.config import DatabaseTarget, TargetGroup, load_target
from dbpromote.errors import MigrationError
from dbpromote.models.approval import Approval, promotion_request
from dbpromote.models.fleet import MemberOutcome, Share, waves
from dbpromote.models.journal import Journal
from dbpromote.models.plan import Plan
from dbpromote.models.report import StepReport
from dbpromote.records import write_record
from dbpromote.windows import Measured, WindowNeed

MEMBER_DEPLOYMENT = "migrate-environment/migrate-environment"
# How often the promotion reads its members' states: a member takes seconds at least, a read costs the server
# one query.
MEMBER_POLL_S = 1.0


class GroupWindow(NamedTuple):
    """A group's members that wait for their shared maintenance window, and what the wait needs."""

    members: list[str]
    database: DatabaseTarget
    plan: Plan
    need: WindowNeed


class GroupStep:
    """One group's step in a promotion: its approval, its members in waves, the outcome of each as the run's table
    artifact and the members' records show it."""

    def __init__(self, project: str, name: str, group: TargetGroup, journal: Journal, to: str):
        self.project, self.name, self.group, self.journal, self.to = project, name, group, journal, to
        self.wave_size, self.max_failures = group.sizes()
        self.outcomes: dict[str, MemberOutcome] = {}
        self.reports: dict[str, StepReport] = {}
        self.plans: dict[str, Plan] = {}

    def skip(self, members: list[str], plans: dict[str, Plan]) -> None:
        """Divergent members left out (--skip-divergent): reported, never touched."""
        for member in members:
            detail = f"divergent: its plan is {plans[member].hash} ({len(plans[member].migrations)} migrations)"
            self.outcomes[member] = MemberOutcome(member=member, wave=0, outcome="skipped", detail=detail)

    def approve(
        self,
        members: list[str],
        now: dict[str, Plan],
        plans: dict[str, Plan],
        reports: list[StepReport],
        drift: dict[str, str],
        timeout_s: int,
        poll_s: int,
        when: str = "",
    ) -> Approval | None:
        """One approval for every member still to do that requires one (they share one approval policy: `group
        add` checks it); recorded on each of them. None when none needs it (or a crashed run got it)."""
        waiting = [m for m in members if not self.journal.completed(m, now[m]) and load_target(m).requires_approval]
        needed = [m for m in waiting if not self.journal.approval(m, plans[m])]
        if not needed:
            return None
        plan = plans[needed[0]]
        alike: dict[str, list[str]] = {}  # members with the same drift, said once
        for member in waiting:
            alike.setdefault(drift.get(member, "").replace(member, "each"), []).append(member)
        lines = [f"- **{', '.join(members)}**: {status}" for status, members in alike.items() if status]
        shape = [f"| {n or 'canary'} | {', '.join(w)} |" for n, w in enumerate(waves(waiting, *self.shape())) if w]
        request = promotion_request(self.project, self.name, plan, reports, None, "", when).model_copy(
            update={"target": needed[0], "action": f"promoting to group {self.name} ({len(waiting)} members)"}
        )
        request.description += "\n".join(
            ["", "", f"### The members of {self.name}, in waves", "", "| wave | members |", "|---|---|", *shape]
            + (["", "### Drift", "", *lines] if lines else [])
            + [
                "",
                f"Up to {self.group.parallel} at once, at most {self.group.per_server} per database server; halts "
                f"when {self.max_failures} fail (every canary must succeed).",
            ]
        )
        approval = wait_for_approval(request, timeout_s, poll_s)
        for member in needed:
            given = approval.model_copy(update={"target": member})
            record_approval(load_target(member), member, given)
            record_step(self.journal, member, given)
        return approval

    def window_need(self, members: list[str], now: dict[str, Plan], measured: Measured) -> GroupWindow | None:
        """The members still to migrate that need a maintenance window, one of their targets (they share their
        windows: check_promotion_input), and the need: an opening with room for every wave at the slowest member's
        pace by staging's run."""
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

    def run(self, members: list[str], now: dict[str, Plan], plans: dict[str, Plan]) -> list[StepReport]:
        """Every member not done before, wave by wave; halts (raising, once the running ones end) when a canary
        fails or failures reach the bound. The reports of the members migrated, in member order."""
        self.plans = plans
        done = {m: report for m in members if (report := self.journal.completed(m, now[m]))}
        try:
            return self._run(members, done)
        finally:
            self.record()
            create_table_artifact(
                self.table(), key=f"dbpromote-group-{self.name}", description=f"Members of {self.name} in this run"
            )

    def _run(self, members: list[str], done: dict[str, StepReport]) -> list[StepReport]:
        """The waves, after the server limits are set; raises naming the failed members when halted."""
        self.reports |= done
        bound = self.max_failures.of(len(members))
        for member in self.group.members:
            if member in done:
                self.outcomes[member] = MemberOutcome(member=member, wave=0, outcome="done before")
        with get_client(sync_client=True) as client:
            for server in {server_limit(load_target(member)) for member in members}:
                client.upsert_global_concurrency_limit_by_name(server, self.group.per_server)
        planned = waves(members, *self.shape())
        for number, wave in enumerate(planned):
            halted = self.run_wave(number, [member for member in wave if member not in done], bound)
            if halted or (number == 0 and self.failed()):  # every canary must succeed
                for later, rest in enumerate(planned[number + 1 :], start=number + 1):
                    for member in set(rest) - set(self.outcomes):
                        self.outcomes[member] = MemberOutcome(member=member, wave=later, outcome="not started")
                break
        if self.failed():
            why = "its canary failed" if any(o.wave == 0 for o in self.failed()) else f"{len(self.failed())} failed"
            raise MigrationError(
                f"Group {self.name} halted ({why}): "
                + "; ".join(f"{o.member}: {o.detail}" for o in self.failed())
                + f"; not started: {', '.join(self.not_started()) or 'none'}. Fix the cause and run the same "
                "promotion again: members done are left alone, the others run."
            )
        return [self.reports[m] for m in self.group.members if m in self.reports]

    def run_wave(self, number: int, wave: list[str], bound: int) -> bool:
        """The wave's members, up to `parallel` at once; no new one once failures reach the bound. Whether it
        halted."""
        pending, running = list(wave), {}
        while pending or running:
            while pending and len(running) < self.group.parallel and not self.halted(bound):
                member = pending.pop(0)
                running[member] = self.start(number, member)
            if self.halted(bound):
                for member in pending:
                    self.outcomes[member] = MemberOutcome(member=member, wave=number, outcome="not started")
                pending = []
            time.sleep(MEMBER_POLL_S)
            with get_client(sync_client=True) as client:
                for member, run_id in list(running.items()):
                    run = client.read_flow_run(run_id)
                    if run.state and run.state.is_final():
                        self.finish(number, member, run)
                        del running[member]
        return self.halted(bound)

    def start(self, number: int, member: str) -> str:
        """A deployment run of the member's step, as a subflow of this promotion; its id."""
        record_step(self.journal, member, self.plans[member])
        parameters = {"project": self.project, "target": member, "to": self.to, "per_server": self.group.per_server}
        parameters["promotion"] = self.journal.promotion
        parameters["expected_plan"] = self.plans[member].model_dump(mode="json")
        run = run_deployment(MEMBER_DEPLOYMENT, parameters=parameters, timeout=0, as_subflow=True)
        get_run_logger().info("group %s wave %d: %s started as run %s", self.name, number, member, run.id)
        return str(run.id)

    def finish(self, number: int, member: str, run) -> None:
        """A member's outcome from its ended run: its report when it completed, its error sentence when not."""
        ended = datetime.now(UTC).isoformat()
        started = run.start_time.isoformat() if run.start_time else ""
        facts = {"member": member, "wave": number, "started": started, "ended": ended, "member_run": str(run.id)}
        report = read_target_journal(load_target(member), member, self.journal.promotion).completed
        if run.state.is_completed() and report is not None:  # recorded by the member's run in the journal
            self.reports[member] = report
            self.outcomes[member] = MemberOutcome(outcome="migrated", worker=report.worker, **facts)
        elif run.state.is_completed():
            detail = "its run completed without recording its report in the journal; run the promotion again"
            self.outcomes[member] = MemberOutcome(outcome="failed", detail=detail, **facts)
        else:
            detail = (run.state.message or run.state.name).removeprefix("Flow run encountered an exception: ")
            self.outcomes[member] = MemberOutcome(outcome="failed", detail=detail, **facts)
        get_run_logger().info("group %s: %s %s", self.name, member, self.outcomes[member].outcome)

    def halted(self, bound: int) -> bool:
        return len(self.failed()) >= bound

    def failed(self) -> list[MemberOutcome]:
        return [o for o in self.outcomes.values() if o.outcome == "failed"]

    def not_started(self) -> list[str]:
        return [o.member for o in self.outcomes.values() if o.outcome == "not started"]

    def record(self) -> None:
        """Each member's outcome in its own records, under this run."""
        run_id = str(flow_run.get_id() or "")
        for outcome in self.outcomes.values():
            record = outcome.model_dump() | {"flow_run_id": run_id, "group": self.name}
            record["promotion"] = self.journal.promotion
            write_record(load_target(outcome.member), outcome.member, "fleet", run_id, record)

    def table(self) -> list[dict]:
        order = {member: n for n, member in enumerate(self.group.members)}
        rows = sorted(self.outcomes.values(), key=lambda o: order.get(o.member, len(order)))
        shown = {"member", "wave", "outcome", "worker", "detail", "started", "ended"}
        return [outcome.model_dump(include=shown) for outcome in rows]
