"""Categorical features for any vector model: the table's codes (one column each, 0 for missing or unseen)
become learned embeddings or fixed one-hot blocks beside the numeric features, in front of the named model."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn
from torch.nn import functional as F  # noqa: N812

from flatmtl.workers.problems.errors import ProblemError
from flatmtl.workers.problems.models.base import MultiTaskNet
from flatmtl.workers.problems.models.hps import HardSharing

ENCODINGS = ("embedding", "onehot")


class CategoricalInput(nn.Module):
    """[N, numeric + categorical] (codes as floats) -> [N, numeric + encoded width]."""

    def __init__(self, num_numeric: int, cardinalities: Sequence[int], encoding: str, embedding_dim: int) -> None:
        super().__init__()
        if encoding not in ENCODINGS:
            raise ProblemError(f"categorical_encoding {encoding!r} is not one of {list(ENCODINGS)}")
        if embedding_dim < 1:
            raise ProblemError(f"embedding_dim must be >= 1, got {embedding_dim}")
        self.num_numeric = num_numeric
        self.cardinalities = list(cardinalities)
        self.encoding = encoding
        self.embeddings = nn.ModuleList(
            nn.Embedding(size, embedding_dim) for size in (self.cardinalities if encoding == "embedding" else ())
        )
        encoded = len(self.cardinalities) * embedding_dim if encoding == "embedding" else sum(self.cardinalities)
        self.out_features = num_numeric + encoded

    def forward(self, x: Tensor) -> Tensor:
        numeric, codes = x[:, : self.num_numeric], x[:, self.num_numeric :].long()
        if self.encoding == "embedding":
            parts = [embedding(codes[:, i]) for i, embedding in enumerate(self.embeddings)]
        else:
            parts = [F.one_hot(codes[:, i], size).to(x.dtype) for i, size in enumerate(self.cardinalities)]
        return torch.cat([numeric, *parts], dim=1)


class TabularNet(MultiTaskNet):
    """``inner`` on the encoded features; the categorical encoding is shared by every task.

    ``inner``'s representation stays the whole path from the shared parameters to the outputs only where the
    front has no parameters (one-hot) or ``inner`` reads its input through nothing else (hard sharing); MMoE's
    and PLE's gates read learned embeddings directly, so they then declare no representation."""

    def __init__(self, front: CategoricalInput, inner: MultiTaskNet) -> None:
        super().__init__()
        self.front = front
        self.inner = inner
        learned_front = any(True for _ in front.parameters())
        self.has_representation = inner.has_representation and (not learned_front or isinstance(inner, HardSharing))

    def shared_parameters(self) -> list[nn.Parameter]:
        return [*self.front.parameters(), *self.inner.shared_parameters()]

    def task_parameters(self) -> list[list[nn.Parameter]]:
        return self.inner.task_parameters()

    def task_heads(self) -> list[nn.Module] | None:
        return self.inner.task_heads()

    def forward_with_representation(self, x: Tensor | list[Tensor]) -> tuple[list[Tensor], Tensor]:
        if not isinstance(x, Tensor):
            raise ProblemError("a table model takes one input tensor, got a list")
        return self.inner.forward_with_representation(self.front(x))

    def forward(self, x: Tensor | list[Tensor]) -> list[Tensor]:
        if not isinstance(x, Tensor):
            raise ProblemError("a table model takes one input tensor, got a list")
        return self.inner(self.front(x))
