"""Drift: how a live schema differs from the one its applied migrations produce, object by object, with the SQL
that would reconcile each difference where one statement can."""

from __future__ import annotations

from collections import Counter
from typing import Literal

from psycopg import sql
from pydantic import BaseModel, Field, computed_field

# "edited": a migration file changed after it was applied; "orphaned": a django_migrations row with no file.
Kind = Literal["missing", "unexpected", "different", "renamed", "edited", "orphaned"]
# Who named a renamed index or constraint, which says whether its name matters:
# - "generated": Django's schema editor (unique_together, index_together, db_index, a foreign key, a field's check),
#   whose names differ between Django versions and between paths through one history; Django finds such an object by
#   table, columns and kind, never by name: a note.
# - "explicit": the project (Meta.indexes, Meta.constraints, AddIndex, AddConstraint, RenameIndex), and the live name
#   is not one Django generates (a person renamed it), or a migration not yet applied finds it by that name: blocks.
# - "rewritten": the project names it now, but the live object carries the name Django generated when an earlier text
#   of that migration made it (a package rewrote its history: django-taggit 5 turned its index_together and
#   unique_together migrations into named AddIndex and AddConstraint), and no migration not yet applied finds it by
#   name: a note with the rename that fixes it before one does.
NameOrigin = Literal["", "explicit", "generated", "rewritten"]
WHY = {
    "explicit": "the project names it, and migrations alter, rename or drop it by that name",
    "generated": "Django generated the name, which differs between Django versions and between the operations that "
    "made the object; a later migration finds it by table, columns and kind, so only the name differs",
    "rewritten": "the migrations name it now, but the live name is the one Django generated when an earlier text of "
    "the migration made it; no migration not yet applied finds it by name, so it does not block: rename it (fix) "
    "before one does",
}


class Difference(BaseModel):
    """One object the live database has otherwise than its migrations say: `expected` vs `live`, and a fix."""

    object: str  # "column public.core_task.title"
    kind: Kind
    expected: str = ""
    live: str = ""
    fix: str = ""  # SQL that would make live what is expected; empty where a person must decide
    healed_by_promotion: bool = False  # the RLS step of every promotion repairs it: reported, never blocking
    name_origin: NameOrigin = ""  # for a rename: whether the name matters
    why: str = ""  # why it blocks or does not, where that is not plain

    @computed_field
    @property
    def blocks(self) -> bool:
        """Whether it stops a promotion: not what the promotion repairs, nor a name Django generated otherwise."""
        return not self.healed_by_promotion and self.name_origin not in ("generated", "rewritten")

    @classmethod
    def missing(cls, key: tuple[str, str], expected: dict) -> Difference:
        return cls(object=_label(key), kind="missing", expected=_describe(expected), fix=_create(key, expected))

    @classmethod
    def unexpected(cls, key: tuple[str, str], live: dict) -> Difference:
        return cls(object=_label(key), kind="unexpected", live=_describe(live), fix=_drop(key, live))

    @classmethod
    def different(cls, key: tuple[str, str], expected: dict, live: dict) -> Difference:
        changed = [attribute for attribute in expected if expected[attribute] != live.get(attribute)]
        return cls(
            object=_label(key),
            kind="different",
            expected=_describe({a: expected[a] for a in changed}),
            live=_describe({a: live.get(a) for a in changed}),
            fix=_alter(key, expected, live, changed),
        )

    @classmethod
    def renamed(cls, old: tuple[str, str], new: tuple[str, str], origin: NameOrigin) -> Difference:
        """An index or constraint under another name; the fix renames it back, which only an explicit name needs."""
        schema, _, name = _split(new)
        expected_name = sql.Identifier(_split(old)[2])
        if old[0] == "index":
            fix = sql.SQL("ALTER INDEX {} RENAME TO {};").format(sql.Identifier(schema, name), expected_name)
        else:
            fix = sql.SQL("ALTER TABLE {} RENAME CONSTRAINT {} TO {};").format(
                _table(new), sql.Identifier(name), expected_name
            )
        return cls(
            object=_label(old),
            kind="renamed",
            expected=_split(old)[2],
            live=name,
            fix=fix.as_string(),
            name_origin=origin,
            why=WHY[origin],
        )


class DriftReport(BaseModel):
    """A target's live schema compared with the replay of the migrations its django_migrations records."""

    target: str
    replayed: int = Field(description="Migrations replayed into the scratch database")
    reused: bool = Field(default=False, description="The schema was that of an earlier replay of the same history")
    differences: list[Difference]
    duration_s: float
    checked_at: str

    @property
    def found(self) -> bool:
        """Whether anything differs beyond names Django generated otherwise (the notes)."""
        return len(self.differences) > len(self.notes)

    @property
    def blocking(self) -> list[Difference]:
        """The differences that stop a promotion: neither what it repairs by itself nor a generated name."""
        return [d for d in self.differences if d.blocks]

    @property
    def notes(self) -> list[Difference]:
        """Indexes and constraints whose only difference is a name Django generated: shown, never blocking."""
        return [
            d for d in self.differences if d.name_origin in ("generated", "rewritten") and not d.healed_by_promotion
        ]

    def summary(self, at_most: int = 5) -> str:
        """One line: how many differences, the first few named."""
        if not self.differences:
            return f"no drift on {self.target} ({self.replayed} migrations replayed)"
        if not self.blocking and not self.repaired:
            return f"no blocking drift on {self.target} ({self.replayed} migrations replayed){self._notes_line('; ')}"
        count = f"{len(self.differences)} difference{'s' if len(self.differences) > 1 else ''} on {self.target}"
        if not at_most:
            return count
        first = sorted(self.differences, key=lambda d: not d.blocks)[:at_most]  # what blocks, named first
        named = ", ".join(f"{d.object} ({d.kind})" for d in first)
        more = f" and {len(self.differences) - at_most} more" if len(self.differences) > at_most else ""
        return f"{count}: {named}{more}"

    def status(self) -> str:
        """One line for an approval form."""
        if not self.found:
            return f"none ({self.replayed} migrations replayed and compared, {self.checked_at}){self._notes_line('; ')}"
        healed = len(self.repaired)
        repaired = f"; this promotion's RLS step repairs {healed} of them" if healed else ""
        return f"{self.summary()}{repaired}{self._notes_line('; ')}"

    @property
    def repaired(self) -> list[Difference]:
        return [d for d in self.differences if d.healed_by_promotion]

    def _notes_line(self, lead: str) -> str:
        """How many objects differ only by a name Django generated (notes, never blocking)."""
        if not self.notes:
            return ""
        count = len(self.notes)
        return (
            f"{lead}{count} only by a name Django generated (a note: Django finds such objects by table, columns "
            "and kind, not by name)"
        )

    def text(self) -> str:
        """For a terminal: the summary, each blocking difference with its expected and live values and its fix,
        then in a line each what a promotion repairs by itself and which names Django generated otherwise."""
        lines = [self.summary(at_most=0 if self.found else 5)]
        for d in self.blocking:
            lines.append(f"  {d.kind:<10} {d.object}")
            values = (("expected", d.expected), ("live", d.live), ("fix", d.fix), ("why", d.why))
            lines += [f"             {label}: {value}" for label, value in values if value]
        if self.repaired:
            lines.append(
                f"  a promotion's RLS step repairs the other {len(self.repaired)}: {objects_of(self.repaired, 10)}"
            )
        if self.notes:
            named = ", ".join(f"{d.object} (live {d.live})" for d in self.notes[:10])
            more = f" and {len(self.notes) - 10} more" if len(self.notes) > 10 else ""
            lines.append(f"  note: {len(self.notes)} differ only by a name Django generated: {named}{more}")
        return "\n".join(lines)


def objects_of(differences: list[Difference], at_most: int = 0) -> str:
    """Each object and its kind; beyond at_most of them, how many of each kind of object."""
    if at_most and len(differences) > at_most:
        kinds = Counter(d.object.split(" ", 1)[0] for d in differences)
        return ", ".join(f"{count} {kind}" for kind, count in sorted(kinds.items())) + " objects"
    return ", ".join(f"{d.object} ({d.kind})" for d in differences)


def table_cell(text: str) -> str:
    """The text as one cell of a markdown table."""
    return (text or "-").replace("|", "\\|").replace("\n", " ")


def _label(key: tuple[str, str]) -> str:
    return f"{key[0]} {key[1]}"


def _describe(attributes: dict) -> str:
    """The attributes that say something: a definition as it reads, the rest as name=value, empty ones left out
    (a difference's own attributes are always shown)."""
    shown = {name: value for name, value in attributes.items() if value not in ("", None) or len(attributes) == 1}
    if "definition" in shown:
        notes = [f"{name}={value}" for name, value in shown.items() if name != "definition" and value is not True]
        return shown["definition"] + (f" ({'; '.join(notes)})" if notes else "")
    return "; ".join(f"{name}={'none' if value == '' else value}" for name, value in shown.items())


def _split(key: tuple[str, str]) -> tuple[str, str, str]:
    """(schema, table, name) of an object on a table; (schema, name, "") of a relation."""
    parts = key[1].split(".", 2)
    return (parts[0], parts[1], parts[2]) if len(parts) == 3 else (parts[0], parts[1], "")


def _table(key: tuple[str, str]) -> sql.Identifier:
    schema, table, _ = _split(key)
    return sql.Identifier(schema, table)


def _create(key: tuple[str, str], expected: dict) -> str:
    kind = key[0]
    schema, table, name = _split(key)
    if kind == "column":
        return _add_column(key, expected).as_string()
    if kind == "index":
        named = expected["definition"].replace(
            " INDEX ON ", f" INDEX CONCURRENTLY {sql.Identifier(name).as_string()} ON ", 1
        )
        return named + ";"
    if kind == "constraint":
        statement = sql.SQL("ALTER TABLE {} ADD CONSTRAINT {} {};")
        return statement.format(_table(key), sql.Identifier(name), sql.SQL(expected["definition"])).as_string()
    if kind == "policy":
        return _create_policy(key, expected).as_string()
    if kind in ("trigger", "function"):
        return expected["definition"].rstrip() + ";"
    if kind == "grant":
        return _grant(key, expected).as_string()
    if kind == "extension":
        return (
            sql.SQL("CREATE EXTENSION {} VERSION {};")
            .format(sql.Identifier(key[1]), sql.Literal(expected["version"]))
            .as_string()
        )
    return ""  # a table, view or sequence: its migration's to re-create, or a person's decision


def _drop(key: tuple[str, str], live: dict) -> str:
    kind = key[0]
    schema, table, name = _split(key)
    statements = {
        "column": sql.SQL("ALTER TABLE {} DROP COLUMN {};").format(_table(key), sql.Identifier(name)),
        "index": sql.SQL("DROP INDEX CONCURRENTLY {};").format(sql.Identifier(schema, name)),
        "constraint": sql.SQL("ALTER TABLE {} DROP CONSTRAINT {};").format(_table(key), sql.Identifier(name)),
        "policy": sql.SQL("DROP POLICY {} ON {};").format(sql.Identifier(name), _table(key)),
        "trigger": sql.SQL("DROP TRIGGER {} ON {};").format(sql.Identifier(name), _table(key)),
    }
    if kind == "grant":
        return _revoke(key, live).as_string()
    # A table's data is lost with it: a person decides; a column someone added by hand gets its DROP.
    return statements[kind].as_string() if kind in statements else ""


def _alter(key: tuple[str, str], expected: dict, live: dict, changed: list[str]) -> str:
    kind = key[0]
    schema, table, name = _split(key)
    statements: list[sql.Composable] = []
    if kind == "column":
        column = sql.SQL("ALTER TABLE {} ALTER COLUMN {} ").format(_table(key), sql.Identifier(name))
        if "type" in changed:
            statements.append(column + sql.SQL("TYPE {}").format(sql.SQL(expected["type"])))
        if "default" in changed:
            default = expected["default"]
            statements.append(column + (sql.SQL("SET DEFAULT " + default) if default else sql.SQL("DROP DEFAULT")))
        if "not_null" in changed:
            statements.append(column + sql.SQL("SET NOT NULL" if expected["not_null"] else "DROP NOT NULL"))
    elif kind == "table":
        relation = sql.SQL("ALTER TABLE {} ").format(sql.Identifier(schema, table))
        if "rls" in changed:
            statements.append(
                relation + sql.SQL("ENABLE" if expected["rls"] else "DISABLE") + sql.SQL(" ROW LEVEL SECURITY")
            )
        if "force_rls" in changed:
            statements.append(
                relation + sql.SQL("FORCE" if expected["force_rls"] else "NO FORCE") + sql.SQL(" ROW LEVEL SECURITY")
            )
        if "owner" in changed:
            statements.append(relation + sql.SQL("OWNER TO {}").format(sql.Identifier(expected["owner"])))
    elif kind == "index" and changed == ["valid"]:
        statements.append(sql.SQL("REINDEX INDEX CONCURRENTLY {}").format(sql.Identifier(schema, name)))
    elif kind == "constraint" and changed == ["validated"]:
        statements.append(sql.SQL("ALTER TABLE {} VALIDATE CONSTRAINT {}").format(_table(key), sql.Identifier(name)))
    elif kind in ("index", "constraint", "policy", "trigger"):
        return f"{_drop(key, live)} {_create(key, expected)}"
    elif kind == "function":
        return _create(key, expected)
    elif kind == "grant":
        return f"{_revoke(key, live).as_string()} {_grant(key, expected).as_string()}"
    return " ".join(statement.as_string() + ";" for statement in statements)


def _add_column(key: tuple[str, str], expected: dict) -> sql.Composed:
    statement = sql.SQL("ALTER TABLE {} ADD COLUMN {} {}").format(
        _table(key), sql.Identifier(_split(key)[2]), sql.SQL(expected["type"])
    )
    if expected["collation"]:
        statement += sql.SQL(" COLLATE {}").format(sql.Identifier(expected["collation"]))
    if expected["identity"]:
        statement += sql.SQL(f" GENERATED {expected['identity'].upper()} AS IDENTITY")
    elif expected["generated"]:
        statement += sql.SQL(" GENERATED ALWAYS AS ({}) STORED").format(sql.SQL(expected["generated"]))
    elif expected["default"]:
        statement += sql.SQL(" DEFAULT ") + sql.SQL(expected["default"])
    if expected["not_null"]:
        statement += sql.SQL(" NOT NULL")
    return statement + sql.SQL(";")


def _create_policy(key: tuple[str, str], expected: dict) -> sql.Composed:
    roles = sql.SQL(", ").join(
        sql.SQL("PUBLIC") if role == "public" else sql.Identifier(role) for role in expected["roles"].split(", ")
    )
    statement = sql.SQL("CREATE POLICY {} ON {} AS {} FOR {} TO {}").format(
        sql.Identifier(_split(key)[2]),
        _table(key),
        sql.SQL("PERMISSIVE" if expected["permissive"] else "RESTRICTIVE"),
        sql.SQL(expected["command"]),
        roles,
    )
    if expected["using"]:
        statement += sql.SQL(" USING ({})").format(sql.SQL(expected["using"]))
    if expected["check"]:
        statement += sql.SQL(" WITH CHECK ({})").format(sql.SQL(expected["check"]))
    return statement + sql.SQL(";")


def _grant(key: tuple[str, str], expected: dict) -> sql.Composed:
    return sql.SQL("GRANT {} ON {} {} TO {};").format(
        sql.SQL(expected["privileges"]),
        sql.SQL(expected["on"]),
        sql.Identifier(*key[1].split(".", 1)),
        sql.Identifier(expected["role"]),
    )


def _revoke(key: tuple[str, str], live: dict) -> sql.Composed:
    return sql.SQL("REVOKE ALL ON {} {} FROM {};").format(
        sql.SQL(live["on"]), sql.Identifier(*key[1].split(".", 1)), sql.Identifier(live["role"])
    )
