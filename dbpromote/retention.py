"""Retention: delete old backups by the rules, never one a promotion or a rollback may need."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from dbpromote.backups import backup_objects, delete_backup
from dbpromote.config import DatabaseTarget
from dbpromote.errors import InputError
from dbpromote.gcs import gcs_client
from dbpromote.models.backup import Backup, Retained
from dbpromote.records import newest_promotion_backup, read_records

# A backup is verified minutes after its object appears. An unverified dump this old was left by a backup that
# stopped in between (a killed worker): never listed as a backup, nothing refers to it, so retention deletes it.
UNVERIFIED_AFTER = timedelta(days=1)


def check_retention(keep_last: int, keep_days: float) -> None:
    if keep_last < 1 or keep_days < 0:
        raise InputError(
            f"Retention keep_last={keep_last}, keep_days={keep_days} would keep no backup; "
            "keep at least the newest one (keep_last >= 1) and a non-negative number of days."
        )


def referenced_backups(target: DatabaseTarget) -> dict[str, str]:
    """Backups the way back may need: the newest successful promotion's and every rollback record's."""
    referenced: dict[str, str] = {}
    newest = newest_promotion_backup(target)
    if newest:
        referenced[newest] = "taken by the newest promotion"
    for rollback in read_records(target, "rollbacks"):
        if rollback.get("backup"):
            referenced.setdefault(rollback["backup"], f"referenced by rollback {rollback['flow_run_id']}")
    return referenced


def apply_retention(target: DatabaseTarget, keep_last: int, keep_days: float) -> Retained:
    """Keep the newest keep_last backups, those younger than keep_days and every referenced one; delete the rest."""
    check_retention(keep_last, keep_days)
    now = datetime.now(UTC)
    bucket = gcs_client(target.gcp_credentials).bucket(target.bucket)
    backups, unverified = backup_objects(target)
    kept, deleted = retention_decisions(backups, referenced_backups(target), now, keep_last, keep_days)
    for backup in deleted:
        delete_backup(bucket, backup.object_name)
    swept = [blob for blob in unverified if is_abandoned(blob.metadata or {}, blob.time_created, now)]
    for blob in swept:
        delete_backup(bucket, blob.name)
    return Retained(
        target=target.name,
        kept=kept,
        deleted=[backup.uri for backup in deleted],
        swept=[f"gs://{target.bucket}/{blob.name}" for blob in swept],
    )


def retention_decisions(
    backups: list[Backup], referenced: dict[str, str], now: datetime, keep_last: int, keep_days: float
) -> tuple[dict[str, str], list[Backup]]:
    """Of a target's verified backups, newest first: those kept (URI: why) and those to delete."""
    cutoff = now - timedelta(days=keep_days)
    kept: dict[str, str] = {}
    deleted: list[Backup] = []
    for index, backup in enumerate(backups):
        if index < keep_last:
            kept[backup.uri] = f"one of the newest {keep_last}"
        elif datetime.fromisoformat(backup.created_at) >= cutoff:
            kept[backup.uri] = f"younger than {keep_days:g} days"
        elif backup.object_name in referenced:
            kept[backup.uri] = referenced[backup.object_name]
        else:
            deleted.append(backup)
    return kept, deleted


def is_abandoned(metadata: dict[str, str], time_created: datetime, now: datetime) -> bool:
    """An unverified dump older than UNVERIFIED_AFTER (by its own created_at, else the object's creation time)."""
    created = datetime.fromisoformat(metadata["created_at"]) if "created_at" in metadata else time_created
    return created < now - UNVERIFIED_AFTER
