"""MTAN (Liu et al., CVPR 2019): a shared SegNet with per-task soft attention, for dense prediction.

The shared network is a SegNet encoder-decoder: per level two 3x3 conv + BN + ReLU layers (the original's
deeper levels have three), max-pooling with indices going down and max-unpooling coming back. Each task
owns attention masks that, at every level, read the level's first shared feature together with the task's
previous attended feature, produce a sigmoid mask and apply it to the level's last shared feature. Between
levels the attended map passes a 3x3 conv that, as in the authors' code, is shared by all tasks (it is a
shared parameter applied on each task's own path). The task's last attended map feeds its head.
With ``attention=False`` the tasks' heads read the shared decoder output directly (SegNet with hard
parameter sharing), which is then the shared representation.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn
from torch.nn import functional as F  # noqa: N812

from flatmtl.workers.problems.errors import ProblemError
from flatmtl.workers.problems.models.base import MultiTaskNet


def conv_bn_relu(in_channels: int, out_channels: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(in_channels, out_channels, 3, padding=1), nn.BatchNorm2d(out_channels), nn.ReLU())


def attention_mask(in_channels: int, channels: int) -> nn.Sequential:
    """Two 1x1 convolutions ending in a sigmoid: a soft mask per channel and pixel."""
    return nn.Sequential(
        nn.Conv2d(in_channels, channels, 1),
        nn.BatchNorm2d(channels),
        nn.ReLU(),
        nn.Conv2d(channels, channels, 1),
        nn.BatchNorm2d(channels),
        nn.Sigmoid(),
    )


def dense_head(in_channels: int, out_channels: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, in_channels, 3, padding=1), nn.ReLU(), nn.Conv2d(in_channels, out_channels, 1)
    )


class TaskAttention(nn.Module):
    """One task's attention masks over every encoder and decoder level, and its prediction head."""

    def __init__(self, widths: Sequence[int], decoder_widths: Sequence[int], out_channels: int) -> None:
        super().__init__()
        levels = len(widths)
        self.encoder_masks = nn.ModuleList(
            attention_mask(widths[i] * (1 if i == 0 else 2), widths[i]) for i in range(levels)
        )
        self.decoder_masks = nn.ModuleList(
            attention_mask(2 * decoder_widths[i], decoder_widths[i]) for i in range(levels)
        )
        self.head = dense_head(decoder_widths[0], out_channels)


class MTAN(MultiTaskNet):
    """SegNet-based MTAN; ``widths`` per level (the paper uses 64, 128, 256, 512, 512). Input height and width
    must be divisible by 2 ** len(widths)."""

    def __init__(
        self,
        in_channels: int,
        out_channels: Sequence[int],
        *,
        widths: Sequence[int] = (64, 128, 256, 512, 512),
        attention: bool = True,
    ) -> None:
        super().__init__()
        if not widths:
            raise ProblemError("mtan: widths must list at least one level")
        widths = list(widths)
        decoder_widths = [widths[0], *widths[:-1]]
        levels = len(widths)
        self.levels = levels
        self.attention = attention
        self.has_representation = not attention
        self.encoder_first = nn.ModuleList(conv_bn_relu(([in_channels, *widths])[i], widths[i]) for i in range(levels))
        self.encoder_second = nn.ModuleList(conv_bn_relu(widths[i], widths[i]) for i in range(levels))
        self.decoder_first = nn.ModuleList(conv_bn_relu(widths[i], decoder_widths[i]) for i in range(levels))
        self.decoder_second = nn.ModuleList(conv_bn_relu(decoder_widths[i], decoder_widths[i]) for i in range(levels))
        if attention:
            self.attention_encoder_convs = nn.ModuleList(
                conv_bn_relu(widths[i], widths[min(i + 1, levels - 1)]) for i in range(levels)
            )
            self.attention_decoder_convs = nn.ModuleList(
                conv_bn_relu(widths[i], decoder_widths[i]) for i in range(levels)
            )
            self.tasks = nn.ModuleList(TaskAttention(widths, decoder_widths, out) for out in out_channels)
        else:
            self.heads = nn.ModuleList(dense_head(widths[0], out) for out in out_channels)

    def shared_parameters(self) -> list[nn.Parameter]:
        modules = [self.encoder_first, self.encoder_second, self.decoder_first, self.decoder_second]
        if self.attention:
            modules += [self.attention_encoder_convs, self.attention_decoder_convs]
        return [p for module in modules for p in module.parameters()]

    def task_parameters(self) -> list[list[nn.Parameter]]:
        return [list(task.parameters()) for task in (self.tasks if self.attention else self.heads)]

    def _shared(self, x: Tensor) -> tuple[list[tuple[Tensor, Tensor]], list[tuple[Tensor, Tensor]]]:
        """The (first, last) feature of every encoder level and of every decoder level (finest first)."""
        if x.shape[-1] % 2**self.levels or x.shape[-2] % 2**self.levels:
            raise ProblemError(f"mtan: input size {tuple(x.shape[-2:])} must be divisible by 2**{self.levels}")
        encoder, indices = [], []
        h = x
        for first, second in zip(self.encoder_first, self.encoder_second, strict=True):
            u = first(h)
            p = second(u)
            encoder.append((u, p))
            h, index = F.max_pool2d(p, 2, return_indices=True)
            indices.append(index)
        decoder = []
        for i in reversed(range(self.levels)):
            h = F.max_unpool2d(h, indices[i], 2, output_size=encoder[i][1].shape[-2:])
            u = self.decoder_first[i](h)
            h = self.decoder_second[i](u)
            decoder.append((u, h))
        return encoder, decoder[::-1]

    def forward_with_representation(self, x: Tensor | list[Tensor]) -> tuple[list[Tensor], Tensor]:
        if not isinstance(x, Tensor):
            raise ProblemError("mtan takes one input tensor, got a list")
        if self.attention:
            raise ProblemError(
                "mtan with attention has no single shared representation (task attention reads every shared "
                "level); use attention=False (segnet) for representation-based methods such as MGDA-UB"
            )
        representation = self._shared(x)[1][0][1]
        return [head(representation) for head in self.heads], representation

    def forward(self, x: Tensor | list[Tensor]) -> list[Tensor]:
        if not self.attention:
            return self.forward_with_representation(x)[0]
        if not isinstance(x, Tensor):
            raise ProblemError("mtan takes one input tensor, got a list")
        encoder, decoder = self._shared(x)
        return [self._attend(task, encoder, decoder) for task in self.tasks]

    def _attend(
        self, task: TaskAttention, encoder: list[tuple[Tensor, Tensor]], decoder: list[tuple[Tensor, Tensor]]
    ) -> Tensor:
        u, p = encoder[0]
        a = F.max_pool2d(self.attention_encoder_convs[0](task.encoder_masks[0](u) * p), 2)
        for i in range(1, self.levels):
            u, p = encoder[i]
            a = F.max_pool2d(self.attention_encoder_convs[i](task.encoder_masks[i](torch.cat([u, a], dim=1)) * p), 2)
        for i in reversed(range(self.levels)):
            u, p = decoder[i]
            a = self.attention_decoder_convs[i](
                F.interpolate(a, size=u.shape[-2:], mode="bilinear", align_corners=True)
            )
            a = task.decoder_masks[i](torch.cat([u, a], dim=1)) * p
        return task.head(a)
