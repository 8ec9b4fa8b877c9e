// alif_math.h's value-type helpers for at::vec::Vectorized, for the CPU translation units (the
// copies of the kernels: alif_cpu_baseline.cpp, alif_cpu_avx2.cpp and alif_cpu_avx512.cpp, where
// Vectorized is ATen's implementation for that instruction set).
// Included before alif_math.h so its templates find them (ordinary lookup; ADL would look in
// at::vec). The members used give 1 or 0 per lane (ge/lt/gt) and negate exactly; * and + are
// separate instructions (no FMA contraction), so every lane rounds as the scalar code does.
#pragma once

#include <ATen/cpu/vec/vec.h>

#include <cmath>
#include <type_traits>

namespace alif_cuda {

template <typename T>
inline at::vec::Vectorized<T> ge01(const at::vec::Vectorized<T>& a, const at::vec::Vectorized<T>& b) {
  return a.ge(b);
}
template <typename T>
inline at::vec::Vectorized<T> lt01(const at::vec::Vectorized<T>& a, const at::vec::Vectorized<T>& b) {
  return a.lt(b);
}
template <typename T>
inline at::vec::Vectorized<T> gt01(const at::vec::Vectorized<T>& a, const at::vec::Vectorized<T>& b) {
  return a.gt(b);
}
template <typename T>
inline at::vec::Vectorized<T> neg(const at::vec::Vectorized<T>& a) {
  return a.neg();
}
// Lane by lane with the C library's exp, as alif_math.h's scalar and Lanes exp_of: every CPU
// value type gives the sigmoid surrogate the same bits.
template <typename T>
inline at::vec::Vectorized<T> exp_of(const at::vec::Vectorized<T>& a) {
  return a.map([](T v) -> T {
    if constexpr (std::is_same_v<T, float>) {
      return expf(v);
    } else {
      return exp(v);
    }
  });
}

}  // namespace alif_cuda
