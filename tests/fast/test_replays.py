"""Replays kept (dbpromote/replays.py): what is kept is read back as it was; what nobody used for a month goes."""

import os
import time

from dbpromote import replays

SCHEMA = {
    ("table", "public.core_task"): {"owner": "tenant_owner", "rls": True, "grants": "DELETE, INSERT, SELECT"},
    ("index", "public.core_task.core_task_tenant_id_idx"): {"definition": "btree (tenant_id)", "unique": False},
}


def test_a_kept_replay_reads_back_as_it_was(tmp_path):
    kept = replays.Replay(SCHEMA, ["core_task.by_priority"], ["by_priority"])
    replays.keep("k1", kept, tmp_path)
    assert replays.read("k1", tmp_path) == kept
    assert replays.read("k2", tmp_path) is None
    assert [p.name for p in tmp_path.iterdir()] == ["k1.json"]  # no partial file left


def test_a_replay_unused_for_a_month_is_dropped_when_another_is_kept(tmp_path):
    replays.keep("old", replays.Replay(SCHEMA, [], []), tmp_path)
    replays.keep("recent", replays.Replay(SCHEMA, [], []), tmp_path)
    month_ago = time.time() - replays.KEEP_S - 60
    os.utime(tmp_path / "old.json", (month_ago, month_ago))
    replays.read("recent", tmp_path)
    replays.keep("new", replays.Replay(SCHEMA, [], []), tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["new.json", "recent.json"]
