"""Backup: a verified backup of targets now (`dbpromote backup`) or every night with retention (nightly-backup)."""

from __future__ import annotations

from dbpromote.flows.parts import flow
from dbpromote.tasks.backup import backup_to_gcs
from dbpromote.tasks.preflight import check_bucket, check_database
from dbpromote.tasks.retention import apply_retention

from dbpromote.config import load_target
from dbpromote.models.backup import Backup
from dbpromote.notify import notify_failure
from dbpromote.reporting import publish_retention
from dbpromote.retention import check_retention


@flow(name="backup", on_failure=[notify_failure], flow_run_name="backup {targets}")
def backup(targets: list[str], keep_last: int = 0, keep_days: float = 14, read_back: bool = False) -> list[Backup]:
    """One verified backup per target (read whole by pg_restore as it uploads; with read_back, downloaded and read
    whole again); with keep_last, then old backups are deleted by the retention rules.

    Retention keeps the newest keep_last backups, every one younger than keep_days, the newest successful
    promotion's and every one a rollback record names; it runs only after every new backup was verified.
    """
    if keep_last:
        check_retention(keep_last, keep_days)
    resolved = [load_target(name) for name in targets]
    backups = []
    for target in resolved:
        check_database(target)
        check_bucket(target)
        backups.append(backup_to_gcs(target, read_back))
    if keep_last:
        publish_retention([apply_retention(target, keep_last, keep_days) for target in resolved])
    return backups
