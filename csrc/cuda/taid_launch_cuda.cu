// The taid CUDA kernels' launches: the forward's plan (one block or a cluster of blocks per plane,
// cached in shared memory or not), made once per device, dtype and shape, then the kernels of
// taid_cuda_kernels.cuh for every storage dtype.
//
// ALIF_CUDA_TAID_SINGLE_BLOCK=1 (read once per process) makes the forward use one block per plane
// whatever the plane size, never a cluster: the slice is then the whole plane, cached when it fits
// in one block's shared memory and read twice otherwise. The sums then run in another order, so y
// agrees with the cluster path to rounding; a GPU run compares the two on the same data.
#include <c10/cuda/CUDAException.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <cstdint>
#include <initializer_list>
#include <map>
#include <mutex>
#include <set>
#include <tuple>
#include <utility>

#include "cuda/taid_cuda.h"
#include "cuda/taid_cuda_kernels.cuh"

namespace alif_cuda {
namespace {

constexpr int64_t kMaxSplit = 8;  // the portable cluster size
// A block's cache is kept at or under this when a split allows it, so two blocks share an SM and
// one block's loads overlap the other's arithmetic.
constexpr int64_t kCacheTarget = 100 * 1024;
// Time steps whose loads the backward's G pass keeps in flight per pixel chunk.
constexpr int kBwdSteps = 8;

// ALIF_CUDA_TAID_SINGLE_BLOCK, read once per process: the forward's cluster-free path.
bool single_block_only() {
  static const bool single = env_flag("ALIF_CUDA_TAID_SINGLE_BLOCK");
  return single;
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

}  // namespace

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

template <typename scalar_t>
void launch_taid_bwd(const TaidParams& p, int device, cudaStream_t stream,
                     const scalar_t* grad_y, const scalar_t* s,
                     const at::opmath_type<scalar_t>* w, const at::opmath_type<scalar_t>* attn,
                     const at::opmath_type<scalar_t>* squeezed, scalar_t* grad_s,
                     at::opmath_type<scalar_t>* dZ, at::opmath_type<scalar_t>* dw) {
  using acc_t = at::opmath_type<scalar_t>;
  if (p.planes > 0) {
    const int threads = threads_for(p.plane_size);
    const size_t smem = smem_fixed_bytes(p.T, threads, sizeof(acc_t));
    const size_t optin = device_info(device).smem_optin;
    TORCH_CHECK(smem <= optin, "taid_bwd: T = ", p.T,
                " time steps need more shared memory than this GPU has per block (", smem, " > ",
                optin, " bytes)");
    auto* kernel = taid_bwd_kernel<scalar_t, kBwdSteps>;
    const bool vec = vec_ok<scalar_t>(p.plane_size, {grad_y, s, grad_s});
    allow_max_smem(kernel, device);
    kernel<<<static_cast<unsigned>(p.planes), threads, smem, stream>>>(p, vec, grad_y, s, w, attn,
                                                                       grad_s, dZ);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  taid_dw_kernel<acc_t><<<static_cast<unsigned>(p.T * p.T), kDwThreads, 0, stream>>>(p, dZ,
                                                                                    squeezed, dw);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

template void launch_taid_fwd<float>(const TaidParams&, int, cudaStream_t, const float*,
                                     const float*, float*, float*, float*);
template void launch_taid_bwd<float>(const TaidParams&, int, cudaStream_t, const float*,
                                     const float*, const float*, const float*, const float*, float*,
                                     float*, float*);
template void launch_taid_fwd<c10::Half>(const TaidParams&, int, cudaStream_t, const c10::Half*,
                                         const float*, c10::Half*, float*, float*);
template void launch_taid_bwd<c10::Half>(const TaidParams&, int, cudaStream_t, const c10::Half*,
                                         const c10::Half*, const float*, const float*, const float*,
                                         c10::Half*, float*, float*);
template void launch_taid_fwd<c10::BFloat16>(const TaidParams&, int, cudaStream_t,
                                             const c10::BFloat16*, const float*, c10::BFloat16*,
                                             float*, float*);
template void launch_taid_bwd<c10::BFloat16>(const TaidParams&, int, cudaStream_t,
                                             const c10::BFloat16*, const c10::BFloat16*,
                                             const float*, const float*, const float*,
                                             c10::BFloat16*, float*, float*);
template void launch_taid_fwd<double>(const TaidParams&, int, cudaStream_t, const double*,
                                      const double*, double*, double*, double*);
template void launch_taid_bwd<double>(const TaidParams&, int, cudaStream_t, const double*,
                                      const double*, const double*, const double*, const double*,
                                      double*, double*, double*);

}  // namespace alif_cuda
