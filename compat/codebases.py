"""Real third-party Django codebases, from the package registry at two released versions each, and their venvs:
the compatibility suite's (tests/test_compatibility.py) and the plan benchmark's.

Each codebase is a small site (compat/sites/) configured the way its kind of project is configured, whose
apps and migrations come from the packages. The venvs are built once per set of requirements and kept in
DBPROMOTE_COMPAT_CACHE (default ~/.cache/dbpromote/compat): a fresh machine builds six, about a minute.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

SITES = Path(__file__).resolve().parent / "sites"
DJANGO = ["django>=5.2,<5.3", "psycopg[binary]>=3.2,<3.4"]
# The LTS before: an old release that ran on it is migrated by it, so the upgrade crosses a Django version.
DJANGO_42 = ["django>=4.2,<4.3", "psycopg[binary]>=3.2,<3.4"]


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
    # A table and column of the codebase's own where a person's hand-made index, default and constraint must be found
    # after the upgrade; and (upgrades across a Django version) what the live schema differs in by names alone.
    hand_made_on: tuple[str, str] = ("auth_user", "last_name")
    name_notes: set[str] = field(default_factory=set)
    # What the upgrade breaks for the release running while it migrates, as upstream's release notes say:
    # (app.migration, app.Model, field) that `check` must find (it may find more).
    breaking: set[tuple[str, str, str]] = field(default_factory=set)

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
        hand_made_on=("account_emailaddress", "email"),
    ),
    Codebase(
        name="filer",
        settings="settings",
        old=["django-filer==3.2.3", "dj-database-url==3.1.2"],
        new=["django-filer==3.6.0", "dj-database-url==3.1.2"],
        covers="dj-database-url with no default; a squashed migration with replaces, applied by the old release, "
        "whose replaced migrations the new one builds on; easy-thumbnails beside it",
        expected=["filer.0018_alter_file_options"],
        hand_made_on=("filer_file", "name"),
    ),
    Codebase(
        name="constance",
        settings="settings",
        old=["django-constance==2.9.1"],
        new=["django-constance==4.4.0"],
        covers="separate variables (POSTGRES_HOST, ...); a non-atomic RunPython migration",
        expected=["constance.0002_migrate_from_old_table", "constance.0003_drop_pickle"],
        hand_made_on=("constance_constance", "key"),
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


# Old releases on Django 4.2 LTS, migrated by it; new releases on Django 5.2 LTS. Long histories with both the names
# Django generates (unique_together, index_together, db_index, checks) and names the packages give themselves.
CROSS_VERSION = [
    Codebase(
        name="wagtail",
        settings="settings",
        old=[*DJANGO_42, "wagtail==5.2.8", "django-allauth[mfa,socialaccount]==0.61.1", "dj-database-url==3.1.2"],
        new=["wagtail==7.0.3", "django-allauth[mfa,socialaccount]==65.21.1", "dj-database-url==3.1.2"],
        covers="Wagtail 5.2 LTS and allauth 0.61 on Django 4.2 to Wagtail 7.0 LTS and allauth 65 on Django 5.2 (220 "
        "migrations); django-taggit 6 rewrote its history: the unique_together and index_together of its 0002 and "
        "0003 became an AddConstraint and an AddIndex with names, and its 0006 renames the index by its columns",
        expected=[
            "taggit.0006_rename_taggeditem_content_type_object_id_taggit_tagg_content_8fc721_idx",
            "wagtailcore.0094_alter_page_locale",
        ],  # fmt: skip
        # The constraint keeps the name Django 4.2 generated (the name taggit now gives it is 65 characters).
        name_notes={
            "constraint public.taggit_taggeditem.taggit_taggeditem_content_type_id_object_id_tag_id_4bb97a8e_uni"
        },
        hand_made_on=("taggit_taggeditem", "object_id"),
        # Wagtail 6.0's upgrade considerations: the search Query and QueryDailyHits models are removed (moved to
        # wagtail.contrib.search_promotions in 5.0); GroupPagePermission.permission_type is removed (replaced by the
        # `permission` foreign key in 5.1); and 0091 removes Revision.submitted_for_moderation (workflows replaced it).
        breaking={
            ("wagtailsearch.0008_remove_query_and_querydailyhits_models", "wagtailsearch.Query", ""),
            ("wagtailsearch.0008_remove_query_and_querydailyhits_models", "wagtailsearch.QueryDailyHits", ""),
            (
                "wagtailcore.0090_remove_grouppagepermission_permission_type",
                "wagtailcore.GroupPagePermission",
                "permission_type",
            ),
            (
                "wagtailcore.0091_remove_revision_submitted_for_moderation",
                "wagtailcore.Revision",
                "submitted_for_moderation",
            ),
        },  # fmt: skip
    ),
    Codebase(
        name="oscar",
        settings="settings",
        old=[*DJANGO_42, "django-oscar==3.2.6", "dj-database-url==3.1.2"],
        # Treebeard 5+ fails Oscar 4.0's system checks (treebeard.E001): the release Oscar 4.0 shipped beside.
        new=["django-oscar==4.0", "django-treebeard==4.7.1", "dj-database-url==3.1.2"],
        covers="django-oscar 3.2 on Django 4.2 to 4.0 on Django 5.2 (146 migrations over 20 apps); a "
        "PositiveIntegerField check named by an AlterField on the live database and by the server when the replay "
        "creates the table",
        expected=["catalogue.0028_product_priority", "catalogue.0029_product_code"],
        name_notes={"constraint public.address_useraddress.address_useraddress_num_orders_check"},
        hand_made_on=("address_useraddress", "num_orders_as_shipping_address"),
        # Oscar 4.0's release notes: products gain a `priority` (a SmallIntegerField with default 0: the column has
        # no database default, so Oscar 3.2's product INSERTs fail until the new release serves).
        breaking={("catalogue.0028_product_priority", "catalogue.Product", "priority")},
    ),
    Codebase(
        name="ops",
        settings="settings",
        old=[
            *DJANGO_42,
            "django-reversion==5.0.12",
            "django-guardian==2.4.0",
            "django-celery-beat==2.5.0",
            "dj-database-url==3.1.2",
        ],  # fmt: skip
        new=[
            "django-reversion==6.0.0",
            "django-guardian==3.2.0",
            "django-celery-beat==2.8.1",
            "dj-database-url==3.1.2",
        ],
        covers="django-reversion, django-guardian and django-celery-beat on Django 4.2 to their releases on Django "
        "5.2: unique_together in all three, named indexes, and a guardian migration that removes an index by its name",
        expected=["guardian.0003_remove_groupobjectpermission_guardian_gr_content_ae6aec_idx_and_more"],
        hand_made_on=("guardian_userobjectpermission", "object_pk"),
    ),
]


def cache_dir() -> Path:
    return Path(os.environ.get("DBPROMOTE_COMPAT_CACHE") or Path.home() / ".cache" / "dbpromote" / "compat")


def venv_python(requirements: list[str]) -> Path:
    """The interpreter of a venv holding `requirements` and, unless they pin Django themselves, Django 5.2; built
    on first use."""
    if not any(requirement.lower().startswith("django>") for requirement in requirements):
        requirements = [*DJANGO, *requirements]
    key = hashlib.sha256("\n".join([sys.version, *sorted(requirements)]).encode()).hexdigest()[:16]
    venv = cache_dir() / key
    python = venv / "bin" / "python"
    venv.parent.mkdir(parents=True, exist_ok=True)
    # Test workers build the same venv at once: one builds it, the others wait for it on its lock file.
    with open(venv.parent / f"{key}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (venv / ".complete").is_file():
            build_venv(venv, requirements)
    return python


def build_venv(venv: Path, requirements: list[str]) -> None:
    shutil.rmtree(venv, ignore_errors=True)
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", venv], check=True)
    pip = [sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"), "install", "-q", *requirements]
    result = subprocess.run(pip, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"installing {requirements} failed: {result.stderr[-2000:]}")
    (venv / ".complete").write_text("\n".join(requirements))
