"""Read the detection metadata an ONNX detector carries (see :mod:`compression.detection_export`).

Torch-free on purpose: the upload inspector reads it for every ONNX file, in a fresh process
that should not pay torch's import for a file it only parses.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from compression.detect_post import META_KEY, DetectorMeta


def meta_of_proto(model: Any) -> DetectorMeta | None:
    """The detection metadata of a parsed ``onnx.ModelProto``; None when it has none.

    Raises:
        DetectionError: the metadata is there but malformed.
    """
    for prop in model.metadata_props:
        if prop.key == META_KEY:
            return DetectorMeta.from_json(prop.value)
    return None


def read_detector_meta(onnx_path: Path | str) -> DetectorMeta | None:
    """The detection metadata stored in an ONNX file (external data is never read); None for
    a file without it (a classifier, or a detector exported elsewhere)."""
    import onnx

    return meta_of_proto(onnx.load(str(onnx_path), load_external_data=False))
