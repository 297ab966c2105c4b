"""The local stack: two PostgreSQL servers, the GCS emulator, a Prefect server and worker, under one state folder.

state.py records what runs and where, processes.py starts and stops it, postgres.py and services.py know each
component; this module is what the `dbpromote stack` commands call.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import httpx
import psycopg
from psycopg import sql

from dbpromote.deploying import WORK_POOL, crashed_after_s, deploy_flows, install_crash_detection
from dbpromote.errors import StackError
from dbpromote.localstack.postgres import grant_roles, postgres_healthy, reset_database, start_postgres
from dbpromote.localstack.processes import free_port, stop
from dbpromote.localstack.services import (
    gcs_healthy,
    prefect_client,
    prefect_healthy,
    register_blocks,
    start_gcs_emulator,
    start_prefect_server,
    start_worker,
    worker_component,
)
from dbpromote.localstack.state import (
    API_CREDENTIAL,
    APP_ROLE,
    BUCKET,
    DATABASE,
    MIGRATION_ROLE,
    SAMPLE_PROJECT,
    SERVERS,
    Stack,
    pg_bin,
    state_dir,
)

__all__ = [
    "APP_ROLE",
    "BUCKET",
    "DATABASE",
    "MIGRATION_ROLE",
    "SAMPLE_PROJECT",
    "SERVERS",
    "Stack",
    "down",
    "fleet",
    "free_port",
    "reset",
    "reset_database",
    "status",
    "up",
]


def up(home: Path | None = None, *, deploy: bool = True, workers: int = 1, worker_limit: int = 0) -> Stack:
    """Start every component that is not already running (and `workers` workers on the pool in all, each running
    at most worker_limit flow runs at once when given); stop what this call started if any step fails."""
    home = home or state_dir()
    _check_prerequisites(home)
    stack = Stack.load(home).with_credentials()
    stack.save()
    started: list[str] = []
    try:
        fresh_servers = []
        for server in SERVERS:
            if not stack.running(server):
                if start_postgres(stack, server):
                    fresh_servers.append(server)
                started.append(server)
        for server in SERVERS:
            grant_roles(stack, server)
        for component, start in (("gcs", start_gcs_emulator), ("prefect", start_prefect_server)):
            if not stack.running(component):
                start(stack)
                started.append(component)
        for number in range(1, workers + 1):
            if not stack.running(worker_component(number)):
                start_worker(stack, number, worker_limit)
                started.append(worker_component(number))
        register_blocks(stack)
        if deploy:
            with prefect_client(stack):
                deploy_flows(stack.prefect_api_url)
                install_crash_detection(stack.prefect_api_url, crashed_after_s())
        for server in fresh_servers:
            reset_database(stack, server)
    except BaseException:
        stop(stack, reversed(started))
        raise
    return stack


def _check_prerequisites(home: Path) -> None:
    for binary in ("initdb", "pg_ctl", "postgres"):
        if not (pg_bin() / binary).is_file():
            raise StackError(
                f"PostgreSQL 15 server binaries are missing ({pg_bin() / binary} not found); "
                "install them with `apt-get install postgresql-15` (or `make install`), "
                "or point DBPROMOTE_PG_BIN at their folder."
            )
    if os.geteuid() == 0 and not shutil.which("runuser"):
        raise StackError(
            "The stack runs PostgreSQL as the postgres user (initdb refuses root) through runuser, which is not on "
            "PATH; add /usr/sbin and /sbin to PATH, or run the stack as another user."
        )
    try:
        home.mkdir(parents=True, exist_ok=True)
        probe = home / ".write-test"
        probe.write_text("")
        probe.unlink()
    except OSError:
        raise StackError(
            f"The state folder {home} is not writable; make it writable or set DBPROMOTE_HOME to a writable folder."
        ) from None


def reset(home: Path | None = None) -> Stack:
    """Both sample databases back at v1 with seeded tenants."""
    stack = Stack.load(home)
    missing = [server for server in SERVERS if not stack.running(server)]
    if missing:
        raise StackError(f"The {', '.join(missing)} server is not running; start the stack with `dbpromote stack up`.")
    for server in SERVERS:
        reset_database(stack, server)
    return stack


def status(home: Path | None = None, *, show_secrets: bool = False) -> dict:
    """Every component with its address and health."""
    stack = Stack.load(home)
    components: dict[str, dict] = {}
    for server in SERVERS:
        components[server] = {
            "kind": "postgresql",
            "address": f"127.0.0.1:{stack.ports.get(server)}",
            "pid": stack.pids.get(server),
            "healthy": stack.running(server) and postgres_healthy(stack, server),
        }
        if server in stack.ports:
            components[server]["database_urls"] = {
                "migration": stack.database_url(server, MIGRATION_ROLE, show_secret=show_secrets),
                "app": stack.database_url(server, APP_ROLE, show_secret=show_secrets),
            }
    components["gcs"] = {
        "kind": "gcs-emulator",
        "endpoint": stack.gcs_endpoint if "gcs" in stack.ports else None,
        "bucket": BUCKET,
        "pid": stack.pids.get("gcs"),
        "healthy": stack.running("gcs") and _healthy(gcs_healthy, stack),
    }
    components["prefect"] = {
        "kind": "prefect-server",
        "api_url": stack.prefect_api_url if "prefect" in stack.ports else None,
        "ui_url": stack.prefect_ui_url if "prefect" in stack.ports else None,
        "pid": stack.pids.get("prefect"),
        "healthy": stack.running("prefect") and _healthy(prefect_healthy, stack),
        "api_auth": (stack.api_auth_string if show_secrets else "dbpromote:****")
        if API_CREDENTIAL in stack.passwords
        else None,
    }
    for worker in workers(stack):
        components[worker] = {
            "kind": "prefect-worker",
            "work_pool": WORK_POOL,
            "pid": stack.pids.get(worker),
            "healthy": stack.running(worker),
        }
    return {
        "state_dir": str(stack.home),
        "healthy": all(component["healthy"] for component in components.values()),
        "components": components,
    }


def _healthy(check, stack: Stack) -> bool:
    try:
        return check(stack)
    except (httpx.HTTPError, OSError):
        return False


def down(home: Path | None = None) -> list[str]:
    """Stop exactly what `up` started (by recorded PID); safe twice and after a crash. Returns what it stopped."""
    stack = Stack.load(home)
    return stop(stack, [*workers(stack), "prefect", "gcs", *SERVERS])


def fleet(stack: Stack, count: int, prefix: str = "shard", **fields) -> list[str]:
    """`count` copies of the production server's sample database as it is now, each registered as a target like
    production (its `fields` changed): PREFIX-01, PREFIX-02, ... in databases PREFIX_01, ...; a fleet of tenant
    shards to try a group on, with none of the records and backups a fleet of the same names left in the bucket.
    Their target names."""
    from dbpromote.config import DatabaseTarget
    from dbpromote.gcs import gcs_client

    names = []
    production = DatabaseTarget.load("production")
    # The emulator rewrites all its objects' metadata on each write: a fleet's objects left from the last one made
    # every write of the next slower (a member of a promotion leaves ~11: the fleet tests' twelve shards ~130 a test).
    bucket = gcs_client(production.gcp_credentials).bucket(production.bucket)
    with prefect_client(stack), psycopg.connect(**stack.superuser_conninfo("production"), autocommit=True) as conn:
        for number in range(1, count + 1):
            name, database = f"{prefix}-{number:02d}", f"{prefix.replace('-', '_')}_{number:02d}"
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(database)))
            conn.execute(
                sql.SQL("CREATE DATABASE {} TEMPLATE {} OWNER {}").format(
                    sql.Identifier(database), sql.Identifier(DATABASE), sql.Identifier(MIGRATION_ROLE)
                )
            )
            # A new block, not a copy of production's: Prefect saves a loaded block's copy under a name already
            # taken by updating the loaded block's own document (production's, with the shard's URL and fields).
            copied = production.on_database(database).model_dump(exclude={"block_type_slug"})
            DatabaseTarget(**(copied | fields)).save(name, overwrite=True)
            for blob in bucket.list_blobs(prefix=f"{production.prefix}/{name}/"):
                blob.delete()
            names.append(name)
    return names


def workers(stack: Stack) -> list[str]:
    """The stack's worker components: `worker`, and those `up --workers N` added."""
    return ["worker"] + sorted((c for c in stack.pids if c.startswith("worker-")), key=lambda c: int(c[7:]))
