"""Seeing and ending runs: `runs`, `cancel`, and a target held by an unfinished run refused to a new promotion."""

import pytest

from dbpromote.errors import PreflightError
from tests.harness import RELEASE, PromotionInBackground, applied, cli


def test_a_target_held_by_an_unfinished_run_is_refused_until_that_run_is_cancelled(fresh_databases):
    from dbpromote.flows.promote import promote
    from prefect import get_client

    from dbpromote.runs import refuse_if_held

    waiting = PromotionInBackground()
    run = waiting.paused_run()
    listed = cli("runs")
    assert listed.returncode == 0, listed.stderr
    (line,) = [line for line in listed.stdout.splitlines() if line.startswith(str(run.id))]
    assert "promote" in line and "staging,production" in line and "Paused" in line

    with pytest.raises(PreflightError) as error:
        promote("tenant-backend", ["staging", "production"], approval_poll_s=1)
    assert f"staging, production are held by run {run.id} (promote, Paused" in str(error.value)
    assert f"`dbpromote cancel {run.id} --reason TEXT`" in str(error.value)
    assert applied(fresh_databases, "production") == ["core.0001_initial"]

    cancelled = cli("cancel", str(run.id), "--reason", "superseded by the hotfix release")
    assert cancelled.returncode == 0, cancelled.stderr
    with get_client(sync_client=True) as client:
        state = client.read_flow_run(run.id).state
    assert state.is_cancelled() and state.message == "cancelled: superseded by the hotfix release"
    assert str(run.id) not in cli("runs").stdout and str(run.id) not in cli("pending").stdout
    assert str(run.id) in cli("runs", "--all").stdout
    refuse_if_held(["production"])  # free again
    assert applied(fresh_databases, "staging") == ["core.0001_initial", *RELEASE]  # what the first run did stays
    assert applied(fresh_databases, "production") == ["core.0001_initial"]


def test_cancelling_a_run_that_ended_is_one_sentence(fresh_databases):
    from dbpromote.flows.backup import backup

    backup(["staging"])
    (line,) = [line for line in cli("runs", "--all").stdout.splitlines() if " backup " in line][-1:]
    result = cli("cancel", line.split()[0], "--reason", "by mistake")
    assert result.returncode == 1
    assert "has already ended (Completed); nothing to cancel." in result.stderr


def test_every_command_that_changes_a_held_target_is_refused_at_the_terminal_before_any_run(fresh_databases, tmp_path):
    """A promotion through staging and a group holding production waits for its approval. Restore, rollback, fix,
    fix-undo, reconcile and a second promotion of production (the group's member, named as itself) and of the
    group are each refused in one sentence naming the holding run; no run is created, nothing changes."""
    from datetime import UTC, datetime

    from tests.test_reliability import state_of

    grouped = cli("group", "add", "held-pair", "--targets", "production", "--canary", "0")
    assert grouped.returncode == 0, grouped.stderr
    waiting = PromotionInBackground(through=["staging", "held-pair"])
    run = waiting.paused_run()
    script = tmp_path / "fix_titles.sql"
    script.write_text("UPDATE core_task SET title = upper(title) WHERE id < 3")
    since = datetime.now(UTC)
    before = state_of(fresh_databases, since)

    attempts = {
        "restore": ["restore", "production"],
        "rollback": ["rollback", "production", "--project", "tenant-backend"],
        "fix": ["fix", "--project", "tenant-backend", "--through", "staging,production", "--script", str(script)],
        "fix-undo": ["fix-undo", str(run.id), "--target", "production"],
        "reconcile": ["reconcile", "production", "--project", "tenant-backend", "--migration", "core:0002_featureflag"],
        "promote": ["promote", "--project", "tenant-backend", "--through", "staging,production"],
        "promote the group": ["promote", "--project", "tenant-backend", "--through", "staging,held-pair"],
    }
    for command, arguments in attempts.items():
        refused = cli(*arguments)
        assert refused.returncode == 1, (command, refused.stdout, refused.stderr)
        (line,) = refused.stderr.splitlines()
        assert f"held by run {run.id} (promote, Paused" in line, (command, line)
        assert f"`dbpromote cancel {run.id} --reason TEXT`" in line and refused.stdout == "", command
    assert state_of(fresh_databases, since) == before  # no run created, no block or database changed
    assert cli("cancel", str(run.id), "--reason", "test over").returncode == 0


def test_a_stack_reset_ends_the_runs_that_held_its_databases_and_says_so(fresh_databases):
    """`make demo` twice: the first demo's promotion still waits for its approval when the second resets the
    databases under it; the reset ends it, the reason in its state, and a new promotion is not refused."""
    from prefect import get_client

    from dbpromote.runs import refuse_if_held

    waiting = PromotionInBackground()
    run = waiting.paused_run()

    reset = cli("stack", "reset")

    assert reset.returncode == 0, reset.stderr
    assert f"ended run {run.id} (promote): it held the stack's databases" in reset.stdout
    with get_client(sync_client=True) as client:
        state = client.read_flow_run(run.id).state
    assert (
        state.is_cancelled() and state.message == "cancelled: the local stack was reset: its databases are back at v1"
    )
    assert applied(fresh_databases, "staging") == ["core.0001_initial"]

    refuse_if_held(["staging", "production"])  # free for the next demo


def test_a_waiting_command_follows_the_runs_events_and_still_sees_its_end_without_them(fresh_databases, monkeypatch):
    """`--wait` and `--until-paused` wait on the server's event stream for the run's changes; where the stream
    cannot be reached (a proxy refusing websockets: the fault injected here) they poll, and see the same end."""
    from dbpromote import runs

    def backup_started() -> str:
        started = cli("backup", "staging")
        assert started.returncode == 0, started.stderr
        return started.stdout.split()[0]

    run_id = backup_started()
    assert not runs.wait_for(run_id, timeout_s=0).state.is_final()  # as it stands: no wait
    assert runs.wait_for(run_id).state.is_completed()

    def refused(**_):
        raise ConnectionRefusedError("websocket upgrade refused")

    monkeypatch.setattr(runs, "get_events_subscriber", refused)
    run_id = backup_started()
    assert runs.wait_for(run_id, paused=True).state.is_completed()


def test_an_answer_given_the_moment_a_run_suspends_resumes_it_once_its_process_has_ended(fresh_databases):
    """A process worker started with --limit that is offered a suspended run again before the run's old process
    has ended stops for good (Prefect 3.8.8): an approval given as soon as the promotion waits (`approve`'s own
    call, without the command's start) is sent only after that process has ended, and the promotion completes."""
    import threading
    import time
    from datetime import UTC, datetime
    from pathlib import Path

    from prefect import get_client

    from dbpromote.runs import answer_approval
    from tests.harness import started, wait_for_run

    run_id = started("promote", "--project", "tenant-backend", "--through", "staging,production", "--until-paused")
    with get_client(sync_client=True) as client:
        suspended = client.read_flow_run(run_id)
    assert suspended.state.name == "Suspended" and suspended.infrastructure_pid
    process, ended = Path(f"/proc/{suspended.infrastructure_pid}"), []

    def watch() -> None:
        """When the suspended run's process ended, to 5 ms."""
        while process.exists():
            time.sleep(0.005)
        ended.append(datetime.now(UTC))

    watcher = threading.Thread(target=watch)
    watcher.start()
    answer_approval(run_id, "approve", "alice", "at once", acknowledge_risks=True)
    watcher.join(timeout=30)
    assert wait_for_run(run_id).is_completed()
    with get_client(sync_client=True) as client:
        states = sorted(client.read_flow_run_states(run_id), key=lambda state: state.timestamp)
    after = [state for state in states if state.timestamp > suspended.state.timestamp]
    assert ended and after[0].timestamp >= ended[0], (ended, [(s.name, s.timestamp) for s in after])
