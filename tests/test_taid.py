"""The taid op against its reference taid_ref: output, attention, and both gradients."""
import pytest
import torch

import alif_cuda
from alif_cuda import taid, taid_ref
from conftest import HAS_CUDA, CUDA_SKIP_REASON, TOL, device_dtype_params, device_params

MATH_DTYPE = {torch.float64: torch.float64}


def make_inputs(T, B, C, H, W, device, dtype, *, seed=0):
    """s (T, B, C, H, W) with per-plane offsets (so the attention differs between planes) and
    w (T, T) as TAID initialises it, both leaves that require grad."""
    g = torch.Generator().manual_seed(seed)
    offsets = torch.randn(T, B, C, 1, 1, generator=g, dtype=torch.float64)
    s = torch.randn(T, B, C, H, W, generator=g, dtype=torch.float64) + offsets
    bound = T ** -0.5
    w = (torch.rand(T, T, generator=g, dtype=torch.float64) * 2 - 1) * bound
    w_dtype = MATH_DTYPE.get(dtype, torch.float32)
    return s.to(device, dtype).requires_grad_(), w.to(device, w_dtype).requires_grad_()


def check_against_reference(s, w, reduce, s_used=None):
    """taid and taid_ref on the same values: y, the attention, dL/ds and dL/dw."""
    s_used = s if s_used is None else s_used
    dtype = s.dtype
    rtol, atol = TOL[dtype]
    math_dtype = MATH_DTYPE.get(dtype, torch.float32)
    y, attn = taid(s_used, w, reduce, return_attention=True)
    assert y.dtype == dtype and y.shape == s_used.shape[1:] and y.device == s.device
    assert attn.dtype == math_dtype and attn.shape == s_used.shape[:3]

    s_ref = s.detach().to(math_dtype).requires_grad_()
    w_ref = w.detach().to(math_dtype).requires_grad_()
    s_ref_used = s_ref if s_used is s else s_ref.as_strided(s_used.shape, s_used.stride())
    y_ref, attn_ref = taid_ref(s_ref_used, w_ref, reduce, return_attention=True)
    torch.testing.assert_close(y, y_ref.to(dtype), rtol=rtol, atol=atol)
    torch.testing.assert_close(attn, attn_ref, rtol=1e-5 if dtype != torch.float64 else 1e-10, atol=1e-6)

    gen = torch.Generator().manual_seed(1)
    g_y = torch.randn(y.shape, generator=gen, dtype=torch.float64).to(s.device)
    grad_s, grad_w = torch.autograd.grad((y * g_y.to(dtype)).sum(), (s, w))
    grad_s_ref, grad_w_ref = torch.autograd.grad((y_ref * g_y.to(math_dtype)).sum(), (s_ref, w_ref))
    assert grad_s.dtype == dtype and grad_s.shape == s.shape
    assert grad_w.dtype == w.dtype and grad_w.shape == w.shape
    torch.testing.assert_close(grad_s, grad_s_ref.to(dtype), rtol=rtol, atol=atol, msg=lambda m: f"grad s: {m}")
    # dL/dw sums over every plane and pixel: scale atol by its size.
    scale = max(1.0, grad_w_ref.abs().max().item())
    torch.testing.assert_close(
        grad_w, grad_w_ref.to(w.dtype), rtol=rtol, atol=atol * scale, msg=lambda m: f"grad w: {m}"
    )


@pytest.mark.parametrize("device,dtype", device_dtype_params())
@pytest.mark.parametrize("T", [1, 4, 16])
@pytest.mark.parametrize("plane", [(1, 1), (7, 5), (32, 32), (64, 64)], ids=lambda p: f"{p[0]}x{p[1]}")
@pytest.mark.parametrize("C", [1, 3])
@pytest.mark.parametrize("reduce", ["sum", "mean"])
def test_taid_matches_reference(device, dtype, T, plane, C, reduce):
    s, w = make_inputs(T, 2, C, *plane, device, dtype)
    check_against_reference(s, w, reduce)


# Sizes that take each path of the CUDA forward (on an H100): a plane cached by one block
# (T=16, 32x32), by a cluster of 4 or 8 blocks with an uneven last slice (61x67), and a plane too
# large to cache, read twice (T=64, 128x128 float32). On the CPU they are just more shapes.
@pytest.mark.parametrize("device,dtype", device_dtype_params())
@pytest.mark.parametrize(
    "shape", [(16, 3, 1, 32, 32), (16, 2, 3, 61, 67), (40, 1, 2, 64, 64), (64, 1, 2, 128, 128)],
    ids=lambda s: "x".join(map(str, s)),
)
def test_taid_plane_sizes(device, dtype, shape):
    s, w = make_inputs(*shape, device, dtype, seed=2)
    check_against_reference(s, w, "sum")


@pytest.mark.parametrize("device,dtype", device_dtype_params())
def test_taid_non_contiguous_inputs(device, dtype):
    s, w = make_inputs(5, 3, 2, 6, 9, device, dtype)
    s_t = s.detach().transpose(3, 4).contiguous().transpose(3, 4).requires_grad_()  # (H, W) swapped in memory
    w_t = w.detach().t().contiguous().t().requires_grad_()
    assert not s_t.is_contiguous() and not w_t.is_contiguous()
    check_against_reference(s_t, w_t, "mean")
    s_every_other = s.detach()[:, :, :, ::2].requires_grad_()  # a strided view of every other row
    check_against_reference(s_every_other, w, "sum")


@pytest.mark.parametrize("device", device_params())
def test_taid_weight_in_another_float_dtype(device):
    """A float32 w (a module parameter) with float64 s, and the reverse: dL/dw keeps w's dtype."""
    s, w = make_inputs(4, 2, 3, 5, 5, device, torch.float64)
    check_against_reference(s, w.detach().float().requires_grad_(), "sum")
    s32, w32 = make_inputs(4, 2, 3, 5, 5, device, torch.float32)
    check_against_reference(s32, w32.detach().double().requires_grad_(), "sum")


@pytest.mark.parametrize("device", device_params())
@pytest.mark.parametrize("reduce", ["sum", "mean"])
def test_taid_gradcheck(device, reduce):
    s, w = make_inputs(4, 2, 3, 3, 5, device, torch.float64)
    assert torch.autograd.gradcheck(lambda s, w: taid(s, w, reduce), (s, w))


@pytest.mark.parametrize("device", device_params())
def test_taid_double_backward_is_refused(device):
    s, w = make_inputs(3, 1, 1, 2, 2, device, torch.float64)
    (grad_s,) = torch.autograd.grad(taid(s, w).sum(), s, create_graph=True)
    with pytest.raises(RuntimeError, match="double backward through taid_bwd .* is not supported"):
        grad_s.sum().backward()


@pytest.mark.parametrize("device", device_params())
def test_taid_gradients_are_deterministic(device):
    s, w = make_inputs(16, 37, 3, 9, 11, device, torch.float32)
    runs = [torch.autograd.grad(taid(s, w).square().sum(), (s, w)) for _ in range(2)]
    for a, b in zip(*runs):
        assert torch.equal(a, b)


@pytest.mark.parametrize("device", device_params())
def test_taid_empty_batch(device):
    s, w = make_inputs(4, 0, 3, 5, 5, device, torch.float32)
    y = taid(s, w)
    assert y.shape == (0, 3, 5, 5)
    grad_s, grad_w = torch.autograd.grad(y.sum(), (s, w))
    assert grad_s.shape == s.shape and torch.equal(grad_w, torch.zeros_like(w))


@pytest.mark.parametrize("device", device_params())
def test_taid_nan_stays_in_its_plane(device):
    """A non-finite value poisons its own (b, c) plane, as in the reference, and nothing else."""
    s, w = make_inputs(4, 2, 3, 5, 5, device, torch.float32)
    s_bad = s.detach().clone()
    s_bad[2, 1, 0, 3, 4] = float("nan")
    y = taid(s_bad, w)
    nan_planes = y.isnan().flatten(2).all(-1)
    expected = torch.zeros(2, 3, dtype=torch.bool, device=device)
    expected[1, 0] = True
    assert torch.equal(nan_planes, expected)
    assert torch.isfinite(y[~expected]).all()
    torch.testing.assert_close(y, taid_ref(s_bad, w.detach()), equal_nan=True)


@pytest.mark.parametrize("device", device_params())
def test_taid_opcheck(device):
    s, w = make_inputs(4, 2, 3, 5, 7, device, torch.float32)
    for reduce in ("sum", "mean"):
        torch.library.opcheck(torch.ops.alif_cuda.taid_fwd, (s, w, reduce))
    with torch.no_grad():
        y, attn, squeezed = torch.ops.alif_cuda.taid_fwd(s, w, "mean")
    bwd_args = (torch.randn_like(y), s.detach(), w.detach(), attn, squeezed, "mean")
    torch.library.opcheck(torch.ops.alif_cuda.taid_bwd, bwd_args)


class TinyDecoder(torch.nn.Module):
    """A time-distributed conv producing (T, B, C, H, W), decoded by TAID into an image."""

    def __init__(self, T):
        super().__init__()
        self.T = T
        self.conv = torch.nn.Conv2d(4, 2, 3, padding=1)
        self.decode = alif_cuda.TAID(T)

    def forward(self, x):
        T, B = x.shape[:2]
        s = self.conv(x.flatten(0, 1)).unflatten(0, (T, B))
        return torch.tanh(self.decode(s))


@pytest.mark.parametrize("device", device_params())
def test_taid_torch_compile_fullgraph_matches_eager(device):
    torch.manual_seed(0)
    net = TinyDecoder(6).to(device)
    x = torch.randn(6, 3, 4, 8, 8, device=device)
    out = net(x)
    grads = torch.autograd.grad(out.square().sum(), list(net.parameters()))
    compiled = torch.compile(net, fullgraph=True)
    out_c = compiled(x)
    grads_c = torch.autograd.grad(out_c.square().sum(), list(net.parameters()))
    torch.testing.assert_close(out_c, out)
    for a, b in zip(grads_c, grads):
        torch.testing.assert_close(a, b)


@pytest.mark.skipif(not HAS_CUDA, reason=CUDA_SKIP_REASON)
def test_taid_cuda_graph_capture():
    s, w = make_inputs(16, 4, 3, 32, 32, "cuda", torch.float32)
    g_y = torch.randn(4, 3, 32, 32, device="cuda")
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm up outside the graph
        for _ in range(2):
            torch.autograd.grad((taid(s, w) * g_y).sum(), (s, w))
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        y = taid(s, w)
        gs, gw = torch.autograd.grad((y * g_y).sum(), (s, w))
    graph.replay()
    torch.cuda.synchronize()
    y_want = taid(s, w)
    gs_want, gw_want = torch.autograd.grad((y_want * g_y).sum(), (s, w))
    assert torch.equal(y, y_want) and torch.equal(gs, gs_want) and torch.equal(gw, gw_want)


@pytest.mark.skipif(not HAS_CUDA, reason=CUDA_SKIP_REASON)
def test_taid_cuda_matches_cpu_bitwise_in_float64():
    """Same math in double on both backends: results agree to rounding."""
    s, w = make_inputs(16, 3, 3, 64, 64, "cpu", torch.float64)
    y_cpu = taid(s, w)
    y_cuda = taid(s.detach().cuda(), w.detach().cuda())
    torch.testing.assert_close(y_cuda.cpu(), y_cpu, rtol=1e-12, atol=1e-12)
