"""The one place the jobs app meets ``compression.recipe``: parse, check against the model and
the data set, and turn errors into :class:`JobInputError` naming the field."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, cast

from compression.errors import CompressionError, ConfigError
from compression.model_facts import ModelFacts
from compression.recipe import (
    Recipe,
    check_recipe_for_model,
    parse_recipe,
    recipe_to_dict,
    recipe_to_yaml,
)
from compression.registry import TaskType
from webapp.catalog.models import Dataset, ModelVersion
from webapp.jobs.errors import JobInputError


@dataclass(frozen=True)
class RecipeCheck:
    recipe: Recipe
    data: dict[str, Any]  # canonical: every default filled in
    yaml: str

    @property
    def name(self) -> str:
        return self.recipe.name if self.recipe.name != "recipe" else ""


def recipe_parse(recipe: dict[str, Any] | str) -> Recipe:
    """Parse against the registry; errors name the field as ``recipe.<path>``."""
    try:
        return parse_recipe(recipe)
    except ConfigError as exc:
        field = exc.field if exc.field.startswith("recipe") else f"recipe.{exc.field}"
        raise JobInputError(exc.message, field=field) from None
    except CompressionError as exc:
        raise JobInputError(str(exc), field="recipe") from None


def model_facts_for_version(model_version: ModelVersion) -> ModelFacts:
    """What the catalog knows about a version without running it: its stored inspection, or,
    for a zoo architecture not inspected yet, the architecture itself."""
    return ModelFacts.from_info(
        model_version.info,
        format="onnx" if model_version.format == "onnx" else "torch",
        task=cast(TaskType, model_version.task),  # an unknown task is refused by the scope check
        arch=model_version.arch or None,
        input_shape=model_version.input_shape,
        num_classes=model_version.num_classes,
    )


def recipe_check(
    recipe: dict[str, Any] | str, *, model_version: ModelVersion, dataset: Dataset | None
) -> RecipeCheck:
    """Parse ``recipe`` and check every stage fits the model and the data set.

    The model and the data set must be of one task (a detector on a classification data set
    is refused naming both). The model check is the format and task of each stage and each
    method's ``check_model`` hook (BN-scale pruning on a model without BatchNorm is refused
    here, not mid-job).
    """
    from webapp.jobs.wizard_checks import task_mismatch

    parsed = recipe_parse(recipe)
    mismatch = task_mismatch(model_version, dataset) if dataset is not None else ""
    if mismatch:
        raise JobInputError(mismatch, field="dataset")
    try:
        check_recipe_for_model(parsed, model_facts_for_version(model_version))
    except ConfigError as exc:
        raise JobInputError(exc.message, field=f"recipe.{exc.field}") from None
    except CompressionError as exc:
        message = str(exc)
        field = "recipe.stages"
        if message.startswith("stages[") and "]" in message:
            field = "recipe." + message.split(" ", 1)[0].rstrip(":")
        raise JobInputError(message, field=field) from None
    if (
        dataset is not None
        and model_version.num_classes
        and dataset.num_classes
        and model_version.num_classes != dataset.num_classes
    ):
        raise JobInputError(
            f"the model predicts {model_version.num_classes} classes but the dataset "
            f"{dataset.name!r} has {dataset.num_classes}",
            field="dataset",
        )
    return RecipeCheck(recipe=parsed, data=recipe_to_dict(parsed), yaml=recipe_to_yaml(parsed))
