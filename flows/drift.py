"""Drift: does a target's live schema still equal what its applied migrations produce? (`dbpromote drift`)"""

from __future__ import annotations

from dbpromote.flows.parts import Part, as_task_run, flow
from dbpromote.tasks.drift import check_drift, fake_apply
from dbpromote.tasks.plan import plan_migrations
from dbpromote.tasks.preflight import check_not_held
from prefect import get_run_logger

from dbpromote.config import load_project, load_target
from dbpromote.drift import check_next
from dbpromote.errors import InputError, PreflightError, VerificationError
from dbpromote.models.drift import DriftReport
from dbpromote.models.plan import parse_target_migration
from dbpromote.notify import notify_failure
from dbpromote.probe import ProbeSession
from dbpromote.reporting import publish_drift
from dbpromote.reporting.forms import reconcile_request
from dbpromote.waits import ANSWER_POLL_S, APPROVAL_TIMEOUT_S, record_approval, wait_for_approval


@flow(name="drift", on_failure=[notify_failure], flow_run_name="drift of {target}")
def drift(project: str, target: str) -> DriftReport:
    """Compare every object of the target's schema with a replay of the migrations it records; fail, naming the
    objects, when they differ. Changes nothing on the target."""
    report = check_drift(load_project(project), load_target(target))
    publish_drift(report)
    if report.found:
        raise VerificationError(
            f"{report.summary()}; each difference and the SQL that would reconcile it is in the run's drift table "
            f"(`dbpromote drift {target} --project {project}` prints it)."
        )
    return report


def preflight_drift(project: str, target: str, probe: ProbeSession | None = None, part: Part = as_task_run) -> str:
    """A promotion's drift check, as the target is set; the line its approval form shows.

    block: drift a promotion would not repair stops it before anything changes, naming the objects. warn: the
    promotion goes on and the form shows the drift. Drift the RLS step repairs (a policy edited, RLS off, a grant
    revoked on a tenant table) never stops one: the promotion is what repairs it.
    """
    database = load_target(target)
    if database.drift == "off":
        return f"not checked (drift is off for {target})"
    report = part(check_drift)(load_project(project), database, probe=probe)
    publish_drift(report)
    if report.blocking and database.drift == "block":
        named = ", ".join(f"{d.object} ({d.kind})" for d in report.blocking[:5])
        more = f" and {len(report.blocking) - 5} more" if len(report.blocking) > 5 else ""
        raise PreflightError(
            f"{target}'s schema differs from what its applied migrations produce: {named}{more}; nothing was "
            f"changed: reconcile it (`dbpromote drift {target} --project {project}` shows each difference with the "
            f"SQL that would fix it), or let promotions go on regardless with `dbpromote target add {target} ... "
            "--drift warn`."
        )
    return report.status()


@flow(name="reconcile", on_failure=[notify_failure], flow_run_name="reconcile {migration} on {target}")
def reconcile(
    project: str,
    target: str,
    migration: str,
    approval_timeout_s: int = APPROVAL_TIMEOUT_S,
    approval_poll_s: int = ANSWER_POLL_S,
) -> DriftReport:
    """Record a migration whose effect someone applied by hand (`migrate --fake`), only once the live schema is
    proven equal to a replay of the target's recorded migrations plus that one; approval first where the target
    requires it. Refused, showing the differences, when the hand-made change is not what the migration does."""
    parsed = parse_target_migration(migration)
    if parsed is None:
        raise InputError("Name the migration to reconcile as APP:NAME, e.g. --migration core:0002_featureflag.")
    app, name = parsed
    django_project, database = load_project(project), load_target(target)
    check_not_held([target])
    plan = plan_migrations(django_project, database)
    label = f"{app}.{name}"
    check_next([m.label for m in plan.migrations], [f"{a}.{n}" for a, n in plan.applied], label, target)
    report = check_drift(django_project, database, plus=(app, name))
    publish_drift(report)
    if report.blocking:
        named = ", ".join(f"{d.object} ({d.kind})" for d in report.blocking[:5])
        raise VerificationError(
            f"{target}'s schema is not what applying {label} gives: {named}; nothing was recorded: make the schema "
            f"match the migration (the run's drift table has each difference and its fix), or let a promotion apply it."
        )
    file_hash = plan.file_hashes.get(f"{app}.{name}", "")
    if database.requires_approval:
        request = reconcile_request(target, plan.migrations[0], file_hash, report.status())
        record_approval(database, wait_for_approval(request, approval_timeout_s, approval_poll_s))
    fake_apply(django_project, database, label, file_hash)
    get_run_logger().info("%s recorded as applied on %s after proving its effect is there", label, target)
    return report
