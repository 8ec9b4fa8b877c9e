// The taid op family's (temporal attention image decoding) one implementation of the per-plane
// arithmetic, shared by the CPU and CUDA kernels, with the geometry struct: no tensor types.
#pragma once

#include <cmath>
#include <cstdint>
#include <type_traits>

#include "common.h"

namespace alif_cuda {

// s is (T, B, C, H, W), contiguous: value (t, plane, px) of plane = b * C + c lives at
// (t * planes + plane) * plane_size + px.
struct TaidParams {
  int64_t T = 0;
  int64_t planes = 0;      // B * C
  int64_t plane_size = 0;  // H * W
  bool mean = false;       // reduce="mean": y is divided by T
};

// The per-plane arithmetic of taid, written once for both backends. Every kernel, CPU or CUDA,
// computes through TaidMath<acc_t> with acc_t = at::opmath_type of the storage dtype: float for
// float32, float16 and bfloat16 s, double for float64. Both backends dispatch the same four
// storage dtypes, so the CPU build runs both instantiations the CUDA kernels use (TaidMath<float>
// and TaidMath<double>), element for element the same expressions; a CUDA thread that loads
// several pixels at once applies them lane by lane. What stays per backend: which plane and pixels
// a thread or task owns, the loads and stores, the order of the sums over pixels and planes (SIMD
// lanes on the CPU, warps and cluster ranks on CUDA) and the cluster exchange.
template <typename acc_t>
struct TaidMath {
  // expf/exp are the C functions both host and device code have (std::exp has no device overloads).
  static ALIF_HD acc_t sigmoid(acc_t z) {
    if constexpr (std::is_same_v<acc_t, float>) {
      return 1.0f / (1.0f + expf(-z));
    } else {
      return acc_t(1) / (acc_t(1) + ::exp(-z));
    }
  }

  // y = scale * sum_t A_t s_t: scale is 1 for reduce="sum", 1/T for "mean".
  static ALIF_HD acc_t scale(const TaidParams& p) {
    return p.mean ? acc_t(1) / acc_t(p.T) : acc_t(1);
  }

  // Squeeze: X_t is the mean of the plane's HW values of step t, from their sum.
  static ALIF_HD acc_t squeeze(acc_t sum, int64_t HW) { return sum / acc_t(HW); }

  // Attention: A_t = sigmoid(sum_t' w[t, t'] X_t'), X indexed by time, t' in order.
  static ALIF_HD acc_t attention(const acc_t* w, const acc_t* X, int64_t T, int64_t t) {
    acc_t z = 0;
    for (int64_t k = 0; k < T; ++k) z += w[t * T + k] * X[k];
    return sigmoid(z);
  }

  // Reweight: y = sum_t coef_t s_t with coef_t = scale A_t, accumulated from 0 for t = 0..T-1.
  static ALIF_HD acc_t coef(acc_t a, acc_t scale) { return scale * a; }
  static ALIF_HD acc_t reweight(acc_t y, acc_t coef, acc_t s) { return y + coef * s; }

  // Backward. The per-pixel term of G_t / scale = sum_px g s_t, with g = dL/dy.
  static ALIF_HD acc_t grad_term(acc_t g, acc_t s) { return g * s; }
  // dL/dZ_t (Z_t = the attention's pre-activation) from G_t / scale summed over the plane.
  static ALIF_HD acc_t attention_grad(acc_t g_s_sum, acc_t scale, acc_t a) {
    return g_s_sum * scale * a * (acc_t(1) - a);
  }
  // ds_t's constant: dL/dX_t / HW with dL/dX_t = sum_t' w[t', t] dZ_t' (t' in order).
  static ALIF_HD acc_t grad_shift(const acc_t* w, const acc_t* dZ, int64_t T, int64_t t,
                                  int64_t HW) {
    acc_t d = 0;
    for (int64_t k = 0; k < T; ++k) d += w[k * T + t] * dZ[k];
    return d / acc_t(HW);
  }
  // ds_t = coef_t g + shift_t per pixel.
  static ALIF_HD acc_t grad_s(acc_t coef, acc_t g, acc_t shift) { return coef * g + shift; }
  // dw[t, k] = sum over planes of dZ[t, plane] X[k, plane]: one plane's term.
  static ALIF_HD acc_t grad_w_term(acc_t dz, acc_t x) { return dz * x; }
};

}  // namespace alif_cuda
