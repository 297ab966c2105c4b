"""The local stack: starts healthy, stops clean, survives stale PID files and refuses bad input clearly."""

import json
import os
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import psycopg
import pytest

from dbpromote import localstack as local_stack
from tests.harness import cli


def alive(pid: int) -> bool:
    """Running, as opposed to gone or a zombie waiting for a parent that is not ours to reap it."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(") ", 1)[1][0] != "Z"
    except OSError:
        return False


@pytest.fixture
def own_home():
    home = Path(tempfile.mkdtemp(prefix="dbpromote-lifecycle-"))
    home.chmod(0o755)
    yield home
    local_stack.down(home)


def test_status_json_reports_every_component_healthy_with_masked_urls(stack):
    result = cli("stack", "status", "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["healthy"]
    components = report["components"]
    assert set(components) == {"staging", "production", "gcs", "prefect", "worker"}
    for server in ("staging", "production"):
        urls = components[server]["database_urls"]
        assert ":****@" in urls["migration"] and ":****@" in urls["app"]
        assert stack.passwords["tenant_owner"] not in result.stdout
    assert components["gcs"]["endpoint"] == stack.gcs_endpoint and components["gcs"]["bucket"]
    assert components["prefect"]["api_url"].endswith("/api") and components["prefect"]["ui_url"]

    secret = json.loads(cli("stack", "status", "--json", "--show-secrets").stdout)
    with psycopg.connect(secret["components"]["staging"]["database_urls"]["app"]) as conn:
        assert conn.execute("SELECT current_user").fetchone() == ("django_app",)


def test_an_object_deleted_from_the_bucket_leaves_no_soft_deleted_copy(stack):
    """The emulator rewrites every object's metadata, soft-deleted ones too, on each write: a day's soft-deleted
    copies made each write of a long-lived stack 0.14 s of its CPU (services.start_gcs_emulator)."""
    from dbpromote.config import DatabaseTarget
    from dbpromote.gcs import gcs_client

    target = DatabaseTarget.load("staging")
    client = gcs_client(target.gcp_credentials)
    blob = client.bucket(target.bucket).blob(f"{target.prefix}/deleted-at-once.json")
    blob.upload_from_string("{}")
    blob.delete()
    assert list(client.list_blobs(target.bucket, prefix=blob.name, soft_deleted=True)) == []


def test_the_work_pool_runs_flows_with_the_base_job_template_in_deployments_started_warm(stack):
    from prefect import get_client

    from dbpromote.deploying import PROCESS_TEMPLATE, WORK_POOL
    from dbpromote.warm import warm_command

    with get_client(sync_client=True) as client:
        pool = client.read_work_pool(WORK_POOL)
    assert pool.type == "process"
    command = pool.base_job_template["variables"]["properties"]["command"]
    assert command.pop("default") == warm_command() == f"{sys.executable} -m dbpromote.warm"
    expected = json.loads(PROCESS_TEMPLATE.read_text())
    assert expected["variables"]["properties"]["command"].pop("default") is None
    assert pool.base_job_template == expected


def test_the_prefect_api_is_locked_with_a_credential_only_its_owner_can_read(stack):
    api, (user, password) = stack.prefect_api_url, stack.api_auth_string.split(":", 1)
    assert httpx.post(f"{api}/flow_runs/filter", json={}).status_code == 401
    assert httpx.post(f"{api}/flow_runs/filter", json={}, auth=(user, "wrong")).status_code == 401
    assert httpx.post(f"{api}/flow_runs/filter", json={}, auth=(user, password)).status_code == 200
    masked = cli("stack", "status", "--json")
    assert json.loads(masked.stdout)["components"]["prefect"]["api_auth"] == "dbpromote:****"
    assert password not in masked.stdout
    shown = json.loads(cli("stack", "status", "--json", "--show-secrets").stdout)
    assert shown["components"]["prefect"]["api_auth"] == stack.api_auth_string
    refused = cli("runs", env={"PREFECT_API_AUTH_STRING": f"{user}:wrong"})
    assert refused.returncode == 1 and "Traceback" not in refused.stderr
    assert "The Prefect API refused this command's credential (401)" in refused.stderr

    # Others may pass through the state folder (to the clusters postgres owns) but read nothing in it.
    assert stat.S_IMODE(stack.home.stat().st_mode) & 0o066 == 0
    assert stat.S_IMODE((stack.home / "state.json").stat().st_mode) == 0o600
    assert stat.S_IMODE((stack.home / "prefect").stat().st_mode) & 0o077 == 0
    assert stat.S_IMODE((stack.home / "gcs").stat().st_mode) & 0o077 == 0
    for log in stack.home.glob("*.log"):
        assert stat.S_IMODE(log.stat().st_mode) == 0o600, log.name
        assert password not in log.read_text(errors="replace"), log.name


@pytest.mark.parametrize(
    "statement",
    [
        "ALTER TABLE core_task DISABLE ROW LEVEL SECURITY",
        "ALTER TABLE core_task NO FORCE ROW LEVEL SECURITY",
        "DROP POLICY least_privilege_probe ON core_task",
        "ALTER POLICY least_privilege_probe ON core_task USING (true)",
        "CREATE POLICY everything ON core_task USING (true)",
        "ALTER TABLE core_task OWNER TO django_app",
    ],
)
def test_least_privilege_the_app_role_cannot_touch_rls_and_the_migration_role_is_no_superuser(stack, statement):
    with psycopg.connect(stack.database_url("production"), autocommit=True) as owner:
        assert owner.execute("SELECT rolsuper FROM pg_roles WHERE rolname = current_user").fetchone() == (False,)
        owner.execute("CREATE POLICY least_privilege_probe ON core_task USING (false)")  # one to try to drop
        try:
            with psycopg.connect(stack.database_url("production", role="django_app")) as app:
                with pytest.raises(psycopg.errors.InsufficientPrivilege):
                    app.execute(statement)
        finally:
            owner.execute("DROP POLICY least_privilege_probe ON core_task")


def test_servers_require_passwords(stack):
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        psycopg.connect(stack.database_url("staging").replace(stack.passwords["tenant_owner"], "wrong"))


def test_app_role_is_not_owner_superuser_or_bypassrls(stack):
    with psycopg.connect(stack.database_url("production")) as conn:
        role = conn.execute(
            "SELECT rolsuper, rolbypassrls, rolcanlogin FROM pg_roles WHERE rolname = 'django_app'"
        ).fetchone()
        owned = conn.execute(
            "SELECT count(*) FROM pg_class c JOIN pg_roles r ON r.oid = c.relowner WHERE r.rolname = 'django_app'"
        ).fetchone()[0]
    assert role == (False, False, True)
    assert owned == 0


def test_up_twice_starts_nothing_twice_and_down_leaves_nothing(own_home):
    first = local_stack.up(own_home, deploy=False)
    pids = dict(first.pids)
    second = local_stack.up(own_home, deploy=False)
    assert second.pids == pids
    assert local_stack.status(own_home)["healthy"]

    stopped = local_stack.down(own_home)
    assert set(stopped) == set(pids)
    assert not any(alive(pid) for pid in pids.values())
    assert local_stack.down(own_home) == []  # safe twice

    again = local_stack.up(own_home, deploy=False)  # starts again on the same data
    assert local_stack.status(own_home)["healthy"]
    with psycopg.connect(again.database_url("staging")) as conn:
        assert conn.execute("SELECT count(*) FROM core_tenant").fetchone()[0] == 3


def test_stale_pid_files_and_a_killed_stack_do_not_confuse_up_or_down(own_home):
    started = local_stack.up(own_home, deploy=False)
    # A crash: every process killed hard, the state file left behind.
    for component, pid in started.pids.items():
        if component in local_stack.SERVERS:
            os.kill(pid, signal.SIGKILL)
        else:
            os.killpg(pid, signal.SIGKILL)
    for pid in started.pids.values():
        while alive(pid):
            time.sleep(0.05)
    # A stale PID that now belongs to an unrelated process must not be killed.
    bystander = subprocess.Popen(["sleep", "60"])
    state = json.loads((own_home / "state.json").read_text())
    state["pids"]["gcs"] = bystander.pid
    (own_home / "state.json").write_text(json.dumps(state))
    try:
        assert local_stack.down(own_home) == []
        assert bystander.poll() is None
        local_stack.up(own_home, deploy=False)
        assert local_stack.status(own_home)["healthy"]
    finally:
        bystander.kill()


def test_a_port_in_use_is_skipped(own_home, monkeypatch):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = taken.getsockname()[1]
        monkeypatch.setenv("DBPROMOTE_PORT_STAGING", str(busy))
        started = local_stack.up(own_home, deploy=False)
        assert started.ports["staging"] != busy
        assert local_stack.status(own_home)["components"]["staging"]["healthy"]


def test_missing_postgres_binaries_is_one_clear_sentence_and_starts_nothing(tmp_path):
    home = tmp_path / "state"
    result = cli("stack", "up", env={"DBPROMOTE_HOME": str(home), "DBPROMOTE_PG_BIN": str(tmp_path / "nope")})
    assert result.returncode == 1
    assert result.stderr.strip().startswith("error: PostgreSQL 15 server binaries are missing")
    assert "apt-get install postgresql-15" in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert not (home / "state.json").exists()


def test_unwritable_state_folder_is_one_clear_sentence(tmp_path):
    result = cli("stack", "up", env={"DBPROMOTE_HOME": "/proc/dbpromote"})
    assert result.returncode == 1
    assert "is not writable; make it writable or set DBPROMOTE_HOME" in result.stderr


def test_unknown_stack_command_fails_clearly():
    result = cli("stack", "upp")
    assert result.returncode != 0
    assert "No such command 'upp'" in result.stderr
