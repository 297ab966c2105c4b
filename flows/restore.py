"""Restore a backup over a target (approval first where required), and the weekly proof that backups restore."""

from __future__ import annotations

from dbpromote.flows.parts import flow
from dbpromote.tasks.preflight import check_bucket, check_database, check_not_held
from dbpromote.tasks.restore import drop_restored, restore_into_new_database, swap_in
from prefect.runtime import flow_run

from dbpromote.backups import find_backup
from dbpromote.config import load_target
from dbpromote.errors import VerificationError
from dbpromote.models.backup import Restored
from dbpromote.notify import notify_failure
from dbpromote.records import write_record
from dbpromote.reporting import publish_backup_verification, publish_restore
from dbpromote.reporting.forms import restore_request
from dbpromote.restores import restored_by_this_run, scratch_name
from dbpromote.waits import ANSWER_POLL_S, APPROVAL_TIMEOUT_S, record_approval, wait_for_approval


@flow(name="restore", on_failure=[notify_failure], flow_run_name="restore {target}")
def restore(
    target: str,
    backup: str = "",
    swap: bool = True,
    disconnect_wait_s: float = 30,
    approval_timeout_s: int = APPROVAL_TIMEOUT_S,
    approval_poll_s: int = ANSWER_POLL_S,
) -> Restored:
    """Restore a verified backup of the target (the newest when none is named) and make it the target's database.

    The backup goes into a new database first and is checked against what it recorded (row counts of every table,
    migration state); only then is the target's database renamed aside (kept, never dropped) and the new one
    renamed into its place, in one transaction. With swap=false the restored database is left beside the target.
    """
    database = load_target(target)
    if swap:  # a restore beside the target (swap=false) changes nothing of it
        check_not_held([target])
    check_database(database)
    check_bucket(database)
    chosen = find_backup(database, backup)
    if swap and (done := restored_by_this_run(database, chosen)):
        return _report(done)
    if swap and database.requires_approval:
        approval = wait_for_approval(restore_request(target, chosen), approval_timeout_s, approval_poll_s)
        record_approval(database, approval)
    restored = restore_into_new_database(database, chosen, scratch_name(database.database, "restore"))
    if swap:
        restored.replaced = swap_in(database, chosen, restored.database, disconnect_wait_s)
        restored.database = database.database
        run_id = str(flow_run.get_id() or "")
        record = {"flow_run_id": run_id, "backup": chosen.uri, "kept_as": restored.replaced, "rows": restored.rows}
        write_record(database, "restores", run_id, record)
    return _report(restored)


def _report(restored: Restored) -> Restored:
    publish_restore(restored)
    return restored


@flow(name="verify-backups", on_failure=[notify_failure], flow_run_name="verify backups of {targets}")
def verify_backups(targets: list[str]) -> list[Restored]:
    """Restore the newest backup of every target into a scratch database beside it, check it, drop it; report."""
    results, problems = [], []
    for name in targets:
        database = load_target(name)
        try:
            newest = find_backup(database)
            scratch = scratch_name(database.database, "verify")
            results.append(restore_into_new_database(database, newest, scratch))
            drop_restored(database, scratch)
        except Exception as error:  # every target is checked; each failure is reported
            problems.append(f"{name}: {error}")
    publish_backup_verification(results, problems)
    if problems:
        raise VerificationError(f"Backup verification failed: {'; '.join(problems)}")
    return results
