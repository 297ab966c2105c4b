"""What a person reads of a step (dbpromote/reporting/), from its results alone: no server, no run."""

from dbpromote.models.plan import Plan, PlannedMigration
from dbpromote.models.report import (
    Aftermath,
    Check,
    Coverage,
    Health,
    Isolation,
    MigrationResult,
    StepReport,
    TableCoverage,
    TableProof,
    Verification,
)
from dbpromote.reporting import render_markdown
from tests.harness import a_backup


def a_step(**fields) -> StepReport:
    migration = PlannedMigration(
        app="core", name="0002_flag", atomic=True, reversible=True, operations=[], sql=[f"-- {n}" for n in range(15)]
    )
    plan = Plan(target="production", applied=[("core", "0001_initial")], migrations=[migration])
    return StepReport(target="production", plan=plan, **fields)


def test_a_step_says_its_plan_backup_migrations_checks_rls_and_way_back_in_that_order():
    checks = [Check(name="nothing pending", passed=True), Check(name="x.sql", passed=False, detail="rows")]
    covered = TableCoverage(table="core_task", rls_enabled=True, policy="current", action="created")
    watched = dict(seconds=2, samples=4, most_waiting=0, longest_wait_s=0, deadlocks=0, rollbacks=0, commits=9)
    report = a_step(
        backup=a_backup(),
        migrations=[MigrationResult(label="core.0002_flag", duration_s=0.5, attempts=2, strongest_lock="ShareLock")],
        verification=Verification(checks=checks),
        rls=Coverage(target="production", tables=[covered], ddl_statements=3),
        isolation=Isolation(target="production", tables=[TableProof(table="core_task", passed=True, detail="ok")]),
        health=Health(passed=False, checks=["GET /health: 500"]),
        aftermath=Aftermath(**watched, most_connections=3),
    )
    markdown = render_markdown(report)
    headings = [line for line in markdown.splitlines() if line.startswith("#")]
    assert headings == [
        "# production: plan " + report.plan.hash,
        "## Plan",
        "### core.0002_flag",
        "## Backup",
        "## Migrations applied",
        "## The application: UNHEALTHY",
        "## After the migration",
        "## Verify",
        "## Row-Level Security",
        "## The way back",
    ]
    assert "-- 11\n..." in markdown and "-- 12" not in markdown  # the SQL's first 12 lines
    assert "| core.0002_flag | 0.50 | 2 | ShareLock | 0.00 | 0 |" in markdown
    assert "| x.sql | FAIL | rows |" in markdown
    assert "1 tenant tables; 3 DDL statements issued; changed: core_task: created" in markdown
    assert "Isolation proven as the application role on 1 tables." in markdown


def test_a_failed_step_says_where_the_database_is_first():
    markdown = render_markdown(a_step(error="core.0002_flag failed"))
    assert markdown.splitlines()[2:5] == ["**FAILED**: core.0002_flag failed", "", "Database is at the state after "
                                           "**core.0001_initial (nothing of this plan)**."]  # fmt: skip
    assert "## Backup" not in markdown and "## Migrations applied" not in markdown
