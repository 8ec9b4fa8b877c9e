// The alif forward's launchers for every storage dtype: one unit, as the forward is a small share
// of the build (alif_cuda.h lists the units).
#include "cuda/alif_cuda.h"
#include "cuda/alif_cuda_kernels.cuh"

namespace alif_cuda {

void launch_alif_fwd(const AlifParams& p, const AlifPtrs<float>& q, int lanes,
                     cudaStream_t stream) {
  launch_fwd(p, q, lanes, stream);
}

void launch_alif_fwd(const AlifParams& p, const AlifPtrs<c10::Half>& q, int lanes,
                     cudaStream_t stream) {
  launch_fwd(p, q, lanes, stream);
}

void launch_alif_fwd(const AlifParams& p, const AlifPtrs<c10::BFloat16>& q, int lanes,
                     cudaStream_t stream) {
  launch_fwd(p, q, lanes, stream);
}

void launch_alif_fwd(const AlifParams& p, const AlifPtrs<double>& q, int lanes,
                     cudaStream_t stream) {
  launch_fwd(p, q, lanes, stream);
}

}  // namespace alif_cuda
