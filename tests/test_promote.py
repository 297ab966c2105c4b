"""The promotion: staging first, approval, then production (promises 1 and 2)."""

import json
import subprocess

import psycopg
import pytest

from dbpromote.errors import ApprovalRejected, InputError, PreflightError
from tests.harness import RELEASE, PromotionInBackground, applied, target_changed


def test_promise_1_production_migrated_only_after_staging_backup_and_named_approval(fresh_databases, monkeypatch):
    from dbpromote import probe
    from dbpromote.backups import list_backups
    from dbpromote.config import load_target
    from dbpromote.gcs import gcs_client
    from dbpromote.records import read_records
    from dbpromote.runs import answer_approval

    # Counted, not changed: each Django process the promotion starts, and what for.
    started, start_probe = [], probe.start_probe
    monkeypatch.setattr(probe, "start_probe", lambda *a, **kw: started.append(a[2]) or start_probe(*a, **kw))
    promotion = PromotionInBackground()
    run = promotion.paused_run()
    assert applied(fresh_databases, "staging") == ["core.0001_initial", *RELEASE]
    assert applied(fresh_databases, "production") == ["core.0001_initial"]

    answer_approval(str(run.id), "approve", "alice", "release 42", acknowledge_risks=True)
    reports = promotion.finish()
    assert promotion.error is None, promotion.error
    assert [r.target for r in reports] == ["staging", "production"]
    assert applied(fresh_databases, "production") == ["core.0001_initial", *RELEASE]
    assert reports[0].plan.hash == reports[1].plan.hash
    production_backup = list_backups(load_target("production"))[0]
    assert production_backup.uri == reports[1].backup.uri
    audit = [
        b
        for b in gcs_client().list_blobs("dbpromote-backups", prefix="backups/production/approvals/")
        if str(run.id)[:8] in b.name
    ]
    record = json.loads(audit[0].download_as_bytes())
    assert record["approver"] == "alice" and record["subject"] == reports[1].plan.hash
    assert record["comment"] == "release 42" and record["items"] == RELEASE
    promotions = read_records(load_target("production"), "promotions")
    assert promotions[0]["flow_run_id"] == str(run.id) and promotions[0]["backup"] == production_backup.object_name
    # A target's own step publishes its tables beside its markdown, in its run (a fleet member, its markdown alone).
    tables = ["dbpromote-production-migrations", "rls-coverage-production", "rls-proof-production"]
    runs = {key: newest_artifact(key).flow_run_id for key in ["dbpromote-production", *tables]}
    assert len(set(runs.values())) == 1, runs
    # One Django for the promotion's checks and staging's step; another for production's after the approval (the
    # project's files may have changed while a person decided): not one for each.
    assert started == ["serve", "serve"], started


def newest_artifact(key: str):
    from prefect import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey
    from prefect.client.schemas.sorting import ArtifactSort

    with get_client(sync_client=True) as client:
        filtered = ArtifactFilter(key=ArtifactFilterKey(any_=[key]))
        return client.read_artifacts(artifact_filter=filtered, sort=ArtifactSort.CREATED_DESC, limit=1)[0]


def catalog_snapshot(stack, server: str) -> tuple[str, list]:
    """The schema as pg_dump prints it (minus 15.18's random \\restrict keys) and the migration table's rows."""
    from dbpromote.config import load_target
    from dbpromote.postgres import libpq_env

    schema = subprocess.run(
        ["pg_dump", "--schema-only"], env=libpq_env(load_target(server)), capture_output=True, text=True, check=True
    ).stdout
    schema = "\n".join(line for line in schema.splitlines() if not line.startswith(("\\restrict", "\\unrestrict")))
    with psycopg.connect(stack.database_url(server)) as conn:
        rows = conn.execute("SELECT id, app, name, applied FROM django_migrations ORDER BY id").fetchall()
    return schema, rows


def production_backups() -> list[str]:
    from dbpromote.backups import list_backups
    from dbpromote.config import load_target

    return [backup.uri for backup in list_backups(load_target("production"))]


@pytest.mark.parametrize("how", ["rejection", "timeout"])
def test_promise_2_rejection_or_timeout_leaves_production_byte_identical(fresh_databases, how):
    from dbpromote.runs import answer_approval

    before, backups_before = catalog_snapshot(fresh_databases, "production"), production_backups()
    if how == "rejection":
        promotion = PromotionInBackground()
        run = promotion.paused_run()
        answer_approval(str(run.id), "reject", "bob", "not today", acknowledge_risks=False)
        promotion.finish()
        expected = "bob rejected promoting to production (not today); production is untouched"
    else:
        promotion = PromotionInBackground(approval_timeout_s=3)
        promotion.finish()
        expected = "counts as a rejection; production is untouched"
    assert isinstance(promotion.error, ApprovalRejected)
    assert expected in str(promotion.error)
    assert catalog_snapshot(fresh_databases, "production") == before
    assert production_backups() == backups_before
    assert applied(fresh_databases, "staging")[-1] == RELEASE[-1]


def test_staging_failure_means_production_never_paused_nor_touched(fresh_databases):
    from dbpromote.errors import MigrationError
    from dbpromote.runs import pending_approvals

    with psycopg.connect(fresh_databases.database_url("staging")) as conn:
        conn.execute("ALTER TABLE core_project ADD COLUMN slug text")  # 0005 fails on staging
    before, backups_before = catalog_snapshot(fresh_databases, "production"), production_backups()
    paused_before = {run.id for run in pending_approvals()}
    with target_changed("staging", drift="off"):  # with drift on, preflight would stop it before 0005 ran
        promotion = PromotionInBackground()
        promotion.finish()
    assert isinstance(promotion.error, MigrationError)
    assert "core.0005_project_slug failed on staging" in str(promotion.error)
    assert {run.id for run in pending_approvals()} == paused_before
    assert catalog_snapshot(fresh_databases, "production") == before
    assert production_backups() == backups_before


def test_a_migration_added_after_staging_and_before_approval_stops_everything(fresh_databases, tmp_path):
    import shutil
    import sys
    import textwrap

    from dbpromote.config import DjangoProject
    from dbpromote.localstack import SAMPLE_PROJECT
    from dbpromote.runs import answer_approval

    copy = tmp_path / "project"
    shutil.copytree(SAMPLE_PROJECT, copy, ignore=shutil.ignore_patterns("__pycache__"))
    DjangoProject(path=str(copy), settings_module="tenant_backend.settings", python=sys.executable).save(
        "release-in-flux", overwrite=True
    )
    promotion = PromotionInBackground(project="release-in-flux")
    run = promotion.paused_run()
    (copy / "core/migrations/0009_hotfix.py").write_text(
        textwrap.dedent("""
        from django.db import migrations

        class Migration(migrations.Migration):
            dependencies = [("core", "0008_default_task_statuses")]
            operations = [migrations.RunSQL("UPDATE core_task SET priority = 1", migrations.RunSQL.noop)]
    """)
    )
    before = catalog_snapshot(fresh_databases, "production")
    answer_approval(str(run.id), "approve", "alice", "ok", acknowledge_risks=True)
    promotion.finish()
    assert isinstance(promotion.error, PreflightError)
    assert "The plan for production changed since it was staged and approved" in str(promotion.error)
    assert "new: core.0009_hotfix" in str(promotion.error) and "nothing was run on production" in str(promotion.error)
    assert catalog_snapshot(fresh_databases, "production") == before


def test_form_refuses_a_missing_approver_or_acknowledgement_and_keeps_waiting(fresh_databases):
    from prefect import get_client

    from dbpromote.runs import answer_approval, paused_form

    promotion = PromotionInBackground()
    run = promotion.paused_run()
    with get_client(sync_client=True) as client:
        assert "acknowledge_risky_operations" in paused_form(client, client.read_flow_run(run.id)).model_fields
    with get_client(sync_client=True) as client:
        no_approver = client.resume_flow_run(
            run.id, run_input={"decision": "approve", "acknowledge_risky_operations": True}
        )
        no_acknowledgement = client.resume_flow_run(run.id, run_input={"decision": "approve", "approver": "x"})
    assert no_approver.status.value == "REJECT" and "'approver' is a required property" in no_approver.details.reason
    assert no_acknowledgement.status.value == "REJECT"
    assert "'acknowledge_risky_operations' is a required property" in no_acknowledgement.details.reason
    assert promotion.paused_run().id == run.id
    with pytest.raises(InputError, match="has risky operations; read them at .* --acknowledge-risks"):
        answer_approval(str(run.id), "approve", "alice", "ok", acknowledge_risks=False)


def test_cli_approves_a_paused_promotion(fresh_databases):
    import os
    import sys
    from pathlib import Path

    promotion = PromotionInBackground()
    run = promotion.paused_run()
    dbpromote = str(Path(sys.executable).parent / "dbpromote")
    pending = subprocess.run([dbpromote, "pending"], capture_output=True, text=True, env=os.environ)
    assert str(run.id) in pending.stdout and "tenant-backend" in pending.stdout
    result = subprocess.run(
        [dbpromote, "approve", str(run.id), "--approver", "frank", "--comment", "cli", "--acknowledge-risks"],
        capture_output=True,
        text=True,
        env=os.environ,
    )
    assert result.returncode == 0, result.stderr
    promotion.finish()
    assert promotion.error is None, promotion.error
    assert applied(fresh_databases, "production")[-1] == RELEASE[-1]


@pytest.mark.parametrize(
    "args, message",
    [
        (["--project", "nope", "--through", "staging,production"], "Unknown project 'nope'"),
        (["--project", "tenant-backend", "--through", "staging,nowhere"], "Unknown target 'nowhere'"),
        (["--project", "tenant-backend", "--through", ","], "No environments given"),
        (
            ["--project", "tenant-backend", "--through", "production,staging"],
            "production requires approval, so it cannot come first",
        ),
        (["--project", "tenant-backend", "--through", "staging,production", "--to", "core"], "'core' is malformed"),
    ],
)
def test_cli_bad_promotion_input_is_one_sentence_and_changes_nothing(fresh_databases, args, message):
    import os
    import sys
    from pathlib import Path

    before = catalog_snapshot(fresh_databases, "staging")
    result = subprocess.run(
        [str(Path(sys.executable).parent / "dbpromote"), "promote", *args],
        capture_output=True,
        text=True,
        env=os.environ,
    )
    assert result.returncode == 1
    assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert catalog_snapshot(fresh_databases, "staging") == before


def test_approval_from_someone_not_listed_is_refused_and_the_run_keeps_waiting(fresh_databases, make_target):
    from prefect import get_client

    from dbpromote.errors import ApprovalRejected
    from dbpromote.runs import answer_approval, pending_approvals

    make_target("production-guarded", server="production", requires_approval=True, approvers=["carol"])
    promotion = PromotionInBackground(through=["staging", "production-guarded"])
    run = promotion.paused_run()
    # From the CLI the answer is refused before it is sent; over REST the run refuses it itself.
    with pytest.raises(ApprovalRejected, match="'mallory' may not approve production-guarded"):
        answer_approval(str(run.id), "approve", "mallory", "let me in", acknowledge_risks=True)
    answer = {"decision": "approve", "approver": "mallory", "comment": "let me in"}
    with get_client(sync_client=True) as client:
        client.resume_flow_run(run.id, run_input=answer | {"acknowledge_risky_operations": True})
    promotion.already_paused.discard(run.id)
    waiting = promotion.paused_run()  # the resume has taken it out of Paused: this is it pausing again
    assert waiting.id == run.id
    assert applied(fresh_databases, "production") == ["core.0001_initial"]
    answer_approval(str(run.id), "approve", "carol", "ok", acknowledge_risks=True)
    promotion.finish()
    assert promotion.error is None, promotion.error
    assert applied(fresh_databases, "production")[-1] == RELEASE[-1]
    assert not [r for r in pending_approvals() if r.id == run.id]


def test_promise_1_plan_changed_after_approval_runs_nothing(fresh_databases):
    from dbpromote.runs import answer_approval

    promotion = PromotionInBackground()
    run = promotion.paused_run()
    with psycopg.connect(fresh_databases.database_url("production")) as conn:
        # Someone applies part of the release by hand while the approval waits: the plan no longer matches.
        conn.execute("INSERT INTO django_migrations (app, name, applied) VALUES ('core', '0002_featureflag', now())")
    answer_approval(str(run.id), "approve", "alice", "ok", acknowledge_risks=True)
    promotion.finish()
    assert isinstance(promotion.error, PreflightError)
    assert "no longer pending: core.0002_featureflag" in str(promotion.error)
    assert "nothing was run on production" in str(promotion.error)
    assert applied(fresh_databases, "production") == ["core.0001_initial", "core.0002_featureflag"]


def test_production_that_staging_cannot_vouch_for_is_refused_before_anything(fresh_databases):
    from dbpromote.flows.promote import promote

    with psycopg.connect(fresh_databases.database_url("staging")) as conn:
        conn.execute("INSERT INTO django_migrations (app, name, applied) VALUES ('core', '0002_featureflag', now())")
        conn.execute("CREATE TABLE core_featureflag (id bigint)")
    with pytest.raises(PreflightError, match="only on production: core.0002_featureflag"):
        promote("tenant-backend", ["staging", "production"])
    assert applied(fresh_databases, "production") == ["core.0001_initial"]
    assert applied(fresh_databases, "staging") == ["core.0001_initial", "core.0002_featureflag"]
