"""Release: a new column filled by a batched backfill, so no single statement locks every row."""

from django.db import migrations, models
from django.utils.text import slugify

BATCH_SIZE = 1000


def backfill_slugs(apps, schema_editor):
    # On the database being migrated, whichever alias that is (`migrate --database`), never the default.
    projects = apps.get_model("core", "Project").objects.using(schema_editor.connection.alias)
    last_id = 0
    while True:
        batch = list(projects.filter(id__gt=last_id, slug__isnull=True).order_by("id")[:BATCH_SIZE])
        if not batch:
            return
        for project in batch:
            project.slug = slugify(f"{project.key}-{project.name}")[:80]
        projects.bulk_update(batch, ["slug"])
        last_id = batch[-1].id


class Migration(migrations.Migration):
    dependencies = [("core", "0004_task_tenant_created_idx")]

    operations = [
        migrations.AddField(model_name="project", name="slug", field=models.SlugField(max_length=80, null=True)),
        migrations.RunPython(backfill_slugs, migrations.RunPython.noop),
    ]
