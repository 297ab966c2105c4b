"""A team's service account kept in a prefect-gcp GcpCredentials block, named on a target: the storage client of
every backup, record and restore of that target is built from it (application default credentials otherwise)."""

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from tests.harness import cli

EMAIL = "dbpromote-backups@acme-prod.iam.gserviceaccount.com"


def service_account() -> dict:
    """A service account key as the Google Cloud console hands it out (a fresh RSA key; no token is ever asked for:
    this machine cannot reach Google's token endpoint)."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    return {
        "type": "service_account",
        "project_id": "acme-prod",
        "private_key_id": "0123456789abcdef",
        "private_key": pem,
        "client_email": EMAIL,
        "client_id": "100000000000000000001",
        "token_uri": "https://oauth2.googleapis.com/token",
    }


def test_a_target_s_gcp_credentials_block_is_what_its_storage_client_is_built_from(stack, monkeypatch):
    from prefect_gcp import GcpCredentials

    from dbpromote.config import load_target
    from dbpromote.gcs import gcs_client

    account = service_account()
    GcpCredentials(service_account_info=account, project="acme-prod").save("acme-backups", overwrite=True)
    url = stack.database_url("staging")

    added = cli("target", "add", "gcp-staging", "--url", url, "--gcp-credentials", "acme-backups", "--no-check")
    assert added.returncode == 0, added.stderr
    unknown = cli("target", "add", "gcp-wrong", "--url", url, "--gcp-credentials", "nope", "--no-check")
    assert unknown.returncode == 1
    assert unknown.stderr.startswith("error: There is no GcpCredentials block 'nope'; create it in the UI")
    assert account["private_key"] not in added.stdout + added.stderr + unknown.stderr

    monkeypatch.delenv("STORAGE_EMULATOR_HOST")  # as on a worker that talks to real GCS
    client = gcs_client(load_target("gcp-staging").gcp_credentials)
    assert client.project == "acme-prod"
    assert client._credentials.service_account_email == EMAIL
    default = load_target("staging").gcp_credentials
    assert default == ""  # the stack's own targets keep application default credentials
