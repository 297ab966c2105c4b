"""The Google Cloud Storage client: the emulator's when STORAGE_EMULATOR_HOST is set, else built from a target's
prefect-gcp GcpCredentials block when it names one, else from application default credentials."""

import base64
import os

import google_crc32c
from google.api_core.retry import Retry
from google.auth.credentials import AnonymousCredentials
from google.cloud import storage
from google.cloud.storage.retry import DEFAULT_RETRY

# google-cloud-storage 3.x fetches each bucket's metadata in a thread of its own the first time a new client uses
# it, for OpenTelemetry span attributes, whether tracing is on or not: one more request (storage.buckets.get, which
# the objectCreator and objectViewer roles do not grant) for each of the clients a step makes, 7.6 a fleet member
# (measured). dbpromote does not trace; a team that does sets the variable itself.
os.environ.setdefault("DISABLE_GCS_PYTHON_CLIENT_OTEL_BUCKET_METADATA", "true")


def gcs_client(credentials_block: str = "") -> storage.Client:
    """The client; `credentials_block` names a GcpCredentials block (the target's `gcp_credentials`)."""
    if os.environ.get("STORAGE_EMULATOR_HOST"):
        return storage.Client(
            project=os.environ.get("GOOGLE_CLOUD_PROJECT", "dbpromote-local"), credentials=AnonymousCredentials()
        )
    if credentials_block:
        return credentials(credentials_block).get_cloud_storage_client()
    return storage.Client()


def credentials(block: str):
    """A team's service account as prefect-gcp keeps it (a GcpCredentials block), or a ConfigError naming the fix.
    The upload itself still streams through google-cloud-storage (prefect-gcp has no streaming writer)."""
    from dbpromote.errors import ConfigError

    try:
        from prefect_gcp import GcpCredentials
    except ImportError:
        raise ConfigError(
            f"The target names the GcpCredentials block {block!r}, and prefect-gcp is not installed; install it "
            "with `pip install 'dbpromote[gcp]'` where the flows run, or drop the block from the target."
        ) from None
    try:
        return GcpCredentials.load(block)
    except ValueError:
        raise ConfigError(
            f"There is no GcpCredentials block {block!r}; create it in the UI (Blocks, GCP Credentials) with the "
            "service account that writes the backups, or name another with `dbpromote target add ... "
            "--gcp-credentials BLOCK`."
        ) from None


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
