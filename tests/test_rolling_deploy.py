"""Issue 32 on real servers: which migrations the running release survives, computed from the migration states by
the probe in the project's interpreter and proven by running the previous release's models against the migrated
database; the phases in `check`; and a promotion in two phases around the application's deploy."""

import base64
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap

import httpx
import psycopg
import pytest

from dbpromote import localstack as local_stack
from tests.harness import (
    RELEASE,
    applied,
    approval_form_text,
    ci_check,
    cli,
    crashed,
    kill,
    run_processes,
    table_locked,
    target_changed,
    wait_for_run,
    wait_until,
    waits_for_a_lock,
)


def migrate_sample(stack, server: str, app: str, name: str, folder=local_stack.SAMPLE_PROJECT) -> None:
    """`manage.py migrate APP NAME` on a stack's database, as a release before this one left it."""
    env = os.environ | {"DATABASE_URL": stack.database_url(server)}
    subprocess.run([sys.executable, "manage.py", "migrate", app, name, "-v0"], cwd=folder, env=env, check=True)


PROMOTE = ["promote", "--project", "tenant-backend", "--through", "staging,production"]


def phases_and_fields(report: dict) -> dict[str, tuple[str, list[str]]]:
    return {
        m["name"]: (m["phase"], [change["field"] for change in m["breaking"] if change["severity"] == "breaks"])
        for m in report["plan"]["migrations"]
    }


def test_the_sample_release_breaks_the_release_before_it_and_check_says_which_migrations_wait(fresh_databases):
    stack = fresh_databases
    migrate_sample(stack, "staging", "core", "0002_featureflag")
    checked = ci_check(stack, "staging", "--json")
    assert checked.returncode == 1, checked.stderr
    report = json.loads(checked.stdout)
    found = phases_and_fields(report)
    # 0003 adds priority NOT NULL with a Python-side default: the column has no database default, so the
    # previous release's INSERT (which leaves it out) fails; everything after it depends on it.
    assert found["0003_task_priority"] == ("after-deploy", ["priority"])
    assert {phase for phase, _ in found.values()} == {"after-deploy"}
    breaks = [line for line in report["blocking"] if line.startswith("breaks the running release: ")]
    assert len(breaks) == 3 and "core.0003_task_priority: core.Task: new column priority is NOT NULL" in breaks[0]

    migrate_sample(stack, "staging", "core", "0004_task_tenant_created_idx")
    found = phases_and_fields(json.loads(ci_check(stack, "staging", "--json").stdout))
    assert found == {
        "0005_project_slug": ("before-deploy", []),  # a nullable column and a backfill: the old release survives
        "0006_rename_milestone_due": ("after-deploy", ["due"]),
        "0007_remove_invoice_legacy_reference": ("after-deploy", ["legacy_reference"]),
        "0008_default_task_statuses": ("after-deploy", []),  # depends on 0007
    }
    markdown = ci_check(stack, "staging").stdout
    assert "| core.0005_project_slug | before-deploy |" in markdown
    assert "| core.0006_rename_milestone_due | after-deploy (breaks the running release) |" in markdown


def test_the_previous_release_s_own_code_is_judged_where_its_models_and_migrations_disagree(fresh_databases, tmp_path):
    """A team removed Invoice.legacy_reference from its model and shipped that release without the migration
    (0007 comes with the next one). Its code no longer reads the column, so dropping it breaks nothing, though
    the migration state at the applied migrations still has the field."""
    stack = fresh_databases
    migrate_sample(stack, "staging", "core", "0006_rename_milestone_due")
    previous = tmp_path / "previous"
    shutil.copytree(local_stack.SAMPLE_PROJECT, previous, ignore=shutil.ignore_patterns("__pycache__"))
    for later in ("0007_remove_invoice_legacy_reference.py", "0008_default_task_statuses.py"):
        (previous / "core" / "migrations" / later).unlink()

    by_state = phases_and_fields(json.loads(ci_check(stack, "staging", "--json").stdout))
    assert by_state["0007_remove_invoice_legacy_reference"] == ("after-deploy", ["legacy_reference"])
    checked = ci_check(stack, "staging", "--json", "--previous-code", str(previous))
    report = json.loads(checked.stdout)
    assert phases_and_fields(report) == {
        "0007_remove_invoice_legacy_reference": ("before-deploy", []),
        "0008_default_task_statuses": ("before-deploy", []),
    }
    assert checked.returncode == 1  # the lint risks stay (a drop, RunPython): only the break is gone
    assert not [line for line in report["blocking"] if line.startswith("breaks the running release")]
    notes = "\n".join(report["notes"])
    assert f"the previous code at {previous} has models that differ from its migrations in core (Remove field " in notes
    missing = ci_check(stack, "staging", "--previous-code", str(tmp_path))
    assert missing.returncode == 1
    assert missing.stderr.startswith(
        f"error: --previous-code {tmp_path} holds no manage.py; give the folder of the previous release's tree."
    )


SCRATCH_MODELS = """
from django.db import models


class Article(models.Model):
    title = models.CharField(max_length=50)
    content = models.TextField()
    code = models.CharField(max_length=10)
    subtitle = models.CharField(max_length=80, null=True)
    views = models.IntegerField(db_default=0)
    rating = models.IntegerField(default=0)
    summary = models.TextField(null=True)

    class Meta:
        app_label = "scratch"


class Note(models.Model):
    text = models.TextField()

    class Meta:
        app_label = "scratch"
        db_table = "scratch_notes"
"""

# The previous release (0001), then one migration per case, the compatible ones first so that graph order does not
# carry their neighbours into the after-deploy phase.
SCRATCH_MIGRATIONS = {
    "0001_initial": """
        operations = [
            migrations.CreateModel("Article", [
                ("id", models.BigAutoField(primary_key=True)),
                ("title", models.CharField(max_length=50)),
                ("body", models.TextField()),
                ("legacy", models.CharField(max_length=20)),
                ("code", models.CharField(max_length=20)),
                ("ghost", models.CharField(max_length=20, null=True)),
            ]),
            migrations.CreateModel(
                "Note", [("id", models.BigAutoField(primary_key=True)), ("text", models.TextField())]
            ),
            migrations.CreateModel("Gone", [("id", models.BigAutoField(primary_key=True))]),
        ]
    """,
    "0002_add_nullable": 'operations = [migrations.AddField("article", "subtitle", models.CharField(max_length=80, null=True))]',  # noqa: E501
    "0003_add_db_default": 'operations = [migrations.AddField("article", "views", models.IntegerField(db_default=0))]',
    "0004_widen": 'operations = [migrations.AlterField("article", "title", models.CharField(max_length=200))]',
    "0005_state_only": """
        operations = [
            migrations.SeparateDatabaseAndState(state_operations=[migrations.RemoveField("article", "ghost")])
        ]
    """,
    "0006_marked": """
        safe = Safe.after_deploy(delay=timedelta(minutes=5))
        operations = [migrations.AddField("article", "summary", models.TextField(null=True))]
    """,
    "0007_drop_ghost": """
        operations = [migrations.SeparateDatabaseAndState(database_operations=[
            migrations.RunSQL('ALTER TABLE "scratch_article" DROP COLUMN "ghost"', migrations.RunSQL.noop),
        ])]
    """,
    "0008_remove": 'operations = [migrations.RemoveField("article", "legacy")]',
    "0009_rename": 'operations = [migrations.RenameField("article", "body", "content")]',
    "0010_table": 'operations = [migrations.AlterModelTable("note", "scratch_notes")]',
    "0011_delete": 'operations = [migrations.DeleteModel("gone")]',
    "0012_not_null": 'operations = [migrations.AddField("article", "rating", models.IntegerField(default=0))]',
    "0013_narrow": 'operations = [migrations.AlterField("article", "code", models.CharField(max_length=10))]',
    "0014_widen_title_back": 'operations = [migrations.AlterField("article", "title", models.CharField(max_length=50))]',  # noqa: E501
}


def scratch_app(project_copy) -> None:
    """A `scratch` app in the copy of the sample project, its migrations written as SCRATCH_MIGRATIONS says."""
    app = project_copy.folder / "scratch"
    (app / "migrations").mkdir(parents=True)
    (app / "__init__.py").write_text("")
    (app / "models.py").write_text(SCRATCH_MODELS)
    (app / "migrations" / "__init__.py").write_text("")
    previous = None
    for name, body in SCRATCH_MIGRATIONS.items():
        depends = f'[("scratch", "{previous}")]' if previous else "[]"
        (app / "migrations" / f"{name}.py").write_text(
            "from datetime import timedelta\n\nfrom django.db import migrations, models\n"
            "from django_safemigrate import Safe\n\n\nclass Migration(migrations.Migration):\n"
            f"    dependencies = {depends}\n" + textwrap.indent(textwrap.dedent(body).strip(), "    ") + "\n"
        )
        previous = name
    project_copy.add_settings('INSTALLED_APPS = [*INSTALLED_APPS, "scratch"]')


def test_each_kind_of_change_is_judged_and_the_proof_runs_the_old_models_against_the_new_schema(
    fresh_databases, project_copy
):
    from dbpromote.config import load_project, load_target
    from dbpromote.probe import run_probe

    stack = fresh_databases
    scratch_app(project_copy)
    project = load_project(project_copy("scratch-project"))
    migrate_sample(stack, "staging", "scratch", "0001_initial", folder=project_copy.folder)
    target = load_target("staging")

    plan = run_probe(project, target, "plan", "--to", "scratch:0014_widen_title_back")
    found = {m.name: sorted((c.kind, c.field, c.breaks, c.severity) for c in m.breaking) for m in plan.migrations}
    gone = "reads and writes"
    assert found == {
        "0002_add_nullable": [],
        "0003_add_db_default": [],  # Django 5's db_default: the database fills it for the old INSERT
        "0004_widen": [],  # varchar(50) -> varchar(200) holds every value
        "0005_state_only": [],  # the column stays: the state forgets it
        "0006_marked": [],
        "0007_drop_ghost": [("column-gone", "ghost", gone, "breaks")],  # the database-only drop, in raw SQL
        "0008_remove": [("column-gone", "legacy", gone, "breaks")],
        "0009_rename": [("column-gone", "body", gone, "breaks")],
        "0010_table": [("table-gone", "", gone, "breaks")],
        "0011_delete": [("table-gone", "", gone, "breaks")],
        "0012_not_null": [("not-null-without-db-default", "rating", "writes", "breaks")],
        "0013_narrow": [("type-changed", "code", "writes", "breaks")],  # varchar(20) -> varchar(10)
        "0014_widen_title_back": [],  # narrower than 0004 left it, but not than the old release's own 50
    }
    markers = {m.name: (m.marker, m.marker_delay_s) for m in plan.migrations if m.marker}
    assert markers == {"0006_marked": ("after_deploy", 300.0)}  # django-safemigrate's own Safe, as it documents

    from dataclasses import asdict

    from dbpromote.models.plan import PlannedMigration, assign_phases

    planned = [PlannedMigration.model_validate(asdict(m)) for m in plan.migrations]
    assign_phases(planned)
    phases = {m.name: m.phase for m in planned}
    assert [name for name, phase in phases.items() if phase == "before-deploy"] == [
        "0002_add_nullable", "0003_add_db_default", "0004_widen", "0005_state_only"
    ]  # fmt: skip
    assert planned[4].phase_reason == "marked after_deploy"

    state = [list(key) for key in plan.applied]  # the previous release: the scratch app at 0001
    migrate_sample(stack, "staging", "scratch", "0005_state_only", folder=project_copy.folder)
    before_deploy = run_probe(project, target, "prove", "--state", json.dumps(state))
    assert before_deploy.failures == [] and before_deploy.models >= 28  # the sample's 28 models, and scratch's
    migrate_sample(stack, "staging", "scratch", "0014_widen_title_back", folder=project_copy.folder)
    everything = run_probe(project, target, "prove", "--state", json.dumps(state))
    failed = {(f.table, f.action): f.sqlstate for f in everything.failures}
    assert failed == {
        ("scratch_article", "reads"): "42703",  # undefined_column
        ("scratch_article", "writes"): "42703",
        ("scratch_note", "reads"): "42P01",  # undefined_table (renamed to scratch_notes)
        ("scratch_note", "writes"): "42P01",
        ("scratch_gone", "reads"): "42P01",
        ("scratch_gone", "writes"): "42P01",
    }
    with psycopg.connect(stack.database_url("staging")) as conn:  # nothing the proof ran stayed
        assert conn.execute("SELECT count(*) FROM scratch_article").fetchone() == (0,)
        assert conn.execute("SELECT count(*) FROM scratch_notes").fetchone() == (0,)


@pytest.fixture
def rolling(fresh_databases):
    """Both sample targets deployed rolling for the test's length (the session's are `stopped`)."""
    with target_changed("staging", deploy="rolling"), target_changed("production", deploy="rolling"):
        yield fresh_databases


def waits_for_deploy(run_id: str):
    """The run once it waits for the app deploy (suspended: no flow-run process alive); fails if it ends first."""
    from dbpromote.runs import paused_for

    return paused_for(run_id, "deploy", timeout_s=300)


def resume_over_rest(stack, run_id: str, answer: dict) -> httpx.Response:
    """Prefect's own REST API, as a CD pipeline would answer: POST /flow_runs/{id}/resume with the form's fields."""
    env = stack.client_env()
    credential = env.get("PREFECT_API_AUTH_STRING")
    headers = {"Authorization": "Basic " + base64.b64encode(credential.encode()).decode()} if credential else {}
    url = f"{env['PREFECT_API_URL'].rstrip('/')}/flow_runs/{run_id}/resume"
    return httpx.post(url, json={"run_input": answer}, headers=headers, timeout=30)


def test_a_promotion_waits_for_the_app_deploy_between_its_phases_on_staging_and_production(rolling):
    from dbpromote.runs import answer_approval, pending_approvals

    stack = rolling
    typed = cli("promote", "--project", "tenant-backend", "--through", "staging,production", "--until-paused")
    assert typed.returncode == 0, typed.stderr
    run_id = typed.stdout.split()[0]
    assert f"dbpromote deployed {run_id} --release LABEL --by YOUR_NAME" in typed.stdout

    run = waits_for_deploy(run_id)
    assert applied(stack, "staging") == ["core.0001_initial", "core.0002_featureflag"]  # before-deploy only
    assert applied(stack, "production") == ["core.0001_initial"]
    wait_until(lambda: run_processes(run_id) == {}, "the suspended run's process to end", timeout_s=30)
    form = approval_form_text(run)
    assert "Deploy the new release of **tenant-backend** now: staging waits for it" in form
    assert "core.0003_task_priority, core.0004_task_tenant_created_idx" in form
    assert f"{run_id}  promote" in cli("pending").stdout and "waits for the app deploy" in cli("pending").stdout

    refused = cli("approve", run_id, "--approver", "alice", "--acknowledge-risks")
    assert refused.returncode == 1
    assert refused.stderr.strip() == (
        f"error: Run {run_id} waits for the application's deploy, not for an approval; once the new release serves "
        f"everywhere, say so with `dbpromote deployed {run_id} --release LABEL --by YOUR_NAME`."
    )
    said = cli("deployed", run_id, "--release", "v2.0.0", "--by", "carol")
    assert said.returncode == 0, said.stderr

    approval = wait_for_approval(run_id)
    assert applied(stack, "staging") == ["core.0001_initial", *RELEASE]
    early = cli("deployed", run_id, "--release", "v2.0.0", "--by", "carol")  # production has not been approved yet
    assert early.returncode == 1
    assert early.stderr.strip().startswith(f"error: Run {run_id} is not waiting for a deploy (it is ")
    form = approval_form_text(approval)  # staging's proof, beside what was computed
    assert (
        'proven: core.0003_task_priority: core.Task writes fail: IntegrityError: null value in column "priority"'
        in form
    )
    assert "proven: core.0007_remove_invoice_legacy_reference: core.Invoice reads fail: " in form
    answer_approval(str(approval.id), "approve", "alice", "release", acknowledge_risks=True)

    waits_for_deploy(run_id)
    assert applied(stack, "production") == ["core.0001_initial", "core.0002_featureflag"]
    response = resume_over_rest(stack, run_id, {"deployed_by": "ci", "release": "v2.0.0", "comment": "argo sync"})
    assert response.status_code in (200, 201), response.text
    ended = wait_for_run(run_id)
    assert ended.is_completed(), ended.message
    assert applied(stack, "production") == applied(stack, "staging") == ["core.0001_initial", *RELEASE]
    assert not [r for r in pending_approvals() if str(r.id) == run_id]

    from dbpromote.config import load_target
    from dbpromote.journal import read_target_journal

    deploys = {t: read_target_journal(load_target(t), run_id).deployed for t in ("staging", "production")}
    assert (deploys["staging"].deployed_by, deploys["staging"].release) == ("carol", "v2.0.0")
    assert (deploys["production"].deployed_by, deploys["production"].comment) == ("ci", "argo sync")
    journal = cli("journal", "production")
    assert "plan " in journal.stdout and "in two phases, v2.0.0 deployed between them by ci;" in journal.stdout, (
        journal.stdout
    )


def wait_for_approval(run_id: str):
    """The run once it waits for an approval (not for a deploy)."""
    from dbpromote.runs import paused_for

    return paused_for(run_id, "approval", timeout_s=300)


def test_the_deploy_wait_outlives_its_worker_and_a_crash_in_the_after_deploy_phase_is_resumed(rolling):
    """Production deployed rolling (staging deploys itself: --no-deploy-wait-on-staging). The deploy wait holds
    no process, so the machine may die then; the deploy is confirmed, and the new process is SIGKILLed while the
    after-deploy phase waits for a lock; `dbpromote resume` carries it on without asking for the deploy again."""
    from dbpromote.backups import list_backups
    from dbpromote.config import load_target
    from dbpromote.journal import read_target_journal

    stack = rolling
    before = {b.object_name for b in list_backups(load_target("production"))}
    typed = cli(*PROMOTE, "--no-deploy-wait-on-staging", "--until-paused")
    assert typed.returncode == 0, typed.stderr
    run_id = typed.stdout.split()[0]
    assert applied(stack, "staging") == ["core.0001_initial", *RELEASE]  # one phase there
    approved = cli("approve", run_id, "--approver", "alice", "--acknowledge-risks")
    assert approved.returncode == 0, approved.stderr
    waits_for_deploy(run_id)
    wait_until(lambda: run_processes(run_id) == {}, "the suspended run's process to end", timeout_s=30)
    os.kill(local_stack.Stack.load(stack.home).pids["worker"], signal.SIGKILL)
    local_stack.up(stack.home, deploy=False)  # a new worker, as after a machine is replaced

    with table_locked(stack.database_url("production"), "core_project"):  # 0005 waits; 0003 and 0004 run
        assert cli("deployed", run_id, "--release", "v2", "--by", "carol").returncode == 0
        wait_until(lambda: applied(stack, "production")[-1:] == [RELEASE[2]], "the after-deploy phase to begin")
        wait_until(lambda: waits_for_a_lock(stack, "production"), "core.0005 to wait for its lock")
        kill(stack, run_id, worker=False)
    crashed(run_id)

    recovered = cli("resume", run_id, "--wait")  # the approval and the deploy recorded before the crash stand
    assert recovered.returncode == 0, recovered.stdout + recovered.stderr
    assert applied(stack, "production") == ["core.0001_initial", *RELEASE]  # each once, in order
    journal = read_target_journal(load_target("production"), run_id)
    assert (journal.deployed.deployed_by, journal.deployed.release) == ("carol", "v2")
    new = [b for b in list_backups(load_target("production")) if b.object_name not in before]
    states = sorted(len(b.migration_state) for b in new)  # before each phase, and before carrying the rest on
    assert len(states) == 3 and len(set(states)) == 3, states
