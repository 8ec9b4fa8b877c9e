import pytest
import torch

import alif_cuda

HAS_CUDA = torch.cuda.is_available() and alif_cuda.cuda_kernels_available()
CUDA_SKIP_REASON = (
    "no CUDA device visible" if not torch.cuda.is_available()
    else "alif_cuda was built without CUDA kernels"
)

# Storage dtypes each backend supports.
DTYPES = {
    "cpu": [torch.float64, torch.float32],
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
