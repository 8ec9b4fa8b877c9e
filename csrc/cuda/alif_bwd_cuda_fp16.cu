// The alif backward's launcher for float16 storage: one unit per dtype, the backward being most of
// the build, so nvcc compiles the dtypes in parallel (alif_cuda.h lists the units).
#include "cuda/alif_cuda.h"
#include "cuda/alif_cuda_kernels.cuh"

namespace alif_cuda {

void launch_alif_bwd(const AlifParams& p, const AlifPtrs<c10::Half>& q, int lanes, float* partials,
                     cudaStream_t stream) {
  launch_bwd(p, q, lanes, partials, stream);
}

}  // namespace alif_cuda
