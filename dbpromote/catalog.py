"""The schema as PostgreSQL's catalogs describe it, object by object, and what differs between two of them.

A snapshot maps each object (`kind`, `name`) to the attributes that make it what it is, read with the server's own
deparsers (pg_get_indexdef, pg_get_constraintdef, pg_get_expr, ...), so two databases built the same way give equal
snapshots whatever their OIDs, names of databases or column order. Objects an extension owns are the extension's.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import psycopg

from dbpromote.models.drift import Difference, NameOrigin

# Schemas of the server itself, never the project's.
SYSTEM_SCHEMAS = "n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg\\_%%'"
RELATION_KINDS = {"r": "table", "p": "table", "f": "table", "v": "view", "m": "view", "S": "sequence"}

Snapshot = dict[tuple[str, str], dict]


def snapshot(conn: psycopg.Connection, app_role: str) -> Snapshot:
    """Every object of the database's own schemas with its defining attributes; `app_role`'s grants among them."""
    objects: Snapshot = {}
    for read in (_relations, _columns, _constraints, _indexes, _functions, _triggers, _policies, _extensions):
        for kind, name, attributes in read(conn, app_role):
            objects[kind, name] = attributes
    return objects


def _rows(conn: psycopg.Connection, query: str, params: list | None = None) -> list[tuple]:
    return conn.execute(query.replace("{schemas}", SYSTEM_SCHEMAS), params or []).fetchall()


def _relations(conn, app_role) -> Iterator[tuple[str, str, dict]]:
    """Tables, views and sequences: their kind, owner, RLS switches, definition, and the app role's privileges."""
    rows = _rows(
        conn,
        """
        SELECT c.relkind, n.nspname || '.' || c.relname, pg_get_userbyid(c.relowner), c.relpersistence,
               c.relrowsecurity, c.relforcerowsecurity,
               CASE WHEN c.relkind IN ('v', 'm') THEN pg_get_viewdef(c.oid, true) END,
               (SELECT string_agg(a.privilege_type, ', ' ORDER BY a.privilege_type) FROM aclexplode(c.relacl) a
                 WHERE a.grantee = (SELECT oid FROM pg_roles WHERE rolname = %s)),
               s.seqtypid::regtype::text, s.seqincrement, s.seqmin, s.seqmax, s.seqcycle
        FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
        LEFT JOIN pg_sequence s ON s.seqrelid = c.oid
        WHERE c.relkind IN ('r', 'p', 'f', 'v', 'm', 'S') AND {schemas}
          AND NOT EXISTS (SELECT 1 FROM pg_depend e WHERE e.objid = c.oid AND e.deptype = 'e')
        """,
        [app_role],
    )
    for relkind, name, owner, persistence, rls, force, view, grants, *sequence in rows:
        kind = RELATION_KINDS[relkind]
        attributes = {"owner": owner, "unlogged": persistence == "u"}
        if kind == "table":
            attributes |= {"partitioned": relkind == "p", "foreign": relkind == "f", "rls": rls, "force_rls": force}
        if kind == "view":
            attributes |= {"materialized": relkind == "m", "definition": view}
        if kind == "sequence":
            attributes |= dict(zip(("type", "increment", "min", "max", "cycle"), map(str, sequence), strict=True))
        yield kind, name, attributes
        if grants:
            on = "SEQUENCE" if kind == "sequence" else "TABLE"
            yield "grant", name, {"role": app_role, "on": on, "privileges": grants}


def _columns(conn, app_role) -> Iterator[tuple[str, str, dict]]:
    """Columns by name (their order is not part of the schema): type, null, default, identity, generated, collation."""
    for name, type_, not_null, default, identity, generated, collation in _rows(
        conn,
        """
        SELECT n.nspname || '.' || c.relname || '.' || a.attname, format_type(a.atttypid, a.atttypmod), a.attnotnull,
               pg_get_expr(d.adbin, d.adrelid), a.attidentity, a.attgenerated,
               CASE WHEN a.attcollation <> t.typcollation THEN co.collname END
        FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid JOIN pg_namespace n ON n.oid = c.relnamespace
        JOIN pg_type t ON t.oid = a.atttypid
        LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
        LEFT JOIN pg_collation co ON co.oid = a.attcollation
        WHERE c.relkind IN ('r', 'p', 'f') AND a.attnum > 0 AND NOT a.attisdropped AND {schemas}
        """,
    ):
        yield (
            "column",
            name,
            {
                "type": type_,
                "not_null": not_null,
                "default": default or "",
                "identity": {"a": "always", "d": "by default"}.get(identity, ""),
                "generated": default if generated == "s" else "",
                "collation": collation or "",
            },
        )


def _constraints(conn, app_role) -> Iterator[tuple[str, str, dict]]:
    """Table constraints by definition, and whether they were validated."""
    for name, definition, validated in _rows(
        conn,
        """
        SELECT n.nspname || '.' || c.relname || '.' || k.conname, pg_get_constraintdef(k.oid), k.convalidated
        FROM pg_constraint k JOIN pg_class c ON c.oid = k.conrelid JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE {schemas}
        """,
    ):
        yield "constraint", name, {"definition": definition, "validated": validated}


def _indexes(conn, app_role) -> Iterator[tuple[str, str, dict]]:
    """Indexes by definition (their own name left out, so a renamed one is found) and validity; those a constraint
    owns are its constraint's."""
    for table, index, definition, valid in _rows(
        conn,
        """
        SELECT n.nspname || '.' || t.relname, i.relname,
               replace(pg_get_indexdef(i.oid), ' INDEX ' || quote_ident(i.relname) || ' ON ', ' INDEX ON '),
               x.indisvalid
        FROM pg_index x JOIN pg_class i ON i.oid = x.indexrelid JOIN pg_class t ON t.oid = x.indrelid
        JOIN pg_namespace n ON n.oid = i.relnamespace
        WHERE {schemas} AND NOT EXISTS (SELECT 1 FROM pg_constraint k WHERE k.conindid = x.indexrelid)
        """,
    ):
        yield "index", f"{table}.{index}", {"definition": definition, "valid": valid}


def _functions(conn, app_role) -> Iterator[tuple[str, str, dict]]:
    for name, definition, owner in _rows(
        conn,
        """
        SELECT n.nspname || '.' || p.proname || '(' || pg_get_function_identity_arguments(p.oid) || ')',
               pg_get_functiondef(p.oid), pg_get_userbyid(p.proowner)
        FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
        WHERE p.prokind IN ('f', 'p') AND {schemas}
          AND NOT EXISTS (SELECT 1 FROM pg_depend e WHERE e.objid = p.oid AND e.deptype = 'e')
        """,
    ):
        yield "function", name, {"definition": definition, "owner": owner}


def _triggers(conn, app_role) -> Iterator[tuple[str, str, dict]]:
    for name, definition, enabled in _rows(
        conn,
        """
        SELECT n.nspname || '.' || c.relname || '.' || g.tgname, pg_get_triggerdef(g.oid), g.tgenabled
        FROM pg_trigger g JOIN pg_class c ON c.oid = g.tgrelid JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE NOT g.tgisinternal AND {schemas}
        """,
    ):
        yield "trigger", name, {"definition": definition, "enabled": enabled != "D"}


def _policies(conn, app_role) -> Iterator[tuple[str, str, dict]]:
    for name, command, permissive, roles, using, check in _rows(
        conn,
        """
        SELECT n.nspname || '.' || c.relname || '.' || p.polname, p.polcmd, p.polpermissive,
               (SELECT string_agg(CASE r WHEN 0 THEN 'public' ELSE pg_get_userbyid(r) END, ', ' ORDER BY 1)
                  FROM unnest(p.polroles) r),
               pg_get_expr(p.polqual, p.polrelid), pg_get_expr(p.polwithcheck, p.polrelid)
        FROM pg_policy p JOIN pg_class c ON c.oid = p.polrelid JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE {schemas}
        """,
    ):
        commands = {"r": "SELECT", "a": "INSERT", "w": "UPDATE", "d": "DELETE", "*": "ALL"}
        yield (
            "policy",
            name,
            {
                "command": commands[command],
                "permissive": permissive,
                "roles": roles,
                "using": using or "",
                "check": check or "",
            },
        )


def _extensions(conn, app_role) -> Iterator[tuple[str, str, dict]]:
    for name, version in _rows(conn, "SELECT extname, extversion FROM pg_extension"):
        yield "extension", name, {"version": version}


@dataclass(frozen=True)
class Naming:
    """What the migrations say of index and constraint names, each "table.name" (the replay's model state names
    tables without their schema): which names they give themselves, which names migrations not yet applied find
    objects by (bare names), and which live names are the ones Django's schema editor generated."""

    explicit: frozenset[str] = frozenset()
    used_later: frozenset[str] = frozenset()
    django_named: frozenset[str] = frozenset()

    def origin(self, expected: tuple[str, str], live: tuple[str, str]) -> NameOrigin:
        """Who named a renamed object, which says whether its name matters (see NameOrigin)."""
        if _table_and_name(expected) not in self.explicit:
            return "generated"
        if expected[1].rsplit(".", 1)[1] in self.used_later or _table_and_name(live) not in self.django_named:
            return "explicit"
        return "rewritten"


def compare(
    expected: Snapshot,
    live: Snapshot,
    healed: Callable[[tuple, dict | None, dict | None], bool],
    naming: Naming = Naming(),
) -> list[Difference]:
    """What the live schema has that the expected one lacks, lacks that it has, or has otherwise. An index or
    constraint missing under one name and present under another with the same definition on the same table is one
    object renamed, and `naming` says whether the name matters (Naming.origin). `healed(key, expected, live)` tells a
    difference a promotion repairs by itself."""
    missing = sorted(key for key in expected.keys() - live.keys())
    unexpected = sorted(key for key in live.keys() - expected.keys())
    renamed = _renames(expected, live, missing, unexpected)
    gone = {_table_of(key) for key in missing if key[0] in ("table", "view")}
    new = {_table_of(key) for key in unexpected if key[0] in ("table", "view")}
    differences = [Difference.renamed(old, new_, naming.origin(old, new_)) for old, new_ in renamed]
    # A renamed object whose other attributes differ too (say, left INVALID) is also reported as different.
    changed_after_rename = [(old, new_) for old, new_ in renamed if expected[old] != live[new_]]
    differences += [Difference.different(old, expected[old], live[new_]) for old, new_ in changed_after_rename]
    # What belongs to a missing or unexpected table is reported with it, not one by one.
    keys = [
        key
        for key in missing
        if key not in dict(renamed) and (key[0] in ("table", "view") or _table_of(key) not in gone)
    ]
    differences += [Difference.missing(key, expected[key]) for key in keys]
    added = [
        key
        for key in unexpected
        if key not in {new_ for _, new_ in renamed} and (key[0] in ("table", "view") or _table_of(key) not in new)
    ]
    differences += [Difference.unexpected(key, live[key]) for key in added]
    changed = [key for key in sorted(expected.keys() & live.keys()) if expected[key] != live[key]]
    differences += [Difference.different(key, expected[key], live[key]) for key in changed]
    keys = [old for old, _ in renamed] + [old for old, _ in changed_after_rename] + keys + added + changed
    for difference, key in zip(differences, keys, strict=True):
        difference.healed_by_promotion = healed(key, expected.get(key), live.get(key))
    return sorted(differences, key=lambda d: (d.object, d.kind))


def _renames(expected: Snapshot, live: Snapshot, missing: list, unexpected: list) -> list[tuple]:
    """Pairs (expected key, live key) of indexes, or of constraints, on one table with one definition (columns and
    expressions in order, method, predicate, included columns, operator classes, uniqueness, deferrability, as the
    server deparses them without the name) under two names."""
    pairs, taken = [], set()
    for old in (key for key in missing if key[0] in ("index", "constraint")):
        for new in (key for key in unexpected if key[0] == old[0] and key not in taken):
            if _table_of(old) == _table_of(new) and expected[old]["definition"] == live[new]["definition"]:
                pairs.append((old, new))
                taken.add(new)
                break
    return pairs


def _table_and_name(key: tuple[str, str]) -> str:
    """ "table.name" of an object on a table (the schema left out: the replay's model state names tables alone)."""
    return key[1].split(".", 1)[1] if key[1].count(".") >= 2 else key[1]


def _table_of(key: tuple[str, str]) -> str:
    """schema.table of an object: itself for a relation, its table for a column, index, constraint, policy."""
    kind, name = key
    if kind in ("table", "view", "sequence", "grant", "function", "extension"):
        return name
    return re.sub(r"\.[^.]*$", "", name) if name.count(".") >= 2 else name
