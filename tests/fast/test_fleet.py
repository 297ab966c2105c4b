"""A group's shape: canaries first, then waves of N or P% of the others; failure bounds; bad input in one
sentence."""

import pytest

from dbpromote.errors import InputError
from dbpromote.models.fleet import Share, waves

MEMBERS = [f"shard-{n:02d}" for n in range(1, 13)]


def test_twelve_members_with_a_canary_and_waves_of_five():
    planned = waves(MEMBERS, 1, Share.parse("5", "--wave-size", 1))
    assert [len(wave) for wave in planned] == [1, 5, 5, 1]
    assert planned[0] == ["shard-01"] and planned[1][0] == "shard-02"
    assert [member for wave in planned for member in wave] == MEMBERS  # each once, in the group's order


def test_a_percentage_rounds_up_and_no_canary_leaves_wave_zero_empty():
    planned = waves(MEMBERS, 0, Share.parse("25%", "--wave-size", 1))
    assert planned[0] == [] and [len(wave) for wave in planned[1:]] == [3, 3, 3, 3]
    assert Share.parse("10%", "--max-failures", 1).of(12) == 2
    assert Share.parse(" 3 ", "--max-failures", 1).of(12) == 3


@pytest.mark.parametrize("text", ["0", "-1", "five", "0%", "101%", "5.5", ""])
def test_a_size_that_is_neither_a_count_nor_a_percentage_is_one_sentence(text):
    with pytest.raises(InputError, match=r"^--wave-size .* is neither a number of members \(at least 1\) nor a"):
        Share.parse(text, "--wave-size", 1)


def test_a_wave_is_dealt_to_at_most_parallel_lanes_each_member_once():
    from dbpromote.models.fleet import lanes

    wave = MEMBERS[1:12]  # eleven members, four lanes
    dealt = lanes(wave, 4)
    assert dealt == [wave[0::4], wave[1::4], wave[2::4], wave[3::4]]
    assert sorted(member for lane in dealt for member in lane) == sorted(wave)
    assert [len(lane) for lane in dealt] == [3, 3, 3, 2]  # shares differ by one at most
    assert lanes(wave[:2], 5) == [[wave[0]], [wave[1]]]  # never an empty lane
    assert lanes([], 3) == []


def test_the_waves_are_dealt_to_the_same_lanes_canaries_first_each_member_once():
    from dbpromote.models.fleet import deal, waves

    planned = waves(MEMBERS[:12], 1, Share(count=5))  # the canary, then waves of 5, 5 and 1
    dealt = deal(planned, 3)
    assert dealt == [
        [MEMBERS[0], MEMBERS[1], MEMBERS[4], MEMBERS[6], MEMBERS[9], MEMBERS[11]],
        [MEMBERS[2], MEMBERS[5], MEMBERS[7], MEMBERS[10]],
        [MEMBERS[3], MEMBERS[8]],
    ]
    assert sorted(member for lane in dealt for member in lane) == sorted(MEMBERS[:12])
    order = {member: number for number, wave in enumerate(planned) for member in wave}
    assert all([order[m] for m in lane] == sorted(order[m] for m in lane) for lane in dealt)  # waves in order
    assert deal([[], MEMBERS[:2]], 4) == [[MEMBERS[0]], [MEMBERS[1]]]  # a resumed run's canary done: no empty lane
