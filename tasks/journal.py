"""The promotion's journal as tasks: opened (carrying on a crashed promotion) and each step of a target recorded as it
starts, is approved and completes (the work in dbpromote/journal.py)."""

from __future__ import annotations

from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.runtime import flow_run

from dbpromote import journal as journals
from dbpromote.errors import retry_if_transient
from dbpromote.models.approval import Approval, Deployment, WindowRun
from dbpromote.models.journal import Journal
from dbpromote.models.plan import Plan
from dbpromote.models.report import StepReport

RETRIED = dict(retries=2, retry_delay_seconds=3, retry_condition_fn=retry_if_transient, cache_policy=NO_CACHE)


@task(name="open-journal", **RETRIED)
def open_journal(project: str, through: list[str], to: str, resume: str, targets: list[str] | None = None) -> Journal:
    """The journal of the promotion this run carries on, or a new one; this run tagged with its promotion."""
    this_run = str(flow_run.get_id() or "")
    return journals.open_journal(this_run, project, through, to, resume, targets)


@task(name="record-step", **RETRIED)
def record_step(journal: Journal, target: str, step: Plan | Approval | Deployment | WindowRun | StepReport) -> str:
    """A target's step in the promotion's journal, by this run; the record's URI."""
    return journals.record_step(journal, target, str(flow_run.get_id() or ""), step)


def record_kept(journal: Journal, target: str, step: Deployment | WindowRun) -> None:
    """A deploy or a window recorded in the promotion's journal, and kept in this run's copy of it."""
    record_step(journal, target, step)
    journal.keep(target, step)
