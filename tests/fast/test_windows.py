"""Maintenance windows (issue 33.3): read as a person writes them, refused in one sentence when they cannot be, and
the first opening a step fits in chosen on the zone's own clocks."""

from datetime import UTC, datetime

import pytest

from dbpromote.config import DatabaseTarget
from dbpromote.errors import ConfigError
from dbpromote.models.plan import Plan, PlannedMigration
from dbpromote.models.report import MigrationResult, StepReport
from dbpromote.windows import Measured, Window, next_opening, when_it_runs

BERLIN_WEEKEND = "sat,sun 01:00-05:00 Europe/Berlin"


def utc(*parts) -> datetime:
    return datetime(*parts, tzinfo=UTC)


def test_the_first_opening_is_the_next_one_in_the_window_s_own_zone():
    # Friday 2026-12-04 12:00 UTC: the window opens Saturday 01:00 in Berlin (UTC+1), 00:00 UTC.
    opening = next_opening([BERLIN_WEEKEND], utc(2026, 12, 4, 12), needs_s=600)
    assert (opening.opens, opening.closes) == (utc(2026, 12, 5, 0), utc(2026, 12, 5, 4))
    assert opening.describe() == "2026-12-05 01:00 Europe/Berlin"


def test_a_window_open_now_is_used_while_the_step_still_fits_and_passed_over_when_it_does_not():
    inside = utc(2026, 12, 5, 3)  # Saturday 04:00 in Berlin: one hour left
    assert next_opening([BERLIN_WEEKEND], inside, needs_s=1800).opens == utc(2026, 12, 5, 0)
    # 2 h do not fit in the hour left: Sunday's window, not one that would close on the migration.
    assert next_opening([BERLIN_WEEKEND], inside, needs_s=7200).opens == utc(2026, 12, 6, 0)


def test_a_window_too_short_for_staging_s_duration_is_skipped_for_the_next_one_that_fits():
    short, long = "* 02:00-02:30 UTC", "sun 03:00-06:00 UTC"
    now = utc(2026, 12, 7, 12)  # a Monday
    assert next_opening([short, long], now, needs_s=600).opens == utc(2026, 12, 8, 2)  # the short one, tomorrow
    opening = next_opening([short, long], now, needs_s=3600)  # an hour fits only on Sunday
    assert (opening.window, opening.opens) == (long, utc(2026, 12, 13, 3))
    assert next_opening([short], now, needs_s=3600) is None


def test_a_window_past_midnight_closes_the_next_day_and_daylight_saving_moves_it_with_the_clocks():
    late = Window("mon-fri 22:00-02:00 America/New_York")
    first = next(late.openings(utc(2026, 3, 6, 12)))  # Friday 6 March, before the US change on the 8th
    assert (first.opens, first.closes) == (utc(2026, 3, 7, 3), utc(2026, 3, 7, 7))  # 22:00-02:00 EST
    monday = next(late.openings(utc(2026, 3, 9, 12)))
    assert monday.opens == utc(2026, 3, 10, 2)  # 22:00 EDT is an hour earlier in UTC


@pytest.mark.parametrize(
    ("spec", "sentence"),
    [
        ("sat 1-5 UTC", "has a time that is not HH:MM or HH:MM:SS (1-5); write it e.g. as 'sat,sun 01:00-05:00"),
        ("sat 01:00-05:00 Mars/Base", "names no time zone the tz database knows (Mars/Base); use a name like"),
        ("weekends 01:00-05:00 UTC", "has days cron cannot read (weekends); use names or ranges like mon-fri"),
        ("sat 01:00 UTC", "is not DAYS HH:MM-HH:MM ZONE; write it e.g. as 'sat,sun 01:00-05:00 Europe/Berlin'."),
        ("* 01:00-01:00 UTC", "opens and closes at the same time; give it a length."),
    ],
)
def test_a_window_that_cannot_be_read_is_refused_in_one_sentence_when_the_target_is_made(spec, sentence):
    with pytest.raises(ConfigError) as refused:
        DatabaseTarget(url="postgresql://u@h/d", windows=[spec])
    assert str(refused.value).startswith(f"The maintenance window {spec!r} {sentence}")


def migration(name: str, risks: list[str] | None = None, sql: list[str] | None = None) -> PlannedMigration:
    return PlannedMigration(
        app="core", name=name, atomic=True, reversible=True, operations=[], sql=sql or [], risks=risks or []
    )


def test_a_step_needs_a_window_for_a_long_heavy_lock_on_staging_or_a_rewrite_the_lint_marks():
    plan = Plan(
        target="production",
        applied=[],
        migrations=[
            migration("0002_index"),
            migration("0003_quick"),
            migration(
                "0004_type",
                ["ALTER TABLE ...: may change a column's type [alter-column: add a column ...]"],
                ['ALTER TABLE "core_task" ALTER COLUMN "title" TYPE varchar(400) USING "title"::varchar(400);'],
            ),
            migration("0005_help_text", ["AlterField ...: may change a column's type [alter-column: ...]"]),
            migration("0006_stamp", ["ALTER TABLE ...: Adding a volatile default [adding-field-with-default: ...]"]),
        ],
    )
    staging = StepReport(
        target="staging",
        plan=plan,
        migrations=[
            MigrationResult(label="core.0002_index", duration_s=42.0, attempts=1, strongest_lock="ShareLock"),
            MigrationResult(label="core.0003_quick", duration_s=0.2, attempts=1, strongest_lock="AccessExclusiveLock"),
            MigrationResult(label="core.0004_type", duration_s=1.0, attempts=1, strongest_lock="AccessExclusiveLock"),
        ],
    )
    need = Measured.of([staging], "staging").need(plan, lock_s=10)
    assert need.reasons == [
        "core.0002_index held ShareLock for 42.0 s on staging (the bound is 10 s)",
        "core.0004_type may rewrite its table (a column's type changes)",
        "core.0006_stamp may rewrite its table (lint: adding-field-with-default)",
    ]  # 0005 alters a field's help text: no SQL, nothing rewritten
    assert need.expected_s == 43.2
    assert not Measured.of([staging], "staging").need(plan.only({"core.0003_quick"}), lock_s=10)

    monday = utc(2026, 12, 7, 12)
    assert when_it_runs([BERLIN_WEEKEND], need, monday).startswith(
        "runs in the window starting 2026-12-12 01:00 Europe/Berlin (sat,sun 01:00-05:00 Europe/Berlin), as "
        "core.0002_index held ShareLock"
    )
    assert when_it_runs([], need, monday) == ""
    assert when_it_runs([BERLIN_WEEKEND], need, monday, "hotfix for incident 42").startswith(
        "runs at once, outside its windows (hotfix for incident 42), though core.0002_index"
    )
