"""The time-first helpers: per-step wrappers, dropout with one mask over time, voting."""
import pytest
import torch

from alif_cuda.layers import TemporalDropout, TimeDistributed, VotingLayer, repeat_over_time


def test_repeat_over_time_is_a_stride0_view():
    x = torch.randn(3, 4, 5)
    xt = repeat_over_time(x, 6)
    assert xt.shape == (6, 3, 4, 5) and xt.stride(0) == 0 and xt.data_ptr() == x.data_ptr()
    with pytest.raises(ValueError, match="T must be a positive int, got 0"):
        repeat_over_time(x, 0)


def test_time_distributed_applies_the_module_at_every_step():
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(2, 3, 3, padding=1)
    x = torch.randn(4, 5, 2, 6, 6)
    y = TimeDistributed(conv)(x)
    assert y.shape == (4, 5, 3, 6, 6)
    for t in range(4):
        torch.testing.assert_close(y[t], conv(x[t]))
    with pytest.raises(ValueError, match=r"expected \(T, B, \.\.\.\), got shape \(4,\)"):
        TimeDistributed(conv)(torch.randn(4))


def test_time_distributed_batchnorm_normalises_over_time_and_batch():
    bn = torch.nn.BatchNorm1d(3, affine=False)
    x = torch.randn(4, 5, 3) * 3 + 2
    y = TimeDistributed(bn)(x)
    torch.testing.assert_close(y.mean(dim=(0, 1)), torch.zeros(3), atol=1e-5, rtol=0)


def test_temporal_dropout_keeps_one_mask_for_all_steps():
    torch.manual_seed(0)
    drop = TemporalDropout(0.5)
    x = torch.ones(8, 16, 32)
    y = drop(x)
    assert torch.equal(y, y[0].expand_as(y))  # the same mask at every step
    assert set(y.unique().tolist()) == {0.0, 2.0}  # kept values scaled by 1 / (1 - p)
    assert 0.3 < (y[0] == 0).float().mean().item() < 0.7
    drop.eval()
    assert torch.equal(drop(x), x)
    with pytest.raises(ValueError, match=r"p must be in \[0, 1\), got 1"):
        TemporalDropout(1)


def test_voting_layer_averages_groups():
    x = torch.arange(20.0).view(1, 20)
    torch.testing.assert_close(VotingLayer(10)(x), torch.tensor([[4.5, 14.5]]))
    with pytest.raises(ValueError, match=r"the last dim \(15\) must be a multiple of group=10"):
        VotingLayer(10)(torch.zeros(2, 15))
