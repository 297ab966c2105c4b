"""Replays kept: the schema a migration history produces, read once per distinct history.

A drift check replays a target's recorded migrations into a scratch database and reads the schema they make. That
schema is decided by the history and the code alone (the migration files, Django and the packages they import,
the project's own code), by the server, its extensions and the RLS settings (the salt): targets with the same
history (a fleet's members, staging and production after a promotion) and later checks of the same history get
the same answer, which for a project of 150 migrations is 12 s of CPU. The probe computes the key
(django_probe.replay_key); the worker keeps, under it, the schema and the names the probe read from the replay, in
files on the machine that runs the checks (a cache: a miss only costs a replay).
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from dbpromote.catalog import Snapshot
from dbpromote.config import DatabaseTarget

CACHE_ENV = "DBPROMOTE_CACHE_DIR"
# A replay not used for this long is dropped when another is kept: histories a project has left behind.
KEEP_S = 30 * 86400


@dataclass(frozen=True)
class Replay:
    """What a replay of one history gave: the schema (RLS brought up to date) and the names its migrations give."""

    schema: Snapshot
    explicit_names: list[str]
    names_used_later: list[str]


def cache_dir() -> Path:
    """Where replays are kept: DBPROMOTE_CACHE_DIR, or dbpromote/replays in the user's cache directory."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "dbpromote" / "replays"


def salt(target: DatabaseTarget, server: dict, extensions: dict[str, str], code: list[str]) -> str:
    """What besides the history decides the replayed schema, as one hash: the server (`server`: its version,
    the database's encoding and collation, the role that owns the scratch database), the extensions created first,
    the RLS settings the drift check applies to it, and the worker's code that makes and reads it (`code`, its
    files: a release that changes them reads nothing another kept)."""
    rls = [target.schema_name, target.tenant_column, target.tenant_setting, target.app_role, target.force_rls]
    code = [hashlib.sha256(Path(path).read_bytes()).hexdigest() for path in code]
    document = [sorted(server.items()), sorted(extensions.items()), rls, code]
    return hashlib.sha256(json.dumps(document).encode()).hexdigest()


def read(key: str, directory: Path | None = None) -> Replay | None:
    """The replay kept under `key`, or None."""
    path = (directory or cache_dir()) / f"{key}.json"
    try:
        document = json.loads(path.read_text())
        os.utime(path)  # used: kept another KEEP_S
    except (OSError, ValueError):
        return None
    schema = {(kind, name): attributes for kind, name, attributes in document["schema"]}
    return Replay(schema, document["explicit_names"], document["names_used_later"])


def keep(key: str, replay: Replay, directory: Path | None = None) -> None:
    """Keep `replay` under `key` (written whole, then renamed: a reader never sees half of it); drop replays
    unused for KEEP_S."""
    directory = directory or cache_dir()
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    document = {
        "schema": [[kind, name, attributes] for (kind, name), attributes in sorted(replay.schema.items())],
        "explicit_names": replay.explicit_names,
        "names_used_later": replay.names_used_later,
    }
    partial = directory / f".{key}.{os.getpid()}.{threading.get_ident()}"  # a promotion checks in threads
    partial.write_text(json.dumps(document))
    partial.replace(directory / f"{key}.json")
    for old in directory.glob("*.json"):
        try:
            if time.time() - old.stat().st_mtime > KEEP_S:
                old.unlink()
        except OSError:
            pass  # another process dropped it first
