"""The taid op against its reference taid_ref: output, attention, and both gradients."""
import os
import subprocess
import sys

import pytest
import torch

import alif_cuda
from alif_cuda import taid, taid_ref
from conftest import DTYPES, HAS_CUDA, CUDA_SKIP_REASON, TOL, device_dtype_params, device_params

MATH_DTYPE = {torch.float64: torch.float64}
# The taid CPU kernels take float16 and bfloat16 storage too (float math), as the CUDA ones do.
CPU_HALF_DTYPES = [dt for dt in (torch.float16, torch.bfloat16) if dt not in DTYPES["cpu"]]


def dtype_params():
    """device_dtype_params, plus the CPU half-precision cases the shared table may not list yet."""
    extra = [pytest.param("cpu", dt, id=f"cpu-{str(dt).split('.')[-1]}") for dt in CPU_HALF_DTYPES]
    return device_dtype_params() + extra


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
    # g_y in s's dtype for both: the reference sees the kernel's very gradient values.
    g_y = torch.randn(y.shape, generator=gen, dtype=torch.float64).to(s.device, dtype)
    grad_s, grad_w = torch.autograd.grad(y, (s, w), g_y)
    grad_s_ref, grad_w_ref = torch.autograd.grad((y_ref * g_y.to(math_dtype)).sum(), (s_ref, w_ref))
    assert grad_s.dtype == dtype and grad_s.shape == s.shape
    assert grad_w.dtype == w.dtype and grad_w.shape == w.shape
    torch.testing.assert_close(grad_s, grad_s_ref.to(dtype), rtol=rtol, atol=atol, msg=lambda m: f"grad s: {m}")
    # dL/dw sums over every plane and pixel: scale atol by its size.
    scale = max(1.0, grad_w_ref.abs().max().item())
    torch.testing.assert_close(
        grad_w, grad_w_ref.to(w.dtype), rtol=rtol, atol=atol * scale, msg=lambda m: f"grad w: {m}"
    )


@pytest.mark.parametrize("device,dtype", dtype_params())
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
@pytest.mark.parametrize("device,dtype", dtype_params())
@pytest.mark.parametrize(
    "shape", [(16, 3, 1, 32, 32), (16, 2, 3, 61, 67), (40, 1, 2, 64, 64), (64, 1, 2, 128, 128)],
    ids=lambda s: "x".join(map(str, s)),
)
def test_taid_plane_sizes(device, dtype, shape):
    s, w = make_inputs(*shape, device, dtype, seed=2)
    check_against_reference(s, w, "sum")


@pytest.mark.parametrize("device,dtype", dtype_params())
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


# Each storage dtype and the TaidMath instantiation both backends run for it.
SHARED_INSTANTIATIONS = {torch.float64: "TaidMath<double>", torch.float32: "TaidMath<float>",
                         torch.float16: "TaidMath<float>", torch.bfloat16: "TaidMath<float>"}


@pytest.mark.parametrize("dtype", list(SHARED_INSTANTIATIONS), ids=lambda d: str(d).split(".")[-1])
@pytest.mark.parametrize("reduce", ["sum", "mean"])
def test_cpu_runs_each_shared_instantiation(dtype, reduce):
    """The per-plane arithmetic (squeeze, attention, reweight, and the backward's per-plane terms)
    is TaidMath<acc_t> in csrc/taid_math.h, used by the CPU and the CUDA kernels alike, dispatched
    over the same four storage dtypes: float64 runs TaidMath<double>, the other three
    TaidMath<float>, the two instantiations the CUDA kernels use. Here the CPU build runs each one
    through the forward, dL/ds and dL/dw, on planes with a vector body and a tail (7x5) and on
    planes smaller than any SIMD width (1x3), checked against taid_ref."""
    assert dtype in DTYPES["cpu"] + CPU_HALF_DTYPES, f"the CPU kernels must take {dtype}"
    for shape in ((5, 2, 3, 7, 5), (3, 2, 1, 1, 3)):
        s, w = make_inputs(*shape, "cpu", dtype, seed=3)
        check_against_reference(s, w, reduce)


@pytest.mark.parametrize("device,dtype", dtype_params())
@pytest.mark.parametrize("plane", [(1, 1), (1, 3), (3, 1), (5, 7)], ids=lambda p: f"{p[0]}x{p[1]}")
def test_taid_single_step_and_tiny_planes(device, dtype, plane):
    """T=1 (attention of a single step) on planes below the SIMD width and the 16-byte access
    width, where every pixel takes the scalar path."""
    s, w = make_inputs(1, 3, 2, *plane, device, dtype, seed=4)
    check_against_reference(s, w, "sum")
    s, w = make_inputs(3, 3, 2, *plane, device, dtype, seed=5)
    check_against_reference(s, w, "mean")


@pytest.mark.parametrize("device,dtype", dtype_params())
@pytest.mark.parametrize("offset", [1, 3])
def test_taid_misaligned_input(device, dtype, offset):
    """A contiguous s that starts `offset` elements into its storage (a slice of a larger
    buffer): not 16-byte aligned, so the CUDA kernels take their scalar path; the result must not
    change. 32x32 planes would otherwise take the 16-byte path."""
    s, w = make_inputs(4, 2, 3, 32, 32, device, dtype, seed=6)
    buf = torch.empty(s.numel() + offset, device=device, dtype=dtype)
    s_off = buf[offset:].view(s.shape)
    s_off.copy_(s.detach())
    s_off = s_off.detach().requires_grad_()
    assert s_off.is_contiguous() and s_off.storage_offset() == offset
    check_against_reference(s_off, w, "sum")


@pytest.mark.parametrize("device", device_params())
def test_taid_sliced_time_and_batch(device):
    """Views that skip time steps and batch entries (non-contiguous in the outer dims)."""
    s, w = make_inputs(8, 5, 3, 6, 10, device, torch.float64, seed=7)
    s_view = s.detach()[::2, 1:4].requires_grad_()
    check_against_reference(s_view, w.detach()[:4, :4].clone().requires_grad_(), "sum")


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bfloat16", "float16"])
def test_taid_cpu_autocast(dtype):
    """Under CPU autocast the decoder's conv emits half-precision s and taid takes it as is (float
    math inside): the output and the gradients stay close to the float32 model's."""
    torch.manual_seed(0)
    net = TinyDecoder(4)
    x = torch.randn(4, 3, 4, 8, 8)
    out = net(x)
    grads = torch.autograd.grad(out.square().sum(), list(net.parameters()))
    with torch.autocast("cpu", dtype=dtype):
        out_lp = net(x)
    assert out_lp.dtype == dtype
    grads_lp = torch.autograd.grad(out_lp.float().square().sum(), list(net.parameters()))
    torch.testing.assert_close(out_lp.float(), out, rtol=0.05, atol=0.05)
    for a, b in zip(grads_lp, grads):
        assert torch.isfinite(a).all()
        torch.testing.assert_close(a.float(), b, rtol=0.1, atol=0.1 * b.abs().max().item())


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


# 32x32 planes run in one block each; T=16 64x64 float32 planes need a cluster of blocks (sm_90).
@pytest.mark.skipif(not HAS_CUDA, reason=CUDA_SKIP_REASON)
@pytest.mark.parametrize("side", [32, 64])
def test_taid_cuda_graph_capture(side):
    s, w = make_inputs(16, 4, 3, side, side, "cuda", torch.float32)
    g_y = torch.randn(4, 3, side, side, device="cuda")
    side_stream = torch.cuda.Stream()
    side_stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side_stream):  # warm up outside the graph (plans and attributes are made here)
        for _ in range(2):
            torch.autograd.grad(taid(s, w), (s, w), g_y)
    torch.cuda.current_stream().wait_stream(side_stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        y = taid(s, w)
        gs, gw = torch.autograd.grad(y, (s, w), g_y)
    graph.replay()
    torch.cuda.synchronize()
    y_want = taid(s, w)
    gs_want, gw_want = torch.autograd.grad(y_want, (s, w), g_y)
    assert torch.equal(y, y_want) and torch.equal(gs, gs_want) and torch.equal(gw, gw_want)


SINGLE_BLOCK_SCRIPT = """
import sys, torch
from torch.profiler import ProfilerActivity, profile
from alif_cuda import taid
s, w, g = torch.load(sys.argv[1])
s, w = s.cuda().requires_grad_(), w.cuda().requires_grad_()
with profile(activities=[ProfilerActivity.CUDA]) as prof:
    y = taid(s, w)
    torch.cuda.synchronize()
kernels = sorted({e.name for e in prof.events() if "taid_fwd_kernel" in e.name})
torch.save([[t.cpu() for t in (y, *torch.autograd.grad(y, (s, w), g.cuda()))], kernels], sys.argv[2])
"""


def uses_cluster_kernel(kernels):
    """Whether the forward ran taid_fwd_kernel<scalar_t, kCache=true, kCluster=true, ...>, by its
    demangled or its mangled name."""
    return any(", true, true, true>" in k or "Lb1ELb1ELb1E" in k for k in kernels)


@pytest.mark.skipif(not HAS_CUDA, reason=CUDA_SKIP_REASON)
@pytest.mark.parametrize("shape", [(16, 3, 2, 32, 32), (16, 2, 3, 61, 67), (16, 2, 1, 64, 64)],
                         ids=lambda s: "x".join(map(str, s)))
def test_taid_cuda_single_block_path_agrees(tmp_path, shape):
    """ALIF_CUDA_TAID_SINGLE_BLOCK=1 (read once per process, so in a child process) keeps the
    forward off clusters: the same y and gradients to rounding as the cluster path, bit for bit
    where a plane fits one block anyway (32x32), and no cluster kernel launched."""
    s, w = make_inputs(*shape, "cpu", torch.float32)
    g = torch.randn(shape[1:])
    torch.save([s.detach(), w.detach(), g], tmp_path / "in.pt")
    results = []
    for single in ("0", "1"):
        out = tmp_path / f"out{single}.pt"
        env = dict(os.environ, ALIF_CUDA_TAID_SINGLE_BLOCK=single)
        subprocess.run([sys.executable, "-c", SINGLE_BLOCK_SCRIPT, str(tmp_path / "in.pt"), str(out)],
                       env=env, check=True, timeout=300)
        results.append(torch.load(out))
    ((y_c, gs_c, gw_c), kernels_c), ((y_s, gs_s, gw_s), kernels_s) = results
    assert kernels_s and not uses_cluster_kernel(kernels_s), kernels_s
    if torch.cuda.get_device_capability() >= (9, 0):
        assert uses_cluster_kernel(kernels_c) == (shape[-2:] != (32, 32)), kernels_c
    if shape[-2:] == (32, 32):
        assert torch.equal(y_s, y_c) and torch.equal(gs_s, gs_c) and torch.equal(gw_s, gw_c)
    torch.testing.assert_close(y_s, y_c, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(gs_s, gs_c, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(gw_s, gw_c, rtol=1e-4, atol=1e-5)


@pytest.mark.skipif(not HAS_CUDA, reason=CUDA_SKIP_REASON)
def test_taid_cuda_matches_cpu_bitwise_in_float64():
    """Same math in double on both backends: results agree to rounding."""
    s, w = make_inputs(16, 3, 3, 64, 64, "cpu", torch.float64)
    y_cpu = taid(s, w)
    y_cuda = taid(s.detach().cuda(), w.detach().cuda())
    torch.testing.assert_close(y_cuda.cpu(), y_cpu, rtol=1e-12, atol=1e-12)
