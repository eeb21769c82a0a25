"""The model zoo: every registered architecture builds and maps images to class logits."""

from __future__ import annotations

import pytest
import torch

from compression.errors import ConfigError
from compression.zoo import create_model, default_input_size, list_models


@pytest.mark.parametrize("name", list_models(task="classification"))
def test_every_model_maps_a_batch_to_class_logits(name: str) -> None:
    in_channels = 1  # the digits are grey; the default of 3 is exercised below
    model = create_model(name, num_classes=7, in_channels=in_channels).eval()
    size = default_input_size(name)
    with torch.no_grad():
        out = model(torch.zeros(2, in_channels, size, size))
    assert out.shape == (2, 7)


@pytest.mark.parametrize("name", ["lenet5", "resnet20"])
def test_rgb_input_is_the_default(name: str) -> None:
    model = create_model(name, num_classes=4).eval()
    with torch.no_grad():
        assert model(torch.zeros(1, 3, 32, 32)).shape == (1, 4)


def test_the_zoo_holds_the_documented_architectures() -> None:
    assert set(list_models()) >= {
        "lenet5",
        "lenet300_100",
        "vgg11_bn",
        "vgg16_bn",
        "vgg19_bn",
        "resnet20",
        "resnet56",
        "resnet18",
        "mobilenet_v2",
    }


def test_cifar_resnets_use_projection_shortcuts() -> None:
    model = create_model("resnet20")
    shortcut_convs = [n for n, m in model.named_modules() if n.endswith("shortcut.0")]
    assert len(shortcut_convs) == 2  # one per stage change: 16->32 and 32->64


def test_an_unknown_architecture_names_the_known_ones() -> None:
    with pytest.raises(ConfigError, match="lenet5"):
        create_model("alexnet")
