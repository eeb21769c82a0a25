"""Job.uid, step 2 of 3: a fresh UUID for every existing job."""

import uuid

from django.db import migrations


def fill(apps, schema_editor):
    Job = apps.get_model("jobs", "Job")
    for pk in Job.objects.filter(uid__isnull=True).values_list("pk", flat=True).iterator():
        Job.objects.filter(pk=pk).update(uid=uuid.uuid4())


class Migration(migrations.Migration):
    dependencies = [("jobs", "0002_job_uid")]

    operations = [migrations.RunPython(fill, migrations.RunPython.noop)]
