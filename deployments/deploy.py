"""The deploy helper: a work pool from this folder's base job template, and prefect.yaml's deployments on it."""

from __future__ import annotations

import json
import os
from pathlib import Path

TEMPLATES = Path(__file__).resolve().parent
# prefect.yaml's work pool, and the base job template of its process worker (the local stack's).
WORK_POOL = "dbpromote"
PROCESS_TEMPLATE = TEMPLATES / "process.json"


def create_work_pool(
    api_url: str, name: str = WORK_POOL, template: Path = PROCESS_TEMPLATE, kind: str = "process"
) -> None:
    """The work pool with the base job template (created, or its template replaced)."""
    from prefect import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.settings import PREFECT_API_URL, temporary_settings

    pool = WorkPoolCreate(name=name, type=kind, base_job_template=json.loads(template.read_text()))
    with temporary_settings({PREFECT_API_URL: api_url}), get_client(sync_client=True) as client:
        client.create_work_pool(pool, overwrite=True)


def deploy_flows(prefect_env: dict[str, str], repo: Path) -> None:
    """`prefect deploy --all` of the repository's prefect.yaml; DBPROMOTE_REPO tells the worker where the flows are.

    Nothing to do for an installed package without the repository (no prefect.yaml beside it).
    """
    # Here, not at the top: the local stack imports this module.
    from dbpromote.localstack.processes import run, venv_script

    if not (repo / "prefect.yaml").is_file():
        return
    run(
        [venv_script("prefect"), "--no-prompt", "deploy", "--all"],
        "deploying the flows",
        env=os.environ | prefect_env | {"DBPROMOTE_REPO": str(repo)},
        cwd=repo,
    )
