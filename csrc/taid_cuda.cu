// CUDA kernels of the taid op family: float32, float16, bfloat16 (and float64) storage, math in
// float (double for float64) through TaidMath (taid.h), the per-plane arithmetic the CPU kernels
// run too. What is CUDA-only here: the thread mapping, the loads and stores, the sums over warps
// and cluster ranks, and the cluster exchange.
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
//
// ALIF_CUDA_TAID_SINGLE_BLOCK=1 (read once per process) makes the forward use one block per plane
// whatever the plane size, never a cluster: the slice is then the whole plane, cached when it fits
// in one block's shared memory and read twice otherwise. The sums then run in another order, so y
// agrees with the cluster path to rounding; a GPU run compares the two on the same data.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cooperative_groups.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <strings.h>
#include <initializer_list>
#include <map>
#include <mutex>
#include <set>
#include <tuple>
#include <utility>

#include "taid.h"

namespace alif_cuda {
namespace {

namespace cg = cooperative_groups;

constexpr int kMaxThreads = 512;
constexpr int kDwThreads = 256;
constexpr int64_t kMaxSplit = 8;  // the portable cluster size
// A block's cache is kept at or under this when a split allows it, so two blocks share an SM and
// one block's loads overlap the other's arithmetic.
constexpr int64_t kCacheTarget = 100 * 1024;
// Time steps whose loads the backward's G pass keeps in flight per pixel chunk.
constexpr int kBwdSteps = 8;
constexpr size_t kAccessBytes = 16;

// Values of scalar_t in one 16-byte access.
template <typename scalar_t>
constexpr int kVec = static_cast<int>(kAccessBytes / sizeof(scalar_t));

__host__ __device__ inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }
__host__ __device__ inline int64_t round_up(int64_t a, int64_t b) { return ceil_div(a, b) * b; }

bool env_flag(const char* name) {
  const char* v = std::getenv(name);
  if (v == nullptr) return false;
  for (const char* on : {"1", "true", "yes", "on"}) {
    if (strcasecmp(v, on) == 0) return true;
  }
  return false;
}

// ALIF_CUDA_TAID_SINGLE_BLOCK (1, true, yes or on, in any case), read once per process: the
// forward's cluster-free path, for comparison with the cluster path.
bool single_block_only() {
  static const bool single = env_flag("ALIF_CUDA_TAID_SINGLE_BLOCK");
  return single;
}

template <typename acc_t>
__device__ __forceinline__ acc_t warp_sum(acc_t v) {
  for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_down_sync(0xffffffffu, v, offset);
  return v;
}

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

int threads_for(int64_t pixels) {
  return static_cast<int>(std::clamp<int64_t>(ceil_div(pixels, 32) * 32, 32, kMaxThreads));
}

// What the planner needs to know about a device, queried once per device.
struct DeviceInfo {
  size_t smem_optin = 0;  // dynamic shared memory a block may opt in to
  bool cluster_launch = false;
};

DeviceInfo device_info(int device) {
  static std::mutex mutex;
  static std::map<int, DeviceInfo> known;
  const std::lock_guard<std::mutex> lock(mutex);
  const auto it = known.find(device);
  if (it != known.end()) return it->second;
  int optin = 0, cluster = 0;
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, device));
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&cluster, cudaDevAttrClusterLaunch, device));
  DeviceInfo info;
  info.smem_optin = static_cast<size_t>(optin);
  info.cluster_launch = cluster != 0;
  known.emplace(device, info);
  return info;
}

// Lets `kernel` use all the dynamic shared memory the device allows. The attribute is
// process-wide per kernel and device, so it is set once, under a lock, before the first launch
// (on the current device, which the caller's guard has made `device`).
template <typename Kernel>
void allow_max_smem(Kernel kernel, int device) {
  static std::mutex mutex;
  static std::set<std::pair<const void*, int>> done;
  const std::lock_guard<std::mutex> lock(mutex);
  const auto key = std::make_pair(reinterpret_cast<const void*>(kernel), device);
  if (done.count(key)) return;
  C10_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                      static_cast<int>(device_info(device).smem_optin)));
  done.insert(key);
}

// How the forward covers a plane: `split` blocks (a cluster when > 1) of `threads` threads, each
// with `slice` pixels (a multiple of the 16-byte access width), cached in shared memory or not.
struct FwdPlan {
  int64_t split = 1, slice = 0;
  int threads = 32;
  bool cache = false;
  size_t smem = 0;
};

// A launch of `blocks` blocks in clusters of plan.split blocks; `attr` must outlive the config.
cudaLaunchConfig_t cluster_config(const FwdPlan& plan, int64_t blocks, cudaStream_t stream,
                                  cudaLaunchAttribute& attr) {
  attr.id = cudaLaunchAttributeClusterDimension;
  attr.val.clusterDim.x = static_cast<unsigned>(plan.split);
  attr.val.clusterDim.y = 1;
  attr.val.clusterDim.z = 1;
  cudaLaunchConfig_t config = {};
  config.gridDim = dim3(static_cast<unsigned>(blocks));
  config.blockDim = dim3(plan.threads);
  config.dynamicSmemBytes = plan.smem;
  config.stream = stream;
  config.attrs = &attr;
  config.numAttrs = 1;
  return config;
}

template <typename scalar_t>
FwdPlan make_fwd_plan(const TaidParams& p, int device, cudaStream_t stream) {
  using acc_t = at::opmath_type<scalar_t>;
  const DeviceInfo info = device_info(device);
  auto* cluster_kernel = taid_fwd_kernel<scalar_t, true, true, true>;
  cudaFuncAttributes attrs;
  C10_CUDA_CHECK(cudaFuncGetAttributes(&attrs, cluster_kernel));
  // ptxVersion, not binaryVersion: a build whose PTX predates sm_90 (JIT-compiled on a Hopper)
  // has the cluster exchange compiled out (__trap) whatever it runs on.
  const bool clusters = !single_block_only() && info.cluster_launch && attrs.ptxVersion >= 90;

  auto plan_for = [&](int64_t split) {
    FwdPlan plan;
    plan.split = split;
    plan.slice = round_up(ceil_div(p.plane_size, split), kVec<scalar_t>);
    plan.threads = threads_for(plan.slice);
    plan.cache = true;
    plan.smem = smem_fixed_bytes(p.T, plan.threads, sizeof(acc_t)) +
                static_cast<size_t>(p.T * plan.slice) * sizeof(scalar_t);
    return plan;
  };
  // A split cluster must also fit on the GPU at once (its blocks share a GPC).
  auto cluster_fits = [&](const FwdPlan& plan) {
    allow_max_smem(cluster_kernel, device);
    cudaLaunchAttribute attr;
    const cudaLaunchConfig_t config = cluster_config(plan, plan.split, stream, attr);
    int active = 0;
    // An error still pending from earlier work is reported here, not swallowed by the clear below.
    C10_CUDA_CHECK(cudaPeekAtLastError());
    if (cudaOccupancyMaxActiveClusters(&active, cluster_kernel, &config) != cudaSuccess) {
      cudaGetLastError();  // clear it: the plan falls back, and later launch checks stay clean
      return false;
    }
    return active > 0;
  };
  for (const size_t budget : {std::min<size_t>(info.smem_optin, kCacheTarget), info.smem_optin}) {
    for (int64_t split = 1; split <= kMaxSplit; split *= 2) {
      if (split > 1 && (!clusters || split > p.plane_size)) break;
      const FwdPlan plan = plan_for(split);
      if (plan.smem <= budget && (split == 1 || cluster_fits(plan))) return plan;
    }
  }
  FwdPlan plan;
  plan.slice = p.plane_size;
  plan.threads = threads_for(p.plane_size);
  plan.smem = smem_fixed_bytes(p.T, plan.threads, sizeof(acc_t));
  TORCH_CHECK(plan.smem <= info.smem_optin, "taid: T = ", p.T,
              " time steps need more shared memory than this GPU has per block (", plan.smem,
              " > ", info.smem_optin, " bytes)");
  return plan;
}

// The plan depends only on the device, the dtype, T and the plane size: made once per such key
// (the queries and occupancy checks cost more than the kernel at small sizes), under a lock.
template <typename scalar_t>
FwdPlan fwd_plan(const TaidParams& p, int device, cudaStream_t stream) {
  static std::mutex mutex;
  static std::map<std::tuple<int, int64_t, int64_t>, FwdPlan> plans;  // per scalar_t
  const auto key = std::make_tuple(device, p.T, p.plane_size);
  const std::lock_guard<std::mutex> lock(mutex);
  const auto it = plans.find(key);
  if (it != plans.end()) return it->second;
  const FwdPlan plan = make_fwd_plan<scalar_t>(p, device, stream);
  plans.emplace(key, plan);
  return plan;
}

// 16-byte accesses are safe when every row a thread touches starts on a 16-byte boundary: the
// base pointers aligned and the plane size a multiple of the access width.
template <typename scalar_t>
bool vec_ok(int64_t plane_size, std::initializer_list<const void*> ptrs) {
  if (plane_size % kVec<scalar_t> != 0) return false;
  for (const void* ptr : ptrs) {
    if (reinterpret_cast<std::uintptr_t>(ptr) % kAccessBytes != 0) return false;
  }
  return true;
}

template <typename scalar_t>
void launch_taid_fwd(const TaidParams& p, int device, cudaStream_t stream, const scalar_t* s,
                     const at::opmath_type<scalar_t>* w, scalar_t* y,
                     at::opmath_type<scalar_t>* attn, at::opmath_type<scalar_t>* squeezed) {
  const FwdPlan plan = fwd_plan<scalar_t>(p, device, stream);
  const bool vec = vec_ok<scalar_t>(p.plane_size, {s, y});
  const dim3 grid(static_cast<unsigned>(p.planes * plan.split));
  const auto args = std::make_tuple(p, plan.split, plan.slice, vec, s, w, y, attn, squeezed);
  if (plan.split > 1) {
    auto* kernel = taid_fwd_kernel<scalar_t, true, true, true>;
    allow_max_smem(kernel, device);
    cudaLaunchAttribute attr;
    const cudaLaunchConfig_t config = cluster_config(plan, grid.x, stream, attr);
    std::apply([&](auto... a) { C10_CUDA_CHECK(cudaLaunchKernelEx(&config, kernel, a...)); },
               args);
  } else {
    auto* kernel = plan.cache ? taid_fwd_kernel<scalar_t, true, false, true>
                              : taid_fwd_kernel<scalar_t, false, false, false>;
    allow_max_smem(kernel, device);
    std::apply([&](auto... a) { kernel<<<grid, plan.threads, plan.smem, stream>>>(a...); }, args);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> taid_fwd_cuda(const at::Tensor& s,
                                                             const at::Tensor& w,
                                                             std::string_view reduce) {
  const TaidParams p = make_taid_fwd_params(s, w, reduce);
  const c10::cuda::OptionalCUDAGuard guard(s.device());
  TaidFwdOutputs out = alloc_taid_fwd(s);
  if (p.planes == 0) return {out.y, out.attn, out.squeezed};
  const at::Tensor sc = s.contiguous();
  const auto stream = c10::cuda::getCurrentCUDAStream();
  const int device = s.get_device();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, s.scalar_type(), "taid_fwd_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const at::Tensor wc = w.to(c10::CppTypeToScalarType<acc_t>::value).contiguous();
    launch_taid_fwd<scalar_t>(p, device, stream, sc.const_data_ptr<scalar_t>(),
                              wc.const_data_ptr<acc_t>(), out.y.mutable_data_ptr<scalar_t>(),
                              out.attn.mutable_data_ptr<acc_t>(),
                              out.squeezed.mutable_data_ptr<acc_t>());
  });
  return {out.y, out.attn, out.squeezed};
}

std::tuple<at::Tensor, at::Tensor> taid_bwd_cuda(const at::Tensor& grad_y, const at::Tensor& s,
                                                 const at::Tensor& w, const at::Tensor& attn,
                                                 const at::Tensor& squeezed,
                                                 std::string_view reduce) {
  const TaidParams p = make_taid_bwd_params(grad_y, s, w, attn, squeezed, reduce);
  const c10::cuda::OptionalCUDAGuard guard(s.device());
  const TaidBwdBuffers b = prepare_taid_bwd(p, grad_y, s, w, attn, squeezed);
  const auto stream = c10::cuda::getCurrentCUDAStream();
  const int device = s.get_device();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, s.scalar_type(), "taid_bwd_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    if (p.planes > 0) {
      const int threads = threads_for(p.plane_size);
      const size_t smem = smem_fixed_bytes(p.T, threads, sizeof(acc_t));
      const size_t optin = device_info(device).smem_optin;
      TORCH_CHECK(smem <= optin, "taid_bwd: T = ", p.T,
                  " time steps need more shared memory than this GPU has per block (", smem,
                  " > ", optin, " bytes)");
      auto* kernel = taid_bwd_kernel<scalar_t, kBwdSteps>;
      const scalar_t* g = b.grad_y.const_data_ptr<scalar_t>();
      const scalar_t* sp = b.s.const_data_ptr<scalar_t>();
      scalar_t* ds = b.grad_s.mutable_data_ptr<scalar_t>();
      const bool vec = vec_ok<scalar_t>(p.plane_size, {g, sp, ds});
      allow_max_smem(kernel, device);
      kernel<<<static_cast<unsigned>(p.planes), threads, smem, stream>>>(
          p, vec, g, sp, b.w.const_data_ptr<acc_t>(), b.attn.const_data_ptr<acc_t>(), ds,
          b.dZ.mutable_data_ptr<acc_t>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
    taid_dw_kernel<acc_t><<<static_cast<unsigned>(p.T * p.T), kDwThreads, 0, stream>>>(
        p, b.dZ.const_data_ptr<acc_t>(), b.squeezed.const_data_ptr<acc_t>(),
        b.dw.mutable_data_ptr<acc_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {b.grad_s, b.dw.to(w.scalar_type())};
}

}  // namespace

TORCH_LIBRARY_IMPL(alif_cuda, CUDA, m) {
  m.impl("taid_fwd", &taid_fwd_cuda);
  m.impl("taid_bwd", &taid_bwd_cuda);
}

}  // namespace alif_cuda
