"""Shared encoders for hard parameter sharing: MLP, LeNet, a small CNN and ResNet-18 (all ours, no torchvision).

Each maps an input of ``input_shape`` (without the batch) to a flat feature vector of ``out_features``.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import torch
from torch import Tensor, nn
from torch.nn import functional as F  # noqa: N812

from flatmtl.workers.problems.errors import ProblemError


def _image_shape(name: str, input_shape: Sequence[int]) -> tuple[int, int, int]:
    if len(input_shape) != 3:
        raise ProblemError(f"model {name!r} needs image inputs [C, H, W], got input shape {tuple(input_shape)}")
    channels, height, width = (int(s) for s in input_shape)
    return channels, height, width


def _flat_size(module: nn.Module, input_shape: Sequence[int]) -> int:
    """Features a module produces for one input, found by running it once on zeros."""
    with torch.no_grad():
        was_training = module.training
        module.eval()
        size = module(torch.zeros(1, *input_shape)).flatten(1).shape[1]
        module.train(was_training)
    return int(size)


class MLPEncoder(nn.Module):
    """Flatten, then Linear + ReLU layers."""

    def __init__(self, input_shape: Sequence[int], hidden: Sequence[int] = (256, 128)) -> None:
        super().__init__()
        if not hidden:
            raise ProblemError("mlp: hidden must list at least one layer width")
        sizes = [int(torch.tensor(input_shape).prod()), *hidden]
        layers: list[nn.Module] = [nn.Flatten()]
        for fan_in, fan_out in itertools.pairwise(sizes):
            layers += [nn.Linear(fan_in, fan_out), nn.ReLU()]
        self.net = nn.Sequential(*layers)
        self.out_features = sizes[-1]

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


class LeNetEncoder(nn.Module):
    """LeNet-5 style as in the Multi-MNIST papers: two 5x5 conv + max-pool + ReLU stages, then a dense layer.

    ``padding=None`` keeps the classic unpadded convolutions for inputs of 16 pixels or more and pads
    ('same') on smaller ones, such as the 12x12 multi-digits canvas, where unpadded maps would vanish.
    """

    def __init__(
        self,
        input_shape: Sequence[int],
        channels: Sequence[int] = (10, 20),
        features: int = 50,
        padding: int | None = None,
    ) -> None:
        super().__init__()
        in_channels, height, width = _image_shape("lenet", input_shape)
        pad = (0 if min(height, width) >= 16 else 2) if padding is None else padding
        self.convs = nn.Sequential(
            nn.Conv2d(in_channels, channels[0], 5, padding=pad),
            nn.MaxPool2d(2),
            nn.ReLU(),
            nn.Conv2d(channels[0], channels[1], 5, padding=pad),
            nn.MaxPool2d(2),
            nn.ReLU(),
            nn.Flatten(),
        )
        self.dense = nn.Sequential(nn.Linear(_flat_size(self.convs, input_shape), features), nn.ReLU())
        self.out_features = features

    def forward(self, x: Tensor) -> Tensor:
        return self.dense(self.convs(x))


class CNNEncoder(nn.Module):
    """Small CNN: per width a 3x3 conv + BatchNorm + ReLU (+ 2x2 max-pool while the map is large enough), then
    global average pooling."""

    def __init__(self, input_shape: Sequence[int], widths: Sequence[int] = (32, 64, 128)) -> None:
        super().__init__()
        in_channels, height, width = _image_shape("cnn", input_shape)
        layers: list[nn.Module] = []
        size = min(height, width)
        for channels in widths:
            layers += [nn.Conv2d(in_channels, channels, 3, padding=1, bias=False), nn.BatchNorm2d(channels), nn.ReLU()]
            if size >= 4:
                layers.append(nn.MaxPool2d(2))
                size //= 2
            in_channels = channels
        layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
        self.net = nn.Sequential(*layers)
        self.out_features = in_channels

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


class BasicBlock(nn.Module):
    """Two 3x3 convs with BatchNorm and an identity (or 1x1 projection) shortcut."""

    def __init__(self, in_channels: int, channels: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_channels != channels:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, channels, 1, stride=stride, bias=False), nn.BatchNorm2d(channels)
            )

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class ResNet18Encoder(nn.Module):
    """ResNet-18 (four stages of two basic blocks, widths w, 2w, 4w, 8w) without its classifier.

    ``stem="small"`` (3x3 stride-1 conv, no max-pool) suits small images such as the 36x36 canvases;
    ``stem="imagenet"`` is the original 7x7 stride-2 conv and max-pool. ``None`` picks small below 64 pixels.
    """

    def __init__(self, input_shape: Sequence[int], width: int = 64, stem: str | None = None) -> None:
        super().__init__()
        in_channels, height, width_px = _image_shape("resnet18", input_shape)
        stem = stem or ("small" if min(height, width_px) < 64 else "imagenet")
        if stem == "small":
            self.stem = nn.Sequential(
                nn.Conv2d(in_channels, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU()
            )
        elif stem == "imagenet":
            self.stem = nn.Sequential(
                nn.Conv2d(in_channels, width, 7, stride=2, padding=3, bias=False),
                nn.BatchNorm2d(width),
                nn.ReLU(),
                nn.MaxPool2d(3, stride=2, padding=1),
            )
        else:
            raise ProblemError(f"resnet18: stem must be 'small' or 'imagenet', got {stem!r}")
        blocks: list[nn.Module] = []
        channels = width
        for stage, stride in enumerate((1, 2, 2, 2)):
            out = width * 2**stage
            blocks += [BasicBlock(channels, out, stride), BasicBlock(out, out, 1)]
            channels = out
        self.stages = nn.Sequential(*blocks)
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.out_features = channels

    def forward(self, x: Tensor) -> Tensor:
        return self.pool(self.stages(self.stem(x)))
