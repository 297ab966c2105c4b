"""Connection strings as teams write them, through the CLI: a Unix socket (Cloud SQL's form), several hosts,
`postgres://`, key=value and a `dbname=` in the query that overrides the path. Each reaches one and the same
database from every component: psycopg, pg_dump (it imports psycopg's exported snapshot, which only the same
database can), the Django probe, the drift replay and `check`."""

from urllib.parse import quote

import psycopg
import pytest
from psycopg import sql

from dbpromote import localstack as local_stack
from tests.harness import RELEASE, cli

FORMS = ["socket", "several-hosts", "postgres-scheme", "key-value", "dbname-in-query"]
DECOY = "conn_decoy"  # what the dbname-in-query form's path names; libpq connects to its dbname= instead


def database(form: str) -> str:
    return "conn_" + form.replace("-", "_")


def connection_strings(stack) -> dict[str, str]:
    """Each form, pointing at its own copy of staging's sample database."""
    password, port = stack.passwords[local_stack.MIGRATION_ROLE], stack.ports["staging"]
    encoded = psycopg.conninfo.make_conninfo(password=password).split("=", 1)[1]  # quoted for key=value
    secret = quote(password, safe="")
    user = local_stack.MIGRATION_ROLE
    sockets = stack.home / "pg" / "staging" / "run"
    dead = local_stack.free_port(stack.ports["gcs"] + 50)  # nothing listens there: libpq goes on to the next host
    return {
        "socket": f"postgresql://{user}:{secret}@/{database('socket')}?host={quote(str(sockets))}&port={port}",
        "several-hosts": f"postgresql://{user}:{secret}@127.0.0.1:{dead},127.0.0.1:{port}/{database('several-hosts')}",
        "postgres-scheme": f"postgres://{user}:{secret}@127.0.0.1:{port}/{database('postgres-scheme')}"
        "?sslmode=disable&application_name=dbpromote-test",
        "key-value": f"host=127.0.0.1 port={port} dbname={database('key-value')} user={user} password={encoded} "
        "connect_timeout=5",
        "dbname-in-query": f"postgresql://{user}:{secret}@127.0.0.1:{port}/{DECOY}?dbname={database('dbname-in-query')}",
    }


def applied(stack, name: str) -> list[str]:
    url = stack.database_url("staging").rsplit("/", 1)[0] + f"/{name}"
    with psycopg.connect(url) as conn:
        return [f"{a}.{n}" for a, n in conn.execute("SELECT app, name FROM django_migrations ORDER BY id")]


@pytest.fixture
def copies(fresh_databases):
    """A copy of staging's sample database (at v1, seeded) per form, and the decoy."""
    stack = fresh_databases
    with psycopg.connect(**stack.superuser_conninfo("staging"), autocommit=True) as conn:
        for name in [*map(database, FORMS), DECOY]:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
            conn.execute(
                sql.SQL("CREATE DATABASE {} TEMPLATE {} OWNER {}").format(
                    sql.Identifier(name),
                    sql.Identifier(local_stack.DATABASE),
                    sql.Identifier(local_stack.MIGRATION_ROLE),
                )
            )
    return stack


def test_every_form_libpq_accepts_reaches_one_database_from_every_component(copies):
    stack = copies
    strings = connection_strings(stack)
    targets = [f"conn-{form}" for form in FORMS]
    for target, form in zip(targets, FORMS, strict=True):
        added = cli("target", "add", target, "--url", strings[form], "--deploy", "stopped")  # connects once to check it
        assert added.returncode == 0, f"{form}: {added.stderr}"
    v1 = applied(stack, DECOY)

    promoted = cli("promote", "--project", "tenant-backend", "--through", ",".join(targets), "--wait")

    assert promoted.returncode == 0 and promoted.stdout.splitlines()[-1] == "finished: Completed", promoted.stdout
    for form, target in zip(FORMS, targets, strict=True):
        assert applied(stack, database(form))[-len(RELEASE) :] == RELEASE, form  # the probe migrated it
        backups = cli("backups", target)
        assert backups.returncode == 0 and database(form) in backups.stdout, (form, backups.stdout)
        drift = cli("drift", target, "--project", "tenant-backend")
        assert drift.returncode == 0, f"{form}: {drift.stdout}"  # the replay read the same database's history
        check = cli("check", "--project", "tenant-backend", "--against", target, "--json")
        assert check.returncode == 0 and '"migrations": []' in check.stdout, f"{form}: {check.stdout}"
        for output in (promoted, backups, drift, check):
            assert stack.passwords[local_stack.MIGRATION_ROLE] not in output.stdout + output.stderr
    assert applied(stack, DECOY) == v1  # the path of dbname-in-query's URL named it; libpq never went there
