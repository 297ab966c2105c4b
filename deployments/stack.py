"""The local stack: two PostgreSQL servers, the GCS emulator, a Prefect server and worker, under one state folder."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

import httpx
import psycopg
from psycopg import sql

from dbpromote.errors import StackError

REPO_ROOT = Path(__file__).resolve().parents[1]
SAMPLE_PROJECT = REPO_ROOT / "examples" / "tenant_backend"
SERVERS = ("staging", "production")
DATABASE = "tenant_backend"
MIGRATION_ROLE = "tenant_owner"
APP_ROLE = "django_app"
BUCKET = "dbpromote-backups"
WORK_POOL = "dbpromote"
PREFERRED_PORTS = {"staging": 54330, "production": 54331, "gcs": 9023, "prefect": 4200}
V1_MIGRATION = ("core", "0001_initial")
SEED_TENANTS = 3


def state_dir() -> Path:
    return Path(os.environ.get("DBPROMOTE_HOME") or REPO_ROOT / ".dbpromote").resolve()


def pg_bin() -> Path:
    return Path(os.environ.get("DBPROMOTE_PG_BIN", "/usr/lib/postgresql/15/bin"))


@dataclass
class Stack:
    """The recorded state of one local stack: ports, passwords and the PIDs of what it started."""

    home: Path
    ports: dict[str, int] = field(default_factory=dict)
    passwords: dict[str, str] = field(default_factory=dict)
    pids: dict[str, int] = field(default_factory=dict)
    commands: dict[str, list[str]] = field(default_factory=dict)

    @property
    def state_file(self) -> Path:
        return self.home / "state.json"

    @classmethod
    def load(cls, home: Path | None = None) -> Stack:
        home = home or state_dir()
        stack = cls(home=home)
        if stack.state_file.is_file():
            recorded = json.loads(stack.state_file.read_text())
            stack.ports, stack.passwords = recorded["ports"], recorded["passwords"]
            stack.pids, stack.commands = recorded["pids"], recorded["commands"]
        return stack

    def save(self) -> None:
        self.home.mkdir(parents=True, exist_ok=True)
        tmp = self.state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.__dict__ | {"home": str(self.home)}, indent=2))
        tmp.chmod(0o600)
        tmp.replace(self.state_file)

    # -- addresses ---------------------------------------------------------------------------------

    def database_url(self, server: str, role: str = MIGRATION_ROLE, *, show_secret: bool = True) -> str:
        password = quote(self.passwords[role], safe="") if show_secret else "****"
        return f"postgresql://{role}:{password}@127.0.0.1:{self.ports[server]}/{DATABASE}"

    def superuser_conninfo(self, server: str, dbname: str = "postgres") -> dict:
        return {
            "host": "127.0.0.1",
            "port": self.ports[server],
            "user": "postgres",
            "password": self.passwords["postgres"],
            "dbname": dbname,
        }

    @property
    def gcs_endpoint(self) -> str:
        return f"http://127.0.0.1:{self.ports['gcs']}"

    @property
    def prefect_api_url(self) -> str:
        return f"http://127.0.0.1:{self.ports['prefect']}/api"

    @property
    def prefect_ui_url(self) -> str:
        return f"http://127.0.0.1:{self.ports['prefect']}"

    def client_env(self) -> dict[str, str]:
        """Environment under which the Prefect client, flows and the GCS client reach this stack."""
        return {
            "PREFECT_API_URL": self.prefect_api_url,
            "STORAGE_EMULATOR_HOST": self.gcs_endpoint,
            "NO_GCE_CHECK": "True",
            "GCE_METADATA_HOST": "127.0.0.1:1",
            "GOOGLE_CLOUD_PROJECT": "dbpromote-local",
            "DO_NOT_TRACK": "1",
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        }

    # -- processes ---------------------------------------------------------------------------------

    def running(self, component: str) -> bool:
        """Whether the recorded PID is alive and still the process we started (not a reused PID)."""
        pid = self.pids.get(component)
        if not pid:
            return False
        if not _process_alive(pid):
            return False
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            return False
        expected = [part.encode() for part in self.commands.get(component, [])]
        return all(part in cmdline for part in expected)


# -- up ------------------------------------------------------------------------------------------------


def up(home: Path | None = None, *, deploy: bool = True) -> Stack:
    """Start every component that is not already running; stop what this call started if any step fails."""
    home = home or state_dir()
    _check_prerequisites(home)
    stack = Stack.load(home)
    for role in ("postgres", MIGRATION_ROLE, APP_ROLE):
        stack.passwords.setdefault(role, secrets.token_urlsafe(18))
    started: list[str] = []
    try:
        fresh_servers = []
        for server in SERVERS:
            if not stack.running(server):
                if _start_postgres(stack, server):
                    fresh_servers.append(server)
                started.append(server)
        for server in SERVERS:
            _grant_roles(stack, server)
        if not stack.running("gcs"):
            _start_gcs_emulator(stack)
            started.append("gcs")
        if not stack.running("prefect"):
            _start_prefect_server(stack)
            started.append("prefect")
        if not stack.running("worker"):
            _start_worker(stack)
            started.append("worker")
        register_blocks(stack)
        if deploy:
            deploy_flows(stack)
        for server in fresh_servers:
            reset_database(stack, server)
    except BaseException:
        _stop(stack, reversed(started))
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
    try:
        home.mkdir(parents=True, exist_ok=True)
        probe = home / ".write-test"
        probe.write_text("")
        probe.unlink()
    except OSError:
        raise StackError(
            f"The state folder {home} is not writable; make it writable or set DBPROMOTE_HOME to a writable folder."
        ) from None


def free_port(preferred: int, taken: set[int] = frozenset()) -> int:
    """The preferred port if nothing listens there, else the next free one (loopback only)."""
    for port in range(preferred, preferred + 100):
        if port in taken:
            continue
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise StackError(f"No free port in {preferred}-{preferred + 99} on 127.0.0.1; stop what holds them.")


def _pick_port(stack: Stack, component: str) -> int:
    taken = {port for name, port in stack.ports.items() if name != component}
    preferred = int(os.environ.get(f"DBPROMOTE_PORT_{component.upper()}", PREFERRED_PORTS[component]))
    stack.ports[component] = free_port(preferred, taken)
    return stack.ports[component]


def _as_postgres_user(command: list[str]) -> list[str]:
    # initdb and the server refuse to run as root.
    return ["runuser", "-u", "postgres", "--", *command] if os.geteuid() == 0 else command


def _start_postgres(stack: Stack, server: str) -> bool:
    """Start the server's cluster, creating it first if needed; True when it was created now."""
    root = stack.home / "pg" / server
    data, run = root / "data", root / "run"
    run.mkdir(parents=True, exist_ok=True)
    if os.geteuid() == 0:
        shutil.chown(root, "postgres")
        shutil.chown(run, "postgres")
        if subprocess.run(_as_postgres_user(["test", "-w", str(root)])).returncode != 0:
            raise StackError(
                f"The postgres system user cannot write to {root}; set DBPROMOTE_HOME to a folder it can reach "
                "(every parent folder must be searchable by others, e.g. not under /root)."
            )
    created = not (data / "PG_VERSION").is_file()
    if created:
        shutil.rmtree(data, ignore_errors=True)
        pwfile = root / "pwfile"
        pwfile.write_text(stack.passwords["postgres"] + "\n")
        if os.geteuid() == 0:
            shutil.chown(pwfile, "postgres")
        _run(
            _as_postgres_user(
                [
                    str(pg_bin() / "initdb"),
                    "-D",
                    str(data),
                    "-U",
                    "postgres",
                    f"--pwfile={pwfile}",
                    "--auth=scram-sha-256",
                    "-E",
                    "UTF8",
                    "--locale=C.UTF-8",
                ]
            ),
            f"initdb of the {server} cluster",
        )
        pwfile.unlink()
    port = _pick_port(stack, server)
    (root / "postgres.log").touch()
    if os.geteuid() == 0:
        shutil.chown(root / "postgres.log", "postgres")
    _clear_stale_lock_files(data, run)
    options = f"-c listen_addresses=127.0.0.1 -c port={port} -c unix_socket_directories={run}"
    _run(
        _as_postgres_user(
            [
                str(pg_bin() / "pg_ctl"),
                "-D",
                str(data),
                "-l",
                str(root / "postgres.log"),
                "-o",
                options,
                "-w",
                "-t",
                "60",
                "start",
            ]
        ),
        f"start of the {server} PostgreSQL server",
    )
    stack.pids[server] = int((data / "postmaster.pid").read_text().splitlines()[0])
    stack.commands[server] = [str(data)]
    stack.save()
    if created:
        _create_roles_and_database(stack, server)
    return created


def _clear_stale_lock_files(data: Path, run: Path) -> None:
    """After a crash, the lock files of a dead postmaster (or of a zombie nobody reaped) block the next start."""
    for lock in [data / "postmaster.pid", *run.glob(".s.PGSQL.*.lock")]:
        try:
            pid = int(lock.read_text().splitlines()[0])
        except (OSError, ValueError, IndexError):
            continue
        if not _process_alive(pid):
            lock.unlink(missing_ok=True)


def _process_alive(pid: int) -> bool:
    try:
        return not Path(f"/proc/{pid}/stat").read_text().rsplit(") ", 1)[1].startswith("Z")
    except (OSError, IndexError):
        return False


def _create_roles_and_database(stack: Stack, server: str) -> None:
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
    _create_database(stack, server)


def _grant_roles(stack: Stack, server: str) -> None:
    """What the migration role needs besides owning the schema; repeated on every `up` (a stack made before a
    grant was added gets it too)."""
    with psycopg.connect(**stack.superuser_conninfo(server), autocommit=True) as conn:
        # Lets the migration role act as the application (SET ROLE) to prove tenant isolation.
        conn.execute(sql.SQL("GRANT {} TO {}").format(sql.Identifier(APP_ROLE), sql.Identifier(MIGRATION_ROLE)))
        # Lets a restore end the application's sessions before it swaps the restored database in.
        conn.execute(sql.SQL("GRANT pg_signal_backend TO {}").format(sql.Identifier(MIGRATION_ROLE)))


def _create_database(stack: Stack, server: str) -> None:
    with psycopg.connect(**stack.superuser_conninfo(server), autocommit=True) as conn:
        conn.execute(
            sql.SQL("CREATE DATABASE {} OWNER {}").format(sql.Identifier(DATABASE), sql.Identifier(MIGRATION_ROLE))
        )
    with psycopg.connect(**stack.superuser_conninfo(server, DATABASE), autocommit=True) as conn:
        # PostgreSQL 15: public belongs to pg_database_owner, i.e. the migration role; the app may only use it.
        conn.execute(sql.SQL("GRANT USAGE ON SCHEMA public TO {}").format(sql.Identifier(APP_ROLE)))


def _spawn(stack: Stack, component: str, command: list[str], env: dict[str, str], cwd: Path) -> None:
    log = open(stack.home / f"{component}.log", "ab")
    process = subprocess.Popen(
        command,
        env=os.environ | env,
        cwd=cwd,
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
    )
    log.close()
    stack.pids[component] = process.pid
    stack.commands[component] = command[1:]
    stack.save()


def _wait_until(check, what: str, log: Path, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except (httpx.HTTPError, OSError):
            pass
        time.sleep(0.3)
    tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
    raise StackError(f"{what} did not become healthy within {timeout:.0f} s; see {log}.\n{tail}")


def _venv_script(name: str) -> str:
    return str(Path(sys.executable).parent / name)


def _start_gcs_emulator(stack: Stack) -> None:
    port = _pick_port(stack, "gcs")
    storage = stack.home / "gcs"
    storage.mkdir(exist_ok=True)
    command = [
        _venv_script("gcp-storage-emulator"),
        "start",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--default-bucket",
        BUCKET,
        "-q",
    ]
    _spawn(stack, "gcs", command, {"STORAGE_BASE": str(storage)}, storage)
    _wait_until(lambda: gcs_healthy(stack), "The GCS emulator", stack.home / "gcs.log")


def gcs_healthy(stack: Stack) -> bool:
    response = httpx.get(f"{stack.gcs_endpoint}/storage/v1/b/{BUCKET}", timeout=2)
    return response.status_code == 200


def _prefect_env(stack: Stack) -> dict[str, str]:
    prefect_home = stack.home / "prefect"
    return stack.client_env() | {
        "PREFECT_HOME": str(prefect_home),
        "PREFECT_SERVER_UI_STATIC_DIRECTORY": str(prefect_home / "ui"),
        "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "60",
        "PREFECT_LOGGING_LEVEL": "INFO",
    }


def _start_prefect_server(stack: Stack) -> None:
    port = _pick_port(stack, "prefect")
    (stack.home / "prefect").mkdir(exist_ok=True)
    command = [_venv_script("prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)]
    _spawn(stack, "prefect", command, _prefect_env(stack), stack.home)
    _wait_until(lambda: prefect_healthy(stack), "The Prefect server", stack.home / "prefect.log", timeout=120)


def prefect_healthy(stack: Stack) -> bool:
    return httpx.get(f"{stack.prefect_api_url}/health", timeout=2).status_code == 200


def _start_worker(stack: Stack) -> None:
    command = [
        _venv_script("prefect"),
        "worker",
        "start",
        "--pool",
        WORK_POOL,
        "--type",
        "process",
        "--name",
        f"dbpromote-{stack.ports['prefect']}",
    ]
    _spawn(stack, "worker", command, _prefect_env(stack), REPO_ROOT)


def register_blocks(stack: Stack) -> None:
    """The sample project and the two targets as Prefect blocks, visible and editable in the UI."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from dbpromote.config import DatabaseTarget, DjangoProject

    with temporary_settings({PREFECT_API_URL: stack.prefect_api_url}):
        DjangoProject(path=str(SAMPLE_PROJECT), settings_module="tenant_backend.settings", python=sys.executable).save(
            "tenant-backend", overwrite=True
        )
        for server in SERVERS:
            DatabaseTarget(
                url=stack.database_url(server),
                requires_approval=server == "production",
                bucket=BUCKET,
                prefix="backups",
                app_role=APP_ROLE,
            ).save(server, overwrite=True)


def deploy_flows(stack: Stack) -> None:
    """Deploy prefect.yaml's deployments to the stack's work pool."""
    if not (REPO_ROOT / "prefect.yaml").is_file():
        return
    _run(
        [_venv_script("prefect"), "--no-prompt", "deploy", "--all"],
        "deploying the flows",
        env=os.environ | _prefect_env(stack) | {"DBPROMOTE_REPO": str(REPO_ROOT)},
        cwd=REPO_ROOT,
    )


def _run(command: list[str], what: str, **kwargs) -> None:
    result = subprocess.run(command, capture_output=True, text=True, **kwargs)
    if result.returncode != 0:
        raise StackError(f"{what} failed (exit {result.returncode}): {result.stderr.strip() or result.stdout.strip()}")


# -- reset ---------------------------------------------------------------------------------------------


def reset_database(stack: Stack, server: str, *, tenants: int = SEED_TENANTS) -> None:
    """Recreate the sample database at the v1 state and seed tenants."""
    with psycopg.connect(**stack.superuser_conninfo(server), autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(DATABASE)))
    _create_database(stack, server)
    env = os.environ | {"DATABASE_URL": stack.database_url(server), "DJANGO_SETTINGS_MODULE": "tenant_backend.settings"}
    manage = [sys.executable, str(SAMPLE_PROJECT / "manage.py")]
    _run([*manage, "migrate", *V1_MIGRATION], f"migrating {server} to v1", env=env, cwd=SAMPLE_PROJECT)
    _run([*manage, "seed_tenants", "--tenants", str(tenants)], f"seeding {server}", env=env, cwd=SAMPLE_PROJECT)


def reset(home: Path | None = None) -> Stack:
    stack = Stack.load(home)
    missing = [server for server in SERVERS if not stack.running(server)]
    if missing:
        raise StackError(f"The {', '.join(missing)} server is not running; start the stack with `dbpromote stack up`.")
    for server in SERVERS:
        reset_database(stack, server)
    return stack


# -- status --------------------------------------------------------------------------------------------


def status(home: Path | None = None, *, show_secrets: bool = False) -> dict:
    """Every component with its address and health."""
    stack = Stack.load(home)
    components: dict[str, dict] = {}
    for server in SERVERS:
        components[server] = {
            "kind": "postgresql",
            "address": f"127.0.0.1:{stack.ports.get(server)}",
            "pid": stack.pids.get(server),
            "healthy": stack.running(server) and _postgres_healthy(stack, server),
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
    }
    components["worker"] = {
        "kind": "prefect-worker",
        "work_pool": WORK_POOL,
        "pid": stack.pids.get("worker"),
        "healthy": stack.running("worker"),
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


def _postgres_healthy(stack: Stack, server: str) -> bool:
    try:
        with psycopg.connect(**stack.superuser_conninfo(server), connect_timeout=3) as conn:
            return conn.execute("SELECT 1").fetchone() == (1,)
    except psycopg.Error:
        return False


# -- down ----------------------------------------------------------------------------------------------


def down(home: Path | None = None) -> list[str]:
    """Stop exactly what `up` started (by recorded PID); safe twice and after a crash. Returns what it stopped."""
    stack = Stack.load(home)
    return _stop(stack, ["worker", "prefect", "gcs", *SERVERS])


def _stop(stack: Stack, components) -> list[str]:
    stopped = []
    for component in components:
        if stack.running(component):
            pid = stack.pids[component]
            if component in SERVERS:
                os.kill(pid, signal.SIGINT)  # PostgreSQL's fast shutdown
            else:
                os.killpg(pid, signal.SIGTERM)
            if not _wait_gone(pid, 30):
                if component in SERVERS:
                    os.kill(pid, signal.SIGQUIT)  # PostgreSQL's immediate shutdown
                else:
                    os.killpg(pid, signal.SIGKILL)
                _wait_gone(pid, 10)
            stopped.append(component)
        stack.pids.pop(component, None)
    if stack.home.is_dir():
        stack.save()
    return stopped


def _wait_gone(pid: int, timeout: float) -> bool:
    """Wait until the process and everything in its process group (its children) has exited."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            pass
        if not _live_group_members(pid):
            return True
        time.sleep(0.1)
    return False


def _live_group_members(pgid: int) -> list[int]:
    members = []
    for stat_file in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat_file.read_text().rsplit(") ", 1)[1].split()
        except (OSError, IndexError):
            continue
        process_id = int(stat_file.parent.name)
        if fields[0] != "Z" and (int(fields[2]) == pgid or process_id == pgid):
            members.append(process_id)
    return members
