"""The plan's pure logic: risks a reviewer must acknowledge, the hash that binds an approval, target parsing."""

import pytest

from dbpromote.errors import InputError
from dbpromote.models.plan import (
    RULES,
    OperationInfo,
    Plan,
    PlannedMigration,
    classify_risks,
    describe_change,
    parse_target_migration,
)


def migration(name: str, *operations: OperationInfo, app: str = "core", sql: list[str] | None = None, **fields):
    return PlannedMigration(
        app=app, name=name, atomic=True, reversible=True, operations=list(operations), sql=sql or [], **fields
    )


def op(kind: str, description: str = "", **fields) -> OperationInfo:
    return OperationInfo(kind=kind, description=description or kind, **fields)


def test_dropping_renaming_and_unreviewable_code_are_risks_and_plain_additions_are_not():
    migrations = [
        migration("0002", op("AddField", "Add field note to task", null=True, has_default=False)),
        migration("0003", op("RemoveField", "Remove field legacy from invoice")),
        migration("0004", op("RunPython", "Raw Python operation")),
    ]
    classify_risks(migrations)
    assert migrations[0].risks == []
    assert migrations[1].risks == [RULES["RemoveField"].risk("Remove field legacy from invoice")]
    assert "drops a column the previous release's code may still read" in migrations[1].risks[0]
    assert migrations[2].risks == [RULES["RunPython"].risk("Raw Python operation")]


def test_not_null_without_a_default_fails_on_existing_rows():
    added = migration("0002", op("AddField", "Add field slug to project", null=False, has_default=False))
    classify_risks([added])
    assert added.risks == [
        "Add field slug to project: NOT NULL without a default fails on existing rows [not-null-without-default: "
        "give the field a default (db_default keeps it in the database) or add it nullable and backfill]"
    ]


def test_an_index_on_a_table_created_in_the_same_plan_is_not_a_risk_but_one_on_an_existing_table_is():
    created = migration("0002", op("CreateModel", "Create model feature", model="feature"))
    new_index = migration("0003", op("AddIndex", "Create index on feature", model="feature"))
    old_index = migration("0004", op("AddIndex", "Create index on task", model="task"))
    classify_risks([created, new_index, old_index])
    assert new_index.risks == []
    assert old_index.risks == [RULES["AddIndex"].risk("Create index on task")]
    assert "[index-not-concurrent: use AddIndexConcurrently" in old_index.risks[0]


def test_a_data_migration_without_reverse_or_using_current_models_is_named_by_its_rule():
    data = migration("0002", op("RunPython", "Raw Python operation", reversible=False, imports_models=True))
    classify_risks([data])
    assert [risk.split("[")[1].split(":")[0] for risk in data.risks] == [
        "runpython-without-reverse",
        "runpython-imports-models",
        "runpython",
    ]


def test_a_rule_the_project_ignores_is_no_risk():
    dropped = migration("0002", op("RemoveField", "Remove field legacy from invoice"))
    classify_risks([dropped], ignore={"drop-column-still-read": "nothing reads it since 2.3"})
    assert dropped.risks == []


def test_reversals_that_drop_data_are_risks():
    back = migration("0002", op("AddField", "Add field note to task"), backwards=True)
    classify_risks([back])
    assert back.risks == ["Add field note to task: reversing drops the column and every value in it"]


def plan(*migrations: PlannedMigration, applied=(("core", "0001_initial"),)) -> Plan:
    return Plan(target="staging", applied=list(applied), migrations=list(migrations))


def test_the_plan_hash_covers_order_sql_and_atomicity_but_not_what_is_already_applied():
    a, b = migration("0002", sql=["ALTER TABLE a"]), migration("0003", sql=["ALTER TABLE b"])
    assert plan(a, b).hash == plan(a, b, applied=[("core", "0001_initial"), ("auth", "0001")]).hash
    assert plan(a, b).hash != plan(b, a).hash
    assert plan(a, b).hash != plan(a, migration("0003", sql=["ALTER TABLE b2"])).hash
    assert plan(a).hash != plan(a.model_copy(update={"atomic": False})).hash


def test_the_change_between_two_plans_is_named():
    a, b = migration("0002", sql=["x"]), migration("0003", sql=["y"])
    assert describe_change(plan(a), plan(a, b)) == "new: core.0003"
    assert describe_change(plan(a, b), plan(b)) == "no longer pending: core.0002"
    assert describe_change(plan(a), plan(migration("0002", sql=["z"]))) == (
        "the same migrations now produce different SQL"
    )


def test_the_newest_applied_migration_per_app_is_the_reverse_target():
    assert plan(applied=[("core", "0002"), ("auth", "0001"), ("core", "0001")]).last_applied_by_app() == {
        "auth": "0001",
        "core": "0002",
    }


@pytest.mark.parametrize("to", ["core", "core:", ":0002", "core:0002:x"])
def test_a_malformed_target_migration_is_one_sentence_naming_the_form(to):
    with pytest.raises(InputError, match="write it as APP:MIGRATION"):
        parse_target_migration(to)


def test_a_target_migration_parses_and_empty_means_every_leaf():
    assert parse_target_migration("core:0008_default") == ("core", "0008_default")
    assert parse_target_migration("") is None
