"""Bad input to the alif op: a clear error naming what was expected, never a crash."""
import pytest
import torch

from alif_cuda import alif, alif_ref
from conftest import HAS_CUDA, CUDA_SKIP_REASON, device_params


def params(device="cpu", dtype=torch.float32):
    return torch.tensor(0.5, device=device, dtype=dtype), torch.tensor(0.2, device=device, dtype=dtype)


@pytest.mark.parametrize("device", device_params())
def test_zero_time_steps(device):
    tau, v_th = params(device)
    with pytest.raises(RuntimeError, match=r"x must be \(T, B, \.\.\.\) with T >= 1, got shape \[0, 4\]"):
        alif(torch.zeros(0, 4, device=device), tau, v_th)


@pytest.mark.parametrize("device", device_params())
def test_one_dim_x(device):
    tau, v_th = params(device)
    with pytest.raises(RuntimeError, match=r"x must be \(T, B, \.\.\.\)"):
        alif(torch.zeros(4, device=device), tau, v_th)


@pytest.mark.parametrize("device", device_params())
@pytest.mark.parametrize("dtype", [torch.int32, torch.int64, torch.bool])
def test_integer_x(device, dtype):
    tau, v_th = params(device)
    with pytest.raises(RuntimeError, match="x must be float32, float64, float16 or bfloat16"):
        alif(torch.zeros(3, 4, device=device, dtype=dtype), tau, v_th)


@pytest.mark.parametrize("device", device_params())
def test_tau_of_wrong_shape(device):
    x = torch.zeros(3, 2, 5, 4, device=device)
    _, v_th = params(device)
    with pytest.raises(RuntimeError, match=r"tau must have shape \(\) or \(5,\) to match x's channel dim 2, got \[4\]"):
        alif(x, torch.full((4,), 0.5, device=device), v_th)
    with pytest.raises(RuntimeError, match=r"v_th must be a scalar \(\) or per-channel \(C,\), got shape \[5, 1\]"):
        alif(x, 0.5, torch.full((5, 1), 0.2, device=device))


def test_per_channel_needs_a_channel_dim():
    with pytest.raises(RuntimeError, match="needs at least 3 dims"):
        alif(torch.zeros(3, 4), torch.full((4,), 0.5), 0.2)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_parameters_on_cpu(bad):
    x = torch.zeros(3, 4)
    with pytest.raises(RuntimeError, match="tau must be finite"):
        alif(x, torch.tensor(bad), 0.2)
    with pytest.raises(RuntimeError, match="v_th must be finite"):
        alif(x, 0.5, torch.tensor(bad))


@pytest.mark.parametrize("device", device_params())
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_python_float_parameters(device, bad):
    """Python floats are checked in Python, on every device (a CUDA tensor could only be checked
    with a host sync)."""
    x = torch.zeros(3, 4, device=device)
    with pytest.raises(ValueError, match="alif: tau must be finite"):
        alif(x, bad, 0.2)
    with pytest.raises(ValueError, match="alif: v_th must be finite"):
        alif(x, 0.5, bad)


@pytest.mark.parametrize("device", device_params())
def test_u0_of_wrong_shape_or_dtype(device):
    x = torch.zeros(3, 2, 5, device=device)
    tau, v_th = params(device)
    with pytest.raises(RuntimeError, match=r"u0 must have the shape of one time step of x, \[2, 5\], got \[5\]"):
        alif(x, tau, v_th, torch.zeros(5, device=device))
    with pytest.raises(RuntimeError, match="u0 must have x's dtype"):
        alif(x, tau, v_th, torch.zeros(2, 5, device=device, dtype=torch.float64))


def test_bad_options():
    x = torch.zeros(3, 4)
    with pytest.raises(ValueError, match="surrogate must be one of"):
        alif(x, 0.5, 0.2, surrogate="triangle")
    with pytest.raises(ValueError, match="reset must be one of"):
        alif(x, 0.5, 0.2, reset="zero")
    with pytest.raises(ValueError, match="width must be > 0"):
        alif(x, 0.5, 0.2, width=0.0)
    with pytest.raises(ValueError, match="alpha must be > 0"):
        alif(x, 0.5, 0.2, alpha=float("nan"))
    for fn in (alif, alif_ref):
        with pytest.raises(ValueError, match="tau_param must be one of"):
            fn(x, 0.5, 0.2, tau_param="exp")
    with pytest.raises(TypeError, match="x must be a Tensor"):
        alif([[0.0]], 0.5, 0.2)


def test_ops_reject_bad_options_directly():
    """The registered ops check their string options too (for callers that bypass alif())."""
    x = torch.zeros(3, 4)
    tau, v_th = params()
    with pytest.raises(RuntimeError, match=r'reset must be "hard" or "soft", got "none"'):
        torch.ops.alif_cuda.alif_fwd(x, tau, v_th, None, None, "none", False, False, "rect", 1.0, 2.0)
    with pytest.raises(RuntimeError, match=r'surrogate must be "rect", "atan" or "sigmoid", got "tri"'):
        torch.ops.alif_cuda.alif_fwd(x, tau, v_th, None, None, "hard", False, False, "tri", 1.0, 2.0)
    with pytest.raises(RuntimeError, match=r'surrogate must be "rect", "atan" or "sigmoid", got "tri"'):
        torch.ops.alif_cuda.alif(x, tau, v_th, None, None, "hard", False, "tri", 1.0, 2.0)


def test_backward_without_checkpoints_is_an_error():
    """For T > 8 the backward starts its chunks from the forward's checkpoints: without them
    (alif_fwd with checkpoint=False) it says what it needs."""
    x = torch.zeros(11, 4)
    tau, v_th = params()
    spikes, u_last, u_ckpt = torch.ops.alif_cuda.alif_fwd(
        x, tau, v_th, None, None, "hard", False, False, "rect", 1.0, 2.0
    )
    assert u_ckpt.shape == (0,)
    with pytest.raises(RuntimeError, match=r"for T = 11 > 8 the backward needs alif_fwd's u_ckpt .* got \[0\]"):
        torch.ops.alif_cuda.alif_bwd(
            spikes, None, x, u_ckpt, None, tau, v_th, None, "hard", False, "rect", 1.0, 2.0, False
        )


def test_backward_rejects_gradients_of_the_wrong_shape():
    x = torch.zeros(3, 4)
    tau, v_th = params()
    with pytest.raises(RuntimeError, match=r"grad_spikes must be Float of shape \[3, 4\] on cpu, got Float of shape \[3, 5\]"):
        torch.ops.alif_cuda.alif_bwd(
            torch.zeros(3, 5), None, x, None, None, tau, v_th, None, "hard", False, "rect", 1.0, 2.0, False
        )
    with pytest.raises(RuntimeError, match=r"grad_u_last must be Float of shape \[4\] on cpu, got Double"):
        torch.ops.alif_cuda.alif_bwd(
            None, torch.zeros(4, dtype=torch.float64), x, None, None, tau, v_th, None, "hard", False,
            "rect", 1.0, 2.0, False,
        )


@pytest.mark.skipif(not HAS_CUDA, reason=CUDA_SKIP_REASON)
def test_mixed_devices():
    x = torch.zeros(3, 4, device="cuda")
    with pytest.raises(RuntimeError, match=r"tau must be on x's device \(cuda:0\), got cpu"):
        alif(x, torch.tensor(0.5), torch.tensor(0.2, device="cuda"))
    with pytest.raises(RuntimeError, match=r"u0 must be on x's device"):
        alif(x, 0.5, 0.2, torch.zeros(4))


@pytest.mark.parametrize("device", device_params())
def test_double_backward_is_refused(device):
    """Without a formula, autograd would silently return zeros for the second derivative."""
    x = torch.randn(4, 3, device=device, dtype=torch.float64, requires_grad=True)
    (grad_x,) = torch.autograd.grad(alif(x, 0.5, 0.2).sum(), x, create_graph=True)
    with pytest.raises(RuntimeError, match="double backward through alif_bwd .* is not supported"):
        grad_x.sum().backward()
