"""Fleets (issue 16) on real servers and two workers: twelve tenant shards on the production server promoted as one
group, canary first, in waves, under one approval; the per-server limit holds (sampled from pg_stat_activity);
a failure halts the group and a re-run finishes it without touching the members done; a divergent member blocks
or, with --skip-divergent, is left alone; a rejection touches no member; members that need a window run in it."""

import contextlib
import os
import sys
import threading
import time
from datetime import datetime

import psycopg
import pytest

from dbpromote import localstack as local_stack
from dbpromote.localstack.processes import run
from tests.conftest import cancel_unfinished_runs
from tests.harness import RELEASE, approval_form_text, cli, fleet_databases, target_changed, wait_for_run
from tests.test_crash_resume import wait_until

SHARDS = 12


@pytest.fixture(scope="module")
def two_workers(stack):
    """The stack with a second worker; each runs at most three flow runs at once, so a wave of five (and the
    promotion's own run) cannot all land on one. Back to the single unlimited worker afterwards."""
    from dbpromote.localstack.processes import stop

    # The state as saved, not the session's object (other modules hang their own attributes on it).
    stop(local_stack.Stack.load(stack.home), ["worker"])
    local_stack.up(stack.home, deploy=False, workers=2, worker_limit=3)
    yield stack
    # Nothing may be running when the workers stop: a run killed with them is marked Crashed 30 s later, and the
    # close-crashed run that starts then would land in a later test.
    wait_until(nothing_running, "the fleet's runs to end", timeout_s=120)
    stop(local_stack.Stack.load(stack.home), ["worker", "worker-2"])
    local_stack.up(stack.home, deploy=False)


def nothing_running() -> bool:
    from prefect import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterState, FlowRunFilterStateType
    from prefect.client.schemas.objects import StateType

    busy = [StateType.RUNNING, StateType.PENDING, StateType.CANCELLING]
    with get_client(sync_client=True) as client:
        filtered = FlowRunFilter(state=FlowRunFilterState(type=FlowRunFilterStateType(any_=busy)))
        return not client.read_flow_runs(flow_run_filter=filtered, limit=1)


@pytest.fixture
def fleet(two_workers):
    """Staging at v1 and twelve shards at v1 (drift unchecked: the tests break some on purpose), grouped."""
    stack = two_workers
    cancel_unfinished_runs()
    local_stack.reset_database(stack, "staging")
    shards = fleet_databases(stack, SHARDS, drift="off")
    group = cli("group", "add", "shards", "--targets", ",".join(shards), "--canary", "1", "--wave-size", "5",
                "--parallel", "5", "--per-server", "3", "--max-failures", "1")  # fmt: skip
    assert group.returncode == 0, group.stderr
    return stack, shards


def shard_url(stack, shard: str) -> str:
    return stack.database_url("production").rsplit("/", 1)[0] + "/" + shard.replace("-", "_")


def first_migration_fails(stack, shard: str, fails: bool = True) -> None:
    """The table the release's first migration creates, already there (it fails), or gone again."""
    with psycopg.connect(shard_url(stack, shard)) as conn:
        if fails:
            conn.execute("CREATE TABLE core_featureflag (id bigint PRIMARY KEY)")
        else:
            conn.execute("DROP TABLE core_featureflag")


def resumed(run_id: str) -> dict[str, dict]:
    """`dbpromote resume RUN --wait`, completed: each member's outcome in the run that carried it on."""
    result = cli("resume", run_id, "--wait")
    assert result.returncode == 0, result.stderr
    return outcomes(result.stdout.split()[0])


def migrate_by_hand(stack, shard: str) -> None:
    """The shard taken one migration ahead of the others with the sample's own `manage.py migrate`."""
    run(
        [sys.executable, str(local_stack.SAMPLE_PROJECT / "manage.py"), "migrate", "core", "0002"],
        f"migrating {shard} ahead",
        env=os.environ | {"DATABASE_URL": shard_url(stack, shard), "DJANGO_SETTINGS_MODULE": "tenant_backend.settings"},
        cwd=local_stack.SAMPLE_PROJECT,
    )


def shard_migrations(stack, shard: str) -> list[str]:
    with psycopg.connect(shard_url(stack, shard)) as conn:
        return [f"{a}.{n}" for a, n in conn.execute("SELECT app, name FROM django_migrations ORDER BY id")]


def outcomes(run_id: str) -> dict[str, dict]:
    """Each member's outcome in the promotion's records."""
    from dbpromote.config import load_target
    from dbpromote.records import read_records

    found = {}
    for shard in [f"shard-{n:02d}" for n in range(1, SHARDS + 1)]:
        for record in read_records(load_target(shard), "fleet"):
            if record["flow_run_id"] == run_id:
                found[shard] = record
                break
    return found


class ServerSampler(threading.Thread):
    """The most shard databases the migration role was connected to at once, sampled every 50 ms."""

    def __init__(self, stack):
        super().__init__(daemon=True)
        self.url, self.most, self.stopped = stack.database_url("production"), 0, threading.Event()

    def run(self):
        with psycopg.connect(self.url, autocommit=True) as conn:
            while not self.stopped.is_set():
                (busy,) = conn.execute(
                    "SELECT count(DISTINCT datname) FROM pg_stat_activity "
                    "WHERE usename = current_user AND datname LIKE 'shard\\_%%'"
                ).fetchone()
                self.most = max(self.most, busy)
                time.sleep(0.05)

    def stop(self) -> int:
        self.stopped.set()
        self.join()
        return self.most


def promote_group(*extra: str) -> str:
    started = cli("promote", "--project", "tenant-backend", "--through", "staging,shards", "--until-paused", *extra)
    assert started.returncode == 0, started.stderr
    return started.stdout.split()[0]


def approve(run_id: str) -> None:
    answered = cli("approve", run_id, "--approver", "alice", "--comment", "fleet", "--acknowledge-risks")
    assert answered.returncode == 0, answered.stderr


def test_twelve_shards_go_canary_first_in_waves_on_both_workers_within_the_per_server_limit(fleet):
    from prefect import get_client

    from tests.harness import approval_form_text
    from tests.test_crash_resume import run_processes

    stack, shards = fleet
    run_id = promote_group()
    with get_client(sync_client=True) as client:
        form = approval_form_text(client.read_flow_run(run_id))
    assert "### The members of shards, in waves" in form
    assert "| canary | shard-01 |" in form and "| 1 | shard-02, shard-03, shard-04, shard-05, shard-06 |" in form
    # Waiting for a person holds nothing: the run is suspended, no flow-run process exists.
    wait_until(lambda: run_processes(run_id) == {}, "the suspended run's process to end", timeout_s=30)
    sampler = ServerSampler(stack)
    sampler.start()
    approve(run_id)
    assert wait_for_run(run_id).is_completed()
    most = sampler.stop()

    assert all(shard_migrations(stack, shard)[-len(RELEASE) :] == RELEASE for shard in shards)  # all at head
    assert 0 < most <= 3, f"{most} shards migrated at once on one server; --per-server is 3"
    found = outcomes(run_id)
    assert {record["outcome"] for record in found.values()} == {"migrated"} and len(found) == SHARDS
    waves = [[shards[0]], shards[1:6], shards[6:11], shards[11:]]
    for earlier, later in zip(waves, waves[1:], strict=False):
        ended = max(datetime.fromisoformat(found[s]["ended"]) for s in earlier)
        assert all(datetime.fromisoformat(found[s]["started"]) >= ended for s in later), (earlier, later)
    workers = {record["worker"] for record in found.values()}
    assert len(workers) == 2, f"every member ran on {workers}"
    # One plan for every shard (staging vouched for it): a lane's run carries it once, not once a member (1,000
    # members' copies passed the server's 512 KB limit on a run's parameters), and each member ran and recorded it
    # as its own.
    assert [len(lane["plans"]) for lane in lane_parameters(run_id)] == [1] * 5  # --parallel 5
    assert all(recorded_report(run_id, shard).plan.target == shard for shard in shards)


def lane_parameters(run_id: str) -> list[dict]:
    """The parameters of the group's lanes in a promotion's run."""
    from dbpromote.flows.fleet import FLEET_TAG
    from prefect import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterTags

    lanes = FlowRunFilter(tags=FlowRunFilterTags(all_=[f"{FLEET_TAG}{run_id}:shards"]))
    with get_client(sync_client=True) as client:
        return [run.parameters for run in client.read_flow_runs(flow_run_filter=lanes)]


def recorded_report(run_id: str, shard: str):
    """The report a member's step recorded in the promotion's journal."""
    from dbpromote.config import load_target
    from dbpromote.journal import read_target_journal

    return read_target_journal(load_target(shard), run_id).completed


def test_a_failure_halts_the_group_and_the_same_promotion_run_again_finishes_only_the_rest(fleet):
    stack, shards = fleet
    first_migration_fails(stack, "shard-08")  # wave 2
    run_id = promote_group()
    approve(run_id)
    state = wait_for_run(run_id)
    assert state.is_failed()
    assert "Group shards halted (1 failed): shard-08: " in state.message
    assert "not started: shard-12" in state.message
    found = outcomes(run_id)
    assert found["shard-08"]["outcome"] == "failed" and found["shard-12"]["outcome"] == "not started"
    assert shard_migrations(stack, "shard-12")[-1] == "core.0001_initial"  # wave 3: never started
    done = {s: shard_migrations(stack, s) for s in shards if found[s]["outcome"] == "migrated"}
    assert len(done) >= 6 and "shard-01" in done

    first_migration_fails(stack, "shard-08", fails=False)
    again = resumed(run_id)
    assert {s for s, r in again.items() if r["outcome"] == "migrated"} == set(shards) - set(done)
    assert {s for s, r in again.items() if r["outcome"] == "done before"} == set(done)
    assert all(shard_migrations(stack, s)[-len(RELEASE) :] == RELEASE for s in shards)
    assert {s: shard_migrations(stack, s) for s in done} == done


def test_a_divergent_member_blocks_unless_skipped_and_is_then_left_alone(fleet):
    stack, shards = fleet
    migrate_by_hand(stack, "shard-12")
    before = shard_migrations(stack, "shard-12")
    blocked = cli("promote", "--project", "tenant-backend", "--through", "staging,shards", "--wait")
    assert blocked.returncode == 1
    assert "shard-12 would run another plan than staging" in blocked.stderr and "--skip-divergent" in blocked.stderr
    assert all(shard_migrations(stack, s)[-1] == "core.0001_initial" for s in shards[:-1])

    run_id = promote_group("--skip-divergent")
    approve(run_id)
    assert wait_for_run(run_id).is_completed()
    found = outcomes(run_id)
    assert found["shard-12"]["outcome"] == "skipped" and "divergent" in found["shard-12"]["detail"]
    assert shard_migrations(stack, "shard-12") == before
    assert all(shard_migrations(stack, s)[-len(RELEASE) :] == RELEASE for s in shards[:-1])


def test_a_member_migrated_while_the_approval_waits_runs_nothing_and_halts_the_group(fleet):
    """The members are planned before the approval and not again by the run carried on after it: each member's own
    step plans it once more and refuses any plan but the approved one, before anything changes on it."""
    stack, shards = fleet
    run_id = promote_group()
    migrate_by_hand(stack, "shard-01")  # the canary
    ahead = shard_migrations(stack, "shard-01")
    approve(run_id)
    state = wait_for_run(run_id)
    assert state.is_failed()
    halted = "Group shards halted (its canary failed): shard-01: The plan for shard-01 changed since it was staged"
    assert halted in state.message
    assert "nothing was run on shard-01" in state.message
    assert shard_migrations(stack, "shard-01") == ahead
    assert all(shard_migrations(stack, s)[-1] == "core.0001_initial" for s in shards[1:])


def test_registering_the_fleet_again_leaves_production_as_it_was(fleet):
    """The shards are copies of production's target: saved again under their taken names, they must not overwrite
    production's own block (Prefect updates the document a loaded block came from)."""
    from dbpromote.config import load_target

    stack, shards = fleet
    before = load_target("production")
    fleet_databases(stack, 2, drift="off")
    after = load_target("production")
    assert (after.url.get_secret_value(), after.drift) == (before.url.get_secret_value(), before.drift)
    assert load_target("shard-02").conninfo.database == "shard_02"


def test_a_rejection_leaves_every_member_untouched(fleet):
    stack, shards = fleet
    first = cli("promote", "--project", "tenant-backend", "--through", "shards,staging")
    assert first.returncode == 1 and first.stderr.strip() == (
        "error: shards is a group; a promotion starts on one staging target that vouches for the plan, e.g. "
        "--through staging,shards."
    )
    before = {s: shard_migrations(stack, s) for s in shards}
    run_id = promote_group()
    rejected = cli("reject", run_id, "--approver", "alice", "--comment", "not today")
    assert rejected.returncode == 0, rejected.stderr
    assert wait_for_run(run_id).is_failed()
    assert {s: shard_migrations(stack, s) for s in shards} == before


def test_members_run_in_their_shared_window_and_members_with_different_windows_are_refused(fleet):
    """Issue 33.3 for a group: every migration of the release held a lock on staging (bound 0 s), so each shard
    needs a window. A group goes as one: one shard with another window is refused at the terminal before anything
    runs; with one window for all, open now, the group runs in it and each member's journal says so."""
    from dbpromote.config import load_target
    from dbpromote.journal import read_target_journal

    stack, shards = fleet
    open_now = "* 00:00:00-23:59:59 UTC"
    with contextlib.ExitStack() as changed:
        for shard in shards:
            changed.enter_context(target_changed(shard, windows=[open_now], window_lock_s=0))
        with target_changed(shards[3], windows=["sun 01:00-05:00 Europe/Berlin"]):
            refused = cli("promote", "--project", "tenant-backend", "--through", "staging,shards")
        assert refused.returncode == 1
        assert refused.stderr.strip() == (
            "error: The members of shards have different maintenance windows (* 00:00:00-23:59:59 UTC | sun "
            "01:00-05:00 Europe/Berlin); nothing was run: give them the same (`dbpromote target add MEMBER ... "
            "--window`); a group goes as one."
        )
        run_id = promote_group()
        assert "**When:** shards runs now, in the window that opened " in approval_form_text(pending_run(run_id))
        approve(run_id)
        assert wait_for_run(run_id).is_completed()
    assert all(shard_migrations(stack, shard)[-len(RELEASE) :] == RELEASE for shard in shards)
    windows = [read_target_journal(load_target(s), run_id).window for s in shards]
    assert {(w.target, w.window, w.opened_by) for w in windows} == {(s, open_now, "the window") for s in shards}


def pending_run(run_id: str):
    from dbpromote.runs import paused_for

    return paused_for(run_id, "approval", timeout_s=60)


def lane_group(*extra: str) -> None:
    """The shards regrouped in two lanes: the canary, then the eleven others dealt to lanes of six and five
    (shard-02, 04, ..., 12 and shard-03, 05, ..., 11)."""
    group = cli("group", "add", "shards", "--targets", ",".join(f"shard-{n:02d}" for n in range(1, SHARDS + 1)),
                "--canary", "1", "--wave-size", "100%", "--parallel", "2", "--per-server", "2", *extra)  # fmt: skip
    assert group.returncode == 0, group.stderr


def member_task_runs(lane_id: str) -> dict[str, str]:
    """The member task runs of a lane's flow run: their names and state names."""
    from prefect import get_client
    from prefect.client.schemas.filters import TaskRunFilter, TaskRunFilterFlowRunId, TaskRunFilterName

    with get_client(sync_client=True) as client:
        lane = TaskRunFilterFlowRunId(any_=[lane_id])
        runs = client.read_task_runs(
            task_run_filter=TaskRunFilter(flow_run_id=lane, name=TaskRunFilterName(like_="migrate shard"))
        )
    return {run.name: run.state.name for run in runs if run.name.startswith("migrate shard")}


def lane_artifacts(lane_id: str) -> list:
    """The artifacts a lane's flow run published."""
    from prefect import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    with get_client(sync_client=True) as client:
        return client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[lane_id]))
        )


def test_lanes_run_their_members_as_tasks_and_a_failure_halts_every_lane_before_its_next_member(fleet):
    stack, shards = fleet
    lane_group("--max-failures", "1")
    # shard-02 follows the canary in the first lane: it fails while the other lane runs shard-03, its first member.
    first_migration_fails(stack, "shard-02")
    run_id = promote_group()
    approve(run_id)
    state = wait_for_run(run_id)
    assert state.is_failed()
    assert "Group shards halted (1 failed): shard-02: " in state.message
    found = outcomes(run_id)
    assert found["shard-01"]["outcome"] == "migrated" and found["shard-02"]["outcome"] == "failed"
    # Neither lane started a member after the failure: the failing lane's rest, and the other lane's last ones.
    assert all(found[f"shard-{n:02d}"]["outcome"] == "not started" for n in (4, 6, 8, 10, 11, 12)), found
    assert all(shard_migrations(stack, f"shard-{n:02d}")[-1] == "core.0001_initial" for n in (4, 6, 8, 10, 11, 12))
    # A lane is one flow run through the waves; its members are task runs in it named after them, each with its
    # own outcome.
    first_lane, other_lane = found["shard-01"]["member_run"], found["shard-03"]["member_run"]
    assert found["shard-02"]["member_run"] == first_lane != other_lane
    assert member_task_runs(first_lane) == {"migrate shard-01": "Completed", "migrate shard-02": "Failed"}
    # Each member's one report: its markdown, with its migrations in it; no table or progress artifact besides.
    artifacts = lane_artifacts(first_lane)
    assert not {artifact.type for artifact in artifacts} & {"table", "progress"}
    reports = {artifact.key: artifact for artifact in artifacts if artifact.type == "markdown"}
    assert set(reports) == {"dbpromote-shard-01", "dbpromote-shard-02"}
    assert "## Migrations applied" in reports["dbpromote-shard-01"].data
    assert "## Row-Level Security" in reports["dbpromote-shard-01"].data

    first_migration_fails(stack, "shard-02", fails=False)
    done = {s: shard_migrations(stack, s) for s in shards if found[s]["outcome"] == "migrated"}
    again = resumed(run_id)
    assert {s for s, r in again.items() if r["outcome"] == "done before"} == set(done)
    assert {s for s, r in again.items() if r["outcome"] == "migrated"} == set(shards) - set(done)
    assert all(shard_migrations(stack, s)[-len(RELEASE) :] == RELEASE for s in shards)
    assert {s: shard_migrations(stack, s) for s in done} == done  # none migrated twice
    lanes = {again[s]["member_run"] for s in again if again[s]["outcome"] == "migrated"}
    assert len(lanes) <= 2 < len(again) - len(done), f"{len(lanes)} lanes for the rest"


def test_a_lane_moves_its_probe_between_members_without_carrying_a_connection_or_a_setting(fleet):
    """One probe process for member after member, on two servers: each request runs on its own member's database
    with its own timeouts; a member whose password is wrong is refused, not served on the last one's connection."""
    from pydantic import SecretStr

    from dbpromote.config import load_project, load_target
    from dbpromote.probe import FailureAnswer, PlanAnswer, ProbeSession, StepAnswer

    stack, shards = fleet
    shard, staging = load_target("shard-01"), load_target("staging")
    with ProbeSession(load_project("tenant-backend"), shard) as probe:
        assert isinstance(probe.plan(""), PlanAnswer)
        pid = probe.process.pid
        probe.retarget(staging)  # the staging server: another host and port, another database
        first = probe.plan("").migrations[0]
        assert isinstance(probe.request(first.app, first.name, False), StepAnswer)
        assert probe.process.pid == pid  # the same Django: imported once
        assert f"{first.app}.{first.name}" in staging_migrations(stack)
        assert shard_migrations(stack, "shard-01")[-1] == "core.0001_initial"

        other = load_target("shard-02")
        wrong = other.url.get_secret_value().replace(other.conninfo.password, "not-the-password")
        probe.retarget(other.model_copy(update={"url": SecretStr(wrong)}))
        refused = probe.plan("")
        assert isinstance(refused, FailureAnswer) and "password authentication failed" in refused.message
        assert "not-the-password" not in refused.message

        # The table the release's first migration refers to, locked.
        with psycopg.connect(shard_url(stack, "shard-03")) as holder:
            holder.execute("LOCK TABLE core_tenant IN ACCESS EXCLUSIVE MODE")
            probe.retarget(load_target("shard-03").model_copy(update={"lock_timeout_ms": 200}))
            started = time.monotonic()
            waited = probe.request(first.app, first.name, False)
            assert isinstance(waited, FailureAnswer) and waited.reason == "lock", waited
            assert time.monotonic() - started < 3, "shard-03's lock_timeout of 200 ms was not the one in force"
        assert probe.process.pid == pid


def staging_migrations(stack) -> list[str]:
    with psycopg.connect(stack.database_url("staging")) as conn:
        return [f"{a}.{n}" for a, n in conn.execute("SELECT app, name FROM django_migrations ORDER BY id")]


def applied_at(stack, shard: str) -> list[tuple]:
    """Every migration row of a shard with the moment it was applied: a migration run twice would show."""
    with psycopg.connect(shard_url(stack, shard)) as conn:
        return conn.execute("SELECT app, name, applied FROM django_migrations ORDER BY id").fetchall()


def test_a_lane_killed_half_way_is_resumed_and_no_member_runs_twice(fleet):
    from prefect import get_client
    from prefect.client.schemas.filters import FlowFilter, FlowFilterName, FlowRunFilter, FlowRunFilterStartTime

    from tests.harness import kill

    stack, shards = fleet
    lane_group("--max-failures", "1")
    since = datetime.now().astimezone()
    run_id = promote_group()
    approve(run_id)

    def first_lane() -> str | None:
        with get_client(sync_client=True) as client:
            runs = client.read_flow_runs(
                flow_filter=FlowFilter(name=FlowFilterName(any_=["migrate-lane"])),
                flow_run_filter=FlowRunFilter(start_time=FlowRunFilterStartTime(after_=since)),
            )
        return next((str(run.id) for run in runs if run.name == "shards lane 0"), None)

    wait_until(lambda: first_lane() is not None, "the first lane to start")
    lane = first_lane()
    # Killed in shard-04's step, once the server has shard-02's end: a member's step takes a couple of seconds now
    # that its parts are not task runs of their own, so waiting for shard-02's end alone could miss shard-04's.
    in_the_second = {"migrate shard-02": "Completed", "migrate shard-04": "Running"}
    wait_until(lambda: member_task_runs(lane).items() >= in_the_second.items(), "shard-04's step to start", poll_s=0.1)
    kill(stack, lane, worker=False)  # its probe and backup stream die with it
    state = wait_for_run(run_id, timeout_s=300)  # the lane is marked Crashed, then the group halts
    assert state.is_failed() and "Group shards halted" in state.message, state.message
    found = outcomes(run_id)
    assert found["shard-02"]["outcome"] == "migrated" and found["shard-04"]["outcome"] == "failed"
    assert all(found[f"shard-{n:02d}"]["outcome"] == "not started" for n in (6, 8, 10, 12)), found
    done = {s: applied_at(stack, s) for s in shards if found[s]["outcome"] == "migrated"}

    again = resumed(run_id)
    assert {s for s, r in again.items() if r["outcome"] == "done before"} == set(done)
    assert {s for s, r in again.items() if r["outcome"] == "migrated"} == set(shards) - set(done)
    assert all(shard_migrations(stack, s)[-len(RELEASE) :] == RELEASE for s in shards)
    assert {s: applied_at(stack, s) for s in done} == done  # not one migration of theirs ran again
