"""A site on django-constance, its database from separate variables (POSTGRES_HOST, POSTGRES_DB, ...).

The upgrade moves its live settings into the database: constance 3 made the database backend part of the app,
with migrations of its own (one of them non-atomic, copying the values of the old backend's table).
"""

import os
from importlib.metadata import version

SECRET_KEY = os.environ["DJANGO_SECRET_KEY"]
DEBUG = False
ALLOWED_HOSTS = ["*"]
DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.postgresql",
        "HOST": os.environ["POSTGRES_HOST"],
        "PORT": os.environ.get("POSTGRES_PORT", "5432"),
        "NAME": os.environ["POSTGRES_DB"],
        "USER": os.environ["POSTGRES_USER"],
        "PASSWORD": os.environ["POSTGRES_PASSWORD"],
    }
}
INSTALLED_APPS = [
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "constance",
]
CONSTANCE_MAJOR = int(version("django-constance").split(".")[0])
CONSTANCE_BACKEND = (
    "constance.backends.database.DatabaseBackend" if CONSTANCE_MAJOR >= 3 else "constance.backends.memory.MemoryBackend"
)
CONSTANCE_CONFIG = {"MAINTENANCE": (False, "Show the maintenance page")}
ROOT_URLCONF = "urls"
DEFAULT_AUTO_FIELD = "django.db.models.AutoField"
USE_TZ = True
