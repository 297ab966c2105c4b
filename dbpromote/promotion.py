"""What a promotion may be: its input refused before anything runs, in one sentence naming the fix (by the CLI at the
terminal, and by the promotion's run again)."""

from __future__ import annotations

from dbpromote.config import load_group, load_project, load_target, resolved_once
from dbpromote.errors import InputError
from dbpromote.models.plan import parse_target_migration


@resolved_once()
def check_promotion_input(project: str, through: list[str], to: str) -> None:
    """Refuse, before anything runs, what cannot be a promotion: one sentence naming the fix (each target read
    once: a group's members are read for their windows)."""
    if not through:
        raise InputError("No environments given; pass them in order, staging first, e.g. --through staging,production.")
    parse_target_migration(to)
    load_project(project)
    if load_group(through[0]):
        raise InputError(
            f"{through[0]} is a group; a promotion starts on one staging target that vouches for the plan, e.g. "
            f"--through staging,{through[0]}."
        )
    first = load_target(through[0])
    named = [through[0]]
    for name in through[1:]:
        group = load_group(name)
        if group is None:
            load_target(name)  # refused in one sentence when it is neither
        else:
            check_shared_windows(name, group.members)
        named += group.members if group else [name]
    if twice := sorted({name for name in named if named.count(name) > 1}):
        raise InputError(
            f"{', '.join(twice)} appears twice in {','.join(through)} (its groups' members included); name each "
            "target once, staging first."
        )
    if first.requires_approval:
        raise InputError(
            f"{through[0]} requires approval, so it cannot come first: a staging target must vouch for the plan "
            f"before it; put one first, e.g. --through staging,{through[0]}."
        )


def check_shared_windows(group: str, members: list[str]) -> None:
    """A group goes as one, in waves: its members with maintenance windows must share them."""
    windows = {"; ".join(windows) for member in members if (windows := load_target(member).windows)}
    if len(windows) > 1:
        raise InputError(
            f"The members of {group} have different maintenance windows ({' | '.join(sorted(windows))}); nothing "
            "was run: give them the same (`dbpromote target add MEMBER ... --window`); a group goes as one."
        )
