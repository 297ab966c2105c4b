"""The errors dbpromote raises to its users: one class per kind, each message naming the fix. ConfigError is for
configuration, InputError for what was asked, the others for what happened at run time.

Exceptions outside this tree never reach a user: LocksBusy (dbpromote/locks.py) says "attempt again"; the probe's
(it runs in the project's own interpreter, where dbpromote may not be installed) and the backup stream's (its own
process) end their process with an answer that the worker turns into one of these; ProbeFailure is a fix
session's failed statement, which the fix turns into one of these."""

import re

# user:password@ in a URL (up to the last @ before the next space: a password with a raw @ is masked whole),
# password=... in a conninfo string.
_URL_PASSWORD = re.compile(r"(://[^:/@\s]+:)\S*@")
_CONNINFO_PASSWORD = re.compile(r"(password\s*=\s*)('[^']*'|\S+)", re.IGNORECASE)


def redact(text: str, *secrets: str) -> str:
    """`text` with every known secret and any password embedded in a database URL masked."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, "****")
    text = _URL_PASSWORD.sub(r"\1****@", text)
    return _CONNINFO_PASSWORD.sub(r"\1****", text)


class DbpromoteError(Exception):
    """Base of every error raised to users; the message is one sentence that names the fix.

    `transient` says whether trying the same step again may succeed (a network blip, not bad input).
    """

    def __init__(self, message: str, *, transient: bool = False):
        super().__init__(redact(message))
        self.transient = transient

    def with_context(self, more: str) -> "DbpromoteError":
        """The same kind of error with `more` after its message; as transient as it was, caused by it."""
        error = type(self).__new__(type(self))
        DbpromoteError.__init__(error, f"{self} {more}", transient=self.transient)
        error.__cause__ = self
        return error


def retry_if_transient(task, task_run, state) -> bool:
    """Prefect retry condition: retry our transient errors and unexpected ones, never bad input."""
    try:
        state.result()
    except Exception as error:
        return is_transient(error)
    return False


def is_transient(error: Exception) -> bool:
    """Whether trying again may succeed: our errors say so; an unexpected one may be a blip."""
    return error.transient if isinstance(error, DbpromoteError) else True


class ConfigError(DbpromoteError):
    """Bad configuration: a block, a path, a settings module, a URL, a role, an installation."""


class InputError(DbpromoteError):
    """What was asked cannot be done as asked: a command's option, a script, a run in another state than the command
    needs. Refused before anything changed."""


class PreflightError(DbpromoteError):
    """The database, project or bucket is not in a state where a promotion may start."""


class ApprovalRejected(DbpromoteError):
    """The approval was refused or timed out; production is untouched."""


class DeployNotConfirmed(DbpromoteError):
    """No one said the new release was deployed in time; the target ran its before-deploy phase only."""


class BackupError(DbpromoteError):
    """No verified backup could be made; nothing was migrated."""

    def __init__(self, message: str, *, transient: bool = True):
        super().__init__(message, transient=transient)


class MigrationError(DbpromoteError):
    """A migration did not apply; the message says what state the database is in and the way back."""


class VerificationError(DbpromoteError):
    """The database is migrated but a check afterwards failed."""


class FixError(DbpromoteError):
    """A data fix was stopped before it committed anything on the target (an undo, before it put anything back)."""


class RestoreError(BackupError):
    """A backup could not be restored (or checked, or swapped in); the target is as it was."""

    def __init__(self, message: str, *, transient: bool = False):
        super().__init__(message, transient=transient)


class StackError(DbpromoteError):
    """The local stack could not be started, inspected or stopped."""
