"""Errors users see: secrets masked, context added without losing what kind of failure it was."""

from dbpromote.errors import BackupError, MigrationError, PreflightError, RestoreError, redact


def test_passwords_in_urls_and_conninfo_strings_and_known_secrets_are_masked():
    assert redact("postgresql://app:s3cr%40t@db:5432/x failed") == "postgresql://app:****@db:5432/x failed"
    assert redact("host=db password='a b' user=x") == "host=db password=**** user=x"
    assert redact("token abc123 leaked", "abc123") == "token **** leaked"


def test_an_error_message_never_carries_a_url_password():
    assert "hunter2" not in str(PreflightError("cannot reach postgresql://u:hunter2@h/db"))


def test_context_keeps_the_kind_the_transient_flag_and_the_cause():
    original = BackupError("upload failed;")  # backups are transient by default
    original.__cause__ = OSError("reset")
    wrapped = original.with_context("staging is at the state after core.0002.")
    assert type(wrapped) is BackupError and wrapped.transient
    assert str(wrapped) == "upload failed; staging is at the state after core.0002."
    assert wrapped.__cause__ is original and original.__cause__.args == ("reset",)
    assert not MigrationError("failed").with_context("more").transient


def test_a_restore_failure_is_its_own_kind_of_backup_error_and_not_retried():
    error = RestoreError("the restore does not hold the rows")
    assert isinstance(error, BackupError) and not error.transient
