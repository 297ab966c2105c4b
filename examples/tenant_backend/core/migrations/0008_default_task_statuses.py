"""Release: data migration giving every tenant the default task statuses."""

from django.db import migrations

DEFAULT_STATUSES = [("To do", 0), ("In progress", 1), ("Done", 2)]


def create_default_statuses(apps, schema_editor):
    Tenant = apps.get_model("core", "Tenant")
    TaskStatus = apps.get_model("core", "TaskStatus")
    for tenant in Tenant.objects.all().iterator():
        for name, position in DEFAULT_STATUSES:
            TaskStatus.objects.get_or_create(
                tenant=tenant, name=name, defaults={"position": position, "is_default": True}
            )


def remove_unused_default_statuses(apps, schema_editor):
    TaskStatus = apps.get_model("core", "TaskStatus")
    TaskStatus.objects.filter(is_default=True, task__isnull=True).delete()


class Migration(migrations.Migration):
    dependencies = [("core", "0007_remove_invoice_legacy_reference")]

    operations = [
        migrations.RunPython(create_default_statuses, remove_unused_default_statuses),
    ]
