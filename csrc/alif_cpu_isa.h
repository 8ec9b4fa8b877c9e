// The AVX2 copy of the alif CPU kernels (alif_cpu_avx2.cpp), called by alif_cpu.cpp when the CPU
// has AVX2.
#pragma once

#include "alif_math.h"

namespace alif_cuda::avx2 {

// Whether this build has the AVX2 copy and this CPU runs it (looked up once).
bool available();

// alif_cpu_kernels.h's run_alif_fwd / run_alif_bwd with ATen's AVX2 Vectorized<acc_t>, for
// float, double, c10::Half and c10::BFloat16 storage.
template <typename scalar_t>
void alif_fwd(const AlifParams& p, const AlifPtrs<scalar_t>& q);
template <typename scalar_t>
void alif_bwd(const AlifParams& p, const AlifPtrs<scalar_t>& q);

}  // namespace alif_cuda::avx2
