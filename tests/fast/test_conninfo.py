"""Connection strings as libpq reads them: every form teams write, one database whichever component connects."""

import re

import pytest

from dbpromote.conninfo import Conninfo
from dbpromote.errors import ConfigError, redact

SECRET = "s3cr:et@/%"
ENCODED = "s3cr%3Aet%40%2F%25"

FORMS = {
    "url": f"postgresql://owner:{ENCODED}@db.internal:5433/shop?sslmode=require",
    "postgres-scheme": f"postgres://owner:{ENCODED}@db.internal:5433/shop?sslmode=require",
    "cloud-sql-socket": f"postgresql://owner:{ENCODED}@/shop?host=/cloudsql/acme:europe-west1:main&port=5433"
    "&sslmode=require",
    "key-value": f"host=db.internal port=5433 dbname=shop user=owner password='{SECRET}' sslmode=require",
    "dbname-overrides-path": f"postgresql://owner:{ENCODED}@db.internal:5433/other?dbname=shop&sslmode=require",
}


@pytest.mark.parametrize("form", FORMS)
def test_every_form_libpq_accepts_names_one_database_for_every_component(form):
    conninfo = Conninfo(FORMS[form])
    assert conninfo.database == "shop" and conninfo.password == SECRET
    env, django = conninfo.libpq_env(), conninfo.django()
    assert env["PGDATABASE"] == django["NAME"] == "shop"
    assert env["PGPASSWORD"] == django["PASSWORD"] == SECRET
    assert env["PGSSLMODE"] == django["OPTIONS"]["sslmode"] == "require"  # the migrations' connection keeps it too
    assert env["PGPORT"] == django["PORT"] == "5433"
    # The URL given to settings that read DATABASE_URL, and the scratch database's string, parse back the same.
    assert Conninfo(conninfo.url()).params == conninfo.params
    assert Conninfo(conninfo.on_database("shop_scratch")).params == conninfo.params | {"dbname": "shop_scratch"}


def test_a_socket_directory_and_several_hosts_reach_pg_dump_and_django_as_given():
    socket = Conninfo(FORMS["cloud-sql-socket"])
    assert socket.libpq_env()["PGHOST"] == socket.django()["HOST"] == "/cloudsql/acme:europe-west1:main"
    several = Conninfo(f"postgresql://owner:{ENCODED}@primary:5432,replica:5433/shop?target_session_attrs=read-write")
    assert several.libpq_env()["PGHOST"] == several.django()["HOST"] == "primary,replica"
    assert several.libpq_env()["PGPORT"] == "5432,5433"
    assert several.libpq_env()["PGTARGETSESSIONATTRS"] == "read-write"
    assert Conninfo(several.url()).params == several.params


@pytest.mark.parametrize(
    "text",
    [
        "",
        f"mysql://owner:{SECRET}@db/shop",
        f"postgresql://owner:{SECRET}@db:port/shop",
        f"host=db password={SECRET} dbname",
        f"postgresql://owner:{ENCODED}@db/shop?no_such_keyword=1",
    ],
)
def test_what_libpq_refuses_is_one_sentence_that_never_shows_the_password(text):
    with pytest.raises(ConfigError) as refused:
        Conninfo(text)
    message = str(refused.value)
    assert SECRET not in message and ENCODED not in message and "s3cr" not in message
    assert not re.search(r"[a-z)]\. [A-Z]", message) and message.endswith(".")  # one sentence
    assert "libpq accepts" in message


def test_an_unknown_parameter_is_named():
    with pytest.raises(ConfigError, match="libpq knows no parameter 'no_such_keyword'"):
        Conninfo(f"postgresql://owner:{ENCODED}@db/shop?no_such_keyword=1")


def test_redaction_masks_the_password_in_every_form():
    for text in FORMS.values():
        assert SECRET not in redact(f"could not connect with {text}", SECRET)
        assert ENCODED not in redact(f"could not connect with {text}")
