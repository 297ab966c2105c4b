"""Drift as tasks: a target's live schema against the one its recorded migrations produce, and a migration recorded
as applied (the work in dbpromote/drift.py, its report in dbpromote/reporting/)."""

from prefect import task
from prefect.cache_policies import NO_CACHE

from dbpromote import drift
from dbpromote.config import DatabaseTarget, DjangoProject
from dbpromote.errors import retry_if_transient
from dbpromote.models.drift import DriftReport
from dbpromote.probe import ProbeSession

RETRIED = dict(retries=1, retry_delay_seconds=3, retry_condition_fn=retry_if_transient, cache_policy=NO_CACHE)


@task(name="check-drift", **RETRIED)
def check_drift(
    project: DjangoProject,
    target: DatabaseTarget,
    read_history: bool = True,
    plus: tuple[str, str] | None = None,
    probe: ProbeSession | None = None,
) -> DriftReport:
    """The live schema against the replay of the migrations it records, and the applied files' hashes."""
    return drift.check_drift(project, target, read_history, plus, probe)


@task(name="fake-apply", **RETRIED)
def fake_apply(project: DjangoProject, target: DatabaseTarget, label: str, file_hash: str) -> None:
    """`migrate APP NAME --fake` on the target, and its file's hash recorded as for any migration applied."""
    drift.fake_apply(project, target, label, file_hash)
