"""Release: a NOT NULL column with a default on a large table."""

from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [("core", "0002_featureflag")]

    operations = [
        migrations.AddField(model_name="task", name="priority", field=models.IntegerField(default=0)),
    ]
