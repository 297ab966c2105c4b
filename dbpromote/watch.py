"""What the application goes through while a migration runs: sampled, on the connection that holds the migration's
exclusion lock (idle while the probe migrates), and bounded.

lock_timeout bounds how long a migration waits for its locks; nothing bounded how long the application waits
behind a migration that has them (a table rewrite, a non-concurrent index build). The watcher finds the
migration's backend by the application_name its probe connects with, samples every SAMPLE_S the sessions of
other roles that wait behind it (pg_locks.waitstart, pg_blocking_pids), and cancels it (pg_cancel_backend) once
one of them has waited longer than the target's max_app_wait_s: an atomic migration then rolls back whole.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import psycopg
from pydantic import BaseModel

from dbpromote.config import DatabaseTarget
from dbpromote.models.report import Aftermath
from dbpromote.postgres import connect

# GitLab samples its database health every few seconds; a limit of a few seconds needs four samples a second
# to be kept within half a second (issue 33: the longest wait <= max_app_wait + 0.5 s).
SAMPLE_S = 0.25
# Looked at just after a waiting session crosses the limit, so the look sees it crossed.
LIMIT_MARGIN_S = 0.02
# pg_locks' modes, weakest first: the strongest a migration held is what the application felt.
LOCK_MODES = [
    "AccessShareLock",
    "RowShareLock",
    "RowExclusiveLock",
    "ShareUpdateExclusiveLock",
    "ShareLock",
    "ShareRowExclusiveLock",
    "ExclusiveLock",
    "AccessExclusiveLock",
]
# One pass over pg_stat_activity and pg_locks (each read once: both are built anew on every reference).
SAMPLE = """
WITH activity AS MATERIALIZED (
    SELECT pid, usename, application_name FROM pg_stat_activity WHERE datname = current_database()
), migration AS (
    SELECT pid FROM activity WHERE application_name = %(name)s
), locks AS MATERIALIZED (
    SELECT pid, mode, granted, relation, locktype, waitstart FROM pg_locks WHERE database = (
        SELECT oid FROM pg_database WHERE datname = current_database()) OR NOT granted
), held AS (
    SELECT l.mode, l.relation FROM locks l JOIN migration m USING (pid) WHERE l.granted AND l.locktype = 'relation'
), waiting AS (
    SELECT w.pid, w.waitstart FROM locks w JOIN activity a USING (pid), migration m
    WHERE NOT w.granted AND a.usename <> current_user AND m.pid = ANY(pg_blocking_pids(w.pid))
)
SELECT
    (SELECT array_agg(DISTINCT mode) FROM held),
    (SELECT array_agg(DISTINCT c.relname) FROM held h JOIN pg_class c ON c.oid = h.relation
        WHERE h.mode = 'AccessExclusiveLock' AND c.relnamespace = %(schema)s::regnamespace),
    (SELECT coalesce(max(extract(epoch FROM now() - waitstart)), 0) FROM waiting),
    (SELECT array_agg(DISTINCT pid) FROM waiting),
    (SELECT min(pid) FROM migration)
"""


def strongest(*modes: str) -> str:
    """The strongest of these lock modes ('' for none)."""
    return max(modes, key=lambda mode: LOCK_MODES.index(mode) if mode in LOCK_MODES else -1, default="")


class Impact(BaseModel):
    """What one migration did to the application, as sampled."""

    strongest_lock: str = ""
    tables: list[str] = []  # those it held ACCESS EXCLUSIVE on
    longest_app_wait_s: float = 0.0
    sessions_blocked: int = 0
    cancelled: bool = False  # cancelled (atomic), or asked to stop between statements


class Watcher:
    """A context: samples while the block runs; `impact` holds what it saw. Past the limit an atomic migration is
    cancelled (it rolls back whole); one that is not atomic is asked to stop before its next statement (`stop`):
    cancelling it mid-statement could leave half an operation (an INVALID index) behind."""

    def __init__(
        self,
        target: DatabaseTarget,
        connection: psycopg.Connection,
        application_name: str,
        atomic: bool,
        stop: Callable[[], None],
    ):
        """`connection`: an autocommit connection to the target that nothing else uses while the block runs."""
        self.target, self.connection, self.name = target, connection, application_name
        self.limit, self.atomic, self.stop_between_statements = target.max_app_wait_s, atomic, stop
        self.impact = Impact()
        self.modes: set[str] = set()
        self.blocked: set[int] = set()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name=f"watch-{application_name}", daemon=True)

    def __enter__(self) -> Watcher:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.thread.join(timeout=10)

    def _run(self) -> None:
        while not self.stop.is_set():
            started = time.monotonic()
            try:
                waited = self.sample()
            except psycopg.Error:
                return  # its connection went: the migration goes on unwatched, as before
            # A session already waiting crosses the limit at a known moment: look again then, not up to a whole
            # SAMPLE_S later (benchmarks/impact.py: the longest wait 2.5 s at a 2 s limit, sampled every 250 ms).
            crossing = self.limit and waited and not self.impact.cancelled
            due = self.limit - waited + LIMIT_MARGIN_S if crossing else SAMPLE_S
            self.stop.wait(max(0.0, min(SAMPLE_S, due) - (time.monotonic() - started)))

    def sample(self) -> float:
        """One look at the migration's locks and who waits behind them, the cancel when the limit is passed; the
        longest wait now."""
        modes, tables, longest, blocked, pid = self.connection.execute(
            SAMPLE, {"name": self.name, "schema": self.target.schema_name}
        ).fetchone()
        self.modes |= set(modes or [])
        self.impact.strongest_lock = strongest("", *self.modes)
        self.impact.tables = sorted(set(self.impact.tables) | set(tables or []))
        self.impact.longest_app_wait_s = round(max(self.impact.longest_app_wait_s, float(longest)), 2)
        self.blocked |= set(blocked or [])
        self.impact.sessions_blocked = len(self.blocked)
        if self.limit and pid and float(longest) > self.limit and not self.impact.cancelled:
            if self.atomic:
                self.connection.execute("SELECT pg_cancel_backend(%s)", [pid])
            else:
                self.stop_between_statements()
            self.impact.cancelled = True
        return float(longest)


# After the migration the questions are slower ones (do deadlocks or rollbacks climb, do sessions pile up), asked
# for minutes: once a second is enough, and costs one autocommit query.
AFTER_SAMPLE_S = 1.0
AFTER = """
SELECT
    (SELECT count(*) FROM pg_locks WHERE NOT granted AND database = d.datid),
    (SELECT coalesce(max(extract(epoch FROM now() - waitstart)), 0) FROM pg_locks
        WHERE NOT granted AND database = d.datid),
    d.numbackends, d.xact_commit, d.xact_rollback, d.deadlocks
FROM pg_stat_database d WHERE d.datname = current_database()
"""


def watch_aftermath(target: DatabaseTarget, seconds: float, sample_s: float = AFTER_SAMPLE_S) -> Aftermath:
    """Sample the database for `seconds` after it migrated: sessions waiting for locks and connections at most,
    and pg_stat_database's deadlocks, rollbacks and commits counted from the first sample (the watcher's own
    commits left out)."""
    deadline = time.monotonic() + seconds
    with connect(target, autocommit=True) as conn:
        waiting, longest, connections, commits, rollbacks, deadlocks = conn.execute(AFTER).fetchone()
        first = (commits, rollbacks, deadlocks)
        samples = 1
        while time.monotonic() + sample_s <= deadline:
            time.sleep(sample_s)
            sample = conn.execute(AFTER).fetchone()
            samples += 1
            waiting, longest = max(waiting, sample[0]), max(float(longest), float(sample[1]))
            connections, (commits, rollbacks, deadlocks) = max(connections, sample[2]), sample[3:]
    return Aftermath(
        seconds=seconds,
        samples=samples,
        most_waiting=waiting,
        longest_wait_s=round(float(longest), 2),
        deadlocks=deadlocks - first[2],
        rollbacks=rollbacks - first[1],
        commits=max(0, commits - first[0] - samples),
        most_connections=connections,
    )
