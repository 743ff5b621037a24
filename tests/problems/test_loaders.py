"""Loaders on tiny fixtures written in each data set's exact on-disk format, and their missing-file errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from flatmtl.workers import problems
from flatmtl.workers.problems.errors import DataNotFoundError, ProblemError
from flatmtl.workers.problems.qm9 import TARGETS, coulomb_features
from tests.problems.fixtures import write_celeba, write_dense, write_office_home


def test_nyuv2_serves_channels_first_maps_for_three_tasks(tmp_path: Path) -> None:
    write_dense(tmp_path, 3, 8, 12, 13, normals=True, label_dir="label")
    problem = problems.build("nyuv2", data_dir=tmp_path)
    assert problem.task_names == ["segmentation", "depth", "normal"] and problem.input_shape == (3, 8, 12)
    test = problem.dataset("test")  # the val/ folder
    assert len(test) == 3
    image, (label, depth, normal) = test[1]
    np.testing.assert_array_equal(image.numpy(), np.moveaxis(np.load(tmp_path / "val/image/1.npy"), -1, 0))
    np.testing.assert_array_equal(label.numpy(), np.load(tmp_path / "val/label/1.npy"))
    np.testing.assert_array_equal(depth.numpy(), np.moveaxis(np.load(tmp_path / "val/depth/1.npy"), -1, 0))
    np.testing.assert_array_equal(normal.numpy(), np.moveaxis(np.load(tmp_path / "val/normal/1.npy"), -1, 0))
    assert label.dtype == torch.int64 and image.shape == (3, 8, 12) and normal.shape == (3, 8, 12)


def test_nyuv2_names_the_missing_file(tmp_path: Path) -> None:
    write_dense(tmp_path, 3, 8, 8, 13, normals=True, label_dir="label")
    (tmp_path / "val" / "normal" / "2.npy").unlink()
    with pytest.raises(DataNotFoundError, match=r"val/normal/2\.npy"):
        problems.build("nyuv2", data_dir=tmp_path)
    with pytest.raises(DataNotFoundError, match=r"elsewhere/train/image"):
        problems.build("nyuv2", data_dir=tmp_path / "elsewhere")


@pytest.mark.parametrize("label_dir", ["label", "label_7"])
def test_cityscapes_reads_seven_class_labels_and_depth(tmp_path: Path, label_dir: str) -> None:
    write_dense(tmp_path, 2, 8, 16, 7, normals=False, label_dir=label_dir)
    problem = problems.build("cityscapes", data_dir=tmp_path)
    image, targets = problem.dataset("train")[0]
    assert [t.name for t in problem.tasks] == ["segmentation", "depth"] and len(targets) == 2
    np.testing.assert_array_equal(targets[0].numpy(), np.load(tmp_path / "train" / label_dir / "0.npy"))
    assert problem.tasks[0].kind.out_channels == 7 and image.shape == (3, 8, 16)


def test_celeba_reads_attributes_and_partitions(tmp_path: Path) -> None:
    attributes = ["Smiling", "Young", "Male"]
    values = write_celeba(tmp_path, attributes, [0, 0, 1, 2, 0, 2])
    problem = problems.build("celeba", data_dir=tmp_path, image_size=16)
    assert problem.task_names == attributes
    sizes = {split: len(problem.dataset(split)) for split in problem.splits}
    assert sizes == {"train": 3, "val": 1, "test": 2}
    image, targets = problem.dataset("test")[1]  # the sixth image
    assert image.shape == (3, 16, 16) and float(image.min()) >= 0 and float(image.max()) <= 1
    assert [float(t) for t in targets] == values[5].tolist()


@pytest.mark.parametrize("missing", ["list_attr_celeba.txt", "list_eval_partition.txt", "img_align_celeba"])
def test_celeba_names_the_missing_file(tmp_path: Path, missing: str) -> None:
    write_celeba(tmp_path, ["Smiling"], [0, 2])
    target = tmp_path / missing
    if target.is_dir():
        for child in target.iterdir():
            child.unlink()
        target.rmdir()
    else:
        target.unlink()
    with pytest.raises(DataNotFoundError, match=missing):
        problems.build("celeba", data_dir=tmp_path)


def test_celeba_names_an_image_missing_on_disk(tmp_path: Path) -> None:
    write_celeba(tmp_path, ["Smiling"], [0, 0])
    (tmp_path / "img_align_celeba" / "000002.jpg").unlink()
    with pytest.raises(DataNotFoundError, match=r"000002\.jpg"):
        problems.build("celeba", data_dir=tmp_path).dataset("train")[1]


def test_office_home_gives_one_dataset_per_domain_and_zips_them_for_training(tmp_path: Path) -> None:
    domains = {"Art": {"Bike": 5, "Chair": 5}, "Clipart": {"Bike": 3, "Desk": 2}}
    write_office_home(tmp_path, domains)
    problem = problems.build("office_home", data_dir=tmp_path, domains=list(domains), image_size=8, test_fraction=0.2)
    assert problem.multi_input and problem.task_names == ["art", "clipart"]
    assert problem.tasks[0].kind.out_channels == 3  # Bike, Chair, Desk
    train, test = problem.task_datasets("train"), problem.task_datasets("test")
    assert [len(d) for d in train] == [8, 4] and [len(d) for d in test] == [2, 1]
    for task in range(2):
        train_files = set(train[task].paths)
        assert not train_files & set(test[task].paths)
        assert len(train_files | set(test[task].paths)) == sum(domains[list(domains)[task]].values())
    zipped = problem.dataset("train")
    assert len(zipped) == 8
    (art, clipart), (art_label, clipart_label) = zipped[5]
    assert art.shape == clipart.shape == (3, 8, 8)
    assert int(clipart_label) == int(train[1].labels[5 % 4])  # the shorter domain wraps around
    assert int(art_label) == int(train[0].labels[5])


def test_office_home_evaluates_each_domain_on_all_of_its_test_images(tmp_path: Path) -> None:
    write_office_home(tmp_path, {"Art": {"Bike": 6, "Chair": 4}, "Clipart": {"Bike": 5}})
    problem = problems.build("office_home", data_dir=tmp_path, domains=["Art", "Clipart"], image_size=8)
    torch.manual_seed(0)
    model = problem.model("cnn", widths=(4,))
    result = problem.evaluate(model, batch_size=1)
    for task, data in zip(problem.task_names, problem.task_datasets("test"), strict=True):
        meter = problem.tasks[0].kind.meter()
        model.eval()
        with torch.no_grad():
            for x, y in data:
                meter.update(model.heads[problem.task_names.index(task)](model.encoder(x[None])), y[None])
        assert result[f"{task}/accuracy"] == pytest.approx(meter.compute()["accuracy"])
        assert meter.state[1] == len(data)


def test_nyuv2_evaluates_every_dense_metric(tmp_path: Path) -> None:
    write_dense(tmp_path, 2, 8, 8, 13, normals=True, label_dir="label")
    problem = problems.build("nyuv2", data_dir=tmp_path)
    torch.manual_seed(0)
    model = problem.model("mtan", widths=(4, 4))
    x, targets = next(iter(torch.utils.data.DataLoader(problem.dataset("train"), batch_size=2)))
    losses = problem.losses(model(x), targets)
    assert losses.shape == (3,) and bool(torch.isfinite(losses).all())
    result = problem.evaluate(model)
    assert set(result) == set(problem.metric_directions())
    assert {"segmentation/miou", "depth/rel_error", "normal/within_11.25"} <= set(result)


def test_office_home_names_the_missing_domain(tmp_path: Path) -> None:
    write_office_home(tmp_path, {"Art": {"Bike": 2}})
    with pytest.raises(DataNotFoundError, match="Product"):
        problems.build("office_home", data_dir=tmp_path, domains=["Art", "Product"])


def _write_qm9(path: Path, molecules: list[tuple[list[int], np.ndarray]]) -> np.ndarray:
    rng = np.random.default_rng(0)
    targets = rng.normal(size=(len(molecules), len(TARGETS)))
    np.savez(
        path,
        N=np.array([len(z) for z, _ in molecules]),
        Z=np.concatenate([z for z, _ in molecules]),
        R=np.concatenate([r for _, r in molecules]),
        **{key: targets[:, i] for i, key in enumerate(TARGETS)},
    )
    return targets


def test_coulomb_features_of_hydrogen_and_a_single_atom() -> None:
    distance = 0.74
    counts = np.array([2, 1])
    numbers = np.array([1.0, 1.0, 8.0])
    positions = np.array([[0, 0, 0], [distance, 0, 0], [5, 5, 5]], dtype=float)
    features = coulomb_features(counts, numbers, positions)
    # H2: [[0.5, 1/d], [1/d, 0.5]] has eigenvalues 0.5 +- 1/d; a lone O atom: 0.5 * 8^2.4, padded with 0.
    np.testing.assert_allclose(features[0, :2], [0.5 + 1 / distance, abs(0.5 - 1 / distance)])
    np.testing.assert_allclose(features[1, :2], [0.5 * 8**2.4, 0.0])
    np.testing.assert_array_equal(features[:, 2:], [[2, 0, 0, 0, 0], [0, 0, 0, 1, 0]])


def test_qm9_standardises_targets_and_reports_mae_in_original_units(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    molecules = [
        (rng.choice([1, 6, 7, 8, 9], size=n).tolist(), rng.normal(size=(n, 3)) * 2) for n in (3, 5, 4, 2, 6, 3)
    ]
    targets = _write_qm9(tmp_path / "qm9.npz", molecules)
    problem = problems.build("qm9", data_file=tmp_path / "qm9.npz", test_size=2)
    assert problem.task_names == list(TARGETS) and problem.input_shape == (6 + 5,)
    train = problem.dataset("train")
    stacked = torch.stack([torch.stack(train[i][1]) for i in range(len(train))])
    torch.testing.assert_close(stacked.mean(0), torch.zeros(len(TARGETS)), atol=1e-5, rtol=0)
    std = targets[problem.rows["train"]].std(0)
    assert problem.tasks[3].kind.scale == pytest.approx(std[3])


def test_qm9_names_missing_file_and_arrays(tmp_path: Path) -> None:
    with pytest.raises(DataNotFoundError, match=r"absent\.npz"):
        problems.build("qm9", data_file=tmp_path / "absent.npz")
    np.savez(tmp_path / "partial.npz", N=np.array([1]), Z=np.array([1]), R=np.zeros((1, 3)))
    with pytest.raises(ProblemError, match="'mu'"):
        problems.build("qm9", data_file=tmp_path / "partial.npz")


def test_yeast_has_fourteen_binary_tasks_and_a_disjoint_seeded_split() -> None:
    problem = problems.build("yeast", seed=0)
    train, test = problem.dataset("train"), problem.dataset("test")
    assert (len(train), len(test), problem.num_tasks, problem.input_shape) == (1500, 917, 14, (103,))
    x, targets = train[0]
    assert x.shape == (103,) and len(targets) == 14 and set(torch.stack(targets).tolist()) <= {0.0, 1.0}
    torch.testing.assert_close(train.inputs.mean(0), torch.zeros(103), atol=1e-4, rtol=0)
    rows = {tuple(r.tolist()) for r in train.inputs}
    assert not rows & {tuple(r.tolist()) for r in test.inputs}
    other = problems.build("yeast", seed=1).dataset("test")
    assert not torch.equal(other.inputs, test.inputs)


def test_registry_rejects_unknown_names_and_options() -> None:
    with pytest.raises(ProblemError, match="unknown problem 'mnist'"):
        problems.build("mnist")
    with pytest.raises(ProblemError, match=r"unknown option\(s\) \['trian_size'\]"):
        problems.build("multi_digits", trian_size=10)
    assert "train_size" in problems.problem_options("multi_digits")
    with pytest.raises(ProblemError, match="seed"):
        problems.build("multi_digits", seed=-1)
    with pytest.raises(ProblemError, match="test_fraction"):
        problems.build("multi_digits", test_fraction=1.5)
