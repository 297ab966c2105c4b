"""The docs site: it builds in strict mode (a broken link or a page missing from the nav fails), and its command
line reference, generated from the commands themselves, has every command of `dbpromote` with its options."""

import html
import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def commands(command, path: str = "dbpromote"):
    """Every command's path, `dbpromote stack up` and the like, walking the groups."""
    yield path
    for name, sub in sorted(getattr(command, "commands", {}).items()):
        yield from commands(sub, f"{path} {name}")


def test_the_site_builds_strictly_and_its_reference_has_every_command_with_its_options(tmp_path):
    from dbpromote.cli_reference import command

    mkdocs = Path(sys.executable).with_name("mkdocs")
    built = subprocess.run(
        [str(mkdocs), "build", "--strict", "--site-dir", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env=os.environ | {"NO_MKDOCS_2_WARNING": "1"},
    )
    assert built.returncode == 0, built.stderr[-3000:]
    reference = html.unescape(re.sub(r"<[^>]+>", "", (tmp_path / "reference" / "cli" / "index.html").read_text()))
    missing = [path for path in commands(command) if f"{path} [OPTIONS]" not in reference]
    assert missing == [], missing
    assert "--acknowledge-risks" in reference and "--drift" in reference  # options, not only names
