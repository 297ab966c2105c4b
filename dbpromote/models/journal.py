"""A promotion's journal: what each of its runs recorded per target (the plan started, the approval given, the step
completed), so a run that carries on a crashed one does nothing twice and asks nothing twice."""

from __future__ import annotations

from pydantic import BaseModel, Field

from dbpromote.models.approval import Approval, Deployment, WindowRun
from dbpromote.models.plan import Plan
from dbpromote.models.report import StepReport

# Tag of every run of one promotion: the first run's id. A run that carries on a crashed one takes its tag.
TAG_PREFIX = "promotion:"


class TargetJournal(BaseModel):
    """One target's steps in a promotion, as recorded before and after each."""

    started: Plan | None = Field(None, description="The whole plan, recorded before anything of it ran")
    approval: Approval | None = None
    deployed: Deployment | None = Field(None, description="The app deploy between its two phases, as confirmed")
    window: WindowRun | None = Field(None, description="The maintenance window its step ran in, or the reason not")
    completed: StepReport | None = Field(None, description="Its last step (a phase of it, or all of it) completed")


class Journal(BaseModel):
    """The records of one promotion (every run tagged with its id), per target."""

    promotion: str = Field(description="The id of the promotion's first run")
    carries_on: str = Field("", description="The crashed run this one carries on; empty for a new promotion")
    targets: dict[str, TargetJournal] = Field(default_factory=dict)

    def keep(self, target: str, step: Deployment | WindowRun) -> None:
        """A deploy or a window this run recorded, in its own copy of the journal too (its promotion record)."""
        entry = self.targets.setdefault(target, TargetJournal())
        if isinstance(step, Deployment):
            entry.deployed = step
        else:
            entry.window = step

    def continue_plans(self, plans: dict[str, Plan]) -> dict[str, Plan]:
        """Each target's plan to vouch for and approve: the recorded whole plan where the target is part-way
        through it (or done), so staging's recorded step still vouches for the targets after it."""
        return {target: self._started_plan(target, plan) or plan for target, plan in plans.items()}

    def _started_plan(self, target: str, now: Plan) -> Plan | None:
        started = self.targets.get(target, TargetJournal()).started
        return started if started is not None and now.is_rest_of(started) else None

    def completed(self, target: str, now: Plan) -> StepReport | None:
        """The recorded report of the target's step when it completed and nothing of its plan is pending now."""
        done = self.targets.get(target, TargetJournal()).completed
        return done if done is not None and not now.migrations and self._started_plan(target, now) else None

    def deployed(self, target: str, plan: Plan) -> Deployment | None:
        """The deploy a run of this promotion recorded between the two phases of exactly this plan."""
        given = self.targets.get(target, TargetJournal()).deployed
        return given if given is not None and given.plan_hash == plan.hash else None

    def approval(self, target: str, plan: Plan) -> Approval | None:
        """The approval a run of this promotion recorded for exactly this plan on this target."""
        given = self.targets.get(target, TargetJournal()).approval
        return given if given is not None and given.subject == plan.hash else None


class CheckedTargets(BaseModel):
    """What a promotion's checks before its approval found for each target: its plan (each distinct one kept once,
    its target left out: a group's members share theirs) and its drift line (none for a divergent member)."""

    plans: list[dict] = Field(default_factory=list)
    targets: dict[str, int] = Field(default_factory=dict, description="Each target's plan, by its index in plans")
    drift: dict[str, str] = Field(default_factory=dict)
    found: bool = Field(False, exclude=True, description="Read back from where the run kept it")

    @classmethod
    def of(cls, plans: dict[str, Plan], drift: dict[str, str]) -> CheckedTargets:
        checked = cls(drift=drift)
        for target, plan in plans.items():
            shared = plan.model_dump(mode="json", exclude={"target"})
            if shared not in checked.plans:
                checked.plans.append(shared)
            checked.targets[target] = checked.plans.index(shared)
        return checked

    def plan(self, target: str) -> Plan:
        return Plan(target=target, **self.plans[self.targets[target]])
