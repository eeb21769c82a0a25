"""Artifacts record what their evaluation set holds; stored accuracy becomes percent."""

from typing import Any

from django.db import migrations, models


def accuracy_to_percent(apps: Any, schema_editor: Any) -> None:
    """Older agents reported ``top1`` as a fraction: store ``top1_pct`` (0-100) instead."""
    result_model = apps.get_model("device_registry", "DeploymentResult")
    for row in result_model.objects.filter(kind="accuracy"):
        data = dict(row.payload or {})
        if "top1_pct" in data:
            continue
        correct, samples = data.get("correct"), data.get("samples")
        if isinstance(correct, int) and isinstance(samples, int) and samples > 0:
            data["top1_pct"] = 100.0 * correct / samples
        elif isinstance(data.get("top1"), int | float):
            data["top1_pct"] = 100.0 * float(data["top1"])
        else:
            continue
        data.pop("top1", None)
        row.payload = data
        row.save(update_fields=["payload"])


class Migration(migrations.Migration):
    dependencies = [("device_registry", "0001_initial")]

    operations = [
        migrations.AddField(
            model_name="deployableartifact",
            name="eval_meta",
            field=models.JSONField(
                blank=True,
                default=dict,
                help_text="What the evaluation set holds: dataset_id, dataset, split, split_seed, "
                "count, test_size, cap, preprocessing (see device_registry.eval_sets); empty for "
                "an upload's.",
            ),
        ),
        migrations.RunPython(accuracy_to_percent, migrations.RunPython.noop),
    ]
