"""PCGrad, GradVac, GradDrop, RGW and MoCo against their definitions: closed forms for two tasks,
the cosine targets GradVac promises, GradDrop's sign selection, MoCo's recursions, and exact resumes."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor

from flatmtl.workers import mtl
from flatmtl.workers.mtl.aggregators.moco import project_to_simplex
from flatmtl.workers.mtl.errors import MethodError
from flatmtl.workers.mtl.random_weights import sample_simplex_weights


def generator(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def conflicting_pair(cosine: float, size: int = 7, seed: int = 0) -> Tensor:
    """Two gradients of different norms with the given cosine."""
    torch.manual_seed(seed)
    basis, _ = torch.linalg.qr(torch.randn(size, 2, dtype=torch.float64))
    first = 2.0 * basis[:, 0]
    second = 0.5 * (cosine * basis[:, 0] + (1 - cosine**2) ** 0.5 * basis[:, 1])
    return torch.stack([first, second])


def cos(a: Tensor, b: Tensor) -> float:
    return float(a @ b / (a.norm() * b.norm()))


# ---- PCGrad ------------------------------------------------------------------------------------------


def test_pcgrad_two_conflicting_gradients_match_the_closed_form() -> None:
    grads = conflicting_pair(-0.6)
    g1, g2 = grads
    pcgrad = mtl.aggregator("pcgrad")
    projected = pcgrad.coefficients(grads @ grads.T, generator()) @ grads
    assert float(projected[0] @ g2) >= -1e-12
    assert float(projected[1] @ g1) >= -1e-12
    inner = g1 @ g2
    expected = g1 + g2 - inner * (g1 / (g1 @ g1) + g2 / (g2 @ g2))
    torch.testing.assert_close(pcgrad(grads, generator=generator()), expected, rtol=0, atol=1e-12)


def test_pcgrad_leaves_non_conflicting_gradients_unchanged_and_sums_them() -> None:
    torch.manual_seed(1)
    grads = torch.rand(4, 9, dtype=torch.float64)  # positive entries: every inner product > 0
    update = mtl.aggregator("pcgrad")(grads, generator=generator())
    torch.testing.assert_close(update, grads.sum(dim=0), rtol=0, atol=1e-12)


def test_pcgrad_uses_only_the_gram_and_the_given_generator() -> None:
    torch.manual_seed(2)
    grads = torch.randn(5, 30, dtype=torch.float64)
    pcgrad = mtl.aggregator("pcgrad")
    weights = pcgrad.weights(grads @ grads.T, generator=generator(4))
    torch.manual_seed(123)
    update = pcgrad(grads, generator=generator(4))
    after = torch.rand(3)
    torch.manual_seed(123)
    assert torch.equal(after, torch.rand(3))  # the global RNG was not used
    torch.testing.assert_close(update, weights @ grads, rtol=0, atol=1e-12)
    # Projecting g_i' off a conflicting g_j adds a positive multiple of g_j and never touches g_i's own share.
    coefficients = pcgrad.coefficients(grads @ grads.T, generator(5))
    assert torch.all(coefficients.diagonal() == 1.0)
    assert torch.all(coefficients >= 0.0)


# ---- GradVac -----------------------------------------------------------------------------------------


def test_gradvac_with_zero_targets_is_pcgrad() -> None:
    grads = conflicting_pair(-0.4, seed=3)
    gradvac = mtl.aggregator("gradvac", beta=0.5)
    pcgrad = mtl.aggregator("pcgrad")
    torch.testing.assert_close(
        gradvac(grads, generator=generator()), pcgrad(grads, generator=generator()), rtol=0, atol=1e-12
    )


def test_gradvac_raises_pair_cosines_to_the_target_and_beta_one_resets_the_target() -> None:
    grads = conflicting_pair(-0.3, seed=4)
    gradvac = mtl.aggregator("gradvac", beta=1.0)
    gradvac.load_state_dict({"targets": torch.tensor([[0.0, 0.5], [0.5, 0.0]], dtype=torch.float64)})
    corrected = gradvac.coefficients(grads @ grads.T, generator()) @ grads
    assert cos(corrected[0], grads[1]) == pytest.approx(0.5, abs=1e-12)
    assert cos(corrected[1], grads[0]) == pytest.approx(0.5, abs=1e-12)
    # beta = 1: the EMA target becomes the cosine just measured, so the same gradients pass unchanged next.
    targets = gradvac.state_dict()["targets"]
    assert targets[0, 1] == pytest.approx(-0.3, abs=1e-12) and targets[1, 0] == pytest.approx(-0.3, abs=1e-12)
    torch.testing.assert_close(gradvac(grads, generator=generator()), grads.sum(dim=0), rtol=0, atol=1e-9)


def test_gradvac_targets_follow_the_ema() -> None:
    grads = conflicting_pair(0.2, seed=5)
    gradvac = mtl.aggregator("gradvac", beta=0.25)
    gradvac(grads, generator=generator())
    torch.testing.assert_close(
        gradvac.state_dict()["targets"],
        torch.tensor([[0.0, 0.05], [0.05, 0.0]], dtype=torch.float64),
        rtol=0,
        atol=1e-12,
    )


# ---- GradDrop ----------------------------------------------------------------------------------------


def test_graddrop_keeps_one_sign_per_coordinate_chosen_with_probability_its_purity() -> None:
    torch.manual_seed(6)
    grads = torch.randn(3, 500, dtype=torch.float64)
    update = mtl.aggregator("graddrop")(grads, generator=generator())
    positive = grads.clamp_min(0).sum(dim=0)
    negative = grads.clamp_max(0).sum(dim=0)
    assert torch.all(
        torch.isclose(update, positive, rtol=0, atol=1e-12) | torch.isclose(update, negative, rtol=0, atol=1e-12)
    )

    # Constant purity 0.75 (g = 3 and -1 everywhere): the positive side is chosen with probability 0.75.
    size = 20000
    pure = torch.stack([torch.full((size,), 3.0), torch.full((size,), -1.0)]).double()
    chosen_positive = (mtl.aggregator("graddrop")(pure, generator=generator(1)) > 0).double().mean()
    standard_error = (0.75 * 0.25 / size) ** 0.5
    assert abs(float(chosen_positive) - 0.75) < 4 * standard_error


@pytest.mark.parametrize("leak", [0.0, 0.3])
def test_graddrop_sums_the_per_task_masked_gradients_of_algorithm_1(leak: float) -> None:
    torch.manual_seed(5)
    grads = torch.randn(5, 400, dtype=torch.float64)
    grads[:, :50] = grads[:, :50].abs()  # pure coordinates: purity 1
    grads[2, 50:80] = 0.0
    update = mtl.aggregator("graddrop", leak=leak)(grads, generator=generator(2))
    # Algorithm 1 literally, with the uniforms the method draws: M_i = [P > U][g_i > 0] + [P < U][g_i < 0]
    seed = int(torch.randint(2**62, (1,), generator=generator(2)))
    uniform = torch.rand(400, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    purity = 0.5 * (1.0 + grads.sum(dim=0) / grads.abs().sum(dim=0))
    masks = ((purity > uniform) & (grads > 0)) | ((purity < uniform) & (grads < 0))
    expected = ((leak + (1.0 - leak) * masks.double()) * grads).sum(dim=0)
    torch.testing.assert_close(update, expected, rtol=0, atol=1e-12)


def test_graddrop_with_full_leak_is_the_sum() -> None:
    torch.manual_seed(7)
    grads = torch.randn(4, 50, dtype=torch.float64)
    assert torch.equal(mtl.aggregator("graddrop", leak=1.0)(grads, generator=generator()), grads.sum(dim=0))


def test_graddrop_advances_the_step_generator_equally_whatever_the_shard_size() -> None:
    small, large = generator(8), generator(8)
    mtl.aggregator("graddrop")(torch.randn(2, 10), generator=small)
    mtl.aggregator("graddrop")(torch.randn(2, 1000), generator=large)
    assert torch.equal(torch.rand(4, generator=small), torch.rand(4, generator=large))


# ---- RGW ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("distribution", ["normal", "dirichlet", "constrained_bernoulli"])
def test_rgw_update_is_the_drawn_simplex_weights_times_the_gradients(distribution: str) -> None:
    torch.manual_seed(9)
    grads = torch.randn(4, 12, dtype=torch.float64)
    update = mtl.aggregator("rgw", distribution=distribution)(grads, generator=generator(3))
    weights = sample_simplex_weights(distribution, 4, generator(3), dtype=torch.float64)
    torch.testing.assert_close(update, weights @ grads, rtol=0, atol=1e-12)


# ---- MoCo --------------------------------------------------------------------------------------------


def test_simplex_projection_satisfies_its_optimality_condition() -> None:
    torch.manual_seed(10)
    for _ in range(20):
        vector = 2 * torch.randn(5, dtype=torch.float64)
        projected = project_to_simplex(vector)
        assert torch.all(projected >= 0) and float(projected.sum()) == pytest.approx(1.0, abs=1e-12)
        others = torch.distributions.Dirichlet(torch.ones(5, dtype=torch.float64)).sample((50,))
        assert torch.all((others - projected) @ (vector - projected) <= 1e-12)  # variational inequality


def test_moco_tracks_gradients_steps_lambda_and_returns_y_transpose_lambda() -> None:
    torch.manual_seed(11)
    first, second = torch.randn(3, 20, dtype=torch.float64), torch.randn(3, 20, dtype=torch.float64)
    beta, gamma, rho = 0.3, 0.05, 0.1
    moco = mtl.aggregator("moco", beta=beta, gamma=gamma, rho=rho)
    lam = torch.full((3,), 1 / 3, dtype=torch.float64)
    tracked = first
    for step, grads in enumerate([first, second]):
        if step:
            tracked = tracked - beta * (tracked - grads)
        lam = project_to_simplex(lam - gamma * (tracked @ tracked.T + rho * torch.eye(3, dtype=torch.float64)) @ lam)
        update = moco(grads)
        state = moco.state_dict()
        torch.testing.assert_close(state["tracked"], tracked, rtol=0, atol=1e-12)
        torch.testing.assert_close(state["weights"], lam, rtol=0, atol=1e-12)
        torch.testing.assert_close(update, state["tracked"].T @ state["weights"], rtol=0, atol=1e-12)


def test_moco_on_two_parameter_shards_equals_moco_on_whole_parameters() -> None:
    torch.manual_seed(12)
    grads = torch.randn(3, 10, dtype=torch.float64)
    whole = mtl.aggregator("moco")(grads)
    left, right = grads[:, :4], grads[:, 4:]
    shards = [
        mtl.aggregator("moco")(left, reduce_gram=lambda gram: gram + right @ right.T),
        mtl.aggregator("moco")(right, reduce_gram=lambda gram: gram + left @ left.T),
    ]
    torch.testing.assert_close(torch.cat(shards), whole, rtol=0, atol=1e-12)


# ---- state and validation ----------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "hparams"), [("gradvac", {"beta": 0.5}), ("moco", {"beta": 0.5, "rho": 0.1})])
def test_restored_aggregator_takes_the_identical_next_step(name: str, hparams: dict[str, float]) -> None:
    torch.manual_seed(13)
    steps = [torch.randn(3, 16, dtype=torch.float64) for _ in range(3)]
    original, step_generator = mtl.aggregator(name, **hparams), generator(14)
    for grads in steps[:2]:
        original(grads, generator=step_generator)
    restored, restored_generator = mtl.aggregator(name, **hparams), generator(99)
    restored.load_state_dict(original.state_dict())
    restored_generator.set_state(step_generator.get_state())
    assert torch.equal(original(steps[2], generator=step_generator), restored(steps[2], generator=restored_generator))


@pytest.mark.parametrize(
    ("name", "hparams", "parameter"),
    [
        ("gradvac", {"beta": 0.0}, "gradvac.beta"),
        ("gradvac", {"beta": 1.5}, "gradvac.beta"),
        ("moco", {"beta": 2.0}, "moco.beta"),
        ("moco", {"gamma": 0.0}, "moco.gamma"),
        ("moco", {"rho": -1.0}, "moco.rho"),
        ("graddrop", {"leak": 1.2}, "graddrop.leak"),
        ("rgw", {"distribution": "gamma"}, "rgw.distribution"),
    ],
)
def test_bad_hyper_parameters_raise_naming_the_parameter(name: str, hparams: dict[str, object], parameter: str) -> None:
    with pytest.raises(MethodError, match=parameter.replace(".", r"\.")):
        mtl.aggregator(name, **hparams)


def test_moco_rejects_a_changed_number_of_tasks() -> None:
    moco = mtl.aggregator("moco")
    moco(torch.randn(3, 5))
    with pytest.raises(MethodError, match="K=3"):
        moco(torch.randn(2, 5))
