"""Release: a column drop (its data is gone unless restored from the backup)."""

from django.db import migrations


class Migration(migrations.Migration):
    dependencies = [("core", "0006_rename_milestone_due")]

    operations = [
        migrations.RemoveField(model_name="invoice", name="legacy_reference"),
    ]
