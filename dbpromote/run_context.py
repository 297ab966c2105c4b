"""Whether code runs inside a Prefect flow or task run (artifacts need one; a call of the library outside a run has
none), and where it logs: the run's own log there (shown in the UI with the run), the `dbpromote` logger outside."""

import logging

from prefect.context import FlowRunContext, TaskRunContext
from prefect.logging import get_run_logger


def in_a_run() -> bool:
    return FlowRunContext.get() is not None or TaskRunContext.get() is not None


def run_logger() -> logging.Logger | logging.LoggerAdapter:
    """The run's logger inside a flow or task run, the `dbpromote` logger outside one."""
    return get_run_logger() if in_a_run() else logging.getLogger("dbpromote")
