"""Retention as a task: old backups deleted by the rules, never one a promotion or a rollback may need (the work in
dbpromote/retention.py)."""

from prefect import task
from prefect.cache_policies import NO_CACHE

from dbpromote import retention
from dbpromote.errors import retry_if_transient

apply_retention = task(
    name="retention", retries=2, retry_delay_seconds=5, retry_condition_fn=retry_if_transient, cache_policy=NO_CACHE
)(retention.apply_retention)
