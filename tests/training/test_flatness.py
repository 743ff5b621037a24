"""Flatness measures against closed forms on quadratic losses, where the Hessian and the rho-ball maximum are known."""

from __future__ import annotations

import math

import pytest
import torch

from flatmtl.workers.training.flatness import ball_direction, gaussian, rho_sharpness, top_hessian_eigenvalue


def _symmetric(eigenvalues: list[float], seed: int) -> torch.Tensor:
    """Q diag(eigenvalues) Q^T with a random orthogonal Q."""
    generator = torch.Generator().manual_seed(seed)
    n = len(eigenvalues)
    q, _ = torch.linalg.qr(torch.randn(n, n, generator=generator, dtype=torch.float64))
    return q @ torch.diag(torch.tensor(eigenvalues, dtype=torch.float64)) @ q.T


def test_power_iteration_finds_the_top_eigenvalue_of_a_quadratic() -> None:
    a = _symmetric([4.0, 2.5, 1.0, -0.5, 0.1], seed=0)
    b = _symmetric([6.0, -1.0, 0.5], seed=1)
    w = torch.randn(5, dtype=torch.float64, requires_grad=True)
    h = torch.randn(3, dtype=torch.float64, requires_grad=True)
    linear = torch.randn(5, dtype=torch.float64)

    def loss() -> torch.Tensor:  # Hessian: blockdiag(a, b), whatever the linear term and the point
        return 0.5 * w @ a @ w + linear @ w + 0.5 * h @ b @ h

    generator = torch.Generator().manual_seed(2)
    result = top_hessian_eigenvalue(loss, [w], iterations=200, tolerance=1e-13, generator=generator)
    assert result.converged and result.value == pytest.approx(4.0, rel=1e-8)
    result = top_hessian_eigenvalue(loss, [w, h], iterations=200, tolerance=1e-13, generator=generator)
    assert result.converged and result.value == pytest.approx(6.0, rel=1e-8)


def test_power_iteration_reports_the_largest_magnitude() -> None:
    a = _symmetric([-5.0, 3.0, 1.0], seed=3)
    w = torch.randn(3, dtype=torch.float64, requires_grad=True)
    result = top_hessian_eigenvalue(lambda: 0.5 * w @ a @ w, [w], iterations=300, tolerance=1e-13)
    assert result.value == pytest.approx(-5.0, rel=1e-8)


def test_rho_sharpness_of_an_isotropic_quadratic_is_its_closed_form() -> None:
    """L = lam/2 |w|^2: the rho-ball maximum lies along w, giving lam/2 ((|w| + rho)^2 - |w|^2)."""
    lam, rho = 3.0, 0.2
    w = torch.tensor([0.3, -0.4, 1.2], dtype=torch.float64, requires_grad=True)
    start = w.detach().clone()
    value = rho_sharpness(lambda: 0.5 * lam * (w @ w), [w], rho=rho, steps=3)
    norm = float(start.norm())
    assert value == pytest.approx(0.5 * lam * ((norm + rho) ** 2 - norm**2), rel=1e-10)
    assert torch.equal(w.detach(), start)


def test_rho_sharpness_stays_inside_the_ball_and_below_the_quadratic_bound() -> None:
    """For L = 1/2 w^T A w, any |e| <= rho gives L(w+e) - L(w) <= |A w| rho + lam_max rho^2 / 2."""
    a = _symmetric([5.0, 1.0, 0.2, 0.1], seed=4)
    w = torch.randn(4, dtype=torch.float64, generator=torch.Generator().manual_seed(5), requires_grad=True)
    rho = 0.1
    value = rho_sharpness(lambda: 0.5 * w @ a @ w, [w], rho=rho, steps=10)
    bound = float((a @ w.detach()).norm()) * rho + 0.5 * 5.0 * rho**2
    first_order = float((a @ w.detach()).norm()) * rho
    assert first_order * 0.99 <= value <= bound + 1e-12


def test_ball_directions_lie_in_the_ball() -> None:
    generator = torch.Generator().manual_seed(0)
    norms = torch.tensor(
        [float(ball_direction(50, 0.3, generator=generator, dtype=torch.float64).norm()) for _ in range(200)]
    )
    assert norms.max() <= 0.3 + 1e-12
    # uniform in a 50-dimensional ball: P(|e| <= r t) = t^50, so the median radius is r 0.5^(1/50)
    assert float(norms.median()) == pytest.approx(0.3 * 0.5 ** (1 / 50), rel=0.01)
    assert math.isfinite(float(norms.min()))


def test_draws_follow_the_generator_not_the_device_the_model_lives_on() -> None:
    """The power iteration's start is drawn where the generator is (a CPU generator cannot draw on CUDA) and then
    moved, so it is the same vector on every device; ``meta`` stands in for a device the generator is not on."""
    drawn = gaussian(6, generator=torch.Generator().manual_seed(4), like=torch.empty(0, dtype=torch.float64))
    expected = torch.randn(6, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    torch.testing.assert_close(drawn, expected, rtol=0, atol=0)
    elsewhere = gaussian(6, generator=torch.Generator(), like=torch.empty(0, dtype=torch.float64, device="meta"))
    assert (elsewhere.device.type, elsewhere.dtype) == ("meta", torch.float64)
