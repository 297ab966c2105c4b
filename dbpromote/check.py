"""`dbpromote check`: what a pull request's migrations would do to a target, for CI, without a Prefect server.

The plan against the target (with its lint risks), drift of the target's schema from its applied migrations, and
its history (files edited after they were applied, rows with no file), computed by the library's steps (what the
tasks run) in this process. Blocking: anything a promotion's preflight would refuse, drift a promotion would not
repair, an edited or missing migration file, and (unless allowed) a lint risk the project's ignore list gives no
reason for.
"""

from __future__ import annotations

from pydantic import BaseModel, Field

from dbpromote.config import DatabaseTarget, DjangoProject
from dbpromote.drift import check_drift
from dbpromote.errors import ConfigError, DbpromoteError
from dbpromote.models.drift import DriftReport
from dbpromote.models.plan import Plan
from dbpromote.planning import compute_plan, describe_changes


class CheckReport(BaseModel):
    project: str
    target: str
    plan: Plan | None = None
    drift: DriftReport | None = None
    refused: list[str] = Field(default_factory=list, description="What a promotion's preflight would refuse")
    risks_allowed: bool = False
    notes: list[str] = Field(default_factory=list)

    @property
    def blocking(self) -> list[str]:
        """Each finding that fails the check, one line each."""
        found = list(self.refused)
        if self.drift is not None:
            found += [f"drift: {d.object} ({d.kind})" for d in self.drift.blocking]
        if self.plan is not None and not self.risks_allowed:
            found += [f"risk: {risk}" for risk in self.plan.risks]
            found += [
                f"breaks the running release: {change.line(m.label)}"
                for m in self.plan.migrations
                if m.marker != "after_deploy"
                for change in m.breaking
                if change.severity == "breaks"
            ]
        return found


def check(
    project: DjangoProject,
    project_name: str,
    target: DatabaseTarget,
    allow_risks: bool,
    records: bool,
    previous_code: DjangoProject | None = None,
) -> CheckReport:
    """Plan, lint, drift and history of one target, by the library's steps; `records`: the bucket beside the target
    holds the hashes of the migration files as applied (without it, edited files cannot be told).
    `previous_code`: the running release's own tree, whose models are judged instead of the migration state at
    the target's applied migrations (where a team's models and migrations disagree)."""
    report = CheckReport(project=project_name, target=target.name, risks_allowed=allow_risks)
    try:
        previous = previous_models(previous_code, target, report) if previous_code else None
        report.plan = compute_plan(project, target, previous=previous)
    except DbpromoteError as error:
        report.refused.append(str(error))
    try:
        report.drift = check_drift(project, target, read_history=records)
    except DbpromoteError as error:
        report.refused.append(str(error))
    if not records:
        report.notes.append(
            "migration files edited after they were applied: not checked (the target's records in its bucket were "
            "not read; check against a registered target to include them)"
        )
    return report


def previous_models(tree: DjangoProject, target: DatabaseTarget, report: CheckReport) -> dict:
    """The tables the running release's own code defines (its tree's models), and a note on whether they agree
    with its migrations."""
    from dbpromote.probe import FailureAnswer, ModelsAnswer, run_probe

    answer = run_probe(tree, target, "models")
    if isinstance(answer, FailureAnswer):
        raise ConfigError(
            f"The previous code at {tree.path} does not load ({answer.message}); give the previous release's tree "
            "with --previous-code (and its interpreter with --previous-python)."
        )
    if not isinstance(answer, ModelsAnswer):
        raise ConfigError(f"The probe answered a models request with a {answer.kind}; reinstall dbpromote.")
    if answer.changes:
        report.notes.append(
            f"the previous code at {tree.path} has models that differ from its migrations in "
            f"{describe_changes(answer.changes)}: what it reads and writes is judged from its models"
        )
    else:
        report.notes.append(f"the previous code at {tree.path}: its models agree with its migrations")
    return answer.tables
