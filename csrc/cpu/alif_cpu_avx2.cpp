// The alif CPU kernels compiled for AVX2, with ATen's AVX2 implementation of at::vec::Vectorized
// (8 floats or 4 doubles in a 256-bit register) as the value type; alif_cpu.cpp calls them when
// the CPU has AVX2 (and not AVX-512). The build compiles extensions for the baseline x86-64 and
// cannot give one file its own flags, so the instruction set is set here, before any include, the
// way ATen's own per-instruction-set kernels select theirs (CPU_CAPABILITY, ATen's flags
// -mavx2 -mfma -mf16c). FMA is enabled because ATen's headers use it, but a * b + c is never
// contracted: every lane rounds as the scalar code and the CUDA build (--fmad=false) do, and the
// tests compare the bits.
#if defined(__GNUC__) && defined(__x86_64__)
#define ALIF_ISA_ENABLED 1
#pragma GCC target("avx2,fma,f16c")
#pragma GCC optimize("fp-contract=off")
// The pragma enables the instructions but, in g++, not the macros headers test for them.
#define __AVX__ 1
#define __AVX2__ 1
#define __FMA__ 1
#define __F16C__ 1
#define CPU_CAPABILITY AVX2
#define CPU_CAPABILITY_AVX2
#define ALIF_ISA_CPU_HAS \
  (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c"))
#else
#define ALIF_ISA_ENABLED 0
#endif
#define ALIF_ISA avx2

#include "cpu/alif_cpu_isa_impl.h"
