"""Locks not granted: a step that takes its locks under lock_timeout is attempted again, each time from the start,
after a bounded backoff, until the target's max_lock_wait_s would be passed: a migration, a fix's transaction, a
batch of it, an undo."""

from __future__ import annotations

import itertools
import random
import time
from collections.abc import Callable
from typing import TypeVar

from dbpromote.config import DatabaseTarget
from dbpromote.errors import MigrationError
from dbpromote.run_context import run_logger

Result = TypeVar("Result")

# Every attempt that waits for a lock stalls the application for up to lock_timeout: its queries queue behind the
# waiting DDL. Sleeping at least three lock_timeouts before the next attempt keeps it running 3/4 of the time
# (benchmarks/lock_stall.py; 2 s lock_timeout: stall 50% of a 20 s blocker with a 0.25 s first step, 20-30% now).
STALL_BACKOFF_FACTOR = 3
FIRST_BACKOFF_S = 0.25
MAX_BACKOFF_S = 4.0


class LockBackoff:
    """The waits between attempts at a step whose locks were not granted: from STALL_BACKOFF_FACTOR lock_timeouts,
    doubling up to a bound, with jitter (so that two waiting runs do not retry in step), until the target's
    max_lock_wait_s would be passed."""

    def __init__(self, target: DatabaseTarget):
        self.deadline = time.monotonic() + target.max_lock_wait_s
        self.backoff = max(FIRST_BACKOFF_S, STALL_BACKOFF_FACTOR * target.lock_timeout_ms / 1000)
        self.longest = max(MAX_BACKOFF_S, 2 * self.backoff)

    def next(self) -> float | None:
        """Seconds to sleep before the next attempt; None once the bound would be passed."""
        sleep = self.backoff * random.uniform(0.75, 1.25)
        if time.monotonic() + sleep > self.deadline:
            return None
        self.backoff = min(self.backoff * 2, self.longest)
        return sleep


class LocksBusy(Exception):
    """An attempt did not get its locks within lock_timeout and left nothing behind (rolled back); the message says
    what the server answered."""


def retrying_locks(target: DatabaseTarget, what: str, attempt: Callable[[int], Result], left: str) -> Result:
    """attempt(n) again while it raises LocksBusy, after each of LockBackoff's waits (logged); past the bound, the
    MigrationError that says `what` could not get its locks, and `left`: the state that leaves."""
    backoff = LockBackoff(target)
    for tries in itertools.count(1):
        try:
            return attempt(tries)
        except LocksBusy as busy:
            reason = str(busy) or f"lock_timeout {target.lock_timeout_ms} ms"
            if (sleep := backoff.next()) is None:
                raise MigrationError(
                    f"{what} could not get its locks on {target.name} in {tries} attempts over "
                    f"{target.max_lock_wait_s:.0f} s ({reason}); {left}: find the session holding them (pg_locks, "
                    "pg_stat_activity) and run again."
                ) from None
            run_logger().warning(
                "%s on %s (attempt %d): %s; retrying in %.2f s", what, target.name, tries, reason, sleep
            )
            time.sleep(sleep)
    raise AssertionError("unreachable")
