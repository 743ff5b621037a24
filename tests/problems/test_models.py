"""Every architecture: output shapes, a disjoint and complete shared/task parameter split, the shared
representation, and one step of the MTL core on it."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from flatmtl.workers.mtl import MTLStep, ParameterSplit
from flatmtl.workers.problems import MultiTaskNet, ProblemError, build_model
from flatmtl.workers.problems.tasks import Binary, Classification, Depth, Normal, Regression, Segmentation, Task

CLASSIFY = [Task("a", Classification(10)), Task("b", Classification(4)), Task("c", Binary())]
DENSE = [Task("seg", Segmentation(5)), Task("depth", Depth()), Task("normal", Normal())]

IMAGE_MODELS = [
    ("mlp", {"hidden": (32, 16)}),
    ("lenet", {}),
    ("cnn", {"widths": (4, 8)}),
    ("resnet18", {"width": 4}),
]


def assert_split_covers_every_parameter(model: MultiTaskNet, num_tasks: int) -> None:
    split = ParameterSplit.from_model(model)  # raises on overlap
    assert len(split.heads) == num_tasks and all(split.heads)
    declared = {id(p) for p in split.shared} | {id(p) for head in split.heads for p in head}
    assert declared == {id(p) for p in model.parameters()}


@pytest.mark.parametrize(("name", "options"), IMAGE_MODELS)
@pytest.mark.parametrize("shape", [(1, 12, 12), (3, 36, 36)])
def test_hard_sharing_image_models(name: str, options: dict, shape: tuple[int, ...]) -> None:
    torch.manual_seed(0)
    model = build_model(name, shape, CLASSIFY, **options)
    outputs, representation = model.forward_with_representation(torch.randn(5, *shape))
    assert [tuple(o.shape) for o in outputs] == [(5, 10), (5, 4), (5, 1)]
    assert_split_covers_every_parameter(model, 3)
    # every output is its head applied to the shared representation
    for head, output in zip(model.heads, outputs, strict=True):
        torch.testing.assert_close(head(representation), output)


def test_resnet18_has_seventeen_convolutions_and_one_classifier_per_task() -> None:
    model = build_model("resnet18", (3, 64, 64), CLASSIFY, width=4)
    convs = [m for m in model.encoder.modules() if isinstance(m, nn.Conv2d) and m.kernel_size != (1, 1)]
    assert len(convs) == 17  # 1 stem + 8 basic blocks x 2: with the head, the 18 weighted layers
    assert model.encoder.out_features == 32 and convs[0].kernel_size == (7, 7)


def test_resnet18_at_full_width_has_the_published_parameter_count() -> None:
    # ResNet-18 has 11,689,512 parameters with its 1000-way classifier (512 * 1000 + 1000) removed here.
    encoder = build_model("resnet18", (3, 224, 224), CLASSIFY[:1]).encoder
    assert sum(p.numel() for p in encoder.parameters()) == 11_689_512 - 513_000


def test_heads_without_a_graph_are_one_product_with_the_same_outputs() -> None:
    torch.manual_seed(0)
    model = build_model("mlp", (6,), CLASSIFY, hidden=(8,)).double()
    x = torch.randn(5, 6, dtype=torch.float64)
    separate = [head(model.encoder(x)) for head in model.heads]
    with torch.no_grad():
        calls = []
        handle = torch.nn.modules.module.register_module_forward_hook(lambda module, *_: calls.append(module))
        try:
            fused = model(x)
        finally:
            handle.remove()
    assert not any(isinstance(module, nn.Linear) and module in list(model.heads) for module in calls)
    assert [tuple(out.shape) for out in fused] == [(5, 10), (5, 4), (5, 1)]
    for out, reference in zip(fused, separate, strict=True):
        torch.testing.assert_close(out, reference.detach(), rtol=1e-12, atol=1e-14)
    seen = []
    model.heads[1].register_forward_pre_hook(lambda module, args: seen.append(module))
    with torch.no_grad():
        model(x)
    assert seen == [model.heads[1]], "a head with a hook is called as itself"


def test_multi_input_model_routes_each_input_to_its_head() -> None:
    torch.manual_seed(0)
    tasks = [Task("art", Classification(6)), Task("clipart", Classification(6))]
    model = build_model("cnn", (3, 16, 16), tasks, multi_input=True, widths=(4,))
    model.eval()
    first, second = torch.randn(3, 3, 16, 16), torch.randn(2, 3, 16, 16)
    outputs, representation = model.forward_with_representation([first, second])
    assert outputs[0].shape == (3, 6) and outputs[1].shape == (2, 6) and representation.shape[0] == 5
    torch.testing.assert_close(outputs[1], model.heads[1](model.encoder(second)))
    assert_split_covers_every_parameter(model, 2)
    with pytest.raises(ProblemError, match="list of 2 inputs"):
        model(first)


def test_mmoe_mixes_shared_experts_with_task_gates() -> None:
    torch.manual_seed(0)
    tasks = [Task("y", Regression()), Task("z", Binary()), Task("w", Classification(3))]
    model = build_model("mmoe", (7,), tasks, num_experts=3, expert_hidden=(8, 4), tower_hidden=5)
    x = torch.randn(6, 7)
    outputs, representation = model.forward_with_representation(x)
    assert [tuple(o.shape) for o in outputs] == [(6, 1), (6, 1), (6, 3)] and representation.shape == (6, 3, 4)
    assert_split_covers_every_parameter(model, 3)
    gate = model.gates[2](x)
    torch.testing.assert_close(gate.sum(1), torch.ones(6))
    torch.testing.assert_close(model.towers[2]((gate.unsqueeze(2) * representation).sum(1)), outputs[2])


@pytest.mark.parametrize("name", ["mtan", "segnet"])
def test_dense_models_predict_a_map_per_task(name: str) -> None:
    torch.manual_seed(0)
    model = build_model(name, (3, 16, 24), DENSE, widths=(4, 8, 8))
    outputs = model(torch.randn(2, 3, 16, 24))
    assert [tuple(o.shape) for o in outputs] == [(2, 5, 16, 24), (2, 1, 16, 24), (2, 3, 16, 24)]
    assert_split_covers_every_parameter(model, 3)
    if name == "mtan":
        assert not model.has_representation
        with pytest.raises(ProblemError, match="no single shared representation"):
            model.forward_with_representation(torch.randn(1, 3, 16, 24))
    else:
        _, representation = model.forward_with_representation(torch.randn(1, 3, 16, 24))
        assert representation.shape == (1, 4, 16, 24)
    with pytest.raises(ProblemError, match="divisible"):
        model(torch.randn(1, 3, 12, 24))


def test_mtan_attention_is_task_specific() -> None:
    """Changing one task's attention parameters changes that task's output only."""
    torch.manual_seed(0)
    model = build_model("mtan", (3, 8, 8), DENSE, widths=(4, 4)).eval()
    x = torch.randn(1, 3, 8, 8)
    before = model(x)
    with torch.no_grad():
        for p in model.task_parameters()[1]:
            p.add_(0.5)
    after = model(x)
    torch.testing.assert_close(after[0], before[0])
    torch.testing.assert_close(after[2], before[2])
    assert not torch.allclose(after[1], before[1])


def test_models_reject_tasks_they_cannot_predict() -> None:
    with pytest.raises(ProblemError, match="dense tasks need"):
        build_model("cnn", (3, 16, 16), DENSE)
    with pytest.raises(ProblemError, match="not all dense"):
        build_model("mtan", (3, 16, 16), CLASSIFY)
    with pytest.raises(ProblemError, match=r"unknown option\(s\) \['depth'\]"):
        build_model("mlp", (4,), CLASSIFY, depth=3)
    with pytest.raises(ProblemError, match="unknown model"):
        build_model("vit", (4,), CLASSIFY)


@pytest.mark.parametrize(
    ("name", "shape", "tasks", "options"),
    [
        ("lenet", (1, 36, 36), CLASSIFY, {}),
        ("mmoe", (7,), CLASSIFY, {"num_experts": 2}),
        ("mtan", (3, 8, 8), DENSE, {"widths": (4, 4)}),
    ],
)
def test_one_mtl_step_fills_every_gradient(name: str, shape: tuple[int, ...], tasks: list[Task], options: dict) -> None:
    torch.manual_seed(0)
    model = build_model(name, shape, tasks, **options)
    x = torch.randn(4, *shape)
    if tasks is DENSE:
        targets = [torch.randint(-1, 5, (4, 8, 8)), torch.rand(4, 1, 8, 8), torch.randn(4, 3, 8, 8)]
    else:
        targets = [torch.randint(0, 10, (4,)), torch.randint(0, 4, (4,)), torch.randint(0, 2, (4,)).float()]
    step = MTLStep.from_model(model, aggregator="mean")
    record = step(lambda: torch.stack([t.kind.loss(o, y) for t, o, y in zip(tasks, model(x), targets, strict=True)]))
    assert record.losses is not None and record.losses.shape == (3,)
    assert all(p.grad is not None for p in model.parameters())
