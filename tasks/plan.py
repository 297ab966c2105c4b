"""Plans as tasks: the migrations a target still needs, or reverses (the work in dbpromote/planning.py)."""

from prefect import task
from prefect.cache_policies import NO_CACHE

from dbpromote import planning
from dbpromote.errors import retry_if_transient

RETRIED = dict(retries=2, retry_delay_seconds=2, retry_condition_fn=retry_if_transient, cache_policy=NO_CACHE)

plan_migrations = task(name="plan", **RETRIED)(planning.compute_plan)
plan_rollback = task(name="plan-rollback", **RETRIED)(planning.plan_back)
