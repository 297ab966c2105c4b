"""Approvers who prove who they are: each enrolled person has an RFC 6238 one-time-password secret (pyotp) in a
Prefect Secret block, and an approval carries a current code of theirs, checked inside the flow.

Prefect's open-source server has one shared credential at most, so a name typed into a form proves nothing; a code
from the person's authenticator app does. A code is accepted once: the last time step each person used is kept
in a Prefect variable, so a code seen on a screen or in a run's input cannot be replayed (RFC 6238 section 5.2).
"""

from __future__ import annotations

import hmac
import re
import time

import pyotp

from dbpromote.errors import ConfigError

NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,47}")
ISSUER = "dbpromote"
# Codes of the previous and next 30 s step are accepted too: clocks drift and people type slowly.
VALID_STEPS = (0, -1, 1)


def check_approver_name(name: str) -> str:
    """An enrolled approver's name: it names their Secret block, so lowercase letters, digits, - and _."""
    if not NAME.fullmatch(name):
        raise ConfigError(
            f"Approver name {name!r} is not allowed: use 1-48 lowercase letters, digits, '-' or '_', starting with a "
            "letter or digit (e.g. alice or ops-bob)."
        )
    return name


def _secret_block(name: str) -> str:
    return f"dbpromote-approver-{name}"


def _last_step_variable(name: str) -> str:
    return f"dbpromote_approver_{name.replace('-', '_')}_last_step"


def enroll(name: str, replace: bool = False) -> str:
    """A new secret for the person, stored as a Secret block; the provisioning URI their app scans (shown once)."""
    from prefect.blocks.system import Secret
    from prefect.variables import Variable

    check_approver_name(name)
    if is_enrolled(name) and not replace:
        raise ConfigError(
            f"{name} is already enrolled; `dbpromote approver add {name} --replace` issues a new secret (the codes "
            "of the old one stop working)."
        )
    secret = pyotp.random_base32()
    Secret(value=secret).save(_secret_block(name), overwrite=True)
    Variable.set(_last_step_variable(name), -1, overwrite=True)  # the new secret's codes are all unused
    return pyotp.TOTP(secret).provisioning_uri(name=name, issuer_name=ISSUER)


def is_enrolled(name: str) -> bool:
    from prefect.blocks.system import Secret

    if not NAME.fullmatch(name):
        return False
    try:
        Secret.load(_secret_block(name))
    except ValueError:
        return False
    return True


def check_code(name: str, code: str, use: bool = True) -> str:
    """Why the code does not prove that the person approves now ('' when it does); a good code is used up (unless
    `use` is false: the CLI's check before it sends the answer, which the run then checks and uses up)."""
    from prefect.blocks.system import Secret
    from prefect.variables import Variable

    if not code.strip():
        return f"no code given for {name}, who is enrolled: give the current 6-digit code from the authenticator app"
    totp = pyotp.TOTP(Secret.load(_secret_block(name)).get())
    now = time.time()
    steps = [int(now // totp.interval) + offset for offset in VALID_STEPS]
    matching = [step for step in steps if hmac.compare_digest(totp.at(step * totp.interval), code.strip())]
    if not matching:
        return f"the code given for {name} is not their current one"
    last = Variable.get(_last_step_variable(name), default=-1)
    if matching[0] <= int(last):
        return f"the code given for {name} was already used; wait for the next one"
    if use:
        Variable.set(_last_step_variable(name), matching[0], overwrite=True)
    return ""


def unproven(name: str, decision: str, code: str, so_far: list[str], use: bool = True) -> str:
    """Why an answer does not prove an enrolled person's decision ('' when it does); a good code is used up (see
    check_code)."""
    name = name.strip()
    if not is_enrolled(name):
        return f"{name!r} is not an enrolled approver (`dbpromote approver add {name}`)"
    if decision == "approve" and name in so_far:
        return f"{name} has already approved; another approver must approve too"
    return check_code(name, code, use)
