"""Retention as a task: old backups deleted by the rules, never one a promotion or a rollback may need (the work in
dbpromote/retention.py)."""

from prefect import task
from prefect.cache_policies import NO_CACHE

from dbpromote import retention
from dbpromote.config import DatabaseTarget
from dbpromote.errors import retry_if_transient
from dbpromote.models.backup import Retained


@task(name="retention", retries=2, retry_delay_seconds=5, retry_condition_fn=retry_if_transient, cache_policy=NO_CACHE)
def apply_retention(target: DatabaseTarget, keep_last: int, keep_days: float) -> Retained:
    """Keep the newest keep_last backups, those younger than keep_days and every referenced one; delete the rest."""
    return retention.apply_retention(target, keep_last, keep_days)
