"""Where dbpromote's configuration lives: Prefect blocks for Django projects and database targets."""

import shutil
import sys
from pathlib import Path
from urllib.parse import quote, urlsplit, urlunsplit

from prefect.blocks.core import Block
from psycopg.conninfo import conninfo_to_dict
from pydantic import Field, SecretStr

from dbpromote.errors import ConfigError


class DjangoProject(Block):
    """A Django project to promote, run in its own interpreter with its own settings."""

    _block_type_name = "dbpromote Django project"
    _block_type_slug = "dbpromote-django-project"

    path: str = Field(description="Folder holding manage.py.")
    settings_module: str = Field(description="DJANGO_SETTINGS_MODULE, e.g. mysite.settings.")
    python: str = Field(default="", description="The project's interpreter; empty: the worker's own.")
    verify_dir: str = Field(
        default="verify", description="Folder of SQL checks (relative to path), each must return no rows."
    )

    def interpreter(self) -> str:
        return self.python or sys.executable


class DatabaseTarget(Block):
    """One database a project is promoted to (an environment: staging, production, a shard)."""

    _block_type_name = "dbpromote database target"
    _block_type_slug = "dbpromote-database-target"

    url: SecretStr = Field(description="postgresql:// URL of the role that runs migrations (owns the schema).")
    requires_approval: bool = Field(default=False, description="Pause for a named person's approval first.")
    approvers: list[str] = Field(default_factory=list, description="Who may approve; empty: anyone.")
    bucket: str = Field(default="dbpromote-backups", description="GCS bucket for backups.")
    prefix: str = Field(default="backups", description="Object name prefix in the bucket.")
    lock_timeout_ms: int = Field(default=2000, gt=0, description="lock_timeout of each migration's session.")
    statement_timeout_ms: int = Field(default=600_000, ge=0, description="statement_timeout; 0 means none.")
    max_lock_wait_s: float = Field(default=300, gt=0, description="Bound on retrying a lock that is not granted.")
    long_transaction_s: float = Field(default=60, gt=0, description="A transaction older than this blocks DDL.")
    long_transaction_wait_s: float = Field(default=120, ge=0, description="How long to wait for such transactions.")
    tenant_column: str = Field(default="tenant_id", description="The column that scopes a row to a tenant.")
    tenant_setting: str = Field(default="app.current_tenant_id", description="Setting the app sets per request.")
    app_role: str = Field(default="django_app", description="The role the application connects as.")
    force_rls: bool = Field(default=False, description="FORCE ROW LEVEL SECURITY (applies to table owners too).")
    schema_name: str = Field(default="public", description="Schema of the project's tables.")

    @property
    def database(self) -> str:
        return conninfo_to_dict(self.url.get_secret_value()).get("dbname", "")

    def on_database(self, database: str) -> "DatabaseTarget":
        """The same server and role, another database (a restore's new database, a rehearsal's scratch copy)."""
        parts = urlsplit(self.url.get_secret_value())
        url = urlunsplit(parts._replace(path="/" + quote(database)))
        return self.model_copy(update={"url": SecretStr(url)})


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


def _load(block_class: type[Block], name: str, register_command: str):
    try:
        return block_class.load(name)
    except ValueError:
        kind = "project" if block_class is DjangoProject else "target"
        raise ConfigError(f"Unknown {kind} {name!r}; register it with `{register_command}`.") from None
