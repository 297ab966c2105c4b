"""How a step's parts run: each a task run of its own, or inside the run that calls them.

One target's step shows each part (its backup, each migration, verify, RLS) as a task run in the UI. A fleet does
not: a task run costs the Prefect server ~66 ms of CPU and its client more (benchmarks/fleet.py's profile), and a
member's parts were fourteen of them, the largest cost of a member after its own work. A member's parts run
inside its one task run (`migrate MEMBER`), and a promotion's checks of a group's members inside the promotion's run,
each retried as its task would be.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable

from prefect import Flow, Task
from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings

from dbpromote.errors import is_transient
from dbpromote.run_context import run_logger

Part = Callable[[Task], Callable]


def as_task_run(part: Task) -> Callable:
    """The part as a task run of its own."""
    return part


def in_the_calling_run(part: Task) -> Callable:
    """The part's function called in the run that calls it, its log that run's (with the seconds it took, which a
    task run of its own would show); tried again as its task would be (its retries, its delay) on an error that may
    pass, never on one that will not."""

    def call(*args, **kwargs):
        for attempt in itertools.count():
            started = time.monotonic()
            try:
                done = part.fn(*args, **kwargs)
                run_logger().info("%s done in %.2f s", part.name, time.monotonic() - started)
                return done
            except Exception as error:
                if attempt >= part.retries or not is_transient(error):
                    raise
                run_logger().warning("%s failed (%s); trying it again", part.name, error)
                time.sleep(part.retry_delay_seconds)

    return call


def in_its_parents_process(subflow: Flow) -> Callable:
    """The subflow, run in its parent's process, without a heartbeat of its own. Prefect's heartbeat thread sleeps
    in one-second steps and a flow run's end waits for its step to finish: a subflow of 0.5 s took 1.2-1.4 s (an
    in-process parent calling a one-line subflow five times, 2026-12-07: 1.19-1.39 s with the heartbeat, 0.40-0.63
    s without). The parent's heartbeats say the process lives, and a crashed parent's subflows are closed with it
    (dbpromote/crashes.py), so the crash automation loses nothing."""

    def call(*args, **kwargs):
        with temporary_settings(updates={PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}):
            return subflow(*args, **kwargs)

    return call
