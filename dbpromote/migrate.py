"""Migrate: one migration applied in the project's interpreter, under lock_timeout, retried while locks are busy
(dbpromote/locks.py)."""

from __future__ import annotations

import time

import psycopg

from dbpromote import concurrent, events
from dbpromote.config import DatabaseTarget
from dbpromote.errors import MigrationError, redact
from dbpromote.exclusion import migration_running
from dbpromote.locks import LocksBusy, retrying_locks
from dbpromote.models.plan import PlannedMigration
from dbpromote.models.report import MigrationResult
from dbpromote.postgres import connect
from dbpromote.probe import FailureAnswer, ProbeSession, StepAnswer
from dbpromote.watch import Impact, Watcher, strongest


def apply_migration(probe: ProbeSession, target: DatabaseTarget, migration: PlannedMigration) -> MigrationResult:
    """Apply exactly one migration; retry with backoff and jitter while its locks are not granted, within a bound.
    An atomic migration that failed rolled back and is retried only when the failure was a lock wait or a deadlock;
    a non-atomic one may have applied part of its operations, and is retried only when nothing of it is left."""
    # Not the migration's time: a session's first request starts Django and the project (1-2 s), and a rehearsal
    # flagged its first migration slow for it (tests/test_way_back.py, under load).
    probe.start()
    started = time.monotonic()

    def attempt(number: int) -> MigrationResult:
        lock_timeout_ms = target.concurrent_lock_timeout_ms if concurrent.is_concurrent(migration) else 0
        # One connection for the attempt's checks, its exclusion lock and its watcher: it sits idle while the probe
        # migrates, so the watcher's samples are all that use it then.
        with connect(target, autocommit=True) as conn:
            wait_for_long_transactions(target, conn)
            watching = Watcher(target, conn, probe.application_name, migration.atomic, probe.stop_between_statements)
            with migration_running(conn, target, wait_s=target.max_lock_wait_s), watching:
                outcome = probe.request(migration.app, migration.name, migration.backwards, lock_timeout_ms)
        if isinstance(outcome, StepAnswer):
            return applied(migration, target, outcome, watching.impact, number, time.monotonic() - started)
        message = redact(outcome.message or "unknown error", target.url.get_secret_value())
        if watching.impact.cancelled:
            raise cancelled(migration, target, watching.impact, message)
        if not migration.atomic:
            after_a_partial_failure(migration, target, outcome.reason, message)
        if outcome.reason != "lock":
            raise MigrationError(f"{migration.label} failed on {target.name} and was rolled back ({message}).")
        raise LocksBusy(message)

    return retrying_locks(target, migration.label, attempt, "nothing of it is applied")


def after_migrating(probe: ProbeSession, target: DatabaseTarget, migrations: list[PlannedMigration]) -> None:
    """Django's post_migrate, once after a step's migrations as `manage.py migrate` sends it once after its plan: the
    content types and permissions of the models they made, and whatever else the project's apps do then."""
    outcome = probe.after_migrating([(m.app, m.name, m.backwards) for m in migrations])
    if isinstance(outcome, FailureAnswer):
        message = redact(outcome.message or "unknown error", target.url.get_secret_value())
        raise MigrationError(
            f"The migrations of {target.name} are applied, but Django's post_migrate signal failed on it ({message}): "
            "fix the cause, then run `manage.py migrate` on it, which sends the signal again."
        )


def applied(
    migration: PlannedMigration, target: DatabaseTarget, answer: StepAnswer, impact: Impact, attempts: int, took: float
) -> MigrationResult:
    """The migration as it was applied, and the event that says so."""
    events.emit(
        "dbpromote.migration.applied",
        target.name,
        {"migration": migration.label, "attempts": attempts, **impact.model_dump()},
    )
    return MigrationResult(
        label=migration.label,
        duration_s=round(took, 3),
        attempts=attempts,
        already_applied=answer.already_applied,
        strongest_lock=strongest(impact.strongest_lock, answer.strongest_lock),
        lock_held_s=answer.lock_held_s,
        **impact.model_dump(include={"longest_app_wait_s", "sessions_blocked"}),
    )


def cancelled(migration: PlannedMigration, target: DatabaseTarget, impact: Impact, message: str) -> MigrationError:
    """The watcher stopped it: an event, and the sentence that says what the application went through and what of
    the migration is applied (nothing, when it is atomic; the statements before the stop, when not)."""
    events.emit(
        "dbpromote.migration.cancelled",
        target.name,
        {"migration": migration.label, "max_app_wait_s": target.max_app_wait_s, **impact.model_dump()},
    )
    waited = (
        f"{impact.sessions_blocked} application session(s) waited behind it, the longest "
        f"{impact.longest_app_wait_s:.1f} s (max_app_wait_s {target.max_app_wait_s:g} s)"
    )
    if not migration.atomic:
        applied = message.partition("applied: ")[2] or f"unknown ({message})"
        return MigrationError(
            f"{migration.label} is not atomic and was stopped between statements on {target.name}: it held "
            f"{impact.strongest_lock or 'its locks'} and {waited}; applied before the stop: {applied}; the rest "
            "was not run and the migration is not recorded as applied: finish it by hand in a maintenance window "
            "and record it with `dbpromote reconcile`, or undo those statements and run it again in a window."
        )
    return MigrationError(
        f"{migration.label} was cancelled on {target.name}: it held {impact.strongest_lock} on "
        f"{', '.join(impact.tables) or 'its tables'} and {waited}; it was rolled back, nothing of it is applied: "
        "run it in a maintenance window, or split it (add the column nullable, backfill in batches, constrain it in "
        "a later release)."
    )


def after_a_partial_failure(migration: PlannedMigration, target: DatabaseTarget, reason: str, message: str) -> None:
    """A non-atomic migration failed: LocksBusy (run it again) when it only builds indexes concurrently, its build
    was cancelled waiting for a lock and nothing of it is left (the INVALID indexes it left dropped); otherwise the
    MigrationError that says what may be applied."""
    dropped = concurrent.drop_invalid(target, migration) if concurrent.is_concurrent(migration) else []
    if dropped and reason == "lock" and concurrent.only_builds_indexes(migration):
        if not concurrent.existing(target, concurrent.indexes_built(migration)):
            raise LocksBusy(f"{message}; the INVALID indexes its build left were dropped")
    left = f"; the INVALID indexes it left were dropped: {', '.join(dropped)}" if dropped else ""
    raise MigrationError(
        f"{migration.label} is not atomic and failed part-way on {target.name} ({message}{left}); operations "
        "before the failing one may have been applied and it is not recorded as applied: inspect it "
        "(e.g. an INVALID index left by CREATE INDEX CONCURRENTLY), repair, then run again."
    )


def wait_for_long_transactions(target: DatabaseTarget, conn: psycopg.Connection) -> None:
    """Wait (bounded) until no transaction on the database is older than target.long_transaction_s (`conn`: an
    autocommit connection to it).

    DDL queued behind a long transaction blocks every query queued behind the DDL.
    """
    deadline = time.monotonic() + target.long_transaction_wait_s
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
                f"pid {pid}, {age} s old, query started {start:%H:%M:%S}: {query!r}" for pid, age, start, query in rows
            )
            raise MigrationError(
                f"Long-running transactions on {target.name} would queue the migration's locks ({named}); "
                "nothing more was migrated: end them (pg_terminate_backend) or run when they are done."
            )
        time.sleep(1)
