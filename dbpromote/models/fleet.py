"""A fleet: a group of targets promoted together, canary first, in waves; how many may fail; what each member did."""

from __future__ import annotations

import math
import re
from typing import Literal

from pydantic import BaseModel, Field

from dbpromote.errors import InputError


class Share(BaseModel):
    """A count given as N or P% of a whole (--wave-size, --max-failures); bad input fails in parse."""

    count: int = 0
    percent: float | None = None

    @classmethod
    def parse(cls, text: str, option: str, least: int) -> Share:
        match = re.fullmatch(r"\s*(\d+)(\s*%)?\s*", text)
        if not match or int(match[1]) < least or (match[2] and not 0 < int(match[1]) <= 100):
            raise InputError(
                f"{option} {text!r} is neither a number of members (at least {least}) nor a percentage of them "
                "from 1% to 100%; give it as e.g. 5 or 20%."
            )
        return cls(percent=float(match[1])) if match[2] else cls(count=int(match[1]))

    def of(self, whole: int) -> int:
        """The count for a group of `whole` members; a percentage rounds up, so 10% of 12 is 2."""
        return self.count if self.percent is None else math.ceil(whole * self.percent / 100)

    def __str__(self) -> str:
        return f"{self.percent:g}%" if self.percent is not None else str(self.count)


def waves(members: list[str], canary: int, size: Share) -> list[list[str]]:
    """The members in the order they run: wave 0 the canaries (the first `canary` members, maybe none), then waves
    1, 2, ... of `size` of the others."""
    first, rest = members[:canary], members[canary:]
    step = max(1, size.of(len(rest)))
    return [first] + [rest[i : i + step] for i in range(0, len(rest), step)]


def lanes(wave: list[str], parallel: int) -> list[list[str]]:
    """A wave's members dealt round-robin to at most `parallel` lanes (one process each, its members one after
    another), so every lane gets its share of the wave and the first of each lane start at once."""
    count = max(1, min(parallel, len(wave)))
    return [lane for lane in (wave[i::count] for i in range(count)) if lane]


def deal(planned: list[list[str]], parallel: int) -> list[list[str]]:
    """Every wave dealt to the same at most `parallel` lanes (each wave's share of lane N in lane N, in wave order),
    so a lane runs through the waves: the canaries in the first lane, every lane its share of each later wave."""
    dealt: list[list[str]] = [[] for _ in range(max(1, parallel))]
    for wave in planned:
        for number, share in enumerate(lanes(wave, parallel)):
            dealt[number] += share
    return [lane for lane in dealt if lane]


Outcome = Literal["migrated", "failed", "skipped", "not started", "done before"]


class MemberOutcome(BaseModel):
    """What one member of a group did in a promotion's run."""

    member: str
    wave: int
    outcome: Outcome
    detail: str = ""
    worker: str = ""
    started: str = ""
    ended: str = ""
    member_run: str = Field("", description="The flow run of the lane that ran the member's step")
