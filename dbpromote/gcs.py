"""The Google Cloud Storage client, pointed at the emulator when STORAGE_EMULATOR_HOST is set."""

import base64
import os

import google_crc32c
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


class ChecksummingWriter:
    """Passes bytes on to `inner` while computing their CRC32C (the checksum GCS stores) and size."""

    def __init__(self, inner):
        self.inner, self.crc, self.size = inner, google_crc32c.Checksum(), 0

    def write(self, data: bytes) -> int:
        self.crc.update(data)
        self.size += len(data)
        self.inner.write(data)
        return len(data)

    @property
    def crc32c(self) -> str:
        """Base64, as GCS reports it."""
        return base64.b64encode(self.crc.digest()).decode()
