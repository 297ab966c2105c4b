"""--batch-size: a fix's one UPDATE or DELETE, confined to a key range per batch by PostgreSQL's own parser; anything
else is refused in one sentence before a run starts."""

import pytest
from pglast import parse_sql

from dbpromote.errors import InputError
from dbpromote.models.fix import BatchedStatement, FixScript


def test_a_batch_is_the_statement_with_a_key_range_and_its_own_condition_kept_whole():
    statement = BatchedStatement("UPDATE core_task SET title = upper(title) WHERE priority = 0 OR priority = 1", 500)
    assert statement.table == "core_task"
    first = statement.between(["id"], None, ["500"])
    assert (
        first
        == "UPDATE core_task SET title = upper(title) WHERE (priority = 0 OR priority = 1) AND (TRUE AND id <= '500')"
    )
    later = statement.between(["id"], ["500"], ["1000"])
    assert later.endswith("WHERE (priority = 0 OR priority = 1) AND (TRUE AND id > '500' AND id <= '1000')")
    assert statement.next_keys(["id"], ["500"]) == (
        """SELECT "id"::text AS dbpromote_key_0 FROM core_task """
        """WHERE (priority = 0 OR priority = 1) AND true AND ("id") > ('500') ORDER BY "id" LIMIT 500"""
    )  # ordered by the key's own type: 9 before 10


def test_a_composite_key_is_compared_as_a_row_and_values_are_quoted():
    statement = BatchedStatement("DELETE FROM app.tag AS t WHERE t.stale", 10)
    assert statement.table == "app.tag"
    batch = statement.between(["site", "name"], ["1", "o'brien"], ["2", "z"])
    assert batch == (
        "DELETE FROM app.tag AS t WHERE t.stale "
        "AND (TRUE AND (site, name) > ('1', 'o''brien') AND (site, name) <= ('2', 'z'))"
    )
    parse_sql(batch)  # and it is still one valid statement


@pytest.mark.parametrize(
    "source",
    [
        "SELECT 1",
        "UPDATE a SET x = 1; DELETE FROM b",
        "UPDATE a SET x = b.x FROM b WHERE a.id = b.id",
        "DELETE FROM a USING b WHERE a.id = b.id",
        "WITH old AS (SELECT 1) DELETE FROM a",
        "DELETE FROM a RETURNING id",
        "INSERT INTO a VALUES (1)",
    ],
)
def test_anything_but_one_plain_update_or_delete_is_refused(source):
    with pytest.raises(InputError, match="--batch-size runs one UPDATE or DELETE of one table in batches"):
        BatchedStatement(source, 100)


def test_invalid_sql_and_a_size_below_one_are_one_sentence_each():
    with pytest.raises(InputError, match=r"^The fix script is not valid SQL \(syntax error at or near \"UPDAT\""):
        BatchedStatement("UPDAT a SET x = 1", 100)
    with pytest.raises(InputError, match=r"^--batch-size 0 is not a number of rows; give one of at least 1"):
        BatchedStatement("DELETE FROM a", 0)


@pytest.mark.parametrize(
    "source, kind",
    [
        ("ALTER TABLE core_task ADD COLUMN note text", "ALTER TABLE"),
        ("UPDATE core_task SET title = 'a' WHERE id = 1;\nCREATE INDEX ON core_task (title)", "CREATE INDEX"),
        ("DO $$ BEGIN EXECUTE 'DROP TABLE core_task'; END $$", "DO $$"),
        ("TRUNCATE core_task", "TRUNCATE CORE_TASK"),
        ("COMMIT", "COMMIT"),
    ],
)
def test_a_fix_that_is_not_a_data_change_is_refused_as_it_is_read(source, kind):
    with pytest.raises(InputError) as refused:
        FixScript(name="fix_notes.sql", source=source)
    assert f"({kind} ...) is not a data change" in str(refused.value)
    assert "schema changes belong in a migration; reconcile covers SQL already applied by hand." in str(refused.value)


def test_an_update_or_delete_of_every_row_asks_for_a_bound_unless_one_is_given_or_a_tenant_confines_it():
    from dbpromote.fixes import check_fix_input

    script = FixScript(
        name="fix.sql", source="SELECT 1; UPDATE core_task SET title = upper(title); DELETE FROM core_tag"
    )
    assert script.unbounded() == ["core_task", "core_tag"]
    with pytest.raises(InputError, match=r"changes every row of core_task, core_tag .* --expect-rows MIN\.\.MAX"):
        check_fix_input([], script, 0)
    with pytest.raises(InputError, match="No environments given"):  # past the bound: the next check speaks
        check_fix_input([], script, 0, expect_rows="1..500")
    with pytest.raises(InputError, match="No environments given"):
        check_fix_input([], script, 0, tenants=["7"])
    assert FixScript(name="fix.sql", source="UPDATE core_task SET title = 'a' WHERE id = 3").unbounded() == []
