"""The command line refuses bad input where it is typed: one sentence, no traceback, nothing registered."""

import subprocess

import pytest

from tests.harness import cli


def refused(result: subprocess.CompletedProcess, *fragments: str) -> str:
    """Exit 1, one error line on stderr, no traceback; the line."""
    assert result.returncode == 1, result.stdout + result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    (line,) = result.stderr.strip().splitlines()
    for fragment in fragments:
        assert fragment in line, line
    return line


def registered(name: str) -> bool:
    from dbpromote.config import DatabaseTarget

    try:
        DatabaseTarget.load(name)
    except ValueError:
        return False
    return True


def test_a_target_url_with_a_raw_reserved_character_is_refused_without_echoing_it(stack):
    url = stack.database_url("staging").replace(stack.passwords["tenant_owner"], "Zq@9%Xk")
    line = refused(cli("target", "add", "shop-raw-password", "--url", url), "percent-encode", "@ as %40")
    assert "Zq" not in line and "Xk" not in line
    assert not registered("shop-raw-password")


def test_a_target_is_checked_by_connecting_once_unless_told_not_to(stack):
    unreachable = "postgresql://tenant_owner:pw@127.0.0.1:1/tenant_backend"
    refused(cli("target", "add", "shop-unreachable", "--url", unreachable), "Cannot connect to target")
    assert not registered("shop-unreachable")
    assert cli("target", "add", "shop-unreachable", "--url", unreachable, "--no-check").returncode == 0
    assert registered("shop-unreachable")


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["target", "add", "prod-é"], "use lowercase letters, digits and dashes"),
        (["target", "add", "shop-zero", "--lock-timeout", "0"], "--lock-timeout input should be greater than 0"),
        (["project", "add", "Shop", "--path", ".", "--settings", "x"], "use lowercase letters, digits and dashes"),
    ],
)
def test_options_a_block_cannot_hold_are_one_sentence(stack, args, fragment):
    if args[:2] == ["target", "add"]:
        args += ["--url", stack.database_url("staging")]
    refused(cli(*args), fragment)


def test_a_blank_approver_is_refused_before_anything_is_sent(stack):
    refused(
        cli("approve", "00000000-0000-0000-0000-000000000000", "--approver", "   "),
        "--approver is blank; give your name",
    )


def test_an_unreachable_prefect_api_is_one_sentence(stack):
    refused(
        cli("pending", env={"PREFECT_API_URL": "http://127.0.0.1:1/api"}),
        "Cannot reach the Prefect API at http://127.0.0.1:1/api",
        "dbpromote stack up",
    )
