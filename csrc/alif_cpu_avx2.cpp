// The alif CPU kernels compiled for AVX2, with ATen's AVX2 implementation of at::vec::Vectorized
// (8 floats or 4 doubles in a 256-bit register) as the value type; alif_cpu.cpp calls them when
// the CPU has AVX2. The build compiles extensions for the baseline x86-64 and cannot give one
// file its own flags, so the instruction set is set here, before any include, the way ATen's own
// per-instruction-set kernels select theirs (CPU_CAPABILITY). FMA (and F16C) are enabled because ATen's AVX2
// headers use it, but never contracted from a * b + c: every lane rounds as the scalar code and
// the CUDA build (--fmad=false) do, and the tests compare the bits.
#if defined(__GNUC__) && defined(__x86_64__)
#define ALIF_CPU_HAS_AVX2_COPY 1
#pragma GCC target("avx2,fma,f16c")
#pragma GCC optimize("fp-contract=off")
// The pragma enables the instructions but, in g++, not the macros that headers (ATen's, Sleef's)
// test for them: what ATen's AVX2 flags (-mavx2 -mfma -mf16c) would define.
#define __AVX__ 1
#define __AVX2__ 1
#define __FMA__ 1
#define __F16C__ 1
#define CPU_CAPABILITY AVX2
#define CPU_CAPABILITY_AVX2
#else
#define ALIF_CPU_HAS_AVX2_COPY 0
#endif

#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>

#include <algorithm>

#include "alif_cpu_vec.h"
#include "alif_math.h"
#include "alif_cpu_isa.h"

namespace alif_cuda::avx2 {

bool available() {
#if ALIF_CPU_HAS_AVX2_COPY
  static const bool avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
                           __builtin_cpu_supports("f16c");
  return avx2;
#else
  return false;
#endif
}

#if ALIF_CPU_HAS_AVX2_COPY
namespace {
#include "alif_cpu_kernels.h"
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
// Never called (available() is false): the baseline copy runs instead.
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

}  // namespace alif_cuda::avx2
