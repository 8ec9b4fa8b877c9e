// The taid CUDA kernels as the host side (taid_cuda.cpp) launches them, defined with their launch
// planning in taid_launch_cuda.cu, which needs none of torch's headers. Pointers are contiguous
// (T, B, C, H, W) s and ds, (B, C, H, W) y and grad_y, (T, T) w and dw and (T, B, C) attn,
// squeezed and dZ, the last ones and w in the math dtype at::opmath_type<scalar_t>.
#pragma once

#include <ATen/OpMathType.h>
#include <cuda_runtime_api.h>

#include "taid_math.h"

namespace alif_cuda {

// The forward of p.planes >= 1 planes on `device` (the current device).
template <typename scalar_t>
void launch_taid_fwd(const TaidParams& p, int device, cudaStream_t stream, const scalar_t* s,
                     const at::opmath_type<scalar_t>* w, scalar_t* y,
                     at::opmath_type<scalar_t>* attn, at::opmath_type<scalar_t>* squeezed);

// The backward: grad_s and dZ per plane (none when p.planes == 0), then dw from dZ and squeezed.
template <typename scalar_t>
void launch_taid_bwd(const TaidParams& p, int device, cudaStream_t stream,
                     const scalar_t* grad_y, const scalar_t* s,
                     const at::opmath_type<scalar_t>* w, const at::opmath_type<scalar_t>* attn,
                     const at::opmath_type<scalar_t>* squeezed, scalar_t* grad_s,
                     at::opmath_type<scalar_t>* dZ, at::opmath_type<scalar_t>* dw);

}  // namespace alif_cuda
