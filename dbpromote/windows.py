"""Maintenance windows: when a target may take the locks that stall its application for long.

A window is weekdays and a time range in a named time zone, written as a person says it: "sat,sun 01:00-05:00
Europe/Berlin", "mon-fri 22:00-02:00 UTC" (past midnight: it closes the next day). Its openings come from cronsim
(the cron library Prefect's own scheduler uses, on zoneinfo datetimes), so a daylight-saving change moves them as
the zone's clocks move; nothing here parses a calendar by hand.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime, time, timedelta
from typing import TYPE_CHECKING, NamedTuple
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from cronsim import CronSim, CronSimError
from pydantic import BaseModel, Field

from dbpromote.errors import ConfigError

if TYPE_CHECKING:  # the target's settings read windows; the plan's modules import the probe, which reads settings
    from dbpromote.models.plan import Plan, PlannedMigration
    from dbpromote.models.report import MigrationResult, Rehearsal, StepReport

# Locks under which the application's writes (or reads too) queue: a migration that held one for longer than the
# target's window_lock_s in staging's run (or a rehearsal) waits for a window on the targets after it.
HEAVY_LOCKS = {"ShareLock", "ShareRowExclusiveLock", "ExclusiveLock", "AccessExclusiveLock"}
# What marks a table rewrite: squawk's finding on a column added with a volatile default, and a column's type
# changed in the SQL (dbpromote's own alter-column rule fires on every AlterField, most of which change no type).
VOLATILE_DEFAULT = "adding-field-with-default"
TYPE_CHANGE = re.compile(r"\bALTER\s+COLUMN\s+\S+\s+(SET\s+DATA\s+)?TYPE\b", re.IGNORECASE)
# How far ahead a window's next fitting opening is looked for: a window that never fits in a year never will.
HORIZON = timedelta(days=366)
EXAMPLE = "sat,sun 01:00-05:00 Europe/Berlin"


class Opening(NamedTuple):
    """One occurrence of a window, in UTC."""

    window: str
    opens: datetime
    closes: datetime

    def describe(self) -> str:
        """'2026-12-07 01:00 Europe/Berlin' in the window's own zone."""
        zone = self.window.split()[-1]
        return f"{self.opens.astimezone(ZoneInfo(zone)):%Y-%m-%d %H:%M} {zone}"


class Window:
    """One maintenance window; a spec that cannot be read fails here, in one sentence naming the fix."""

    def __init__(self, spec: str):
        self.spec = " ".join(spec.split())
        parts = self.spec.split(" ")
        if len(parts) != 3 or "-" not in parts[1]:
            raise ConfigError(
                f"The maintenance window {spec!r} is not DAYS HH:MM-HH:MM ZONE; write it e.g. as {EXAMPLE!r}."
            )
        days, hours, zone = parts
        start, _, end = hours.partition("-")
        try:
            self.start, end_time = time.fromisoformat(start), time.fromisoformat(end)
        except ValueError:
            raise ConfigError(
                f"The maintenance window {spec!r} has a time that is not HH:MM or HH:MM:SS ({hours}); write it e.g. "
                f"as {EXAMPLE!r}."
            ) from None
        try:
            self.zone = ZoneInfo(zone)
        except (ZoneInfoNotFoundError, ValueError):
            raise ConfigError(
                f"The maintenance window {spec!r} names no time zone the tz database knows ({zone}); use a name "
                "like Europe/Berlin, America/New_York or UTC."
            ) from None
        self.cron = f"{self.start.second} {self.start.minute} {self.start.hour} * * {days}"  # cronsim's 6 fields
        try:
            CronSim(self.cron, datetime.now(self.zone))
        except CronSimError:
            raise ConfigError(
                f"The maintenance window {spec!r} has days cron cannot read ({days}); use names or ranges like "
                "mon-fri, sat,sun or * (every day)."
            ) from None
        day = datetime(2000, 1, 1)
        self.length = (datetime.combine(day, end_time) - datetime.combine(day, self.start)) % timedelta(days=1)
        if not self.length:
            raise ConfigError(f"The maintenance window {spec!r} opens and closes at the same time; give it a length.")

    def openings(self, after: datetime) -> Iterator[Opening]:
        """Each opening of the window not yet closed at `after` (the one open then first), in order, in UTC."""
        for opens in CronSim(self.cron, (after - self.length).astimezone(self.zone)):
            closes = (opens + self.length).astimezone(UTC)  # wall-clock length: 01:00-05:00 closes at 05:00 local
            if closes > after:
                yield Opening(self.spec, opens.astimezone(UTC), closes)


def check_windows(specs: Iterable[str]) -> list[str]:
    """The specs, each read (a ConfigError names the first that cannot be), normalised."""
    return [Window(spec).spec for spec in specs]


def next_opening(specs: list[str], now: datetime, needs_s: float) -> Opening | None:
    """The earliest opening of any of the windows in which `needs_s` still fits (the one open now, when it does);
    None when none of them fits within a year."""
    need = timedelta(seconds=needs_s)
    best: Opening | None = None
    for spec in specs:
        for opening in Window(spec).openings(now):
            if opening.opens > now + HORIZON or (best and opening.opens >= best.opens):
                break
            if opening.closes - max(opening.opens, now) >= need:
                best = opening
                break
    return best


class WindowNeed(BaseModel):
    """Why a step's migrations wait for a window, and how long staging's run (or a rehearsal) says they take."""

    reasons: list[str] = Field(default_factory=list)
    expected_s: float = 0.0
    measured_on: str = ""

    def __bool__(self) -> bool:
        return bool(self.reasons)


class Measured(NamedTuple):
    """What the targets after staging are judged by: staging's run of the plan, or a rehearsal on their own data."""

    results: list[MigrationResult]
    on: str

    @classmethod
    def of(cls, reports: list[StepReport], staging: str, rehearsal: Rehearsal | None = None) -> Measured:
        if rehearsal is not None:
            return cls(rehearsal.migrations, f"a rehearsal on {rehearsal.target}'s data")
        return cls([result for report in reports if report.target == staging for result in report.migrations], staging)

    def need(self, plan: Plan, lock_s: float) -> WindowNeed:
        """The plan's migrations that need a window: one that held a heavy lock longer than lock_s where it was
        measured, or one the lint marks as a table rewrite (its time grows with the table, which staging's size
        does not show)."""
        results = {result.label: result for result in self.results}
        need = WindowNeed(measured_on=self.on)
        for migration in plan.migrations:
            result = results.get(migration.label)
            if result is not None:
                need.expected_s += result.duration_s
            held = result and (result.lock_held_s or result.duration_s)
            if result is not None and result.strongest_lock in HEAVY_LOCKS and held > lock_s:
                need.reasons.append(
                    f"{migration.label} held {result.strongest_lock} for {held:.1f} s on {self.on} "
                    f"(the bound is {lock_s:g} s)"
                )
            elif rewrites := rewrites_of(migration):
                need.reasons.append(f"{migration.label} may rewrite its table ({', '.join(rewrites)})")
        need.expected_s = round(need.expected_s, 1)
        return need


def rewrites_of(migration: PlannedMigration) -> list[str]:
    """Why the migration's SQL may rewrite its table, as the form says it: its time grows with the table."""
    found = ["a column's type changes"] if any(TYPE_CHANGE.search(statement) for statement in migration.sql) else []
    if any(f"[{VOLATILE_DEFAULT}:" in risk for risk in migration.risks):
        found.append(f"lint: {VOLATILE_DEFAULT}")
    return found


def when_it_runs(specs: list[str], need: WindowNeed, now: datetime, now_reason: str = "") -> str:
    """When a step that needs a window runs, for its approval form: '' when it needs none."""
    if not (specs and need):
        return ""
    if now_reason:
        return f"runs at once, outside its windows ({now_reason}), though {'; '.join(need.reasons)}"
    opening = next_opening(specs, now, need.expected_s)
    if opening is None:
        return (
            f"has no window long enough for its step ({need.expected_s:.0f} s): it will fail there unless run "
            "with --now --reason"
        )
    start = "now, in the window that opened" if opening.opens <= now else "in the window starting"
    return f"runs {start} {opening.describe()} ({opening.window}), as {'; '.join(need.reasons)}"
