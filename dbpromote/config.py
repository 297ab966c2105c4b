"""Where dbpromote's configuration lives: Prefect blocks for Django projects and database targets."""

import contextlib
import copy
import re
import shutil
import sys
from collections.abc import Iterable, Iterator
from contextvars import ContextVar
from pathlib import Path
from typing import Literal

from prefect.blocks.core import Block
from pydantic import Field, SecretStr, field_validator

from dbpromote.conninfo import Conninfo
from dbpromote.errors import ConfigError
from dbpromote.models.fleet import Share
from dbpromote.run_context import in_threads
from dbpromote.windows import check_windows


class SchemaOnce:
    """Prefect's model_json_schema, generated once per block class: saving a block asks for the whole schema again
    for each of its fields (Block._field_has_secrets), ~3 ms each, half a second of CPU for a target's 40 fields
    (`dbpromote target add` took 1.3 s, the save 0.5 s of it). A class's schema never changes; callers get a copy."""

    _schemas: dict = {}

    @classmethod
    def model_json_schema(cls, *args, **kwargs) -> dict:
        key = (cls, args, tuple(sorted(kwargs.items())))
        if key not in SchemaOnce._schemas:
            SchemaOnce._schemas[key] = super().model_json_schema(*args, **kwargs)
        return copy.deepcopy(SchemaOnce._schemas[key])


class DjangoProject(SchemaOnce, Block):
    """A Django project to promote, run in its own interpreter with its own settings."""

    _block_type_name = "dbpromote Django project"
    _block_type_slug = "dbpromote-django-project"

    path: str = Field(description="Folder holding manage.py.")
    settings_module: str = Field(description="DJANGO_SETTINGS_MODULE, e.g. mysite.settings.")
    python: str = Field(default="", description="The project's interpreter; empty: the worker's own.")
    verify_dir: str = Field(
        default="verify", description="Folder of SQL checks (relative to path), each must return no rows."
    )
    env: dict[str, str] = Field(
        default_factory=dict, description="Environment the settings need at import (not secrets: see env_secrets)."
    )
    env_secrets: dict[str, str] = Field(
        default_factory=dict, description="Secret environment: variable name -> name of a Prefect Secret block."
    )
    env_file: str = Field(default="", description="A dotenv file (KEY=VALUE lines) the settings expect, e.g. .env.")
    database_url_env: str = Field(
        default="DATABASE_URL", description="Variable that receives the target's URL (dj-database-url, environ)."
    )
    database_env: dict[str, str] = Field(
        default_factory=dict,
        description="Separate variables that receive the target's connection: host, port, name, user, password "
        "-> variable name (e.g. host: POSTGRES_HOST).",
    )
    acknowledged_package_changes: list[str] = Field(
        default_factory=list,
        description="Installed apps (packages) whose models differ from their migrations, known and accepted.",
    )
    lint_ignore: dict[str, str] = Field(
        default_factory=dict,
        description="Lint rules (squawk's or dbpromote's) that are not risks for this project -> the reason.",
    )

    def interpreter(self) -> str:
        return self.python or sys.executable

    def environment(self, url: str) -> dict[str, str]:
        """What the project's settings read at import, with the target's connection where they look for it.

        Never a command line (`ps` shows those): only the environment of the project's own process.
        """
        environment = read_env_file(Path(self.path) / self.env_file) if self.env_file else {}
        environment |= self.env
        for variable, block in self.env_secrets.items():
            environment[variable] = load_secret(block, variable)
        conninfo = Conninfo(url)
        if self.database_url_env:
            environment[self.database_url_env] = conninfo.url()  # the URL form, whatever form the target's is in
        for part, variable in self.database_env.items():
            environment[variable] = conninfo.database if part == "name" else conninfo.params.get(part, "")
        return environment


def read_env_file(path: Path) -> dict[str, str]:
    """KEY=VALUE lines (optionally `export KEY=VALUE`, values optionally quoted); comments and blank lines skipped."""
    try:
        lines = path.read_text().splitlines()
    except OSError as error:
        raise ConfigError(
            f"The env file {path} cannot be read ({error.strerror}); "
            "fix the path with `dbpromote project add NAME --env-file PATH`."
        ) from None
    values = {}
    for line in lines:
        line = line.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        key, _, value = line.removeprefix("export ").partition("=")
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        values[key.strip()] = value
    return values


def load_secret(block: str, variable: str) -> str:
    from prefect.blocks.system import Secret

    try:
        return str(Secret.load(block).get())
    except ValueError:
        raise ConfigError(
            f"The Secret block {block!r} that holds {variable} does not exist; create it in the UI (Blocks, "
            f"Secret) or with `prefect block create secret`, then `dbpromote project add NAME --env-secret "
            f"{variable}={block}`."
        ) from None


# The parts a project's separate connection variables can receive (`project add --database-env PART=VARIABLE`).
DATABASE_PARTS = ("host", "port", "name", "user", "password")


# GitLab watches a post-deploy migration's effects for minutes (its batched migrations pause 10 min on a bad
# health indicator); three minutes of production after it migrates catch the deadlocks and rollbacks a changed
# schema causes in the application's first requests, and cost a promotion nothing it waits for.
WATCH_AFTER_S = 180.0


class DatabaseTarget(SchemaOnce, Block):
    """One database a project is promoted to (an environment: staging, production, a shard)."""

    _block_type_name = "dbpromote database target"
    _block_type_slug = "dbpromote-database-target"

    url: SecretStr = Field(
        description="Connection string of the role that runs migrations (owns the schema), in any form libpq "
        "accepts: postgresql:// URL, a Unix socket in ?host=, several hosts, key=value."
    )
    requires_approval: bool = Field(default=False, description="Pause for a named person's approval first.")
    approvers: list[str] = Field(default_factory=list, description="Who may approve; empty: anyone.")
    min_approvers: int = Field(
        default=1, ge=1, le=10, description="How many different enrolled approvers must approve (two-person rule)."
    )
    bucket: str = Field(default="dbpromote-backups", description="GCS bucket for backups.")
    prefix: str = Field(default="backups", description="Object name prefix in the bucket.")
    lock_timeout_ms: int = Field(default=2000, gt=0, description="lock_timeout of each migration's session.")
    statement_timeout_ms: int = Field(default=600_000, ge=0, description="statement_timeout; 0 means none.")
    concurrent_lock_timeout_ms: int = Field(
        default=600_000,
        gt=0,
        description="lock_timeout of a migration of concurrent operations (CREATE INDEX CONCURRENTLY, VALIDATE "
        "CONSTRAINT): they wait for old snapshots by design and take no lock the application waits behind.",
    )
    max_lock_wait_s: float = Field(default=300, gt=0, description="Bound on retrying a lock that is not granted.")
    max_app_wait_s: float = Field(
        default=5,
        ge=0,
        description="How long an application session may wait behind a migration's locks before the migration is "
        "cancelled (an atomic one rolls back whole); 0: never cancelled.",
    )
    health_url: str = Field(default="", description="Asked after the target migrates: it must answer 2xx.")
    health_tries: int = Field(default=5, ge=1, le=100, description="Tries of the health URL before it counts as down.")
    health_within_s: float = Field(default=30, gt=0, description="The time the health URL's tries are spread over.")
    smoke_command: str = Field(
        default="",
        description="Run in the project's folder after the target migrates, e.g. `manage.py check --database "
        "default`; it must exit 0.",
    )
    windows: list[str] = Field(
        default_factory=list,
        description="Maintenance windows, each DAYS HH:MM-HH:MM ZONE (e.g. 'sat,sun 01:00-05:00 Europe/Berlin'): a "
        "step whose migrations held a heavy lock longer than window_lock_s on staging (or a rehearsal), or may "
        "rewrite a table, waits for the first one it fits in; none: it runs at once.",
    )
    window_lock_s: float = Field(
        default=10, ge=0, description="A heavy lock held longer than this on staging makes the step wait for a window."
    )
    watch_after_s: float | None = Field(
        default=None,
        ge=0,
        description="Seconds the database is watched after the target migrates (blocked sessions, deadlocks, "
        "rollbacks, connections); unset: WATCH_AFTER_S where approval is required (production), else 0.",
    )
    long_transaction_s: float = Field(default=60, gt=0, description="A transaction older than this blocks DDL.")
    long_transaction_wait_s: float = Field(default=120, ge=0, description="How long to wait for such transactions.")
    tenant_column: str = Field(default="tenant_id", description="The column that scopes a row to a tenant.")
    tenant_setting: str = Field(default="app.current_tenant_id", description="Setting the app sets per request.")
    app_role: str = Field(default="django_app", description="The role the application connects as.")
    force_rls: bool = Field(default=False, description="FORCE ROW LEVEL SECURITY (applies to table owners too).")
    schema_name: str = Field(default="public", description="Schema of the project's tables.")
    database_alias: str = Field(
        default="default", description="The project's DATABASES alias this target is (its routers decide what runs)."
    )
    gcp_credentials: str = Field(
        default="",
        description="A prefect-gcp GcpCredentials block whose service account reads and writes the backups "
        "(dbpromote[gcp]); empty: application default credentials.",
    )
    deploy: Literal["rolling", "stopped"] = Field(
        default="rolling",
        description="How the application is deployed: rolling (the previous release serves while the database "
        "changes, so a plan that breaks it migrates in two phases around the deploy) or stopped (the "
        "application is down during the deploy: one phase).",
    )
    drift: Literal["block", "warn", "off"] = Field(
        default="block",
        description="A promotion's preflight compares the schema with its migrations: block stops on drift a "
        "promotion would not repair, warn shows it in the approval form, off skips the check.",
    )

    @field_validator("windows")
    @classmethod
    def _readable_windows(cls, windows: list[str]) -> list[str]:
        return check_windows(windows)  # a ConfigError naming the fix, at `target add`

    @property
    def watch_after(self) -> float:
        """How long the database is watched after the target migrates."""
        if self.watch_after_s is not None:
            return self.watch_after_s
        return WATCH_AFTER_S if self.requires_approval else 0.0

    @property
    def name(self) -> str:
        """The target's name: the block's it was loaded from or saved as (Prefect keeps it with the block, and
        copies keep it), or the one given with `named`. Every message, record and key says the target by it."""
        return self._block_document_name or ""

    def named(self, name: str) -> "DatabaseTarget":
        """This target under `name`: one built in code (a benchmark's, `check --url`'s), or a copy that acts for
        another (a rehearsal's scratch database)."""
        copy = self.model_copy()
        copy._block_document_name = name
        return copy

    @property
    def conninfo(self) -> Conninfo:
        """The connection string as libpq reads it: where pg_dump, psycopg and the probe all take it from."""
        return Conninfo(self.url.get_secret_value())

    @property
    def database(self) -> str:
        return self.conninfo.database

    def on_database(self, database: str) -> "DatabaseTarget":
        """The same server and role, another database (a restore's new database, a rehearsal's scratch copy)."""
        return self.model_copy(update={"url": SecretStr(self.conninfo.on_database(database))})


class TargetGroup(SchemaOnce, Block):
    """A fleet of targets (per region, per tenant shard) promoted together under one approval: canary members
    first, then waves; inside a wave up to `parallel` at once and never more than `per_server` on one database
    server; no member starts once `max_failures` have failed."""

    _block_type_name = "dbpromote target group"
    _block_type_slug = "dbpromote-target-group"

    members: list[str] = Field(description="The targets, in the order they are promoted.")
    canary: int = Field(default=1, ge=0, description="The first members, promoted first; all must succeed.")
    wave_size: str = Field(default="25%", description="Members per wave after the canaries: N or P% of them.")
    parallel: int = Field(default=4, ge=1, description="Members migrating at once inside a wave.")
    per_server: int = Field(default=2, ge=1, description="Members migrating at once on one database server.")
    max_failures: str = Field(default="1", description="Failures (N or P% of the members) that halt the group.")

    def sizes(self) -> tuple[Share, Share]:
        """The wave size and the failure bound, parsed (each refused in one sentence when malformed)."""
        return Share.parse(self.wave_size, "--wave-size", 1), Share.parse(self.max_failures, "--max-failures", 1)


# Prefect block names: what `project add` and `target add` accept.
BLOCK_NAME = re.compile(r"[a-z0-9][a-z0-9-]*")


# A name is typed, shown in tables and used in object names in the bucket: short enough for all three.
MAX_NAME = 63


def check_block_name(name: str, kind: str) -> None:
    if len(name) > MAX_NAME:
        raise ConfigError(f"The {kind} name is {len(name)} characters long; use at most {MAX_NAME}, e.g. shop-prod.")
    if not BLOCK_NAME.fullmatch(name):
        raise ConfigError(
            f"The {kind} name {name!r} has characters a name cannot have; use lowercase letters, digits and "
            "dashes, starting with a letter or digit, e.g. shop-prod."
        )


def load_project(name: str) -> DjangoProject:
    project = _load(DjangoProject, name, "dbpromote project add NAME --path DIR --settings MODULE")
    if not (Path(project.path) / "manage.py").is_file():
        raise ConfigError(
            f"Project {name!r} points at {project.path}, which has no manage.py; "
            f"fix it with `dbpromote project add {name} --path DIR` (DIR holding manage.py)."
        )
    if shutil.which(project.interpreter()) is None:  # a path, or a name found on PATH
        raise ConfigError(
            f"The interpreter {project.interpreter()} of project {name!r} does not exist or is not executable; "
            f"give the project's Python with `dbpromote project add {name} --python PATH`."
        )
    return project


def load_target(name: str) -> DatabaseTarget:
    return _load(DatabaseTarget, name, "dbpromote target add NAME --url URL")


def load_group(name: str) -> TargetGroup | None:
    """The group of that name, or None when the name is not a group's (a target's, say)."""
    try:
        return TargetGroup.load(name)
    except ValueError:
        return None


# Blocks read once within resolved_once(): (block class, name) -> the block.
_RESOLVED: ContextVar[dict | None] = ContextVar("dbpromote_resolved", default=None)


@contextlib.contextmanager
def resolved_once(targets: Iterable[str] = ()) -> Iterator[None]:
    """Within it, each project and target is read from its block once: the edge of a step, where what it acts on is
    resolved. Nested in another, it reads what the outer one read. A block read costs ~50 ms of the caller's CPU and
    ~28 ms of the server's (75 ms as it waits, idle); a promotion of a group of 10 read its targets and project 310
    times, 12 times a member in each of its two processes, and a lane's member step read its target seven times.
    `targets`: read at its start, several at once; a group's 1,000 members, read one after another where each was
    first needed, held its lanes back 3 min after the approval (benchmarks/fleet.py --sizes 1000)."""
    token = _RESOLVED.set({}) if _RESOLVED.get() is None else None
    try:
        in_threads(load_target, list(targets))
        yield
    finally:
        if token is not None:
            _RESOLVED.reset(token)


def _load(block_class: type[Block], name: str, register_command: str):
    resolved = _RESOLVED.get()
    if resolved is not None and (block_class, name) in resolved:
        return resolved[block_class, name]
    try:
        block = block_class.load(name)
        if resolved is not None:
            resolved[block_class, name] = block
        return block
    except ValueError:
        kind = "project" if block_class is DjangoProject else "target"
        raise ConfigError(f"Unknown {kind} {name!r}; register it with `{register_command}`.") from None
