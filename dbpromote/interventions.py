"""Every intervention on a target, from its records: what the seed's hand-kept migration notes were, generated.

Promotions, data fixes and their undos, restores, rollbacks and reconciliations, newest first, each with its date,
what ran (scripts and plans by hash), its purpose, who approved, rows affected, and the backup and before-image
URIs to go back with.
"""

from __future__ import annotations

from pydantic import BaseModel, Field

from dbpromote.config import DatabaseTarget
from dbpromote.models.approval import WindowRun
from dbpromote.records import read_records


class Intervention(BaseModel):
    at: str
    kind: str
    run: str
    what: str
    purpose: str = ""
    approvers: list[str] = Field(default_factory=list)
    rows: int | None = None
    backup: str = ""
    before_images: str = ""

    def line(self) -> str:
        facts = [self.what]
        facts += [f"purpose: {self.purpose}"] if self.purpose else []
        facts += [f"approved by {', '.join(self.approvers)}"] if self.approvers else []
        facts += [f"{self.rows} rows"] if self.rows is not None else []
        facts += [f"backup {self.backup}"] if self.backup else []
        facts += [f"before-images {self.before_images}"] if self.before_images else []
        return f"{self.at[:19]}  {self.kind:<10} {'; '.join(facts)}  (run {self.run})"


def interventions(target: DatabaseTarget, since: str = "") -> list[Intervention]:
    """What was done to the target, newest first, from `since` (an ISO date or time) on."""
    approvals: dict[str, list[str]] = {}
    for approval in read_records(target, "approvals"):
        approvals.setdefault(approval["flow_run_id"], []).extend(approval.get("approvers") or [approval["approver"]])
    found = [
        *(_promotion(r) for r in read_records(target, "promotions")),
        *(_fix(r) for r in read_records(target, "fixes")),
        *(_restore(r) for r in read_records(target, "restores")),
        *(_rollback(r) for r in read_records(target, "rollbacks")),
        *(_reconcile(r) for r in read_records(target, "migrations") if r.get("reconciled")),
    ]
    for intervention in found:
        intervention.approvers = approvals.get(intervention.run, [])
    return sorted((i for i in found if i.at >= since), key=lambda i: i.at, reverse=True)


def _promotion(record: dict) -> Intervention:
    what = f"{record.get('project', '')} plan {record.get('plan_hash', '')}"
    if deployed := record.get("deployed"):
        what += f" in two phases, {deployed['release']} deployed between them by {deployed['deployed_by']}"
    if window := record.get("window"):
        what += f"; {WindowRun.model_validate(window).line()}"
    return Intervention(
        at=record["recorded_at"],
        kind="promotion",
        run=record["flow_run_id"],
        what=what,
        backup=record.get("backup") or "",
    )


def _fix(record: dict) -> Intervention:
    if "undoes" in record:
        what = f"undid fix run {record['undoes']}"
        return Intervention(
            at=record["recorded_at"], kind="fix-undo", run=record["flow_run_id"], what=what, rows=record["rows"]
        )
    scope = f" for tenant(s) {', '.join(record['tenants'])}" if record.get("tenants") else " unscoped"
    return Intervention(
        at=record["recorded_at"],
        kind="fix",
        run=record["flow_run_id"],
        what=f"script {record['script']} ({record['script_hash']}){scope}",
        purpose=record.get("purpose", ""),
        rows=record.get("rows"),
        backup=record.get("backup", ""),
        before_images=record.get("before_images", ""),
    )


def _restore(record: dict) -> Intervention:
    return Intervention(
        at=record["recorded_at"],
        kind="restore",
        run=record["flow_run_id"],
        what=f"restored; the database before it kept as {record.get('kept_as', '')}",
        rows=record.get("rows"),
        backup=record.get("backup", ""),
    )


def _rollback(record: dict) -> Intervention:
    return Intervention(
        at=record["recorded_at"],
        kind="rollback",
        run=record["flow_run_id"],
        what=f"back to the migration state of the backup, plan {record.get('plan', '')}",
        backup=record.get("backup", ""),
    )


def _reconcile(record: dict) -> Intervention:
    labels = ", ".join(f"{label} ({file_hash})" for label, file_hash in record["files"].items())
    return Intervention(
        at=record["recorded_at"], kind="reconcile", run=record["flow_run_id"], what=f"recorded {labels} as applied"
    )
