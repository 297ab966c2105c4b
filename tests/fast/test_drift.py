"""Drift's comparison of two catalog snapshots: what is reported, how, and the SQL offered to reconcile it."""

from dbpromote.catalog import Naming, compare
from dbpromote.models.drift import DriftReport
from dbpromote.reporting.markdown import drift_markdown

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
EXPLICIT = Naming(explicit=frozenset({"core_task.core_task_tenant_created_idx"}))  # the sample's Meta.indexes


def never(key, expected, live) -> bool:
    return False


def schema(extra: dict | None = None) -> dict:
    base = {
        ("table", "public.core_task"): TABLE,
        ("column", "public.core_task.id"): COLUMN,
        ("column", "public.core_task.priority"): COLUMN | {"default": "0"},
        ("index", "public.core_task.core_task_tenant_created_idx"): INDEX,
    }
    return base | (extra or {})


def test_the_same_schema_has_no_drift_and_column_order_is_not_part_of_it():
    reordered = dict(reversed(list(schema().items())))
    assert compare(schema(), reordered, never) == []


def test_an_explicitly_named_index_renamed_by_hand_is_a_rename_that_blocks():
    live = schema()
    live[("index", "public.core_task.hand_made_idx")] = live.pop(
        ("index", "public.core_task.core_task_tenant_created_idx")
    )
    (difference,) = compare(schema(), live, never, EXPLICIT)
    assert (difference.object, difference.kind) == ("index public.core_task.core_task_tenant_created_idx", "renamed")
    assert difference.fix == 'ALTER INDEX "public"."hand_made_idx" RENAME TO "core_task_tenant_created_idx";'
    assert difference.name_origin == "explicit" and difference.blocks
    assert "migrations alter, rename or drop it by that name" in difference.why
    report = DriftReport(target="production", replayed=7, differences=[difference], duration_s=1.0, checked_at="now")
    assert report.blocking == [difference] and report.notes == []
    assert report.model_dump(mode="json")["differences"][0]["blocks"] is True


# What Django 4.2 named one UNIQUE of a unique_together on a live database, and what Django 5.2 named it replaying the
# same history (63 characters, cut by the server); and one CHECK of a PositiveIntegerField, named by an AlterField on
# the live database and by a CreateModel in the replay (both measured on real upgrades).
TAGGED = "public.taggit_taggeditem"
UNIQUE_OLD = f"{TAGGED}.taggit_taggeditem_content_type_id_object_i_4bb97a8e_uniq"
UNIQUE_NEW = f"{TAGGED}.taggit_taggeditem_content_type_id_object_id_tag_id_4bb97a8e_uni"
UNIQUE = {"definition": "UNIQUE (content_type_id, object_id, tag_id)", "validated": True}
ADDRESS = "public.address_useraddress"
CHECK_OLD = f"{ADDRESS}.address_useraddress_num_orders_as_shipping__4ebf3942_check"
CHECK_NEW = f"{ADDRESS}.address_useraddress_num_orders_check"
CHECK = {"definition": "CHECK ((num_orders_as_shipping_address >= 0))", "validated": True}


def generated_names_apart() -> tuple[dict, dict]:
    expected = schema({("constraint", UNIQUE_NEW): UNIQUE, ("constraint", CHECK_NEW): CHECK})
    live = schema({("constraint", UNIQUE_OLD): UNIQUE, ("constraint", CHECK_OLD): CHECK})
    return expected, live


def test_one_unique_and_one_check_under_names_two_django_versions_generated_are_notes_not_drift():
    expected, live = generated_names_apart()
    differences = compare(expected, live, never, EXPLICIT)
    assert {(d.object, d.kind, d.live, d.name_origin) for d in differences} == {
        (f"constraint {UNIQUE_NEW}", "renamed", UNIQUE_OLD.rsplit(".", 1)[1], "generated"),
        (f"constraint {CHECK_NEW}", "renamed", CHECK_OLD.rsplit(".", 1)[1], "generated"),
    }
    assert not any(d.blocks for d in differences)
    report = DriftReport(target="production", replayed=9, differences=differences, duration_s=1.0, checked_at="now")
    assert report.blocking == [] and len(report.notes) == 2
    assert report.summary().startswith("no blocking drift on production (9 migrations replayed); 2 only by a name")
    assert "2 differ only by a name Django generated" in report.text()
    markdown = drift_markdown(report)
    assert "only by a name Django generated" in markdown and "| object |" in markdown


def test_a_constraint_renamed_by_hand_under_an_explicit_name_blocks_with_the_rename_that_fixes_it():
    expected, live = generated_names_apart()
    naming = Naming(explicit=frozenset({UNIQUE_NEW.split(".", 1)[1]}))
    (difference,) = [d for d in compare(expected, live, never, naming) if d.blocks]
    assert difference.fix == (
        'ALTER TABLE "public"."taggit_taggeditem" RENAME CONSTRAINT '
        '"taggit_taggeditem_content_type_id_object_i_4bb97a8e_uniq" TO '
        '"taggit_taggeditem_content_type_id_object_id_tag_id_4bb97a8e_uni";'
    )


def test_a_package_that_rewrote_its_history_leaves_django_s_old_names_which_are_notes_until_a_migration_uses_them():
    """django-taggit 5 turned its unique_together migration into an AddConstraint naming the constraint: databases
    it made earlier keep the name Django generated then. Nothing finds the constraint by name yet: a note, with the
    rename; once a migration not yet applied drops it by its new name, the rename blocks."""
    expected, live = generated_names_apart()
    rewritten = Naming(
        explicit=frozenset({UNIQUE_NEW.split(".", 1)[1]}), django_named=frozenset({UNIQUE_OLD.split(".", 1)[1]})
    )
    (note,) = [d for d in compare(expected, live, never, rewritten) if d.object.endswith("_uni")]
    assert (note.name_origin, note.blocks) == ("rewritten", False)
    assert note.fix.startswith('ALTER TABLE "public"."taggit_taggeditem" RENAME CONSTRAINT')
    dropped_later = Naming(**(vars(rewritten) | {"used_later": frozenset({UNIQUE_NEW.rsplit(".", 1)[1]})}))
    (blocking,) = [d for d in compare(expected, live, never, dropped_later) if d.blocks]
    assert (blocking.object, blocking.name_origin) == (note.object, "explicit")


def test_a_constraint_dropped_by_hand_is_missing_and_one_added_by_hand_is_unexpected():
    expected, _ = generated_names_apart()
    live = dict(expected)
    del live["constraint", CHECK_NEW]
    live["constraint", f"{ADDRESS}.hand_made_positive"] = {"definition": "CHECK ((id > 0))", "validated": True}
    found = {(d.object, d.kind): d.blocks for d in compare(expected, live, never)}
    assert found == {(f"constraint {CHECK_NEW}", "missing"): True,
                     (f"constraint {ADDRESS}.hand_made_positive", "unexpected"): True}  # fmt: skip


def test_another_definition_under_another_name_is_not_taken_for_a_rename():
    expected, live = generated_names_apart()
    live["constraint", CHECK_OLD] = CHECK | {"definition": "CHECK ((num_orders_as_shipping_address >= 1))"}
    kinds = {(d.object, d.kind) for d in compare(expected, live, never) if d.blocks}
    assert kinds == {(f"constraint {CHECK_NEW}", "missing"), (f"constraint {CHECK_OLD}", "unexpected")}


def test_a_changed_predicate_of_a_partial_index_under_the_same_name_is_drift():
    partial = {
        "definition": f"CREATE UNIQUE INDEX ON {TAGGED} USING btree (tag_id) WHERE (object_id > 0)",
        "valid": True,
    }
    expected = schema({("index", f"{TAGGED}.one_tag"): partial})
    live = schema({("index", f"{TAGGED}.one_tag"): partial | {"definition": partial["definition"][:-5] + "1)"}})
    (difference,) = compare(expected, live, never)
    assert (difference.kind, difference.blocks) == ("different", True)
    assert difference.fix.startswith('DROP INDEX CONCURRENTLY "public"."one_tag";')


def test_a_generated_name_renamed_and_left_invalid_is_a_note_and_a_blocking_difference():
    expected = schema({("index", f"{TAGGED}.taggit_tag_id_idx"): INDEX})
    live = schema({("index", f"{TAGGED}.taggit_tag_id_0a1b2c3d"): INDEX | {"valid": False}})
    found = {(d.kind, d.blocks) for d in compare(expected, live, never)}
    assert found == {("renamed", False), ("different", True)}


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
