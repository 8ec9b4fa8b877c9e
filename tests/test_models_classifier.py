"""The Table 8 classifiers: structure, the static first layer, dropout over time, learning."""
import pytest
import torch

from alif_cuda import ALIF
from models.classifiers import NeuronConfig, SpikingClassifier, build_classifier, rate_mse_loss, table8_config


def test_mnist_network_matches_table8():
    net = build_classifier("mnist")
    convs = [m for m in net.modules() if isinstance(m, torch.nn.Conv2d)]
    linears = [m for m in net.modules() if isinstance(m, torch.nn.Linear)]
    assert [(c.in_channels, c.out_channels, c.kernel_size, c.bias) for c in convs] == [(1, 128, (3, 3), None), (128, 128, (3, 3), None)]
    assert [(l.in_features, l.out_features, l.bias) for l in linears] == [(6272, 2048, None), (2048, 100, None)]
    assert len(net.neurons()) == 4
    rates = net(torch.randn(3, 1, 28, 28))
    assert rates.shape == (3, 10) and (rates >= 0).all() and (rates <= 1).all()


def test_cifar10_network_matches_table8():
    net = build_classifier("cifar10")
    convs = [m for m in net.modules() if isinstance(m, torch.nn.Conv2d)]
    assert len(convs) == 6 and convs[0].in_channels == 3 and all(c.out_channels == 256 for c in convs)
    assert [m.in_features for m in net.modules() if isinstance(m, torch.nn.Linear)] == [256 * 8 * 8, 2048]
    assert len(net.neurons()) == 8
    drops = [m for m in net.modules() if m.__class__.__name__ == "TemporalDropout"]
    assert len(drops) == 2
    assert len([m for m in build_classifier("cifar10", second_dropout=False).modules()
                if m.__class__.__name__ == "TemporalDropout"]) == 1
    assert net(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def small_net(**neuron):
    return SpikingClassifier(table8_config("mnist", channels=8, hidden=32, neuron=NeuronConfig(**neuron)))


def test_first_alif_gets_a_static_input():
    """The first conv + BN runs once; the first ALIF sees it expanded over T with stride 0."""
    net = small_net()
    seen = {}
    first = net.neurons()["features.0"]
    first.register_forward_pre_hook(lambda m, inp: seen.update(shape=inp[0].shape, stride=inp[0].stride()))
    calls = []
    net.static[0].register_forward_hook(lambda m, i, o: calls.append(o.shape))
    net(torch.randn(5, 1, 28, 28))
    assert seen["shape"] == (8, 5, 8, 28, 28) and seen["stride"][0] == 0
    assert calls == [(5, 8, 28, 28)]


def test_neuron_options_reach_every_layer():
    fixed = small_net(learnable=False)
    assert not any("tau" in n or "v_th" in n for n, _ in fixed.named_parameters())
    per_channel = small_net(per_channel=True, tau=0.5, v_th=0.5, surrogate="atan")
    shapes = [tuple(m.v_th.shape) for m in per_channel.neurons().values()]
    assert shapes == [(8,), (8,), (32,), (100,)]
    for m in per_channel.neurons().values():
        assert m.surrogate == "atan" and m.detach_reset
        torch.testing.assert_close(m.tau, torch.full_like(m.tau, 0.5))


def test_rate_mse_loss_is_mse_to_one_hot():
    rates = torch.tensor([[0.2, 0.8], [0.5, 0.5]])
    want = ((rates - torch.tensor([[0.0, 1.0], [1.0, 0.0]])) ** 2).mean()
    torch.testing.assert_close(rate_mse_loss(rates, torch.tensor([1, 0])), want)


def test_loss_decreases_on_a_fixed_batch():
    torch.manual_seed(0)
    net = small_net()
    net.classifier[1].p = 0.0  # no dropout: a deterministic objective
    net.classifier[4].p = 0.0
    images, labels = torch.randn(16, 1, 28, 28), torch.arange(16) % 10
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    losses = []
    for _ in range(30):
        loss = rate_mse_loss(net(images), labels)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.6 * losses[0]
    first = net.neurons()["features.0"]
    assert first.tau_raw.grad is not None and first.v_th.grad is not None


@pytest.mark.parametrize("bad", [dict(outputs=95), dict(image_size=30), dict(stages=[])])
def test_bad_configs_are_rejected(bad):
    with pytest.raises(ValueError):
        SpikingClassifier(table8_config("mnist", **bad))
    with pytest.raises(ValueError, match="dataset must be mnist, fashion or cifar10, got 'svhn'"):
        table8_config("svhn")
