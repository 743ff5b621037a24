"""The ``table`` problem: files read into exactly the tensors of the built-in problem they hold, missing labels
left out of losses and metrics by definition, the training-split transform carried by checkpoints, and bad files
refused with the file, column and row."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pytest
import torch
from torch.nn import functional as F  # noqa: N812

from flatmtl.workers import problems
from flatmtl.workers.mtl import methods
from flatmtl.workers.problems.metrics import MulticlassMeter, MultilabelMeter, binned_auc
from flatmtl.workers.training import RunOptions, train
from flatmtl.workers.training.checkpoint import load, seed_everything
from tests.problems.tables import mixed_columns, mixed_tables, write, yeast_tables
from tests.training.specs import registry_catalog

SUFFIXES = (".csv", ".parquet")


@pytest.mark.parametrize("suffix", SUFFIXES)
def test_yeast_files_encode_to_the_builtin_yeast_tensors(tmp_path: Path, suffix: str) -> None:
    table = problems.build("table", **yeast_tables(tmp_path, suffix))
    yeast = problems.build("yeast")
    assert table.task_names == yeast.task_names
    for split in ("train", "test"):
        ours, theirs = table.dataset(split), yeast.dataset(split)
        assert torch.equal(ours.inputs, theirs.inputs)
        assert all(torch.equal(a, b) for a, b in zip(ours.targets, theirs.targets, strict=True))


def _spec(problem: str, options: dict[str, Any], **overrides: Any) -> dict[str, Any]:
    from flatmtl.service.specs.train import TrainSpec

    document = {
        "problem": problem,
        "problem_options": options,
        "model": "mmoe",
        "model_options": {"num_experts": 2, "expert_hidden": [16], "tower_hidden": 8},
        "epochs": 1,
        "batch_size": 64,
        "seed": 4,
        **overrides,
    }
    return TrainSpec.model_validate(document, context={"catalog": registry_catalog()})


@pytest.mark.slow
def test_yeast_as_csv_and_parquet_tables_trains_to_the_builtin_yeast_metrics(tmp_path: Path) -> None:
    options = RunOptions(plots=False)
    builtin = train(_spec("yeast", {}), tmp_path / "yeast", options=options).summary["final"]
    for suffix in SUFFIXES:
        table_options = yeast_tables(tmp_path, suffix)
        final = train(_spec("table", table_options), tmp_path / suffix[1:], options=options).summary["final"]
        shared = [key for key in builtin if key.startswith("test/")]
        assert len(shared) == 14 * 5
        assert {key: final[key] for key in shared} == {key: builtin[key] for key in shared}
        assert all(0 <= final[f"test/{t}/roc_auc"] <= 1 for t in problems.build("yeast").task_names)


def test_missing_labels_count_for_no_loss_and_no_metric(tmp_path: Path) -> None:
    problem = problems.build("table", **mixed_tables(tmp_path))
    data = problem.dataset("train")
    inputs, targets = data.batch(range(len(data)))
    torch.manual_seed(0)
    outputs = [torch.randn(len(inputs), task.kind.out_channels) for task in problem.tasks]
    losses = problem.losses(outputs, targets)
    clicked, segment, price, tags = targets
    known_click, known_price = ~clicked.isnan(), ~price.isnan()
    assert int((~known_click).sum()) > 0
    assert int((~known_price).sum()) > 0
    expected = [
        F.binary_cross_entropy_with_logits(outputs[0][known_click, 0], clicked[known_click]),
        F.cross_entropy(outputs[1], segment.long()),
        F.mse_loss(outputs[2][known_price, 0], price[known_price]),
        F.binary_cross_entropy_with_logits(outputs[3], tags),
    ]
    torch.testing.assert_close(losses, torch.stack(expected))
    metric_set = problem.metrics()
    metric_set.update(outputs, targets)
    results = metric_set.compute()
    predicted = outputs[0][known_click, 0] > 0
    right = predicted == (clicked[known_click] > 0.5)
    assert results["clicked/accuracy"] == pytest.approx(float(right.double().mean()))
    scale = problem.transform.targets["price"].std
    error = (outputs[2][known_price, 0].double() - price[known_price].double()).abs()
    assert results["price/mae"] == pytest.approx(scale * float(error.mean()))
    assert results["price/rmse"] == pytest.approx(scale * math.sqrt(float(error.square().mean())))


def test_standardisation_is_the_training_files_and_checkpoints_carry_it(tmp_path: Path) -> None:
    options = mixed_tables(tmp_path)
    raw = mixed_columns(400, 1)
    problem = problems.build("table", **options)
    mean, std = problem.transform.mean, problem.transform.std
    assert mean == pytest.approx([raw["x1"].mean(), raw["x2"].mean()])
    assert std == pytest.approx([raw["x1"].std(), raw["x2"].std()])
    assert problem.transform.vocabularies == [["oslo", "paris", "rome"]]
    spec = _spec("table", options, model="mlp", model_options={"hidden": [8]}, epochs=1)
    run = train(spec, tmp_path / "run", options=RunOptions(plots=False))
    saved = load(run.run_dir / "checkpoints" / "latest.pt")["problem"]
    # Another training file refits the transform; the checkpoint's brings back the first one's encoding.
    other = problems.build("table", **{**options, "train_file": options["test_file"]})
    assert not torch.equal(other.dataset("test").inputs, problem.dataset("test").inputs)
    other.load_state_dict(saved)
    assert torch.equal(other.dataset("test").inputs, problem.dataset("test").inputs)
    for ours, theirs in zip(other.dataset("test").targets, problem.dataset("test").targets, strict=True):
        torch.testing.assert_close(ours, theirs, rtol=0, atol=0, equal_nan=True)


@pytest.mark.parametrize(
    ("model", "encoding"), [("mlp", "embedding"), ("mmoe", "onehot"), ("mmoe", "embedding"), ("ple", "onehot")]
)
def test_every_model_trains_every_kind_with_categorical_features(tmp_path: Path, model: str, encoding: str) -> None:
    problem = problems.build("table", **mixed_tables(tmp_path), categorical_encoding=encoding, embedding_dim=3)
    torch.manual_seed(0)
    net = problem.model(model)
    shared, heads = net.shared_parameters(), net.task_parameters()
    every = [id(p) for p in [*shared, *(p for head in heads for p in head)]]
    assert sorted(every) == sorted(id(p) for p in net.parameters())
    inputs, targets = problem.dataset("train").batch(range(64))
    outputs, representation = net.forward_with_representation(inputs)
    # A task's own parameters reach no other task's output: the split the MTL step relies on.
    for k, own in enumerate(heads):
        for j, output in enumerate(outputs):
            grads = torch.autograd.grad(output.sum(), own, allow_unused=True, retain_graph=True)
            touched = any(g is not None and bool(g.abs().sum() > 0) for g in grads)
            assert touched == (j == k), (model, k, j)
    # Every output depends on the shared parameters only through the representation (the chain rule through it
    # gives the whole gradient), as MGDA-UB assumes.
    assert net.has_representation == (model == "mlp" or encoding == "onehot")
    total = sum(output.sum() for output in outputs)
    direct = torch.autograd.grad(total, shared, retain_graph=True, allow_unused=True)
    through = torch.autograd.grad(total, representation, retain_graph=True)[0]
    chained = torch.autograd.grad(representation, shared, grad_outputs=through, allow_unused=True)
    pairs = list(zip(direct, chained, strict=True))
    whole = all(torch.allclose(a, b, atol=1e-6) if a is not None and b is not None else a is b for a, b in pairs)
    assert whole == net.has_representation
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-2)
    before = float(problem.losses(net(inputs), targets).sum().detach())
    for _ in range(30):
        optimizer.zero_grad()
        problem.losses(net(inputs), targets).sum().backward()
        optimizer.step()
    assert float(problem.losses(net(inputs), targets).sum().detach()) < before
    results = problem.evaluate(net, "test")
    assert {"clicked/roc_auc", "segment/macro_f1", "price/rmse", "tags/micro_f1", "tags/hamming_loss"} <= set(results)


def _every_method_once() -> list[tuple[str, str, str]]:
    """(weighting, aggregator, wrapper) triples that run each registered method once, beside the defaults."""
    aggregated = [("ew", m.name, "none") for m in methods("aggregator")]
    weighted = [(m.name, "mean", "none") for m in methods("weighting") if m.name != "ew"]
    wrapped = [("ew", "mean", m.name) for m in methods("wrapper") if m.name != "none"]
    return aggregated + weighted + wrapped


@pytest.fixture(scope="module")
def small_mixed_tables(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Two training batches of 20 rows; some rows lack the binary label, some the regression one."""
    return mixed_tables(tmp_path_factory.mktemp("tables"), train_rows=40, test_rows=20)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("weighting", "aggregator", "wrapper"), _every_method_once(), ids=["-".join(m) for m in _every_method_once()]
)
def test_every_method_trains_the_table_problem_with_missing_labels(
    tmp_path: Path, small_mixed_tables: dict[str, Any], weighting: str, aggregator: str, wrapper: str
) -> None:
    seed = 4
    method = {"weighting": {"name": weighting}, "aggregator": {"name": aggregator}, "wrapper": {"name": wrapper}}
    model = {"model": "mlp", "model_options": {"hidden": [8]}}
    spec = _spec("table", small_mixed_tables, **model, batch_size=20, seed=seed, method=method)
    run = train(spec, tmp_path / "run", options=RunOptions(plots=False))
    assert (run.status, run.summary["steps"]) == ("SUCCEEDED", 2)
    final = run.summary["final"]
    losses = [final[f"train/loss/{task}"] for task in ("clicked", "segment", "price", "tags")]
    assert all(math.isfinite(loss) for loss in losses), losses
    assert all(math.isfinite(final[key]) for key in final if key.startswith("test/")), final
    # The trainer seeds, then builds the problem and the model: the same calls give its initial parameters.
    seed_everything(seed)
    problem = problems.build("table", **small_mixed_tables)
    clicked, _, price, _ = problem.dataset("train").targets
    assert bool(clicked.isnan().any()) and bool(price.isnan().any())
    initial = problem.model(model["model"], **model["model_options"]).state_dict()
    trained = load(run.run_dir / "checkpoints" / "latest.pt")["model"]
    assert trained.keys() == initial.keys()
    for name, before in initial.items():
        assert bool(trained[name].isfinite().all()), name
        assert not torch.equal(trained[name], before), name


def test_binned_auc_is_the_pairwise_probability_a_positive_outranks_a_negative() -> None:
    rng = np.random.default_rng(0)
    scores = rng.permutation(4096)[:300] + 0.5  # distinct bins, plus a tie below
    labels = rng.integers(0, 2, size=300)
    scores[labels == 1][:1] = scores[labels == 0][0]
    positives = np.bincount(scores[labels == 1].astype(int), minlength=4096)
    negatives = np.bincount(scores[labels == 0].astype(int), minlength=4096)
    pos, neg = scores[labels == 1][:, None], scores[labels == 0][None, :]
    pairwise = float(((pos > neg) + 0.5 * (pos == neg)).mean())
    assert binned_auc(torch.tensor(positives, dtype=torch.float64), torch.tensor(negatives, dtype=torch.float64)) == (
        pytest.approx(pairwise)
    )


def test_macro_f1_and_multilabel_scores_follow_their_definitions() -> None:
    target = torch.tensor([0, 1, 2, 2, 1, 0, 3])
    predicted = torch.tensor([0, 2, 2, 2, 1, 1, 0])
    meter = MulticlassMeter(5)
    meter.update(F.one_hot(predicted, 5).double(), target.double())
    f1 = []
    for c in range(5):
        tp = int(((predicted == c) & (target == c)).sum())
        fp, fn = int(((predicted == c) & (target != c)).sum()), int(((predicted != c) & (target == c)).sum())
        if tp + fp + fn:
            f1.append(2 * tp / (2 * tp + fp + fn))
    assert meter.compute()["macro_f1"] == pytest.approx(sum(f1) / len(f1))
    truth = torch.tensor([[1, 0], [1, 1], [0, float("nan")], [0, 0]])
    logits = torch.tensor([[2.0, -1.0], [3.0, -2.0], [1.0, 5.0], [-1.0, -1.0]])
    labels = MultilabelMeter(2)
    labels.update(logits, truth)
    scores = labels.compute()
    # known entries: 7, wrong: (1,1) and (2,0); complete rows 0, 1, 3 of which 0 and 3 are exact
    assert scores["hamming_loss"] == pytest.approx(2 / 7)
    assert scores["subset_accuracy"] == pytest.approx(2 / 3)
    # label 0: tp 2, fp 1, fn 0 -> 4/5; label 1: tp 0, fp 0, fn 1 -> 0; micro: tp 2, fp 1, fn 1 -> 4/6
    assert scores["macro_f1"] == pytest.approx((4 / 5 + 0) / 2)
    assert scores["micro_f1"] == pytest.approx(4 / 6)


def _bad(tmp_path: Path, case: str) -> tuple[dict[str, Any], list[str]]:
    options = mixed_tables(tmp_path)
    columns = mixed_columns(400, 1)
    train_path = Path(options["train_file"])
    if case == "missing file":
        return {**options, "test_file": str(tmp_path / "nowhere.csv")}, ["nowhere.csv", "test_file"]
    if case == "unknown column":
        return {**options, "features": ["x1", "weight", "city"]}, ["'weight'", str(train_path)]
    if case == "string in a regression target":
        columns["price"] = [None if v is None else str(v) for v in columns["price"]]
        columns["price"][37] = "n/a?"
        write(pa.table(columns), train_path)
        return options, [str(train_path), "'price'", "row 38", "'n/a?'", "regression"]
    if case == "class outside classes":
        columns["clicked"][12] = "maybe"
        write(pa.table(columns), train_path)
        return options, [str(train_path), "'clicked'", "row 13", "'maybe'", "['no', 'yes']"]
    if case == "no labelled row":
        columns["price"] = [None] * 400
        write(pa.table(columns), train_path)
        return options, [str(train_path), "'price'", "no labelled row"]
    assert case == "label outside 0/1"
    columns["tag_b"][3] = 2
    write(pa.table(columns), train_path)
    return options, [str(train_path), "'tag_b'", "row 4", "0/1"]


@pytest.mark.parametrize(
    "case",
    [
        "missing file",
        "unknown column",
        "string in a regression target",
        "class outside classes",
        "no labelled row",
        "label outside 0/1",
    ],
)
def test_bad_files_fail_naming_file_column_and_row(tmp_path: Path, case: str) -> None:
    options, expected = _bad(tmp_path, case)
    with pytest.raises((problems.ProblemError, FileNotFoundError)) as caught:
        problems.build("table", **options)
    for fragment in expected:
        assert fragment in str(caught.value), (case, str(caught.value))
