"""ZeRO-3 partitioning in one process (a one-rank layout, gather = the shard itself): between steps the
shared tensors hold no storage and cannot be used; inside ``gathered()`` they hold exactly the shard's
values; parameters that share storage are refused, since freeing one would free the other."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from torch import nn

from flatmtl.workers.engine import PartitionedParameters, ShardedFlatParams, ShardLayout
from flatmtl.workers.mtl.flat import FlatParams


def _partition(params: list[nn.Parameter]) -> PartitionedParameters:
    flat = FlatParams(params)
    layout = ShardLayout(flat.numel, 1, 0, flat.segment_ids)
    comm = SimpleNamespace(layout=layout, gather=lambda shard: shard[: layout.numel].clone())
    return PartitionedParameters(ShardedFlatParams(params, comm))  # type: ignore[arg-type]


def test_released_parameters_keep_shapes_hold_nothing_and_refuse_a_forward() -> None:
    torch.manual_seed(0)
    layer = nn.Linear(3, 2).double()
    expected = [p.detach().clone() for p in layer.parameters()]
    x = torch.randn(4, 3, dtype=torch.float64)
    reference = layer(x).detach()
    partition = _partition(list(layer.parameters()))
    assert [p.shape for p in layer.parameters()] == [e.shape for e in expected]
    assert all(p.untyped_storage().nbytes() == 0 for p in layer.parameters())
    assert partition.persistent_bytes() == 8 * 8
    with pytest.raises(RuntimeError):
        layer(x)
    with partition.gathered():
        with partition.gathered():  # nested: reuses the outer gather
            assert torch.equal(layer(x), reference)
        assert all(torch.equal(p, e) for p, e in zip(layer.parameters(), expected, strict=True))
    assert not partition.materialized and all(p.untyped_storage().nbytes() == 0 for p in layer.parameters())
    with torch.no_grad():
        partition.shard.add_(1.0)  # what the optimizer does to the persistent shard
    with partition.gathered():
        assert all(torch.equal(p, e + 1) for p, e in zip(layer.parameters(), expected, strict=True))


def test_parameters_sharing_storage_are_refused() -> None:
    base = torch.zeros(6, dtype=torch.float64)
    views = [nn.Parameter(base[:3]), nn.Parameter(base[3:])]
    with pytest.raises(ValueError, match="own its storage"):
        _partition(views)
