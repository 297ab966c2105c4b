"""The reliability harness: GCS faults at a rate over many backups, bad input through the CLI and the REST API, and
every secret searched for wherever runs leave text. Each test prints its figures (`pytest -s` shows them); CI runs
a reduced form, DBPROMOTE_FULL_HARNESS=1 the full one. The kills at points of a promotion are
tests/test_crash_resume.py's matrix."""

import json
import os
import uuid

import httpx
import psycopg

from dbpromote import localstack as local_stack
from dbpromote.errors import BackupError
from dbpromote.localstack.fault_proxy import FaultProxy
from tests.harness import cli
from tests.test_environment_faults import add_poorly_compressible_rows

FULL = os.environ.get("DBPROMOTE_FULL_HARNESS") == "1"


def test_gcs_faults_at_a_tenth_of_uploads_never_leave_a_partial_backup_listed(fresh_databases, monkeypatch):
    from dbpromote.backups import list_backups, take_backup
    from dbpromote.config import load_target
    from dbpromote.gcs import gcs_client

    rounds = 20 if FULL else 5
    add_poorly_compressible_rows(fresh_databases)
    monkeypatch.setattr("dbpromote.backups.CHUNK_SIZE", 256 * 1024)  # a dozen upload requests a backup
    target = load_target("staging")
    before = {backup.object_name for backup in list_backups(target)}
    proxy = FaultProxy(fresh_databases.ports["gcs"], mode="mixed", rate=0.10)
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", proxy.endpoint)
    completed, failed = [], []
    try:
        for _ in range(rounds):
            try:
                completed.append(take_backup(target, run_id="").object_name)
            except BackupError as error:
                failed.append(str(error))
    finally:
        proxy.close()
        monkeypatch.undo()
    dumps = [
        b for b in gcs_client().list_blobs(target.bucket, prefix=f"{target.prefix}/staging/") if ".dump.zst" in b.name
    ]
    partial = [b.name for b in dumps if b.name.endswith(".dump.zst") and (b.metadata or {}).get("verified") != "true"]
    listed = {backup.object_name for backup in list_backups(target)} - before
    print(
        f"\nGCS faults (503s and resets) at 10 % of upload requests, {proxy.uploads_seen} requests: {rounds} backups, "
        f"{len(completed)} completed, {len(failed)} failed cleanly, {proxy.faults_injected} faults, "
        f"{len(partial)} partial objects, {len(listed - set(completed))} listed that were not reported"
    )
    assert proxy.faults_injected > 0 and len(completed) + len(failed) == rounds
    assert partial == [] and listed == set(completed)
    assert all("run again" in message for message in failed)


def bad_inputs(stack) -> list[tuple[str, list[str]]]:
    """What people type wrong, each as a command line: (what is wrong, argv)."""
    good = stack.database_url("staging")
    wrong_password = good.replace(stack.passwords[local_stack.MIGRATION_ROLE], "wrong-password")
    run = str(uuid.uuid4())
    promote = ["promote", "--project", "tenant-backend", "--through"]
    project = ["--path", str(local_stack.SAMPLE_PROJECT), "--settings", "tenant_backend.settings"]
    scripts = stack.home / "bad-input-scripts"
    scripts.mkdir(exist_ok=True)
    for name, text in [
        ("fix.sql", "UPDATE core_task SET title = upper(title) WHERE id < 10"),
        ("schema.sql", "UPDATE core_task SET title = 'a' WHERE id = 1; ALTER TABLE core_task ADD COLUMN note text"),
        ("every_row.sql", "UPDATE core_task SET title = upper(title)"),
        ("fix.py", "from core.models import Task\nTask.objects.update(title='x')\n"),
        ("two.sql", "UPDATE core_task SET title = 'a'; DELETE FROM core_task"),
        ("empty.sql", "  \n"),
        ("fix.txt", "UPDATE core_task SET title = 'a'"),
    ]:
        (scripts / name).write_text(text)
    fix = ["fix", "--project", "tenant-backend", "--through", "staging,production", "--script"]
    reconcile = ["reconcile", "staging", "--project", "tenant-backend", "--migration"]
    return [
        ("a URL that is not one", ["target", "add", "t1", "--url", "not a url", "--no-check"]),
        ("a raw @ in the password", ["target", "add", "t1", "--url", "postgresql://u:p@ss@127.0.0.1/db", "--no-check"]),
        ("another database's URL", ["target", "add", "t1", "--url", "mysql://u:p@127.0.0.1/db", "--no-check"]),
        ("lock timeout 0", ["target", "add", "t1", "--url", good, "--lock-timeout", "0", "--no-check"]),
        ("a negative lock timeout", ["target", "add", "t1", "--url", good, "--lock-timeout", "-5", "--no-check"]),
        ("a unicode target name", ["target", "add", "prød", "--url", good, "--no-check"]),
        ("SQL in a target name", ["target", "add", "x'; DROP TABLE core_task; --", "--url", good, "--no-check"]),
        ("an oversized target name", ["target", "add", "x" * 300, "--url", good, "--no-check"]),
        ("a wrong password", ["target", "add", "t1", "--url", wrong_password]),
        ("an unreachable server", ["target", "add", "t1", "--url", "postgresql://u:p@127.0.0.1:1/db"]),
        (
            "two approvers needed, none enrolled",
            ["target", "add", "t2", "--url", good, "--approvers", "zed"] + ["--min-approvers", "2", "--no-check"],
        ),
        ("a window with no zone", ["target", "add", "t1", "--url", good, "--window", "sat 01:00-05:00", "--no-check"]),
        ("a window on no weekday", ["target", "add", "t1", "--url", good, "--window", "caturday 01:00-05:00 UTC"]),
        ("--now without a reason", [*promote, "staging,production", "--now"]),
        ("running now what waits for nothing", ["run-now", run, "--by", "bob", "--reason", "incident 42"]),
        ("an unknown project", ["promote", "--project", "nope", "--through", "staging,production"]),
        ("an unknown target", [*promote, "staging,nowhere"]),
        ("a malformed --to", [*promote, "staging,production", "--to", "core0002"]),
        ("the approval target first", [*promote, "production,staging"]),
        ("a target twice", [*promote, "staging,staging"]),
        ("no targets", [*promote, ","]),
        ("a backup of an unknown target", ["backup", "nowhere"]),
        ("a restore of a backup that is not one", ["restore", "staging", "--backup", "gs://elsewhere/x.dump.zst"]),
        ("a rollback of an unknown project", ["rollback", "staging", "--project", "nope"]),
        ("a run id that is not one", ["approve", "not-a-uuid", "--approver", "alice"]),
        ("an unknown run", ["approve", run, "--approver", "alice"]),
        ("a blank approver", ["approve", run, "--approver", "   "]),
        ("a blank reason", ["cancel", run, "--reason", " "]),
        ("resuming an unknown run", ["resume", run]),
        ("a project folder that does not exist", ["project", "add", "p1", "--path", "/nonexistent", "--settings", "x"]),
        ("SQL in a project name", ["project", "add", "p'--", *project]),
        ("a unicode approver", ["approver", "add", "ålice"]),
        ("a fix script that does not exist", [*fix, "/nonexistent/fix.sql"]),
        ("a fix script neither SQL nor Python", [*fix, str(scripts / "fix.txt")]),
        ("an empty fix script", [*fix, str(scripts / "empty.sql")]),
        ("row bounds the wrong way round", [*fix, str(scripts / "fix.sql"), "--expect-rows", "30..1"]),
        ("batches of a Python fix", [*fix, str(scripts / "fix.py"), "--batch-size", "100"]),
        ("batches of two statements", [*fix, str(scripts / "two.sql"), "--batch-size", "100"]),
        ("a negative batch size", [*fix, str(scripts / "fix.sql"), "--batch-size", "-5"]),
        ("a fix on production first", [*fix[:3], "--through", "production,staging", "--script", f"{scripts}/fix.sql"]),
        ("undoing a fix that never ran", ["fix-undo", run, "--target", "staging"]),
        ("a fix that changes the schema", [*fix, str(scripts / "schema.sql")]),
        ("a fix of every row with no bound", [*fix, str(scripts / "every_row.sql")]),
        ("a check of a folder without manage.py", ["check", "--project", str(scripts), "--against", "staging"]),
        ("a --to of another project", [*promote, "staging,production", "--to", "auth:0001_initial"]),
        ("reconciling an applied migration", [*reconcile, "core:0001_initial"]),
        ("reconciling a migration that is not one", [*reconcile, "core:0099_nope"]),
        ("reconciling a migration not the next", [*reconcile, "core:0003_task_priority"]),
    ]


def state_of(stack, since) -> tuple:
    """What bad input must leave as it was: the blocks, the runs anyone started since `since` and both databases'
    migrations."""
    from datetime import UTC, datetime, timedelta

    from prefect import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterExpectedStartTime

    from dbpromote.deploying import CLOSE_DEPLOYMENT

    # Runs started by hand or over REST are due at once; the scheduler's (audits, nightly backups) come as time
    # passes, and the crash automation's close-crashed runs whenever an earlier test's run is marked Crashed (one
    # landed here in CI): nobody's input.
    window = FlowRunFilterExpectedStartTime(after_=since, before_=datetime.now(UTC) + timedelta(minutes=1))
    with get_client(sync_client=True) as client:
        blocks = sorted(block.name for block in client.read_block_documents())
        automatic = client.read_deployment_by_name(CLOSE_DEPLOYMENT).id
        started = client.read_flow_runs(flow_run_filter=FlowRunFilter(expected_start_time=window), limit=200)
        runs = sorted(str(run.id) for run in started if not run.auto_scheduled and run.deployment_id != automatic)
    migrations = []
    for server in local_stack.SERVERS:
        with psycopg.connect(stack.database_url(server)) as conn:
            migrations.append(conn.execute("SELECT count(*) FROM django_migrations").fetchone()[0])
    return blocks, runs, migrations


def test_bad_input_through_the_cli_and_rest_is_one_sentence_and_changes_nothing(fresh_databases):
    from datetime import UTC, datetime

    from tests.test_deployments import rest

    cases = bad_inputs(fresh_databases)
    since = datetime.now(UTC)
    before = state_of(fresh_databases, since)
    outcomes = []
    for what, argv in cases:
        result = cli(*argv)
        lines = [line for line in result.stderr.splitlines() if line.strip()]
        outcomes.append((what, result.returncode, lines))
    api = rest(fresh_databases)
    deployment = api.get("/deployments/name/promote/promote").json()["id"]
    for what, parameters in [
        ("REST: through is not a list", {"project": "tenant-backend", "through": 5}),
        ("REST: project is not a name", {"project": ["tenant-backend"], "through": ["staging"]}),
    ]:
        response = api.post(f"/deployments/{deployment}/create_flow_run", json={"parameters": parameters})
        outcomes.append((what, response.status_code, [json.dumps(response.json())[:300]]))
    unauthenticated = httpx.post(f"{fresh_databases.prefect_api_url}/flow_runs/filter", json={})
    outcomes.append(("REST: no credential", unauthenticated.status_code, [unauthenticated.text]))

    after = state_of(fresh_databases, since)
    refused = [o for o in outcomes if o[1] not in (0, 200, 201)]
    one_sentence = [o for o in outcomes if len(o[2]) == 1 and "Traceback" not in o[2][0]]
    print(
        f"\n{len(outcomes)} bad inputs ({len(cases)} through the CLI, {len(outcomes) - len(cases)} over REST): "
        f"{len(refused)} refused, {len(one_sentence)} with one line, "
        f"{sum('Traceback' in ' '.join(o[2]) for o in outcomes)} tracebacks, state changed: {before != after}"
    )
    accepted = [what for what, code, _ in outcomes if code in (0, 200, 201)]
    not_one_line = [(what, lines) for what, _, lines in outcomes if len(lines) != 1 or "Traceback" in lines[0]]
    assert accepted == [] and not_one_line == []
    assert after == before
    assert len(outcomes) >= 25


def test_no_secret_is_found_anywhere_runs_leave_text(stack):
    """Every password of the stack and its API credential, searched for in every log line, artifact and flow-run
    parameter on the server, every record and manifest in the bucket, and the stack's own logs."""
    from dbpromote.flows.backup import backup
    from prefect import get_client

    from dbpromote.gcs import gcs_client

    backup(["staging", "production"])  # at least these runs' logs, artifacts and records, whatever ran before
    secrets = [value for value in stack.passwords.values() if len(value) >= 8]
    texts: dict[str, list[str]] = {"log lines": [], "artifacts": [], "parameters": [], "records": [], "log files": []}
    with get_client(sync_client=True) as client:
        offset = 0
        while page := client.read_logs(limit=200, offset=offset):
            texts["log lines"] += [log.message for log in page]
            offset += len(page)
        texts["artifacts"] = [json.dumps(a.data, default=str) for a in client.read_artifacts(limit=200)]
        texts["parameters"] = [json.dumps(run.parameters, default=str) for run in client.read_flow_runs(limit=200)]
    bucket = gcs_client().bucket(local_stack.BUCKET)
    for listed in gcs_client().list_blobs(local_stack.BUCKET):
        if listed.name.endswith(".json"):  # by name: a listed object's media link may name the proxy it came through
            texts["records"].append(bucket.blob(listed.name).download_as_text())
    texts["log files"] = [log.read_text(errors="replace") for log in stack.home.glob("*.log")]
    found = {kind: sum(secret in text for text in items for secret in secrets) for kind, items in texts.items()}
    print(
        f"\n{len(secrets)} secrets searched: "
        + ", ".join(f"{len(items)} {kind} ({found[kind]} found)" for kind, items in texts.items())
    )
    assert texts["log lines"] and texts["parameters"] and texts["records"]
    assert sum(found.values()) == 0, found
