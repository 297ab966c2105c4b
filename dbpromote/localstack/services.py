"""The local stack's services: the GCS emulator, the Prefect server and its process worker, and the sample blocks."""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator
from urllib.parse import quote

import httpx
import psycopg
from psycopg import sql

from dbpromote.deploying import WORK_POOL, create_work_pool
from dbpromote.localstack.processes import pick_port, spawn, venv_script, wait_until
from dbpromote.localstack.state import APP_ROLE, BUCKET, SAMPLE_PROJECT, SERVERS, Stack
from dbpromote.warm import warm_command


def start_gcs_emulator(stack: Stack) -> None:
    port = pick_port(stack, "gcs")
    storage = stack.home / "gcs"
    storage.mkdir(mode=0o700, exist_ok=True)  # the backups themselves
    command = [venv_script("gcp-storage-emulator"), "start", "--host", "127.0.0.1", "--port", str(port)]
    command += ["--default-bucket", BUCKET, "-q"]
    spawn(stack, "gcs", command, {"STORAGE_BASE": str(storage)}, storage)
    wait_until(lambda: gcs_healthy(stack), "The GCS emulator", stack.home / "gcs.log")
    # The bucket keeps no soft-deleted copies (GCS keeps them 7 days unless told otherwise). The emulator holds every
    # object's metadata, soft-deleted ones too, in one JSON file that it writes anew on each write: after a day of
    # benchmarks on one stack, 5,720 soft-deleted entries (check_bucket's probe objects, fleets made anew) made it
    # 9.5 MB and each write 0.14 s of its CPU (0.015 s without them), and a fleet of 100 spent 75 s of its 320 s
    # on three rounds of record writes (2026-12-07).
    response = httpx.patch(
        f"{stack.gcs_endpoint}/storage/v1/b/{BUCKET}", json={"softDeletePolicy": {"retentionDurationSeconds": "0"}}
    )
    response.raise_for_status()


def gcs_healthy(stack: Stack) -> bool:
    response = httpx.get(f"{stack.gcs_endpoint}/storage/v1/b/{BUCKET}", timeout=2)
    return response.status_code == 200


def prefect_env(stack: Stack) -> dict[str, str]:
    """What the stack's Prefect server, worker and `prefect deploy` run with."""
    prefect_home = stack.home / "prefect"
    return stack.client_env() | {
        "PREFECT_HOME": str(prefect_home),
        "PREFECT_SERVER_UI_STATIC_DIRECTORY": str(prefect_home / "ui"),
        "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "60",
        "PREFECT_LOGGING_LEVEL": "INFO",
    }


def start_prefect_server(stack: Stack) -> None:
    """The server, its API locked with the stack's credential (basic auth), its database on the staging server."""
    port = pick_port(stack, "prefect")
    (stack.home / "prefect").mkdir(mode=0o700, exist_ok=True)
    command = [venv_script("prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)]
    locked = prefect_env(stack) | {"PREFECT_SERVER_API_AUTH_STRING": stack.api_auth_string}
    locked["PREFECT_SERVER_DATABASE_CONNECTION_URL"] = prefect_database_url(stack)
    spawn(stack, "prefect", command, locked, stack.home)
    wait_until(lambda: prefect_healthy(stack), "The Prefect server", stack.home / "prefect.log", timeout=120)


# The server's own database is PostgreSQL (a database of its own on the staging server), not Prefect's default
# SQLite file: with a fleet's five member runs, two workers and the promotion writing at once, SQLite's single
# writer gave "database is locked" stalls of 60 s (docket's mark_work_queues_ready, state validation), and a wave
# of five members took 2 min 20 s where each member's step takes ~10 s (tests/test_fleet.py).
PREFECT_DATABASE = "prefect"


def prefect_database_url(stack: Stack) -> str:
    """The server's database, its role and database made on the staging server when missing (first `up`)."""
    password = stack.passwords[PREFECT_DATABASE]
    with psycopg.connect(**stack.superuser_conninfo("staging"), autocommit=True) as conn:
        name = sql.Identifier(PREFECT_DATABASE)
        if not conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", [PREFECT_DATABASE]).fetchone():
            conn.execute(sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(name, sql.Literal(password)))
        if not conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [PREFECT_DATABASE]).fetchone():
            conn.execute(sql.SQL("CREATE DATABASE {} OWNER {}").format(name, name))
    port = stack.ports["staging"]
    return f"postgresql+asyncpg://{PREFECT_DATABASE}:{quote(password, safe='')}@127.0.0.1:{port}/{PREFECT_DATABASE}"


def prefect_healthy(stack: Stack) -> bool:
    return httpx.get(f"{stack.prefect_api_url}/health", timeout=2).status_code == 200


@contextlib.contextmanager
def prefect_client(stack: Stack) -> Iterator[None]:
    """Prefect's client pointed at this stack with its credential: Prefect reads its settings at import, so a
    process that started before the stack had ports needs them set here, not in its environment."""
    from prefect.settings import PREFECT_API_AUTH_STRING, PREFECT_API_URL, temporary_settings

    with temporary_settings({PREFECT_API_URL: stack.prefect_api_url, PREFECT_API_AUTH_STRING: stack.api_auth_string}):
        yield


def start_worker(stack: Stack, number: int = 1, limit: int = 0) -> None:
    """A process worker of the stack's work pool (the pool made first from deployments/process.json); the first is
    component `worker`, the others `worker-2`, `worker-3`, ... (`stack up --workers N`). With limit, it runs at most
    that many flow runs at once and leaves the others to the pool's other workers."""
    with prefect_client(stack):
        create_work_pool(stack.prefect_api_url, WORK_POOL, command=warm_command())
    component = worker_component(number)
    name = f"dbpromote-{stack.ports['prefect']}" + (f"-{number}" if number > 1 else "")
    command = [venv_script("prefect"), "worker", "start", "--pool", WORK_POOL, "--type", "process", "--name", name]
    command += ["--limit", str(limit)] if limit else []
    spawn(stack, component, command, prefect_env(stack) | WORKER_POLLING, stack.home)


def worker_component(number: int) -> str:
    return "worker" if number == 1 else f"worker-{number}"


# The worker asks for runs every second: Prefect's default (10 s) made `dbpromote backup --wait` on the stack take
# 6-11 s where it now takes 5.3 s (created -> first task 4.3-8.8 s -> 2.6-3.2 s, most of it the flow process
# starting). The environment wins, so the test suite's own value still applies.
# The stack's production is watched for seconds, not a real one's minutes, after it migrates: `make demo` shows
# the watch in the step's report without a three-minute wait.
LOCAL_WATCH_AFTER_S = 10.0
WORKER_POLLING = {"PREFECT_WORKER_QUERY_SECONDS": os.environ.get("PREFECT_WORKER_QUERY_SECONDS", "1")}


def register_blocks(stack: Stack) -> None:
    """The sample project and the two targets as Prefect blocks, visible and editable in the UI. A target saved
    before keeps the settings someone gave it (in the UI, with `target add`); only its URL is the stack's again."""
    from pydantic import SecretStr

    from dbpromote.config import DatabaseTarget, DjangoProject

    with prefect_client(stack):
        DjangoProject(path=str(SAMPLE_PROJECT), settings_module="tenant_backend.settings", python=sys.executable).save(
            "tenant-backend", overwrite=True
        )
        for server in SERVERS:
            url = stack.database_url(server)
            try:
                target = DatabaseTarget.load(server).model_copy(update={"url": SecretStr(url)})
            except ValueError:  # not saved yet
                target = DatabaseTarget(
                    url=url,
                    requires_approval=server == "production",
                    watch_after_s=LOCAL_WATCH_AFTER_S if server == "production" else 0,
                    bucket=BUCKET,
                    prefix="backups",
                    app_role=APP_ROLE,
                )
            target.save(server, overwrite=True)
