"""The local stack's PostgreSQL servers: clusters made with initdb, their roles, and the sample database."""

from __future__ import annotations

import functools
import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import psycopg
from psycopg import sql

from dbpromote.errors import StackError
from dbpromote.localstack.processes import clear_stale_lock_files, pick_port, run
from dbpromote.localstack.state import (
    APP_ROLE,
    DATABASE,
    MIGRATION_ROLE,
    SAMPLE_PROJECT,
    SEED_TENANTS,
    V1_MIGRATION,
    Stack,
    pg_bin,
)


def as_postgres_user(command: list[str]) -> list[str]:
    # initdb and the server refuse to run as root.
    return ["runuser", "-u", "postgres", "--", *command] if os.geteuid() == 0 else command


def start_postgres(stack: Stack, server: str) -> bool:
    """Start the server's cluster, creating it first if needed; True when it was created now."""
    root = stack.home / "pg" / server
    data, sockets = root / "data", root / "run"
    _prepare_folders(root, sockets)
    created = not (data / "PG_VERSION").is_file()
    if created:
        _init_cluster(stack, root, data, server)
    port = pick_port(stack, server)
    clear_stale_lock_files(data / "postmaster.pid", *sockets.glob(".s.PGSQL.*.lock"))
    _start_cluster(root, data, sockets, port, server)
    stack.pids[server] = int((data / "postmaster.pid").read_text().splitlines()[0])
    stack.commands[server] = [str(data)]
    stack.save()
    if created:
        _create_roles(stack, server)
        create_database(stack, server)
    return created


def _prepare_folders(root: Path, sockets: Path) -> None:
    """The cluster's folders, owned by the postgres system user when we are root."""
    sockets.mkdir(parents=True, exist_ok=True)
    (root / "postgres.log").touch()
    if os.geteuid() != 0:
        return
    for path in (root, sockets, root / "postgres.log"):
        shutil.chown(path, "postgres")
    if subprocess.run(as_postgres_user(["test", "-w", str(root)])).returncode != 0:
        raise StackError(
            f"The postgres system user cannot write to {root}; set DBPROMOTE_HOME to a folder it can reach "
            "(every parent folder must be searchable by others, e.g. not under /root)."
        )


def _init_cluster(stack: Stack, root: Path, data: Path, server: str) -> None:
    """initdb with the superuser's password from a file that exists only while initdb runs."""
    shutil.rmtree(data, ignore_errors=True)
    pwfile = root / "pwfile"
    pwfile.write_text(stack.passwords["postgres"] + "\n")
    if os.geteuid() == 0:
        shutil.chown(pwfile, "postgres")
    initdb = [str(pg_bin() / "initdb"), "-D", str(data), "-U", "postgres", f"--pwfile={pwfile}"]
    try:
        run(
            as_postgres_user([*initdb, "--auth=scram-sha-256", "-E", "UTF8", "--locale=C.UTF-8"]),
            f"initdb of the {server} cluster",
        )
    finally:
        pwfile.unlink()


def _start_cluster(root: Path, data: Path, sockets: Path, port: int, server: str) -> None:
    """pg_ctl start on loopback only, waiting until it accepts connections."""
    options = f"-c listen_addresses=127.0.0.1 -c port={port} -c unix_socket_directories={sockets}"
    pg_ctl = [str(pg_bin() / "pg_ctl"), "-D", str(data), "-l", str(root / "postgres.log"), "-o", options]
    run(as_postgres_user([*pg_ctl, "-w", "-t", "60", "start"]), f"start of the {server} PostgreSQL server")


def _create_roles(stack: Stack, server: str) -> None:
    """The migration role (owns the schema, may create databases) and the application role; neither bypasses RLS."""
    with psycopg.connect(**stack.superuser_conninfo(server), autocommit=True) as conn:
        conn.execute(
            sql.SQL("CREATE ROLE {} LOGIN NOSUPERUSER NOBYPASSRLS CREATEDB PASSWORD {}").format(
                sql.Identifier(MIGRATION_ROLE), sql.Literal(stack.passwords[MIGRATION_ROLE])
            )
        )
        conn.execute(
            sql.SQL("CREATE ROLE {} LOGIN NOSUPERUSER NOBYPASSRLS NOCREATEDB NOCREATEROLE PASSWORD {}").format(
                sql.Identifier(APP_ROLE), sql.Literal(stack.passwords[APP_ROLE])
            )
        )


def grant_roles(stack: Stack, server: str) -> None:
    """What the migration role needs besides owning the schema; repeated on every `up` (a stack made before a
    grant was added gets it too)."""
    with psycopg.connect(**stack.superuser_conninfo(server), autocommit=True) as conn:
        # Lets the migration role act as the application (SET ROLE) to prove tenant isolation.
        conn.execute(sql.SQL("GRANT {} TO {}").format(sql.Identifier(APP_ROLE), sql.Identifier(MIGRATION_ROLE)))
        # Lets a restore end the application's sessions before it swaps the restored database in.
        conn.execute(sql.SQL("GRANT pg_signal_backend TO {}").format(sql.Identifier(MIGRATION_ROLE)))


def create_database(stack: Stack, server: str, name: str = DATABASE, *, replace: bool = False) -> None:
    """The sample database (or another of that shape), owned by the migration role; the application may only use
    its schema."""
    with psycopg.connect(**stack.superuser_conninfo(server), autocommit=True) as conn:
        if replace:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
        conn.execute(
            sql.SQL("CREATE DATABASE {} OWNER {}").format(sql.Identifier(name), sql.Identifier(MIGRATION_ROLE))
        )
    with psycopg.connect(**stack.superuser_conninfo(server, name), autocommit=True) as conn:
        # PostgreSQL 15: public belongs to pg_database_owner, i.e. the migration role; the app may only use it.
        conn.execute(sql.SQL("GRANT USAGE ON SCHEMA public TO {}").format(sql.Identifier(APP_ROLE)))


def reset_database(stack: Stack, server: str, *, tenants: int = SEED_TENANTS) -> None:
    """Recreate the sample database at the v1 state with seeded tenants, as a copy of a template made once."""
    template = v1_template(stack, server, tenants)
    with psycopg.connect(**stack.superuser_conninfo(server), autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(DATABASE)))
        conn.execute(
            sql.SQL("CREATE DATABASE {} TEMPLATE {} OWNER {}").format(
                sql.Identifier(DATABASE), sql.Identifier(template), sql.Identifier(MIGRATION_ROLE)
            )
        )


def v1_template(stack: Stack, server: str, tenants: int) -> str:
    """The name of a template database holding the sample at v1 with `tenants` seeded, made when missing.

    Migrating and seeding start Django twice (about 3 s of CPU); copying the template takes a few milliseconds,
    and the test suite resets the sample databases several hundred times. The name carries a fingerprint of the
    sample project, so a changed project gets a new template and the stale ones are dropped.
    """
    name = f"{DATABASE}_v1_{tenants}_{sample_fingerprint()}"
    with psycopg.connect(**stack.superuser_conninfo(server), autocommit=True) as conn:
        pattern = f"{DATABASE}_v1_{tenants}_".replace("_", "\\_") + "%"
        present = [row[0] for row in conn.execute("SELECT datname FROM pg_database WHERE datname LIKE %s", [pattern])]
        if name in present:
            return name
        for stale in present:
            conn.execute(sql.SQL("ALTER DATABASE {} IS_TEMPLATE false").format(sql.Identifier(stale)))
            conn.execute(sql.SQL("DROP DATABASE {}").format(sql.Identifier(stale)))
    building = f"{name}_building"  # a build cut short is never taken for a template
    create_database(stack, server, building, replace=True)
    url = stack.database_url(server).rsplit("/", 1)[0] + f"/{building}"
    env = os.environ | {"DATABASE_URL": url, "DJANGO_SETTINGS_MODULE": "tenant_backend.settings"}
    manage = [sys.executable, str(SAMPLE_PROJECT / "manage.py")]
    run([*manage, "migrate", *V1_MIGRATION], f"migrating {server} to v1", env=env, cwd=SAMPLE_PROJECT)
    run([*manage, "seed_tenants", "--tenants", str(tenants)], f"seeding {server}", env=env, cwd=SAMPLE_PROJECT)
    with psycopg.connect(**stack.superuser_conninfo(server), autocommit=True) as conn:
        conn.execute(sql.SQL("ALTER DATABASE {} RENAME TO {}").format(sql.Identifier(building), sql.Identifier(name)))
        # Nobody connects to it: a session on a template makes CREATE DATABASE ... TEMPLATE fail.
        conn.execute(sql.SQL("ALTER DATABASE {} IS_TEMPLATE true ALLOW_CONNECTIONS false").format(sql.Identifier(name)))
    return name


@functools.cache
def sample_fingerprint() -> str:
    """Eight hex digits that change whenever a file of the sample project does."""
    digest = hashlib.sha256()
    for path in sorted(SAMPLE_PROJECT.rglob("*.py")):
        digest.update(str(path.relative_to(SAMPLE_PROJECT)).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:8]


def postgres_healthy(stack: Stack, server: str) -> bool:
    try:
        with psycopg.connect(**stack.superuser_conninfo(server), connect_timeout=3) as conn:
            return conn.execute("SELECT 1").fetchone() == (1,)
    except psycopg.Error:
        return False
