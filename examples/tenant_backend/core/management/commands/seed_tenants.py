"""Seed N tenants with rows in every tenant-scoped table, at whatever migration state the database is in."""

import itertools
import secrets
import uuid

from django.core.management.base import BaseCommand
from django.db import connection, models, transaction
from django.db.migrations.executor import MigrationExecutor

TEXT = "Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod tempor. "


class Command(BaseCommand):
    help = "Create tenants with rows in every tenant-scoped table (historical models: works on v1 and on the head)."

    def add_arguments(self, parser):
        parser.add_argument("--tenants", type=int, default=3)
        parser.add_argument("--rows", type=int, default=20, help="rows per tenant in each tenant-scoped table")
        parser.add_argument(
            "--text-bytes", type=int, default=200, help="size of long text columns; raise it to seed gigabytes"
        )

    def handle(self, *args, tenants: int, rows: int, text_bytes: int, **options):
        # The models of the code may be ahead of the database: seed through the models of its applied state.
        executor = MigrationExecutor(connection)
        applied = [key for key in executor.loader.applied_migrations if key[0] == "core"]
        state = executor.loader.project_state(max(applied, key=lambda key: key[1]))
        apps = state.apps
        tenant_model = apps.get_model("core", "Tenant")
        scoped = [m for m in apps.get_models() if m._meta.app_label == "core" and m is not tenant_model]
        body = (TEXT * (text_bytes // len(TEXT) + 1))[:text_bytes]
        start = tenant_model.objects.count()
        for number in range(start, start + tenants):
            with transaction.atomic():
                tenant = tenant_model.objects.create(id=uuid.uuid4(), name=f"Tenant {number}", slug=f"tenant-{number}")
                created: dict[type, list] = {}
                for model in _dependency_order(scoped):
                    objs = [self._row(model, tenant, i, created, body) for i in range(rows)]
                    created[model] = model.objects.bulk_create(objs, batch_size=2000)
        self.stdout.write(f"seeded {tenants} tenants x {len(scoped)} tables x {rows} rows")

    def _row(self, model, tenant, i: int, created: dict, body: str):
        values = {"tenant": tenant}
        for field in model._meta.concrete_fields:
            if field.primary_key or field.name == "tenant" or getattr(field, "auto_now_add", False):
                continue
            if field.is_relation:
                values[field.name] = created[field.related_model][i % len(created[field.related_model])]
            elif isinstance(field, models.TextField):
                # Half random: real text does not compress 50:1 like repeated lorem ipsum, and benchmarks care.
                noise = secrets.token_hex(len(body) // 4)
                values[field.name] = f"{model.__name__} {i}: {noise} {body[: len(body) // 2]}"
            elif isinstance(field, models.EmailField):
                values[field.name] = f"user{i}@{tenant.slug}.example.com"
            elif isinstance(field, models.URLField):
                values[field.name] = f"https://{tenant.slug}.example.com/{model.__name__.lower()}/{i}"
            elif isinstance(field, models.CharField):
                values[field.name] = f"{field.name[:4]}-{i}"[: field.max_length]
            elif isinstance(field, models.BooleanField):
                values[field.name] = i % 2 == 0
            elif isinstance(field, (models.IntegerField, models.BigIntegerField)):
                values[field.name] = i
            elif isinstance(field, models.JSONField):
                values[field.name] = {"seed": i}
            elif field.null:
                values[field.name] = None
        return model(**values)


def _dependency_order(scoped: list) -> list:
    """Models ordered so that every foreign key points at a model seeded before it."""
    ordered: list = []
    pending = list(scoped)
    for _ in itertools.count():
        ready = [
            m
            for m in pending
            if all(
                f.related_model in ordered or f.related_model not in scoped or f.related_model is m
                for f in m._meta.concrete_fields
                if f.is_relation
            )
        ]
        if not ready:
            break
        ordered += ready
        pending = [m for m in pending if m not in ready]
    if pending:
        raise RuntimeError(f"foreign keys form a cycle between {[m.__name__ for m in pending]}")
    return ordered
