"""The environment step: plan, preflight, back up, migrate one at a time, verify, report; for one target."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from functools import partial

from dbpromote.flows.parts import Part, as_task_run, flow
from dbpromote.tasks.backup import backup_to_gcs
from dbpromote.tasks.migrate import after_migrating, apply_migration
from dbpromote.tasks.plan import plan_migrations
from dbpromote.tasks.preflight import check_bucket, check_database
from dbpromote.tasks.report import publish_report
from dbpromote.tasks.rls import apply_rls_policies, prove_tenant_isolation
from dbpromote.tasks.verify import (
    check_application_health,
    prove_compatibility,
    verify_target,
    watch_after_migrating,
)
from prefect.runtime import flow_run

from dbpromote.config import DatabaseTarget, load_project, load_target
from dbpromote.errors import DbpromoteError, PreflightError, VerificationError
from dbpromote.models.plan import Plan, describe_change
from dbpromote.models.report import StepReport, Verification
from dbpromote.probe import ProbeSession
from dbpromote.records import record_migration_files


def preflight(
    project: str,
    target: str,
    to: str = "",
    probe: ProbeSession | None = None,
    buckets: set[tuple[str, str]] | None = None,
    part: Part = as_task_run,
) -> Plan:
    """Refuse, before anything changes, what cannot be promoted; the plan of the target when all is well, asked
    of `probe` when given (one Django for every target a promotion plans, or for a whole step). `buckets` holds
    the (bucket, prefix) pairs a promotion has checked already: a fleet's members share one, and checking it
    (three requests) for each member delayed the approval of 30 members from 17.0-18.1 s to 25.4 s
    (benchmarks/fleet.py --sizes 30).

    Its tasks run in the calling flow: a subflow of its own costs 0.25-0.45 s (its run created, its states, its
    end; five one-line subflows in an in-process parent, 2026-12-07) and a promotion preflights four times.
    """
    django_project, database = load_project(project), load_target(target)
    buckets = set() if buckets is None else buckets
    part(check_database)(database)
    if (database.bucket, database.prefix) not in buckets:
        part(check_bucket)(database)
        buckets.add((database.bucket, database.prefix))
    return part(plan_migrations)(django_project, database, to, probe)


# The probe a promotion lends the steps it runs as subflows in its own process: one Django for its checks and every
# step, not one more a step (a probe's start is 0.3-0.4 s; an in-process promotion of the sample started three).
# Lent through the context, not as a parameter: the server keeps a subflow's parameters, as JSON.
LENT_PROBE: ContextVar[ProbeSession | None] = ContextVar("dbpromote_lent_probe", default=None)


@contextlib.contextmanager
def lending(probe: ProbeSession) -> Iterator[None]:
    """migrate_environment's steps inside the block on `probe` (started by this thread: it outlives the step's)."""
    token = LENT_PROBE.set(probe.start())
    try:
        yield
    finally:
        LENT_PROBE.reset(token)


@flow(name="migrate-environment", flow_run_name="migrate {target}")
def migrate_environment(project: str, target: str, to: str = "", expected_plan: Plan | None = None) -> StepReport:
    """Take one target to `to` (every leaf when empty), safely, and prove it.

    With expected_plan (what preflight saw, what staging vouched for and the approver saw), nothing runs unless the
    plan is still exactly that one. On the probe its caller lends (`lending`), or a probe of its own.
    """
    return migrate_target(project, target, to, expected_plan, LENT_PROBE.get())


def server_limit(database: DatabaseTarget) -> str:
    """The name of a database server's global concurrency limit: its host and port (never the URL's secrets)."""
    parts = database.conninfo.params
    return f"dbpromote-server-{parts.get('host', 'localhost')}-{parts.get('port', '5432')}"


def migrate_target(
    project: str,
    target: str,
    to: str,
    expected_plan: Plan | None,
    probe: ProbeSession | None = None,
    buckets: set[tuple[str, str]] | None = None,
    part: Part = as_task_run,
) -> StepReport:
    """The step itself, on one Django for its plan, migrations and verification (`probe`, moved to the target,
    when the caller keeps one warm for several targets: a fleet's lane): preflight again, refuse a plan other than
    the expected one, carry it out. `part` runs each of its parts (a task run each, or inside the caller's)."""
    django_project, database = load_project(project), load_target(target)
    with contextlib.ExitStack() as stack:
        if probe is None:
            probe = stack.enter_context(ProbeSession(django_project, database))
        else:
            probe.retarget(database)
        plan = preflight(project, target, to, probe, buckets, part)
        if expected_plan is not None and expected_plan.deferred:  # one phase of it: the rest waits for a deploy
            plan = plan.only(set(plan.labels) - set(expected_plan.deferred))
        if expected_plan is not None and not plan.runs_as(expected_plan.migrations):
            raise PreflightError(
                f"The plan for {target} changed since it was staged and approved ({expected_plan.hash} -> "
                f"{plan.hash}; {describe_change(expected_plan, plan)}); nothing was run on {target}: start a new "
                "promotion."
            )
        report = StepReport(target=target, plan=plan, worker=os.environ.get("PREFECT__WORKER_NAME", ""))
        verify = partial(part(verify_target), django_project, database, plan, probe)
        return carry_out(database, probe, report, verify, part)


def carry_out(
    database: DatabaseTarget,
    probe: ProbeSession,
    report: StepReport,
    verify: Callable[[], Verification],
    part: Part = as_task_run,
) -> StepReport:
    """Back up when anything will change, run the plan one migration at a time on `probe`, verify, bring RLS up to
    date and prove it. On any failure the report says where the database is and the way back."""
    target, plan = report.target, report.plan
    try:
        if plan.migrations:
            report.backup = part(backup_to_gcs)(database)
        try:
            for migration in plan.migrations:
                report.migrations.append(part(apply_migration)(probe, database, migration))
            if plan.migrations:
                part(after_migrating)(probe, database, plan.migrations)
        finally:
            record_files(database, report)
        if proves_compatibility(database, plan):
            report.proof = part(prove_compatibility)(probe, plan)
        report.verification = verify()
        if not report.verification.passed:
            failed = ", ".join(f"{c.name} ({c.detail})" for c in report.verification.failures)
            raise VerificationError(f"Verification failed on {target}: {failed}; fix the data or the release.")
        report.rls = part(apply_rls_policies)(database)
        report.isolation = part(prove_tenant_isolation)(database)
        if database.health_url or database.smoke_command:
            report.health = part(check_application_health)(probe.project, database)
            if not report.health.passed:
                raise VerificationError(
                    f"The application on {target} is unhealthy after the migration ({report.health.detail}); it was "
                    "not restored, as it may have taken writes since: fix it, or go back as below."
                )
        if plan.migrations and database.watch_after:
            report.aftermath = part(watch_after_migrating)(database)
    except DbpromoteError as error:
        report.error = str(error)
        part(publish_report)(report)
        where = f"{target} is at the state after {report.last_committed}; the way back: {report.way_back()}."
        raise error.with_context(where) from error
    part(publish_report)(report)
    return report


def proves_compatibility(database: DatabaseTarget, plan: Plan) -> bool:
    """Staging proves what the release running before the plan meets on the new schema: a SELECT and an INSERT
    per model, rolled back (the INSERTs advance sequences; production is spared them). A database that had
    nothing applied ran no release."""
    forward = [m for m in plan.migrations if not m.backwards]
    return bool(forward and plan.applied) and not database.requires_approval


def record_files(database: DatabaseTarget, report: StepReport) -> None:
    """The hash of each migration file this step applied, as it was: `drift` finds a file edited since."""
    files = {
        result.label: report.plan.file_hashes[result.label]
        for result, migration in zip(report.migrations, report.plan.migrations, strict=False)
        if not (migration.backwards or result.already_applied) and result.label in report.plan.file_hashes
    }
    if files:
        record_migration_files(database, str(flow_run.get_id() or ""), files)
