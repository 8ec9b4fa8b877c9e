// The CUDA kernels of the taid op family: float32, float16, bfloat16 (and float64) storage, math
// in float (double for float64) through TaidMath (taid_math.h), the per-plane arithmetic the CPU
// kernels run too. What is CUDA-only here: the thread mapping, the loads and stores, the sums over
// warps and cluster ranks, and the cluster exchange. Included by taid_launch_cuda.cu alone: the
// kernels are internal to that unit.
//
// Forward: a (b, c) plane is handled by one block, or on Hopper by a cluster of up to 8 blocks
// that each take a slice of its pixels. A block first copies its slice of every time step into
// shared memory, all T steps' copies in flight at once (cp.async, 16 bytes each, when s is 16-byte
// aligned and a plane's size allows it; plain element loads otherwise), then adds up each step's
// values from shared memory; the per-step sums of a cluster meet through distributed shared
// memory, in rank order. Every block then knows the plane's means X and attention A and writes y
// for its slice from shared memory (16-byte stores where aligned): s is read from HBM once. A plane
// too large for that is read twice (the second time mostly from L2).
// Backward: one block per plane reads s and grad_y once for G_t = sum g s_t, kSteps time steps'
// loads in flight per pixel chunk, then writes ds_t = coef_t g + shift_t without s, reading each g
// chunk once. dL/dw sums the planes' dZ in a fixed order. Nothing uses atomics; the results are
// deterministic.
#pragma once

#include <ATen/OpMathType.h>
#include <cooperative_groups.h>

#include <algorithm>
#include <cstdint>
#include <cstring>

#include "common.h"
#include "taid_math.h"

namespace alif_cuda {
namespace {

namespace cg = cooperative_groups;

constexpr int kMaxThreads = 512;
constexpr int kDwThreads = 256;
constexpr size_t kAccessBytes = 16;

// Values of scalar_t in one 16-byte access.
template <typename scalar_t>
constexpr int kVec = static_cast<int>(kAccessBytes / sizeof(scalar_t));

// L consecutive values from p, in acc_t: one 16-byte access when L > 1 (the caller guarantees the
// alignment), a plain load when L == 1.
template <int L, typename scalar_t, typename acc_t>
__device__ __forceinline__ void load_lanes(const scalar_t* p, acc_t (&out)[L]) {
  if constexpr (L == 1) {
    out[0] = acc_t(*p);
  } else {
    static_assert(L * sizeof(scalar_t) == kAccessBytes, "one 16-byte access");
    const uint4 raw = *reinterpret_cast<const uint4*>(p);
    scalar_t v[L];
    memcpy(v, &raw, kAccessBytes);
#pragma unroll
    for (int k = 0; k < L; ++k) out[k] = acc_t(v[k]);
  }
}

// The same for a store to global memory.
template <int L, typename scalar_t, typename acc_t>
__device__ __forceinline__ void store_lanes(scalar_t* p, const acc_t (&in)[L]) {
  if constexpr (L == 1) {
    *p = scalar_t(in[0]);
  } else {
    scalar_t v[L];
#pragma unroll
    for (int k = 0; k < L; ++k) v[k] = scalar_t(in[k]);
    uint4 raw;
    memcpy(&raw, v, kAccessBytes);
    // Spelled out: left to itself the compiler splits some of these into two 8-byte stores.
    asm volatile("st.global.v4.b32 [%0], {%1, %2, %3, %4};\n" ::"l"(p), "r"(raw.x), "r"(raw.y),
                 "r"(raw.z), "r"(raw.w)
                 : "memory");
  }
}

// 16 bytes from global to shared memory without passing through registers; completes at
// cp_async_wait_all. (sm_80 and newer; older targets copy through registers.)
__device__ __forceinline__ void cp_async16(void* smem, const void* gmem) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  const unsigned dst = static_cast<unsigned>(__cvta_generic_to_shared(smem));
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(dst), "l"(gmem));
#else
  *static_cast<uint4*>(smem) = *static_cast<const uint4*>(gmem);
#endif
}

__device__ __forceinline__ void cp_async_wait_all() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  asm volatile("cp.async.wait_all;\n" ::: "memory");
#endif
}

// Dynamic shared memory of a taid block: per-warp partial sums (T x warps), four arrays of T
// values, then (forward, cached) the block's slice of s, T rows of `slice` values starting on a
// 16-byte boundary.
template <typename acc_t>
struct Smem {
  acc_t *part, *red, *tot, *coef, *extra;
  __device__ Smem(unsigned char* raw, int64_t T, int warps) {
    part = reinterpret_cast<acc_t*>(raw);
    red = part + T * warps;
    tot = red + T;
    coef = tot + T;
    extra = coef + T;
  }
};

// Bytes of the arrays before the cache, rounded up so that the cache starts 16-byte aligned.
__host__ __device__ inline size_t smem_fixed_bytes(int64_t T, int threads, size_t acc_size) {
  const int64_t bytes = (T * (threads / 32) + 4 * T) * static_cast<int64_t>(acc_size);
  return static_cast<size_t>(round_up(bytes, static_cast<int64_t>(kAccessBytes)));
}

// Each warp has left its part of step t's sum in part[t * warps + warp]. Adds them up in a fixed
// order, then (kCluster) over the cluster's blocks in rank order: tot[t] = mul * plane sum.
template <typename acc_t, bool kCluster>
__device__ void plane_sums(int64_t T, const Smem<acc_t>& sm, acc_t mul) {
  const int warps = blockDim.x / 32;
  __syncthreads();
  acc_t* block_out = kCluster ? sm.red : sm.tot;
  for (int64_t t = threadIdx.x; t < T; t += blockDim.x) {
    acc_t r = 0;
    for (int k = 0; k < warps; ++k) r += sm.part[t * warps + k];
    block_out[t] = kCluster ? r : r * mul;
  }
  if constexpr (kCluster) {
#if !defined(__CUDA_ARCH__) || __CUDA_ARCH__ >= 900
    cg::cluster_group cluster = cg::this_cluster();
    cluster.sync();  // every block's red[] is complete
    const int blocks = static_cast<int>(cluster.num_blocks());
    for (int64_t t = threadIdx.x; t < T; t += blockDim.x) {
      acc_t r = 0;
      for (int rank = 0; rank < blocks; ++rank) r += cluster.map_shared_rank(sm.red, rank)[t];
      sm.tot[t] = r * mul;
    }
    cluster.sync();  // nobody moves on (and may exit) while another block still reads its red[]
#else
    __trap();  // the host launches clusters only for kernels whose PTX targets sm_90 or newer
#endif
  } else {
    __syncthreads();
  }
}

// Stores thread `warp lane`'s part of step t's sum for plane_sums.
template <typename acc_t>
__device__ __forceinline__ void put_part(const Smem<acc_t>& sm, int64_t t, acc_t sum) {
  sum = warp_sum(sum);
  if (threadIdx.x % 32 == 0) sm.part[t * (blockDim.x / 32) + threadIdx.x / 32] = sum;
}

// Pass 2 of the forward over pixels [lo, hi): y = sum_t coef_t row_t, L pixels per access.
// row(t) points at pixel lo of step t (in the cache or in s).
template <int L, typename scalar_t, typename acc_t, typename Row>
__device__ __forceinline__ void reweight_slice(int64_t T, int64_t n, const acc_t* coef, Row row,
                                               scalar_t* yp) {
  using M = TaidMath<acc_t>;
  for (int64_t j = threadIdx.x * L; j < n; j += blockDim.x * L) {
    acc_t acc[L];
#pragma unroll
    for (int k = 0; k < L; ++k) acc[k] = 0;
    for (int64_t t = 0; t < T; ++t) {
      acc_t v[L];
      load_lanes<L>(row(t) + j, v);
      const acc_t c = coef[t];
#pragma unroll
      for (int k = 0; k < L; ++k) acc[k] = M::reweight(acc[k], c, v[k]);
    }
    store_lanes<L>(yp + j, acc);
  }
}

// kCache: the slice lives in shared memory between the passes (else pass 2 reads s again).
// kStaged: pass 1 copies every step of the slice into the cache before summing any (else it loads
// and sums one step at a time); a cached slice is always staged. vec: s allows 16-byte accesses
// (s 16-byte aligned, plane_size and slice multiples of kVec).
template <typename scalar_t, bool kCache, bool kCluster, bool kStaged>
__global__ void __launch_bounds__(kMaxThreads)
    taid_fwd_kernel(TaidParams p, int64_t split, int64_t slice, bool vec,
                    const scalar_t* __restrict__ s,
                    const at::opmath_type<scalar_t>* __restrict__ w, scalar_t* __restrict__ y,
                    at::opmath_type<scalar_t>* __restrict__ attn,
                    at::opmath_type<scalar_t>* __restrict__ squeezed) {
  using acc_t = at::opmath_type<scalar_t>;
  using M = TaidMath<acc_t>;
  constexpr int V = kVec<scalar_t>;
  static_assert(kStaged == kCache, "a cached slice is staged, an uncached one is not");
  extern __shared__ __align__(16) unsigned char smem_raw[];
  const int warps = blockDim.x / 32;
  const Smem<acc_t> sm(smem_raw, p.T, warps);
  scalar_t* cache =
      reinterpret_cast<scalar_t*>(smem_raw + smem_fixed_bytes(p.T, blockDim.x, sizeof(acc_t)));
  const int64_t HW = p.plane_size, step = p.planes * HW;
  const int64_t plane = blockIdx.x / split, rank = blockIdx.x % split;
  const int64_t lo = std::min(rank * slice, HW), hi = std::min(lo + slice, HW), n = hi - lo;
  const scalar_t* sp = s + plane * HW + lo;  // pixel lo of step 0

  if constexpr (kStaged) {
    // Pass 1a: every step's slice into the cache, all copies in flight before any sum.
    if (vec) {
      for (int64_t t = 0; t < p.T; ++t) {
        for (int64_t j = threadIdx.x * V; j < n; j += blockDim.x * V) {
          cp_async16(cache + t * slice + j, sp + t * step + j);
        }
      }
      cp_async_wait_all();
    } else {
      for (int64_t t = 0; t < p.T; ++t) {
#pragma unroll 8
        for (int64_t j = threadIdx.x; j < n; j += blockDim.x) cache[t * slice + j] = sp[t * step + j];
      }
    }
    __syncthreads();
    // Pass 1b: each step's sum from the cache. Every thread runs every t, so whole warps reach
    // the shuffles.
    for (int64_t t = 0; t < p.T; ++t) {
      acc_t sum = 0;
      for (int64_t j = threadIdx.x; j < n; j += blockDim.x) sum += acc_t(cache[t * slice + j]);
      put_part(sm, t, sum);
    }
  } else {
    for (int64_t t = 0; t < p.T; ++t) {
      acc_t sum = 0;
      for (int64_t j = threadIdx.x; j < n; j += blockDim.x) sum += acc_t(sp[t * step + j]);
      put_part(sm, t, sum);
    }
  }
  plane_sums<acc_t, kCluster>(p.T, sm, acc_t(1));  // tot = the plane's per-step sums

  const acc_t scale = M::scale(p);
  for (int64_t t = threadIdx.x; t < p.T; t += blockDim.x) sm.red[t] = M::squeeze(sm.tot[t], HW);
  __syncthreads();
  for (int64_t t = threadIdx.x; t < p.T; t += blockDim.x) {
    const acc_t a = M::attention(w, sm.red, p.T, t);
    sm.coef[t] = M::coef(a, scale);
    if (rank == 0) {
      attn[t * p.planes + plane] = a;
      squeezed[t * p.planes + plane] = sm.red[t];
    }
  }
  __syncthreads();

  // Pass 2: y over the slice, s from the cache (or again from global).
  scalar_t* yp = y + plane * HW + lo;
  if constexpr (kCache) {
    auto row = [&](int64_t t) -> const scalar_t* { return cache + t * slice; };
    if (vec) {
      reweight_slice<V>(p.T, n, sm.coef, row, yp);
    } else {
      reweight_slice<1>(p.T, n, sm.coef, row, yp);
    }
  } else {
    auto row = [&](int64_t t) { return sp + t * step; };
    if (vec) {
      reweight_slice<V>(p.T, n, sm.coef, row, yp);
    } else {
      reweight_slice<1>(p.T, n, sm.coef, row, yp);
    }
  }
}

// Backward pass 1 over the plane's pixels, L per access: G_t / scale = sum_px g s_t for kSteps
// steps at a time, so a chunk's g and kSteps loads of s are in flight together.
template <int L, int kSteps, typename scalar_t, typename acc_t>
__device__ __forceinline__ void grad_sums(const TaidParams& p, const Smem<acc_t>& sm,
                                          const scalar_t* gp, const scalar_t* sp, int64_t step) {
  using M = TaidMath<acc_t>;
  const int64_t HW = p.plane_size;
  for (int64_t t0 = 0; t0 < p.T; t0 += kSteps) {
    acc_t sum[kSteps];
#pragma unroll
    for (int u = 0; u < kSteps; ++u) sum[u] = 0;
    for (int64_t j = threadIdx.x * L; j < HW; j += blockDim.x * L) {
      acc_t g[L];
      load_lanes<L>(gp + j, g);
      acc_t v[kSteps][L];
#pragma unroll
      for (int u = 0; u < kSteps; ++u) {
        if (t0 + u < p.T) load_lanes<L>(sp + (t0 + u) * step + j, v[u]);
      }
#pragma unroll
      for (int u = 0; u < kSteps; ++u) {
        if (t0 + u < p.T) {
#pragma unroll
          for (int k = 0; k < L; ++k) sum[u] += M::grad_term(g[k], v[u][k]);
        }
      }
    }
#pragma unroll
    for (int u = 0; u < kSteps; ++u) {
      if (t0 + u < p.T) put_part(sm, t0 + u, sum[u]);
    }
  }
}

// Backward pass 2: ds_t = coef_t g + shift_t, each g chunk read once for all t.
template <int L, typename scalar_t, typename acc_t>
__device__ __forceinline__ void write_grad_s(const TaidParams& p, const Smem<acc_t>& sm,
                                             const scalar_t* gp, scalar_t* dsp, int64_t step) {
  using M = TaidMath<acc_t>;
  for (int64_t j = threadIdx.x * L; j < p.plane_size; j += blockDim.x * L) {
    acc_t g[L];
    load_lanes<L>(gp + j, g);
    for (int64_t t = 0; t < p.T; ++t) {
      const acc_t c = sm.coef[t], shift = sm.extra[t];
      acc_t d[L];
#pragma unroll
      for (int k = 0; k < L; ++k) d[k] = M::grad_s(c, g[k], shift);
      store_lanes<L>(dsp + t * step + j, d);
    }
  }
}

// One block per plane: G_t, dZ_t (also written out for dw), then ds. vec: s, grad_y and grad_s
// allow 16-byte accesses.
template <typename scalar_t, int kSteps>
__global__ void __launch_bounds__(kMaxThreads)
    taid_bwd_kernel(TaidParams p, bool vec, const scalar_t* __restrict__ grad_y,
                    const scalar_t* __restrict__ s,
                    const at::opmath_type<scalar_t>* __restrict__ w,
                    const at::opmath_type<scalar_t>* __restrict__ attn,
                    scalar_t* __restrict__ grad_s, at::opmath_type<scalar_t>* __restrict__ dZ) {
  using acc_t = at::opmath_type<scalar_t>;
  using M = TaidMath<acc_t>;
  constexpr int V = kVec<scalar_t>;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  const Smem<acc_t> sm(smem_raw, p.T, blockDim.x / 32);
  const int64_t HW = p.plane_size, step = p.planes * HW, plane = blockIdx.x;
  const scalar_t* sp = s + plane * HW;
  const scalar_t* gp = grad_y + plane * HW;
  const acc_t scale = M::scale(p);

  if (vec) {
    grad_sums<V, kSteps>(p, sm, gp, sp, step);
  } else {
    grad_sums<1, kSteps>(p, sm, gp, sp, step);
  }
  plane_sums<acc_t, false>(p.T, sm, acc_t(1));  // tot = G / scale

  // coef = scale A (ds's factor of g), red = dZ, extra = shift (ds's constant).
  for (int64_t t = threadIdx.x; t < p.T; t += blockDim.x) {
    const acc_t a = attn[t * p.planes + plane];
    sm.coef[t] = M::coef(a, scale);
    sm.red[t] = M::attention_grad(sm.tot[t], scale, a);
    dZ[t * p.planes + plane] = sm.red[t];
  }
  __syncthreads();
  for (int64_t t = threadIdx.x; t < p.T; t += blockDim.x) {
    sm.extra[t] = M::grad_shift(w, sm.red, p.T, t, HW);
  }
  __syncthreads();

  scalar_t* dsp = grad_s + plane * HW;
  if (vec) {
    write_grad_s<V>(p, sm, gp, dsp, step);
  } else {
    write_grad_s<1>(p, sm, gp, dsp, step);
  }
}

// dw[t, k] = sum over planes of dZ[t, plane] * X[k, plane]; one block per entry, fixed order.
template <typename acc_t>
__global__ void __launch_bounds__(kDwThreads)
    taid_dw_kernel(TaidParams p, const acc_t* __restrict__ dZ, const acc_t* __restrict__ X,
                   acc_t* __restrict__ dw) {
  using M = TaidMath<acc_t>;
  __shared__ acc_t warp_part[kDwThreads / 32];
  const acc_t* dz = dZ + (blockIdx.x / p.T) * p.planes;
  const acc_t* x = X + (blockIdx.x % p.T) * p.planes;
  acc_t sum = 0;
  for (int64_t i = threadIdx.x; i < p.planes; i += blockDim.x) sum += M::grad_w_term(dz[i], x[i]);
  sum = warp_sum(sum);
  if (threadIdx.x % 32 == 0) warp_part[threadIdx.x / 32] = sum;
  __syncthreads();
  if (threadIdx.x == 0) {
    acc_t total = 0;
    for (int k = 0; k < kDwThreads / 32; ++k) total += warp_part[k];
    dw[blockIdx.x] = total;
  }
}

}  // namespace
}  // namespace alif_cuda
