"""squawk on each planned migration's SQL (as `sqlmigrate` prints it): what would lock or break a running
application becomes a risk of the plan, with squawk's rule name and its one-line fix."""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

from dbpromote.errors import ConfigError
from dbpromote.models.plan import PlannedMigration

# squawk-cli puts its binary beside the interpreter it is installed for (dbpromote depends on it).
SQUAWK = Path(sys.executable).parent / "squawk"
SQUAWK_TIMEOUT_S = 120
# Findings that are not risks to a running application, each with why.
NOT_RISKS = {
    # Style: the column types are Django's choice (DEFAULT_AUTO_FIELD, CharField, DateTimeField).
    "prefer-bigint-over-int": "style",
    "prefer-bigint-over-smallint": "style",
    "prefer-identity": "style",
    "prefer-text-field": "style",
    "prefer-timestamptz": "style",
    "ban-char-field": "style",
    "require-table-schema": "style",
    # Each migration runs once, recorded in django_migrations, so IF [NOT] EXISTS guards nothing.
    "prefer-robust-stmts": "Django records what ran",
    # dbpromote sets lock_timeout and statement_timeout on every migration's session itself.
    "require-timeout-settings": "dbpromote sets them",
    "require-lock-timeout": "dbpromote sets it",
    "require-statement-timeout": "dbpromote sets it",
    # squawk's parser, not PostgreSQL: the migration itself tells on staging.
    "syntax-error": "parser",
}
# Judged by dbpromote's Django-aware rules instead (models/plan.py), which know the tables the plan creates.
DJANGO_AWARE = {
    "ban-drop-column",
    "ban-drop-table",
    "renaming-column",
    "renaming-table",
    "changing-column-type",
    "require-concurrent-index-creation",
    "disallowed-unique-constraint",
}


def squawk_risks(migrations: list[PlannedMigration], server_version: str, ignore: dict[str, str]) -> None:
    """Append squawk's findings on each forward migration's SQL to its risks (rules in `ignore` left out)."""
    forward = [m for m in migrations if not m.backwards and m.sql]
    if not forward:
        return
    with tempfile.TemporaryDirectory(prefix="dbpromote-lint-") as folder:
        files: dict[str, tuple[PlannedMigration, list[str]]] = {}
        for migration in forward:
            lines = "\n".join(migration.sql).splitlines()
            if migration.atomic:  # as migrate runs it: squawk judges what a transaction may hold
                lines = ["BEGIN;", *lines, "COMMIT;"]
            path = Path(folder) / f"{migration.label}.sql"
            path.write_text("\n".join(lines) + "\n")
            files[str(path)] = (migration, lines)
        for finding in run_squawk(list(files), server_version):
            rule = finding["rule_name"]
            if rule in NOT_RISKS or rule in DJANGO_AWARE or rule in ignore:
                continue
            migration, lines = files[finding["file"]]
            line = finding["line"]  # counted from 0
            statement = lines[line].strip().rstrip(";") if 0 <= line < len(lines) else migration.label
            fix = finding.get("help") or f"https://squawkhq.com/docs/{rule}"
            risk = f"{statement[:100]}: {finding['message'].rstrip('.')} [{rule}: {fix}]"
            if risk not in migration.risks:
                migration.risks.append(risk)


def run_squawk(paths: list[str], server_version: str) -> list[dict]:
    """squawk's findings as JSON (it exits 1 when there are some)."""
    if not SQUAWK.exists():
        raise ConfigError(
            f"squawk is not installed beside {sys.executable}; reinstall dbpromote (it depends on squawk-cli)."
        )
    command = [str(SQUAWK), "--reporter", "json", "--pg-version", server_version, *paths]
    result = subprocess.run(command, capture_output=True, text=True, timeout=SQUAWK_TIMEOUT_S, check=False)
    try:
        return json.loads(result.stdout or "[]")
    except json.JSONDecodeError:
        raise ConfigError(
            f"squawk could not lint the plan (exit {result.returncode}: {result.stderr.strip()[:300]}); "
            "reinstall dbpromote, or report the migration it fails on."
        ) from None
