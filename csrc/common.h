// What every translation unit of the library may share, host or device, CPU or CUDA: the macro for
// functions both compilers build, integer helpers, the state-dtype rule and the environment
// switches; under nvcc also the warp and block sums of the reductions. No tensor types, so the CPU
// kernels compiled for another instruction set (cpu/alif_cpu_avx2.cpp) can include it.
#pragma once

#include <c10/core/ScalarType.h>

#include <cstdint>
#include <cstdlib>
#include <strings.h>

#ifdef __CUDACC__
#define ALIF_HD __host__ __device__ __forceinline__
#define ALIF_UNROLL _Pragma("unroll")
#else
#define ALIF_HD inline
#define ALIF_UNROLL
#endif

namespace alif_cuda {

ALIF_HD int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }
ALIF_HD int64_t round_up(int64_t a, int64_t b) { return ceil_div(a, b) * b; }

// The dtype of the state, the checkpoints, TAID's attention and every reduction: float64 for
// float64 storage, float32 for the others (the kernels' at::opmath_type).
inline at::ScalarType state_dtype_of(at::ScalarType storage) {
  return storage == at::kDouble ? at::kDouble : at::kFloat;
}

// Whether the environment variable is 1, true, yes or on (in any case). The switches are read
// once per process: callers keep the answer in a function-local static.
inline bool env_flag(const char* name) {
  const char* v = std::getenv(name);
  if (v == nullptr) return false;
  for (const char* on : {"1", "true", "yes", "on"}) {
    if (strcasecmp(v, on) == 0) return true;
  }
  return false;
}

#ifdef __CUDACC__
template <typename acc_t>
__device__ __forceinline__ acc_t warp_sum(acc_t v) {
  for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_down_sync(0xffffffffu, v, offset);
  return v;
}

// Sums a and b over the block in a fixed order; thread 0 gets the totals.
template <typename acc_t, int kBlockThreads>
__device__ void block_sum2(acc_t& a, acc_t& b) {
  constexpr int kBlockWarps = kBlockThreads / 32;
  __shared__ acc_t sa[kBlockWarps], sb[kBlockWarps];
  for (int offset = 16; offset > 0; offset >>= 1) {
    a += __shfl_down_sync(0xffffffffu, a, offset);
    b += __shfl_down_sync(0xffffffffu, b, offset);
  }
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  if (lane == 0) {
    sa[warp] = a;
    sb[warp] = b;
  }
  __syncthreads();
  if (warp == 0) {
    a = lane < kBlockWarps ? sa[lane] : acc_t(0);
    b = lane < kBlockWarps ? sb[lane] : acc_t(0);
    for (int offset = 16; offset > 0; offset >>= 1) {
      a += __shfl_down_sync(0xffffffffu, a, offset);
      b += __shfl_down_sync(0xffffffffu, b, offset);
    }
  }
  __syncthreads();  // the shared arrays may be reused by the caller's next iteration
}
#endif

}  // namespace alif_cuda
