"""The way back: restore, rollback, backup verification and retention, against the real stack."""

import json
import textwrap
import threading
from datetime import UTC, datetime, timedelta

import psycopg
import pytest
from psycopg import sql

from dbpromote.errors import ApprovalRejected, BackupError, PreflightError
from tests.harness import RELEASE, InBackground, applied


def tenant_table_checksums(stack, server: str) -> dict[str, tuple[int, str]]:
    """Per tenant-scoped table (and the tenants): row count and an md5 over every row in key order."""
    with psycopg.connect(stack.database_url(server)) as conn:
        tables = [
            row[0]
            for row in conn.execute(
                """
                SELECT table_name FROM information_schema.columns
                WHERE table_schema = 'public' AND column_name = 'tenant_id'
                UNION SELECT 'core_tenant' ORDER BY 1
                """
            )
        ]
        checksum = sql.SQL("SELECT count(*), coalesce(md5(string_agg(t::text, '|' ORDER BY t.id)), '') FROM {} t")
        return {table: conn.execute(checksum.format(sql.Identifier(table))).fetchone() for table in tables}


def change_data(stack, server: str) -> None:
    with psycopg.connect(stack.database_url(server)) as conn:
        conn.execute(
            "DELETE FROM core_taskcomment WHERE tenant_id = (SELECT id FROM core_tenant ORDER BY slug LIMIT 1)"
        )
        conn.execute("UPDATE core_task SET title = 'changed after the backup'")
        conn.execute(
            "INSERT INTO core_tenant (id, name, slug, created_at) VALUES (gen_random_uuid(), 'late', 'late', now())"
        )


def databases(stack, server: str) -> set[str]:
    with psycopg.connect(**stack.superuser_conninfo(server)) as conn:
        return {row[0] for row in conn.execute("SELECT datname FROM pg_database WHERE NOT datistemplate")}


def schema_shape(stack, server: str) -> tuple[set, set]:
    """Columns (type, nullability) and index names: what a rollback must give back, whatever the column order."""
    with psycopg.connect(stack.database_url(server)) as conn:
        columns = set(
            conn.execute(
                "SELECT table_name, column_name, data_type, is_nullable FROM information_schema.columns "
                "WHERE table_schema = 'public'"
            ).fetchall()
        )
        indexes = {row[0] for row in conn.execute("SELECT indexname FROM pg_indexes WHERE schemaname = 'public'")}
    return columns, indexes


def test_restore_round_trip_gives_back_every_tenant_row_and_keeps_the_replaced_database(fresh_databases):
    from dbpromote.flows.backup import backup
    from dbpromote.flows.restore import restore

    stack = fresh_databases
    taken = backup(["staging"])[0]
    before = tenant_table_checksums(stack, "staging")
    change_data(stack, "staging")
    changed = tenant_table_checksums(stack, "staging")
    assert changed != before
    app_session = psycopg.connect(stack.database_url("staging", role="django_app"), autocommit=True)

    restored = restore("staging", backup=taken.uri, disconnect_wait_s=1)

    assert tenant_table_checksums(stack, "staging") == before
    assert restored.tables >= 28 and restored.migration_state == [("core", "0001_initial")]
    with pytest.raises(psycopg.OperationalError):  # the application's session was ended, not left on the old data
        app_session.execute("SELECT 1")
    assert restored.replaced in databases(stack, "staging")  # nothing is lost: the replaced database is kept
    kept_url = stack.database_url("staging").rsplit("/", 1)[0] + "/" + restored.replaced
    with psycopg.connect(kept_url) as conn:
        assert conn.execute("SELECT count(*) FROM core_tenant WHERE slug = 'late'").fetchone()[0] == 1
    with psycopg.connect(stack.database_url("staging", role="django_app")) as conn:  # the app may connect again
        assert conn.execute("SELECT 1").fetchone() == (1,)


def test_promise_7_a_restore_run_again_after_its_swap_swaps_nothing_twice(fresh_databases):
    from dbpromote.flows.backup import backup
    from dbpromote.flows.restore import restore
    from prefect import flow

    stack = fresh_databases
    taken = backup(["staging"])[0]
    change_data(stack, "staging")
    before = databases(stack, "staging")

    @flow
    def restore_then_run_again():  # the same flow run, as when a crashed run is retried
        return [restore.fn("staging", backup=taken.uri, disconnect_wait_s=1) for _ in range(2)]

    first, again = restore_then_run_again()

    assert again.replaced == first.replaced
    assert databases(stack, "staging") - before == {first.replaced}  # one swap, one kept database


def test_a_restore_that_fails_half_way_leaves_the_target_as_it_was(fresh_databases):
    from dbpromote.flows.backup import backup
    from dbpromote.flows.restore import restore

    from dbpromote.backups import list_backups
    from dbpromote.config import load_target
    from dbpromote.gcs import gcs_client

    stack = fresh_databases
    taken = backup(["staging"])[0]
    # The fault, at the real boundary: the stored object loses its second half (same name, same metadata).
    blob = gcs_client().bucket(taken.bucket).get_blob(taken.object_name)
    whole = blob.download_as_bytes()
    blob.metadata = blob.metadata  # sent with the upload: it stays listed as a verified backup
    blob.upload_from_string(whole[: len(whole) // 2])
    assert taken.uri in {b.uri for b in list_backups(load_target("staging"))}
    change_data(stack, "staging")
    before, names = tenant_table_checksums(stack, "staging"), databases(stack, "staging")

    with pytest.raises(BackupError) as error:
        restore("staging", backup=taken.uri, disconnect_wait_s=1)

    message = str(error.value)
    assert "the new database was dropped and staging is as it was" in message, message
    assert tenant_table_checksums(stack, "staging") == before
    assert databases(stack, "staging") == names  # no half-restored database left behind


def test_restore_over_a_target_requiring_approval_waits_and_a_rejection_changes_nothing(fresh_databases):
    from dbpromote.flows.backup import backup
    from dbpromote.flows.restore import restore

    from dbpromote.runs import answer_approval

    stack = fresh_databases
    taken = backup(["production"])[0]
    change_data(stack, "production")
    before, names = tenant_table_checksums(stack, "production"), databases(stack, "production")

    restoring = InBackground(restore, target="production", backup=taken.uri, approval_poll_s=1)
    run = restoring.paused_run()
    assert databases(stack, "production") == names  # nothing restored while it waits
    answer_approval(str(run.id), "reject", "carol", "wrong backup", acknowledge_risks=False)
    restoring.finish()

    assert isinstance(restoring.error, ApprovalRejected), restoring.error
    assert "carol rejected restoring production from a backup (wrong backup)" in str(restoring.error)
    assert tenant_table_checksums(stack, "production") == before
    assert databases(stack, "production") == names


def test_rollback_of_the_sample_release_returns_to_v1(fresh_databases):
    from dbpromote.flows.environment import migrate_environment
    from dbpromote.flows.rollback import rollback

    stack = fresh_databases
    v1_shape = schema_shape(stack, "staging")
    release = migrate_environment("tenant-backend", "staging")
    tenants = tenant_table_checksums(stack, "staging")["core_tenant"]

    report = rollback("tenant-backend", "staging", backup=release.backup.uri)

    assert [m.label for m in report.migrations] == list(reversed(RELEASE))
    assert applied(stack, "staging") == ["core.0001_initial"]
    assert schema_shape(stack, "staging") == v1_shape
    assert tenant_table_checksums(stack, "staging")["core_tenant"] == tenants
    assert report.verification.passed and report.isolation is not None
    assert report.backup is not None and report.backup.migration_state[-1] == ("core", RELEASE[-1].split(".")[1])


def test_rollback_is_refused_before_anything_when_a_migration_cannot_be_reversed(fresh_databases, project_copy):
    from dbpromote.flows.environment import migrate_environment
    from dbpromote.flows.rollback import rollback

    stack = fresh_databases
    project = project_copy("one-way")
    (project_copy.folder / "core/migrations/0009_one_way.py").write_text(
        textwrap.dedent("""
        from django.db import migrations

        def forwards(apps, schema_editor):
            pass

        class Migration(migrations.Migration):
            dependencies = [("core", "0008_default_task_statuses")]
            operations = [migrations.RunPython(forwards)]
    """)
    )
    release = migrate_environment(project, "staging")
    state = applied(stack, "staging")

    with pytest.raises(PreflightError) as error:
        rollback(project, "staging", backup=release.backup.uri)

    message = str(error.value)
    assert "core.0009_one_way cannot be reversed" in message, message
    assert f"dbpromote restore staging --backup {release.backup.uri}" in message
    assert applied(stack, "staging") == state


def test_verify_backups_restores_the_newest_of_each_target_and_leaves_nothing_behind(fresh_databases):
    from dbpromote.flows.backup import backup
    from dbpromote.flows.restore import verify_backups

    stack = fresh_databases
    taken = backup(["staging", "production"])
    names = {server: databases(stack, server) for server in ("staging", "production")}

    results = verify_backups(["staging", "production"])

    assert [r.backup.uri for r in results] == [b.uri for b in taken]
    assert all(r.rows > 0 and r.migration_state == [("core", "0001_initial")] for r in results)
    assert {server: databases(stack, server) for server in ("staging", "production")} == names


def test_retention_keeps_referenced_and_recent_backups_and_deletes_only_what_the_rules_allow(
    fresh_databases, make_target
):
    from dbpromote.flows.backup import backup

    from dbpromote.backups import list_backups
    from dbpromote.config import load_target
    from dbpromote.gcs import gcs_client
    from dbpromote.records import write_record

    name = make_target("retention-staging", prefix=f"retention-{datetime.now(UTC):%H%M%S%f}")
    target = load_target(name)
    b1, b2, b3, b4 = (backup([name])[0] for _ in range(4))
    bucket = gcs_client().bucket(target.bucket)
    for old, days in ((b1, 40), (b2, 30), (b3, 20)):  # taken long ago, as far as retention can tell
        blob = bucket.get_blob(old.object_name)
        blob.metadata = blob.metadata | {"created_at": (datetime.now(UTC) - timedelta(days=days)).isoformat()}
        blob.patch()
    # Two dumps whose backup stopped before verification (a killed worker): one from yesterday, one in progress.
    stopped, in_progress = (bucket.blob(f"{target.prefix}/{name}/db/{when}-stopped.dump.zst") for when in (1, 2))
    for blob, hours in ((stopped, 25), (in_progress, 0)):
        blob.metadata = {"created_at": (datetime.now(UTC) - timedelta(hours=hours)).isoformat()}
        blob.upload_from_string(b"part of a dump")
    write_record(target, "promotions", "older-run", {"flow_run_id": "older-run", "backup": b2.object_name})
    write_record(target, "promotions", "newest-run", {"flow_run_id": "newest-run", "backup": b1.object_name})
    write_record(target, "rollbacks", "rollback-run", {"flow_run_id": "rollback-run", "backup": b3.object_name})
    b2_manifest = b2.manifest_name

    b5 = backup([name], keep_last=2, keep_days=10)[0]

    remaining = {b.uri for b in list_backups(target)}
    assert remaining == {b5.uri, b4.uri, b3.uri, b1.uri}  # newest two, the rollback's, the newest promotion's
    assert bucket.get_blob(b2.object_name) is None and bucket.get_blob(b2_manifest) is None
    assert bucket.get_blob(stopped.name) is None and bucket.get_blob(in_progress.name) is not None
    # Young backups stay whatever keep_last says: b4 and b5 are no longer the newest, but younger than 10 days.
    b6 = backup([name], keep_last=1, keep_days=10)[0]
    assert {b.uri for b in list_backups(target)} == {b6.uri, b5.uri, b4.uri, b3.uri, b1.uri}


def test_retention_refuses_rules_that_keep_nothing(fresh_databases):
    from dbpromote.flows.backup import backup

    from dbpromote.errors import InputError

    with pytest.raises(InputError) as error:
        backup(["staging"], keep_last=-1)
    assert "would keep no backup" in str(error.value)


def test_the_backup_manifest_holds_the_rows_and_state_of_the_dump(fresh_databases):
    from dbpromote.flows.backup import backup

    from dbpromote.backups import read_manifest
    from dbpromote.config import load_target

    stack = fresh_databases
    taken = backup(["staging"])[0]
    manifest = read_manifest(taken, load_target("staging"))
    counts = tenant_table_checksums(stack, "staging")
    assert {table: manifest.row_counts[f"public.{table}"] for table in counts} == {t: c[0] for t, c in counts.items()}
    assert manifest.migration_state == [("core", "0001_initial")] and manifest.crc32c == taken.crc32c
    assert json.loads(json.dumps(manifest.model_dump()))["size_bytes"] == taken.size_bytes


def test_rehearsal_durations_show_in_the_approval_form_and_a_slow_migration_is_flagged(fresh_databases, project_copy):

    from dbpromote.runs import answer_approval
    from tests.harness import PromotionInBackground, approval_form_text

    stack = fresh_databases
    project = project_copy("slow-release")
    (project_copy.folder / "core/migrations/0009_slow_backfill.py").write_text(
        textwrap.dedent("""
        from django.db import migrations

        class Migration(migrations.Migration):
            dependencies = [("core", "0008_default_task_statuses")]
            operations = [migrations.RunSQL("SELECT pg_sleep(3)", migrations.RunSQL.noop)]
    """)
    )
    servers_before = databases(stack, "staging")

    promotion = PromotionInBackground(project=project, rehearse=True, rehearsal_slow_s=2)
    run = promotion.paused_run()
    description = approval_form_text(run)

    section = description.split("### Rehearsal on production's data")[1].split("###")[0]
    rows = [line.split("|") for line in section.splitlines() if line.startswith("| core.")]
    assert [row[1].strip() for row in rows] == [*RELEASE, "core.0009_slow_backfill"]
    assert all(float(row[2]) > 0 for row in rows)
    assert [row[1].strip() for row in rows if row[4].strip() == "**yes**"] == ["core.0009_slow_backfill"]
    risk = "core.0009_slow_backfill: took "
    assert risk in description and "on a rehearsal with production's data (bound 2 s)" in description
    assert applied(stack, "production") == ["core.0001_initial"]  # the rehearsal ran on a copy
    assert databases(stack, "staging") == servers_before  # and dropped it

    answer_approval(str(run.id), "reject", "dana", "too slow", acknowledge_risks=False)
    promotion.finish()
    assert isinstance(promotion.error, ApprovalRejected)
    assert applied(stack, "production") == ["core.0001_initial"]


def test_cli_restore_runs_the_restore_deployment_on_the_worker(fresh_databases):
    import os
    import subprocess
    import sys
    from pathlib import Path

    from dbpromote.flows.backup import backup

    stack = fresh_databases
    taken = backup(["staging"])[0]
    before = tenant_table_checksums(stack, "staging")
    change_data(stack, "staging")
    dbpromote = str(Path(sys.executable).parent / "dbpromote")

    done = subprocess.run([dbpromote, "restore", "staging", "--wait"], capture_output=True, text=True, env=os.environ)

    assert done.returncode == 0, done.stdout + done.stderr
    assert f"restoring {taken.uri}" in done.stdout
    assert tenant_table_checksums(stack, "staging") == before
    unknown = subprocess.run(
        [dbpromote, "restore", "staging", "--backup", "gs://nowhere/x"], capture_output=True, text=True, env=os.environ
    )
    assert unknown.returncode == 1
    assert "gs://nowhere/x is not a verified backup of target 'staging'; list them with" in unknown.stderr


def test_rollback_waits_for_a_held_lock_with_the_same_safety_as_migrate(fresh_databases, make_target):
    from dbpromote.flows.environment import migrate_environment
    from dbpromote.flows.rollback import rollback

    from tests.harness import hold_lock

    stack = fresh_databases
    target = make_target("staging-rollback-locks", lock_timeout_ms=300, max_lock_wait_s=60)
    release = migrate_environment("tenant-backend", target, to="core:0003_task_priority")
    blocker = hold_lock(stack.database_url("staging"), "core_task", 1, threading.Event(), after_a_wait=True)

    report = rollback("tenant-backend", target, backup=release.backup.uri)

    blocker.join()
    by_label = {result.label: result for result in report.migrations}
    assert by_label["core.0003_task_priority"].attempts > 1  # its lock was refused, then retried
    assert applied(stack, "staging") == ["core.0001_initial"]


def test_cli_rollback_runs_the_rollback_deployment_on_the_worker(fresh_databases):
    import os
    import subprocess
    import sys
    from pathlib import Path

    from dbpromote.flows.environment import migrate_environment

    stack = fresh_databases
    release = migrate_environment("tenant-backend", "staging")
    dbpromote = str(Path(sys.executable).parent / "dbpromote")
    command = [dbpromote, "rollback", "staging", "--project", "tenant-backend", "--backup", release.backup.uri]

    done = subprocess.run([*command, "--wait"], capture_output=True, text=True, env=os.environ)

    assert done.returncode == 0, done.stdout + done.stderr
    assert "finished: Completed" in done.stdout
    assert applied(stack, "staging") == ["core.0001_initial"]


def test_cli_backup_says_why_it_failed_and_checks_the_name_before_starting_anything(fresh_databases, make_target):
    import os
    import subprocess
    import sys
    from pathlib import Path

    dbpromote = str(Path(sys.executable).parent / "dbpromote")
    target = make_target("staging-without-bucket", bucket="no-such-bucket")

    failed = subprocess.run([dbpromote, "backup", target, "--wait"], capture_output=True, text=True, env=os.environ)
    unknown = subprocess.run(
        [dbpromote, "backup", "no-such-target", "--wait"], capture_output=True, text=True, env=os.environ
    )

    assert failed.returncode == 1 and "finished: Failed" in failed.stdout
    assert f"error: The backup bucket 'no-such-bucket' of target '{target}' does not exist" in failed.stderr
    assert f"dbpromote target add {target} --bucket NAME" in failed.stderr
    assert unknown.returncode == 1 and unknown.stdout == ""  # refused before any run was created
    assert "error: Unknown target 'no-such-target'; register it with `dbpromote target add" in unknown.stderr
