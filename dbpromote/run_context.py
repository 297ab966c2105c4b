"""Whether code runs inside a Prefect flow or task run (artifacts need one; a call of the library outside a run has
none), where it logs: the run's own log there (shown in the UI with the run), the `dbpromote` logger outside; and
calls made in threads within the caller's run."""

import contextvars
import logging
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from prefect.context import FlowRunContext, TaskRunContext
from prefect.logging import get_run_logger

T = TypeVar("T")
R = TypeVar("R")
# A record is a small object in the bucket, a request of 15-30 ms that waits on the network: a group's step read
# and wrote three to five a member one after another (10.5 s of a fleet of 100's run, benchmarks/fleet.py).
RECORD_THREADS = 8


def in_a_run() -> bool:
    return FlowRunContext.get() is not None or TaskRunContext.get() is not None


def run_logger() -> logging.Logger | logging.LoggerAdapter:
    """The run's logger inside a flow or task run, the `dbpromote` logger outside one."""
    return get_run_logger() if in_a_run() else logging.getLogger("dbpromote")


def in_threads(function: Callable[[T], R], items: Iterable[T], threads: int = RECORD_THREADS) -> list[R]:
    """`function` on each item in up to `threads` threads, each call in a copy of the caller's context (its run, so
    its logger; the blocks resolved once in it); the results in the items' order, the first error raised."""
    context = contextvars.copy_context()
    with ThreadPoolExecutor(threads) as pool:
        return list(pool.map(lambda item: context.copy().run(function, item), items))
