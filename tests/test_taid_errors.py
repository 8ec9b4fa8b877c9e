"""Bad input to the taid op and the decoder modules: a clear error naming what was expected."""
import pytest
import torch

from alif_cuda import TAID, MembraneDecoder, make_decoder, taid
from conftest import HAS_CUDA, CUDA_SKIP_REASON, device_params


def inputs(T=4, device="cpu", dtype=torch.float32):
    return torch.randn(T, 2, 3, 5, 5, device=device, dtype=dtype), torch.randn(T, T, device=device)


@pytest.mark.parametrize("device", device_params())
def test_four_dim_s(device):
    s, w = inputs(device=device)
    with pytest.raises(RuntimeError, match=r"s must be \(T, B, C, H, W\) with T >= 1, got shape \[4, 2, 15, 5\]"):
        taid(s.flatten(2, 3), w)


@pytest.mark.parametrize("device", device_params())
def test_zero_time_steps(device):
    with pytest.raises(RuntimeError, match=r"s must be \(T, B, C, H, W\) with T >= 1, got shape \[0, 2, 3, 5, 5\]"):
        taid(torch.zeros(0, 2, 3, 5, 5, device=device), torch.zeros(0, 0, device=device))


@pytest.mark.parametrize("device", device_params())
def test_empty_planes(device):
    with pytest.raises(RuntimeError,
                       match=r"planes must hold at least one pixel \(H \* W >= 1\), got shape \[4, 2, 3, 0, 5\]"):
        taid(torch.zeros(4, 2, 3, 0, 5, device=device), torch.zeros(4, 4, device=device))


@pytest.mark.parametrize("device", device_params())
def test_w_of_wrong_shape(device):
    s, _ = inputs(device=device)
    with pytest.raises(RuntimeError,
                       match=r"w must be \(T, T\) = \[4, 4\] for s with T = 4 time steps, got shape \[4\]"):
        taid(s, torch.zeros(4, device=device))
    with pytest.raises(RuntimeError,
                       match=r"w must be \(T, T\) = \[4, 4\] for s with T = 4 time steps, got shape \[5, 5\]"):
        taid(s, torch.zeros(5, 5, device=device))  # T mismatch


@pytest.mark.parametrize("device", device_params())
@pytest.mark.parametrize("dtype", [torch.int32, torch.int64, torch.bool])
def test_integer_s_or_w(device, dtype):
    s, w = inputs(device=device)
    with pytest.raises(RuntimeError, match="s must be float32, float64, float16 or bfloat16, got"):
        taid(s.to(dtype), w)
    with pytest.raises(RuntimeError, match="w must be a floating-point tensor, got"):
        taid(s, w.to(dtype))


@pytest.mark.parametrize("device", device_params())
def test_unknown_reduce(device):
    s, w = inputs(device=device)
    with pytest.raises(ValueError, match=r"reduce must be one of \('sum', 'mean'\), got 'max'"):
        taid(s, w, "max")
    with pytest.raises(RuntimeError, match='reduce must be "sum" or "mean", got "max"'):
        torch.ops.alif_cuda.taid_fwd(s, w, "max")


def test_non_tensor_arguments():
    s, w = inputs()
    with pytest.raises(TypeError, match="taid: s must be a Tensor, got list"):
        taid(s.tolist(), w)
    with pytest.raises(TypeError, match="taid: w must be a Tensor, got float"):
        taid(s, 0.5)


@pytest.mark.skipif(not HAS_CUDA, reason=CUDA_SKIP_REASON)
def test_mixed_devices():
    s, w = inputs()
    with pytest.raises(RuntimeError, match=r"w must be on s's device \(cuda:0\), got cpu"):
        taid(s.cuda(), w)


def test_bwd_checks_its_saved_inputs():
    s, w = inputs()
    y, attn, squeezed = torch.ops.alif_cuda.taid_fwd(s, w, "sum")
    with pytest.raises(RuntimeError,
                       match=r"grad_y must be Float of shape \[2, 3, 5, 5\] on cpu, got Float of shape \[2, 3, 5\]"):
        torch.ops.alif_cuda.taid_bwd(y[..., 0], s, w, attn, squeezed, "sum")
    with pytest.raises(RuntimeError, match=r"attn and squeezed must be Float of shape \[4, 2, 3\] on cpu "
                                           r"\(taid_fwd's outputs\), got Double"):
        torch.ops.alif_cuda.taid_bwd(y, s, w, attn.double(), squeezed, "sum")


def test_decoder_modules_reject_bad_arguments():
    with pytest.raises(ValueError, match="TAID: T must be a positive int, got 0"):
        TAID(0)
    with pytest.raises(ValueError, match=r"reduce must be one of \('sum', 'mean'\), got 'avg'"):
        TAID(4, reduce="avg")
    with pytest.raises(ValueError, match=r"MembraneDecoder: decay must be in \(0, 1\], got 1.5"):
        MembraneDecoder(4, decay=1.5)
    with pytest.raises(ValueError, match=r"name must be one of \('taid', 'membrane'\), got 'rate'"):
        make_decoder("rate", 4)
    s, _ = inputs(T=5)
    for module in (TAID(4), MembraneDecoder(4)):
        with pytest.raises(ValueError, match=r"expected s of shape \(T=4, B, C, H, W\), got \(5, 2, 3, 5, 5\)"):
            module(s)
