import pytest
import torch

import alif_cuda

HAS_CUDA = torch.cuda.is_available() and alif_cuda.cuda_kernels_available()
CUDA_SKIP_REASON = (
    "no CUDA device visible" if not torch.cuda.is_available()
    else "alif_cuda was built without CUDA kernels"
)

# (rtol, atol) for a kernel's output against its reference run on the same values: storage-dtype
# rounding after float32 math (float64 math for float64).
TOL = {
    torch.float64: (1e-10, 1e-12),
    torch.float32: (1e-4, 1e-5),
    torch.float16: (2e-3, 2e-3),
    torch.bfloat16: (1.6e-2, 1e-2),
}

# Storage dtypes each backend supports (float16/bfloat16 on the CPU compute in float32, so CPU
# autocast works).
DTYPES = {
    "cpu": [torch.float64, torch.float32, torch.float16, torch.bfloat16],
    "cuda": [torch.float64, torch.float32, torch.float16, torch.bfloat16],
}


def device_params(devices=("cpu", "cuda")):
    """pytest params over devices; CUDA cases are skipped, with the reason, when unavailable."""
    return [
        pytest.param(d, marks=pytest.mark.skipif(d == "cuda" and not HAS_CUDA, reason=CUDA_SKIP_REASON))
        for d in devices
    ]


def device_dtype_params():
    return [
        pytest.param(
            d, dt, id=f"{d}-{str(dt).split('.')[-1]}",
            marks=pytest.mark.skipif(d == "cuda" and not HAS_CUDA, reason=CUDA_SKIP_REASON),
        )
        for d in ("cpu", "cuda")
        for dt in DTYPES[d]
    ]
