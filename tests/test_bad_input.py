"""Bad input gets one sentence naming the problem and the fix, before anything is changed."""

import textwrap

import psycopg
import pytest

from dbpromote.backups import list_backups
from dbpromote.errors import ConfigError, DbpromoteError, InputError, PreflightError
from tests.harness import applied


def assert_refused_cleanly(stack, error: DbpromoteError, *expected: str):
    message = str(error)
    assert "\n" not in message and message.endswith("."), message
    for fragment in expected:
        assert fragment in message, message
    assert applied(stack, "staging") == ["core.0001_initial"]


def run(project: str, target: str, to: str = ""):
    from dbpromote.flows.environment import migrate_environment

    return migrate_environment(project, target, to)


def test_promise_6_wrong_password(fresh_databases, make_target):
    url = fresh_databases.database_url("staging").replace(fresh_databases.passwords["tenant_owner"], "Sekr1t-pw")
    target = make_target("staging-wrong-password", url=url)
    with pytest.raises(PreflightError) as error:
        run("tenant-backend", target)
    assert_refused_cleanly(
        fresh_databases,
        error.value,
        "password authentication failed",
        f"correct the credentials with `dbpromote target add {target} --url URL`",
    )
    assert "Sekr1t-pw" not in str(error.value)


def test_promise_6_unreachable_host(fresh_databases, make_target):
    target = make_target("staging-unreachable", url="postgresql://tenant_owner:pw@127.0.0.1:1/tenant_backend")
    with pytest.raises(PreflightError) as error:
        run("tenant-backend", target)
    assert_refused_cleanly(
        fresh_databases, error.value, f"Cannot connect to target {target!r}", "check the host and port"
    )


def test_promise_6_unknown_target(fresh_databases):
    with pytest.raises(ConfigError) as error:
        run("tenant-backend", "no-such-target")
    assert_refused_cleanly(fresh_databases, error.value, "Unknown target 'no-such-target'", "dbpromote target add")


def test_promise_6_unknown_settings_module(fresh_databases, project_copy):
    project = project_copy("bad-settings", settings_module="tenant_backend.nope")
    with pytest.raises(ConfigError) as error:
        run(project, "staging")
    assert_refused_cleanly(fresh_databases, error.value, "'tenant_backend.nope' does not load", "--settings")


def test_promise_6_wrong_interpreter_path(fresh_databases, project_copy):
    project = project_copy("bad-python", python="/nonexistent/python")
    with pytest.raises(ConfigError) as error:
        run(project, "staging")
    assert_refused_cleanly(fresh_databases, error.value, "/nonexistent/python", "--python PATH")


def test_promise_6_an_interpreter_without_django(fresh_databases, project_copy, tmp_path):
    import venv

    venv.create(tmp_path / "bare", with_pip=False)  # a real Python the project's Django is not installed in
    project = project_copy("python-without-django", python=str(tmp_path / "bare/bin/python"))
    with pytest.raises(ConfigError) as error:
        run(project, "staging")
    assert_refused_cleanly(
        fresh_databases,
        error.value,
        "Django is not importable: No module named 'django'",
        "point the project at an interpreter with Django installed (--python)",
    )


def test_promise_6_an_interpreter_that_is_not_python(fresh_databases, project_copy, tmp_path):
    wrapper = tmp_path / "python"  # a team's wrapper script pointing at an interpreter that is gone
    wrapper.write_text("#!/bin/sh\necho 'pyenv: python3.9: command not found' >&2\nexit 127\n")
    wrapper.chmod(0o755)
    project = project_copy("python-wrapper", python=str(wrapper))
    with pytest.raises(ConfigError) as error:
        run(project, "staging")
    assert_refused_cleanly(
        fresh_databases,
        error.value,
        "could not run the probe (exit 127): pyenv: python3.9: command not found;",
        "check that it is the project's Python with Django installed",
    )


def test_promise_6_conflicting_migrations(fresh_databases, project_copy):
    project = project_copy("conflicting")
    (project_copy.folder / "core/migrations/0002_parallel_branch.py").write_text(
        textwrap.dedent("""
        from django.db import migrations

        class Migration(migrations.Migration):
            dependencies = [("core", "0001_initial")]
            operations = []
    """)
    )
    with pytest.raises(PreflightError) as error:
        run(project, "staging")
    assert_refused_cleanly(fresh_databases, error.value, "Conflicting migrations", "makemigrations --merge")


def test_promise_6_models_changed_without_migrations(fresh_databases, project_copy):
    project = project_copy("unmigrated")
    models = project_copy.folder / "core/models.py"
    models.write_text(
        models.read_text().replace(
            "    enabled = models.BooleanField(default=False)\n",
            "    enabled = models.BooleanField(default=False)\n    rollout_percent = models.IntegerField(default=0)\n",
        )
    )
    with pytest.raises(PreflightError) as error:
        run(project, "staging")
    assert_refused_cleanly(
        fresh_databases, error.value, "Models changed without migrations in core", "`manage.py makemigrations`"
    )


@pytest.mark.parametrize("to", ["core:0099_nope", "core0008", "core:"])
def test_promise_6_unknown_or_malformed_target_migration(fresh_databases, to):
    with pytest.raises(InputError) as error:
        run("tenant-backend", "staging", to)
    assert_refused_cleanly(fresh_databases, error.value, repr(to))


def test_promise_6_missing_bucket(fresh_databases, make_target):
    from dbpromote.config import load_target

    target = make_target("staging-no-bucket", bucket="no-such-bucket")
    with pytest.raises(PreflightError) as error:
        run("tenant-backend", target)
    assert_refused_cleanly(
        fresh_databases,
        error.value,
        "'no-such-bucket'",
        "does not exist",
        f"dbpromote target add {target} --bucket NAME",
    )
    assert list_backups(load_target(target).model_copy(update={"bucket": "dbpromote-backups"})) == []

    # A promotion checks each bucket its targets use once, before anything: production's missing one too.
    from dbpromote.flows.promote import promote

    later = make_target("production-no-bucket", server="production", bucket="no-such-bucket")
    with pytest.raises(PreflightError) as error:
        promote("tenant-backend", ["staging", later])
    assert_refused_cleanly(fresh_databases, error.value, f"of target {later!r} does not exist")


def test_database_untouched_means_no_backup_either(fresh_databases, project_copy):
    from dbpromote.config import load_target

    before = len(list_backups(load_target("staging")))
    with pytest.raises(ConfigError):
        run(project_copy("bad-settings-2", settings_module="nope.settings"), "staging")
    assert len(list_backups(load_target("staging"))) == before
    with psycopg.connect(fresh_databases.database_url("staging")) as conn:
        assert conn.execute("SELECT count(*) FROM core_tenant").fetchone()[0] == 3


def test_promise_6_a_settings_module_that_raises_is_one_sentence_naming_it(fresh_databases, project_copy):
    project_copy.add_settings('raise RuntimeError("FEATURE_FLAGS_URL is unreachable")')
    with pytest.raises(ConfigError) as error:
        run(project_copy("raising-settings"), "staging")
    assert_refused_cleanly(
        fresh_databases,
        error.value,
        "'tenant_backend.settings' does not load",
        "RuntimeError: FEATURE_FLAGS_URL is unreachable",
        "--settings",
    )


def test_a_variable_the_settings_read_is_named_with_the_option_that_gives_it(fresh_databases, project_copy):
    project_copy.add_settings('SECRET_KEY = os.environ["SHOP_SECRET_KEY"]')
    with pytest.raises(ConfigError) as error:
        run(project_copy("settings-needing-a-secret"), "staging")
    assert_refused_cleanly(
        fresh_databases, error.value, "needs SHOP_SECRET_KEY", "--env SHOP_SECRET_KEY=VALUE", "--env-secret"
    )


def test_only_the_targets_alias_is_connected_to(fresh_databases, project_copy, make_target):
    """A project with two aliases: the target names `primary`; `default` points at a server that does not exist,
    so any connection to it would fail the promotion."""
    project_copy.add_settings(
        'DATABASES["primary"] = dict(DATABASES["default"])\n'
        'DATABASES["default"] = dict(DATABASES["default"], HOST="127.0.0.1", PORT="1")'
    )
    project = project_copy("two-aliases", database_url_env="")
    target = make_target("staging-primary", database_alias="primary")

    report = run(project, target)

    assert applied(fresh_databases, "staging")[-1] == report.migrations[-1].label


def test_an_alias_the_settings_do_not_have_is_one_sentence(fresh_databases, make_target):
    target = make_target("staging-no-alias", database_alias="replica")
    with pytest.raises(ConfigError) as error:
        run("tenant-backend", target)
    assert_refused_cleanly(
        fresh_databases, error.value, "no alias 'replica'", f"dbpromote target add {target} --database-alias"
    )


def test_a_recorded_migration_without_its_file_is_named_before_anything(fresh_databases):
    with psycopg.connect(fresh_databases.database_url("staging")) as conn:  # someone renamed 0002's file
        conn.execute("INSERT INTO django_migrations (app, name, applied) VALUES ('core', '0002_flags', now())")
    with pytest.raises(PreflightError) as error:
        run("tenant-backend", "staging")
    message = str(error.value)
    assert "django_migrations on staging records core.0002_flags, which the project has no migration file" in message
    assert "--fake" in message and "\n" not in message


def test_a_table_the_migration_role_does_not_own_is_named_before_a_migration_that_alters_it(fresh_databases):
    with psycopg.connect(**fresh_databases.superuser_conninfo("staging", "tenant_backend"), autocommit=True) as conn:
        conn.execute("ALTER TABLE core_project OWNER TO postgres")
    with pytest.raises(PreflightError) as error:
        run("tenant-backend", "staging")
    assert_refused_cleanly(
        fresh_databases, error.value, "core.0005_project_slug change core_project", "belongs to postgres", "OWNER TO"
    )


def test_an_extension_the_server_lacks_is_named_with_the_migration_that_needs_it(fresh_databases, project_copy):
    (project_copy.folder / "core/migrations/0009_search.py").write_text(
        textwrap.dedent(
            """
            from django.contrib.postgres.operations import CreateExtension
            from django.db import migrations


            class Migration(migrations.Migration):
                dependencies = [("core", "0008_default_task_statuses")]
                operations = [CreateExtension("no_such_search_extension")]
            """
        )
    )
    with pytest.raises(PreflightError) as error:
        run(project_copy("needs-an-extension"), "staging")
    assert_refused_cleanly(
        fresh_databases,
        error.value,
        "core.0009_search creates the extension no_such_search_extension",
        "does not have",
    )


def test_a_package_whose_models_differ_from_its_migrations_is_named_and_runs_once_acknowledged(
    fresh_databases, project_copy, tmp_path
):
    """An installed app (in site-packages, not the project's folder) whose model says max_length 80 where its
    migration says 50: the user cannot write that package's migration, so it is named and waits for acceptance."""
    package = tmp_path / "site-packages" / "shop_badges"
    (package / "migrations").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "migrations" / "__init__.py").write_text("")
    (package / "migrations" / "0001_initial.py").write_text(
        textwrap.dedent(
            """
            from django.db import migrations, models


            class Migration(migrations.Migration):
                initial = True
                operations = [
                    migrations.CreateModel(
                        name="Badge",
                        fields=[
                            (
                                "id",
                                models.BigAutoField(
                                    auto_created=True, primary_key=True, serialize=False, verbose_name="ID"
                                ),
                            ),
                            ("name", models.CharField(max_length=50)),
                        ],
                    )
                ]
            """
        )
    )
    (package / "models.py").write_text(
        "from django.db import models\n\n\nclass Badge(models.Model):\n    name = models.CharField(max_length=80)\n"
    )
    project_copy.add_settings(
        f'import sys\nsys.path.insert(0, {str(package.parent)!r})\nINSTALLED_APPS = [*INSTALLED_APPS, "shop_badges"]'
    )

    with pytest.raises(PreflightError) as error:
        run(project_copy("with-a-package"), "staging")
    assert_refused_cleanly(
        fresh_databases,
        error.value,
        "Installed packages' models differ from their own migrations in shop_badges (Alter field name on badge)",
        "--acknowledge-package-changes shop_badges",
    )

    report = run(project_copy("with-a-package", acknowledged_package_changes=["shop_badges"]), "staging")
    assert "shop_badges.0001_initial" in [result.label for result in report.migrations]
