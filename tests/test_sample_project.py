"""The sample project's migrations on real PostgreSQL: zero to v1 to the release head and back."""

import os
import subprocess
import sys

import psycopg
import pytest
from psycopg import sql

from dbpromote.localstack import SAMPLE_PROJECT
from tests.harness import RELEASE


@pytest.fixture
def empty_database(stack):
    with psycopg.connect(**stack.superuser_conninfo("staging"), autocommit=True) as conn:
        conn.execute("DROP DATABASE IF EXISTS sample_scratch WITH (FORCE)")
        conn.execute(sql.SQL("CREATE DATABASE sample_scratch OWNER tenant_owner"))
    return stack.database_url("staging").rsplit("/", 1)[0] + "/sample_scratch"


def manage(url, *args):
    result = subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=SAMPLE_PROJECT,
        capture_output=True,
        text=True,
        env=os.environ | {"DATABASE_URL": url},
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def tables_with_tenant_column(url):
    with psycopg.connect(url) as conn:
        return {
            r[0]
            for r in conn.execute("SELECT table_name FROM information_schema.columns WHERE column_name = 'tenant_id'")
        }


def test_migrates_from_zero_to_v1_to_head_and_back(empty_database):
    url = empty_database
    manage(url, "migrate", "core", "0001_initial")
    assert len(tables_with_tenant_column(url)) >= 26
    manage(url, "seed_tenants", "--tenants", "2", "--rows", "5")
    manage(url, "migrate")
    assert "core_featureflag" in tables_with_tenant_column(url)
    shown = manage(url, "showmigrations", "core")
    assert all(f"[X] {label.split('.')[1]}" in shown for label in RELEASE)
    with psycopg.connect(url) as conn:
        assert (
            conn.execute(
                "SELECT count(*) FROM core_taskstatus WHERE name IN ('To do', 'In progress', 'Done')"
            ).fetchone()[0]
            == 6
        )
    manage(url, "migrate", "core", "0001_initial")
    assert "core_featureflag" not in tables_with_tenant_column(url)
    assert "[ ] 0002_featureflag" in manage(url, "showmigrations", "core")


def test_makemigrations_check_is_clean(stack):
    manage(stack.database_url("staging"), "makemigrations", "--check", "--dry-run")


def test_every_many_to_many_goes_through_a_tenant_scoped_model():
    sys.path.insert(0, str(SAMPLE_PROJECT))
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tenant_backend.settings")
    import django
    from django.apps import apps

    django.setup()
    models = [m for m in apps.get_app_config("core").get_models() if m.__name__ != "Tenant"]
    assert len(models) >= 26
    for model in models:
        assert model._meta.get_field("tenant").column == "tenant_id"
        assert not model._meta.many_to_many, f"{model.__name__} has an implicit many-to-many table"
        for constraint in model._meta.constraints:
            assert "tenant" in constraint.fields, f"{constraint.name} does not include the tenant"
