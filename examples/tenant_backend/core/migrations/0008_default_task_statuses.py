"""Release: data migration giving every tenant the default task statuses."""

from django.db import migrations

DEFAULT_STATUSES = [("To do", 0), ("In progress", 1), ("Done", 2)]


def create_default_statuses(apps, schema_editor):
    # On the database being migrated, whichever alias that is (`migrate --database`), never the default.
    alias = schema_editor.connection.alias
    statuses = apps.get_model("core", "TaskStatus").objects.using(alias)
    for tenant in apps.get_model("core", "Tenant").objects.using(alias).iterator():
        for name, position in DEFAULT_STATUSES:
            statuses.get_or_create(tenant=tenant, name=name, defaults={"position": position, "is_default": True})


def remove_unused_default_statuses(apps, schema_editor):
    statuses = apps.get_model("core", "TaskStatus").objects.using(schema_editor.connection.alias)
    statuses.filter(is_default=True, task__isnull=True).delete()


class Migration(migrations.Migration):
    dependencies = [("core", "0007_remove_invoice_legacy_reference")]

    operations = [
        migrations.RunPython(create_default_statuses, remove_unused_default_statuses),
    ]
