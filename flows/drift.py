"""Drift: does a target's live schema still equal what its applied migrations produce? (`dbpromote drift`)"""

from __future__ import annotations

from dbpromote.tasks.drift import check_drift, publish_drift
from prefect import flow

from dbpromote.config import load_project, load_target
from dbpromote.errors import PreflightError, VerificationError
from dbpromote.models.drift import DriftReport
from dbpromote.notify import notify_failure


@flow(name="drift", on_failure=[notify_failure], flow_run_name="drift of {target}")
def drift(project: str, target: str) -> DriftReport:
    """Compare every object of the target's schema with a replay of the migrations it records; fail, naming the
    objects, when they differ. Changes nothing on the target."""
    report = check_drift(load_project(project), load_target(target), target)
    publish_drift(report)
    if report.found:
        raise VerificationError(
            f"{report.summary()}; each difference and the SQL that would reconcile it is in the run's drift table "
            f"(`dbpromote drift {target} --project {project}` prints it)."
        )
    return report


def preflight_drift(project: str, target: str) -> str:
    """A promotion's drift check, as the target is set; the line its approval form shows.

    block: drift a promotion would not repair stops it before anything changes, naming the objects. warn: the
    promotion goes on and the form shows the drift. Drift the RLS step repairs (a policy edited, RLS off, a grant
    revoked on a tenant table) never stops one: the promotion is what repairs it.
    """
    database = load_target(target)
    if database.drift == "off":
        return f"not checked (drift is off for {target})"
    report = check_drift(load_project(project), database, target)
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
