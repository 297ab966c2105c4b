"""Input checked where it is typed: URLs, names, approvers; a malformed URL's password never shown."""

import pytest
from pydantic import ValidationError

from dbpromote.config import check_block_name
from dbpromote.conninfo import Conninfo
from dbpromote.errors import ConfigError, redact
from dbpromote.models.approval import Answerers, approval_form


@pytest.mark.parametrize(
    "url",
    [
        "postgresql://migrator:Zq@9%Xk@db:5432/shop",  # a raw @ and % in the password
        "postgresql://migrator:Zq:9/Xk@db:5432/shop",  # a raw : and / in the password
        "postgresql://migrator:100%Xk@db/shop",
        "postgresql://migrator:Zq@Xk@db/shop",  # libpq itself would take "Xk@db" for the host
    ],
)
def test_a_password_with_reserved_characters_is_refused_without_showing_it(url):
    with pytest.raises(ConfigError) as error:
        Conninfo(url)
    message = str(error.value)
    assert "percent-encode reserved characters" in message and "@ as %40" in message
    assert "Xk" not in message and "Zq" not in message


def test_a_percent_encoded_password_and_a_url_without_port_pass():
    Conninfo("postgresql://migrator:p%40ss%25word@db:5432/shop")
    Conninfo("postgres://migrator@db/shop")


def test_a_malformed_url_is_masked_whole_in_anything_printed():
    assert redact("connect postgresql://u:p@ss%w@rd@db/shop failed") == "connect postgresql://u:****@db/shop failed"


@pytest.mark.parametrize("name", ["prod-é", "Prod", "shop prod", "-prod", ""])
def test_a_name_prefect_cannot_hold_is_one_sentence(name):
    with pytest.raises(ConfigError, match="use lowercase letters, digits and dashes"):
        check_block_name(name, "target")


def test_a_blank_approver_is_refused_by_the_form_and_by_the_flow():
    with pytest.raises(ValidationError):
        approval_form(False)(decision="approve", approver="   ", comment="")
    answerers = Answerers(target="production", allowed=["alice"])
    blank = approval_form(False).model_construct(decision="approve", approver="   ", comment="")
    assert answerers.refusal(blank.approver, blank.decision, "") == "an answer without the approver's name"
    padded = approval_form(False)(decision="approve", approver="  alice ", comment="")
    assert answerers.refusal(padded.approver, padded.decision, "") == ""
