// CPU kernels of the taid op family: float32, float64, float16 and bfloat16 storage, math in
// float (double for float64) through TaidMath, the per-plane arithmetic the CUDA kernels use too.
// The kernels themselves are in taid_cpu_kernels.h, compiled here once per instruction set.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <algorithm>
#include <vector>

#include "taid_host.h"

namespace alif_cuda {
namespace {

namespace isa_default {
#include "cpu/taid_cpu_kernels.h"
}  // namespace isa_default

// GCC on x86-64 also builds an AVX2 and an AVX-512 copy (no FMA: a * b + c rounds twice, as in
// the baseline code and the CUDA build, --fmad=false). Other compilers and CPUs run the baseline.
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__)
#define TAID_CPU_WIDE 1
#pragma GCC push_options
#pragma GCC target("avx2")
namespace isa_avx2 {
#include "cpu/taid_cpu_kernels.h"
}  // namespace isa_avx2
#pragma GCC pop_options
#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq")
namespace isa_avx512 {
#include "cpu/taid_cpu_kernels.h"
}  // namespace isa_avx512
#pragma GCC pop_options
#else
#define TAID_CPU_WIDE 0
namespace isa_avx2 = isa_default;
namespace isa_avx512 = isa_default;
#endif

// The widest copy this CPU runs (0 baseline, 1 AVX2, 2 AVX-512), looked up once.
int cpu_isa() {
#if TAID_CPU_WIDE
  static const int isa = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                                 __builtin_cpu_supports("avx512vl") &&
                                 __builtin_cpu_supports("avx512dq")
                             ? 2
                             : __builtin_cpu_supports("avx2") ? 1 : 0;
  return isa;
#else
  return 0;
#endif
}

// The kernel from the copy this CPU runs.
#define TAID_CPU_PICK(kernel) \
  (cpu_isa() == 2 ? isa_avx512::kernel : cpu_isa() == 1 ? isa_avx2::kernel : isa_default::kernel)

std::tuple<at::Tensor, at::Tensor, at::Tensor> taid_fwd_cpu(const at::Tensor& s,
                                                            const at::Tensor& w,
                                                            std::string_view reduce) {
  const TaidParams p = make_taid_fwd_params(s, w, reduce);
  TaidFwdOutputs out = alloc_taid_fwd(s);
  const at::Tensor sc = s.contiguous();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, s.scalar_type(), "taid_fwd_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const at::Tensor wc = w.to(c10::CppTypeToScalarType<acc_t>::value).contiguous();
    auto* kernel = TAID_CPU_PICK(taid_fwd_cpu_kernel<scalar_t>);
    kernel(p, sc.const_data_ptr<scalar_t>(), wc.const_data_ptr<acc_t>(),
           out.y.mutable_data_ptr<scalar_t>(), out.attn.mutable_data_ptr<acc_t>(),
           out.squeezed.mutable_data_ptr<acc_t>());
  });
  return {out.y, out.attn, out.squeezed};
}

std::tuple<at::Tensor, at::Tensor> taid_bwd_cpu(const at::Tensor& grad_y, const at::Tensor& s,
                                                const at::Tensor& w, const at::Tensor& attn,
                                                const at::Tensor& squeezed,
                                                std::string_view reduce) {
  const TaidParams p = make_taid_bwd_params(grad_y, s, w, attn, squeezed, reduce);
  const TaidBwdBuffers b = prepare_taid_bwd(p, grad_y, s, w, attn, squeezed);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, s.scalar_type(), "taid_bwd_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    auto* kernel = TAID_CPU_PICK(taid_bwd_cpu_kernel<scalar_t>);
    auto* dw_kernel = TAID_CPU_PICK(taid_dw_cpu<acc_t>);
    kernel(p, b.grad_y.const_data_ptr<scalar_t>(), b.s.const_data_ptr<scalar_t>(),
           b.w.const_data_ptr<acc_t>(), b.attn.const_data_ptr<acc_t>(),
           b.grad_s.mutable_data_ptr<scalar_t>(), b.dZ.mutable_data_ptr<acc_t>());
    dw_kernel(p, b.dZ.const_data_ptr<acc_t>(), b.squeezed.const_data_ptr<acc_t>(),
              b.dw.mutable_data_ptr<acc_t>());
  });
  return {b.grad_s, b.dw.to(w.scalar_type())};
}

}  // namespace

TORCH_LIBRARY_IMPL(alif_cuda, CPU, m) {
  m.impl("taid_fwd", &taid_fwd_cpu);
  m.impl("taid_bwd", &taid_bwd_cpu);
}

}  // namespace alif_cuda
