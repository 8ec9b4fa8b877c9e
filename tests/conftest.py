import re

import pytest
import torch

import alif_cuda

HAS_CUDA = torch.cuda.is_available() and alif_cuda.cuda_kernels_available()
CUDA_SKIP_REASON = (
    "no CUDA device visible" if not torch.cuda.is_available()
    else "alif_cuda was built without CUDA kernels"
)
# A device case on CUDA: marked `cuda` (scripts/gpu_check.sh verify runs `-m cuda`), skipped without CUDA.
CUDA_CASE = [pytest.mark.cuda, pytest.mark.skipif(not HAS_CUDA, reason=CUDA_SKIP_REASON)]
# A skip reason that says the test needs CUDA or a GPU.
NEEDS_GPU_REASON = re.compile(r"\bCUDA\b|\bGPU\b")

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
    """pytest params over devices; CUDA cases are marked `cuda` and skipped, with the reason, when unavailable."""
    return [pytest.param(d, marks=CUDA_CASE if d == "cuda" else ()) for d in devices]


def device_dtype_params():
    return [
        pytest.param(
            d, dt, id=f"{d}-{str(dt).split('.')[-1]}",
            marks=CUDA_CASE if d == "cuda" else (),
        )
        for d in ("cpu", "cuda")
        for dt in DTYPES[d]
    ]


def pytest_collection_modifyitems(items):
    """Marks `cuda` what the device params above do not: a test skipped for want of CUDA or a GPU
    (its skipif reason says so), and a test named for CUDA (the check that a CUDA build has its kernels)."""
    for item in items:
        reasons = [m.kwargs.get("reason", "") for m in item.iter_markers("skipif")]
        named = "cuda" in item.name.lower()
        if item.get_closest_marker("cuda") is None and (named or any(NEEDS_GPU_REASON.search(r) for r in reasons)):
            item.add_marker(pytest.mark.cuda)
