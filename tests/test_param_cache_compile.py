"""Python-float parameters outside plain eager mode: nothing made under inference mode, a fake,
proxy or user dispatch mode, or torch.compile is cached, and later eager and training calls with
the same floats work. torch.compile(fullgraph=True) of alif and ALIF with dynamic shapes and
symbolic floats (dynamic=True, and automatic dynamic once a float changes) equals eager."""
import copy

import pytest
import torch
from torch._dynamo.testing import CompileCounterWithBackend
from torch._subclasses.fake_tensor import FakeTensor, FakeTensorMode
from torch.fx.experimental.proxy_tensor import make_fx
from torch.utils._python_dispatch import TorchDispatchMode

from alif_cuda import ALIF, alif, alif_ref, ops
from alif_cuda.layers import repeat_over_time


@pytest.fixture
def cache(monkeypatch):
    """An empty _PARAM_CACHE for this test (the module's own is left as it was)."""
    fresh = {}
    monkeypatch.setattr(ops, "_PARAM_CACHE", fresh)
    return fresh


def grads_of(fn, x, *params):
    """fn(x, *params) and the gradients of a weighted sum of its outputs w.r.t. x and params."""
    out = fn(x, *params)
    outs = out if isinstance(out, tuple) else (out,)
    loss = sum((o * torch.linspace(-1, 2, o.numel()).view(o.shape).to(o.dtype)).sum() for o in outs)
    return outs, torch.autograd.grad(loss, (x, *params))


def assert_same(got, want):
    """Spikes bit for bit, states and gradients to float rounding."""
    (outs, grads), (outs_ref, grads_ref) = got, want
    assert torch.equal(outs[0], outs_ref[0])
    for a, b in zip(outs[1:] + grads, outs_ref[1:] + grads_ref):
        torch.testing.assert_close(a, b)


def atan_alif(x, tau=0.3, v_th=0.2, op=alif):
    return op(x, tau, v_th, surrogate="atan", return_state=True)


class RecordingMode(TorchDispatchMode):
    """A user's dispatch mode: records the ATen ops it sees and runs them."""

    def __init__(self):
        super().__init__()
        self.ops = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops.append(func.name())
        return func(*args, **(kwargs or {}))


def test_inference_mode_then_training_with_the_same_float(cache):
    torch.manual_seed(0)
    x = torch.randn(7, 2, 3, requires_grad=True)
    with torch.inference_mode():
        spikes = alif(x, 0.3, 0.2, surrogate="atan")
        assert torch.equal(spikes, alif_ref(x, 0.3, 0.2, surrogate="atan"))
    assert cache == {}
    want = grads_of(lambda x: atan_alif(x, op=alif_ref), x)
    assert_same(grads_of(atan_alif, x), want)
    cached = ops._as_param("tau", 0.3, x, False)
    assert cache and all(not t.is_inference() for t in cache.values())
    # A cached (normal) tensor is handed into inference mode, and training works after it again.
    with torch.inference_mode():
        assert ops._as_param("tau", 0.3, x, False) is cached
        alif(x, 0.3, 0.2, surrogate="atan")
    assert_same(grads_of(atan_alif, x), want)


@pytest.mark.parametrize("first", ["fake", "eager"])
def test_fake_mode_trace_then_eager_calls(cache, first):
    """A fake-mode forward+backward with the floats an eager call uses, before it or after it: the
    fake call gets fake parameters (never a cached real one), nothing fake is cached, and the eager
    calls equal the reference."""
    torch.manual_seed(0)
    x = torch.randn(9, 2, 4, requires_grad=True)
    want = grads_of(lambda x: atan_alif(x, 0.35, 0.15, op=alif_ref), x)
    if first == "eager":
        assert_same(grads_of(lambda x: atan_alif(x, 0.35, 0.15), x), want)
    cached_before = dict(cache)
    with FakeTensorMode() as mode:
        x_fake = mode.from_tensor(x)
        spikes, u_last = atan_alif(x_fake, 0.35, 0.15)
        (grad_x,) = torch.autograd.grad(spikes.sum() + u_last.sum(), x_fake)
        assert isinstance(spikes, FakeTensor) and isinstance(grad_x, FakeTensor)
        assert spikes.shape == x.shape and grad_x.shape == x.shape
    assert cache == cached_before
    assert_same(grads_of(lambda x: atan_alif(x, 0.35, 0.15), x), want)
    assert cache and not any(isinstance(t, FakeTensor) for t in cache.values())


@pytest.mark.parametrize("tracing_mode", ["real", "symbolic"])
def test_make_fx_traces_a_fresh_fill_and_caches_nothing(cache, tracing_mode):
    """Under a proxy mode the parameters are filled inside the traced graph, whether or not eager
    calls cached the value, and the graph runs like alif."""
    torch.manual_seed(0)
    x = torch.randn(5, 2, 3)
    traced_cold = make_fx(lambda x: alif(x, 0.45, 0.1), tracing_mode=tracing_mode)(x)
    assert cache == {}
    alif(x, 0.45, 0.1)
    cached = dict(cache)
    traced_warm = make_fx(lambda x: alif(x, 0.45, 0.1), tracing_mode=tracing_mode)(x)
    assert cache == cached
    for traced in (traced_cold, traced_warm):
        fills = [n for n in traced.graph.nodes if n.target is torch.ops.aten.full.default]
        assert len(fills) == 2  # tau and v_th
        assert torch.equal(traced(x), alif_ref(x, 0.45, 0.1))


def test_a_user_dispatch_mode_caches_nothing_but_gets_the_cached_tensors(cache):
    """A first-seen float under a user's dispatch mode gets a fresh fill that is not kept; a value
    cached by an eager call is handed out under the mode without a fill."""
    x = torch.randn(4, 3, 2)
    with RecordingMode() as mode:
        spikes = alif(x, 0.55, 0.05)
    assert cache == {} and mode.ops.count("aten::full") == 2
    assert torch.equal(spikes, alif_ref(x, 0.55, 0.05))
    alif(x, 0.55, 0.05)
    assert len(cache) == 2
    with RecordingMode() as mode:
        assert torch.equal(alif(x, 0.55, 0.05), spikes)
    assert "aten::full" not in mode.ops and len(cache) == 2


def many_alifs(x, tau, v_th, width, alpha):
    """alif over the options' combinations, one compiled graph for all: rect/atan/sigmoid, hard and
    soft reset, detach_reset, decay_input, return_state, tau given directly and as its logit, and
    an x expanded over time."""
    static = x[0] * 1.5
    outs = (
        alif(x, tau, v_th, width=width),
        *alif(x, tau, v_th, surrogate="atan", alpha=alpha, reset="soft", detach_reset=True,
              return_state=True),
        alif(x, tau, v_th, surrogate="sigmoid", decay_input=True, tau_param="sigmoid"),
        *alif(static.unsqueeze(0).expand(x.shape[0], *static.shape), tau, v_th, surrogate="atan",
              tau_param="sigmoid", return_state=True),
    )
    return tuple(outs)


@pytest.fixture
def compile_dynamic():
    """torch.compile(fn, fullgraph=True, dynamic=True) with the aot_eager backend (the fake kernels
    and the joint forward+backward graph, without Inductor's C++ build), and its compile counter;
    Dynamo starts and ends the test with no compiled code."""
    torch._dynamo.reset()
    counter = CompileCounterWithBackend("aot_eager")
    yield lambda fn: torch.compile(fn, backend=counter, fullgraph=True, dynamic=True), counter
    torch._dynamo.reset()


def param_cases():
    def per_channel(value):
        return torch.linspace(value - 0.1, value + 0.1, 4).requires_grad_()

    return {
        "float": lambda: (0.4, 0.2),
        "tensor": lambda: (torch.tensor(0.4, requires_grad=True), torch.tensor(0.2, requires_grad=True)),
        "per-channel": lambda: (per_channel(0.4), per_channel(0.2)),
        "float-tau-tensor-vth": lambda: (0.4, torch.tensor(0.2, requires_grad=True)),
    }


@pytest.mark.parametrize("params", list(param_cases()))
def test_compiled_alif_dynamic_equals_eager(compile_dynamic, cache, params):
    compile, _ = compile_dynamic
    compiled = compile(many_alifs)
    torch.manual_seed(0)
    tau, v_th = param_cases()[params]()
    tensors = tuple(p for p in (tau, v_th) if isinstance(p, torch.Tensor))
    xs = [torch.randn(T, 3, 4, 2, requires_grad=True) for T in (5, 11)]  # 11: checkpoints

    def run(fn, x):
        return grads_of(lambda x, *ts: fn(x, tau, v_th, 0.7, 3.0), x, *tensors)

    got = [run(compiled, x) for x in xs]
    assert cache == {}  # the compiled graph makes its own parameters
    for x, g in zip(xs, got):
        assert_same(g, run(many_alifs, x))


def test_compiled_alif_dynamic_new_floats_and_sizes_do_not_recompile(compile_dynamic):
    """New float values and new batch and feature sizes reuse the graph. (T stays: the op takes
    an expanded x's step count as an int, so that call specialises T.)"""
    compile, counter = compile_dynamic
    compiled = compile(many_alifs)
    torch.manual_seed(0)
    x = torch.randn(6, 2, 4, 3, requires_grad=True)
    assert_same(grads_of(lambda x: compiled(x, 0.3, 0.25, 0.7, 3.0), x),
                grads_of(lambda x: many_alifs(x, 0.3, 0.25, 0.7, 3.0), x))
    frames = counter.frame_count
    for tau, v_th, shape in ((0.5, 0.1, (6, 2, 4, 3)), (0.65, 0.3, (6, 3, 5, 5)), (0.2, 0.05, (6, 4, 3, 2))):
        x = torch.randn(shape, requires_grad=True)
        assert_same(grads_of(lambda x: compiled(x, tau, v_th, 0.7, 3.0), x),
                    grads_of(lambda x: many_alifs(x, tau, v_th, 0.7, 3.0), x))
    assert counter.frame_count == frames


def test_compiled_alif_default_dynamic_float_tau_changing_three_times(cache):
    """dynamic=None: the first tau is a constant, the second makes it dynamic (one recompile), and
    the third and fourth reuse that graph; no graph break, no float cached."""
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    counter = CompileCounterWithBackend("aot_eager")

    def f(x, tau):
        return alif(x, tau, 0.2, surrogate="atan", return_state=True)

    compiled = torch.compile(f, backend=counter, fullgraph=True)
    torch.manual_seed(0)
    x = torch.randn(6, 2, 5, requires_grad=True)
    taus = (0.4, 0.5, 0.6, 0.7)
    frames, got = [], []
    for tau in taus:
        got.append(grads_of(lambda x: compiled(x, tau), x))
        frames.append(counter.frame_count)
    assert frames[1] == frames[2] == frames[3] <= 2, frames
    assert not torch._dynamo.utils.counters["graph_break"]
    assert cache == {}
    for tau, g in zip(taus, got):
        assert_same(g, grads_of(lambda x: f(x, tau), x))
    torch._dynamo.reset()


def test_compiled_alif_still_refuses_a_bad_width():
    """Under torch.compile width is not checked in Python (it may be symbolic); the C++ op
    refuses it when it runs."""
    torch._dynamo.reset()
    compiled = torch.compile(lambda x, w: alif(x, 0.5, 0.2, width=w), backend="aot_eager",
                             fullgraph=True, dynamic=True)
    with pytest.raises(RuntimeError, match=r"width must be > 0, got nan"):
        compiled(torch.randn(4, 2, 3), float("nan"))
    torch._dynamo.reset()


def alif_net():
    return torch.nn.Sequential(
        ALIF(),
        ALIF(tau_param="direct", tau=0.4, per_channel=4, surrogate="atan", reset="soft"),
        ALIF(per_channel=4, surrogate="sigmoid", decay_input=True, detach_reset=True),
        ALIF(stateful=True),
    )


def test_compiled_alif_module_dynamic_equals_eager():
    torch._dynamo.reset()
    torch.manual_seed(0)
    net = alif_net()
    twin = copy.deepcopy(net)
    counter = CompileCounterWithBackend("aot_eager")
    compiled = torch.compile(net, backend=counter, fullgraph=True, dynamic=True)
    frames = None
    for shape in ((5, 2, 4, 3), (7, 3, 4, 6)):
        x = torch.randn(shape, requires_grad=True) * 2
        for module in (net, twin):
            module[3].reset()
        got = grads_of(lambda x, *ps: compiled(x), x, *net.parameters())
        want = grads_of(lambda x, *ps: twin(x), x, *twin.parameters())
        assert_same(got, want)
        torch.testing.assert_close(net[3].state, twin[3].state)
        frames = counter.frame_count if frames is None else frames
    assert counter.frame_count == frames  # the second shape reuses the graph
    torch._dynamo.reset()


def test_repeat_over_time_takes_a_symbolic_T():
    traced = make_fx(lambda x: repeat_over_time(x[0], x.shape[0]), tracing_mode="symbolic")(torch.ones(3, 2))
    x = torch.randn(5, 4)
    assert torch.equal(traced(x), x[0].expand(5, 4))


def test_fused_spikingjelly_nodes_compile_with_dynamic_shapes():
    """FusedLIFNode / FusedParametricLIFNode under torch.compile(fullgraph=True, dynamic=True):
    the surrogate's alpha, symbolic there, is checked by the op, not in Python."""
    pytest.importorskip("spikingjelly")
    from spikingjelly.activation_based import functional, surrogate

    from alif_cuda.spikingjelly import FusedLIFNode, FusedParametricLIFNode

    torch.manual_seed(0)
    x = torch.randn(6, 2, 5) * 2
    for cls in (FusedLIFNode, FusedParametricLIFNode):
        torch._dynamo.reset()
        node = cls(step_mode="m", surrogate_function=surrogate.ATan(alpha=3.0))
        compiled = torch.compile(node, backend="aot_eager", fullgraph=True, dynamic=True)
        got = compiled(x)
        functional.reset_net(node)
        want = node(x)
        functional.reset_net(node)
        assert torch.equal(got, want) and got.any()
    torch._dynamo.reset()
