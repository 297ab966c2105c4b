"""Backup: a verified backup of targets now (`dbpromote backup`) or every night (the nightly-backup deployment)."""

from __future__ import annotations

from prefect import flow

from dbpromote.config import load_target
from tasks.backup import Backup, backup_to_gcs
from tasks.notify import notify_failure
from tasks.preflight import check_bucket, check_database, connect


@flow(name="backup", on_failure=[notify_failure], flow_run_name="backup {targets}")
def backup(targets: list[str]) -> list[Backup]:
    """One verified backup per target, recording the migration state it holds."""
    backups = []
    for name in targets:
        target = load_target(name)
        check_database(target, name)
        check_bucket(target, name)
        backups.append(backup_to_gcs(target, name, migration_state(target, name)))
    return backups


def migration_state(target, name: str) -> list[tuple[str, str]]:
    with connect(target, name) as conn:
        exists = conn.execute("SELECT to_regclass('django_migrations') IS NOT NULL").fetchone()[0]
        if not exists:
            return []
        return [tuple(row) for row in conn.execute("SELECT app, name FROM django_migrations ORDER BY app, name")]
