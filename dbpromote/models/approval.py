"""What a person is asked to approve (a promotion's plan, a restore, a rollback), the form, and the approval."""

from __future__ import annotations

from typing import Literal

from prefect.input import RunInput
from pydantic import BaseModel, Field

# A Literal, not an Enum: the UI's form renders an inline enum as a choice, but not one behind a $ref.
Decision = Literal["approve", "reject"]


class ApprovalRequest(BaseModel):
    """What a person is asked to approve on one target: a promotion's plan, a restore, a rollback."""

    action: str = Field(description="What runs on approval, as a verb phrase: 'promoting to production'")
    target: str
    subject: str = Field(description="Exactly what is approved: a plan hash or a backup URI")
    items: list[str] = Field(description="The migrations (or objects) the approval covers")
    risks: list[str] = Field(default_factory=list, description="Each must be acknowledged")
    description: str = Field(description="Markdown shown above the form")
    notice: str = Field(description="One line for the notification")
    on_reject: str = "start a new run when it is ready"


class Approval(BaseModel):
    """Who approved what, when: recorded in the run's report and in the bucket beside the backups."""

    target: str
    action: str
    subject: str
    items: list[str]
    approver: str = Field(description="The first to approve")
    comment: str
    approved_at: str
    flow_run_id: str
    acknowledged_risks: list[str]
    approvers: list[str] = Field(default_factory=list, description="Everyone who approved, in order (two-person rule)")
    proven: bool = Field(False, description="Each approver gave a current one-time code of their enrolled secret")


class DeployForm(RunInput):
    """The answer to a promotion waiting for the application's deploy between its two phases."""

    deployed_by: str = Field(description="Who deployed the new release (your name)")
    release: str = Field(description="The release now serving on every instance: a tag, an image, a commit")
    comment: str = Field("", description="Anything the journal should keep about the deploy")


class Deployment(BaseModel):
    """A deploy of the new release between a target's two phases, as it was confirmed: kept in the journal."""

    target: str
    plan_hash: str
    release: str
    deployed_by: str
    comment: str = ""
    deployed_at: str
    flow_run_id: str


# Who answers a window wait when the window opens (flows/window.py); a person answers with their name.
THE_WINDOW = "the window"


class WindowForm(RunInput):
    """The answer to a step waiting for its maintenance window: the window opened, or a person runs it now."""

    opened_by: str = Field(description="Who runs it now, outside its window (your name)")
    reason: str = Field(min_length=3, description="Why it cannot wait for the window (kept in the journal)")


class WindowRun(BaseModel):
    """When a step that needs a maintenance window ran: in which window, or outside one with a person's reason."""

    target: str
    plan_hash: str
    needs: list[str] = Field(description="Why it needs a window: each migration's lock or rewrite")
    window: str = Field("", description="The window it ran in; empty: outside any, for the reason given")
    opens_at: str = ""
    started_at: str
    opened_by: str
    reason: str = ""
    flow_run_id: str

    def line(self) -> str:
        """One line for the journal and the promotion's summary."""
        if self.window:
            return f"ran in the window {self.window} (opened {self.opens_at}; {'; '.join(self.needs)})"
        return f"ran outside its windows at {self.started_at}, by {self.opened_by}: {self.reason}"


class ApprovalForm(RunInput):
    """The form the UI renders for an approval: a decision with no default forces a choice."""

    decision: Decision = Field(description="approve runs it on this environment; reject stops here")
    approver: str = Field(min_length=1, pattern=r"\S", description="Your name, as the target's approvers list has it")
    comment: str = Field(default="", description="Why; shown in the report and the audit record")


class CodedApprovalForm(ApprovalForm):
    """Where the target's approvers are enrolled: each answer carries the approver's current one-time code."""

    code: str = Field(
        min_length=6,
        max_length=8,
        pattern=r"^\d+$",
        description="Your current code from your authenticator app (enrolled with `dbpromote approver add`)",
    )


class RiskyApprovalForm(ApprovalForm):
    """A plan with risky operations: approving it acknowledges them."""

    acknowledge_risky_operations: bool = Field(
        description="I have read the risky operations listed above and accept them"
    )


class CodedRiskyApprovalForm(RiskyApprovalForm, CodedApprovalForm):
    """Both: the code, then the acknowledgement."""


APPROVAL_FORMS = {
    (False, False): ApprovalForm,
    (False, True): CodedApprovalForm,
    (True, False): RiskyApprovalForm,
    (True, True): CodedRiskyApprovalForm,
}


def approval_form(risky: bool, coded: bool = False) -> type[ApprovalForm]:
    """The approval form for a request: with the acknowledgement where the plan is risky, with the one-time code
    where the approvers are enrolled."""
    return APPROVAL_FORMS[(risky, coded)]


def approval_form_titled(title: str) -> type[ApprovalForm] | None:
    """The approval form whose JSON schema has this title (what a paused run stores), or None: not an approval."""
    return next((form for form in APPROVAL_FORMS.values() if form.__name__ == title), None)


class Answerers(BaseModel):
    """Who may answer one wait for approval, as the run asks it: kept beside the wait's form, so that an answer
    that would not count is refused at the terminal, before it is sent."""

    target: str
    allowed: list[str] = Field(default_factory=list)  # empty: anyone
    coded: bool = False  # each answer carries the approver's current one-time code
    so_far: list[str] = Field(default_factory=list)  # who approved already (a target that needs several)

    def refusal(self, approver: str, decision: str, code: str, use: bool = True) -> str:
        """Why this person's answer cannot count ('' when it can): not on the list, or (coded) not proven by a
        current one-time code, which is used up unless `use` is false (see approvers.check_code)."""
        from dbpromote.approvers import unproven

        if not approver.strip():
            return "an answer without the approver's name"
        if self.allowed and approver.strip() not in self.allowed:
            return f"{approver!r} may not approve {self.target} (approvers: {', '.join(self.allowed)})"
        return unproven(approver, decision, code, self.so_far, use) if self.coded else ""


def answerers_key(pause_key: str) -> str:
    """The flow run input beside a wait (its pause key) that says who may answer it."""
    return f"{pause_key}-answerers"


def refusal(request: ApprovalRequest, answer: RunInput) -> str:
    """Why an answer cannot count for what it answers ('' when it can): an approval of a risky request that did
    not acknowledge the risks."""
    if answer.decision == "approve" and request.risks and not getattr(answer, "acknowledge_risky_operations", False):
        return f"the approval by {answer.approver} did not acknowledge the risky operations"
    return ""
