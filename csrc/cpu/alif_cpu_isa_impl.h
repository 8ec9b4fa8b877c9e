// The body of alif_cpu_baseline.cpp, alif_cpu_avx2.cpp and alif_cpu_avx512.cpp, after each has
// set its instruction set (the wider ones: pragmas and the macros ATen and Sleef test,
// CPU_CAPABILITY), ALIF_ISA (the namespace), ALIF_ISA_ENABLED (0 where the compiler cannot build
// it) and ALIF_ISA_CPU_HAS (the run-time check). No include guard: one copy per translation unit.
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>

#include <algorithm>

#include "cpu/alif_cpu_vec.h"
#include "alif_math.h"
#include "cpu/alif_cpu_isa.h"

namespace alif_cuda::ALIF_ISA {

bool available() {
#if ALIF_ISA_ENABLED
  static const bool has = ALIF_ISA_CPU_HAS;
  return has;
#else
  return false;
#endif
}

#if ALIF_ISA_ENABLED
namespace {
#include "cpu/alif_cpu_kernels.h"
}  // namespace

template <typename scalar_t>
void alif_fwd(const AlifParams& p, const AlifPtrs<scalar_t>& q) {
  run_alif_fwd<at::vec::Vectorized<at::opmath_type<scalar_t>>>(p, q);
}

template <typename scalar_t>
void alif_bwd(const AlifParams& p, const AlifPtrs<scalar_t>& q) {
  run_alif_bwd<at::vec::Vectorized<at::opmath_type<scalar_t>>>(p, q);
}
#else
// Never called (available() is false): another copy runs instead.
template <typename scalar_t>
void alif_fwd(const AlifParams&, const AlifPtrs<scalar_t>&) {}

template <typename scalar_t>
void alif_bwd(const AlifParams&, const AlifPtrs<scalar_t>&) {}
#endif

template void alif_fwd<float>(const AlifParams&, const AlifPtrs<float>&);
template void alif_fwd<double>(const AlifParams&, const AlifPtrs<double>&);
template void alif_fwd<c10::Half>(const AlifParams&, const AlifPtrs<c10::Half>&);
template void alif_fwd<c10::BFloat16>(const AlifParams&, const AlifPtrs<c10::BFloat16>&);
template void alif_bwd<float>(const AlifParams&, const AlifPtrs<float>&);
template void alif_bwd<double>(const AlifParams&, const AlifPtrs<double>&);
template void alif_bwd<c10::Half>(const AlifParams&, const AlifPtrs<c10::Half>&);
template void alif_bwd<c10::BFloat16>(const AlifParams&, const AlifPtrs<c10::BFloat16>&);

}  // namespace alif_cuda::ALIF_ISA
