"""What a paused run waits for, read back from the key its pause was given (dbpromote/waits.py)."""

from datetime import UTC, datetime

from dbpromote import waits


def test_a_window_waits_key_says_when_it_opens_and_other_keys_say_what_they_wait_for():
    opens = datetime(2026, 12, 6, 1, 0, tzinfo=UTC)
    key = waits.key_at(opens, "3f2a9c1b7d04")
    assert (waits.kind(key), waits.opens_at(key)) == ("window", opens)
    assert (waits.kind(f"{waits.DEPLOY_KEY_PREFIX}0123456789abcdef"), waits.opens_at("deploy-0123")) == ("deploy", None)
    assert waits.kind("approval-production-a864233cde6dd191") == "approval"
