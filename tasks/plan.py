"""Plans as tasks: the migrations a target still needs, or reverses (the work in dbpromote/planning.py)."""

from prefect import task
from prefect.cache_policies import NO_CACHE

from dbpromote.config import DatabaseTarget, DjangoProject
from dbpromote.errors import retry_if_transient
from dbpromote.models.plan import Plan
from dbpromote.planning import compute_plan, plan_back
from dbpromote.probe import ProbeSession

RETRIED = dict(retries=2, retry_delay_seconds=2, retry_condition_fn=retry_if_transient, cache_policy=NO_CACHE)


@task(name="plan", **RETRIED)
def plan_migrations(
    project: DjangoProject, target: DatabaseTarget, to: str = "", probe: ProbeSession | None = None
) -> Plan:
    """The pending migrations of one target up to `to` (app:migration) or every leaf."""
    return compute_plan(project, target, to, probe)


@task(name="plan-rollback", **RETRIED)
def plan_rollback(project: DjangoProject, target: DatabaseTarget, state: list[tuple[str, str]]) -> Plan:
    """The migrations to reverse, in order, to bring a target back to an applied state (a backup's)."""
    return plan_back(project, target, state)
