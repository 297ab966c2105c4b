"""Settings of the sample multi-tenant SaaS backend that dbpromote promotes."""

import os

from psycopg.conninfo import conninfo_to_dict

BASE_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY", "sample-project-not-a-secret")
DEBUG = False
ALLOWED_HOSTS: list[str] = []
INSTALLED_APPS = ["core"]
USE_TZ = True
TIME_ZONE = "UTC"
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"


def _database_from_url(url: str) -> dict:
    """DATABASES entry from a libpq URL (the sample's only configuration input)."""
    params = conninfo_to_dict(url)
    return {
        "ENGINE": "django.db.backends.postgresql",
        "NAME": params.get("dbname", ""),
        "USER": params.get("user", ""),
        "PASSWORD": params.get("password", ""),
        "HOST": params.get("host", ""),
        "PORT": params.get("port", ""),
    }


DATABASES = {"default": _database_from_url(os.environ.get("DATABASE_URL", "postgresql:///tenant_backend"))}
