// The alif CPU kernels compiled for AVX-512 (ATen's flags -mavx512f -mavx512bw -mavx512vl
// -mavx512dq -mfma), with ATen's AVX-512 Vectorized (16 floats or 8 doubles a register) as the
// value type: twice the lanes of the AVX2 copy and twice its registers (32), which the backward's
// chunk of replayed steps needs. As alif_cpu_avx2.cpp otherwise: the instruction set is set here
// because the build cannot give one file its own flags, and a * b + c is never contracted.
#if defined(__GNUC__) && defined(__x86_64__)
#define ALIF_ISA_ENABLED 1
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,f16c")
#pragma GCC optimize("fp-contract=off")
// The pragma enables the instructions but, in g++, not the macros headers test for them.
#define __AVX__ 1
#define __AVX2__ 1
#define __FMA__ 1
#define __F16C__ 1
#define __AVX512F__ 1
#define __AVX512BW__ 1
#define __AVX512VL__ 1
#define __AVX512DQ__ 1
#define CPU_CAPABILITY AVX512
#define CPU_CAPABILITY_AVX512
#define ALIF_ISA_CPU_HAS                                                             \
  (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&        \
   __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq") &&       \
   __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c"))
#else
#define ALIF_ISA_ENABLED 0
#endif
#define ALIF_ISA avx512

#include "cpu/alif_cpu_isa_impl.h"
