"""``qm9`` (optional): 11 molecular property regressions on QM9, without graph libraries.

On-disk format: one NPZ file (``data_file``) in the layout of DimeNet's ``qm9_eV.npz`` export, with
``N`` [M] atoms per molecule, ``Z`` [sum N] atomic numbers, ``R`` [sum N, 3] positions (Angstrom), and one
[M] array per target. The 11 targets are the standard MTL set (Nash-MTL, FAMO):
mu, alpha, homo, lumo, r2, zpve, U0, U, H, G, cv.

Each molecule becomes a fixed-length vector: the eigenvalues of its Coulomb matrix (Rupp et al., 2012;
C_ii = Z_i^2.4 / 2, C_ij = Z_i Z_j / |R_i - R_j|) sorted by magnitude and zero-padded to the largest
molecule, followed by its count of H, C, N, O and F atoms. Features and targets are standardised with
training statistics; losses are MSE on standardised targets and MAE is reported in the original units.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from flatmtl.workers.problems.base import Problem, TaskTensorDataset
from flatmtl.workers.problems.errors import DataNotFoundError, ProblemError
from flatmtl.workers.problems.tasks import Regression, Task

TARGETS = ("mu", "alpha", "homo", "lumo", "r2", "zpve", "U0", "U", "H", "G", "cv")
ELEMENTS = (1, 6, 7, 8, 9)
EIGEN_CHUNK = 4096


def coulomb_features(counts: np.ndarray, numbers: np.ndarray, positions: np.ndarray) -> np.ndarray:
    """[M, A + 5]: sorted |eigenvalue| spectrum of each Coulomb matrix (A = largest molecule) and element counts."""
    size = int(counts.max())
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    slot = np.arange(len(numbers)) - np.repeat(starts, counts)
    molecule = np.repeat(np.arange(len(counts)), counts)
    z = np.zeros((len(counts), size))
    r = np.zeros((len(counts), size, 3))
    z[molecule, slot], r[molecule, slot] = numbers, positions
    spectra = np.empty((len(counts), size))
    for begin in range(0, len(counts), EIGEN_CHUNK):
        zc, rc = z[begin : begin + EIGEN_CHUNK], r[begin : begin + EIGEN_CHUNK]
        distance = np.linalg.norm(rc[:, :, None] - rc[:, None, :], axis=-1)
        with np.errstate(divide="ignore", invalid="ignore"):
            matrix = np.where(distance > 0, zc[:, :, None] * zc[:, None, :] / distance, 0.0)
        diagonal = np.arange(size)
        matrix[:, diagonal, diagonal] = 0.5 * zc**2.4
        eigenvalues = np.linalg.eigvalsh(matrix)
        spectra[begin : begin + EIGEN_CHUNK] = -np.sort(-np.abs(eigenvalues), axis=1)
    element_counts = np.stack([(z == e).sum(axis=1) for e in ELEMENTS], axis=1)
    return np.concatenate([spectra, element_counts], axis=1)


class QM9(Problem):
    name = "qm9"
    model_names = ("mlp", "mmoe")
    default_model = "mlp"

    def __init__(self, *, data_file: str | Path, seed: int = 0, test_size: int = 10_000) -> None:
        super().__init__(seed=seed)
        path = Path(data_file)
        if not path.is_file():
            raise DataNotFoundError(
                path, "expected a QM9 NPZ with arrays N, Z, R and the 11 targets " + ", ".join(TARGETS)
            )
        with np.load(path) as data:
            missing = [key for key in ("N", "Z", "R", *TARGETS) if key not in data.files]
            if missing:
                raise ProblemError(f"{path}: missing array(s) {missing}; the file has {sorted(data.files)}")
            counts = data["N"].astype(np.int64)
            self.features = coulomb_features(counts, data["Z"].astype(np.float64), data["R"].astype(np.float64))
            self.targets = np.stack([data[key].astype(np.float64) for key in TARGETS], axis=1)
        if not 0 < test_size < len(counts):
            raise ProblemError(f"qm9: test_size must be between 1 and {len(counts) - 1}, got {test_size}")
        order = np.random.default_rng([self.seed, 0]).permutation(len(counts))
        self.rows = {"test": order[:test_size], "train": order[test_size:]}
        train = self.rows["train"]
        self.feature_mean, self.feature_std = self.features[train].mean(0), self.features[train].std(0)
        self.target_mean, self.target_std = self.targets[train].mean(0), self.targets[train].std(0)
        self.target_std = np.where(self.target_std > 0, self.target_std, 1.0)
        self.tasks = [Task(key, Regression(scale=float(s))) for key, s in zip(TARGETS, self.target_std, strict=True)]
        self.input_shape = (self.features.shape[1],)

    def _load(self, split: str) -> TaskTensorDataset:
        rows = self.rows[split]
        std = np.where(self.feature_std > 0, self.feature_std, 1.0)
        inputs = torch.from_numpy((self.features[rows] - self.feature_mean) / std).float()
        targets = torch.from_numpy((self.targets[rows] - self.target_mean) / self.target_std).float()
        return TaskTensorDataset(inputs, list(targets.T.contiguous()))
