"""Retention's rules: the newest and the young are kept, so is what the way back needs; old leftovers are swept."""

from datetime import UTC, datetime, timedelta

import pytest

from dbpromote.errors import InputError
from dbpromote.retention import check_retention, is_abandoned, retention_decisions
from tests.harness import a_backup

NOW = datetime(2026, 6, 30, tzinfo=UTC)


def backup(days_old: float):
    return a_backup(f"backups/prod/db/{days_old:g}.dump.zst", (NOW - timedelta(days=days_old)).isoformat())


def test_keeps_the_newest_the_young_and_the_referenced_and_deletes_the_rest():
    backups = [backup(days) for days in (0.5, 1, 20, 30, 40)]  # newest first
    referenced = {backups[3].object_name: "taken by the newest promotion"}

    kept, deleted = retention_decisions(backups, referenced, NOW, keep_last=1, keep_days=14)

    assert kept == {
        backups[0].uri: "one of the newest 1",
        backups[1].uri: "younger than 14 days",
        backups[3].uri: "taken by the newest promotion",
    }
    assert deleted == [backups[2], backups[4]]


def test_an_unverified_dump_is_swept_only_once_it_is_more_than_a_day_old():
    assert not is_abandoned({"created_at": (NOW - timedelta(hours=23)).isoformat()}, NOW, NOW)
    assert is_abandoned({"created_at": (NOW - timedelta(hours=25)).isoformat()}, NOW, NOW)
    assert is_abandoned({}, NOW - timedelta(days=2), NOW)  # no metadata: the object's own creation time


@pytest.mark.parametrize("keep_last, keep_days", [(0, 14), (3, -1)])
def test_rules_that_would_keep_nothing_are_refused(keep_last, keep_days):
    with pytest.raises(InputError, match="keep at least the newest one"):
        check_retention(keep_last, keep_days)
