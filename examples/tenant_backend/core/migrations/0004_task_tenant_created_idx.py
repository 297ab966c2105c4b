"""Release: an index built concurrently, so writes to tasks keep flowing (hence not atomic)."""

from django.contrib.postgres.operations import AddIndexConcurrently
from django.db import migrations, models


class Migration(migrations.Migration):
    atomic = False
    dependencies = [("core", "0003_task_priority")]

    operations = [
        AddIndexConcurrently(
            model_name="task",
            index=models.Index(fields=["tenant", "created_at"], name="task_tenant_created_idx"),
        ),
    ]
