"""Whether code runs inside a Prefect flow or task run (artifacts need one; a direct `.fn` call has none)."""

from prefect.context import FlowRunContext, TaskRunContext


def in_a_run() -> bool:
    return FlowRunContext.get() is not None or TaskRunContext.get() is not None
