"""App config of the sample project's single app."""

from django.apps import AppConfig


class CoreConfig(AppConfig):
    name = "core"
