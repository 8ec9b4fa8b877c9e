// CPU kernels of the alif op family: float32, float64, and float16/bfloat16 storage with float32
// math (so CPU autocast works). The time loops are alif_math.h's, the ones the CUDA kernels run.
//
// The kernels are in alif_cpu_kernels.h, compiled in alif_cpu_baseline.cpp, alif_cpu_avx2.cpp and
// alif_cpu_avx512.cpp for three instruction sets (the widest the CPU runs is picked at run time).
// Work is split over groups of neurons, one value V a group: at::vec::Vectorized (8 floats or 4
// doubles; the baseline copy gets ATen's generic version of it, the AVX2 copy its intrinsics), a
// masked load and store for the last, shorter group. For the tests, the value type can be
// switched at run time to the ones the CUDA kernels use (a scalar, Lanes<float, 4 or 8>), compiled
// here, so this build executes every instantiation of the shared code that the GPU runs. Large
// outputs come from the pool of cpu_pool.h.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <vector>

#include "cpu/alif_cpu_vec.h"
#include "alif_host.h"
#include "cpu/alif_cpu_isa.h"
#include "cpu_pool.h"

namespace alif_cuda {

namespace {

namespace cuda_value_types {
#include "cpu/alif_cpu_kernels.h"
}  // namespace cuda_value_types

struct BaselineTag {};
struct Avx2Tag {};
struct Avx512Tag {};

// Which value type the CPU kernels run (see _set_cpu_value_type in the registration below).
enum class CpuValueType : int64_t {
  Default = 0, Scalar = 1, Lanes4 = 2, Lanes8 = 3, Baseline = 4, Avx2 = 5
};
std::atomic<int64_t> g_value_type{0};

// Runs the kernels (fwd or bwd) with the value type selected for this storage type: by default
// the widest copy the CPU runs (alif_cpu_avx512.cpp, alif_cpu_avx2.cpp, alif_cpu_baseline.cpp);
// the test hook can pick a copy or the value types a CUDA thread runs. isa_kernels(tag) runs a
// copy's kernels, f(V) the kernels of a CUDA value type V.
template <typename scalar_t, typename Copies, typename F>
void with_value_type(Copies&& isa_kernels, F&& f) {
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
  isa_kernels(BaselineTag{});
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
    with_value_type<scalar_t>(
        [&](auto tag) {
          if constexpr (std::is_same_v<decltype(tag), Avx512Tag>) {
            avx512::alif_fwd(p, q);
          } else if constexpr (std::is_same_v<decltype(tag), Avx2Tag>) {
            avx2::alif_fwd(p, q);
          } else {
            baseline::alif_fwd(p, q);
          }
        },
        [&](auto v) { cuda_value_types::run_alif_fwd<decltype(v)>(p, q); });
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
    const int64_t blocks = ceil_div(p.N, kCpuSumBlock);
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
    with_value_type<scalar_t>(
        [&](auto tag) {
          if constexpr (std::is_same_v<decltype(tag), Avx512Tag>) {
            avx512::alif_bwd(p, q);
          } else if constexpr (std::is_same_v<decltype(tag), Avx2Tag>) {
            avx2::alif_bwd(p, q);
          } else {
            baseline::alif_bwd(p, q);
          }
        },
        [&](auto v) { cuda_value_types::run_alif_bwd<decltype(v)>(p, q); });
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

TORCH_LIBRARY_FRAGMENT(alif_cuda, m) {
  m.def("_set_cpu_value_type(int kind) -> int", &set_cpu_value_type);
  m.def("_cpu_kernels_isa() -> str", &cpu_kernels_isa);
}

TORCH_LIBRARY_IMPL(alif_cuda, CPU, m) {
  m.impl("alif_fwd", &alif_fwd_cpu);
  m.impl("alif_bwd", &alif_bwd_cpu);
}

}  // namespace alif_cuda
