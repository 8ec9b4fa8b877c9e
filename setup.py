"""Build alif_cuda._C: CUDA kernels when nvcc and a GPU (or FORCE_CUDA=1) are present, else CPU only.

    pip install --no-build-isolation .          # picks CUDA if it can
    FORCE_CUDA=1 pip install --no-build-isolation .   # CUDA even without a visible GPU (CI)
    ALIF_CUDA_CPU_ONLY=1 pip install --no-build-isolation .
TORCH_CUDA_ARCH_LIST (e.g. "9.0") picks the GPU targets; DEBUG=1 builds with -O0 -g.
"""
import glob
import os

import torch
from setuptools import find_packages, setup
from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension


def env_flag(name):
    return os.environ.get(name, "0").lower() in ("1", "true", "yes", "on")


cpu_only = env_flag("ALIF_CUDA_CPU_ONLY")
force_cuda = env_flag("FORCE_CUDA")
if cpu_only and force_cuda:
    raise RuntimeError("setup.py: FORCE_CUDA=1 and ALIF_CUDA_CPU_ONLY=1 contradict each other; set one")
if force_cuda and CUDA_HOME is None:
    raise RuntimeError("setup.py: FORCE_CUDA=1 but no CUDA toolkit was found; set CUDA_HOME=/usr/local/cuda")
use_cuda = not cpu_only and CUDA_HOME is not None and (force_cuda or torch.cuda.is_available())

debug = env_flag("DEBUG")
opt = ["-O0", "-g"] if debug else ["-O3"]
# csrc/ holds the ops and their host side, csrc/cpu/ the CPU kernels, csrc/cuda/ the CUDA ones and
# the ops' CUDA host side (plain C++).
sources = sorted(glob.glob("csrc/*.cpp") + glob.glob("csrc/cpu/*.cpp"))
# -fopenmp: at::parallel_for is a header template, so the extension itself must enable OpenMP.
extra_compile_args = {"cxx": opt + ["-fopenmp"]}
if use_cuda:
    sources += sorted(glob.glob("csrc/cuda/*.cpp") + glob.glob("csrc/cuda/*.cu"))
    # --fmad=false: h = tau * u + x must round like PyTorch's separate multiply and add, so the
    # kernels' spikes equal the reference's bit for bit (the kernels are memory-bound; no cost).
    extra_compile_args["nvcc"] = opt + ["-lineinfo", "--fmad=false"]
    extension = CUDAExtension
else:
    extension = CppExtension

setup(
    packages=find_packages(include=["alif_cuda", "alif_cuda.*"]),
    ext_modules=[
        extension(
            "alif_cuda._C",
            sources,
            include_dirs=[os.path.abspath("csrc")],
            extra_compile_args=extra_compile_args,
            extra_link_args=["-fopenmp"],
            py_limited_api=False,
        )
    ],
    cmdclass={"build_ext": BuildExtension},
)
