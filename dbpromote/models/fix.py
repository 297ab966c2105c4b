"""A guarded data fix: the script, what its dry run would change per table, and what its real run changed."""

from __future__ import annotations

import hashlib
import re

from pglast import ast, enums, parse_sql
from pglast.parser import ParseError
from pglast.stream import RawStream
from pydantic import BaseModel, Field, computed_field, field_validator, model_validator

from dbpromote.errors import InputError

SAMPLE_KEYS = 5  # changed rows' keys kept per table for the approval form


class FixScript(BaseModel):
    """What a fix runs on each target, identified everywhere by its hash: SQL statements (`.sql`), or Python run in
    the project's own interpreter with Django set up (`.py`: the seed's `fix_*.py`, ORM code)."""

    name: str
    source: str
    purpose: str = ""

    @field_validator("name")
    @classmethod
    def sql_or_python(cls, name: str) -> str:
        if not name.endswith((".sql", ".py")):
            raise InputError(f"{name} is neither a .sql nor a .py file; a fix script is SQL statements or Python.")
        return name

    @field_validator("source")
    @classmethod
    def not_empty(cls, source: str) -> str:
        if not source.strip():
            raise InputError("The fix script is empty; give a file with what to run.")
        return source

    @model_validator(mode="after")
    def data_only(self) -> FixScript:
        """A SQL script changes data, never the schema: the statements it may hold are DATA_STATEMENTS. (Python
        code cannot be read so: a `fix_*.py` is ORM code by convention.)"""
        for number, statement in enumerate(self.statements(), 1):
            if not isinstance(statement.stmt, DATA_STATEMENTS):
                kind = " ".join(self.text_of(statement).split()[:2]).upper()
                raise InputError(
                    f"{self.name}'s statement {number} ({kind} ...) is not a data change, and a fix changes data "
                    "only (SELECT, INSERT, UPDATE, DELETE, MERGE, SET): schema changes belong in a migration; "
                    "reconcile covers SQL already applied by hand."
                )
        return self

    @computed_field
    @property
    def hash(self) -> str:
        return hashlib.sha256(self.source.encode()).hexdigest()[:16]

    @property
    def python(self) -> bool:
        return self.name.endswith(".py")

    def statements(self) -> list[ast.RawStmt]:
        """The SQL script's statements as PostgreSQL's own parser reads them (none for Python)."""
        if self.python:
            return []
        try:
            return list(parse_sql(self.source))
        except ParseError as error:
            raise InputError(f"The fix script is not valid SQL ({error}); correct it and run the fix again.") from None

    def text_of(self, statement: ast.RawStmt) -> str:
        end = statement.stmt_location + statement.stmt_len if statement.stmt_len else len(self.source)
        return self.source[statement.stmt_location : end].strip()

    def unbounded(self) -> list[str]:
        """The tables an UPDATE or DELETE without WHERE changes whole (every row of them)."""
        return [
            statement.stmt.relation.relname
            for statement in self.statements()
            if isinstance(statement.stmt, (ast.UpdateStmt, ast.DeleteStmt)) and statement.stmt.whereClause is None
        ]


# What a fix's SQL may run: reads, data changes and session settings; everything else (DDL, DO blocks, CALL,
# COPY, transaction control) is not a data change it can count, guard and undo.
DATA_STATEMENTS = (
    ast.SelectStmt,
    ast.InsertStmt,
    ast.UpdateStmt,
    ast.DeleteStmt,
    ast.MergeStmt,
    ast.VariableSetStmt,
)


class RowBounds(BaseModel):
    """--expect-rows MIN..MAX: how many rows a fix may change on one target, inserted, updated and deleted."""

    least: int = 0
    most: int | None = None

    @classmethod
    def parse(cls, text: str) -> RowBounds:
        if not text:
            return cls()
        match = re.fullmatch(r"\s*(\d*)\s*\.\.\s*(\d*)\s*", text)
        if not match or not (match[1] or match[2]) or (match[1] and match[2] and int(match[1]) > int(match[2])):
            raise InputError(
                f"--expect-rows {text!r} is not MIN..MAX; write it as e.g. 1..50, 10.. or ..100 (rows changed on "
                "each target)."
            )
        return cls(least=int(match[1] or 0), most=int(match[2]) if match[2] else None)

    def __str__(self) -> str:
        return f"{self.least}..{'' if self.most is None else self.most}"

    def admits(self, rows: int) -> bool:
        return rows >= self.least and self.admits_at_most(rows)

    def admits_at_most(self, rows: int) -> bool:
        return self.most is None or rows <= self.most


class TableChanges(BaseModel):
    table: str
    inserted: int = 0
    updated: int = 0
    deleted: int = 0
    sample_keys: list[str] = Field(default_factory=list)

    @property
    def rows(self) -> int:
        return self.inserted + self.updated + self.deleted

    def counts(self) -> tuple[str, int, int, int]:
        return (self.table, self.inserted, self.updated, self.deleted)


class FixRun(BaseModel):
    """What a fix's script changed (dry: would change) on one target."""

    target: str
    script_hash: str
    tenants: list[str]
    tables: list[TableChanges]
    dry: bool
    before_images: str = Field(default="", description="gs:// folder of the rows as they were (real run only)")
    batches: int = Field(default=1, description="transactions it committed in (--batch-size: one per batch)")
    backup: str = ""

    @property
    def rows(self) -> int:
        return sum(table.rows for table in self.tables)

    def same_counts(self, other: FixRun) -> bool:
        return sorted(t.counts() for t in self.tables) == sorted(t.counts() for t in other.tables)

    def describe(self) -> str:
        """One line: per table, rows inserted (+), updated (~) and deleted (-)."""
        changes = [f"{t.table} +{t.inserted} ~{t.updated} -{t.deleted}" for t in self.tables]
        return f"{self.rows} rows: {'; '.join(changes)}" if changes else "no row would change"


class BatchedStatement:
    """--batch-size N: one UPDATE or DELETE of one table, run as keyset batches of at most N of the rows it
    matches, in primary-key order, each batch its own transaction. The statement is parsed by PostgreSQL's own
    parser (pglast) and each batch is the same statement with a key range added to its WHERE, so a batch changes
    exactly what the whole statement would change inside that range. Composition only; bad input fails here."""

    def __init__(self, source: str, size: int):
        if size < 1:
            raise InputError(f"--batch-size {size} is not a number of rows; give one of at least 1, e.g. 1000.")
        statements = FixScript(name="batched.sql", source=source).statements()
        statement = statements[0].stmt if len(statements) == 1 else None
        if not isinstance(statement, (ast.UpdateStmt, ast.DeleteStmt)) or (
            statement.withClause or statement.returningClause or getattr(statement, "fromClause", None)
            or getattr(statement, "usingClause", None)
        ):  # fmt: skip
            raise InputError(
                "--batch-size runs one UPDATE or DELETE of one table in batches, and the script is not one (or has "
                "WITH, FROM, USING or RETURNING); give a single such statement, or run the script without "
                "--batch-size."
            )
        self.statement, self.size = statement, size
        relation = statement.relation
        self.table = ".".join(part for part in (relation.schemaname, relation.relname) if part)

    def next_keys(self, key: list[str], after: list[str] | None) -> str:
        """The keys of the next batch's rows (at most size of them, as text), in key order, after the last batch."""
        # Named apart from the columns: ORDER BY takes an output column's name first, and these are text.
        keys = ", ".join(f"{quote_ident(c)}::text AS dbpromote_key_{n}" for n, c in enumerate(key))
        # Text, not psycopg's sql: the parts come deparsed by pglast, identifiers and values quoted here.
        relation, order = RawStream()(self.statement.relation), ", ".join(quote_ident(c) for c in key)
        where = self._where(key, after, None)
        return f"SELECT {keys} FROM {relation} WHERE {where} ORDER BY {order} LIMIT {self.size}"  # noqa: S608

    def between(self, key: list[str], after: list[str] | None, last: list[str]) -> str:
        """The statement confined to the keys after `after` (none: from the first) up to `last`, both as text."""
        condition = parse_sql(f"SELECT WHERE {self._range(key, after, last)}")[0].stmt.whereClause
        batch = self.statement.__class__(**{f: getattr(self.statement, f) for f in self.statement})
        batch.whereClause = (
            ast.BoolExpr(boolop=enums.BoolExprType.AND_EXPR, args=(self.statement.whereClause, condition))
            if self.statement.whereClause
            else condition
        )
        return RawStream()(batch)

    def _where(self, key: list[str], after: list[str] | None, last: list[str] | None) -> str:
        where = self.statement.whereClause
        own = f"({RawStream()(where)})" if where else "true"
        return f"{own} AND {self._range(key, after, last)}"

    @staticmethod
    def _range(key: list[str], after: list[str] | None, last: list[str] | None) -> str:
        """Row comparisons on the key with text literals, which PostgreSQL casts to the key columns' own types."""
        columns = f"({', '.join(quote_ident(c) for c in key)})"
        parts = ["true"]
        if after is not None:
            parts.append(f"{columns} > ({', '.join(quote_literal(v) for v in after)})")
        if last is not None:
            parts.append(f"{columns} <= ({', '.join(quote_literal(v) for v in last)})")
        return " AND ".join(parts)


def quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def quote_literal(value: str) -> str:
    """A string literal for a server with standard_conforming_strings on (the default since PostgreSQL 9.1)."""
    return "'" + value.replace("'", "''") + "'"
