"""Promote: a release through every environment, staging first; production only after a named person approves."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

from dbpromote.flows.drift import preflight_drift
from dbpromote.flows.environment import migrate_environment, preflight
from dbpromote.flows.fleet import GroupStep
from dbpromote.flows.rehearsal import rehearse_plan
from dbpromote.tasks.journal import open_journal, record_kept, record_step
from dbpromote.tasks.preflight import check_not_held
from prefect import flow, get_run_logger
from prefect.runtime import flow_run

from dbpromote.config import load_group, load_project, load_target, resolved_once
from dbpromote.errors import PreflightError
from dbpromote.models.approval import Approval, ApprovalRequest, Deployment, promotion_request
from dbpromote.models.journal import Journal, TargetJournal
from dbpromote.models.plan import AFTER_DEPLOY, BEFORE_DEPLOY, Plan
from dbpromote.models.report import StepReport
from dbpromote.notify import notify_failure
from dbpromote.probe import ProbeSession
from dbpromote.promotion import check_promotion_input
from dbpromote.records import write_record
from dbpromote.reporting import publish_promotion
from dbpromote.waits import (
    ANSWER_POLL_S,
    APPROVAL_TIMEOUT_S,
    record_approval,
    wait_for_approval,
    wait_for_deploy,
    wait_for_window,
)
from dbpromote.windows import Measured, when_it_runs


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
    # The checks and plans before any approval read each target once; each step after it reads them again (a
    # person may change a target while the promotion waits).
    with resolved_once():
        check_promotion_input(project, through, to)
        groups = {name: group for name in through if (group := load_group(name))}
        targets = [member for name in through for member in (groups[name].members if name in groups else [name])]
        check_not_held(targets)
        journal = open_journal(project, through, to, resume, targets)
        with ProbeSession(load_project(project), load_target(targets[0])) as probe:  # one Django plans them all
            checked: set[tuple[str, str]] = set()
            now = {target: preflight(project, target, to, probe, checked) for target in targets}
            plans = journal.continue_plans(now)
            divergent = [t for name in groups for t in groups[name].members if plans[t].hash != plans[through[0]].hash]
            if divergent and not skip_divergent:
                raise PreflightError(
                    f"{', '.join(divergent)} would run another plan than {through[0]} "
                    f"({', '.join(sorted({plans[t].hash for t in divergent}))}, not {plans[through[0]].hash}); "
                    "nothing was run: bring them to the group's state first, or leave them out of this promotion "
                    "with --skip-divergent."
                )
            vouch_for({target: plans[target] for target in targets if target not in divergent}, through[0])
            # A target this promotion already took through its step changes no more: no gate to pass (on the run
            # that carries a promotion on after its approval, staging's replay cost a second of every promotion as
            # typed). The others' histories are read by the same Django, and each distinct one replayed once
            # (members of a group share theirs).
            drift = {
                target: "not checked again: its step is done in this promotion"
                if journal.completed(target, now[target])
                else preflight_drift(project, target, probe)
                for target in targets
                if target not in divergent
            }

    reports: list[StepReport] = []
    approvals: list[Approval] = []
    for target in through:
        if target in groups:
            members = [member for member in groups[target].members if member not in divergent]
            fleet = GroupStep(project, target, groups[target], journal, to, now, plans)
            fleet.skip([member for member in groups[target].members if member in divergent])
            measured = Measured.of(reports, through[0])
            approval, ran = fleet.promote(
                members, reports, drift, measured, now_reason, approval_timeout_s, approval_poll_s
            )
            approvals += [approval] if approval else []
            reports += ran
            continue
        if done := journal.completed(target, now[target]):
            reports.append(done)  # a crashed run of this promotion did it all: nothing runs twice
            continue
        rehearsal = None
        if target != through[0]:
            honoured = journal.approval(target, plans[target])  # given for this very plan before a crash: it stands
            if rehearse and not honoured:
                rehearsal = rehearse_plan(project, target, through[0], plans[target], rehearsal_slow_s)
        measured = Measured.of(reports, through[0], rehearsal)
        database = load_target(target)
        if target != through[0] and database.requires_approval:
            need = measured.need(plans[target], database.window_lock_s)
            when = when_it_runs(database.windows, need, datetime.now(UTC), now_reason)
            request = promotion_request(project, target, plans[target], reports, rehearsal, drift[target], when)
            approvals.append(honoured or approve(journal, request, approval_timeout_s, approval_poll_s))
        record_step(journal, target, plans[target])
        waits = database.deploy == "rolling" and (target != through[0] or deploy_wait_on_staging)
        phases = Phases(project, target, to, journal, approval_timeout_s, approval_poll_s, measured, now_reason)
        reports += phases.run(plans[target], now[target]) if waits else phases.run_one(now[target])

    first_reports = {}
    for report in reports:
        first_reports.setdefault(report.target, report)  # its backup was taken before the promotion changed it
    with resolved_once():
        record_promotion(project, plans, journal, first_reports.values())
    publish_promotion(project, through, str(flow_run.get_id()), reports, approvals)
    get_run_logger().info("promoted %s through %s", project, ", ".join(through))
    return reports


def record_promotion(project: str, plans: dict[str, Plan], journal: Journal, reports) -> None:
    """What retention keeps, and a rollback finds, for each target: the promotion's record with the backup taken
    before it changed the target, its deploy and its window."""
    for report in reports:
        record = {"flow_run_id": str(flow_run.get_id()), "project": project, "plan_hash": plans[report.target].hash}
        record["backup"] = report.backup.object_name if report.backup else None
        if deployment := journal.deployed(report.target, plans[report.target]):
            record["deployed"] = deployment.model_dump()
        if window := journal.targets.get(report.target, TargetJournal()).window:
            record["window"] = window.model_dump()
        write_record(load_target(report.target), "promotions", record["flow_run_id"], record)


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

    def run_one(self, now: Plan) -> list[StepReport]:
        """What preflight saw (the whole plan, or what a crashed run left of it), exactly that, in one step: in a
        maintenance window where the target has them and the step needs one."""
        if now.migrations:
            self.wait_for_window(now)
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
        self.wait_out_delay(whole, deployment)
        return reports + self.run_one(now.only(set(now.labels) - before))

    def wait_for_window(self, now: Plan) -> None:
        """Suspended until the window this part of the step runs in opens (or a person runs it now); recorded."""
        database = load_target(self.target)
        need = self.measured.need(now, database.window_lock_s)
        if window := wait_for_window(self.project, database, self.target, now, need, self.now_reason):
            record_kept(self.journal, self.target, window)

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
