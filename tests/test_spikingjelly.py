"""alif_cuda.spikingjelly against SpikingJelly 2.0 itself: each fused node and its SpikingJelly twin
give the same spikes, state and gradients over several reset_net cycles; accelerate() keeps a
Table 8 network training to the same losses and its checkpoints loadable both ways; what cannot
be fused is left alone and named."""
import copy
import importlib.util
import io
import itertools
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch

pytest.importorskip("spikingjelly")

from spikingjelly.activation_based import functional, layer, neuron, surrogate  # noqa: E402

import alif_cuda  # noqa: E402
from alif_cuda.spikingjelly import (  # noqa: E402
    FusedLIFNode, FusedParametricLIFNode, accelerate, surrogate_options,
)
from conftest import TOL, device_params  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]

SURROGATES = {"atan": lambda: surrogate.ATan(alpha=1.5), "sigmoid": lambda: surrogate.Sigmoid(alpha=3.0),
              "rect": lambda: surrogate.Rect(alpha=2.0)}
CONFIGS = list(itertools.product(["lif", "plif"], [True, False], [0.0, None], [False, True], sorted(SURROGATES)))
CONFIG_IDS = [f"{k}-{'decay' if d else 'nodecay'}-{'hard' if r == 0.0 else 'soft'}-{'detach' if dr else 'attached'}-{s}"
              for k, d, r, dr, s in CONFIGS]


def twins(kind, decay_input, v_reset, detach_reset, surrogate_name, dtype, w_shape=()):
    """A SpikingJelly node and its fused twin with the same arguments and (non-default) w."""
    kwargs = dict(decay_input=decay_input, v_threshold=0.6, v_reset=v_reset, detach_reset=detach_reset,
                  step_mode="m")
    if kind == "lif":
        sj = neuron.LIFNode(tau=1.7, surrogate_function=SURROGATES[surrogate_name](), **kwargs)
        fused = FusedLIFNode(tau=1.7, surrogate_function=SURROGATES[surrogate_name](), **kwargs)
    else:
        sj = neuron.ParametricLIFNode(init_tau=1.7, surrogate_function=SURROGATES[surrogate_name](), **kwargs)
        fused = FusedParametricLIFNode(init_tau=1.7, surrogate_function=SURROGATES[surrogate_name](), **kwargs)
        g = torch.Generator().manual_seed(3)
        w = torch.randn(w_shape, generator=g, dtype=torch.float64) * 0.5 + 0.3
        sj.w = torch.nn.Parameter(w.clone())
        fused.w = torch.nn.Parameter(w.clone())
    return sj.to(dtype), fused.to(dtype)


def run_cycles(node, xs, gs, gvs, cycles):
    """For each cycle: two chained calls (the second starts from the first's v), a loss on both
    outputs and the final v, backward, reset_net. Returns per-cycle spikes, final v and x grads,
    and the accumulated parameter gradients."""
    out = []
    for c in range(cycles):
        x1, x2 = (x.detach().clone().requires_grad_() for x in xs[c])
        s1 = node(x1)
        s2 = node(x2)
        v = node.v
        loss = (s1 * gs[c][0]).sum() + (s2 * gs[c][1]).sum() + (v * gvs[c]).sum()
        loss.backward()
        out.append((s1.detach(), s2.detach(), v.detach(), x1.grad, x2.grad))
        functional.reset_net(node)
        assert node.v == 0.0 if node.v_reset is None else node.v == node.v_reset
    return out, [p.grad.clone() for p in node.parameters()]


def inputs(shape, dtype, cycles, decay_input, device="cpu", seed=0):
    g = torch.Generator().manual_seed(seed)
    # decay_input scales the drive by 1/tau_SJ: a larger input keeps the firing mixed.
    scale = 1.6 if decay_input else 0.8

    def draw():
        return (torch.randn(shape, generator=g, dtype=torch.float64) * scale + 0.3).to(device, dtype)

    xs = [(draw(), draw()) for _ in range(cycles)]
    gs = [(draw(), draw()) for _ in range(cycles)]
    gvs = [draw()[0] for _ in range(cycles)]
    return xs, gs, gvs


def assert_twins_agree(sj, fused, shape, dtype, cycles=3, decay_input=True, device="cpu"):
    sj, fused = sj.to(device), fused.to(device)
    xs, gs, gvs = inputs(shape, dtype, cycles, decay_input, device)
    probe = fused(xs[0][0].clone().requires_grad_())
    assert "AlifFunction" in probe.grad_fn.name(), "the fused node fell back to SpikingJelly's code"
    functional.reset_net(fused)
    ours, our_grads = run_cycles(fused, xs, gs, gvs, cycles)
    theirs, their_grads = run_cycles(sj, xs, gs, gvs, cycles)
    rtol, atol = TOL[dtype]
    rate = torch.stack([o[0] for o in theirs]).mean().item()
    assert 0.05 < rate < 0.8, f"the inputs should give mixed firing, got a rate of {rate:.3f}"
    for (s1, s2, v, g1, g2), (t1, t2, tv, h1, h2) in zip(ours, theirs):
        assert torch.equal(s1, t1) and torch.equal(s2, t2)
        torch.testing.assert_close(v, tv, rtol=rtol, atol=atol)
        torch.testing.assert_close(g1, h1, rtol=rtol, atol=atol)
        torch.testing.assert_close(g2, h2, rtol=rtol, atol=atol)
    assert len(our_grads) == len(their_grads)
    for a, b in zip(our_grads, their_grads):
        torch.testing.assert_close(a, b, rtol=rtol, atol=atol * 10)


@pytest.mark.parametrize("device", device_params())
@pytest.mark.parametrize("kind,decay_input,v_reset,detach_reset,surrogate_name", CONFIGS, ids=CONFIG_IDS)
def test_fused_node_is_spikingjellys_node_float64(kind, decay_input, v_reset, detach_reset, surrogate_name, device):
    sj, fused = twins(kind, decay_input, v_reset, detach_reset, surrogate_name, torch.float64)
    assert_twins_agree(sj, fused, (5, 3, 4, 2), torch.float64, decay_input=decay_input, device=device)


@pytest.mark.parametrize("device", device_params())
@pytest.mark.parametrize("kind,decay_input,v_reset,detach_reset,surrogate_name", [
    ("plif", True, 0.0, True, "atan"),  # the Table 8 network's node
    ("lif", False, None, False, "sigmoid"),
    ("plif", False, 0.0, False, "rect"),
])
def test_fused_node_is_spikingjellys_node_float32(kind, decay_input, v_reset, detach_reset, surrogate_name, device):
    """On CUDA, SpikingJelly runs its own fused kernels here: two kernels compared."""
    sj, fused = twins(kind, decay_input, v_reset, detach_reset, surrogate_name, torch.float32)
    assert_twins_agree(sj, fused, (6, 4, 3, 5), torch.float32, decay_input=decay_input, device=device)


@pytest.mark.parametrize("shape,w_shape", [((5, 3, 4, 2, 3), (4, 1, 1)), ((5, 3, 4), (4,))])
def test_per_channel_w_is_fused(shape, w_shape):
    """A w of one value per channel, which SpikingJelly runs as a Python loop, runs fused."""
    sj, fused = twins("plif", True, 0.0, True, "atan", torch.float64, w_shape=w_shape)
    assert_twins_agree(sj, fused, shape, torch.float64)


def test_step_modes_and_detach_net():
    """Single-step mode runs SpikingJelly's code, and agrees with the fused multi-step run;
    detach_net cuts the graph of the kept v."""
    torch.manual_seed(0)
    node = FusedParametricLIFNode(init_tau=1.5, v_threshold=0.5, surrogate_function=surrogate.ATan(), step_mode="m")
    node = node.double()
    x = torch.randn(6, 3, 7, dtype=torch.float64) + 0.4
    multi = node(x)
    v_multi = node.v.clone()
    functional.reset_net(node)
    functional.set_step_mode(node, "s")
    single = torch.stack([node(x[t]) for t in range(6)])
    assert torch.equal(single, multi)
    torch.testing.assert_close(node.v, v_multi)
    functional.set_step_mode(node, "m")
    functional.reset_net(node)
    node(x.requires_grad_())
    assert node.v.grad_fn is not None
    functional.detach_net(node)
    assert node.v.grad_fn is None


def test_output_monitor_sees_fused_nodes():
    monitor_mod = pytest.importorskip("spikingjelly.activation_based.monitor")
    net = torch.nn.Sequential(layer.Linear(5, 4), neuron.ParametricLIFNode(step_mode="m"))
    functional.set_step_mode(net, "m")
    accelerate(net)
    monitor = monitor_mod.OutputMonitor(net, neuron.BaseNode)
    out = net(torch.randn(3, 2, 5))
    assert len(monitor.records) == 1 and torch.equal(monitor.records[0], out)
    monitor.remove_hooks()


def load_bench_train():
    sys.path.insert(0, str(ROOT / "bench"))
    try:
        spec = importlib.util.spec_from_file_location("bench_train", ROOT / "bench" / "bench_train.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(ROOT / "bench"))
    return module


def train_losses(model, steps, bench):
    torch.manual_seed(5)
    images = torch.rand(2, 1, 28, 28, dtype=torch.float64) * 2
    labels = torch.tensor([3, 7])
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for i in range(steps):
        torch.manual_seed(100 + i)  # the same dropout masks for both networks
        loss = bench.rate_mse_loss(model(images), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses


def test_table8_network_trains_the_same_after_accelerate(monkeypatch):
    bench = load_bench_train()
    monkeypatch.setattr(bench, "T", 3)
    torch.manual_seed(0)
    sj_net = bench.spikingjelly_net("mnist").double()
    fused_net = copy.deepcopy(sj_net)
    report = accelerate(fused_net)
    assert len(report.replaced) == 4 and report.left == []
    assert all(isinstance(m, FusedParametricLIFNode) for m in fused_net.modules() if isinstance(m, neuron.BaseNode))
    theirs = train_losses(sj_net, 3, bench)
    ours = train_losses(fused_net, 3, bench)
    assert theirs[-1] != theirs[0]  # the steps changed the network
    torch.testing.assert_close(torch.tensor(ours), torch.tensor(theirs), rtol=1e-9, atol=1e-12)
    for (name, a), (_, b) in zip(sj_net.named_parameters(), fused_net.named_parameters()):
        torch.testing.assert_close(a, b, rtol=1e-8, atol=1e-10, msg=name)


def test_checkpoints_load_both_ways():
    def net():
        torch.manual_seed(0)
        n = torch.nn.Sequential(layer.Linear(6, 5), neuron.ParametricLIFNode(init_tau=1.8, step_mode="m"),
                                layer.Linear(5, 4), neuron.LIFNode(tau=3.0, v_reset=None, step_mode="m"))
        functional.set_step_mode(n, "m")
        return n

    sj_net, fused_net = net(), net()
    with torch.no_grad():
        sj_net[1].w.fill_(0.75)
    accelerate(fused_net)
    assert list(fused_net.state_dict()) == list(sj_net.state_dict())
    buffer = io.BytesIO()
    torch.save(sj_net.state_dict(), buffer)
    buffer.seek(0)
    fused_net.load_state_dict(torch.load(buffer))
    assert fused_net[1].w.item() == 0.75
    x = torch.randn(4, 3, 6) * 2
    assert torch.equal(fused_net(x), sj_net(x))
    with torch.no_grad():
        fused_net[1].w.fill_(-0.2)
    fresh = net()
    fresh.load_state_dict(fused_net.state_dict())
    functional.reset_net(fused_net)
    assert torch.equal(fresh(x), fused_net(x))


def test_unsupported_nodes_are_left_alone_in_one_warning():
    class MyLIF(neuron.LIFNode):
        pass

    net = torch.nn.Sequential(
        neuron.ParametricLIFNode(step_mode="m"),
        neuron.ParametricLIFNode(v_reset=0.5, step_mode="m"),
        neuron.LIFNode(surrogate_function=surrogate.PiecewiseQuadratic(), step_mode="m"),
        neuron.LIFNode(store_v_seq=True, step_mode="m"),
        neuron.LIFNode(surrogate_function=surrogate.ATan(spiking=False), step_mode="m"),
        neuron.LIFNode(step_mode="s"),
        MyLIF(step_mode="m"),
        neuron.IFNode(step_mode="m"),
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        report = accelerate(net)
    assert len(caught) == 1
    text = str(caught[0].message)
    assert report.replaced == ["0"]
    assert [name for name, _ in report.left] == ["1", "2", "3", "4", "5", "6"]
    for name, reason in report.left:
        assert f"{name}: {reason}" in text
    reasons = dict(report.left)
    assert "v_reset=0.5" in reasons["1"]
    assert "PiecewiseQuadratic has no fused equivalent" in reasons["2"]
    assert "store_v_seq=True" in reasons["3"]
    assert "spiking=False" in reasons["4"]
    assert "step_mode='s'" in reasons["5"]
    assert "MyLIF subclasses" in reasons["6"]
    assert type(net[0]) is FusedParametricLIFNode
    assert [type(m) for m in net[1:]] == [neuron.ParametricLIFNode, neuron.LIFNode, neuron.LIFNode, neuron.LIFNode,
                                          neuron.LIFNode, MyLIF, neuron.IFNode]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert accelerate(net[:1]).replaced == []  # already fused: nothing to do, nothing to say


def test_fused_node_falls_back_when_its_configuration_changes():
    """A node made unsupported after accelerate (store_v_seq, v_reset) runs SpikingJelly's code."""
    sj, fused = twins("plif", True, 0.0, False, "atan", torch.float64)
    for node in (sj, fused):
        node.store_v_seq = True
    x = torch.randn(4, 3, 5, dtype=torch.float64) + 0.8
    assert torch.equal(fused(x), sj(x))
    torch.testing.assert_close(fused.v_seq, sj.v_seq)


def test_surrogate_mapping():
    assert surrogate_options(surrogate.ATan(alpha=3.0)) == dict(surrogate="atan", width=1.0, alpha=3.0)
    assert surrogate_options(surrogate.Sigmoid()) == dict(surrogate="sigmoid", width=1.0, alpha=4.0)
    assert surrogate_options(surrogate.Rect(alpha=4.0)) == dict(surrogate="rect", width=0.25, alpha=None)
    with pytest.raises(ValueError, match="surrogate SoftSign has no fused equivalent"):
        surrogate_options(surrogate.SoftSign())


@pytest.mark.parametrize("sj_surrogate,ours", [
    (lambda: surrogate.ATan(), dict(surrogate="atan", alpha=2.0)),
    (lambda: surrogate.Sigmoid(alpha=3.0), dict(surrogate="sigmoid", alpha=3.0)),
    (lambda: surrogate.Rect(alpha=2.0), dict(surrogate="rect", width=0.5)),
])
@pytest.mark.parametrize("decay_input", [False, True])
def test_alif_module_is_plif(sj_surrogate, ours, decay_input):
    """The documented mapping: ParametricLIFNode(init_tau, decay_input, v_threshold, v_reset=0.0,
    surrogate) is ALIF(tau=1 - 1/init_tau, v_th, surrogate, decay_input) with tau_raw = -w; and
    the surrogate object itself may be given to ALIF."""
    torch.manual_seed(0)
    x = (torch.randn(7, 4, 6, dtype=torch.float64) * 1.2 + 0.3).requires_grad_()
    plif = neuron.ParametricLIFNode(init_tau=2.0, decay_input=decay_input, v_threshold=0.2, v_reset=0.0,
                                    surrogate_function=sj_surrogate(), step_mode="m").double()
    theirs = plif(x)
    (dx_theirs,) = torch.autograd.grad(theirs.sum(), x)
    for neuron_ours in (ALIF_from(ours, decay_input), ALIF_from(dict(surrogate=sj_surrogate()), decay_input)):
        assert torch.equal(neuron_ours.tau_raw, -plif.w)
        spikes = neuron_ours(x)
        (dx_ours,) = torch.autograd.grad(spikes.sum(), x)
        assert torch.equal(spikes, theirs)
        torch.testing.assert_close(dx_ours, dx_theirs)


def ALIF_from(options, decay_input):
    return alif_cuda.ALIF(tau=0.5, v_th=0.2, learnable=False, decay_input=decay_input, **options).double()


def test_alif_works_with_reset_net_and_set_step_mode():
    torch.manual_seed(0)
    net = torch.nn.Sequential(layer.Linear(5, 4), alif_cuda.ALIF(tau=0.6, v_th=0.3, stateful=True))
    x = torch.randn(3, 2, 5)
    first = net(x)
    assert net[1].state is not None
    functional.reset_net(net)
    assert net[1].state is None
    assert torch.equal(net(x), first)
    functional.detach_net(net)
    assert net[1].state.grad_fn is None
    functional.reset_net(net)
    functional.set_step_mode(net, "s")
    assert net[1].step_mode == "s"
    assert torch.equal(torch.stack([net(x[t]) for t in range(3)]), first)


def test_importing_alif_cuda_does_not_import_spikingjelly():
    code = (
        "import sys, torch, alif_cuda\n"
        "n = alif_cuda.ALIF(surrogate='atan')\n"
        "n(torch.randn(3, 2, 4))\n"
        "try:\n"
        "    alif_cuda.ALIF(surrogate=len)\n"
        "except TypeError as e:\n"
        "    assert 'SpikingJelly surrogate object' in str(e), e\n"
        "assert 'spikingjelly' not in sys.modules, 'spikingjelly was imported'\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_alif_refuses_surrogate_objects_it_cannot_reproduce():
    with pytest.raises(ValueError, match="surrogate SoftSign has no fused equivalent"):
        alif_cuda.ALIF(surrogate=surrogate.SoftSign())
    with pytest.raises(ValueError, match="surrogate ATan has spiking=False"):
        alif_cuda.ALIF(surrogate=surrogate.ATan(spiking=False))
    with pytest.raises(ValueError, match="alpha=3.0 was given with the surrogate object .* give one or the other"):
        alif_cuda.ALIF(surrogate=surrogate.ATan(), alpha=3.0)


def test_bench_train_runs_the_accelerated_provider():
    args = ["--device", "cpu", "--nets", "mnist", "--batches", "2", "--precisions", "fp32", "--reps", "1",
            "--providers", "spikingjelly+accelerate", "--no-save"]
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "bench_train.py"), *args], cwd=ROOT / "bench",
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "| mnist | 2 | fp32 | spikingjelly+accelerate |" in proc.stdout
