"""What the benchmarks share: the local stack's client environment and a seeded copy of the sample project."""

import contextlib
import os
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from dbpromote import localstack as local_stack  # noqa: E402

stack = local_stack.Stack.load()
os.environ.update(stack.client_env())

import psycopg  # noqa: E402


def add_seed_arguments(parser, tenants: int, rows: int, text_bytes: int, keep_help: str) -> None:
    """The sizes of the seeded sample (seed_tenants' options) and --keep to reuse what an earlier run seeded."""
    parser.add_argument("--tenants", type=int, default=tenants)
    parser.add_argument("--rows", type=int, default=rows)
    parser.add_argument("--text-bytes", type=int, default=text_bytes)
    parser.add_argument("--keep", action="store_true", help=keep_help)


def database(name: str, keep: bool, seed) -> tuple[str, int]:
    """Database `name` on the staging server, made anew and filled by `seed(url)` unless keep finds it there; its
    URL and size in bytes (seeding 1 GB takes minutes)."""
    base = stack.database_url("staging").rsplit("/", 1)[0]
    with psycopg.connect(**stack.superuser_conninfo("staging"), autocommit=True) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [name]).fetchone()
        if not (exists and keep):
            conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
            conn.execute(f"CREATE DATABASE {name} OWNER tenant_owner")
            seed(f"{base}/{name}")
        size = conn.execute("SELECT pg_database_size(%s)", [name]).fetchone()[0]
    return f"{base}/{name}", size


def seeded_database(name: str, tenants: int, rows: int, text_bytes: int, keep: bool) -> tuple[str, int]:
    """The sample project at head in database `name` on the staging server, seeded; its URL and size in bytes."""

    def seed(url: str) -> None:
        env = os.environ | {"DATABASE_URL": url}
        manage = [sys.executable, str(local_stack.SAMPLE_PROJECT / "manage.py")]
        subprocess.run([*manage, "migrate", "-v0"], env=env, check=True, cwd=local_stack.SAMPLE_PROJECT)
        print(f"seeding {tenants} tenants x {rows} rows ...", flush=True)
        seed_args = ["seed_tenants", "--tenants", str(tenants), "--rows", str(rows), "--text-bytes", str(text_bytes)]
        subprocess.run([*manage, *seed_args], env=env, check=True, cwd=local_stack.SAMPLE_PROJECT)

    return database(name, keep, seed)


def emulator_cpu_seconds() -> float:
    """CPU time the GCS emulator's server has used so far: on this machine it competes with what is measured."""
    fields = Path(f"/proc/{stack.pids['gcs']}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@contextlib.contextmanager
def deploys_stopped():
    """The stack's targets deployed `stopped` and not watched after they migrate, for a benchmark's length, then as
    they were: the checklist a promotion is compared with has no app deploy between two phases and no minutes of
    watching after, and nobody waits for either here."""
    from dbpromote.config import DatabaseTarget

    saved = {server: DatabaseTarget.load(server) for server in local_stack.SERVERS}
    for server, target in saved.items():
        target.model_copy(update={"deploy": "stopped", "watch_after_s": 0}).save(server, overwrite=True)
    try:
        yield
    finally:
        for server, target in saved.items():
            target.save(server, overwrite=True)
