"""How a step's parts run: each a task run of its own, or inside the run that calls them.

One target's step shows each part (its backup, each migration, verify, RLS) as a task run in the UI. A fleet does
not: a task run costs the Prefect server ~66 ms of CPU and its client more (benchmarks/fleet.py's profile), and a
member's parts were fourteen of them, the largest cost of a member after its own work. A member's parts run
inside its one task run (`migrate MEMBER`), and a promotion's checks of a group's members inside the promotion's run,
each retried as its task would be.
"""

from __future__ import annotations

import contextvars
import itertools
import os
import threading
import time
from collections.abc import Callable

from prefect import Flow, Task
from prefect.client.schemas.objects import FlowRun, State
from prefect.events import RelatedResource, emit_event
from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings

from dbpromote.errors import ConfigError, is_transient
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
    """The subflow, run in its parent's process, its heartbeats sent by a thread of its own that nothing waits for.
    Prefect's heartbeat thread sleeps in one-second steps and a flow run's end waits for its step: a subflow of 0.5 s
    took 1.2-1.4 s (an in-process parent calling a one-line subflow five times, 2026-12-07: 1.19-1.39 s with it,
    0.40-0.63 s without). A subflow needs heartbeats all the same: the crash automation watches each of dbpromote's
    runs, and took one of 80 s without them for dead at 60 s (its window on the stack), marked it Crashed and closed
    its task runs while it ran (2026-12-07)."""

    def call(*args, **kwargs):
        every_s = heartbeat_s()
        stop = threading.Event()

        def send_heartbeats(flow: Flow, run: FlowRun, state: State) -> None:
            context = contextvars.copy_context()  # Prefect's settings (its API) as this run has them
            threading.Thread(target=context.run, args=(heartbeats, flow, run, every_s, stop), daemon=True).start()

        beating = subflow.with_options(on_running=[*subflow.on_running_hooks, send_heartbeats]) if every_s else subflow
        kept = BEATING_EVERY_S.set(every_s)  # a subflow of this one beats as often
        try:
            with temporary_settings(updates={PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}):
                return beating(*args, **kwargs)
        finally:
            stop.set()
            BEATING_EVERY_S.reset(kept)

    return call


# The heartbeat of the subflow running in its parent's process, where Prefect's setting is off.
BEATING_EVERY_S: contextvars.ContextVar[int | None] = contextvars.ContextVar("beating_every_s")


def heartbeat_s() -> int | None:
    """The seconds between a run's heartbeats: DBPROMOTE_HEARTBEAT_S, else Prefect's setting (None: no heartbeats)."""
    given = os.environ.get("DBPROMOTE_HEARTBEAT_S", "")
    if given and (not given.isdigit() or int(given) < 1):
        raise ConfigError(
            f"DBPROMOTE_HEARTBEAT_S is {given!r}: it must be a whole number of seconds, at least 1; set one, or unset "
            "it for Prefect's PREFECT_FLOWS_HEARTBEAT_FREQUENCY."
        )
    return int(given) if given else BEATING_EVERY_S.get(PREFECT_FLOWS_HEARTBEAT_FREQUENCY.value())


def heartbeats(flow: Flow, run: FlowRun, every_s: int, stop: threading.Event) -> None:
    """A heartbeat of `run` every `every_s` seconds until `stop` is set or the run ends, the first after `every_s`
    (its Running began the automation's watch): a subflow shorter than that sends none, so none can reach the
    server after its end and have the automation take the ended run for dead."""
    resource = {"prefect.resource.id": f"prefect.flow-run.{run.id}", "prefect.resource.name": run.name}
    flow_resource = {"prefect.resource.id": f"prefect.flow.{run.flow_id}", "prefect.resource.role": "flow"}
    related = [RelatedResource.model_validate(flow_resource | {"prefect.resource.name": flow.name})]
    while not stop.wait(every_s):
        if run.state and run.state.is_final():
            return
        emit_event(event="prefect.flow-run.heartbeat", resource=resource, related=related)
