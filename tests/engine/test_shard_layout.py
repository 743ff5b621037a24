"""Single-process checks of the shard layout and view: shards tile the vector, per-layer statistics
summed over shards equal the unsharded ones, and non-shardable methods fail at validation."""

from __future__ import annotations

import dataclasses
from types import SimpleNamespace

import pytest
import torch

from flatmtl.workers.engine import ShardedFlatParams, ShardLayout, check_shardable
from flatmtl.workers.mtl import registry
from flatmtl.workers.mtl.errors import MethodError
from flatmtl.workers.mtl.flat import FlatParams

SHAPES = [(3, 2), (4,), (1,), (5, 1)]  # P = 16, L = 4: with N = 3, S = 6 and rank 2 has 2 padding slots
WORLD = 3


def _params() -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    return [torch.randn(shape, dtype=torch.float64, generator=generator) for shape in SHAPES]


def _views() -> list[ShardedFlatParams]:
    params = _params()
    flat = FlatParams(params)
    layouts = [ShardLayout(flat.numel, WORLD, rank, flat.segment_ids) for rank in range(WORLD)]
    return [ShardedFlatParams(params, SimpleNamespace(layout=layout)) for layout in layouts]  # type: ignore[arg-type]


def test_shards_tile_the_padded_vector_and_stacked_chunks_are_the_shards() -> None:
    views = _views()
    full = torch.randn(2, 16, dtype=torch.float64)
    shards = [view.layout.local(full) for view in views]
    assert all(s.shape == (2, 6) for s in shards)
    torch.testing.assert_close(torch.cat(shards, dim=1)[:, :16], full, rtol=0, atol=0)
    assert torch.count_nonzero(torch.cat(shards, dim=1)[:, 16:]) == 0
    stacked = views[0].layout.stacked(full).view(WORLD, 2, 6)
    for rank, shard in enumerate(shards):
        assert torch.equal(stacked[rank], shard)


def test_layer_norms_summed_over_shards_equal_unsharded_even_with_nonzero_padding() -> None:
    views = _views()
    whole = FlatParams(_params())
    full = torch.randn(2, 16, dtype=torch.float64)
    shards = [view.layout.local(full) + (torch.arange(6) >= view.layout.local_numel) * 7.0 for view in views]
    summed = sum(view.layer_sq_norms(shard) for view, shard in zip(views, shards, strict=True))
    torch.testing.assert_close(summed, whole.layer_sq_norms(full), rtol=1e-12, atol=0)
    per_layer = torch.tensor([1.0, 2.0, 3.0, 4.0], dtype=torch.float64)
    expanded = torch.cat([view.expand_layers(per_layer) for view in views])[:16]
    assert torch.equal(expanded, whole.expand_layers(per_layer))


def test_values_are_this_ranks_slice_of_the_parameters() -> None:
    views = _views()
    whole = FlatParams(_params())
    assert torch.equal(torch.cat([view.values() for view in views])[:16], whole.values())


def test_non_shardable_method_is_rejected_at_validation(monkeypatch: pytest.MonkeyPatch) -> None:
    check_shardable("ew", "mean", "none")
    not_shardable = dataclasses.replace(registry.spec("aggregator", "mean"), shardable=False)
    monkeypatch.setitem(registry._REGISTRY["aggregator"], "mean", not_shardable)
    with pytest.raises(MethodError, match="aggregator 'mean' cannot run with sharded parameters"):
        check_shardable("ew", "mean", "none")
    with pytest.raises(MethodError, match="unknown aggregator"):
        check_shardable("ew", "no_such_method", "none")
