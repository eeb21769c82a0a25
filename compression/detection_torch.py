"""Detection samples as torch tensors: the dataset and collate step torchvision's detection
models train on. Kept apart from :mod:`compression.detection_data`, which reads and checks the
sets without torch (the upload inspector validates detection zips in a fresh process)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch.utils.data import Dataset

from compression.detection_data import DetectionSample


class DetectionDataset(Dataset[tuple[torch.Tensor, dict[str, torch.Tensor]]]):
    """Samples as torchvision's detection models take them: ``(float CHW in [0, 1], target)``
    with ``target = {"boxes": (N, 4) float32 xyxy, "labels": (N,) int64}``."""

    def __init__(self, samples: Sequence[DetectionSample]) -> None:
        self.samples = list(samples)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        s = self.samples[index]
        image = torch.from_numpy(s.image).permute(2, 0, 1).to(torch.float32) / 255.0
        target = {"boxes": torch.from_numpy(s.boxes.copy()), "labels": torch.from_numpy(s.labels)}
        return image, target


def collate_detection(
    batch: Sequence[tuple[torch.Tensor, dict[str, torch.Tensor]]],
) -> tuple[list[torch.Tensor], list[dict[str, torch.Tensor]]]:
    """The collate step for :class:`DetectionDataset`: lists, since box counts differ."""
    return [b[0] for b in batch], [b[1] for b in batch]
