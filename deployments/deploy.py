"""The deploy helper: prefect.yaml's deployments registered with a Prefect server, for its work pool."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from dbpromote.errors import StackError


def deploy_flows(prefect_env: dict[str, str], repo: Path) -> None:
    """`prefect deploy --all` of the repository's prefect.yaml; DBPROMOTE_REPO tells the worker where the flows are.

    Nothing to do for an installed package without the repository (no prefect.yaml beside it).
    """
    if not (repo / "prefect.yaml").is_file():
        return
    prefect = str(Path(sys.executable).parent / "prefect")
    result = subprocess.run(
        [prefect, "--no-prompt", "deploy", "--all"],
        capture_output=True,
        text=True,
        env=os.environ | prefect_env | {"DBPROMOTE_REPO": str(repo)},
        cwd=repo,
    )
    if result.returncode != 0:
        raise StackError(
            f"deploying the flows failed (exit {result.returncode}): {result.stderr.strip() or result.stdout.strip()}"
        )
