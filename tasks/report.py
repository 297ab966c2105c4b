"""The environment step's report as a task: its markdown artifact (the way back included) and its migrations' table."""

from prefect import task
from prefect.cache_policies import NO_CACHE

from dbpromote import reporting
from dbpromote.models.report import StepReport


@task(name="report", cache_policy=NO_CACHE)
def publish_report(report: StepReport) -> str:
    """The step's report as the run's artifacts; its markdown."""
    return reporting.publish_step_report(report)
