"""Preflight: refuse, before anything changes, a target whose database or bucket cannot be used."""

from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.runtime import flow_run

from dbpromote import backups
from dbpromote.config import DatabaseTarget
from dbpromote.errors import retry_if_transient
from dbpromote.postgres import connect, database_facts
from dbpromote.runs import refuse_if_held


@task(
    name="check-database",
    retries=2,
    retry_delay_seconds=3,
    retry_condition_fn=retry_if_transient,
    cache_policy=NO_CACHE,
)
def check_database(target: DatabaseTarget) -> dict:
    """The server answers with the given credentials; returns its version and the database's size."""
    with connect(target) as conn:
        return database_facts(conn)


check_bucket = task(
    name="check-bucket", retries=2, retry_delay_seconds=3, retry_condition_fn=retry_if_transient, cache_policy=NO_CACHE
)(backups.check_bucket)


@task(
    name="check-not-held",
    retries=2,
    retry_delay_seconds=3,
    retry_condition_fn=retry_if_transient,
    cache_policy=NO_CACHE,
)
def check_not_held(targets: list[str]) -> None:
    """No other promotion, restore, rollback, reconciliation, fix or undo of these targets (or of a group they are
    in) is unfinished (one whose worker died included)."""
    refuse_if_held(targets, excluding=flow_run.get_id())
