"""Verify as tasks: the plan applied and the project's checks, the running release proven against the new schema,
the database watched and the application asked after it migrated (the work in dbpromote/verification.py,
dbpromote/watch.py and dbpromote/health.py)."""

from __future__ import annotations

from dataclasses import asdict

from prefect import task
from prefect.cache_policies import NO_CACHE

from dbpromote import events, verification
from dbpromote.config import DatabaseTarget, DjangoProject
from dbpromote.errors import retry_if_transient
from dbpromote.health import check_application
from dbpromote.models.plan import Plan
from dbpromote.models.report import Aftermath, CompatibilityProof, Health
from dbpromote.probe import ProbeSession
from dbpromote.watch import watch_aftermath

RETRIED = dict(retries=1, retry_delay_seconds=3, retry_condition_fn=retry_if_transient, cache_policy=NO_CACHE)


verify_target = task(name="verify", **RETRIED)(verification.verify_target)
verify_state = task(name="verify-state", **RETRIED)(verification.verify_state)


@task(name="prove-compatibility", **RETRIED)  # the probe session is an input: a process, nothing to hash
def prove_compatibility(probe: ProbeSession, plan: Plan) -> CompatibilityProof:
    """The release running before the plan (its models: the state at the plan's applied migrations) against the
    migrated target; what fails is proven to break it."""
    return CompatibilityProof.model_validate(asdict(probe.prove(plan.applied)))


@task(name="watch-after-migrating", cache_policy=NO_CACHE)
def watch_after_migrating(target: DatabaseTarget) -> Aftermath:
    """The database watched for the target's watch_after seconds after it migrated; an event with what was seen."""
    aftermath = watch_aftermath(target, target.watch_after)
    events.emit("dbpromote.aftermath", target.name, aftermath.model_dump())
    return aftermath


@task(name="check-application", cache_policy=NO_CACHE)
def check_application_health(project: DjangoProject, target: DatabaseTarget) -> Health:
    """The application asked after the target migrated (its health URL, its smoke command); an event either way."""
    health = check_application(project, target)
    events.emit(f"dbpromote.health.{'passed' if health.passed else 'failed'}", target.name, {"checks": health.checks})
    return health
