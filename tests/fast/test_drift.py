"""Drift's comparison of two catalog snapshots: what is reported, how, and the SQL offered to reconcile it."""

from dbpromote.catalog import compare
from dbpromote.models.drift import DriftReport

COLUMN = {"type": "integer", "not_null": True, "default": "", "identity": "", "generated": "", "collation": ""}
TABLE = {
    "owner": "migrator",
    "unlogged": False,
    "partitioned": False,
    "foreign": False,
    "rls": True,
    "force_rls": False,
}
INDEX = {"definition": "CREATE INDEX ON public.core_task USING btree (tenant_id, created_at)", "valid": True}


def never(key, expected, live) -> bool:
    return False


def schema(**extra) -> dict:
    base = {
        ("table", "public.core_task"): TABLE,
        ("column", "public.core_task.id"): COLUMN,
        ("column", "public.core_task.priority"): COLUMN | {"default": "0"},
        ("index", "public.core_task.core_task_tenant_created_idx"): INDEX,
    }
    return base | extra


def test_the_same_schema_has_no_drift_and_column_order_is_not_part_of_it():
    reordered = dict(reversed(list(schema().items())))
    assert compare(schema(), reordered, never) == []


def test_an_index_under_another_name_is_a_rename_not_missing_plus_extra():
    live = schema()
    live[("index", "public.core_task.hand_made_idx")] = live.pop(
        ("index", "public.core_task.core_task_tenant_created_idx")
    )
    (difference,) = compare(schema(), live, never)
    assert (difference.object, difference.kind) == ("index public.core_task.core_task_tenant_created_idx", "renamed")
    assert difference.fix == 'ALTER INDEX "public"."hand_made_idx" RENAME TO "core_task_tenant_created_idx";'


def test_each_hand_made_change_is_named_with_its_fix():
    live = schema()
    live[("column", "public.core_task.notes")] = COLUMN | {"type": "text", "not_null": False}
    live[("column", "public.core_task.priority")] = COLUMN | {"default": "5"}
    live[("index", "public.core_task.core_task_tenant_created_idx")] = INDEX | {"valid": False}
    found = {(d.object, d.kind): d for d in compare(schema(), live, never)}
    assert set(found) == {
        ("column public.core_task.notes", "unexpected"),
        ("column public.core_task.priority", "different"),
        ("index public.core_task.core_task_tenant_created_idx", "different"),
    }
    assert found["column public.core_task.notes", "unexpected"].fix == (
        'ALTER TABLE "public"."core_task" DROP COLUMN "notes";'
    )
    default = found["column public.core_task.priority", "different"]
    assert (default.expected, default.live) == ("default=0", "default=5")
    assert default.fix == 'ALTER TABLE "public"."core_task" ALTER COLUMN "priority" SET DEFAULT 0;'
    invalid = found["index public.core_task.core_task_tenant_created_idx", "different"]
    assert invalid.live == "valid=False" and invalid.fix.startswith("REINDEX INDEX CONCURRENTLY")


def test_a_missing_table_is_one_difference_not_one_per_column():
    expected = schema()
    expected[("table", "public.core_note")] = TABLE
    expected[("column", "public.core_note.id")] = COLUMN
    (difference,) = compare(expected, schema(), never)
    assert (difference.object, difference.kind) == ("table public.core_note", "missing")


def test_what_a_promotion_repairs_is_reported_but_does_not_block():
    live = schema()
    live[("table", "public.core_task")] = TABLE | {"rls": False}
    live[("column", "public.core_task.extra")] = COLUMN
    differences = compare(schema(), live, lambda key, expected, live: key[0] == "table")
    report = DriftReport(target="production", replayed=7, differences=differences, duration_s=1.0, checked_at="now")
    assert report.found and [d.object for d in report.blocking] == ["column public.core_task.extra"]
    rls = next(d for d in differences if d.kind == "different")
    assert rls.fix == 'ALTER TABLE "public"."core_task" ENABLE ROW LEVEL SECURITY;'
    assert "this promotion's RLS step repairs 1 of them" in report.status()
