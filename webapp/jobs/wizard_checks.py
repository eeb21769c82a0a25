"""The checks the wizard can run at step 1, from the two rows alone: does this data set fit this
model (classes, channels, task), and can any method work on the model's format and task.

Each problem names the form field it belongs beside, so the refusal appears there and not at
launch. The recipe itself is checked later, by :func:`webapp.jobs.recipes.recipe_check`.
"""

from __future__ import annotations

from dataclasses import dataclass

from compression.registry import list_methods
from webapp.catalog.models import Dataset, DatasetKind, ModelVersion

# Built-in data sets hold 1-channel images; image zips are converted to the model's channels.
ONE_CHANNEL_KINDS = frozenset({DatasetKind.DIGITS, DatasetKind.MNIST})
# A data set's task when its row does not say (rows from before detection data sets).
DATASET_TASK = "classification"


@dataclass(frozen=True)
class PickProblem:
    field: str  # "model_version" or "dataset"
    message: str


def dataset_num_classes(dataset: Dataset) -> int | None:
    """The data set's class count: the row's, or its report's class list."""
    if dataset.num_classes:
        return int(dataset.num_classes)
    classes = (dataset.report or {}).get("classes")
    return len(classes) if isinstance(classes, list) and classes else None


def task_mismatch(model_version: ModelVersion, dataset: Dataset) -> str:
    """Why a model of one task cannot run on a data set of the other, naming both (empty: the
    tasks agree). The wizard shows it at step 1; ``recipe_check`` (the API, the CLI, launch
    from a file, duplicates) refuses with it before anything is queued."""
    task = model_version.task or "classification"
    dataset_task = dataset.task or DATASET_TASK
    if task == dataset_task:
        return ""
    what = "labelled image folders" if dataset_task == DATASET_TASK else "images with boxes"
    return (
        f"the model is a {task} model but {dataset.name!r} is a {dataset_task} data set "
        f"({what}); pick a model and a data set of the same task"
    )


def pick_problems(model_version: ModelVersion, dataset: Dataset) -> list[PickProblem]:
    """Why this model cannot be compressed on this data set, field by field (empty: it can)."""
    problems: list[PickProblem] = []
    fmt = "onnx" if model_version.format == "onnx" else "torch"
    task = model_version.task or "classification"
    if not any(fmt in m.scope.inputs and task in m.scope.tasks for m in list_methods()):
        problems.append(
            PickProblem(
                "model_version",
                f"no compression method accepts {'an ONNX' if fmt == 'onnx' else 'a torch'} "
                f"{task} model yet; pick another version",
            )
        )
    mismatch = task_mismatch(model_version, dataset)
    if mismatch:
        problems.append(PickProblem("dataset", mismatch))
        return problems
    classes = dataset_num_classes(dataset)
    if model_version.num_classes and classes and model_version.num_classes != classes:
        problems.append(
            PickProblem(
                "dataset",
                f"the model predicts {model_version.num_classes} classes but the dataset "
                f"{dataset.name!r} has {classes}; pick a dataset with {model_version.num_classes} "
                "classes or a model trained for these",
            )
        )
    channels = model_version.in_channels
    if dataset.kind in ONE_CHANNEL_KINDS and channels and channels != 1:
        problems.append(
            PickProblem(
                "dataset",
                f"{dataset.name!r} holds 1-channel (grayscale) images but the model expects "
                f"{channels} channels; pick an image dataset of your own, or a 1-channel model",
            )
        )
    return problems
