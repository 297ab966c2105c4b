"""Drift (issue 14): the live schema against a replay of exactly the migrations a target records, on real servers.

Right after a promotion there is none; each change a person makes by hand on production is found and named, and
the SQL offered for it reconciles it; a migration file edited after it was applied is found; a promotion stops at
preflight on drift it would not repair, before anything changes, and with `--drift warn` goes on showing it."""

import json
import shutil

import psycopg

from dbpromote import localstack as local_stack
from tests.harness import PromotionInBackground, applied, approval_form_text, cli, target_changed, wait_for_run
from tests.test_promote import catalog_snapshot, production_backups

# Each change a person might make by hand on production, and what drift must call it.
BY_HAND = {
    "ALTER TABLE core_task ADD COLUMN notes text": ("column public.core_task.notes", "unexpected"),
    "ALTER TABLE core_task ALTER COLUMN priority SET DEFAULT 5": ("column public.core_task.priority", "different"),
    "DROP INDEX core_role_tenant_id_fd752f18": ("index public.core_role.core_role_tenant_id_fd752f18", "missing"),
    "ALTER INDEX core_team_tenant_id_ed48ab88 RENAME TO team_by_tenant": (
        "index public.core_team.core_team_tenant_id_ed48ab88",
        "renamed",
    ),
    "ALTER POLICY tenant_isolation_core_user ON core_user USING (true)": (
        "policy public.core_user.tenant_isolation_core_user",
        "different",
    ),
    "ALTER TABLE core_label DISABLE ROW LEVEL SECURITY": ("table public.core_label", "different"),
    "REVOKE DELETE ON core_session FROM django_app": ("grant public.core_session", "different"),
}


def drift_of(target: str, project: str = "tenant-backend"):
    """The drift check's task, as a flow runs it."""
    from dbpromote.config import load_project, load_target
    from dbpromote.drift import check_drift

    return check_drift(load_project(project), load_target(target))


def test_no_drift_right_after_a_promotion_of_the_release(promoted):
    for server in local_stack.SERVERS:
        report = drift_of(server)
        assert report.differences == [], report.text()
        assert report.replayed == 8

    result = cli("drift", "production", "--project", "tenant-backend")
    assert result.returncode == 0, result.stderr
    assert "no drift on production (8 migrations replayed)" in result.stdout


def test_each_change_made_by_hand_is_found_and_named_and_its_fix_reconciles_it(promoted):
    url = promoted.database_url("production")
    with psycopg.connect(url) as conn:
        for statement in BY_HAND:
            conn.execute(statement)

    result = cli("drift", "production", "--project", "tenant-backend", "--json")
    assert result.returncode == 1, result.stderr
    differences = json.loads(result.stdout)["differences"]
    assert sorted((d["object"], d["kind"]) for d in differences) == sorted(BY_HAND.values())
    by_object = {d["object"]: d for d in differences}
    assert by_object["column public.core_task.priority"]["live"] == "default=5"
    assert by_object["index public.core_team.core_team_tenant_id_ed48ab88"]["live"] == "team_by_tenant"
    assert by_object["policy public.core_user.tenant_isolation_core_user"]["live"] == "using=true"
    assert by_object["grant public.core_session"]["live"] == "privileges=INSERT, SELECT, UPDATE"

    with psycopg.connect(url, autocommit=True) as conn:  # CREATE INDEX CONCURRENTLY runs outside a transaction
        for difference in differences:
            for statement in filter(None, (s.strip() for s in difference["fix"].split(";"))):
                conn.execute(statement)
    assert drift_of("production").differences == []


def test_a_history_is_replayed_once_and_the_schema_kept_still_finds_a_change_made_by_hand(
    promoted, tmp_path, monkeypatch
):
    """Staging and production after a promotion have one history: production's check reads the schema staging's
    replay made instead of replaying it again, and still finds what a person changed on production."""
    monkeypatch.setenv("DBPROMOTE_CACHE_DIR", str(tmp_path))
    staging, production = drift_of("staging"), drift_of("production")
    assert (staging.reused, production.reused) == (False, True)
    assert staging.differences == production.differences == []

    url = promoted.database_url("production")
    with psycopg.connect(url) as conn:
        conn.execute("ALTER TABLE core_task ADD COLUMN notes text")
    try:
        again = drift_of("production")
        assert again.reused
        assert [(d.object, d.kind) for d in again.differences] == [("column public.core_task.notes", "unexpected")]
    finally:
        with psycopg.connect(url) as conn:
            conn.execute("ALTER TABLE core_task DROP COLUMN notes")


def test_a_migration_file_edited_after_it_was_applied_is_found(promoted, tmp_path, monkeypatch):
    from dbpromote.config import DjangoProject

    monkeypatch.setenv("DBPROMOTE_CACHE_DIR", str(tmp_path / "replays"))
    assert drift_of("production").differences == []  # its replay kept
    project = DjangoProject.load("tenant-backend")
    copy = tmp_path / "tenant_backend"
    shutil.copytree(project.path, copy, ignore=shutil.ignore_patterns("__pycache__"))
    migration = copy / "core" / "migrations" / "0003_task_priority.py"
    migration.write_text(migration.read_text() + "\n# changed after it was applied\n")
    project.model_copy(update={"path": str(copy)}).save("tenant-backend-edited", overwrite=True)

    report = drift_of("production", "tenant-backend-edited")
    assert not report.reused  # another file, another replay
    (edited,) = report.differences
    assert (edited.object, edited.kind) == ("migration core.0003_task_priority", "edited")
    assert drift_of("production").differences == []  # the files as they were applied


def test_a_promotion_stops_at_preflight_on_drift_on_production_and_changes_nothing(fresh_databases):
    from dbpromote.config import load_target
    from dbpromote.runs import answer_approval

    stack = fresh_databases
    with psycopg.connect(stack.database_url("production")) as conn:
        conn.execute("ALTER TABLE core_task ADD COLUMN notes text")
    before = {server: catalog_snapshot(stack, server) for server in local_stack.SERVERS}
    backups = production_backups()

    refused = cli("promote", "--project", "tenant-backend", "--through", "staging,production", "--wait")
    assert refused.returncode == 1
    (error,) = [line for line in refused.stderr.splitlines() if line.startswith("error: ")]
    assert "production's schema differs from what its applied migrations produce: column public.core_task.notes" in (
        error
    )
    assert "dbpromote drift production --project tenant-backend" in error
    assert {server: catalog_snapshot(stack, server) for server in local_stack.SERVERS} == before
    assert production_backups() == backups

    with target_changed("production", drift="warn"):
        promotion = PromotionInBackground()
        run = promotion.paused_run()
        form = approval_form_text(run)
        answer_approval(str(run.id), "reject", "bob", "drift first", acknowledge_risks=False)
        promotion.finish()
    assert "**Drift of production:** 79 differences on production: column public.core_task.notes (unexpected)" in form
    assert "this promotion's RLS step repairs 78 of them" in form
    assert load_target("production").drift == "block"


def test_reconcile_records_a_migration_applied_by_hand_and_refuses_one_applied_otherwise(fresh_databases):
    from dbpromote.config import load_project, load_target
    from dbpromote.planning import compute_plan
    from dbpromote.records import read_records
    from dbpromote.runs import answer_approval, wait_for

    stack = fresh_databases
    (next_one,) = compute_plan(load_project("tenant-backend"), load_target("production")).migrations[:1]
    for server in local_stack.SERVERS:  # 0002 applied by hand from its SQL, as a team's rename_fields.sql was
        with psycopg.connect(stack.database_url(server)) as conn:
            for statement in next_one.sql:
                if not statement.startswith("--"):
                    conn.execute(statement)

    done = cli("reconcile", "staging", "--project", "tenant-backend", "--migration", "core:0002_featureflag", "--wait")
    assert done.returncode == 0, done.stderr
    assert applied(stack, "staging") == ["core.0001_initial", "core.0002_featureflag"]
    (record,) = [r for r in read_records(load_target("staging"), "migrations") if r.get("reconciled")][:1]
    assert list(record["files"]) == ["core.0002_featureflag"]

    with psycopg.connect(stack.database_url("staging")) as conn:  # 0003 by hand, but not as 0003 does it
        conn.execute("ALTER TABLE core_task ADD COLUMN priority bigint")

    refused = cli("reconcile", "staging", "--project", "tenant-backend", "--migration", "core:0003_task_priority",
                  "--wait")  # fmt: skip
    assert refused.returncode == 1
    (error,) = [line for line in refused.stderr.splitlines() if line.startswith("error: ")]
    assert "staging's schema is not what applying core.0003_task_priority gives: column public.core_task.priority" in (
        error
    )
    assert applied(stack, "staging")[-1] == "core.0002_featureflag"

    started = cli("reconcile", "production", "--project", "tenant-backend", "--migration", "core:0002_featureflag")
    run_id = started.stdout.split()[0]
    assert wait_for(run_id, paused=True, timeout_s=600).state.is_paused()  # production requires approval, for this too
    assert applied(stack, "production") == ["core.0001_initial"]
    answer_approval(run_id, "approve", "alice", "applied by hand last night", acknowledge_risks=False)
    assert wait_for_run(run_id).is_completed()
    assert applied(stack, "production") == ["core.0001_initial", "core.0002_featureflag"]
