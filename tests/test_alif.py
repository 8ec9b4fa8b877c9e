"""The alif op against its reference alif_ref: spikes, final state and every gradient."""
import itertools
import os

import pytest
import torch

import alif_cuda
from alif_cuda import alif, alif_ref
from conftest import HAS_CUDA, CUDA_SKIP_REASON, TOL, device_dtype_params, device_params

# Spikes must match exactly in every dtype: h is computed by the same float ops as the reference.
# The reference runs in float64 for float64 storage and in float32 (the kernels' math) otherwise.
REF_DTYPE = {torch.float64: torch.float64}

OPTIONS = list(itertools.product([False, True], ["rect", "atan"], ["hard", "soft"], [False, True]))
OPTION_IDS = [
    f"{'chan' if pc else 'scalar'}-{s}-{r}-{'detach' if d else 'attached'}" for pc, s, r, d in OPTIONS
]


def make_inputs(T, step_shape, device, dtype, per_channel, *, static=False, u0=True, seed=0):
    """x (T, *step_shape), tau and v_th (scalar or per-channel), u0: mixed firing, leaves."""
    g = torch.Generator().manual_seed(seed)
    param_dtype = REF_DTYPE.get(dtype, torch.float32)
    x_shape = step_shape if static else (T, *step_shape)
    x = (torch.randn(x_shape, generator=g, dtype=torch.float64) * 0.6 + 0.15).to(device, dtype)
    pshape = (step_shape[1],) if per_channel else ()
    tau = (torch.rand(pshape, generator=g, dtype=torch.float64) * 0.8 + 0.1).to(device, param_dtype)
    v_th = (torch.rand(pshape, generator=g, dtype=torch.float64) * 0.4 + 0.1).to(device, param_dtype)
    u = (torch.randn(step_shape, generator=g, dtype=torch.float64) * 0.2).to(device, dtype) if u0 else None
    return [t.requires_grad_() if t is not None else None for t in (x, tau, v_th, u)]


def check_against_reference(x_leaf, tau, v_th, u0, x_used, opts, dtype):
    """Runs alif and alif_ref on the same inputs; compares spikes, state and all gradients."""
    rtol, atol = TOL[dtype]
    ref_dtype = REF_DTYPE.get(dtype, torch.float32)
    spikes, u_last = alif(x_used, tau, v_th, u0, return_state=True, **opts)
    assert spikes.dtype == dtype and spikes.shape == x_used.shape
    assert u_last.dtype == dtype and u_last.shape == x_used.shape[1:]

    leaves = [t for t in (x_leaf, tau, v_th, u0) if t is not None]
    ref_leaves = [t.detach().to(ref_dtype).requires_grad_() for t in leaves]
    ref_map = dict(zip(map(id, leaves), ref_leaves))
    x_ref = ref_map[id(x_leaf)]
    if x_used is not x_leaf:  # x_used is x_leaf expanded over time
        x_ref = x_ref.unsqueeze(0).expand(x_used.shape)
    u0_ref = ref_map[id(u0)] if u0 is not None else None
    spikes_ref, u_ref = alif_ref(
        x_ref, ref_map[id(tau)], ref_map[id(v_th)], u0_ref, return_state=True, **opts
    )
    torch.testing.assert_close(spikes, spikes_ref.to(dtype), rtol=0, atol=0)
    torch.testing.assert_close(u_last, u_ref.to(dtype), rtol=rtol, atol=atol)

    gen = torch.Generator().manual_seed(1)
    g_s = torch.randn(spikes.shape, generator=gen).to(spikes.device, dtype)
    g_u = torch.randn(u_last.shape, generator=gen).to(spikes.device, dtype)
    grads = torch.autograd.grad((spikes * g_s).sum() + (u_last * g_u).sum(), leaves)
    loss_ref = (spikes_ref * g_s.to(ref_dtype)).sum() + (u_ref * g_u.to(ref_dtype)).sum()
    grads_ref = torch.autograd.grad(loss_ref, ref_leaves)
    names = [n for n, t in zip(("x", "tau", "v_th", "u0"), (x_leaf, tau, v_th, u0)) if t is not None]
    for name, got, want, leaf in zip(names, grads, grads_ref, leaves):
        assert got.dtype == leaf.dtype and got.shape == leaf.shape, name
        # Parameter gradients are sums over all neurons and steps: scale atol by their size.
        scale = max(1.0, want.abs().max().item())
        torch.testing.assert_close(
            got, want.to(got.dtype), rtol=rtol, atol=atol * scale, msg=lambda m: f"grad {name}: {m}"
        )


@pytest.mark.parametrize("device,dtype", device_dtype_params())
@pytest.mark.parametrize("T", [1, 2, 7, 33])
@pytest.mark.parametrize("per_channel,surrogate,reset,detach_reset", OPTIONS, ids=OPTION_IDS)
def test_alif_matches_reference(device, dtype, T, per_channel, surrogate, reset, detach_reset):
    x, tau, v_th, u0 = make_inputs(T, (3, 5, 7), device, dtype, per_channel)
    opts = dict(surrogate=surrogate, reset=reset, detach_reset=detach_reset)
    check_against_reference(x, tau, v_th, u0, x, opts, dtype)


# SpikingJelly's options: the sigmoid surrogate (every flag) and decay_input (every surrogate).
SJ_OPTIONS = [
    o for o in itertools.product([False, True], ["rect", "atan", "sigmoid"], ["hard", "soft"],
                                 [False, True], [False, True])
    if o[1] == "sigmoid" or o[4]
]
SJ_OPTION_IDS = [
    f"{'chan' if pc else 'scalar'}-{s}-{r}-{'detach' if d else 'attached'}-"
    f"{'decay' if di else 'nodecay'}"
    for pc, s, r, d, di in SJ_OPTIONS
]


@pytest.mark.parametrize("device,dtype", device_dtype_params())
@pytest.mark.parametrize("T", [1, 7, 33])
@pytest.mark.parametrize("per_channel,surrogate,reset,detach_reset,decay_input", SJ_OPTIONS,
                         ids=SJ_OPTION_IDS)
def test_alif_sigmoid_and_decay_input_match_reference(device, dtype, T, per_channel, surrogate,
                                                      reset, detach_reset, decay_input):
    """h_t = tau u + (1 - tau) x (decay_input) and the sigmoid surrogate, time-major and static:
    spikes exactly, state and every gradient (the extra dL/dtau and dL/dx terms) to tolerance."""
    opts = dict(surrogate=surrogate, reset=reset, detach_reset=detach_reset,
                decay_input=decay_input, alpha=3.0 if surrogate == "sigmoid" else None)
    x, tau, v_th, u0 = make_inputs(T, (3, 5, 7), device, dtype, per_channel)
    check_against_reference(x, tau, v_th, u0, x, opts, dtype)
    x, tau, v_th, u0 = make_inputs(T, (3, 4, 5), device, dtype, per_channel, static=True, seed=1)
    check_against_reference(x, tau, v_th, u0, x.unsqueeze(0).expand(T, *x.shape), opts, dtype)


def test_alpha_defaults_follow_the_surrogate():
    """alpha=None is 2 for atan and 4 for sigmoid (SpikingJelly's defaults)."""
    x, tau, v_th, _ = make_inputs(5, (2, 9), "cpu", torch.float64, False, u0=False)
    for surrogate, alpha in (("atan", 2.0), ("sigmoid", 4.0)):
        default = torch.autograd.grad(alif(x, tau, v_th, surrogate=surrogate).sum(), x)[0]
        explicit = torch.autograd.grad(alif(x, tau, v_th, surrogate=surrogate, alpha=alpha).sum(), x)[0]
        other = torch.autograd.grad(alif(x, tau, v_th, surrogate=surrogate, alpha=alpha + 1).sum(), x)[0]
        assert torch.equal(default, explicit) and not torch.equal(default, other)


@pytest.mark.parametrize("device,dtype", device_dtype_params())
@pytest.mark.parametrize("T", [1, 2, 7, 33])
@pytest.mark.parametrize("per_channel,surrogate,reset,detach_reset", OPTIONS, ids=OPTION_IDS)
def test_alif_static_input_matches_reference(device, dtype, T, per_channel, surrogate, reset, detach_reset):
    """x expanded over time from (B, ...): its gradient is the sum over time."""
    x, tau, v_th, u0 = make_inputs(T, (3, 4, 5), device, dtype, per_channel, static=True)
    x_t = x.unsqueeze(0).expand(T, *x.shape)
    opts = dict(surrogate=surrogate, reset=reset, detach_reset=detach_reset)
    check_against_reference(x, tau, v_th, u0, x_t, opts, dtype)


@pytest.mark.parametrize("device,dtype", device_dtype_params())
@pytest.mark.parametrize(
    "step_shape",
    [(1,), (5,), (2, 3), (4, 3, 1, 1), (2, 3, 7, 5), (1, 2, 1, 300)],
    ids=lambda s: "x".join(map(str, s)),
)
@pytest.mark.parametrize("per_channel", [False, True])
def test_alif_awkward_shapes(device, dtype, step_shape, per_channel):
    if per_channel and len(step_shape) < 2:
        pytest.skip("per-channel parameters need a channel dim")
    x, tau, v_th, u0 = make_inputs(5, step_shape, device, dtype, per_channel, seed=3)
    check_against_reference(x, tau, v_th, u0, x, {}, dtype)


@pytest.mark.parametrize("device,dtype", device_dtype_params())
def test_alif_without_u0_and_non_contiguous_x(device, dtype):
    x, tau, v_th, _ = make_inputs(6, (4, 3, 5), device, dtype, True, u0=False)
    x_nc = x.detach().transpose(1, 3).contiguous().transpose(1, 3).requires_grad_()
    assert not x_nc.is_contiguous()
    check_against_reference(x_nc, tau, v_th, None, x_nc, {"detach_reset": True}, dtype)
    x_slice = x.detach()[:, :, ::2].requires_grad_()  # a strided view: every other channel
    tau_slice = tau.detach()[::2].clone().requires_grad_()
    v_th_slice = v_th.detach()[::2].clone().requires_grad_()
    check_against_reference(x_slice, tau_slice, v_th_slice, None, x_slice, {}, dtype)


@pytest.mark.parametrize("device", device_params())
def test_alif_mixed_parameter_shapes(device):
    """A per-channel tau with a scalar v_th, and the reverse."""
    x, tau, _, u0 = make_inputs(4, (2, 3, 4), device, torch.float64, True)
    _, _, v_th, _ = make_inputs(4, (2, 3, 4), device, torch.float64, False)
    check_against_reference(x, tau, v_th, u0, x, {"reset": "soft"}, torch.float64)
    check_against_reference(x, v_th.detach().clone().requires_grad_(), tau, u0, x, {}, torch.float64)


def as_logit(tau):
    """The leaf logit(tau) of a tau in (0, 1): what tau_param="sigmoid" takes."""
    return torch.logit(tau.detach()).requires_grad_()


TAU_LOGIT_OPTIONS = [("rect", "hard", False), ("atan", "soft", False), ("sigmoid", "hard", True)]


@pytest.mark.parametrize("device,dtype", device_dtype_params())
@pytest.mark.parametrize("T", [1, 7, 33])
@pytest.mark.parametrize("per_channel", [False, True], ids=["scalar", "chan"])
@pytest.mark.parametrize("surrogate,reset,decay_input", TAU_LOGIT_OPTIONS,
                         ids=["rect-hard", "atan-soft", "sigmoid-hard-decay"])
def test_alif_tau_logit_matches_reference(device, dtype, T, per_channel, surrogate, reset, decay_input):
    """tau_param="sigmoid": the kernels apply the sigmoid to the given logit and return
    dL/dlogit, time-major and static, against alif_ref with the same option."""
    opts = dict(surrogate=surrogate, reset=reset, decay_input=decay_input, tau_param="sigmoid")
    x, tau, v_th, u0 = make_inputs(T, (3, 5, 7), device, dtype, per_channel)
    check_against_reference(x, as_logit(tau), v_th, u0, x, opts, dtype)
    x, tau, v_th, u0 = make_inputs(T, (3, 4, 5), device, dtype, per_channel, static=True, seed=1)
    check_against_reference(x, as_logit(tau), v_th, u0, x.unsqueeze(0).expand(T, *x.shape), opts, dtype)


@pytest.mark.parametrize("device,dtype", device_dtype_params())
@pytest.mark.parametrize(
    "T,step_shape,per_channel",
    [(3, (2, 4, 6), True), (12, (128, 3, 40), True), (12, (40, 3, 50), False)],
    ids=["lanes-straddle-channels", "many-slices-per-channel", "many-blocks-scalar"],
)
def test_alif_tau_logit_on_the_vector_and_reduction_paths(device, dtype, T, step_shape, per_channel):
    """The logit on the CUDA kernels' 16-byte paths: 4- and 8-lane threads whose lanes belong to
    two channels (I = 6), a per-channel sum over several slices of 4096 values, and a scalar sum
    over many block partials, with checkpoints (T > 8)."""
    opts = dict(tau_param="sigmoid", surrogate="atan")
    x, tau, v_th, u0 = make_inputs(T, step_shape, device, dtype, per_channel)
    check_against_reference(x, as_logit(tau), v_th, u0, x, opts, dtype)


@pytest.mark.parametrize("device", device_params())
def test_alif_tau_logit_mixed_parameter_shapes(device):
    """A scalar logit with a per-channel v_th (the chain factor of tau[0] on every channel's sum),
    and a per-channel logit with a scalar v_th; an empty batch gives zero gradients."""
    opts = {"tau_param": "sigmoid"}
    x, tau_c, v_th_c, u0 = make_inputs(12, (2, 3, 4), device, torch.float64, True)
    _, tau_s, v_th_s, _ = make_inputs(12, (2, 3, 4), device, torch.float64, False)
    check_against_reference(x, as_logit(tau_s), v_th_c, u0, x, opts, torch.float64)
    check_against_reference(x, as_logit(tau_c), v_th_s, u0, x, opts, torch.float64)
    empty = torch.zeros(3, 0, 3, 4, dtype=torch.float64, device=device, requires_grad=True)
    logit = as_logit(tau_c)
    grads = torch.autograd.grad(alif(empty, logit, v_th_c, tau_param="sigmoid").sum(), (empty, logit))
    assert torch.equal(grads[1], torch.zeros_like(logit))


@pytest.mark.parametrize("device", device_params())
def test_static_input_saves_nothing_per_step(device):
    T, step = 8, (4, 3, 5)
    x, tau, v_th, u0 = make_inputs(T, step, device, torch.float32, False, static=True)
    sizes = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: sizes.append(t.numel()) or t, lambda t: t):
        spikes = alif(x.unsqueeze(0).expand(T, *step), tau, v_th, u0)
    assert sizes and max(sizes) < T * x.numel()
    spikes.sum().backward()
    assert x.grad.shape == x.shape


@pytest.mark.parametrize("device", device_params())
def test_stride0_leaf_gets_per_step_gradient(device):
    """An expanded leaf is T separate inputs to autograd: each step gets its own gradient."""
    base = torch.randn(3, 4, dtype=torch.float64, device=device)
    x = base.unsqueeze(0).expand(5, 3, 4).requires_grad_()
    tau = torch.tensor(0.5, dtype=torch.float64, device=device)
    (alif(x, tau, 0.3) * torch.arange(5.0, dtype=torch.float64, device=device).view(5, 1, 1)).sum().backward()
    x_ref = x.detach().clone().requires_grad_()
    (alif_ref(x_ref, tau, torch.tensor(0.3, dtype=torch.float64, device=device))
     * torch.arange(5.0, dtype=torch.float64, device=device).view(5, 1, 1)).sum().backward()
    torch.testing.assert_close(x.grad, x_ref.grad)


@pytest.mark.parametrize("device", device_params())
def test_gradients_are_deterministic(device):
    x, tau, v_th, u0 = make_inputs(9, (64, 16, 33), device, torch.float32, True)
    runs = []
    for _ in range(2):
        s, u = alif(x, tau, v_th, u0, return_state=True)
        runs.append(torch.autograd.grad(s.sum() + u.sum(), (x, tau, v_th, u0)))
    for a, b in zip(*runs):
        assert torch.equal(a, b)


@pytest.mark.parametrize("reset", ["hard", "soft"])
def test_gradcheck_final_state(reset):
    """The surrogate is not the derivative of the spike, so gradcheck applies where the
    surrogate drops out: the final state with detach_reset and the spikes unused is a smooth
    function of x, tau, v_th and u0 while no spike flips, and its BPTT gradient is exact."""
    x, tau, v_th, u0 = make_inputs(4, (2, 3), "cpu", torch.float64, False)

    def final_state(x, tau, v_th, u0):
        return alif(x, tau, v_th, u0, reset=reset, detach_reset=True, return_state=True)[1]

    assert torch.autograd.gradcheck(final_state, (x, tau, v_th, u0), eps=1e-7)


@pytest.mark.parametrize("device", device_params())
@pytest.mark.parametrize("static", [False, True])
@pytest.mark.parametrize("T", [5, 19])
def test_opcheck(device, static, T):
    """Every op, its fake kernel and (for alif) its C++ autograd; T = 19 has checkpoints."""
    x, tau, v_th, u0 = make_inputs(T, (2, 3, 4), device, torch.float32, True, static=static)
    steps = T if static else None
    torch.library.opcheck(
        torch.ops.alif_cuda.alif, (x, tau, v_th, u0, steps, "soft", False, "atan", 1.0, 2.0)
    )
    # without the final state (alif() without return_state): u_last is an empty stand-in
    torch.library.opcheck(
        torch.ops.alif_cuda.alif, (x, tau, v_th, u0, steps, "soft", False, "atan", 1.0, 2.0, False, False)
    )
    fwd_args = (x, tau, v_th, u0, steps, "hard", True, False, "rect", 1.0, 2.0)
    torch.library.opcheck(torch.ops.alif_cuda.alif_fwd, fwd_args)
    torch.library.opcheck(torch.ops.alif_cuda.alif_fwd, (*fwd_args, False, False))
    # tau given as a logit (ALIF's tau_param="sigmoid"), forward and backward
    torch.library.opcheck(
        torch.ops.alif_cuda.alif, (x, tau, v_th, u0, steps, "soft", False, "atan", 1.0, 2.0, False, True, True)
    )
    torch.library.opcheck(torch.ops.alif_cuda.alif_fwd, (*fwd_args, False, True, True))
    with torch.no_grad():
        spikes, u_last, u_ckpt = torch.ops.alif_cuda.alif_fwd(*fwd_args)
    x_d, tau_d, v_th_d, u0_d = (t.detach() for t in (x, tau, v_th, u0))
    g, g_u = torch.randn_like(spikes), torch.randn_like(u_last)
    for grads in ((g, g_u), (None, g_u), (g, None)):
        torch.library.opcheck(
            torch.ops.alif_cuda.alif_bwd,
            (*grads, x_d, u_ckpt, steps, tau_d, v_th_d, u0_d, "hard", True, "atan", 1.0, 2.0, True),
        )
    torch.library.opcheck(
        torch.ops.alif_cuda.alif_bwd,
        (g, g_u, x_d, u_ckpt, steps, tau_d, v_th_d, u0_d, "hard", True, "atan", 1.0, 2.0, True, False, True),
    )


class TwoLayerSNN(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = torch.nn.Linear(6, 8)
        self.sn1 = alif_cuda.ALIF(per_channel=8)
        self.fc2 = torch.nn.Linear(8, 4)
        self.sn2 = alif_cuda.ALIF(reset="soft", surrogate="atan")

    def forward(self, x):
        h = self.fc1(x)
        s = self.sn1(h.unsqueeze(0).expand(5, *h.shape))
        return self.sn2(self.fc2(s))


@pytest.mark.parametrize("device", device_params())
def test_torch_compile_fullgraph_matches_eager(device):
    torch.manual_seed(0)
    net = TwoLayerSNN().to(device)
    x = torch.randn(3, 6, device=device)
    out = net(x)
    grads = torch.autograd.grad((out * torch.arange(4.0, device=device)).sum(), list(net.parameters()))
    compiled = torch.compile(net, fullgraph=True)
    out_c = compiled(x)
    grads_c = torch.autograd.grad((out_c * torch.arange(4.0, device=device)).sum(), list(net.parameters()))
    torch.testing.assert_close(out_c, out, rtol=0, atol=0)
    for a, b in zip(grads_c, grads):
        torch.testing.assert_close(a, b)


def test_built_with_cuda_kernels_when_ci_asks():
    """CI builds with FORCE_CUDA=1 and sets ALIF_CUDA_EXPECT_CUDA_KERNELS=1: the CUDA kernels
    must then be in the extension (a CPU-only fallback would hide a broken CUDA build)."""
    if os.environ.get("ALIF_CUDA_EXPECT_CUDA_KERNELS") != "1":
        pytest.skip("ALIF_CUDA_EXPECT_CUDA_KERNELS is not set")
    assert alif_cuda.cuda_kernels_available()


@pytest.mark.skipif(not HAS_CUDA, reason=CUDA_SKIP_REASON)
def test_cuda_graph_capture():
    x, tau, v_th, u0 = make_inputs(8, (16, 4, 9), "cuda", torch.float32, True)
    static_g = torch.randn(8, 16, 4, 9, device="cuda")
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):  # warm up outside the graph
        for _ in range(2):
            torch.autograd.grad((alif(x, tau, v_th, u0) * static_g).sum(), (x, tau))
    torch.cuda.current_stream().wait_stream(s)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = alif(x, tau, v_th, u0)
        gx, gtau = torch.autograd.grad((out * static_g).sum(), (x, tau))
    graph.replay()
    torch.cuda.synchronize()
    want = alif(x, tau, v_th, u0)
    want_gx, want_gtau = torch.autograd.grad((want * static_g).sum(), (x, tau))
    assert torch.equal(out, want) and torch.equal(gx, want_gx) and torch.equal(gtau, want_gtau)
