"""Migrate as a task: exactly one migration, its run named after it (the work in dbpromote/migrate.py)."""

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from dbpromote import migrate
from dbpromote.config import DatabaseTarget
from dbpromote.models.plan import PlannedMigration
from dbpromote.models.report import MigrationResult
from dbpromote.probe import ProbeSession


@task(name="apply-migration", task_run_name="{migration.label}{migration.direction}", cache_policy=NO_CACHE)
def apply_migration(probe: ProbeSession, target: DatabaseTarget, migration: PlannedMigration) -> MigrationResult:
    """Apply exactly one migration, retried while its locks are busy. Not retried by Prefect: a failed migration
    rolled back, or (not atomic) may have applied part of its operations."""
    return migrate.apply_migration(probe, target, migration, warn=get_run_logger().warning)
