"""Verification after a target changed: nothing is pending up to where it was taken, the plan is applied (or the
applied state is exactly the one wanted), and the project's own SQL checks return no rows."""

from __future__ import annotations

from pathlib import Path

from dbpromote.config import DatabaseTarget, DjangoProject
from dbpromote.models.plan import Plan
from dbpromote.models.report import Check, Verification
from dbpromote.planning import compute_plan
from dbpromote.postgres import connect, migration_state
from dbpromote.probe import ProbeSession


def verify_target(
    project: DjangoProject, target: DatabaseTarget, plan: Plan, probe: ProbeSession | None = None
) -> Verification:
    """Nothing pending up to the plan's target (but what it defers to after the app deploy), the plan applied, and
    the project's checks: every check runs and is reported, pass or fail; the caller decides what a failure means."""
    after = compute_plan(project, target, plan.to, probe)
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
    checks += run_verify_scripts(project, target)
    return Verification(checks=checks)


def verify_state(target: DatabaseTarget, expected: list[tuple[str, str]]) -> Verification:
    """The applied migrations are exactly `expected` (a rollback's goal, the state a backup recorded)."""
    with connect(target) as conn:
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


def run_verify_scripts(project: DjangoProject, target: DatabaseTarget) -> list[Check]:
    """Each *.sql file of the project's verify folder, in name order, in a read-only transaction: no rows = pass."""
    folder = Path(project.path) / project.verify_dir
    checks = []
    with connect(target) as conn:
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
