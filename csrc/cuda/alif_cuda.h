// The alif CUDA kernels as the host side (alif_cuda.cpp) launches them: the thread mapping's
// constants, and one launcher per kernel family and dtype, defined over alif_cuda_kernels.cuh by
// one unit per job, which nvcc builds in parallel: alif_fwd_cuda.cu (the forward, every dtype),
// alif_bwd_cuda_<dtype>.cu (the backward, one storage dtype each) and alif_reduce_cuda.cu (the
// tau/v_th reductions). No torch headers in any of them.
#pragma once

#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>
#include <cuda_runtime_api.h>

#include <cstdint>
#include <type_traits>

#include "alif_math.h"

namespace alif_cuda {

constexpr int kAlifThreads = 256;  // threads per block of the forward and backward kernels
constexpr int kFinalThreads = 1024;  // the one block that adds up the backward's block partials
constexpr int kMaxGridY = 65535;
constexpr int64_t kSliceValues = 16 * kAlifThreads;  // per-channel values one reduction block sums

// The 16-byte path's lane count for this storage type (1: none).
template <typename scalar_t>
constexpr int vector_lanes() {
  return std::is_same_v<scalar_t, double> ? 1 : 16 / static_cast<int>(sizeof(scalar_t));
}

// Blocks of the forward and backward kernels for N neurons, `lanes` a thread.
inline int64_t alif_blocks(int64_t N, int lanes) {
  return ceil_div(N, int64_t(kAlifThreads) * lanes);
}

// Per-channel reduction: the slices of a channel's B * I per-neuron values, one block each.
inline int64_t channel_slices(const AlifParams& p) { return ceil_div(p.B * p.I, kSliceValues); }

// The forward over q's pointers, `lanes` neurons a thread: vector_lanes<scalar_t>() when every
// pointer allows 16-byte accesses and N is a multiple of it, else 1.
void launch_alif_fwd(const AlifParams& p, const AlifPtrs<float>& q, int lanes, cudaStream_t stream);
void launch_alif_fwd(const AlifParams& p, const AlifPtrs<c10::Half>& q, int lanes,
                     cudaStream_t stream);
void launch_alif_fwd(const AlifParams& p, const AlifPtrs<c10::BFloat16>& q, int lanes,
                     cudaStream_t stream);
void launch_alif_fwd(const AlifParams& p, const AlifPtrs<double>& q, int lanes,
                     cudaStream_t stream);

// The backward (BPTT), `lanes` as for the forward. With per-channel parameters every neuron's
// dL/dtau and dL/dv_th terms go to q.dtau_n and q.dvth_n; with scalar ones each block's sums go to
// partials (2, alif_blocks(p.N, lanes)), in the math dtype.
void launch_alif_bwd(const AlifParams& p, const AlifPtrs<float>& q, int lanes, float* partials,
                     cudaStream_t stream);
void launch_alif_bwd(const AlifParams& p, const AlifPtrs<c10::Half>& q, int lanes, float* partials,
                     cudaStream_t stream);
void launch_alif_bwd(const AlifParams& p, const AlifPtrs<c10::BFloat16>& q, int lanes,
                     float* partials, cudaStream_t stream);
void launch_alif_bwd(const AlifParams& p, const AlifPtrs<double>& q, int lanes, double* partials,
                     cudaStream_t stream);

// out_a[0], out_b[0] = the sums of the (2, count) partials, in a fixed order; out_a times the
// logit chain factor of tau_logits[0] when tau_logits is given (the op was given logit(tau)).
void launch_sum_partials(const float* partials, int64_t count, const float* tau_logits,
                         float* out_a, float* out_b, cudaStream_t stream);
void launch_sum_partials(const double* partials, int64_t count, const double* tau_logits,
                         double* out_a, double* out_b, cudaStream_t stream);

// out_a[c], out_b[c] = the sums of channel c's per-neuron terms dtau_n, dvth_n ((B, C, I) each),
// through slice_partials (2, C, channel_slices(p)), in a fixed order; out_a times the logit chain
// factor of tau_logits[c] (or [0] for a scalar tau) when given.
void launch_channel_sums(const AlifParams& p, const float* dtau_n, const float* dvth_n,
                         float* slice_partials, const float* tau_logits, float* out_a,
                         float* out_b, cudaStream_t stream);
void launch_channel_sums(const AlifParams& p, const double* dtau_n, const double* dvth_n,
                         double* slice_partials, const double* tau_logits, double* out_a,
                         double* out_b, cudaStream_t stream);

}  // namespace alif_cuda
