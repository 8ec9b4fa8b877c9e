"""The replaying alif kernels: bit-identical to the saved-h algorithm they replaced (an explicit
time loop here), every value type of the shared code (the CUDA kernels' too) executed on the CPU,
chunk and lane tails, sliced input, and what the forward keeps for backward."""
import itertools
import math
import os
import platform
from contextlib import contextmanager

import pytest
import torch

from alif_cuda import alif, alif_ref
from conftest import TOL

CHUNK = 8  # csrc/alif_math.h kChunk
# The CPU kernels' value types: the default (Vectorized in the widest copy the CPU runs: AVX-512,
# AVX2 or the baseline), Vectorized in the baseline and in the AVX2 copy, and the ones a CUDA
# thread runs: a scalar, Lanes<float, 4> (float32's 16-byte path), Lanes<float, 8> (float16's).
VALUE_TYPES = {"vectorized": 0, "scalar": 1, "lanes4": 2, "lanes8": 3, "baseline": 4, "avx2": 5}
FLAGS = list(itertools.product(["rect", "atan"], ["hard", "soft"], [False, True]))


@contextmanager
def cpu_value_type(name):
    previous = torch.ops.alif_cuda._set_cpu_value_type(VALUE_TYPES[name])
    try:
        yield
    finally:
        torch.ops.alif_cuda._set_cpu_value_type(previous)


def inputs(T, step_shape, dtype, per_channel, *, static=False, seed=0, u0=True):
    g = torch.Generator().manual_seed(seed)
    x_shape = step_shape if static else (T, *step_shape)
    x = (torch.randn(x_shape, generator=g, dtype=torch.float64) * 0.6 + 0.15).to(dtype)
    pshape = (step_shape[1],) if per_channel else ()
    p_dtype = torch.float64 if dtype == torch.float64 else torch.float32
    tau = (torch.rand(pshape, generator=g, dtype=torch.float64) * 0.8 + 0.1).to(p_dtype)
    v_th = (torch.rand(pshape, generator=g, dtype=torch.float64) * 0.4 + 0.1).to(p_dtype)
    u = (torch.randn(step_shape, generator=g, dtype=torch.float64) * 0.2).to(dtype) if u0 else None
    seq = (T, *step_shape)
    gs = torch.randn(seq, generator=g, dtype=torch.float64).to(dtype)
    gu = torch.randn(step_shape, generator=g, dtype=torch.float64).to(dtype)
    return x, tau, v_th, u, gs, gu


WIDTH, ALPHA = 0.7, 2.5  # the surrogate options every run here uses
CPU_SUM_BLOCK = 2048  # csrc/alif_math.h kCpuSumBlock


def run_ops(x, tau, v_th, u0, gs, gu, *, static, T, reset, detach, surrogate, decay=False):
    """Forward and backward through the kernels directly (no autograd): the outputs and grads."""
    steps = T if static else None
    opts = (reset, True, detach, surrogate, WIDTH, ALPHA)
    spikes, u_last, u_ckpt = torch.ops.alif_cuda.alif_fwd(x, tau, v_th, u0, steps, *opts, decay)
    assert u_ckpt.shape[0] == (0 if static or T <= CHUNK else (T - 1) // CHUNK)
    grads = torch.ops.alif_cuda.alif_bwd(
        gs, gu, x, u_ckpt, steps, tau, v_th, u0, reset, detach, surrogate, WIDTH, ALPHA,
        u0 is not None, decay,
    )
    return (spikes, u_last, *grads)


def _ordered_sum(values):
    """Sum in float64, element after element (cumsum is sequential): the CPU kernels' order."""
    return values.double().cumsum(-1)[..., -1]


def saved_h_ref(x, tau, v_th, u0, gs, gu, *, static, T, reset, detach, surrogate):
    """What run_ops computes, by the saved-h algorithm the replaying kernels replaced: the forward
    keeps every h_t, the backward walks them back step by step. Each operation is one torch op in
    the kernels' math dtype, in the kernels' order (so every rounding is theirs); the per-neuron
    dL/dtau and dL/dv_th terms are summed over time in that dtype, then over neurons in float64 in
    the CPU kernels' fixed order (blocks of 2048 neurons, then the blocks; or per channel)."""
    acc = torch.float64 if x.dtype == torch.float64 else torch.float32
    step = tuple(x.shape) if static else tuple(x.shape[1:])
    per_channel = tau.dim() == 1 or v_th.dim() == 1

    def param(p):
        return p.to(acc).reshape((-1,) + (1,) * (len(step) - 2)) if p.dim() == 1 else p.to(acc)

    tau_a, vth_a = param(tau), param(v_th)
    soft = reset == "soft"
    width, alpha = torch.tensor(WIDTH, dtype=acc), torch.tensor(ALPHA, dtype=acc)

    def spike(h):
        return (h >= vth_a).to(acc)

    def reset_of(h, o):
        return h - vth_a * o if soft else h * (1 - o)

    def surrogate_of(d):
        if surrogate == "rect":
            half = width / 2
            return (d < half).to(acc) * (d > -half).to(acc) / width
        z = torch.tensor(math.pi / 2, dtype=acc) * alpha * d
        return (alpha / 2) / (1 + z * z)

    u_start = u0.to(acc) if u0 is not None else torch.zeros(step, dtype=acc)
    u, hs, spikes = u_start, [], []
    for t in range(T):
        h = tau_a * u + (x if static else x[t]).to(acc)
        o = spike(h)
        hs.append(h)
        spikes.append(o.to(x.dtype))
        u = reset_of(h, o)
    u_last = u.to(x.dtype)

    du = gu.to(acc)
    dtau = torch.zeros(step, dtype=acc)
    dvth = torch.zeros(step, dtype=acc)
    gx_sum = torch.zeros(step, dtype=acc)
    grad_x = [None] * T
    for t in range(T - 1, -1, -1):
        h = hs[t]
        u_prev = reset_of(hs[t - 1], spike(hs[t - 1])) if t > 0 else u_start
        o, s = spike(h), surrogate_of(h - vth_a)
        g = gs[t].to(acc)
        g_total = g if detach else g - du * (vth_a if soft else h)
        dh = s * g_total + (du if soft else du * (1 - o))
        dtau = dtau + dh * u_prev
        dvth = dvth + ((-s) * g_total - du * o if soft else (-s) * g_total)
        if static:
            gx_sum = gx_sum + dh
        else:
            grad_x[t] = dh.to(x.dtype)
        du = tau_a * dh

    def param_grad(terms, p):
        if per_channel:
            B, C = step[0], step[1]
            sums = _ordered_sum(terms.reshape(B, C, -1).transpose(0, 1).reshape(C, -1)).to(acc)
            return sums.sum().to(p.dtype) if p.dim() == 0 else sums.to(p.dtype)
        flat = terms.reshape(-1)
        total = 0.0
        for b0 in range(0, flat.numel(), CPU_SUM_BLOCK):
            total += _ordered_sum(flat[b0:b0 + CPU_SUM_BLOCK]).item()
        return torch.tensor(total, dtype=torch.float64).to(acc).to(p.dtype)

    return (
        torch.stack(spikes), u_last,
        gx_sum.to(x.dtype) if static else torch.stack(grad_x),
        param_grad(dtau, tau), param_grad(dvth, v_th),
        du.to(x.dtype) if u0 is not None else torch.empty(0, dtype=x.dtype),
    )


def assert_bitwise(got, want):
    for i, (a, b) in enumerate(zip(got, want)):
        assert a.shape == b.shape and a.dtype == b.dtype, i
        assert torch.equal(a, b), f"output {i} differs: max {(a.double() - b.double()).abs().max()}"


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("T", [1, 7, 8, 9, 16, 17, 30])
@pytest.mark.parametrize("static", [False, True])
@pytest.mark.parametrize("per_channel", [False, True])
def test_replay_is_bitwise_the_saved_h_path(dtype, T, static, per_channel):
    """Replaying h from x (and checkpoints every 8 steps) gives the saved-h loop's exact bits:
    spikes, state and every gradient, T below, at and past the chunk, and not a multiple of it."""
    x, tau, v_th, u0, gs, gu = inputs(T, (3, 4, 5), dtype, per_channel, static=static)
    for surrogate, reset, detach in FLAGS:
        kw = dict(static=static, T=T, reset=reset, detach=detach, surrogate=surrogate)
        assert_bitwise(run_ops(x, tau, v_th, u0, gs, gu, **kw),
                       saved_h_ref(x, tau, v_th, u0, gs, gu, **kw))


@pytest.mark.parametrize(
    "dtype,value_type",
    [(torch.float32, v) for v in VALUE_TYPES]
    + [(torch.float64, v) for v in ("vectorized", "baseline", "avx2", "scalar")],
)
@pytest.mark.parametrize("static", [False, True])
def test_every_value_type_runs_the_same_arithmetic(dtype, value_type, static):
    """Every instantiation of the shared per-neuron code the CUDA kernels use (scalar, Lanes of 4
    and 8), run here on the CPU over all template flags, matches the saved-h loop bit for bit;
    N = 37 leaves a tail in every lane count."""
    T = 19
    x, tau, v_th, u0, gs, gu = inputs(T, (37,), dtype, False, static=static, seed=2)
    for surrogate, reset, detach in FLAGS:
        kw = dict(static=static, T=T, reset=reset, detach=detach, surrogate=surrogate)
        want = saved_h_ref(x, tau, v_th, u0, gs, gu, **kw)
        with cpu_value_type(value_type):
            got = run_ops(x, tau, v_th, u0, gs, gu, **kw)
        assert_bitwise(got, want)


@pytest.mark.parametrize("value_type", list(VALUE_TYPES))
@pytest.mark.parametrize("N", [1, 3, 4, 5, 8, 9, 15, 17])
def test_lane_count_tails(value_type, N):
    """N around every lane count (1, 4, 8): the last group is partial."""
    T = 10
    x, tau, v_th, u0, gs, gu = inputs(T, (N,), torch.float32, False, seed=N)
    kw = dict(static=False, T=T, reset="hard", detach=False, surrogate="rect")
    with cpu_value_type(value_type):
        got = run_ops(x, tau, v_th, u0, gs, gu, **kw)
    assert_bitwise(got, saved_h_ref(x, tau, v_th, u0, gs, gu, **kw))


@pytest.mark.parametrize("dtype,value_type", [(torch.float32, v) for v in VALUE_TYPES if v != "vectorized"]
                         + [(torch.float64, "scalar"), (torch.float64, "baseline"),
                            (torch.float64, "avx2"), (torch.bfloat16, "baseline"),
                            (torch.bfloat16, "avx2")])
@pytest.mark.parametrize("static", [False, True])
def test_sigmoid_and_decay_input_same_bits_in_every_value_type(dtype, value_type, static):
    """The sigmoid surrogate and decay_input (the saved-h kernels never had them): every value
    type the CUDA kernels use gives the default's (Vectorized) bits, over all flags, with tails
    in every lane count (N = 37)."""
    T = 19
    x, tau, v_th, u0, gs, gu = inputs(T, (37,), dtype, False, static=static, seed=3)
    for surrogate, reset, detach in itertools.product(["sigmoid", "atan"], ["hard", "soft"], [False, True]):
        for decay in (False, True) if surrogate == "atan" else (True, False):
            kw = dict(static=static, T=T, reset=reset, detach=detach, surrogate=surrogate, decay=decay)
            want = run_ops(x, tau, v_th, u0, gs, gu, **kw)
            with cpu_value_type(value_type):
                got = run_ops(x, tau, v_th, u0, gs, gu, **kw)
            assert_bitwise(got, want)


def test_default_kernels_are_the_widest_copy_the_cpu_runs():
    """On x86-64 the default CPU kernels are the AVX-512 copy where the CPU has AVX-512 (F, BW,
    VL, DQ), else the AVX2 one where it has AVX2 (with FMA and F16C)."""
    flags = set(open("/proc/cpuinfo").read().split()) if os.path.exists("/proc/cpuinfo") else set()
    if platform.machine() != "x86_64":
        pytest.skip("not an x86-64 CPU")
    avx2 = {"avx2", "fma", "f16c"} <= flags
    avx512 = avx2 and {"avx512f", "avx512bw", "avx512vl", "avx512dq"} <= flags
    want = "avx512" if avx512 else "avx2" if avx2 else "baseline"
    assert torch.ops.alif_cuda._cpu_kernels_isa() == want


@pytest.mark.parametrize("value_type", ["vectorized", "baseline", "lanes4"])
def test_sliced_and_misaligned_input(value_type):
    """x starting one element into its storage (misaligned for 16-byte access) and a strided
    slice: results as for a fresh copy."""
    T, N = 11, 29
    storage = torch.randn(T * N + 1) * 0.6 + 0.15
    x_mis = storage[1:].view(T, N)
    assert x_mis.is_contiguous() and x_mis.storage_offset() == 1
    x_str = (torch.randn(T, 2 * N) * 0.6 + 0.15)[:, ::2]
    tau, v_th = torch.tensor(0.6), torch.tensor(0.3)
    gs, gu = torch.randn(T, N), torch.randn(N)
    kw = dict(static=False, T=T, reset="soft", detach=False, surrogate="atan")
    with cpu_value_type(value_type):
        for x in (x_mis, x_str):
            assert_bitwise(run_ops(x, tau, v_th, None, gs, gu, **kw),
                           run_ops(x.clone(), tau, v_th, None, gs, gu, **kw))


@pytest.mark.parametrize("value_type", list(VALUE_TYPES))
def test_per_channel_with_one_neuron_per_channel_and_sample(value_type):
    """(B, C) steps with per-channel parameters (I = 1, the linear-layer case): lanes of one
    group span channels."""
    T = 12
    x, tau, v_th, u0, gs, gu = inputs(T, (5, 7), torch.float32, True, seed=4)
    kw = dict(static=False, T=T, reset="hard", detach=True, surrogate="atan")
    with cpu_value_type(value_type):
        got = run_ops(x, tau, v_th, u0, gs, gu, **kw)
    assert_bitwise(got, saved_h_ref(x, tau, v_th, u0, gs, gu, **kw))
    spikes_ref = alif_ref(x, tau, v_th, u0, reset="hard", detach_reset=True, surrogate="atan")
    assert torch.equal(got[0], spikes_ref)


@pytest.mark.parametrize("dtype,T", [(torch.float32, 5), (torch.float32, 20), (torch.bfloat16, 9)])
def test_reduced_and_full_precision_against_reference(dtype, T):
    """Through alif() and autograd: spikes exact, gradients within the dtype's tolerance."""
    x, tau, v_th, u0, gs, gu = inputs(T, (2, 3, 6), dtype, True, seed=5)
    leaves = [t.clone().requires_grad_() for t in (x, tau, v_th, u0)]
    spikes, u_last = alif(*leaves, surrogate="atan", return_state=True)
    ref_leaves = [t.detach().float().requires_grad_() for t in leaves]
    spikes_r, u_r = alif_ref(*ref_leaves, surrogate="atan", return_state=True)
    assert torch.equal(spikes, spikes_r.to(dtype))
    got = torch.autograd.grad((spikes, u_last), leaves, (gs, gu))
    want = torch.autograd.grad((spikes_r, u_r), ref_leaves, (gs.float(), gu.float()))
    rtol, atol = TOL[dtype]
    for a, b in zip(got, want):
        torch.testing.assert_close(a.float(), b, rtol=rtol, atol=atol * max(1.0, b.abs().max().item()))


@pytest.mark.parametrize("T", [6, 8, 21])
@pytest.mark.parametrize("static", [False, True])
def test_forward_saves_x_and_per_neuron_tensors_only(T, static):
    """What autograd keeps: the user's x itself (no copy), tau, v_th, u0 and, for T > 8, the
    state every 8 steps ((T - 1) // 8 per-neuron rows); never a (T, N) tensor."""
    step = (4, 3, 5)
    N = 4 * 3 * 5
    base = torch.randn(step, requires_grad=True)
    x = base.unsqueeze(0).expand(T, *step) if static else torch.randn(T, *step, requires_grad=True)
    tau = torch.tensor(0.4, requires_grad=True)
    v_th = torch.tensor(0.2, requires_grad=True)
    u0 = torch.zeros(step, requires_grad=True)
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        spikes = alif(x, tau, v_th, u0)
    source = base if static else x
    assert any(t is source or (t.data_ptr() == source.data_ptr() and t.shape == source.shape) for t in saved)
    per_neuron = [t for t in saved if t.data_ptr() != source.data_ptr()]
    n_ckpt = 0 if static else (T - 1) // CHUNK
    for t in per_neuron:
        assert t.numel() <= max(N, n_ckpt * N), tuple(t.shape)
    assert sum(t.numel() for t in per_neuron) <= 2 + N + n_ckpt * N
    spikes.sum().backward()
    assert source.grad.shape == source.shape


def test_cpu_autocast_runs_alif_in_bfloat16_storage():
    """Under CPU autocast a linear layer hands ALIF bfloat16 currents: the op takes them as they
    are (float32 math inside), spikes equal the float32 reference on the same values."""
    from alif_cuda import ALIF

    torch.manual_seed(0)
    lin, layer = torch.nn.Linear(6, 8), ALIF(v_th=0.1)
    x = torch.randn(4, 3, 6)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        h = lin(x)
        spikes = layer(h)
    assert h.dtype == spikes.dtype == torch.bfloat16
    ref = alif_ref(h.detach().float(), layer.tau.detach().float(), layer.v_th.detach().float())
    assert torch.equal(spikes.float(), ref) and 0 < ref.mean() < 1
    spikes.float().sum().backward()
    assert lin.weight.grad is not None and torch.isfinite(layer.tau_raw.grad)


def test_reference_accepts_python_float_parameters():
    x = torch.randn(6, 2, 3, dtype=torch.float64)
    want = alif_ref(x, torch.tensor(0.5, dtype=torch.float64), torch.tensor(0.2, dtype=torch.float64))
    assert torch.equal(alif_ref(x, 0.5, 0.2), want)
    assert torch.equal(alif(x, 0.5, 0.2), want)


@pytest.mark.parametrize("surrogate", ["atan", "sigmoid"])
@pytest.mark.parametrize("static", [False, True])
def test_final_state_is_not_written_unless_asked(static, surrogate):
    """need_state=False (what alif() passes without return_state): u_last comes back as an empty
    (0,) tensor, the spikes and every gradient are the same as with the state, and a gradient
    that reaches the empty stand-in is ignored."""
    T, step = 11, (3, 4, 5)
    g = torch.Generator().manual_seed(3)
    base = torch.randn(step, generator=g, requires_grad=True)
    x = base.unsqueeze(0).expand(T, *step) if static else torch.randn(T, *step, generator=g, requires_grad=True)
    tau = torch.tensor(0.4, requires_grad=True)
    v_th = torch.tensor(0.2, requires_grad=True)
    u0 = (torch.randn(step, generator=g) * 0.1).requires_grad_()
    source = base if static else x
    gs = torch.randn(T, *step, generator=g)
    steps = T if static else None
    xin = base if static else x
    opts = ("hard", False, surrogate, 1.0, 2.0, False)
    full, u_full = torch.ops.alif_cuda.alif(xin, tau, v_th, u0, steps, *opts, True)
    part, u_none = torch.ops.alif_cuda.alif(xin, tau, v_th, u0, steps, *opts, False)
    assert u_full.shape == step and u_none.shape == (0,)
    assert torch.equal(full, part)
    want = torch.autograd.grad(full, (source, tau, v_th, u0), gs)
    got = torch.autograd.grad((part, u_none.sum()), (source, tau, v_th, u0), (gs, torch.tensor(1.0)))
    for a, b in zip(got, want):
        assert torch.equal(a, b)
    with torch.no_grad():
        _, u_inf = torch.ops.alif_cuda.alif(xin, tau, v_th, u0, steps, *opts, False)
    assert u_inf.shape == (0,)
    # the forward kernel op itself
    _, u_k, _ = torch.ops.alif_cuda.alif_fwd(xin.detach(), tau.detach(), v_th.detach(), None, steps,
                                             "hard", False, False, "rect", 1.0, 2.0, False, False)
    assert u_k.shape == (0,)


def test_alif_without_return_state_allocates_no_final_state():
    """alif(x) without return_state allocates the spikes and nothing per neuron for u_last
    (PyTorch's profiler sees every CPU allocation, pooled ones included)."""
    from torch.profiler import ProfilerActivity, profile

    x = torch.randn(8, 2**17)
    alif(x, 0.25, 0.2)
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        out = alif(x, 0.25, 0.2)
    sizes = [e.nbytes() for e in prof.profiler.kineto_results.events() if e.name() == "[memory]" and e.nbytes() > 0]
    assert out.numel() * 4 in sizes
    assert 2**17 * 4 not in sizes, sizes
    _, u = alif(x, 0.25, 0.2, return_state=True)
    assert u.shape == (2**17,)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("per_channel", [False, True])
def test_parameter_sums_over_several_blocks_match_saved_h_and_ignore_threads(dtype, per_channel):
    """Past one block of the CPU's tau/v_th reduction (2048 neurons, with a tail): the same bits
    as the saved-h loop and for any number of threads, for every value type."""
    T, step = 9, (3, 1, 1400)  # N = 4200: two whole blocks and a tail; per-channel with C = 1
    x, tau, v_th, u0, gs, gu = inputs(T, step, dtype, per_channel)
    kw = dict(static=False, T=T, reset="soft", detach=False, surrogate="atan")
    want = saved_h_ref(x, tau, v_th, u0, gs, gu, **kw)
    threads = torch.get_num_threads()
    names = ["vectorized", "baseline", "scalar"] + (["lanes4", "lanes8"] if dtype == torch.float32 else [])
    try:
        for n in sorted({1, threads}):
            torch.set_num_threads(n)
            for name in names:
                with cpu_value_type(name):
                    assert_bitwise(run_ops(x, tau, v_th, u0, gs, gu, **kw), want)
    finally:
        torch.set_num_threads(threads)
