"""What a run that carries on a crashed promotion takes from its journal: the plan to vouch for, the steps done, the
approval that stands; and what it refuses to take."""

import pytest
from dbpromote.flows.promote import vouch_for

from dbpromote.errors import PreflightError
from dbpromote.models.approval import Approval
from dbpromote.models.journal import Journal, TargetJournal
from dbpromote.models.report import StepReport
from tests.fast.test_promotion_logic import migration, plan

WHOLE = [migration("0002"), migration("0003"), migration("0004")]


def approval(subject: str) -> Approval:
    return Approval(
        target="production",
        action="promoting to production",
        subject=subject,
        items=[],
        approver="alice",
        comment="",
        approved_at="2026-11-23T00:00:00+00:00",
        flow_run_id="crashed",
        acknowledged_risks=[],
    )


def journal(**targets: TargetJournal) -> Journal:
    return Journal(promotion="first", carries_on="crashed", targets=targets)


def test_the_rest_of_a_plan_is_its_tail_with_the_same_sql_and_nothing_else():
    whole = plan("staging", *WHOLE)
    assert plan("staging", *WHOLE[1:]).is_rest_of(whole)
    assert plan("staging").is_rest_of(whole) and whole.is_rest_of(whole)
    assert not plan("staging", WHOLE[0], WHOLE[2]).is_rest_of(whole)  # a gap is not a tail
    assert not plan("staging", *WHOLE[1:], migration("0005")).is_rest_of(whole)  # a new migration
    assert not plan("staging", migration("0003", sql="ALTER other"), WHOLE[2]).is_rest_of(whole)  # other SQL
    assert not plan("production", *WHOLE[1:]).is_rest_of(whole)  # another target's


def test_staging_part_way_through_its_recorded_plan_still_vouches_for_production():
    now = {"staging": plan("staging", *WHOLE[2:]), "production": plan("production", *WHOLE)}
    with pytest.raises(PreflightError):  # without the journal: "a different plan"
        vouch_for(now, "staging")
    plans = journal(staging=TargetJournal(started=plan("staging", *WHOLE))).continue_plans(now)
    vouch_for(plans, "staging")
    assert plans["staging"].labels == plans["production"].labels == ["core.0002", "core.0003", "core.0004"]


def test_a_plan_that_changed_since_the_crash_is_not_continued():
    now = {"staging": plan("staging", WHOLE[2], migration("0005")), "production": plan("production", *WHOLE)}
    plans = journal(staging=TargetJournal(started=plan("staging", *WHOLE))).continue_plans(now)
    assert plans == now
    with pytest.raises(PreflightError):
        vouch_for(plans, "staging")


def test_a_completed_step_is_taken_from_the_journal_only_when_nothing_of_it_is_pending():
    report = StepReport(target="staging", plan=plan("staging", *WHOLE))
    done = journal(staging=TargetJournal(started=plan("staging", *WHOLE), completed=report))
    assert done.completed("staging", plan("staging")) == report
    assert done.completed("staging", plan("staging", WHOLE[2])) is None  # reversed since: runs again
    assert journal().completed("staging", plan("staging")) is None


def test_an_approval_stands_only_for_the_very_plan_it_approved():
    whole = plan("production", *WHOLE)
    given = journal(production=TargetJournal(started=whole, approval=approval(whole.hash)))
    assert given.approval("production", whole).approver == "alice"
    assert given.approval("production", plan("production", *WHOLE, migration("0005"))) is None
    assert journal().approval("production", whole) is None
