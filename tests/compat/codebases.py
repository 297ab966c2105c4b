"""Real third-party Django codebases, from the package registry at two released versions each, and their venvs.

Each codebase is a small site (tests/compat/sites/) configured the way its kind of project is configured, whose
apps and migrations come from the packages. The venvs are built once per set of requirements and kept in
DBPROMOTE_COMPAT_CACHE (default ~/.cache/dbpromote/compat): a fresh machine builds six, about a minute.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

SITES = Path(__file__).resolve().parent / "sites"
DJANGO = ["django>=5.2,<5.3", "psycopg[binary]>=3.2,<3.4"]


@dataclass(frozen=True)
class Codebase:
    """A site, the requirements of its old and new release, and how its settings read the database."""

    name: str
    settings: str
    old: list[str]
    new: list[str]
    covers: str
    # Migrations the upgrade must run (what the codebase is here to cover).
    expected: list[str] = field(default_factory=list)
    # Data the old release holds, and what the new one's data migrations make of it: (SQL, its one value).
    seed: list[str] = field(default_factory=list)
    check: tuple[str, object] | None = None
    # `dbpromote project add` options that give the settings what they read at import.
    project_options: list[str] = field(default_factory=list)
    secrets: dict[str, str] = field(default_factory=dict)  # variable -> value, stored in a Secret block

    @property
    def path(self) -> Path:
        return SITES / f"{self.name}_site"


CODEBASES = [
    Codebase(
        name="allauth",
        settings="settings",
        old=["django-allauth[mfa]==0.61.1", "django-environ==0.14.0"],
        new=["django-allauth[mfa,socialaccount]==65.21.1", "django-environ==0.14.0"],
        covers="django-environ without defaults (SECRET_KEY from a Secret block); four apps with cross-app "
        "dependencies; RunPython data migrations; a site in German (translated verbose names)",
        secrets={"SECRET_KEY": "allauth-site-secret-key-from-a-secret-block"},
        expected=["account.0006_emailaddress_lower", "mfa.0003_authenticator_type_uniq"],
        seed=[
            "INSERT INTO auth_user (password, is_superuser, username, first_name, last_name, email, is_staff, "
            "is_active, date_joined) VALUES ('!', false, 'alice', '', '', 'Alice@Example.COM', false, true, now())",
            'INSERT INTO account_emailaddress (user_id, email, verified, "primary") '
            "SELECT id, email, true, true FROM auth_user WHERE username = 'alice'",
        ],
        check=("SELECT email FROM account_emailaddress", "alice@example.com"),  # RunPython lower-cased it
    ),
    Codebase(
        name="filer",
        settings="settings",
        old=["django-filer==3.2.3", "dj-database-url==3.1.2"],
        new=["django-filer==3.6.0", "dj-database-url==3.1.2"],
        covers="dj-database-url with no default; a squashed migration with replaces, applied by the old release, "
        "whose replaced migrations the new one builds on; easy-thumbnails beside it",
        expected=["filer.0018_alter_file_options"],
    ),
    Codebase(
        name="constance",
        settings="settings",
        old=["django-constance==2.9.1"],
        new=["django-constance==4.4.0"],
        covers="separate variables (POSTGRES_HOST, ...); a non-atomic RunPython migration",
        expected=["constance.0002_migrate_from_old_table", "constance.0003_drop_pickle"],
        project_options=[
            "--database-url-env",
            "",
            "--database-env",
            "host=POSTGRES_HOST",
            "--database-env",
            "port=POSTGRES_PORT",
            "--database-env",
            "name=POSTGRES_DB",
            "--database-env",
            "user=POSTGRES_USER",
            "--database-env",
            "password=POSTGRES_PASSWORD",
            "--env",
            "DJANGO_SECRET_KEY=constance-site-not-a-secret",
        ],
    ),
]


def cache_dir() -> Path:
    return Path(os.environ.get("DBPROMOTE_COMPAT_CACHE") or Path.home() / ".cache" / "dbpromote" / "compat")


def venv_python(requirements: list[str]) -> Path:
    """The interpreter of a venv holding Django 5.2 and `requirements`, built on first use."""
    key = hashlib.sha256("\n".join([sys.version, *DJANGO, *sorted(requirements)]).encode()).hexdigest()[:16]
    venv = cache_dir() / key
    python = venv / "bin" / "python"
    if (venv / ".complete").is_file():
        return python
    shutil.rmtree(venv, ignore_errors=True)
    venv.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", venv], check=True)
    pip = [sys.executable, "-m", "pip", "--python", str(python), "install", "-q", *DJANGO, *requirements]
    result = subprocess.run(pip, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"installing {requirements} failed: {result.stderr[-2000:]}")
    (venv / ".complete").write_text("\n".join(requirements))
    return python
