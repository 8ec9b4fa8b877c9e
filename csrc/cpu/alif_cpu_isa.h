// The copies of the alif CPU kernels, one per instruction set (alif_cpu_baseline.cpp,
// alif_cpu_avx2.cpp, alif_cpu_avx512.cpp), called by alif_cpu.cpp: the widest the CPU runs.
#pragma once

#include "alif_math.h"

// alif_cpu_kernels.h's run_alif_fwd / run_alif_bwd with ATen's Vectorized<acc_t> for that
// instruction set, for float, double, c10::Half and c10::BFloat16 storage; available() says
// whether this build has the copy and this CPU runs it (looked up once).
#define ALIF_CPU_ISA_DECLARE(isa)                                          \
  namespace alif_cuda::isa {                                               \
  bool available();                                                        \
  template <typename scalar_t>                                             \
  void alif_fwd(const AlifParams& p, const AlifPtrs<scalar_t>& q);         \
  template <typename scalar_t>                                             \
  void alif_bwd(const AlifParams& p, const AlifPtrs<scalar_t>& q);         \
  }

ALIF_CPU_ISA_DECLARE(baseline)
ALIF_CPU_ISA_DECLARE(avx2)
ALIF_CPU_ISA_DECLARE(avx512)
