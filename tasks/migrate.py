"""Migrate: apply one migration in the project's interpreter, under lock_timeout, retried while locks are busy."""

from __future__ import annotations

import itertools
import random
import time

from prefect import get_run_logger, task
from pydantic import BaseModel

from dbpromote.config import DatabaseTarget, DjangoProject
from dbpromote.errors import MigrationError, redact
from tasks.exclusion import migration_running
from tasks.plan import PlannedMigration, run_probe
from tasks.preflight import connect

FIRST_BACKOFF_S = 0.25
MAX_BACKOFF_S = 4.0


class MigrationResult(BaseModel):
    label: str
    duration_s: float
    attempts: int
    already_applied: bool = False


@task(name="apply-migration", task_run_name="{migration.label}{migration.direction}")
def apply_migration(
    project: DjangoProject, target: DatabaseTarget, target_name: str, migration: PlannedMigration
) -> MigrationResult:
    """Apply exactly one migration; retry with backoff and jitter while its locks are not granted, within a bound.

    Not retried by Prefect: an atomic migration that failed rolled back and is retried here only when the
    failure was a lock wait or a deadlock; a non-atomic one may have applied part of its operations.
    """
    logger = get_run_logger()
    deadline = time.monotonic() + target.max_lock_wait_s
    backoff = FIRST_BACKOFF_S
    started = time.monotonic()
    for attempt in itertools.count(1):
        wait_for_long_transactions(target, target_name)
        with migration_running(target, target_name, wait_s=target.max_lock_wait_s):
            outcome = run_probe(
                project,
                target,
                "migrate",
                "--app",
                migration.app,
                "--name",
                migration.name,
                "--lock-timeout-ms",
                str(target.lock_timeout_ms),
                "--statement-timeout-ms",
                str(target.statement_timeout_ms),
                *(["--backwards"] if migration.backwards else []),
            )
        if outcome.get("ok"):
            return MigrationResult(
                label=migration.label,
                duration_s=round(time.monotonic() - started, 3),
                attempts=attempt,
                already_applied=outcome.get("already_applied", False),
            )
        error = outcome.get("error") or {}
        message = redact(error.get("message", "unknown error"), target.url.get_secret_value())
        if not migration.atomic:
            raise MigrationError(
                f"{migration.label} is not atomic and failed part-way on {target_name} ({message}); operations "
                "before the failing one may have been applied and it is not recorded as applied: inspect it "
                "(e.g. an INVALID index left by CREATE INDEX CONCURRENTLY), repair, then run again."
            )
        if error.get("kind") != "lock":
            raise MigrationError(f"{migration.label} failed on {target_name} and was rolled back ({message}).")
        sleep = backoff * random.uniform(0.5, 1.5)
        if time.monotonic() + sleep > deadline:
            raise MigrationError(
                f"{migration.label} could not get its locks on {target_name} in {attempt} attempts over "
                f"{target.max_lock_wait_s:.0f} s ({message}); it was rolled back: find the session holding "
                "the lock (pg_locks, pg_stat_activity) and run again."
            )
        logger.warning(
            "%s: locks not granted on %s (attempt %d), retrying in %.2f s", migration.label, target_name, attempt, sleep
        )
        time.sleep(sleep)
        backoff = min(backoff * 2, MAX_BACKOFF_S)


def wait_for_long_transactions(target: DatabaseTarget, target_name: str) -> None:
    """Wait (bounded) until no transaction on the database is older than target.long_transaction_s.

    DDL queued behind a long transaction blocks every query queued behind the DDL.
    """
    deadline = time.monotonic() + target.long_transaction_wait_s
    with connect(target, target_name, autocommit=True) as conn:
        while True:
            rows = conn.execute(
                """
                SELECT pid, round(extract(epoch FROM now() - xact_start))::int, query_start, left(query, 80)
                FROM pg_stat_activity
                WHERE datname = current_database() AND pid <> pg_backend_pid() AND xact_start IS NOT NULL
                  AND now() - xact_start > make_interval(secs => %s)
                ORDER BY xact_start
                """,
                [target.long_transaction_s],
            ).fetchall()
            if not rows:
                return
            if time.monotonic() > deadline:
                named = "; ".join(
                    f"pid {pid}, {age} s old, query started {start:%H:%M:%S}: {query!r}"
                    for pid, age, start, query in rows
                )
                raise MigrationError(
                    f"Long-running transactions on {target_name} would queue the migration's locks ({named}); "
                    "nothing more was migrated: end them (pg_terminate_backend) or run when they are done."
                )
            time.sleep(1)
