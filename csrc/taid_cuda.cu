// CUDA kernels of the taid op family: float32, float16, bfloat16 (and float64) storage, math in
// float (double for float64).
//
// Forward: a (b, c) plane is handled by one block, or on Hopper by a cluster of up to 8 blocks
// that each take a slice of its pixels. A block reads its slice for every time step once, keeps
// it in shared memory, and adds up each step's values; the per-step sums of a cluster meet
// through distributed shared memory, in rank order. Every block then knows the plane's means X
// and attention A and writes y for its slice from shared memory: s is read from HBM once. A plane
// too large for that is read twice (the second time mostly from L2).
// Backward: one block per plane reads s and grad_y once for G_t = sum g s_t, then writes
// ds_t = scale A_t g + dX_t / HW without s. dL/dw sums the planes' dZ in a fixed order.
// Nothing uses atomics; the results are deterministic.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cooperative_groups.h>
#include <torch/library.h>

#include <algorithm>

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

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

template <typename acc_t>
__device__ __forceinline__ acc_t warp_sum(acc_t v) {
  for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_down_sync(0xffffffffu, v, offset);
  return v;
}

// Dynamic shared memory of a taid block: per-warp partial sums (T x warps), four arrays of T
// values, then (forward, cached) the block's slice of s, T x slice values.
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
  __device__ void* end(int64_t T) const { return extra + T; }
};

size_t smem_fixed_bytes(int64_t T, int threads, size_t acc_size) {
  return static_cast<size_t>(T * (threads / 32) + 4 * T) * acc_size;
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
    __trap();  // the host launches clusters only for kernels built for sm_90 or newer
#endif
  } else {
    __syncthreads();
  }
}

template <typename scalar_t, bool kCache, bool kCluster>
__global__ void __launch_bounds__(kMaxThreads)
    taid_fwd_kernel(TaidParams p, int64_t split, int64_t slice, const scalar_t* __restrict__ s,
                    const at::opmath_type<scalar_t>* __restrict__ w, scalar_t* __restrict__ y,
                    at::opmath_type<scalar_t>* __restrict__ attn,
                    at::opmath_type<scalar_t>* __restrict__ squeezed) {
  using acc_t = at::opmath_type<scalar_t>;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  const int warps = blockDim.x / 32;
  const Smem<acc_t> sm(smem_raw, p.T, warps);
  scalar_t* cache = static_cast<scalar_t*>(sm.end(p.T));
  const int64_t HW = p.plane_size, step = p.planes * HW;
  const int64_t plane = blockIdx.x / split, rank = blockIdx.x % split;
  const int64_t lo = rank * slice, hi = std::min(lo + slice, HW);
  const scalar_t* sp = s + plane * HW;

  // Pass 1: read the slice (into the cache) and sum each step. Every thread runs every
  // iteration of t, so whole warps reach the shuffles.
  for (int64_t t = 0; t < p.T; ++t) {
    acc_t sum = 0;
    for (int64_t i = lo + threadIdx.x; i < hi; i += blockDim.x) {
      const scalar_t v = sp[t * step + i];
      if constexpr (kCache) cache[t * slice + (i - lo)] = v;
      sum += acc_t(v);
    }
    sum = warp_sum(sum);
    if (threadIdx.x % 32 == 0) sm.part[t * warps + threadIdx.x / 32] = sum;
  }
  plane_sums<acc_t, kCluster>(p.T, sm, acc_t(1) / acc_t(HW));  // tot = X, the plane's means

  const acc_t scale = reduce_scale<acc_t>(p);
  for (int64_t t = threadIdx.x; t < p.T; t += blockDim.x) {
    const acc_t a = attention_at(w, sm.tot, p.T, t);
    sm.coef[t] = a * scale;
    if (rank == 0) {
      attn[t * p.planes + plane] = a;
      squeezed[t * p.planes + plane] = sm.tot[t];
    }
  }
  __syncthreads();

  // Pass 2: y = sum_t coef_t s_t over the slice, s from the cache (or again from global).
  scalar_t* yp = y + plane * HW;
  for (int64_t i = lo + threadIdx.x; i < hi; i += blockDim.x) {
    acc_t acc = 0;
    for (int64_t t = 0; t < p.T; ++t) {
      acc += sm.coef[t] * acc_t(kCache ? cache[t * slice + (i - lo)] : sp[t * step + i]);
    }
    yp[i] = scalar_t(acc);
  }
}

// One block per plane: G_t = scale * sum g s_t, dZ_t = G_t A_t (1 - A_t) (also written out for
// dw), dX = w^T dZ, then ds_t = scale A_t g + dX_t / HW.
template <typename scalar_t>
__global__ void __launch_bounds__(kMaxThreads)
    taid_bwd_kernel(TaidParams p, const scalar_t* __restrict__ grad_y,
                    const scalar_t* __restrict__ s,
                    const at::opmath_type<scalar_t>* __restrict__ w,
                    const at::opmath_type<scalar_t>* __restrict__ attn,
                    scalar_t* __restrict__ grad_s, at::opmath_type<scalar_t>* __restrict__ dZ) {
  using acc_t = at::opmath_type<scalar_t>;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  const int warps = blockDim.x / 32;
  const Smem<acc_t> sm(smem_raw, p.T, warps);
  const int64_t HW = p.plane_size, step = p.planes * HW, plane = blockIdx.x;
  const scalar_t* sp = s + plane * HW;
  const scalar_t* gp = grad_y + plane * HW;
  const acc_t scale = reduce_scale<acc_t>(p);

  for (int64_t t = 0; t < p.T; ++t) {
    acc_t sum = 0;
    for (int64_t i = threadIdx.x; i < HW; i += blockDim.x) sum += acc_t(gp[i]) * acc_t(sp[t * step + i]);
    sum = warp_sum(sum);
    if (threadIdx.x % 32 == 0) sm.part[t * warps + threadIdx.x / 32] = sum;
  }
  plane_sums<acc_t, false>(p.T, sm, scale);  // tot = G

  // coef = scale * A (ds's factor of g), red = dZ, extra = dX / HW (ds's constant).
  for (int64_t t = threadIdx.x; t < p.T; t += blockDim.x) {
    const acc_t a = attn[t * p.planes + plane];
    sm.coef[t] = scale * a;
    sm.red[t] = sm.tot[t] * a * (acc_t(1) - a);
    dZ[t * p.planes + plane] = sm.red[t];
  }
  __syncthreads();
  for (int64_t t = threadIdx.x; t < p.T; t += blockDim.x) {
    sm.extra[t] = squeeze_grad_at(w, sm.red, p.T, t) / acc_t(HW);
  }
  __syncthreads();

  scalar_t* dsp = grad_s + plane * HW;
  for (int64_t t = 0; t < p.T; ++t) {
    const acc_t coef = sm.coef[t], shift = sm.extra[t];
    for (int64_t i = threadIdx.x; i < HW; i += blockDim.x) {
      dsp[t * step + i] = scalar_t(coef * acc_t(gp[i]) + shift);
    }
  }
}

// dw[t, k] = sum over planes of dZ[t, plane] * X[k, plane]; one block per entry, fixed order.
template <typename acc_t>
__global__ void __launch_bounds__(kDwThreads)
    taid_dw_kernel(TaidParams p, const acc_t* __restrict__ dZ, const acc_t* __restrict__ X,
                   acc_t* __restrict__ dw) {
  __shared__ acc_t warp_part[kDwThreads / 32];
  const acc_t* dz = dZ + (blockIdx.x / p.T) * p.planes;
  const acc_t* x = X + (blockIdx.x % p.T) * p.planes;
  acc_t sum = 0;
  for (int64_t i = threadIdx.x; i < p.planes; i += blockDim.x) sum += dz[i] * x[i];
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

int device_attribute(cudaDeviceAttr attr) {
  int device = 0, value = 0;
  C10_CUDA_CHECK(cudaGetDevice(&device));
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&value, attr, device));
  return value;
}

template <typename Kernel>
void allow_smem(Kernel kernel, size_t bytes) {
  C10_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                      static_cast<int>(bytes)));
}

// How the forward covers a plane: `split` blocks (a cluster when > 1) of `threads` threads, each
// with `slice` pixels, cached in shared memory or not.
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
FwdPlan plan_taid_fwd(const TaidParams& p, cudaStream_t stream) {
  using acc_t = at::opmath_type<scalar_t>;
  const size_t optin = device_attribute(cudaDevAttrMaxSharedMemoryPerBlockOptin);
  auto* cluster_kernel = taid_fwd_kernel<scalar_t, true, true>;
  cudaFuncAttributes attrs;
  C10_CUDA_CHECK(cudaFuncGetAttributes(&attrs, cluster_kernel));
  const bool clusters = device_attribute(cudaDevAttrClusterLaunch) && attrs.binaryVersion >= 90;

  auto plan_for = [&](int64_t split) {
    FwdPlan plan;
    plan.split = split;
    plan.slice = ceil_div(p.plane_size, split);
    plan.threads = threads_for(plan.slice);
    plan.cache = true;
    plan.smem = smem_fixed_bytes(p.T, plan.threads, sizeof(acc_t)) +
                static_cast<size_t>(p.T * plan.slice) * sizeof(scalar_t);
    return plan;
  };
  // A split cluster must also fit on the GPU at once (its blocks share a GPC).
  auto cluster_fits = [&](const FwdPlan& plan) {
    allow_smem(cluster_kernel, plan.smem);
    cudaLaunchAttribute attr;
    const cudaLaunchConfig_t config = cluster_config(plan, plan.split, stream, attr);
    int active = 0;
    if (cudaOccupancyMaxActiveClusters(&active, cluster_kernel, &config) != cudaSuccess) {
      cudaGetLastError();  // clear it: the plan falls back, and later launch checks stay clean
      return false;
    }
    return active > 0;
  };
  for (const size_t budget : {std::min<size_t>(optin, kCacheTarget), optin}) {
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
  TORCH_CHECK(plan.smem <= optin, "taid: T = ", p.T,
              " time steps need more shared memory than this GPU has per block (", plan.smem,
              " > ", optin, " bytes)");
  return plan;
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
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, s.scalar_type(), "taid_fwd_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const at::Tensor wc = w.to(c10::CppTypeToScalarType<acc_t>::value).contiguous();
    const FwdPlan plan = plan_taid_fwd<scalar_t>(p, stream);
    const dim3 grid(static_cast<unsigned>(p.planes * plan.split));
    auto args = std::make_tuple(p, plan.split, plan.slice, sc.data_ptr<scalar_t>(),
                                static_cast<const acc_t*>(wc.data_ptr<acc_t>()),
                                out.y.data_ptr<scalar_t>(), out.attn.data_ptr<acc_t>(),
                                out.squeezed.data_ptr<acc_t>());
    if (plan.split > 1) {
      auto* kernel = taid_fwd_kernel<scalar_t, true, true>;
      allow_smem(kernel, plan.smem);
      cudaLaunchAttribute attr;
      const cudaLaunchConfig_t config = cluster_config(plan, grid.x, stream, attr);
      std::apply([&](auto... a) { C10_CUDA_CHECK(cudaLaunchKernelEx(&config, kernel, a...)); },
                 args);
    } else {
      auto* kernel = plan.cache ? taid_fwd_kernel<scalar_t, true, false>
                                : taid_fwd_kernel<scalar_t, false, false>;
      allow_smem(kernel, plan.smem);
      std::apply([&](auto... a) { kernel<<<grid, plan.threads, plan.smem, stream>>>(a...); },
                 args);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
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
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, s.scalar_type(), "taid_bwd_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    if (p.planes > 0) {
      const int threads = threads_for(p.plane_size);
      const size_t smem = smem_fixed_bytes(p.T, threads, sizeof(acc_t));
      TORCH_CHECK(smem <= static_cast<size_t>(
                              device_attribute(cudaDevAttrMaxSharedMemoryPerBlockOptin)),
                  "taid_bwd: T = ", p.T,
                  " time steps need more shared memory than this GPU has per block");
      allow_smem(taid_bwd_kernel<scalar_t>, smem);
      taid_bwd_kernel<scalar_t><<<static_cast<unsigned>(p.planes), threads, smem, stream>>>(
          p, b.grad_y.data_ptr<scalar_t>(), b.s.data_ptr<scalar_t>(), b.w.data_ptr<acc_t>(),
          b.attn.data_ptr<acc_t>(), b.grad_s.data_ptr<scalar_t>(), b.dZ.data_ptr<acc_t>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
    taid_dw_kernel<acc_t><<<static_cast<unsigned>(p.T * p.T), kDwThreads, 0, stream>>>(
        p, b.dZ.data_ptr<acc_t>(), b.squeezed.data_ptr<acc_t>(), b.dw.data_ptr<acc_t>());
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
