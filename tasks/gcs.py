"""The Google Cloud Storage client, pointed at the emulator when STORAGE_EMULATOR_HOST is set."""

import os

from google.api_core.retry import Retry
from google.auth.credentials import AnonymousCredentials
from google.cloud import storage
from google.cloud.storage.retry import DEFAULT_RETRY


def gcs_client() -> storage.Client:
    if os.environ.get("STORAGE_EMULATOR_HOST"):
        return storage.Client(
            project=os.environ.get("GOOGLE_CLOUD_PROJECT", "dbpromote-local"), credentials=AnonymousCredentials()
        )
    return storage.Client()


def gcs_retry() -> Retry:
    """Retry transient GCS errors (408, 429, 5xx, resets) for a bounded time (DBPROMOTE_GCS_RETRY_TIMEOUT_S)."""
    return DEFAULT_RETRY.with_timeout(float(os.environ.get("DBPROMOTE_GCS_RETRY_TIMEOUT_S", "120")))
