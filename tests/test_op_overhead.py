"""The glue around the kernels: the ops a forward+backward dispatches (no hidden zero tensors, no
host syncs, no extra launches), eager and compiled, for alif and taid."""
import re

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import alif_cuda
from alif_cuda import ALIF, alif, taid

# Ops that would mean a tensor nobody asked for, a fill, or a host sync.
FORBIDDEN = ("zeros", "zero_", "fill_", "full", "select_backward", "expand_backward", "_local_scalar_dense",
             "item", "_to_copy", "copy_", "lift_fresh")


# Metadata-only ops: no kernel, no memory.
VIEWS = ("aten::detach", "aten::view", "aten::alias", "aten::expand", "aten::unsqueeze", "aten::_unsafe_view")


class OpLog(TorchDispatchMode):
    """The ops dispatched below autograd, without overload names or views."""

    def __init__(self):
        super().__init__()
        self.ops = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.name().split(".")[0]
        if name not in VIEWS:
            self.ops.append(name)
        return func(*args, **(kwargs or {}))


def logged(fn):
    with OpLog() as log:
        fn()
    return log.ops


def assert_clean(ops):
    bad = [op for op in ops if any(op.split("::")[-1].split(".")[0] == f for f in FORBIDDEN)]
    assert not bad, f"unexpected ops {bad} in {ops}"


def inputs(T=5, static=False):
    torch.manual_seed(0)
    base = torch.randn(3, 4, 5, requires_grad=True)
    x = base * 1.0 if static else torch.randn(T, 3, 4, 5, requires_grad=True)
    tau = torch.tensor(0.4, requires_grad=True)
    v_th = torch.tensor(0.2, requires_grad=True)
    return base, x, tau, v_th


@pytest.mark.parametrize("T", [5, 12])
@pytest.mark.parametrize("used", ["spikes", "state", "both"])
def test_alif_forward_backward_dispatches_only_its_ops(T, used):
    """alif_fwd then alif_bwd and nothing else: the unused output's gradient is absent, not a
    zeros tensor, and Python-float parameters make no tensor (after the first call) or sync."""
    _, x, _, _ = inputs(T)
    alif(x, 0.25, 0.2)  # the parameters' tensors are made once

    def run():
        spikes, u_last = alif(x, 0.25, 0.2, return_state=True)
        outs = {"spikes": (spikes,), "state": (u_last,), "both": (spikes, u_last)}[used]
        torch.autograd.grad(outs, (x,), [torch.ones_like(o) for o in outs])

    ops = [op for op in logged(run) if op != "aten::ones_like"]
    assert ops == ["alif_cuda::alif_fwd", "alif_cuda::alif_bwd"], ops


def test_static_input_dispatches_no_expand_gradient():
    """An x expanded from (B, ...): the kernel reads the (B, ...) tensor and writes its gradient;
    no (T, B, ...) gradient and no sum over time."""
    base, y, tau, v_th = inputs(static=True)
    x = y.unsqueeze(0).expand(6, *y.shape)
    g = torch.ones(6, *y.shape)
    ops = logged(lambda: torch.autograd.grad(alif(x, tau, v_th), (base, tau, v_th), g))
    assert_clean(ops)
    assert ops == ["alif_cuda::alif_fwd", "alif_cuda::alif_bwd", "aten::mul"], ops  # mul: y = base * 1


def test_taid_forward_backward_dispatches_only_its_ops():
    s = torch.randn(4, 2, 3, 5, 5, requires_grad=True)
    w = torch.randn(4, 4, requires_grad=True)
    y, attn = taid(s, w, return_attention=True)
    assert not attn.requires_grad
    g = torch.ones_like(y)
    ops = logged(lambda: torch.autograd.grad(taid(s, w), (s, w), g))
    assert ops == ["alif_cuda::taid_fwd", "alif_cuda::taid_bwd"], ops


@pytest.mark.parametrize("tau_param", ["direct", "sigmoid"])
@pytest.mark.parametrize("per_channel", [None, 4])
def test_alif_layer_launch_count(tau_param, per_channel):
    """One ALIF layer: a forward+backward is alif_fwd (one kernel) and alif_bwd (two on CUDA with
    scalar parameters: the fused BPTT and the sum of its block partials), 3 launches, with tau
    stored directly or as a logit (the op applies the sigmoid and its derivative itself)."""
    layer = ALIF(tau_param=tau_param, per_channel=per_channel)
    _, x, _, _ = inputs()
    g = torch.ones(x.shape)
    params = [p for p in layer.parameters()]
    ops = logged(lambda: torch.autograd.grad(layer(x), [x, *params], g))
    assert ops == ["alif_cuda::alif_fwd", "alif_cuda::alif_bwd"], ops


def test_compiled_forward_backward_makes_no_hidden_tensors():
    """Under torch.compile (aot_eager, so the graph's ATen ops are dispatched one by one), the
    joint graph of alif and taid has no zeros, fills or copies either."""
    _, x, tau, v_th = inputs(10)
    s = torch.randn(4, 2, 3, 5, 5, requires_grad=True)
    w = torch.randn(4, 4, requires_grad=True)

    def f(x, tau, v_th, s, w):
        spikes, u_last = alif(x, tau, v_th, return_state=True)
        return spikes, taid(s, w)

    compiled = torch.compile(f, backend="aot_eager", fullgraph=True)
    spikes, y = compiled(x, tau, v_th, s, w)
    g1, g2 = torch.ones_like(spikes), torch.ones_like(y)
    # A dispatch mode would stop torch.compile; the profiler sees the same ATen calls.
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        out = compiled(x, tau, v_th, s, w)
        torch.autograd.grad(out, (x, tau, v_th, s, w), (g1, g2))
    ops = [e.name for e in prof.events()]
    assert_clean(ops)
    for op in ("alif_cuda::alif_fwd", "alif_cuda::alif_bwd", "alif_cuda::taid_fwd", "alif_cuda::taid_bwd"):
        assert ops.count(op) == 1, ops


def test_python_float_parameters_are_cached_and_never_evicted(monkeypatch):
    """A Python float becomes one tensor per (value, dtype, device), kept for good (a CUDA graph
    may read it at every replay); past the cap, values get fresh, correct, uncached tensors."""
    from alif_cuda import ops

    monkeypatch.setattr(ops, "_PARAM_CACHE", {})
    monkeypatch.setattr(ops, "_PARAM_CACHE_MAX", 4)
    x = torch.randn(3, 2, 5)
    first = ops._as_param("tau", 0.5, x, False)
    assert ops._as_param("tau", 0.5, x, False) is first
    assert ops._as_param("tau", 0.5, x.double(), False).dtype == torch.float64
    for value in (0.1, 0.2, 0.3, 0.4, 0.6):
        t = ops._as_param("tau", value, x, False)
        assert t.dtype == torch.float32 and t.item() == torch.tensor(value).item()
    assert len(ops._PARAM_CACHE) == 4
    assert ops._as_param("tau", 0.5, x, False) is first
    late = ops._as_param("tau", 0.6, x, False)
    assert late is not ops._as_param("tau", 0.6, x, False)
    spikes = alif(x, 0.6, 0.05)
    assert torch.equal(spikes, alif(x, torch.tensor(0.6), torch.tensor(0.05)))


def test_cuda_kernels_query_is_cached():
    assert alif_cuda.cuda_kernels_available() is alif_cuda.cuda_kernels_available()
    assert alif_cuda.ops._CUDA_KERNELS is not None


@pytest.mark.skipif(not (torch.cuda.is_available() and alif_cuda.cuda_kernels_available()),
                    reason="needs a visible GPU and a CUDA build of alif_cuda")
def test_no_host_sync_on_cuda():
    """A CUDA forward+backward of alif (Python-float and tensor parameters, time-major, static
    and long enough to checkpoint) and of taid synchronises with the host nowhere:
    torch.cuda.set_sync_debug_mode("error") turns any sync into an error."""
    x = torch.randn(12, 3, 4, 8, device="cuda", requires_grad=True)
    base = torch.randn(3, 4, 8, device="cuda", requires_grad=True)
    tau = torch.tensor(0.4, device="cuda", requires_grad=True)
    v_th = torch.full((4,), 0.2, device="cuda", requires_grad=True)
    s = torch.randn(4, 2, 3, 64, 64, device="cuda", requires_grad=True)
    w = torch.randn(4, 4, device="cuda", requires_grad=True)
    layer = ALIF(per_channel=4).cuda()

    def run():
        spikes = alif(x, 0.25, 0.2)
        torch.autograd.grad(spikes, x, torch.ones_like(spikes))
        spikes = alif(base.unsqueeze(0).expand(6, *base.shape), tau, v_th, surrogate="sigmoid",
                      decay_input=True)
        torch.autograd.grad(spikes, (base, tau, v_th), torch.ones_like(spikes))
        y = taid(s, w)
        torch.autograd.grad(y, (s, w), torch.ones_like(y))
        spikes = layer(x)  # tau given as its logit
        torch.autograd.grad(spikes, (x, *layer.parameters()), torch.ones_like(spikes))

    run()  # first calls: the Python-float parameters' tensors, TAID's launch plan
    torch.cuda.synchronize()
    previous = torch.cuda.get_sync_debug_mode()
    torch.cuda.set_sync_debug_mode("error")
    try:
        run()
    finally:
        torch.cuda.set_sync_debug_mode(previous)
    torch.cuda.synchronize()


@pytest.mark.skipif(not (torch.cuda.is_available() and alif_cuda.cuda_kernels_available()),
                    reason="needs a visible GPU and a CUDA build of alif_cuda")
@pytest.mark.parametrize("tau_param", ["direct", "sigmoid"])
def test_alif_layer_launches_three_kernels_on_cuda(tau_param):
    """One ALIF layer with scalar parameters, forward+backward on CUDA: the forward kernel, the
    BPTT kernel and the sum of its block partials, counted by the CUDA profiler; no memset, copy
    or elementwise kernel (the logit's sigmoid and its derivative run inside those three)."""
    from torch.profiler import ProfilerActivity, profile

    layer = ALIF(tau_param=tau_param).cuda()
    x = torch.randn(5, 3, 4, 8, device="cuda", requires_grad=True)
    g = torch.ones_like(x)
    params = list(layer.parameters())
    torch.autograd.grad(layer(x), [x, *params], g)  # first call: the CUDA context, the kernels
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        torch.autograd.grad(layer(x), [x, *params], g)
        torch.cuda.synchronize()
    on_gpu = [e.name for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]
    assert len(on_gpu) == 3, on_gpu
    assert sum("alif_fwd_kernel" in n for n in on_gpu) == 1, on_gpu
    assert sum("alif_bwd_kernel" in n for n in on_gpu) == 1, on_gpu
    assert sum("sum_partials_kernel" in n for n in on_gpu) == 1, on_gpu


@pytest.mark.skipif(not (torch.cuda.is_available() and alif_cuda.cuda_kernels_available()),
                    reason="needs a visible GPU and a CUDA build of alif_cuda")
def test_python_float_first_seen_inside_cuda_graph_capture():
    """A Python float seen for the first time while a CUDA graph is captured: its tensor is filled
    only when the graph runs, so it must not be cached for later eager calls. The graph's replay
    and the eager call after it both equal the reference."""
    from alif_cuda import ops

    value = 0.123456789  # a value no other test uses
    for key in [k for k in ops._PARAM_CACHE if k[0] == value]:
        del ops._PARAM_CACHE[key]
    x = torch.randn(6, 4, 32, device="cuda")
    want = alif_cuda.alif_ref(x, value, 0.1)
    static_x = x.clone()
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        alif(static_x, 0.5, 0.1)  # warm-up on the capture stream, with another value
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = alif(static_x, value, 0.1)
    assert not any(k[0] == value for k in ops._PARAM_CACHE)
    graph.replay()
    torch.cuda.synchronize()
    assert torch.equal(out, want)
    assert torch.equal(alif(x, value, 0.1), want)


def test_inductor_static_input_makes_no_time_major_buffer():
    """A model compiled with its expand inside (torch.compile(model)): Inductor's forward and
    backward hold no (T, B, ...) buffer, the gradient goes straight from the kernel to the (B, ...)
    tensor. (A compiled function handed an already expanded tensor owes a gradient of that
    tensor's (T, B, ...) shape by definition: keep the expand inside the compiled region.)"""
    from torch._inductor.utils import run_and_get_code

    T = 6
    base, _, tau, v_th = inputs(static=True)

    def f(base, tau, v_th):
        y = base * 2.0
        return alif(y.unsqueeze(0).expand(T, *y.shape), tau, v_th)

    torch._dynamo.reset()
    compiled = torch.compile(f, fullgraph=True)
    g = torch.ones(T, *base.shape)
    grads, codes = run_and_get_code(lambda: torch.autograd.grad(compiled(base, tau, v_th), (base, tau, v_th), g))
    want = torch.autograd.grad(f(base, tau, v_th), (base, tau, v_th), g)
    for got, ref in zip(grads, want):
        assert torch.equal(got, ref)
    assert len(codes) == 2  # the forward and the backward graph
    text = "\n".join(codes)
    assert "alif_cuda.alif_bwd" in text
    allocs = re.findall(r"empty_strided_cpu\(\((\d+),", text)
    assert allocs and str(T) not in allocs, allocs
