"""The local stack's recorded state: where it lives, its ports, passwords and the processes it started."""

from __future__ import annotations

import importlib.util
import json
import os
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

# The sample project the stack seeds and promotes: package data of an installed dbpromote (dbpromote.examples is the
# repository's examples/ folder, in a checkout too).
SAMPLE_PROJECT = Path(importlib.util.find_spec("dbpromote.examples").submodule_search_locations[0]) / "tenant_backend"
STATE = ".dbpromote"
SERVERS = ("staging", "production")
DATABASE = "tenant_backend"
MIGRATION_ROLE = "tenant_owner"
APP_ROLE = "django_app"
# The Prefect API's credential in the state's passwords (PREFECT_SERVER_API_AUTH_STRING on the server).
API_CREDENTIAL = "prefect-api"
BUCKET = "dbpromote-backups"
PREFERRED_PORTS = {"staging": 54330, "production": 54331, "gcs": 9023, "prefect": 4200}
V1_MIGRATION = ("core", "0001_initial")
SEED_TENANTS = 3


def state_dir() -> Path:
    """Where the local stack keeps its state: DBPROMOTE_HOME, else the `.dbpromote` folder of the project the
    command runs in (this folder's, or the nearest parent's that has one), else a new one here; never inside the
    installed package."""
    if os.environ.get("DBPROMOTE_HOME"):
        return Path(os.environ["DBPROMOTE_HOME"]).resolve()
    here = Path.cwd().resolve()
    return next((folder / STATE for folder in (here, *here.parents) if (folder / STATE).is_dir()), here / STATE)


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

    def with_credentials(self) -> Stack:
        """Every password and the API credential, made once and kept: set before anything starts."""
        for name in ("postgres", MIGRATION_ROLE, APP_ROLE, API_CREDENTIAL, "prefect"):
            self.passwords.setdefault(name, secrets.token_urlsafe(18))
        return self

    def saved(self) -> Stack:
        self.save()
        return self

    def save(self) -> None:
        self.home.mkdir(parents=True, exist_ok=True)
        # Others may pass through (the postgres system user reaches its clusters inside) but read nothing.
        self.home.chmod(0o711)
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

    @property
    def api_auth_string(self) -> str:
        """The Prefect API's one credential (basic auth, `dbpromote:TOKEN`): the server requires it of every caller."""
        return f"dbpromote:{self.passwords[API_CREDENTIAL]}"

    def client_env(self) -> dict[str, str]:
        """Environment under which the Prefect client, flows and the GCS client reach this stack."""
        # A stack started before its API was locked has no credential until its next `up`.
        credential = {"PREFECT_API_AUTH_STRING": self.api_auth_string} if API_CREDENTIAL in self.passwords else {}
        return credential | {
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
        if not process_alive(pid):
            return False
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            return False
        expected = [part.encode() for part in self.commands.get(component, [])]
        return all(part in cmdline for part in expected)


def process_alive(pid: int) -> bool:
    """Alive and not a zombie nobody reaped."""
    try:
        return not Path(f"/proc/{pid}/stat").read_text().rsplit(") ", 1)[1].startswith("Z")
    except (OSError, IndexError):
        return False
