// CPU kernels of the alif op family: float32, float64, and float16/bfloat16 storage with float32
// math (so CPU autocast works). The time loops are alif.h's, the ones the CUDA kernels run.
//
// The kernels are in alif_cpu_kernels.h, compiled here for the baseline instruction set and in
// alif_cpu_avx2.cpp and alif_cpu_avx512.cpp for wider ones (picked at run time). Work is split over groups of neurons, one
// value V a group: at::vec::Vectorized (8 floats or 4 doubles; the baseline copy gets ATen's
// generic version of it, the AVX2 copy its intrinsics), a masked load and store for the last,
// shorter group. For the tests, the value type can
// be switched at run time to the ones the CUDA kernels use (a scalar, Lanes<float, 4 or 8>), so
// this build executes every instantiation of the shared code that the GPU runs. Large outputs
// come from a pool of reused, huge-page buffers (empty_output, cpu_memory.h; defined at the end).
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/EmptyTensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <mutex>
#include <unordered_map>
#include <vector>

#if defined(__linux__)
#include <sys/mman.h>
#endif

#include "alif_cpu_vec.h"
#include "alif.h"
#include "alif_cpu_isa.h"
#include "cpu_memory.h"


namespace alif_cuda {

namespace {

namespace isa_default {
#include "alif_cpu_kernels.h"
}  // namespace isa_default

struct Avx2Tag {};
struct Avx512Tag {};

// Which value type the CPU kernels run (see _set_cpu_value_type in the registration below).
enum class CpuValueType : int64_t {
  Default = 0, Scalar = 1, Lanes4 = 2, Lanes8 = 3, Baseline = 4, Avx2 = 5
};
std::atomic<int64_t> g_value_type{0};

// Runs the kernels (fwd or bwd) with the value type selected for this storage type: by default
// the widest copy the CPU runs (alif_cpu_avx512.cpp, alif_cpu_avx2.cpp), else
// at::vec::Vectorized in the baseline copy below; the test hook can pick a copy or the value
// types a CUDA thread runs. isa_kernels(tag) runs a wide copy's kernels.
template <typename scalar_t, typename Wide, typename F>
void with_value_type(Wide&& isa_kernels, F&& f) {
  using acc_t = at::opmath_type<scalar_t>;
  const auto kind = static_cast<CpuValueType>(g_value_type.load(std::memory_order_relaxed));
  if (kind == CpuValueType::Default && avx512::available()) return isa_kernels(Avx512Tag{});
  if ((kind == CpuValueType::Default || kind == CpuValueType::Avx2) && avx2::available()) {
    return isa_kernels(Avx2Tag{});
  }
  if constexpr (std::is_same_v<scalar_t, acc_t>) {
    if (kind == CpuValueType::Scalar) return f(acc_t{});
  }
  if constexpr (std::is_same_v<scalar_t, float>) {
    if (kind == CpuValueType::Lanes4) return f(Lanes<float, 4>{});
    if (kind == CpuValueType::Lanes8) return f(Lanes<float, 8>{});
  }
  f(at::vec::Vectorized<acc_t>{});
}


// Sums the per-neuron dL/dtau and dL/dv_th terms (B, C, I) over B and I, in a fixed order:
// deterministic whatever the number of threads. Accumulates in double; the two sums of a channel
// are separate tasks (with scalar parameters, C = 1: one thread each).
template <typename acc_t>
std::pair<at::Tensor, at::Tensor> sum_per_channel(const AlifParams& p, const acc_t* dtau_n,
                                                  const acc_t* dvth_n, at::TensorOptions opts) {
  // Two tensors, not rows of one: the two gradients must not share storage.
  at::Tensor sum_tau = at::empty({p.C}, opts), sum_vth = at::empty({p.C}, opts);
  acc_t* const out[2] = {sum_tau.data_ptr<acc_t>(), sum_vth.data_ptr<acc_t>()};
  at::parallel_for(0, 2 * p.C, 1, [&](int64_t k0, int64_t k1) {
    for (int64_t k = k0; k < k1; ++k) {
      const int64_t c = k % p.C;
      const acc_t* per_neuron = k < p.C ? dtau_n : dvth_n;
      double s = 0;
      for (int64_t b = 0; b < p.B; ++b) {
        const acc_t* row = per_neuron + (b * p.C + c) * p.I;
        for (int64_t i = 0; i < p.I; ++i) s += row[i];
      }
      out[k / p.C][c] = acc_t(s);
    }
  });
  return {sum_tau, sum_vth};
}

// The values are read here anyway (converted to the math dtype): checking them costs no sync.
template <typename acc_t>
void check_finite(const char* who, const char* name, const at::Tensor& param, const at::Tensor& values) {
  const acc_t* v = values.data_ptr<acc_t>();
  for (int64_t i = 0; i < values.numel(); ++i) {
    TORCH_CHECK(std::isfinite(v[i]), who, ": ", name, " must be finite, got ", param);
  }
}

// tau and v_th as contiguous tensors of the math dtype, checked finite; tau = sigmoid(the given
// values) when the op was given logit(tau) (the CUDA kernels apply the same tau_from_logit as they
// load it).
template <typename acc_t>
std::pair<at::Tensor, at::Tensor> math_params(const char* who, const AlifParams& p,
                                              const at::Tensor& tau, const at::Tensor& v_th) {
  const auto acc = c10::CppTypeToScalarType<acc_t>::value;
  at::Tensor tau_c = tau.to(acc).contiguous(), vth_c = v_th.to(acc).contiguous();
  check_finite<acc_t>(who, "tau", tau, tau_c);
  check_finite<acc_t>(who, "v_th", v_th, vth_c);
  if (p.tau_logit) {
    at::Tensor logits = tau_c;  // may be the caller's tensor itself: write a new one
    tau_c = at::empty(logits.sizes(), logits.options());
    const acc_t* z = logits.data_ptr<acc_t>();
    acc_t* t = tau_c.data_ptr<acc_t>();
    for (int64_t i = 0; i < tau_c.numel(); ++i) t[i] = tau_from_logit<acc_t, acc_t>(z[i]);
  }
  return {tau_c, vth_c};
}

// With tau_logit, dL/dlogit = dL/dtau * tau (1 - tau): applied to the (C,) or (1,) sums.
template <typename acc_t>
void chain_tau_logit(const AlifParams& p, const at::Tensor& tau_c, const at::Tensor& sum_tau) {
  if (!p.tau_logit) return;
  const acc_t* t = tau_c.data_ptr<acc_t>();
  acc_t* s = sum_tau.data_ptr<acc_t>();
  for (int64_t c = 0; c < sum_tau.numel(); ++c) {
    s[c] = s[c] * logit_slope(t[p.tau_per_channel ? c : 0]);
  }
}

#define ALIF_DISPATCH_CPU(type, name, ...) \
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, type, name, __VA_ARGS__)

std::tuple<at::Tensor, at::Tensor, at::Tensor> alif_fwd_cpu(
    const at::Tensor& x, const at::Tensor& tau, const at::Tensor& v_th,
    const std::optional<at::Tensor>& u0, std::optional<int64_t> steps, std::string_view reset,
    bool checkpoint, bool detach_reset, std::string_view surrogate, double width, double alpha,
    bool decay_input, bool need_state, bool tau_logit) {
  const AlifParams p = make_alif_fwd_params(x, tau, v_th, u0, steps, reset, detach_reset,
                                            surrogate, width, alpha, decay_input, tau_logit);
  AlifFwdOutputs out = alloc_alif_fwd(x, p, checkpoint, need_state);
  const at::Tensor xc = x.contiguous();
  const at::Tensor u0c = u0.has_value() ? u0->contiguous() : at::Tensor();
  ALIF_DISPATCH_CPU(x.scalar_type(), "alif_fwd_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const auto [tau_c, vth_c] = math_params<acc_t>("alif", p, tau, v_th);
    const AlifPtrs<scalar_t> q = alif_fwd_ptrs<scalar_t>(xc, u0c, tau_c, vth_c, out);
    with_value_type<scalar_t>([&](auto tag) {
                                if constexpr (std::is_same_v<decltype(tag), Avx512Tag>) {
                                  avx512::alif_fwd(p, q);
                                } else {
                                  avx2::alif_fwd(p, q);
                                }
                              },
                              [&](auto v) { isa_default::run_alif_fwd<decltype(v)>(p, q); });
  });
  return {out.spikes, out.u_last, out.u_ckpt};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> alif_bwd_cpu(
    const std::optional<at::Tensor>& grad_spikes, const std::optional<at::Tensor>& grad_u_last,
    const at::Tensor& x, const std::optional<at::Tensor>& u_ckpt, std::optional<int64_t> steps,
    const at::Tensor& tau, const at::Tensor& v_th, const std::optional<at::Tensor>& u0,
    std::string_view reset, bool detach_reset, std::string_view surrogate, double width,
    double alpha, bool need_grad_u0, bool decay_input, bool tau_logit) {
  const AlifParams p = make_alif_bwd_params(grad_spikes, grad_u_last, x, u_ckpt, steps, tau, v_th,
                                            u0, reset, detach_reset, surrogate, width, alpha,
                                            decay_input, tau_logit);
  const AlifBwdBuffers buf =
      prepare_alif_bwd(p, grad_spikes, grad_u_last, x, u_ckpt, u0, need_grad_u0);
  at::Tensor grad_tau, grad_vth;
  ALIF_DISPATCH_CPU(x.scalar_type(), "alif_bwd_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const auto acc_opts = x.options().dtype(c10::CppTypeToScalarType<acc_t>::value);
    const auto [tau_c, vth_c] = math_params<acc_t>("alif_bwd", p, tau, v_th);
    // Where the per-neuron tau/v_th terms go: with per-channel parameters a (2, N) buffer summed
    // per channel below; with scalar ones, the kernel's per-block double sums (kCpuSumBlock).
    const bool per_channel = p.tau_per_channel || p.vth_per_channel;
    const int64_t blocks = (p.N + kCpuSumBlock - 1) / kCpuSumBlock;
    const at::Tensor term_sums = per_channel
                                     ? empty_output({2, p.N}, acc_opts)
                                     : at::empty({2 * blocks}, acc_opts.dtype(at::kDouble));
    AlifPtrs<scalar_t> q = alif_bwd_ptrs<scalar_t>(buf, tau_c, vth_c);
    if (per_channel) {
      q.dtau_n = term_sums.data_ptr<acc_t>();
      q.dvth_n = q.dtau_n + p.N;
    } else {
      q.block_sums = term_sums.data_ptr<double>();
    }
    with_value_type<scalar_t>([&](auto tag) {
                                if constexpr (std::is_same_v<decltype(tag), Avx512Tag>) {
                                  avx512::alif_bwd(p, q);
                                } else {
                                  avx2::alif_bwd(p, q);
                                }
                              },
                              [&](auto v) { isa_default::run_alif_bwd<decltype(v)>(p, q); });
    if (per_channel) {
      const auto [sum_tau, sum_vth] = sum_per_channel(p, q.dtau_n, q.dvth_n, acc_opts);
      chain_tau_logit<acc_t>(p, tau_c, sum_tau);
      grad_tau = param_grad(sum_tau, tau);
      grad_vth = param_grad(sum_vth, v_th);
    } else {
      double total[2] = {0, 0};  // the blocks in order
      for (int64_t b = 0; b < blocks; ++b) {
        total[0] += q.block_sums[b];
        total[1] += q.block_sums[blocks + b];
      }
      at::Tensor sum_tau = at::empty({1}, acc_opts), sum_vth = at::empty({1}, acc_opts);
      sum_tau.data_ptr<acc_t>()[0] = acc_t(total[0]);
      sum_vth.data_ptr<acc_t>()[0] = acc_t(total[1]);
      chain_tau_logit<acc_t>(p, tau_c, sum_tau);
      grad_tau = param_grad(sum_tau, tau);
      grad_vth = param_grad(sum_vth, v_th);
    }
  });
  return {buf.grad_x, grad_tau, grad_vth, buf.grad_u0};
}

// Test hook: selects the CPU kernels' value type. 0, the default: Vectorized in the widest copy
// the CPU runs (AVX-512, AVX2, baseline); 1 the scalar a CUDA thread runs; 2 and 3
// Lanes<float, 4> and <float, 8>, the CUDA 16-byte paths; 4 Vectorized in the baseline copy; 5
// in the AVX2 copy (the baseline where the CPU lacks AVX2). The Lanes apply to float32 storage,
// the scalar to float32/float64 (other dtypes run the default). Returns the previous one.
int64_t set_cpu_value_type(int64_t kind) {
  TORCH_CHECK(kind >= 0 && kind <= 5,
              "_set_cpu_value_type: kind must be 0 (default), 1 (scalar), 2 (Lanes<float, 4>), "
              "3 (Lanes<float, 8>), 4 (Vectorized, baseline copy) or 5 (Vectorized, AVX2 copy), "
              "got ",
              kind);
  return g_value_type.exchange(kind);
}

// The copy of the kernels the default runs: "avx512", "avx2" or "baseline" (for the tests).
std::string cpu_kernels_isa() {
  return avx512::available() ? "avx512" : avx2::available() ? "avx2" : "baseline";
}

}  // namespace

// ---- the output pool (see cpu_memory.h) -----------------------------------------------------

namespace {

constexpr size_t kHugePage = size_t(1) << 21;

// Asks for the whole 2 MiB pages inside [p, p + n) in huge pages (no effect where unsupported).
void advise_huge_pages(void* p, size_t n) {
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  const auto begin = reinterpret_cast<uintptr_t>(p);
  const uintptr_t first = (begin + kHugePage - 1) & ~(kHugePage - 1);
  const uintptr_t last = (begin + n) & ~(kHugePage - 1);
  if (last > first) madvise(reinterpret_cast<void*>(first), last - first, MADV_HUGEPAGE);
#else
  (void)p;
  (void)n;
#endif
}

int64_t cache_cap_bytes() {
  const char* env = std::getenv("ALIF_CUDA_CPU_CACHE_MB");
  if (env == nullptr || *env == '\0') return int64_t(1024) << 20;
  char* end = nullptr;
  const long long mb = std::strtoll(env, &end, 10);
  TORCH_CHECK(end != env && *end == '\0' && mb >= 0,
              "ALIF_CUDA_CPU_CACHE_MB must be a whole number of MiB >= 0 (0 turns the CPU output "
              "pool off), got '", env, "'");
  return int64_t(mb) << 20;
}

// One block of the pool: it travels as the DataPtr's context while a tensor holds it.
struct PoolBlock {
  void* data;
  size_t size;       // a multiple of 2 MiB
  size_t requested;  // what the tensor asked for (for the profiler)
};

// Free blocks by size (exact 2 MiB multiples), at most cap bytes of them; the rest go back to the
// system. A mutex guards the lists: tensors are freed on whatever thread drops them.
class OutputPool final : public c10::Allocator {
 public:
  explicit OutputPool(int64_t cap) : cap_(cap) {}

  bool enabled() const { return cap_ > 0; }

  c10::DataPtr allocate(size_t n) override {
    const size_t size = (std::max<size_t>(n, 1) + kHugePage - 1) & ~(kHugePage - 1);
    PoolBlock* block = nullptr;
    int64_t live = 0, held = 0;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      auto it = free_.find(size);
      if (it != free_.end() && !it->second.empty()) {
        block = it->second.back();
        it->second.pop_back();
        held_ -= static_cast<int64_t>(size);
        ++reused_;
        live_ += static_cast<int64_t>(n);
        live = live_;
        held = held_;
      }
    }
    if (block == nullptr) {  // a new block, allocated outside the lock
      void* data = std::aligned_alloc(kHugePage, size);
      TORCH_CHECK(data != nullptr, "alif_cuda: out of CPU memory allocating ", size,
                  " bytes for an output (the output pool holds ", stats()[0], " free bytes; ",
                  "alif_cuda.empty_cpu_cache() gives them back)");
      advise_huge_pages(data, size);
      block = new PoolBlock{data, size, 0};
      std::lock_guard<std::mutex> lock(mutex_);
      ++fresh_;
      live_ += static_cast<int64_t>(n);
      live = live_;
      held = held_;
    }
    block->requested = n;
    report(block->data, static_cast<int64_t>(n), live, held);
    return {block->data, block, &OutputPool::release, c10::Device(c10::DeviceType::CPU)};
  }

  void copy_data(void* dest, const void* src, std::size_t count) const override {
    default_copy_data(dest, src, count);
  }

  std::vector<int64_t> stats() {
    std::lock_guard<std::mutex> lock(mutex_);
    int64_t blocks = 0;
    for (const auto& kv : free_) blocks += static_cast<int64_t>(kv.second.size());
    return {held_, blocks, reused_, fresh_, cap_};
  }

  void clear() {
    std::unordered_map<size_t, std::vector<PoolBlock*>> drop;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      drop.swap(free_);
      held_ = 0;
    }
    for (auto& kv : drop) {
      for (PoolBlock* b : kv.second) destroy(b);
    }
  }

  static OutputPool& get() {
    // Never destroyed: tensors freed during interpreter shutdown still find it.
    static OutputPool* pool = new OutputPool(cache_cap_bytes());
    return *pool;
  }

 private:
  static void destroy(PoolBlock* b) {
    std::free(b->data);
    delete b;
  }

  // Tells PyTorch's profiler (profile_memory=True) about an allocation (+) or a free (-), as
  // its own CPU allocator does, so that memory traces and peaks count pooled outputs too; live
  // and held are the pool's counters after the change.
  static void report(void* data, int64_t delta, int64_t live, int64_t held) {
    if (c10::memoryProfilingEnabled()) {
      c10::reportMemoryUsageToProfiler(data, delta, static_cast<size_t>(live),
                                       static_cast<size_t>(live + held),
                                       c10::Device(c10::DeviceType::CPU));
    }
  }

  static void release(void* ctx) {
    auto* b = static_cast<PoolBlock*>(ctx);
    OutputPool& pool = get();
    const auto requested = static_cast<int64_t>(b->requested);
    void* const data = b->data;
    bool kept;
    int64_t live, held;
    {
      std::lock_guard<std::mutex> lock(pool.mutex_);
      pool.live_ -= requested;
      kept = pool.held_ + static_cast<int64_t>(b->size) <= pool.cap_;
      if (kept) {
        pool.free_[b->size].push_back(b);
        pool.held_ += static_cast<int64_t>(b->size);
      }
      live = pool.live_;
      held = pool.held_;
    }
    report(data, -requested, live, held);
    if (!kept) destroy(b);
  }

  const int64_t cap_;
  std::mutex mutex_;
  std::unordered_map<size_t, std::vector<PoolBlock*>> free_;
  int64_t held_ = 0, reused_ = 0, fresh_ = 0, live_ = 0;
};

}  // namespace

at::Tensor empty_output(at::IntArrayRef sizes, const at::TensorOptions& options) {
  if (!options.device().is_cpu()) return at::empty(sizes, options);
  const auto dtype = c10::typeMetaToScalarType(options.dtype());
  int64_t numel = 1;
  for (int64_t s : sizes) numel *= s;
  const size_t nbytes = static_cast<size_t>(numel) * c10::elementSize(dtype);
  if (nbytes < kHugePage) return at::empty(sizes, options);
  OutputPool& pool = OutputPool::get();
  if (!pool.enabled()) {
    at::Tensor t = at::empty(sizes, options);
    advise_huge_pages(t.data_ptr(), nbytes);
    return t;
  }
  return at::detail::empty_generic(sizes, &pool, c10::DispatchKeySet(c10::DispatchKey::CPU), dtype,
                                   std::nullopt);
}

std::vector<int64_t> cpu_cache_stats() { return OutputPool::get().stats(); }

void cpu_cache_clear() { OutputPool::get().clear(); }

TORCH_LIBRARY_FRAGMENT(alif_cuda, m) {
  m.def("_set_cpu_value_type(int kind) -> int", &set_cpu_value_type);
  m.def("_cpu_kernels_isa() -> str", &cpu_kernels_isa);
  // The CPU output pool (cpu_memory.h): alif_cuda.cpu_cache_stats() / empty_cpu_cache().
  m.def("_cpu_cache_stats() -> int[]", &cpu_cache_stats);
  m.def("_cpu_cache_clear() -> ()", &cpu_cache_clear);
}

TORCH_LIBRARY_IMPL(alif_cuda, CPU, m) {
  m.impl("alif_fwd", &alif_fwd_cpu);
  m.impl("alif_bwd", &alif_bwd_cpu);
}

}  // namespace alif_cuda
