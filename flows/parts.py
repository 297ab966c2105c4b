"""How a step's parts run: each a task run of its own, or inside the run that calls them; and how dbpromote's flows
send their heartbeats.

One target's step shows each part (its backup, each migration, verify, RLS) as a task run in the UI. A fleet does
not: a task run costs the Prefect server ~66 ms of CPU and its client more (benchmarks/fleet.py's profile), and a
member's parts were fourteen of them, the largest cost of a member after its own work. A member's parts run
inside its one task run (`migrate MEMBER`), and a promotion's checks of a group's members inside the promotion's run,
each retried as its task would be.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import itertools
import threading
import time
import types
from collections.abc import Callable

import prefect
from prefect import Flow, Task, get_client
from prefect.client.schemas.objects import FlowRun
from prefect.context import FlowRunContext
from prefect.events import RelatedResource, emit_event
from prefect.events.worker import EventsWorker
from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings

from dbpromote.deploying import heartbeat_s
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


def flow(**options) -> Callable[[Callable], Flow]:
    """Prefect's @flow for dbpromote's flows: the function runs with dbpromote's heartbeats (beating)."""
    return lambda fn: prefect.flow(**options)(beating(fn))


# How long a run's end waits for the events it emitted to be sent (its last heartbeat among them); a server that
# does not take them by then is not one the run's final state can reach either.
EVENTS_SENT_S = 5.0


def beating(fn: Callable) -> Callable:
    """The flow's function, sending its run's heartbeat every heartbeat_s() while it runs from a thread of
    dbpromote's; Prefect's own is off for the subflows it calls (and for every run the stack or pool starts).
    Prefect's thread cannot beat more often than every 30 s (a test waited a minute for a killed run to be taken for
    dead), sleeps in one-second steps that a run's end waits for (a subflow of 0.5 s took 1.2-1.4 s: an in-process
    parent calling a one-line subflow five times, 2026-12-07) and beats on while the run's final state is recorded,
    so that a heartbeat can reach the server after the run's end and start a watch the run never answers. This one
    stops, and what it sent has left the process, before the function returns."""

    def beats() -> contextlib.ExitStack:
        """The run's heartbeats started, and what ends them (on exit, last first: stop, join, wait until sent)."""
        context, stop = FlowRunContext.get(), threading.Event()
        thread = threading.Thread(
            target=contextvars.copy_context().run,  # Prefect's settings (its API) as this run has them
            args=(heartbeats, context.flow, context.flow_run, heartbeat_s(), stop),
            daemon=True,
        )
        ends = contextlib.ExitStack()
        ends.enter_context(temporary_settings(updates={PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}))
        ends.callback(events_sent)
        ends.callback(thread.join)
        ends.callback(stop.set)
        thread.start()
        return ends

    def run(*args, **kwargs):
        with beats():
            return fn(*args, **kwargs)

    # Prefect reads the annotations of a flow's parameters in its function's globals: the wrapper is given the flow
    # module's (its body names nothing but its closure).
    return functools.wraps(fn)(types.FunctionType(run.__code__, fn.__globals__, fn.__name__, None, run.__closure__))


def events_sent() -> None:
    """Until the events this process emitted have left it, at most EVENTS_SENT_S."""
    sending = threading.Thread(target=EventsWorker.instance().wait_until_empty, daemon=True)
    sending.start()
    sending.join(EVENTS_SENT_S)


def heartbeats(flow: Flow, run: FlowRun, every_s: int, stop: threading.Event) -> None:
    """A heartbeat of `run` every `every_s` seconds until `stop` is set or the server has ended the run, the first
    after `every_s` (its Running began the automation's watch). A run cancelled from the UI or marked Crashed while
    its function still runs (a process that lingers) is not made to look alive: a heartbeat after its end would start
    a watch that marks it Crashed again."""
    resource = {"prefect.resource.id": f"prefect.flow-run.{run.id}", "prefect.resource.name": run.name}
    flow_resource = {"prefect.resource.id": f"prefect.flow.{run.flow_id}", "prefect.resource.role": "flow"}
    related = [RelatedResource.model_validate(flow_resource | {"prefect.resource.name": flow.name})]
    while not stop.wait(every_s):
        with contextlib.suppress(Exception), get_client(sync_client=True) as client:  # unreachable: beat all the same
            if client.read_flow_run(run.id).state.is_final():
                return
        emit_event(event="prefect.flow-run.heartbeat", resource=resource, related=related)
