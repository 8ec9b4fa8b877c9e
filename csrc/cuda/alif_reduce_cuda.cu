// The alif backward's tau/v_th reductions' launchers, in the math dtypes float and double.
#include "cuda/alif_cuda.h"
#include "cuda/alif_cuda_kernels.cuh"

namespace alif_cuda {

void launch_sum_partials(const float* partials, int64_t count, const float* tau_logits,
                         float* out_a, float* out_b, cudaStream_t stream) {
  launch_sum_partials_kernel(partials, count, tau_logits, out_a, out_b, stream);
}

void launch_sum_partials(const double* partials, int64_t count, const double* tau_logits,
                         double* out_a, double* out_b, cudaStream_t stream) {
  launch_sum_partials_kernel(partials, count, tau_logits, out_a, out_b, stream);
}

void launch_channel_sums(const AlifParams& p, const float* dtau_n, const float* dvth_n,
                         float* slice_partials, const float* tau_logits, float* out_a,
                         float* out_b, cudaStream_t stream) {
  launch_channel_sum_kernels(p, dtau_n, dvth_n, slice_partials, tau_logits, out_a, out_b, stream);
}

void launch_channel_sums(const AlifParams& p, const double* dtau_n, const double* dvth_n,
                         double* slice_partials, const double* tau_logits, double* out_a,
                         double* out_b, cudaStream_t stream) {
  launch_channel_sum_kernels(p, dtau_n, dvth_n, slice_partials, tau_logits, out_a, out_b, stream);
}

}  // namespace alif_cuda
