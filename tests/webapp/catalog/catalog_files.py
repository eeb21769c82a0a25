"""Sample files for the catalog tests: good models and datasets, and hostile ones."""

from __future__ import annotations

import io
import pickle
import stat
import zipfile
from pathlib import Path

import numpy as np


def lenet5_safetensors(path: Path, *, num_classes: int = 10, in_channels: int = 1) -> Path:
    from compression import zoo
    from compression.model_io import save_model_safetensors

    module = zoo.create_model("lenet5", num_classes=num_classes, in_channels=in_channels)
    return save_model_safetensors(module, path)


def lenet5_onnx(path: Path) -> Path:
    from compression import zoo
    from compression.onnx_export import export_onnx

    return export_onnx(zoo.create_model("lenet5", num_classes=10, in_channels=1), (1, 32, 32), path)


def pickled_module(path: Path) -> Path:
    """A whole nn.Module saved with torch.save: loading it would unpickle arbitrary classes."""
    import torch

    from compression import zoo

    torch.save(zoo.create_model("lenet5", num_classes=10, in_channels=1), path)
    return path


class _Payload:
    def __init__(self, canary: Path) -> None:
        self.canary = canary

    def __reduce__(self):  # type: ignore[no-untyped-def]
        # Unpickling this runs open(canary, "w"): the file must never appear.
        return (open, (str(self.canary), "w"))


def pickle_payload(path: Path, canary: Path) -> Path:
    """A .pt whose pickle would create ``canary`` when loaded with plain pickle."""
    path.write_bytes(pickle.dumps({"weight": _Payload(canary)}, protocol=4))
    return path


def pickle_payload_torch_zip(path: Path, canary: Path) -> Path:
    """The same payload inside torch.save's zip container (data.pkl)."""
    import torch

    torch.save({"weight": _Payload(canary)}, path)
    return path


def _png_bytes(color: tuple[int, int, int], size: int = 20) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.full((size, size, 3), color, dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def _entry(name: str) -> zipfile.ZipInfo:
    """A regular-file entry as zip tools write it (mode bits include S_IFREG)."""
    info = zipfile.ZipInfo(name, date_time=(2024, 1, 1, 0, 0, 0))
    info.external_attr = (stat.S_IFREG | 0o644) << 16
    info.compress_type = zipfile.ZIP_DEFLATED
    return info


def image_folder_zip(
    path: Path, *, classes: tuple[str, ...] = ("cat", "dog"), per_class: int = 6, corrupt: int = 0
) -> Path:
    """A flat ``<class>/*.png`` zip; ``corrupt`` adds files named .png that are not images."""
    with zipfile.ZipFile(path, "w") as zf:
        for ci, name in enumerate(classes):
            for i in range(per_class):
                zf.writestr(
                    _entry(f"{name}/{i}.png"),
                    _png_bytes((40 * ci + 20, 100, 200 - 40 * ci), 16 + i),
                )
        for i in range(corrupt):
            zf.writestr(_entry(f"{classes[0]}/broken{i}.png"), b"this is not a png at all")
    return path


def zip_slip(path: Path) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr(_entry("cat/0.png"), _png_bytes((1, 2, 3)))
        zf.writestr(_entry("../../escaped.png"), _png_bytes((1, 2, 3)))
    return path


def zip_symlink(path: Path) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr(_entry("cat/0.png"), _png_bytes((1, 2, 3)))
        info = zipfile.ZipInfo("dog/link.png")
        info.external_attr = (stat.S_IFLNK | 0o777) << 16
        zf.writestr(info, "/etc/passwd")
    return path


def zip_bomb(path: Path) -> Path:
    """One entry of 200 MB of zeros: about 200 KB compressed, far past the 100:1 ratio cap."""
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        with zf.open(_entry("cat/bomb.png"), "w") as fh:
            block = b"\0" * (1 << 20)
            for _ in range(200):
                fh.write(block)
        zf.writestr(_entry("dog/0.png"), _png_bytes((1, 2, 3)))
    return path


def media_files(root: Path) -> list[Path]:
    """Every stored file under a test's media folder."""
    media = root / "media"
    return sorted(p for p in media.rglob("*") if p.is_file()) if media.exists() else []


def split_folder_zip(
    path: Path, *, classes: tuple[str, ...] = ("cat", "dog"), train: int = 8, test: int = 3
) -> Path:
    """A ``train/<class>/*.png`` + ``test/<class>/*.png`` zip; test images are named ``t*.png``
    and sized 30+i so that a test can tell them apart from the training images (16+i)."""
    with zipfile.ZipFile(path, "w") as zf:
        for ci, name in enumerate(classes):
            colour = (40 * ci + 20, 100, 200 - 40 * ci)
            for i in range(train):
                zf.writestr(_entry(f"train/{name}/{i}.png"), _png_bytes(colour, 16 + i))
            for i in range(test):
                zf.writestr(_entry(f"test/{name}/t{i}.png"), _png_bytes(colour, 30 + i))
    return path
