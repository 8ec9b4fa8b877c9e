"""The generation metrics' arithmetic against known cases."""
import math

import pytest
import torch

from models.metrics import frechet_distance, gaussian_fit, inception_inputs, inception_score


def test_identical_gaussians_are_at_distance_zero():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(500, 6, generator=g, dtype=torch.float64) @ torch.randn(6, 6, generator=g, dtype=torch.float64)
    mu, sigma = gaussian_fit(a)
    assert abs(frechet_distance(mu, sigma, mu, sigma)) < 1e-8


def test_frechet_distance_hand_computed_cases():
    # 1-D: (0 - 1)^2 + 1 + 4 - 2 sqrt(1 * 4) = 2
    assert frechet_distance(torch.zeros(1), torch.ones(1, 1), torch.ones(1), torch.full((1, 1), 4.0)) == pytest.approx(2.0)
    # Diagonal covariances: sum over dims of (m1 - m2)^2 + (s1 - s2)^2 with s the standard deviations.
    mu1, mu2 = torch.tensor([0.0, 1.0]), torch.tensor([2.0, 1.0])
    s1, s2 = torch.diag(torch.tensor([1.0, 9.0])), torch.diag(torch.tensor([4.0, 1.0]))
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(4 + (1 - 2) ** 2 + (3 - 1) ** 2)
    # Non-commuting covariances: against the definition via an explicit matrix square root.
    a = torch.tensor([[2.0, 0.5], [0.5, 1.0]], dtype=torch.float64)
    b = torch.tensor([[1.0, -0.3], [-0.3, 3.0]], dtype=torch.float64)
    vals, vecs = torch.linalg.eig(a @ b)
    tr_sqrt = vals.sqrt().real.sum().item()
    assert frechet_distance(torch.zeros(2), a, torch.zeros(2), b) == pytest.approx(a.trace().item() + b.trace().item() - 2 * tr_sqrt)


def test_inception_score_known_cases():
    uniform = torch.full((100, 1000), 1e-3)
    assert inception_score(uniform) == pytest.approx((1.0, 0.0))
    confident = torch.eye(10).repeat(10, 1)  # every sample certain, classes balanced: IS = 10
    mean, std = inception_score(confident, splits=10)
    assert mean == pytest.approx(10.0) and std == pytest.approx(0.0, abs=1e-9)
    with pytest.raises(ValueError, match="N >= splits"):
        inception_score(torch.full((5, 3), 1 / 3))


def test_inception_inputs_follow_fsvae():
    grey = torch.tensor([-1.0, 1.0]).view(1, 1, 1, 2).expand(1, 1, 2, 2)
    x = inception_inputs(grey)
    assert x.shape == (1, 3, 299, 299) and x.min().item() == 0 and math.isclose(x.max().item(), 255.0, rel_tol=1e-6)


def test_gaussian_fit_needs_two_samples():
    with pytest.raises(ValueError, match="N >= 2"):
        gaussian_fit(torch.zeros(1, 3))
