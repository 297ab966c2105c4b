"""Promote: a release through every environment, staging first; production only after a named person approves."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import TypeVar

from dbpromote.flows.drift import preflight_drift
from dbpromote.flows.environment import lending, migrate_environment, preflight
from dbpromote.flows.fleet import GroupStep
from dbpromote.flows.parts import Part, as_task_run, flow, in_the_calling_run
from dbpromote.flows.rehearsal import rehearse_plan
from dbpromote.tasks.journal import open_journal, record_kept, record_step
from dbpromote.tasks.preflight import check_not_held
from prefect import get_run_logger
from prefect.input import create_flow_run_input, read_flow_run_input
from prefect.runtime import flow_run

from dbpromote.config import DatabaseTarget, DjangoProject, load_group, load_project, load_target, resolved_once
from dbpromote.errors import PreflightError
from dbpromote.models.approval import Approval, ApprovalRequest, Deployment
from dbpromote.models.journal import CheckedTargets, Journal, TargetJournal
from dbpromote.models.plan import AFTER_DEPLOY, BEFORE_DEPLOY, Plan
from dbpromote.models.report import StepReport
from dbpromote.notify import notify_failure
from dbpromote.probe import ProbeSession
from dbpromote.promotion import check_promotion_input
from dbpromote.records import write_record
from dbpromote.reporting import publish_promotion
from dbpromote.reporting.forms import promotion_request
from dbpromote.run_context import in_threads
from dbpromote.waits import (
    ANSWER_POLL_S,
    APPROVAL_TIMEOUT_S,
    record_approval,
    wait_for_approval,
    wait_for_deploy,
    wait_for_window,
)
from dbpromote.windows import Measured, when_it_runs

# A run suspended for an approval starts again from its top once answered. Each target is planned again by its own
# step (which refuses any plan but the approved one), so the run keeps what its checks found (CheckedTargets) and
# takes it for the targets no step has started on since, rather than planning and replaying each a second time.
CHECKED_KEY = "dbpromote-checked-targets"
T = TypeVar("T")


@flow(name="promote", on_failure=[notify_failure], flow_run_name="promote {project} through {through}")
def promote(
    project: str,
    through: list[str],
    to: str = "",
    approval_timeout_s: int = APPROVAL_TIMEOUT_S,
    approval_poll_s: int = ANSWER_POLL_S,
    rehearse: bool = False,
    rehearsal_slow_s: float = 60,
    resume: str = "",
    skip_divergent: bool = False,
    deploy_wait_on_staging: bool = True,
    now_reason: str = "",
) -> list[StepReport]:
    """The checklist: plan everywhere, refuse what staging cannot vouch for, then each environment in order.

    A promotion whose run crashed is carried on by the next run with the same parameters (or `resume`, the id of
    one that ended unfinished): what its journal records as done is not done again, its approvals stand, and a
    target part-way through its plan continues from the first migration not applied, after a fresh backup.
    With rehearse, each later environment's plan first runs on a copy of its newest backup restored on the staging
    server; the durations show in the approval form and a migration slower than rehearsal_slow_s must be
    acknowledged as a risk.

    A name in `through` may be a group's: its members are planned with the rest (each must have the plan staging
    vouches for; skip_divergent leaves out and reports those that do not), one approval covers them all, and
    they are promoted in the group's waves (flows/fleet.py).

    A plan with migrations the running release does not survive (after-deploy), on a target deployed rolling,
    runs in two phases there: the before-deploy migrations, then a wait (suspended) until someone says the new
    release is deployed, then the rest. Staging waits too, so production's wait is rehearsed, unless
    deploy_wait_on_staging is off (a staging that deploys itself).

    A target with maintenance windows runs a step whose migrations held a heavy lock for long on staging (or the
    rehearsal), or may rewrite a table, in the first window with room for staging's duration, suspended until it
    opens; approval can be given before. now_reason runs such steps at once, the reason kept in the journal.
    """
    reports: list[StepReport] = []
    approvals: list[Approval] = []
    with Promotion(project, through, to, approval_timeout_s, approval_poll_s, now_reason) as promotion:
        promotion.rehearse_slow_s = rehearsal_slow_s if rehearse else None
        promotion.deploy_wait_on_staging = deploy_wait_on_staging
        promotion.prepare(resume, skip_divergent)
        for target in through:
            step = promotion.group_step if target in promotion.groups else promotion.target_step
            approval, ran = step(target, reports)
            approvals += [approval] if approval else []
            reports += ran
    with resolved_once():
        record_promotion(project, promotion.plans, promotion.journal, reports)
    publish_promotion(project, through, str(flow_run.get_id()), reports, approvals)
    get_run_logger().info("promoted %s through %s", project, ", ".join(through))
    return reports


class Promotion:
    """A promotion's parameters, and what its checks before any approval found: each environment's step reads
    them. The checks read each target once; each step after them reads it again (a person may change a target
    while the promotion waits). Its probes, the checks' and then every step's, end with it."""

    def __init__(self, project: str, through: list[str], to: str, timeout_s: int, poll_s: int, now_reason: str):
        self.project, self.through, self.to, self.timeout_s, self.poll_s = project, through, to, timeout_s, poll_s
        self.now_reason, self.staging = now_reason, through[0] if through else ""
        # Set by the flow's options: later targets rehearsed first (the seconds a migration may take there before
        # it is a risk to acknowledge), and staging waiting for the app's deploy too (off: it deploys itself).
        self.rehearse_slow_s: float | None = None
        self.deploy_wait_on_staging = True
        self.probes: CheckingProbes | None = None

    def __enter__(self) -> Promotion:
        return self

    def __exit__(self, *exc) -> None:
        if self.probes is not None:
            self.probes.__exit__(*exc)

    @resolved_once()
    def prepare(self, resume: str, skip_divergent: bool) -> None:
        """Input checked, the journal opened, every target planned by one Django, the plans vouched for by
        staging, and each target's drift read: nothing has changed yet."""
        check_promotion_input(self.project, self.through, self.to)
        self.groups = {name: group for name in self.through if (group := load_group(name))}
        targets = [m for name in self.through for m in (self.groups[name].members if name in self.groups else [name])]
        check_not_held(targets)
        self.journal = open_journal(self.project, self.through, self.to, resume, targets)
        kept = self.kept_checks()
        unchecked = [t for t in targets if t not in kept.targets]
        self.probes = probes = CheckingProbes(load_project(self.project), load_target(targets[0]))
        checked: set[tuple[str, str]] = set()
        planned = probes.each(
            lambda probe, t: preflight(self.project, t, self.to, probe, checked, self.part(t)), unchecked
        )
        self.now = {t: kept.plan(t) if t in kept.targets else planned[t] for t in targets}
        self.plans = self.journal.continue_plans(self.now)
        self.divergent = self.refuse_divergent(skip_divergent)
        vouch_for({t: self.plans[t] for t in targets if t not in self.divergent}, self.staging)
        # A target this promotion already took through its step changes no more: no gate to pass (on the run
        # that carries a promotion on after its approval, staging's replay cost a second of every promotion as
        # typed). The others' histories are read by Django, and each distinct one replayed once (members of a
        # group share theirs).
        done = "not checked again: its step is done in this promotion"
        drifting = [t for t in unchecked if t not in self.divergent and not self.journal.completed(t, self.now[t])]
        drifts = probes.each(lambda probe, t: preflight_drift(self.project, t, probe, self.part(t)), drifting)
        self.drift = {
            target: kept.drift[target] if target in kept.targets else drifts.get(target, done)
            for target in targets
            if target not in self.divergent
        }
        if not kept.found:
            keep_checks(CheckedTargets.of(self.now, self.drift))

    def kept_checks(self) -> CheckedTargets:
        """What this run's checks found before it suspended for an approval, for the targets no step has started on
        since: nothing when it has not suspended yet (or is a new run carrying on a crashed one, which checks every
        target again)."""
        kept = read_flow_run_input(CHECKED_KEY) if flow_run.get_id() else None
        if kept is None:
            return CheckedTargets()
        checked = CheckedTargets.model_validate(kept)
        journal = self.journal.targets
        untouched = {t: i for t, i in checked.targets.items() if journal.get(t, TargetJournal()).started is None}
        return checked.model_copy(update={"targets": untouched, "found": True})

    def part(self, target: str) -> Part:
        """How the checks of a target run: a group's members' inside this run (a hundred members' checks were three
        hundred task runs), another target's as task runs of their own."""
        return in_the_calling_run if any(target in group.members for group in self.groups.values()) else as_task_run

    def refuse_divergent(self, skip: bool) -> list[str]:
        """The group members whose plan is not staging's: refused, or (skip) left out."""
        staging = self.plans[self.staging].hash
        divergent = [m for name in self.groups for m in self.groups[name].members if self.plans[m].hash != staging]
        if divergent and not skip:
            raise PreflightError(
                f"{', '.join(divergent)} would run another plan than {self.staging} "
                f"({', '.join(sorted({self.plans[m].hash for m in divergent}))}, not {staging}); nothing was run: "
                "bring them to the group's state first, or leave them out of this promotion with --skip-divergent."
            )
        return divergent

    def group_step(self, name: str, reports: list[StepReport]) -> tuple[Approval | None, list[StepReport]]:
        """A group's members, under one approval, in its waves (flows/fleet.py); its divergent ones skipped."""
        group = self.groups[name]
        fleet = GroupStep(self.project, name, group, self.journal, self.to, self.now, self.plans)
        fleet.skip([member for member in group.members if member in self.divergent])
        members = [member for member in group.members if member not in self.divergent]
        measured = Measured.of(reports, self.staging)
        return fleet.promote(members, reports, self.drift, measured, self.now_reason, self.timeout_s, self.poll_s)

    def target_step(self, target: str, reports: list[StepReport]) -> tuple[Approval | None, list[StepReport]]:
        """One target: rehearsed and approved where it must be, then in one step or two phases around the deploy;
        nothing again that a crashed run of this promotion did."""
        plan, now = self.plans[target], self.now[target]
        if done := self.journal.completed(target, now):
            return None, [done]  # a crashed run of this promotion did it all: nothing runs twice
        honoured = self.journal.approval(target, plan)  # given for this very plan before a crash: it stands
        rehearsal = None
        if target != self.staging and self.rehearse_slow_s is not None and not honoured:
            rehearsal = rehearse_plan(self.project, target, self.staging, plan, self.rehearse_slow_s)
        measured = Measured.of(reports, self.staging, rehearsal)
        database = load_target(target)
        approval = None
        if target != self.staging and database.requires_approval:
            need = measured.need(plan, database.window_lock_s)
            when = when_it_runs(database.windows, need, datetime.now(UTC), self.now_reason)
            request = promotion_request(self.project, target, plan, reports, rehearsal, self.drift[target], when)
            approval = honoured or approve(self.journal, request, self.timeout_s, self.poll_s)
        record_step(self.journal, target, plan)
        waits = database.deploy == "rolling" and (target != self.staging or self.deploy_wait_on_staging)
        phases = Phases(
            self.project, target, self.to, self.journal, self.timeout_s, self.poll_s, measured, self.now_reason
        )
        # The checks' first probe runs every step, started again after a wait: Django is warm, or starts once.
        phases.probe = self.probes.probes[0]
        if approval and not honoured:
            phases.after_a_wait()
        return approval, phases.run(plan, now) if waits else phases.run_one(now)


class CheckingProbes:
    """Django probes that a promotion's checks share, each used by one thread at a time: a few targets are checked
    by one probe, a group's members by CHECK_PROBES at once. Each answers a target's plan or drift in 0.1-0.2 s of
    its own CPU (Django's migration graph, the catalog read), so a second probe uses the second core: the checks
    of 100 members before their approval were 23 s in one (benchmarks/fleet.py --sizes 100). The first runs the
    promotion's steps after the checks (Phases.probe)."""

    # Probes checking at once: the dev machine's two cores (30 members' checks: 10.0 s with one probe, 6.3-6.7 s
    # with two, 6.6-6.8 s with three). A probe's start costs about three plans (~0.3 s): fewer targets than
    # PER_PROBE a probe share one.
    CHECK_PROBES = 2
    PER_PROBE = 4

    def __init__(self, project: DjangoProject, target: DatabaseTarget):
        # A probe's process starts at its first request: one never asked costs nothing.
        self.probes = [ProbeSession(project, target) for _ in range(self.CHECK_PROBES)]

    def __enter__(self) -> CheckingProbes:
        return self

    def __exit__(self, *exc) -> None:
        for probe in self.probes:
            probe.__exit__(*exc)

    def each(self, check: Callable[[ProbeSession, str], T], targets: list[str]) -> dict[str, T]:
        """`check(probe, target)` of every target, by target in the targets' order. Many targets are dealt to the
        probes in turn, each probe in a thread of its own that stops at its first error, raised once every thread
        has stopped."""
        probes = self.probes[: max(1, min(len(self.probes), len(targets) // self.PER_PROBE))]
        if len(probes) == 1:
            return {target: check(probes[0], target) for target in targets}
        for probe in probes:  # by this thread: the kernel ends a probe with the thread that started it
            probe.start()
        dealt = [targets[n :: len(probes)] for n in range(len(probes))]
        found = in_threads(lambda n: [check(probes[n], target) for target in dealt[n]], range(len(probes)), len(probes))
        return {target: found[i % len(probes)][i // len(probes)] for i, target in enumerate(targets)}


def keep_checks(checked: CheckedTargets) -> None:
    """What a promotion's checks found, kept in its run for the run carrying it on after it suspends."""
    if flow_run.get_id():
        create_flow_run_input(CHECKED_KEY, checked.model_dump(mode="json"))


def record_promotion(project: str, plans: dict[str, Plan], journal: Journal, reports: list[StepReport]) -> None:
    """What retention keeps, and a rollback finds, for each target: the promotion's record with the backup taken
    before it changed the target (its first report's: a target in two phases has two), its deploy and its
    window."""
    first: dict[str, StepReport] = {}
    for report in reports:
        first.setdefault(report.target, report)

    def write(report: StepReport) -> None:
        record = {"flow_run_id": str(flow_run.get_id()), "project": project, "plan_hash": plans[report.target].hash}
        record["backup"] = report.backup.object_name if report.backup else None
        if deployment := journal.deployed(report.target, plans[report.target]):
            record["deployed"] = deployment.model_dump()
        if window := journal.targets.get(report.target, TargetJournal()).window:
            record["window"] = window.model_dump()
        write_record(load_target(report.target), "promotions", record["flow_run_id"], record)

    in_threads(write, list(first.values()))


class Phases:
    """One target's step: in one go, or in the two phases around the application's deploy."""

    def __init__(
        self,
        project: str,
        target: str,
        to: str,
        journal: Journal,
        timeout_s: int,
        poll_s: int,
        measured: Measured,
        now_reason: str = "",
    ):
        self.project, self.target, self.to, self.journal = project, target, to, journal
        self.timeout_s, self.poll_s, self.measured, self.now_reason = timeout_s, poll_s, measured, now_reason
        self.probe: ProbeSession | None = None  # set: the promotion's, lent to each step; else each starts its own

    def run_one(self, now: Plan) -> list[StepReport]:
        """What preflight saw (the whole plan, or what a crashed run left of it), exactly that, in one step: in a
        maintenance window where the target has them and the step needs one."""
        if now.migrations:
            self.wait_for_window(now)
        with lending(self.probe) if self.probe else contextlib.nullcontext():
            report = migrate_environment(self.project, self.target, self.to, expected_plan=now)
        record_step(self.journal, self.target, report)
        return [report]

    def run(self, whole: Plan, now: Plan) -> list[StepReport]:
        """The before-deploy migrations still pending, the wait for the deploy (unless recorded), then the rest;
        phases as the whole plan had them when the promotion started. A plan with one phase runs in one step."""
        if not whole.two_phases:
            return self.run_one(now)
        before = {m.label for m in whole.phase(BEFORE_DEPLOY)}
        reports = []
        if (first := now.only(before)).migrations:
            reports += self.run_one(first)
        deployment = self.journal.deployed(self.target, whole)
        if deployment is None:
            done = [label for label in whole.labels if label in before]
            deployment = wait_for_deploy(self.project, self.target, whole, done, self.timeout_s, self.poll_s)
            record_kept(self.journal, self.target, deployment)
            self.after_a_wait()
        self.wait_out_delay(whole, deployment)
        return reports + self.run_one(now.only(set(now.labels) - before))

    def wait_for_window(self, now: Plan) -> None:
        """Suspended until the window this part of the step runs in opens (or a person runs it now); recorded."""
        database = load_target(self.target)
        need = self.measured.need(now, database.window_lock_s)
        if window := wait_for_window(self.project, database, self.target, now, need, self.now_reason):
            record_kept(self.journal, self.target, window)
            self.after_a_wait()

    def after_a_wait(self) -> None:
        """The lent probe started anew at its next request: Django imports a migration module once in a process,
        and the project's files may have changed while the promotion waited (for a person, a deploy, a window)."""
        if self.probe is not None:
            self.probe.renew()

    def wait_out_delay(self, whole: Plan, deployment: Deployment) -> None:
        """django-safemigrate's `after_deploy(delay=...)`, counted from the recorded deploy (what its users ask
        for, its issue 56): the after-deploy phase starts once the longest delay of its migrations has passed."""
        delay = max((m.marker_delay_s or 0 for m in whole.phase(AFTER_DEPLOY)), default=0)
        ready = datetime.fromisoformat(deployment.deployed_at) + timedelta(seconds=delay)
        remaining = (ready - datetime.now(UTC)).total_seconds()
        if remaining > 0:
            get_run_logger().info("the after-deploy phase of %s starts at %s (a marked delay)", self.target, ready)
            time.sleep(remaining)


def approve(journal: Journal, request: ApprovalRequest, timeout_s: int, poll_s: int) -> Approval:
    """Wait for a person's approval; recorded for the audit and in the promotion's journal."""
    approval = wait_for_approval(request, timeout_s, poll_s)
    record_approval(load_target(request.target), approval)
    record_step(journal, request.target, approval)
    return approval


def vouch_for(plans: dict[str, Plan], staging: str) -> None:
    """Every later environment must run exactly what staging runs first (same migrations, same SQL)."""
    for target, plan in plans.items():
        if plan.hash != plans[staging].hash:
            extra = sorted(set(plan.labels) - set(plans[staging].labels))
            missing = sorted(set(plans[staging].labels) - set(plan.labels))
            raise PreflightError(
                f"{target} would run a different plan ({plan.hash}) than {staging} ({plans[staging].hash}): "
                f"{'only on ' + target + ': ' + ', '.join(extra) if extra else ''}"
                f"{'; ' if extra and missing else ''}"
                f"{'only on ' + staging + ': ' + ', '.join(missing) if missing else ''}"
                f"{'the same migrations with different SQL' if not extra and not missing else ''}; "
                f"bring {staging} to the state of {target} first (restore its backup) so it can vouch for the plan."
            )
