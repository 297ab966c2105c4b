"""Rollback: a target back to the migration state a backup recorded, reversing one migration at a time."""

from __future__ import annotations

from dbpromote.flows.environment import carry_out
from dbpromote.flows.parts import flow
from dbpromote.tasks.plan import plan_rollback
from dbpromote.tasks.preflight import check_bucket, check_database, check_not_held
from dbpromote.tasks.verify import verify_state
from prefect.runtime import flow_run

from dbpromote.backups import find_backup
from dbpromote.config import load_project, load_target
from dbpromote.errors import PreflightError
from dbpromote.models.report import StepReport
from dbpromote.notify import notify_failure
from dbpromote.probe import ProbeSession
from dbpromote.records import newest_promotion_backup, read_records, write_record
from dbpromote.reporting.forms import rollback_request
from dbpromote.waits import ANSWER_POLL_S, APPROVAL_TIMEOUT_S, record_approval, wait_for_approval


@flow(name="rollback", on_failure=[notify_failure], flow_run_name="roll back {target}")
def rollback(
    project: str,
    target: str,
    backup: str = "",
    approval_timeout_s: int = APPROVAL_TIMEOUT_S,
    approval_poll_s: int = ANSWER_POLL_S,
) -> StepReport:
    """Return a target to the migration state recorded by a backup (when none is named, the one the newest
    promotion took: the state before it), reversing migrations one at a time with the same lock safety as migrate.

    Refused before anything changes when a migration on the way cannot be reversed; the restore is offered then.
    A fresh backup is taken first (reversing drops what the migrations added); RLS is brought up to date after.
    """
    django_project, database = load_project(project), load_target(target)
    check_not_held([target])
    check_database(database)
    check_bucket(database)
    chosen = find_backup(database, backup or newest_promotion_backup(database))
    plan = plan_rollback(django_project, database, chosen.migration_state)
    irreversible = [m.label for m in plan.migrations if not m.reversible]
    if irreversible:
        raise PreflightError(
            f"{', '.join(irreversible)} cannot be reversed, so {target} cannot be rolled back to the state of "
            f"{chosen.uri}; nothing was changed: restore that backup instead with "
            f"`dbpromote restore {target} --backup {chosen.uri}`."
        )
    run_id = str(flow_run.get_id() or "")
    # Retention keeps the backup this rollback returns to. Once per run: a run suspended for its approval runs this
    # again when answered.
    if not any(r["flow_run_id"] == run_id for r in read_records(database, "rollbacks")):
        record = {"flow_run_id": run_id, "backup": chosen.object_name, "plan": plan.hash}
        write_record(database, "rollbacks", run_id, record)
    if plan.migrations and database.requires_approval:
        approval = wait_for_approval(
            rollback_request(project, target, plan, chosen), approval_timeout_s, approval_poll_s
        )
        record_approval(database, approval)
    report = StepReport(target=target, plan=plan)
    with ProbeSession(django_project, database) as probe:
        return carry_out(database, probe, report, lambda: verify_state(database, chosen.migration_state))
