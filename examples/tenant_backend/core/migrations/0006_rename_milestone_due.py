"""Release: a field rename (old application code reading `due` breaks once this runs)."""

from django.db import migrations


class Migration(migrations.Migration):
    dependencies = [("core", "0005_project_slug")]

    operations = [
        migrations.RenameField(model_name="milestone", old_name="due", new_name="due_on"),
    ]
