"""Audit: for every target, what is pending, whether tenant isolation is covered, and how old the last backup is."""

from __future__ import annotations

from datetime import UTC, datetime

from dbpromote.flows.parts import flow
from dbpromote.tasks.drift import check_drift
from dbpromote.tasks.plan import plan_migrations
from dbpromote.tasks.rls import rls_coverage

from dbpromote.backups import list_backups
from dbpromote.config import load_project, load_target
from dbpromote.errors import VerificationError
from dbpromote.models.report import Coverage
from dbpromote.notify import notify_failure
from dbpromote.reporting import publish_audit, publish_drift


@flow(name="audit-rls", on_failure=[notify_failure], flow_run_name="audit RLS of {targets}")
def audit_rls(targets: list[str]) -> list[Coverage]:
    """Apply nothing: report RLS coverage and drift of every target; fail when any tenant table is not covered."""
    coverages = [rls_coverage(load_target(name)) for name in targets]
    problems = [f"{c.target}: {', '.join(c.gaps)} not covered" for c in coverages if c.gaps]
    problems += [
        f"{c.target}: policies without a tenant column: {', '.join(c.orphaned_policies)}"
        for c in coverages
        if c.orphaned_policies
    ]
    if problems:
        raise VerificationError(f"RLS audit: {'; '.join(problems)}; run a promotion or the RLS step to fix them.")
    return coverages


@flow(name="audit", on_failure=[notify_failure], flow_run_name="audit {project} on {targets}")
def audit(project: str, targets: list[str], max_backup_age_h: float = 26) -> dict:
    """Pending migrations per target against the project's code, drift of its schema from its applied migrations,
    RLS coverage, age of the newest verified backup."""
    django_project = load_project(project)
    findings: dict[str, dict] = {}
    problems = []
    now = datetime.now(UTC)
    for name in targets:
        target = load_target(name)
        plan = plan_migrations(django_project, target)
        drift = check_drift(django_project, target)
        publish_drift(drift)
        coverage = rls_coverage(target)
        backups = list_backups(target)
        age_h = (now - datetime.fromisoformat(backups[0].created_at)).total_seconds() / 3600 if backups else None
        findings[name] = {
            "pending": plan.labels,
            "drift": [f"{d.object} ({d.kind})" for d in drift.differences],
            "rls_gaps": coverage.gaps,
            "rls_drift": coverage.drift,
            "newest_backup": backups[0].uri if backups else None,
            "backup_age_h": round(age_h, 2) if age_h is not None else None,
        }
        if age_h is None:
            problems.append(f"{name} has no verified backup")
        elif age_h > max_backup_age_h:
            problems.append(f"{name}'s newest backup is {age_h:.1f} h old (allowed {max_backup_age_h} h)")
        if drift.found:
            problems.append(drift.summary())
        if coverage.gaps:
            problems.append(f"{name}: RLS missing or out of date on {', '.join(coverage.gaps)}")
    publish_audit(project, findings, problems)
    if problems:
        raise VerificationError(
            f"Audit of {project}: {'; '.join(problems)}; take a backup (`dbpromote backup TARGET`), reconcile "
            "the schema (`dbpromote drift TARGET --project P` names each difference) or run a promotion to fix them."
        )
    return findings
