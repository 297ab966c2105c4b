"""Guarded data fixes (issue 15) on real servers: the dry run changes nothing and counts exactly what the real run
then changes; bounds stop a fix before anything commits anywhere; a tenant-scoped fix cannot touch another tenant;
undo puts back the exact rows and refuses when one changed since; through the CLI, production waits for an
approval showing the counts, and the fix is recorded."""

import json

import psycopg
import pytest

from tests.harness import cli, wait_for_run
from tests.test_way_back import tenant_table_checksums

# Updates some tasks, deletes a few task labels, inserts nothing: three kinds of change in two tables.
SCRIPT = """
UPDATE core_task SET title = upper(title) WHERE priority >= 0 AND id IN (SELECT id FROM core_task ORDER BY id LIMIT 7);
DELETE FROM core_tasklabel WHERE id IN (SELECT id FROM core_tasklabel ORDER BY id LIMIT 3);
"""


def run_fix(through: list[str], script: str = SCRIPT, script_name: str = "upper_titles.sql", **parameters):
    from dbpromote.flows.fix import fix

    return fix("tenant-backend", through, script, script_name=script_name, **parameters)


def tenants(stack, server: str) -> list[str]:
    with psycopg.connect(stack.database_url(server)) as conn:
        return [str(t) for (t,) in conn.execute("SELECT id FROM core_tenant ORDER BY slug")]


def test_a_dry_run_changes_nothing_and_counts_what_the_fix_then_changes_and_undo_puts_it_back(promoted):
    from dbpromote.flows.fix import fix_undo

    from dbpromote.config import load_project, load_target
    from dbpromote.fixes import dry_run_fix
    from dbpromote.models.fix import FixScript

    stack = promoted
    before = tenant_table_checksums(stack, "staging")
    script = FixScript(name="upper.sql", source=SCRIPT)
    dry = dry_run_fix(load_target("staging"), script, [], load_project("tenant-backend"))
    assert tenant_table_checksums(stack, "staging") == before
    assert sorted(t.counts() for t in dry.tables) == [("public.core_task", 0, 7, 0), ("public.core_tasklabel", 0, 0, 3)]
    assert len(dry.tables[0].sample_keys) == 5

    (done,) = run_fix(["staging"], expect_rows="1..20", purpose="titles in capitals")
    assert done.same_counts(dry) and done.rows == 10 and done.backup and done.before_images
    after = tenant_table_checksums(stack, "staging")
    assert {t for t in before if before[t] != after[t]} == {"core_task", "core_tasklabel"}
    assert after["core_tasklabel"][0] == before["core_tasklabel"][0] - 3

    assert fix_undo(str(done_run_id(stack, "staging")), "staging") == 10
    assert tenant_table_checksums(stack, "staging") == before  # the exact rows, back


def done_run_id(stack, target: str) -> str:
    """The newest fix recorded on the target."""
    from dbpromote.config import load_target
    from dbpromote.records import read_records

    return next(r["flow_run_id"] for r in read_records(load_target(target), "fixes") if "script" in r)


def test_undo_refuses_when_a_fixed_row_changed_again_and_puts_nothing_back(promoted):
    from dbpromote.flows.fix import fix_undo

    from dbpromote.errors import DbpromoteError

    stack = promoted
    run_fix(["staging"], script="UPDATE core_team SET name = name || ' (fixed)' WHERE id IN "
            "(SELECT id FROM core_team ORDER BY id LIMIT 2)")  # fmt: skip
    with psycopg.connect(stack.database_url("staging")) as conn:
        (changed,) = conn.execute("SELECT id FROM core_team WHERE name LIKE '%(fixed)' ORDER BY id LIMIT 1").fetchone()
        conn.execute("UPDATE core_team SET name = 'renamed since' WHERE id = %s", [changed])
    fixed = tenant_table_checksums(stack, "staging")
    with pytest.raises(
        DbpromoteError, match=rf"1 row\(s\) on staging changed again since the fix \(public.core_team {changed}\)"
    ):
        fix_undo(done_run_id(stack, "staging"), "staging")
    assert tenant_table_checksums(stack, "staging") == fixed


# The seed's fix_*.py kind: ORM code, run in the project's interpreter with Django set up, in the fix's transaction.
PYTHON_SCRIPT = """
from core.models import Task, Team

for task in Task.objects.order_by("id")[:4]:
    task.title += " (py)"
    task.save(update_fields=["title"])
Team.objects.filter(id__in=list(Team.objects.order_by("id").values_list("id", flat=True)[:2])).delete()
"""


def test_a_python_fix_script_is_counted_and_applied_with_the_orm(promoted):
    from dbpromote.flows.fix import fix_undo

    stack = promoted
    before = tenant_table_checksums(stack, "staging")
    (done,) = run_fix(["staging"], script=PYTHON_SCRIPT, script_name="fix_task_titles.py")
    # Django's delete cascades to the teams' memberships: counted as the database saw it.
    assert sorted(t.counts() for t in done.tables) == [
        ("public.core_task", 0, 4, 0),
        ("public.core_team", 0, 0, 2),
        ("public.core_teammembership", 0, 0, 2),
    ]
    with psycopg.connect(stack.database_url("staging")) as conn:
        assert conn.execute("SELECT count(*) FROM core_task WHERE title LIKE '%% (py)'").fetchone()[0] == 4
    fix_undo(done_run_id(stack, "staging"), "staging")
    assert tenant_table_checksums(stack, "staging") == before


def test_a_fix_waits_for_a_held_lock_as_a_migration_does(promoted, make_target):
    import threading

    from tests.harness import hold_lock

    stack = promoted
    target = make_target("staging-fix-locks", lock_timeout_ms=300, max_lock_wait_s=60)
    before = tenant_table_checksums(stack, "staging")
    # A writer's lock: the fix's capture trigger must wait for it, is refused after 300 ms, and tries again.
    blocker = hold_lock(stack.database_url("staging"), "core_task", 1, threading.Event(), True, "ROW EXCLUSIVE")
    (done,) = run_fix([target])
    blocker.join()
    assert done.rows == 10 and tenant_table_checksums(stack, "staging")["core_task"] != before["core_task"]


def test_rows_outside_the_expected_bounds_stop_the_fix_before_anything_commits_anywhere(promoted):
    from dbpromote.errors import DbpromoteError

    stack = promoted
    before = {server: tenant_table_checksums(stack, server) for server in ("staging", "production")}
    with pytest.raises(DbpromoteError, match=r"would change 10 rows on staging, outside --expect-rows 1\.\.5"):
        run_fix(["staging", "production"], expect_rows="1..5")
    assert {server: tenant_table_checksums(stack, server) for server in ("staging", "production")} == before


def test_a_tenant_scoped_fix_changes_no_other_tenants_rows(promoted):
    stack = promoted
    first, *others = tenants(stack, "staging")
    with psycopg.connect(stack.database_url("staging")) as conn:
        before = conn.execute(
            "SELECT tenant_id::text, md5(string_agg(title, '|' ORDER BY id)) FROM core_task GROUP BY 1"
        )
        before = dict(before.fetchall())
    (done,) = run_fix(["staging"], script="UPDATE core_task SET title = 'everyone''s?'", tenants=[first])
    with psycopg.connect(stack.database_url("staging")) as conn:
        after = dict(
            conn.execute("SELECT tenant_id::text, md5(string_agg(title, '|' ORDER BY id)) FROM core_task GROUP BY 1")
        )
        mine = conn.execute("SELECT count(*) FROM core_task WHERE tenant_id = %s", [first]).fetchone()[0]
    assert done.rows == mine and done.tenants == [first]
    assert after[first] != before[first] and all(after[t] == before[t] for t in others)


def test_through_the_cli_production_waits_for_an_approval_showing_the_counts(promoted, tmp_path):
    from dbpromote.config import load_target
    from dbpromote.records import read_records
    from dbpromote.runs import answer_approval
    from tests.harness import approval_form_text

    stack = promoted
    script = tmp_path / "fix_task_titles.sql"
    script.write_text(SCRIPT)
    tenant = tenants(stack, "production")[0]
    started = cli("fix", "--project", "tenant-backend", "--through", "staging,production", "--script", str(script),
                  "--tenant", tenant, "--purpose", "ticket 42: titles in capitals", "--until-paused")  # fmt: skip
    assert started.returncode == 0, started.stderr
    run_id = started.stdout.split()[0]

    from prefect import get_client

    with get_client(sync_client=True) as client:
        form = approval_form_text(client.read_flow_run(run_id))
    assert "ticket 42: titles in capitals" in form and "| public.core_task |" in form
    assert "### Done on staging" in form
    answer_approval(run_id, "approve", "alice", "ok", acknowledge_risks=False)  # scoped: no risk to acknowledge
    assert wait_for_run(run_id).is_completed()

    (record,) = [r for r in read_records(load_target("production"), "fixes") if r["flow_run_id"] == run_id]
    assert record["script"] == "fix_task_titles.sql" and record["tenants"] == [tenant]
    assert record["before_images"].startswith("gs://") and record["backup"].startswith("gs://")
    assert json.dumps(record).count(tenant) >= 1

    (tmp_path / "fix.rb").write_text("puts 1")
    refused = cli("fix", "--project", "tenant-backend", "--through", "staging", "--script", str(tmp_path / "fix.rb"))
    assert refused.returncode == 1
    assert (
        refused.stderr.strip()
        == "error: fix.rb is neither a .sql nor a .py file; a fix script is SQL statements or Python."
    )


def test_a_fix_that_fails_staging_verify_scripts_leaves_production_untouched(promoted):
    from dbpromote.flows.fix import fix_undo

    from dbpromote.errors import DbpromoteError

    stack = promoted
    before = {server: tenant_table_checksums(stack, server) for server in ("staging", "production")}
    # One tenant loses its default task statuses: the project's verify script 002 fails after the fix.
    script = (
        "UPDATE core_taskstatus SET is_default = false "
        "WHERE is_default AND tenant_id = (SELECT id FROM core_tenant ORDER BY slug LIMIT 1)"
    )
    with pytest.raises(DbpromoteError, match=r"After the fix, staging fails its verify scripts: 002_default_statuses"):
        run_fix(["staging", "production"], script=script)
    assert tenant_table_checksums(stack, "production") == before["production"]
    assert tenant_table_checksums(stack, "staging") != before["staging"]
    fix_undo(done_run_id(stack, "staging"), "staging")  # the way back it named
    assert tenant_table_checksums(stack, "staging") == before["staging"]


def before_image_objects(target: str, fix_id: str) -> list[str]:
    from dbpromote.config import load_target
    from dbpromote.gcs import gcs_client

    database = load_target(target)
    folder = f"{database.prefix}/{target}/before-images/{fix_id}/"
    return [blob.name for blob in gcs_client().list_blobs(database.bucket, prefix=folder)]


def test_a_batched_fix_killed_mid_way_carries_on_without_applying_a_batch_twice(promoted, tmp_path):
    from dbpromote.flows.fix import fix_undo
    from prefect import get_client

    from dbpromote.config import load_target
    from dbpromote.records import read_records
    from tests.harness import crashed, kill, started, wait_until

    stack = promoted
    url = stack.database_url("staging")
    priorities = "SELECT id, priority FROM core_task"
    with psycopg.connect(url, autocommit=True) as conn:
        before = dict(conn.execute(priorities).fetchall())
        # Each batch's UPDATE takes a second here, so the kill lands between batches, as on a big table.
        conn.execute("CREATE FUNCTION slow_batches() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
                     "PERFORM pg_sleep(0.5); RETURN NULL; END $$")  # fmt: skip
        conn.execute("CREATE TRIGGER slow_batches AFTER UPDATE ON core_task FOR EACH STATEMENT "
                     "EXECUTE FUNCTION slow_batches()")  # fmt: skip
    script = tmp_path / "bump_priorities.sql"
    script.write_text("UPDATE core_task SET priority = priority + 1")  # a row updated twice would show it
    size = -(-len(before) // 8)
    batches = -(-len(before) // size)  # about eight
    try:
        run_id = started("fix", "--project", "tenant-backend", "--through", "staging", "--script", str(script),
                         "--batch-size", str(size), "--expect-rows", f"1..{len(before)}",
                         "--purpose", "bump")  # fmt: skip
        wait_until(lambda: len(before_image_objects("staging", run_id)) >= 3, "three batches", timeout_s=180)
        kill(stack, run_id, worker=False)
        crashed(run_id)
        with psycopg.connect(url) as conn:
            part_way = dict(conn.execute(priorities).fetchall())
        assert 0 < sum(part_way[t] != p for t, p in before.items()) < len(before)
        resumed = cli("resume", run_id, "--wait")
        assert resumed.returncode == 0, resumed.stderr
    finally:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("DROP TRIGGER slow_batches ON core_task; DROP FUNCTION slow_batches()")
    with psycopg.connect(url) as conn:
        after = dict(conn.execute(priorities).fetchall())
    assert after == {task: priority + 1 for task, priority in before.items()}  # every row once, none twice
    assert len(before_image_objects("staging", run_id)) == batches
    (record,) = [r for r in read_records(load_target("staging"), "fixes") if r["flow_run_id"] == run_id]
    assert record["batches"] == batches and record["rows"] == len(before) and record["run"] != run_id
    with get_client(sync_client=True) as client:
        assert client.read_flow_run(record["run"]).parameters["resume"] == run_id

    assert fix_undo(run_id, "staging") == len(before)  # every batch's rows, from all the objects
    with psycopg.connect(url) as conn:
        assert dict(conn.execute(priorities).fetchall()) == before


def test_the_journal_lists_promotions_fixes_and_rollbacks_with_their_facts(promoted):
    from dbpromote.flows.rollback import rollback

    from dbpromote.models.fix import FixScript

    rollback("tenant-backend", "staging")  # to the promotion's backup
    lines = cli("journal", "staging").stdout.splitlines()
    kinds = [line.split()[1] for line in lines]
    assert kinds[0] == "rollback" and {"fix", "fix-undo", "promotion"} <= set(kinds)
    assert "back to the migration state of the backup, plan " in lines[0] and "; backup backups/staging/" in lines[0]
    script_hash = FixScript(name="upper_titles.sql", source=SCRIPT).hash
    facts = f"script upper_titles.sql ({script_hash}) unscoped; purpose: titles in capitals; 10 rows; backup gs://"
    assert any(facts in line for line in lines), "\n".join(lines)

    notes = cli("journal", "production", "--markdown").stdout
    fix_entry = notes.split(": fix\n")[1].split("\n## ")[0]
    assert "- purpose: ticket 42: titles in capitals" in fix_entry and "- approved by: alice" in fix_entry
    assert "- before-images (`dbpromote fix-undo " in fix_entry and "- rows affected: 10" in fix_entry
    assert "approved by: alice" in notes.split(": promotion\n")[1]
    refused = cli("journal", "staging", "--since", "last week")
    assert refused.returncode == 1 and "is not a date" in refused.stderr
