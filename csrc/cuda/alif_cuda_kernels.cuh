// The CUDA kernels of the alif op family and their launches: float32, float16, bfloat16 and float64
// storage, math in float (double for float64). The time loops are alif_math.h's, the ones the CPU
// tests run; this file holds only the thread mapping, the loads and stores, and the tau/v_th
// reductions. Everything here is internal to the unit that includes it (alif_cuda.h lists them):
// each instantiates its share and defines its launchers with it.
//
// Thread mapping: a thread owns L consecutive neurons, one 16-byte access per step (L = 4 for
// float32, 8 for float16/bfloat16) when every pointer is 16-byte aligned and N % L == 0; else
// (sliced, misaligned input, or float64) one neuron. Step t of neuron n lives at t * N + n, so a
// warp's accesses of one step are contiguous. The forward loads step t+1 before step t's
// arithmetic; the backward issues a whole chunk's loads (x and grad, 2 * kChunk accesses) before
// replaying it.
// dL/dtau, dL/dv_th, deterministic and without atomics: scalar parameters reduce per block in a
// fixed order, then one small kernel adds the block partials in a fixed order; per-channel
// parameters write per-neuron sums (8 bytes a neuron), which a grid of (slice, channel) blocks
// reduces to partials and a last kernel adds per channel, all in a fixed order.
#pragma once

#include <ATen/OpMathType.h>
#include <c10/cuda/CUDAException.h>

#include <algorithm>
#include <cstdint>
#include <type_traits>

#include "alif_math.h"
#include "common.h"
#include "cuda/alif_cuda.h"

namespace alif_cuda {
namespace {

// L values of T as one aligned access (16 bytes: one LDG.128/STG.128; 32 bytes of float
// checkpoints for L = 8: two).
template <typename T, int L>
struct alignas(sizeof(T) * L >= 16 ? 16 : sizeof(T) * L) Pack {
  T v[L];
};

// One instantiation of the forward and backward kernels: kThreads threads a block (their launch
// bound), each owning kLanes consecutive neurons, held in value_t in the math dtype acc_t (a
// scalar, or Lanes<acc_t, kLanes>) and moved as one Pack of kLanes values per access.
template <typename scalar_t, int L>
struct AlifKernelTraits {
  using acc_t = at::opmath_type<scalar_t>;
  using value_t = std::conditional_t<L == 1, acc_t, Lanes<acc_t, L>>;
  static constexpr int kThreads = kAlifThreads;
  static constexpr int kLanes = L;

  // The thread's lanes from p (storage or checkpoints), in acc_t.
  template <typename T>
  static __device__ __forceinline__ value_t load(const T* p) {
    if constexpr (L == 1) {
      return acc_t(*p);
    } else {
      const Pack<T, L> pk = *reinterpret_cast<const Pack<T, L>*>(p);
      Lanes<acc_t, L> r;
#pragma unroll
      for (int l = 0; l < L; ++l) r.v[l] = acc_t(pk.v[l]);
      return r;
    }
  }

  template <typename T>
  static __device__ __forceinline__ void store(T* p, const value_t& v) {
    if constexpr (L == 1) {
      *p = T(v);
    } else {
      Pack<T, L> pk;
#pragma unroll
      for (int l = 0; l < L; ++l) pk.v[l] = T(v.v[l]);
      *reinterpret_cast<Pack<T, L>*>(p) = pk;
    }
  }
};

// The Mem accessor of alif_math.h for the L neurons [n, n + L) of one thread.
template <typename scalar_t, int L, bool kStatic>
struct CudaMem {
  using Tr = AlifKernelTraits<scalar_t, L>;
  using acc_t = typename Tr::acc_t;
  using V = typename Tr::value_t;
  const AlifPtrs<scalar_t>& q;
  int64_t N, n;

  __device__ V zero() const { return V(acc_t(0)); }
  __device__ V x(int64_t t) const { return Tr::load(q.x + (kStatic ? 0 : t * N) + n); }
  __device__ V g(int64_t t) const {
    return q.grad_spikes ? Tr::load(q.grad_spikes + t * N + n) : zero();
  }
  __device__ V u0() const { return q.u0 ? Tr::load(q.u0 + n) : zero(); }
  __device__ V grad_u_last() const { return q.grad_u_last ? Tr::load(q.grad_u_last + n) : zero(); }
  __device__ V ckpt(int64_t i) const { return Tr::load(q.u_ckpt + i * N + n); }
  __device__ void spikes(int64_t t, const V& o) const { Tr::store(q.spikes + t * N + n, o); }
  __device__ void u_last(const V& u) const {
    if (q.u_last) Tr::store(q.u_last + n, u);
  }
  __device__ void set_ckpt(int64_t i, const V& u) const {
    if (q.u_ckpt) Tr::store(q.u_ckpt + i * N + n, u);
  }
  __device__ void grad_x(int64_t t, const V& dh) const { Tr::store(q.grad_x + t * N + n, dh); }
  __device__ void grad_x_static(const V& s) const { Tr::store(q.grad_x + n, s); }
  __device__ void grad_u0(const V& du) const {
    if (q.grad_u0) Tr::store(q.grad_u0 + n, du);
  }
};

// tau or v_th of the thread's lanes: channel (n / I) % C per lane.
template <typename Tr>
__device__ __forceinline__ typename Tr::value_t lane_param(const AlifParams& p,
                                                           const typename Tr::acc_t* values,
                                                           bool per_channel, int64_t n) {
  if constexpr (Tr::kLanes == 1) {
    return values[per_channel ? (n / p.I) % p.C : 0];
  } else {
    typename Tr::value_t r;
#pragma unroll
    for (int l = 0; l < Tr::kLanes; ++l) r.v[l] = values[per_channel ? ((n + l) / p.I) % p.C : 0];
    return r;
  }
}

template <typename Tr, typename scalar_t>
__device__ __forceinline__ NeuronConsts<typename Tr::value_t> thread_consts(
    const AlifParams& p, const AlifPtrs<scalar_t>& q, int64_t n) {
  using acc_t = typename Tr::acc_t;
  auto tau = lane_param<Tr>(p, q.tau, p.tau_per_channel, n);
  if (p.tau_logit) tau = tau_from_logit<decltype(tau), acc_t>(tau);
  return make_consts(tau, lane_param<Tr>(p, q.v_th, p.vth_per_channel, n),
                     SurrogateScalars<acc_t>(p));
}

template <typename scalar_t, int L, bool kSoft, bool kStatic, bool kDecay>
__global__ void __launch_bounds__(AlifKernelTraits<scalar_t, L>::kThreads)
    alif_fwd_kernel(const AlifParams p, const AlifPtrs<scalar_t> q) {
  const int64_t n = (blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x) * L;
  if (n >= p.N) return;
  const CudaMem<scalar_t, L, kStatic> m{q, p.N, n};
  alif_fwd_neurons<kSoft, kDecay>(m, thread_consts<AlifKernelTraits<scalar_t, L>>(p, q, n), p.T);
}

// partials: (2, gridDim.x) block sums of dtau and dv_th (scalar parameters only).
template <typename scalar_t, int L, bool kSoft, bool kDetach, Surrogate kSur, bool kStatic,
          bool kDecay>
__global__ void __launch_bounds__(AlifKernelTraits<scalar_t, L>::kThreads)
    alif_bwd_kernel(const AlifParams p, const AlifPtrs<scalar_t> q,
                    at::opmath_type<scalar_t>* __restrict__ partials) {
  using Tr = AlifKernelTraits<scalar_t, L>;
  using acc_t = typename Tr::acc_t;
  using V = typename Tr::value_t;
  const int64_t n = (blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x) * L;
  const bool per_channel = p.tau_per_channel || p.vth_per_channel;
  acc_t a = 0, b = 0;
  if (n < p.N) {
    const CudaMem<scalar_t, L, kStatic> m{q, p.N, n};
    V dtau = m.zero(), dvth = m.zero();
    alif_bwd_neurons<kSoft, kDetach, kSur, kStatic, kDecay>(m, thread_consts<Tr>(p, q, n), p.T,
                                                            dtau, dvth);
    if (per_channel) {
      Tr::store(q.dtau_n + n, dtau);
      Tr::store(q.dvth_n + n, dvth);
    } else if constexpr (L == 1) {
      a = dtau;
      b = dvth;
    } else {
#pragma unroll
      for (int l = 0; l < L; ++l) {
        a += dtau.v[l];
        b += dvth.v[l];
      }
    }
  }
  if (per_channel) return;  // uniform over the grid: no thread waits in block_sum2 alone
  block_sum2<acc_t, Tr::kThreads>(a, b);
  if (threadIdx.x == 0) {
    partials[blockIdx.x] = a;
    partials[gridDim.x + blockIdx.x] = b;
  }
}

// dL/dlogit from dL/dtau when the op was given logit(tau) (tau_logits non-null).
template <typename acc_t>
__device__ __forceinline__ acc_t chain_tau_logit(acc_t dtau, const acc_t* tau_logits, int64_t c) {
  return tau_logits ? dtau * logit_slope(tau_from_logit<acc_t, acc_t>(tau_logits[c])) : dtau;
}

// out_a[0], out_b[0] = the sums of the (2, count) partials, in a fixed order: one block; out_a
// times the logit chain factor of tau_logits[0] when given.
template <typename acc_t>
__global__ void __launch_bounds__(kFinalThreads)
    sum_partials_kernel(const acc_t* __restrict__ partials, int64_t count,
                        const acc_t* __restrict__ tau_logits, acc_t* __restrict__ out_a,
                        acc_t* __restrict__ out_b) {
  acc_t a = 0, b = 0;
  for (int64_t i = threadIdx.x; i < count; i += blockDim.x) {
    a += partials[i];
    b += partials[count + i];
  }
  block_sum2<acc_t, kFinalThreads>(a, b);
  if (threadIdx.x == 0) {
    *out_a = chain_tau_logit(a, tau_logits, 0);
    *out_b = b;
  }
}

// Per-channel, first pass: block (s, c) sums slice s of channel c's B * I per-neuron values
// into partials (2, C, slices).
template <typename acc_t>
__global__ void __launch_bounds__(kAlifThreads)
    channel_slices_kernel(const AlifParams p, const acc_t* __restrict__ dtau_n,
                          const acc_t* __restrict__ dvth_n, int64_t slices,
                          acc_t* __restrict__ partials) {
  const int64_t per_channel = p.B * p.I;
  for (int64_t c = blockIdx.y; c < p.C; c += gridDim.y) {
    const int64_t j0 = blockIdx.x * kSliceValues;
    const int64_t j1 = j0 + kSliceValues < per_channel ? j0 + kSliceValues : per_channel;
    acc_t a = 0, b = 0;
    for (int64_t j = j0 + threadIdx.x; j < j1; j += blockDim.x) {
      const int64_t n = ((j / p.I) * p.C + c) * p.I + j % p.I;
      a += dtau_n[n];
      b += dvth_n[n];
    }
    block_sum2<acc_t, kAlifThreads>(a, b);
    if (threadIdx.x == 0) {
      partials[c * slices + blockIdx.x] = a;
      partials[(p.C + c) * slices + blockIdx.x] = b;
    }
  }
}

// Per-channel, second pass: out_a[c], out_b[c] = the sums of channel c's slice partials; out_a
// times the logit chain factor of tau_logits[c] (or [0] for a scalar tau) when given.
template <typename acc_t>
__global__ void __launch_bounds__(kAlifThreads)
    channel_final_kernel(const acc_t* __restrict__ partials, int64_t C, int64_t slices,
                         const acc_t* __restrict__ tau_logits, bool tau_per_channel,
                         acc_t* __restrict__ out_a, acc_t* __restrict__ out_b) {
  for (int64_t c = blockIdx.x; c < C; c += gridDim.x) {
    acc_t a = 0, b = 0;
    for (int64_t i = threadIdx.x; i < slices; i += blockDim.x) {
      a += partials[c * slices + i];
      b += partials[(C + c) * slices + i];
    }
    block_sum2<acc_t, kAlifThreads>(a, b);
    if (threadIdx.x == 0) {
      out_a[c] = chain_tau_logit(a, tau_logits, tau_per_channel ? c : 0);
      out_b[c] = b;
    }
  }
}

// ---- the launches (the units alif_cuda.h lists define its launchers with these) --------------

template <typename scalar_t, int L>
void launch_fwd_kernels(const AlifParams& p, const AlifPtrs<scalar_t>& q, cudaStream_t stream) {
  using Tr = AlifKernelTraits<scalar_t, L>;
  alif_fwd_flag_switch(p, [&](auto soft, auto stat, auto decay) {
    alif_fwd_kernel<scalar_t, L, decltype(soft)::value, decltype(stat)::value,
                    decltype(decay)::value>
        <<<alif_blocks(p.N, L), Tr::kThreads, 0, stream>>>(p, q);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

template <typename scalar_t>
void launch_fwd(const AlifParams& p, const AlifPtrs<scalar_t>& q, int lanes,
                cudaStream_t stream) {
  constexpr int kL = vector_lanes<scalar_t>();
  if (lanes == kL) {
    launch_fwd_kernels<scalar_t, kL>(p, q, stream);
  } else {
    launch_fwd_kernels<scalar_t, 1>(p, q, stream);
  }
}

template <typename scalar_t, int L>
void launch_bwd_kernels(const AlifParams& p, const AlifPtrs<scalar_t>& q,
                        at::opmath_type<scalar_t>* partials, cudaStream_t stream) {
  using Tr = AlifKernelTraits<scalar_t, L>;
  alif_flag_switch(p, [&](auto soft, auto detach, auto sur, auto stat, auto decay) {
    alif_bwd_kernel<scalar_t, L, decltype(soft)::value, decltype(detach)::value,
                    decltype(sur)::value, decltype(stat)::value, decltype(decay)::value>
        <<<alif_blocks(p.N, L), Tr::kThreads, 0, stream>>>(p, q, partials);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

template <typename scalar_t>
void launch_bwd(const AlifParams& p, const AlifPtrs<scalar_t>& q, int lanes,
                at::opmath_type<scalar_t>* partials, cudaStream_t stream) {
  constexpr int kL = vector_lanes<scalar_t>();
  if (lanes == kL) {
    launch_bwd_kernels<scalar_t, kL>(p, q, partials, stream);
  } else {
    launch_bwd_kernels<scalar_t, 1>(p, q, partials, stream);
  }
}

template <typename acc_t>
void launch_sum_partials_kernel(const acc_t* partials, int64_t count, const acc_t* tau_logits,
                                acc_t* out_a, acc_t* out_b, cudaStream_t stream) {
  sum_partials_kernel<acc_t><<<1, kFinalThreads, 0, stream>>>(partials, count, tau_logits, out_a,
                                                                out_b);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

template <typename acc_t>
void launch_channel_sum_kernels(const AlifParams& p, const acc_t* dtau_n, const acc_t* dvth_n,
                                acc_t* slice_partials, const acc_t* tau_logits, acc_t* out_a,
                                acc_t* out_b, cudaStream_t stream) {
  const int64_t slices = channel_slices(p);
  const dim3 grid(slices, std::min<int64_t>(p.C, kMaxGridY));
  channel_slices_kernel<acc_t><<<grid, kAlifThreads, 0, stream>>>(p, dtau_n, dvth_n, slices,
                                                                  slice_partials);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  channel_final_kernel<acc_t><<<std::min<int64_t>(p.C, kMaxGridY), kAlifThreads, 0, stream>>>(
      slice_partials, p.C, slices, tau_logits, p.tau_per_channel, out_a, out_b);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

}  // namespace
}  // namespace alif_cuda
