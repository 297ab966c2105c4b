"""A guarded data fix: the script, what its dry run would change per table, and what its real run changed."""

from __future__ import annotations

import hashlib
import re

from pydantic import BaseModel, Field, computed_field, field_validator

from dbpromote.errors import ConfigError

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
            raise ConfigError(f"{name} is neither a .sql nor a .py file; a fix script is SQL statements or Python.")
        return name

    @field_validator("source")
    @classmethod
    def not_empty(cls, source: str) -> str:
        if not source.strip():
            raise ConfigError("The fix script is empty; give a file with what to run.")
        return source

    @computed_field
    @property
    def hash(self) -> str:
        return hashlib.sha256(self.source.encode()).hexdigest()[:16]

    @property
    def python(self) -> bool:
        return self.name.endswith(".py")


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
            raise ConfigError(
                f"--expect-rows {text!r} is not MIN..MAX; write it as e.g. 1..50, 10.. or ..100 (rows changed on "
                "each target)."
            )
        return cls(least=int(match[1] or 0), most=int(match[2]) if match[2] else None)

    def __str__(self) -> str:
        return f"{self.least}..{'' if self.most is None else self.most}"

    def admits(self, rows: int) -> bool:
        return rows >= self.least and (self.most is None or rows <= self.most)


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
    before_images: str = Field(default="", description="gs:// URI of the rows as they were (real run only)")
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

    def markdown_lines(self) -> list[str]:
        lines = ["| table | inserted | updated | deleted | sample keys |", "|---|---|---|---|---|"]
        lines += [
            f"| {t.table} | {t.inserted} | {t.updated} | {t.deleted} | {', '.join(t.sample_keys) or '-'} |"
            for t in self.tables
        ]
        return lines if self.tables else ["No row would change."]
