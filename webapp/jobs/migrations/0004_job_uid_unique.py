"""Job.uid, step 3 of 3: required, unique, a new UUID for every new job."""

import uuid

from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [("jobs", "0003_job_uid_fill")]

    operations = [
        migrations.AlterField(
            model_name="job",
            name="uid",
            field=models.UUIDField(default=uuid.uuid4, editable=False, unique=True),
        ),
    ]
