"""What a project's settings find in their environment: the target's connection where they read it, the rest from
the block and the team's env file."""

import pytest

from dbpromote.config import DjangoProject, read_env_file
from dbpromote.errors import ConfigError

URL = "postgresql://migrator:s%40cret@db.internal:6432/shop"


def test_the_url_goes_where_the_settings_read_it_and_the_parts_where_they_read_them(tmp_path):
    (tmp_path / ".env").write_text('# the team\'s .env\nexport SENTRY_DSN="https://x"\nDEBUG=0\n\nDATABASE_URL=old\n')
    project = DjangoProject(
        path=str(tmp_path),
        settings_module="shop.settings",
        env_file=".env",
        env={"DEBUG": "1"},
        database_env={"host": "POSTGRES_HOST", "port": "POSTGRES_PORT", "password": "POSTGRES_PASSWORD"},
    )
    assert project.environment(URL) == {
        "SENTRY_DSN": "https://x",
        "DEBUG": "1",  # the block's value over the file's
        "DATABASE_URL": URL,  # the target's, never the file's
        "POSTGRES_HOST": "db.internal",
        "POSTGRES_PORT": "6432",
        "POSTGRES_PASSWORD": "s@cret",
    }


def test_no_url_variable_when_the_settings_read_none():
    project = DjangoProject(path="/srv/shop", settings_module="shop.settings", database_url_env="")
    assert project.environment(URL) == {}


def test_a_missing_env_file_is_one_sentence_naming_the_option(tmp_path):
    with pytest.raises(ConfigError, match=r"The env file .*missing.env cannot be read .*--env-file PATH"):
        read_env_file(tmp_path / "missing.env")
