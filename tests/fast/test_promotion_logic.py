"""What a promotion decides without touching a server: who vouches for a plan, the way back, who may approve."""

import pytest
from dbpromote.flows.promote import vouch_for

from dbpromote.errors import PreflightError
from dbpromote.models.approval import Answerers, ApprovalRequest, approval_form, refusal
from dbpromote.models.plan import Plan, PlannedMigration
from dbpromote.models.report import MigrationResult, Rehearsal, StepReport
from dbpromote.reporting.forms import promotion_request
from tests.harness import a_backup


def migration(name: str, sql: str = "", reversible: bool = True, backwards: bool = False) -> PlannedMigration:
    return PlannedMigration(
        app="core",
        name=name,
        atomic=True,
        reversible=reversible,
        operations=[],
        sql=[sql or f"-- {name}"],
        backwards=backwards,
    )


def plan(target: str, *migrations: PlannedMigration) -> Plan:
    return Plan(target=target, applied=[("core", "0001_initial")], migrations=list(migrations))


def result(label: str, seconds: float = 0.1) -> MigrationResult:
    return MigrationResult(label=label, duration_s=seconds, attempts=1)


def test_staging_vouches_for_the_same_plan_and_refuses_one_with_other_migrations_naming_them():
    vouch_for(
        {"staging": plan("staging", migration("0002")), "production": plan("production", migration("0002"))}, "staging"
    )
    with pytest.raises(PreflightError) as error:
        vouch_for(
            {"staging": plan("staging", migration("0002")), "production": plan("production", migration("0003"))},
            "staging",
        )
    message = str(error.value)
    assert "only on production: core.0003" in message and "only on staging: core.0002" in message
    assert "bring staging to the state of production first" in message


def test_the_same_migrations_with_other_sql_are_not_vouched_for():
    with pytest.raises(PreflightError, match="the same migrations with different SQL"):
        vouch_for(
            {
                "staging": plan("staging", migration("0002", "A")),
                "production": plan("production", migration("0002", "B")),
            },
            "staging",
        )


def test_a_failure_part_way_names_the_last_committed_migration_and_both_ways_back():
    report = StepReport(target="production", plan=plan("production", migration("0002"), migration("0003")))
    assert report.last_committed == "core.0001_initial (nothing of this plan)"
    report.backup = a_backup()
    report.migrations.append(result("core.0002"))
    assert report.last_committed == "core.0002"
    assert report.way_back() == (
        "reverse with `manage.py migrate core 0001_initial`; "
        "or restore gs://bucket/backups/staging/db/1.dump.zst (taken before any change)"
    )


def test_an_irreversible_migration_says_reversing_is_not_possible():
    report = StepReport(target="production", plan=plan("production", migration("0002", reversible=False)))
    assert "(not possible: core.0002 cannot be reversed)" in report.way_back()


def test_the_way_back_from_a_rollback_is_applying_again_what_was_reversed():
    report = StepReport(target="staging", plan=plan("staging", migration("0002", backwards=True)))
    report.migrations.append(result("core.0002"))
    assert report.way_back() == "apply again what was reversed, with a promotion: core.0002"


def test_a_migration_slower_than_the_rehearsal_bound_becomes_a_risk_to_acknowledge():
    rehearsal = Rehearsal(
        target="production",
        backup_uri="gs://b/x",
        slow_s=1,
        migrations=[result("core.0002", 0.2), result("core.0003", 5.0)],
    )
    request = promotion_request(
        "shop", "production", plan("production", migration("0002"), migration("0003")), [], rehearsal
    )
    assert len(request.risks) == 1 and request.risks[0].startswith("core.0003: took 5.0 s on a rehearsal")


def answer(risky: bool, **fields):
    form = approval_form(risky)
    return form(**({"decision": "approve", "approver": "alice", "comment": ""} | fields))


def request(risks: list[str]) -> ApprovalRequest:
    return ApprovalRequest(
        action="promoting to production",
        target="production",
        subject="abc",
        items=[],
        risks=risks,
        description="",
        notice="",
    )


def test_only_listed_approvers_count_and_risks_must_be_acknowledged_to_approve_but_not_to_reject():
    anyone, alice = Answerers(target="production"), Answerers(target="production", allowed=["alice"])
    assert refusal(request([]), answer(False)) == "" and anyone.refusal("bob", "approve", "") == ""
    assert "may not approve production" in alice.refusal("mallory", "approve", "")
    assert "may not approve" in alice.refusal("mallory", "reject", "")
    risky = request(["core.0003: drops a column"])
    assert "did not acknowledge" in refusal(risky, answer(True, acknowledge_risky_operations=False))
    assert refusal(risky, answer(True, acknowledge_risky_operations=True)) == ""
    assert refusal(risky, answer(True, decision="reject", acknowledge_risky_operations=False)) == ""
