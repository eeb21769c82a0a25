"""The preprocessing a model expects, recorded once and carried everywhere the model goes.

A model's accuracy means nothing without the exact pixels it was fed: input size, channel
count, how images were resized, the 0-1 scaling and the per-channel mean and std, and the
order of the class names. This record travels with every model version, in ``report.json``
and in the exported ONNX file's ``metadata_props`` (key :data:`ONNX_METADATA_KEY`), so a
device, a reader or a third-party runtime can feed the model exactly what it was measured on.

This module is torch-free: the edge agent may read the record too (ONNX Runtime exposes
``metadata_props`` as ``session.get_modelmeta().custom_metadata_map``).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

ONNX_METADATA_KEY = "edgeslim.preprocessing"
RECORD_VERSION = 1
RESIZE_MODES = ("bilinear", "nearest", "bicubic")

# Named statistics an upload may declare instead of the data set's own.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
NORMALIZATION_PRESETS = ("dataset", "imagenet", "unit")


class PreprocessingError(ValueError):
    """A preprocessing record is malformed or does not fit the model or the data."""


@dataclass(frozen=True)
class Preprocessing:
    """How raw images become the model's input tensor.

    ``x = (resize(image, input_size, resize) / 255 - mean) / std`` per channel, in CHW order,
    float32; ``channels`` is 1 (grayscale, "L") or 3 (RGB). ``class_names[i]`` names logit ``i``.
    ``normalization`` says where mean/std came from: ``dataset`` (the training split's own
    statistics), ``imagenet`` or ``unit`` (plain 0-1 scaling: mean 0, std 1), both declared.
    """

    input_size: tuple[int, int]  # H, W
    channels: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    class_names: tuple[str, ...]
    resize: str = "bilinear"
    normalization: str = "dataset"
    version: int = RECORD_VERSION

    def __post_init__(self) -> None:
        h, w = self.input_size
        if h < 1 or w < 1:
            raise PreprocessingError(f"input_size must be positive, got {self.input_size}")
        if self.channels not in (1, 3):
            raise PreprocessingError(f"channels must be 1 or 3, got {self.channels}")
        for name, values in (("mean", self.mean), ("std", self.std)):
            if len(values) != self.channels:
                raise PreprocessingError(
                    f"{name} has {len(values)} values but the images have {self.channels} "
                    "channel(s)"
                )
            if not all(math.isfinite(v) for v in values):
                raise PreprocessingError(f"{name} must be finite numbers")
        if any(v <= 0 for v in self.std):
            raise PreprocessingError("std values must be positive")
        if self.resize not in RESIZE_MODES:
            raise PreprocessingError(
                f"resize must be one of {', '.join(RESIZE_MODES)}, got {self.resize!r}"
            )
        if self.normalization not in NORMALIZATION_PRESETS:
            raise PreprocessingError(
                f"normalization must be one of {', '.join(NORMALIZATION_PRESETS)}, "
                f"got {self.normalization!r}"
            )

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """(C, H, W)."""
        return (self.channels, self.input_size[0], self.input_size[1])

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "input_size": [int(self.input_size[0]), int(self.input_size[1])],
            "channels": int(self.channels),
            "color": "L" if self.channels == 1 else "RGB",
            "layout": "NCHW",
            "dtype": "float32",
            "resize": self.resize,
            "scale": 1.0 / 255.0,
            "mean": [float(v) for v in self.mean],
            "std": [float(v) for v in self.std],
            "normalization": self.normalization,
            "class_names": list(self.class_names),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Preprocessing:
        """Rebuild from :meth:`to_dict` output; a malformed record raises PreprocessingError."""
        try:
            size = data["input_size"]
            return cls(
                input_size=(int(size[0]), int(size[1])),
                channels=int(data["channels"]),
                mean=tuple(float(v) for v in data["mean"]),
                std=tuple(float(v) for v in data["std"]),
                class_names=tuple(str(c) for c in data.get("class_names", ())),
                resize=str(data.get("resize", "bilinear")),
                normalization=str(data.get("normalization", "dataset")),
                version=int(data.get("version", RECORD_VERSION)),
            )
        except (KeyError, TypeError, ValueError, IndexError) as exc:
            if isinstance(exc, PreprocessingError):
                raise
            raise PreprocessingError(f"malformed preprocessing record: {exc}") from None

    def with_normalization(self, preset: str) -> Preprocessing:
        """The same record with declared statistics (``imagenet``/``unit``) or unchanged."""
        if preset == "dataset":
            return self
        mean: tuple[float, ...]
        std: tuple[float, ...]
        if preset == "imagenet":
            if self.channels != 3:
                raise PreprocessingError("ImageNet statistics need 3-channel (RGB) images")
            mean, std = IMAGENET_MEAN, IMAGENET_STD
        elif preset == "unit":
            mean, std = (0.0,) * self.channels, (1.0,) * self.channels
        else:
            raise PreprocessingError(
                f"normalization must be one of {', '.join(NORMALIZATION_PRESETS)}, got {preset!r}"
            )
        return Preprocessing(
            input_size=self.input_size,
            channels=self.channels,
            mean=mean,
            std=std,
            class_names=self.class_names,
            resize=self.resize,
            normalization=preset,
        )

    def normalize(self, pixels: np.ndarray) -> np.ndarray:
        """(N, C, H, W) pixels, uint8 0-255 or float 0-1, to the model's float32 input."""
        x = np.asarray(pixels)
        x = x.astype(np.float32) / 255.0 if x.dtype == np.uint8 else x.astype(np.float32)
        mean = np.asarray(self.mean, dtype=np.float32).reshape(1, -1, 1, 1)
        std = np.asarray(self.std, dtype=np.float32).reshape(1, -1, 1, 1)
        out: np.ndarray = (x - mean) / std
        return out

    def describe(self) -> str:
        """One line for pages and logs."""
        h, w = self.input_size
        mean = ", ".join(f"{v:.3f}" for v in self.mean)
        std = ", ".join(f"{v:.3f}" for v in self.std)
        color = "grayscale" if self.channels == 1 else "RGB"
        return (
            f"{color} {h}x{w} ({self.resize} resize), pixels/255, mean [{mean}], std [{std}] "
            f"({self.normalization}), {self.num_classes} classes"
        )


def check_matches(pre: Preprocessing, *, input_shape: Sequence[int], num_classes: int) -> None:
    """Refuse a record whose shape or class count differs from the model's."""
    if tuple(int(v) for v in input_shape) != pre.input_shape:
        raise PreprocessingError(
            f"the preprocessing gives {pre.input_shape} inputs but the model expects "
            f"{tuple(input_shape)}"
        )
    if pre.class_names and len(pre.class_names) != num_classes:
        raise PreprocessingError(
            f"the preprocessing names {len(pre.class_names)} classes but the model outputs "
            f"{num_classes}"
        )


def stamp_onnx(path: Path | str, pre: Preprocessing) -> None:
    """Write the record into the ONNX file's ``metadata_props`` (replacing an older one)."""
    import onnx

    path = Path(path)
    model = onnx.load(str(path), load_external_data=False)
    props = [p for p in model.metadata_props if p.key != ONNX_METADATA_KEY]
    del model.metadata_props[:]
    model.metadata_props.extend(props)
    entry = model.metadata_props.add()
    entry.key = ONNX_METADATA_KEY
    entry.value = json.dumps(pre.to_dict(), sort_keys=True)
    tmp = path.with_name(f".{path.name}.stamp")
    onnx.save(model, str(tmp))
    tmp.replace(path)


def read_onnx_metadata(metadata: Mapping[str, str]) -> Preprocessing | None:
    """The record from an ONNX ``metadata_props`` mapping, if it holds one."""
    raw = metadata.get(ONNX_METADATA_KEY)
    if not raw:
        return None
    try:
        data = json.loads(raw)
    except ValueError:
        raise PreprocessingError("the ONNX preprocessing metadata is not JSON") from None
    if not isinstance(data, dict):
        raise PreprocessingError("the ONNX preprocessing metadata is not an object")
    return Preprocessing.from_dict(data)


def read_onnx(path: Path | str) -> Preprocessing | None:
    """The record stamped into an ONNX file, if any."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return read_onnx_metadata({p.key: p.value for p in model.metadata_props})
