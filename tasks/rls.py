"""Row-Level Security as tasks: every tenant table's policy and grants brought up to date, isolation proven as the
application (the work in dbpromote/rls.py, its report in dbpromote/reporting/)."""

from functools import partial

from prefect import task
from prefect.cache_policies import NO_CACHE

from dbpromote import reporting, rls
from dbpromote.config import DatabaseTarget
from dbpromote.errors import retry_if_transient
from dbpromote.models.report import Coverage, Isolation

RETRIED = dict(retries=1, retry_delay_seconds=3, retry_condition_fn=retry_if_transient, cache_policy=NO_CACHE)


@task(name="apply-rls-policies", **RETRIED)
def apply_rls_policies(target: DatabaseTarget) -> Coverage:
    """Bring every tenant table's RLS, policy and grants up to date; issue no DDL for what already matches."""
    coverage = rls.bring_rls_up_to_date(target)
    reporting.publish_coverage(coverage)
    return coverage


@task(name="prove-tenant-isolation", **RETRIED)
def prove_tenant_isolation(target: DatabaseTarget) -> Isolation:
    """Act as the application role on every tenant table: no other tenant's row is visible or writable."""
    return rls.prove_isolation(target, report=partial(reporting.publish_isolation, app_role=target.app_role))


@task(name="rls-coverage", **RETRIED)
def rls_coverage(target: DatabaseTarget) -> Coverage:
    """The RLS state of the target's tenant tables, changing nothing."""
    coverage = rls.coverage(target)
    reporting.publish_coverage(coverage)
    return coverage
