"""The generation metrics' arithmetic against known cases."""
import math

import pytest
import torch

import numpy as np
from PIL import Image

from models.metrics import (constant_samples, fid_inputs, frechet_distance, gaussian_fit, inception_score, is_inputs,
                            pil_bicubic_matrix)


def test_identical_gaussians_are_at_distance_zero():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(500, 6, generator=g, dtype=torch.float64) @ torch.randn(6, 6, generator=g, dtype=torch.float64)
    mu, sigma = gaussian_fit(a)
    assert abs(frechet_distance(mu, sigma, mu, sigma)) < 1e-8


def test_frechet_distance_hand_computed_cases():
    # 1-D: (0 - 1)^2 + 1 + 4 - 2 sqrt(1 * 4) = 2
    assert (frechet_distance(torch.zeros(1), torch.ones(1, 1), torch.ones(1), torch.full((1, 1), 4.0))
            == pytest.approx(2.0))
    # Diagonal covariances: sum over dims of (m1 - m2)^2 + (s1 - s2)^2 with s the standard deviations.
    mu1, mu2 = torch.tensor([0.0, 1.0]), torch.tensor([2.0, 1.0])
    s1, s2 = torch.diag(torch.tensor([1.0, 9.0])), torch.diag(torch.tensor([4.0, 1.0]))
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(4 + (1 - 2) ** 2 + (3 - 1) ** 2)
    # Non-commuting covariances: against the definition via an explicit matrix square root.
    a = torch.tensor([[2.0, 0.5], [0.5, 1.0]], dtype=torch.float64)
    b = torch.tensor([[1.0, -0.3], [-0.3, 3.0]], dtype=torch.float64)
    vals, vecs = torch.linalg.eig(a @ b)
    tr_sqrt = vals.sqrt().real.sum().item()
    assert (frechet_distance(torch.zeros(2), a, torch.zeros(2), b)
            == pytest.approx(a.trace().item() + b.trace().item() - 2 * tr_sqrt))


def test_inception_score_known_cases():
    uniform = torch.full((100, 1000), 1e-3)
    assert inception_score(uniform) == pytest.approx((1.0, 0.0))
    confident = torch.eye(10).repeat(10, 1)  # every sample certain, classes balanced: IS = 10
    mean, std = inception_score(confident, splits=10)
    assert mean == pytest.approx(10.0) and std == pytest.approx(0.0, abs=1e-9)
    with pytest.raises(ValueError, match="N >= splits"):
        inception_score(torch.full((5, 3), 1 / 3))


def test_is_inputs_follow_fsvae():
    # FSVAE's IS: [0, 255], grey repeated to RGB, nn.Upsample(299, bilinear) (align_corners False).
    grey = torch.tensor([-1.0, 1.0]).view(1, 1, 1, 2).expand(1, 1, 2, 2)
    x = is_inputs(grey)
    assert x.shape == (1, 3, 299, 299) and x.min().item() == 0 and math.isclose(x.max().item(), 255.0, rel_tol=1e-6)
    img = torch.rand(2, 1, 32, 32) * 2 - 1
    want = torch.nn.Upsample(size=(299, 299), mode="bilinear")((img + 1) / 2 * 255).repeat(1, 3, 1, 1)
    torch.testing.assert_close(is_inputs(img), want)


@pytest.mark.parametrize("n_in,n_out", [(32, 299), (64, 299), (7, 3)])
def test_bicubic_matrix_is_pils_resize(n_in, n_out):
    g = np.random.default_rng(0)
    img = (g.random((n_in, n_in)) * 255).astype(np.float32)
    pil = np.asarray(Image.fromarray(img, mode="F").resize((n_out, n_out), resample=Image.BICUBIC))
    w = pil_bicubic_matrix(n_in, n_out)
    ours = (w @ torch.from_numpy(img).double() @ w.T).numpy()
    np.testing.assert_allclose(ours, pil, rtol=0, atol=2e-3)


def test_fid_inputs_follow_clean_fid():
    # clean-fid: [0, 255] per channel, PIL bicubic to 299 in float, clip to [0, 255], (x - 128) / 128.
    img = torch.rand(2, 1, 32, 32) * 2 - 1
    img[0, 0, :4] = -1.0
    img[0, 0, 4:8] = 1.0  # sharp edges make the bicubic overshoot, which must be clipped
    x = fid_inputs(img)
    assert x.shape == (2, 3, 299, 299) and torch.equal(x[:, 0], x[:, 2])
    for b in range(2):
        a = ((img[b, 0] + 1) * 127.5).numpy().astype(np.float32)
        pil = np.asarray(Image.fromarray(a, mode="F").resize((299, 299), resample=Image.BICUBIC)).clip(0, 255)
        np.testing.assert_allclose(x[b, 1].numpy(), (pil - 128) / 128, rtol=0, atol=2e-5)
    assert x.min().item() >= -1 and x.max().item() <= 127 / 128 + 1e-6


def test_constant_samples():
    assert constant_samples(torch.zeros(5, 1, 4, 4) + 0.3)
    varied = torch.zeros(5, 1, 4, 4)
    varied[2, 0, 1, 1] = 0.5
    assert not constant_samples(varied)
    assert not constant_samples(torch.zeros(1, 1, 4, 4))  # one sample: nothing to compare


def test_gaussian_fit_needs_two_samples():
    with pytest.raises(ValueError, match="N >= 2"):
        gaussian_fit(torch.zeros(1, 3))
