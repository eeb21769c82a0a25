"""Job.uid, step 1 of 3: the column, nullable while existing rows get their values."""

from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [("jobs", "0001_initial")]

    operations = [
        migrations.AddField(
            model_name="job",
            name="uid",
            field=models.UUIDField(null=True, editable=False),
        ),
    ]
