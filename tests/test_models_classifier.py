"""The Table 8 classifiers: structure, the static first layer, dropout over time, learning, the
neuron presets against PLIF's neuron, firing-rate monitoring."""
import math

import pytest
import torch

from models.classifiers import (NEURON_PRESETS, NeuronConfig, SpikingClassifier, build_classifier, rate_mse_loss,
                                table8_config)
from models.training import FiringMonitor, firing_warnings


def test_mnist_network_matches_table8():
    net = build_classifier("mnist")
    convs = [m for m in net.modules() if isinstance(m, torch.nn.Conv2d)]
    linears = [m for m in net.modules() if isinstance(m, torch.nn.Linear)]
    assert ([(c.in_channels, c.out_channels, c.kernel_size, c.bias) for c in convs]
            == [(1, 128, (3, 3), None), (128, 128, (3, 3), None)])
    assert [(lin.in_features, lin.out_features, lin.bias) for lin in linears] == [(6272, 2048, None), (2048, 100, None)]
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
    for _ in range(60):  # the default neurons start silent (as PLIF's): the first steps only wake them
        loss = rate_mse_loss(net(images), labels)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.3 * losses[0]
    first = net.neurons()["features.0"]
    assert first.tau_raw.grad is not None and first.v_th.grad is not None


@pytest.mark.parametrize("bad", [dict(outputs=95), dict(image_size=30), dict(stages=[])])
def test_bad_configs_are_rejected(bad):
    with pytest.raises(ValueError):
        SpikingClassifier(table8_config("mnist", **bad))
    with pytest.raises(ValueError, match="dataset must be mnist, fashion or cifar10, got 'svhn'"):
        table8_config("svhn")


def plif_neuron(x, tau=2.0, v_th=1.0, alpha=2.0):
    """PLIF's neuron as SpikingJelly writes it (decay_input, hard reset to 0, detached reset, ATan
    surrogate on v - v_th), as an explicit loop: x (T, ...) -> spikes (T, ...)."""

    class Spike(torch.autograd.Function):
        @staticmethod
        def forward(ctx, d):
            ctx.save_for_backward(d)
            return (d >= 0).to(d.dtype)

        @staticmethod
        def backward(ctx, grad):
            (d,) = ctx.saved_tensors
            return grad * (alpha / 2) / (1 + (math.pi / 2 * alpha * d) ** 2)

    v = torch.zeros_like(x[0])
    out = []
    for t in range(x.shape[0]):
        v = v + (x[t] - v) / tau
        o = Spike.apply(v - v_th)
        v = v * (1 - o.detach())
        out.append(o)
    return torch.stack(out)


def test_default_neuron_is_plifs_neuron_in_our_units():
    """The default preset (tau 0.5, v_th 2, ATan alpha 1) spikes exactly as PLIF's neuron (init_tau 2,
    v_th 1, decay_input, ATan alpha 2) and passes the same input gradient."""
    assert NeuronConfig() == NeuronConfig.preset("plif")
    torch.manual_seed(0)
    x = (torch.randn(8, 64, 33, dtype=torch.float64) * 1.5 + 0.8).requires_grad_()
    g = torch.randn(8, 64, 33, dtype=torch.float64)
    neuron = NeuronConfig(learnable=False).make(33).double()
    ours = neuron(x)
    (dx_ours,) = torch.autograd.grad(ours, x, g)
    theirs = plif_neuron(x)
    (dx_theirs,) = torch.autograd.grad(theirs, x, g)
    assert 0.05 < theirs.mean().item() < 0.6  # the comparison covers firing and silent neurons
    torch.testing.assert_close(ours, theirs, rtol=0, atol=0)
    torch.testing.assert_close(dx_ours, dx_theirs)


def test_default_neuron_matches_spikingjelly_when_installed():
    neuron_mod = pytest.importorskip("spikingjelly.activation_based.neuron")
    surrogate = pytest.importorskip("spikingjelly.activation_based.surrogate")
    torch.manual_seed(1)
    x = (torch.randn(8, 16, 40) * 1.5 + 0.8).requires_grad_()
    sj = neuron_mod.ParametricLIFNode(init_tau=2.0, v_threshold=1.0, v_reset=0.0, decay_input=True, detach_reset=True,
                                      surrogate_function=surrogate.ATan(), step_mode="m")
    theirs = sj(x)
    (dx_theirs,) = torch.autograd.grad(theirs.sum(), x)
    ours = NeuronConfig(learnable=False).make(40)(x)
    (dx_ours,) = torch.autograd.grad(ours.sum(), x)
    torch.testing.assert_close(ours, theirs, rtol=0, atol=0)
    torch.testing.assert_close(dx_ours, dx_theirs, rtol=1e-4, atol=1e-5)


def test_presets_hold_plifs_and_the_papers_values():
    assert NeuronConfig.preset("paper") == NeuronConfig(tau=0.25, v_th=0.2, surrogate="rect", width=1.0, alpha=2.0)
    assert set(NEURON_PRESETS) == {"plif", "paper"}
    assert NeuronConfig.preset("paper", tau=0.5).tau == 0.5
    with pytest.raises(ValueError, match="name must be one of \\('plif', 'paper'\\), got 'lif'"):
        NeuronConfig.preset("lif")


def test_firing_monitor_counts_training_and_evaluation_apart():
    torch.manual_seed(0)
    net = small_net()
    monitor = FiringMonitor(net.neurons())
    seen = {"train": {}, "eval": {}}
    for name, m in net.neurons().items():
        m.register_forward_hook(lambda m, i, o, name=name: seen["train" if m.training else "eval"]
                                .setdefault(name, []).append(o.detach()))
    images = torch.randn(4, 1, 28, 28) * 3
    net.train()
    net(images)
    net(images[:2])
    net.eval()
    net(images[:3])
    for mode in ("train", "eval"):
        rates = monitor.rates(mode)
        assert set(rates) == set(net.neurons())
        for name, outs in seen[mode].items():
            want = sum(o.sum().item() for o in outs) / sum(o.numel() for o in outs)
            assert rates[name] == pytest.approx(want, rel=1e-6)
    assert 0 < monitor.rates("train")["features.0"] < 1
    monitor.clear()
    assert monitor.rates("train") == {} and monitor.rates("eval") == {}
    monitor.remove()
    net(images)
    assert monitor.rates("eval") == {}


def test_firing_warnings_name_silent_and_saturated_layers():
    messages = firing_warnings({"a": 0.004, "b": 0.2, "c": 0.995, "d": 0.01})
    assert len(messages) == 2
    assert messages[0].startswith("layer a fired at 0.40% of its neuron-steps (silent")
    assert messages[1].startswith("layer c fired at 99.50% of its neuron-steps (saturated")
    assert firing_warnings({"b": 0.5}) == []
