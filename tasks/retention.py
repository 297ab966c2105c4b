"""Retention: delete old backups by the rules, never one a promotion or a rollback may need."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from prefect import task

from dbpromote.backups import backup_objects, delete_backup
from dbpromote.config import DatabaseTarget
from dbpromote.errors import ConfigError, retry_if_transient
from dbpromote.gcs import gcs_client
from dbpromote.models.backup import Retained
from dbpromote.records import newest_promotion_backup, read_records

# A backup is verified minutes after its object appears. An unverified dump this old was left by a backup that
# stopped in between (a killed worker): never listed as a backup, nothing refers to it, so retention deletes it.
UNVERIFIED_AFTER = timedelta(days=1)


def check_retention(keep_last: int, keep_days: float) -> None:
    if keep_last < 1 or keep_days < 0:
        raise ConfigError(
            f"Retention keep_last={keep_last}, keep_days={keep_days} would keep no backup; "
            "keep at least the newest one (keep_last >= 1) and a non-negative number of days."
        )


def referenced_backups(target: DatabaseTarget, target_name: str) -> dict[str, str]:
    """Backups the way back may need: the newest successful promotion's and every rollback record's."""
    referenced: dict[str, str] = {}
    newest = newest_promotion_backup(target, target_name)
    if newest:
        referenced[newest] = "taken by the newest promotion"
    for rollback in read_records(target, target_name, "rollbacks"):
        if rollback.get("backup"):
            referenced.setdefault(rollback["backup"], f"referenced by rollback {rollback['flow_run_id']}")
    return referenced


@task(name="retention", retries=2, retry_delay_seconds=5, retry_condition_fn=retry_if_transient)
def apply_retention(target: DatabaseTarget, target_name: str, keep_last: int, keep_days: float) -> Retained:
    """Keep the newest keep_last backups, those younger than keep_days and every referenced one; delete the rest."""
    check_retention(keep_last, keep_days)
    now = datetime.now(UTC)
    cutoff = now - timedelta(days=keep_days)
    referenced = referenced_backups(target, target_name)
    kept: dict[str, str] = {}
    deleted: list[str] = []
    bucket = gcs_client().bucket(target.bucket)
    backups, unverified = backup_objects(target, target_name)
    for index, backup in enumerate(backups):  # newest first
        if index < keep_last:
            kept[backup.uri] = f"one of the newest {keep_last}"
        elif datetime.fromisoformat(backup.created_at) >= cutoff:
            kept[backup.uri] = f"younger than {keep_days:g} days"
        elif backup.object_name in referenced:
            kept[backup.uri] = referenced[backup.object_name]
        else:
            delete_backup(bucket, backup.object_name)
            deleted.append(backup.uri)
    swept = []
    for blob in unverified:
        meta = blob.metadata or {}
        created = datetime.fromisoformat(meta["created_at"]) if "created_at" in meta else blob.time_created
        if created < now - UNVERIFIED_AFTER:
            delete_backup(bucket, blob.name)
            swept.append(f"gs://{target.bucket}/{blob.name}")
    return Retained(target=target_name, kept=kept, deleted=deleted, swept=swept)
