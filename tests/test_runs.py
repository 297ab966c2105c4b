"""Seeing and ending runs: `runs`, `cancel`, and a target held by an unfinished run refused to a new promotion."""

import pytest

from dbpromote.errors import PreflightError
from tests.harness import RELEASE, PromotionInBackground, applied, cli


def test_a_target_held_by_an_unfinished_run_is_refused_until_that_run_is_cancelled(fresh_databases):
    from dbpromote.flows.promote import promote
    from dbpromote.tasks.preflight import check_not_held
    from prefect import get_client

    waiting = PromotionInBackground()
    run = waiting.paused_run()
    listed = cli("runs")
    assert listed.returncode == 0, listed.stderr
    (line,) = [line for line in listed.stdout.splitlines() if line.startswith(str(run.id))]
    assert "promote" in line and "staging,production" in line and "Paused" in line

    with pytest.raises(PreflightError) as error:
        promote("tenant-backend", ["staging", "production"], approval_poll_s=1)
    assert f"staging, production is held by run {run.id} (promote, Paused" in str(error.value)
    assert f"`dbpromote cancel {run.id} --reason TEXT`" in str(error.value)
    assert applied(fresh_databases, "production") == ["core.0001_initial"]

    cancelled = cli("cancel", str(run.id), "--reason", "superseded by the hotfix release")
    assert cancelled.returncode == 0, cancelled.stderr
    with get_client(sync_client=True) as client:
        state = client.read_flow_run(run.id).state
    assert state.is_cancelled() and state.message == "cancelled: superseded by the hotfix release"
    assert str(run.id) not in cli("runs").stdout and str(run.id) not in cli("pending").stdout
    assert str(run.id) in cli("runs", "--all").stdout
    check_not_held.fn(["production"])  # free again
    assert applied(fresh_databases, "staging") == ["core.0001_initial", *RELEASE]  # what the first run did stays
    assert applied(fresh_databases, "production") == ["core.0001_initial"]


def test_cancelling_a_run_that_ended_is_one_sentence(fresh_databases):
    from dbpromote.flows.backup import backup

    backup(["staging"])
    (line,) = [line for line in cli("runs", "--all").stdout.splitlines() if " backup " in line][-1:]
    result = cli("cancel", line.split()[0], "--reason", "by mistake")
    assert result.returncode == 1
    assert "has already ended (Completed); nothing to cancel." in result.stderr
