"""Verify: nothing is pending up to the target, the plan is applied, and the project's SQL checks return no rows."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.events import emit_event

from dbpromote.config import DatabaseTarget, DjangoProject
from dbpromote.errors import retry_if_transient
from dbpromote.events import target_resource
from dbpromote.health import check_application
from dbpromote.models.plan import Plan
from dbpromote.models.report import Aftermath, Check, CompatibilityProof, Health, Verification
from dbpromote.planning import compute_plan
from dbpromote.postgres import connect, migration_state
from dbpromote.probe import ProbeSession
from dbpromote.watch import watch_aftermath


@task(name="verify", retries=1, retry_delay_seconds=3, retry_condition_fn=retry_if_transient, cache_policy=NO_CACHE)
def verify_target(
    project: DjangoProject, target: DatabaseTarget, target_name: str, plan: Plan, probe: ProbeSession | None = None
) -> Verification:
    """Every check runs and is reported, pass or fail; the flow decides what a failure means."""
    after = compute_plan(project, target, target_name, plan.to, probe)
    applied = {f"{app}.{name}" for app, name in after.applied}
    pending = [label for label in after.labels if label not in plan.deferred]  # deferred: after the app deploy
    checks = [
        Check(name="nothing pending", passed=not pending, detail=", ".join(pending)),
        Check(
            name="plan applied",
            passed=set(plan.labels) <= applied,
            detail=", ".join(sorted(set(plan.labels) - applied)),
        ),
    ]
    checks += run_verify_scripts(project, target, target_name)
    return Verification(checks=checks)


@task(
    name="prove-compatibility",
    retries=1,
    retry_delay_seconds=3,
    retry_condition_fn=retry_if_transient,
    cache_policy=NO_CACHE,  # the probe session is an input: a process, nothing to hash
)
def prove_compatibility(probe: ProbeSession, plan: Plan) -> CompatibilityProof:
    """The release running before the plan (its models: the state at the plan's applied migrations) against the
    migrated target; what fails is proven to break it."""
    return CompatibilityProof.model_validate(asdict(probe.prove(plan.applied)))


@task(name="watch-after-migrating", cache_policy=NO_CACHE)
def watch_after_migrating(target: DatabaseTarget, target_name: str) -> Aftermath:
    """The database watched for the target's watch_after seconds after it migrated; an event with what was seen."""
    aftermath = watch_aftermath(target, target_name, target.watch_after)
    emit_event(event="dbpromote.aftermath", resource=target_resource(target_name), payload=aftermath.model_dump())
    return aftermath


@task(name="check-application", cache_policy=NO_CACHE)
def check_application_health(project: DjangoProject, target: DatabaseTarget, target_name: str) -> Health:
    """The application asked after the target migrated (its health URL, its smoke command); an event either way."""
    health = check_application(project, target)
    emit_event(
        event=f"dbpromote.health.{'passed' if health.passed else 'failed'}",
        resource=target_resource(target_name),
        payload={"checks": health.checks},
    )
    return health


@task(
    name="verify-state", retries=1, retry_delay_seconds=3, retry_condition_fn=retry_if_transient, cache_policy=NO_CACHE
)
def verify_state(target: DatabaseTarget, target_name: str, expected: list[tuple[str, str]]) -> Verification:
    """The applied migrations are exactly `expected` (a rollback's goal, the state a backup recorded)."""
    with connect(target, target_name) as conn:
        state = set(migration_state(conn))
    missing, extra = sorted(set(expected) - state), sorted(state - set(expected))
    detail = "; ".join(
        part
        for part in (
            f"still applied: {', '.join(f'{app}.{name}' for app, name in extra)}" if extra else "",
            f"not applied: {', '.join(f'{app}.{name}' for app, name in missing)}" if missing else "",
        )
        if part
    )
    return Verification(checks=[Check(name="migration state", passed=not detail, detail=detail)])


def run_verify_scripts(project: DjangoProject, target: DatabaseTarget, target_name: str) -> list[Check]:
    """Each *.sql file of the project's verify folder, in name order, in a read-only transaction: no rows = pass."""
    folder = Path(project.path) / project.verify_dir
    checks = []
    with connect(target, target_name) as conn:
        for script in sorted(folder.glob("*.sql")):
            conn.execute("SET TRANSACTION READ ONLY")
            try:
                rows = conn.execute(script.read_text()).fetchmany(3)
                checks.append(
                    Check(name=script.name, passed=not rows, detail=f"returned rows, e.g. {rows}" if rows else "")
                )
            except Exception as error:  # a broken check is a failed check, reported with the others
                checks.append(Check(name=script.name, passed=False, detail=f"error: {error}".strip()))
            conn.rollback()
    return checks
