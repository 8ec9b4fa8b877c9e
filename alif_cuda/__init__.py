"""alif_cuda: fused kernels for adaptive LIF spiking neurons (ALIF) and temporal-attention image
decoding (TAID), with plain-PyTorch references and drop-in modules. The math of each op is in
docs/design.md."""
import torch

from . import _C  # noqa: F401  (loading the library registers torch.ops.alif_cuda.*)
from . import layers
from .nn import ALIF, TAID, MembraneDecoder, make_decoder, use_reference_ops
from .ops import alif, cpu_cache_stats, cuda_kernels_available, empty_cpu_cache, taid
from .reference import alif_ref, taid_ref

__version__ = "0.1.0"
__all__ = [
    "ALIF", "TAID", "MembraneDecoder", "make_decoder",
    "alif", "alif_ref", "taid", "taid_ref", "cuda_kernels_available", "use_reference_ops",
    "cpu_cache_stats", "empty_cpu_cache",
    "layers",
]
