// The CPU kernels of the taid op family, included by taid_cpu.cpp once per instruction set it
// dispatches to, each time inside its own namespace and `#pragma GCC target` region: the same
// source is compiled for the baseline x86-64 and for AVX2 (and AVX-512) and picked at run time,
// so the plain loops over pixels vectorise at the machine's width. No include guard, on purpose;
// the includes this code needs come first in taid_cpu.cpp.
//
// Work is split over (b, c) planes; a plane's T x H x W values are walked one time step (one
// contiguous run of pixels) at a time. The forward reads a plane twice, the second time from cache
// (a plane of T=16 64x64 float32 values is 256 KiB). dL/dw: every plane writes its dL/dZ (T
// values), then each entry of dw sums over the planes in order. Deterministic.

// Planes per task: enough values that a task outweighs its scheduling.
inline int64_t plane_grain(const TaidParams& p) {
  return std::max<int64_t>(1, 32768 / std::max<int64_t>(1, p.T * p.plane_size));
}

// Pixels the forward's second pass accumulates at once, their partial sums in vector registers.
constexpr int kPixels = 32;

// sum_{i < n} term(i) in kLanes interleaved partial sums: independent chains the compiler turns
// into SIMD adds (a single running sum is one dependent add per element). Fixed order. This order
// is the CPU's own; the CUDA kernels sum over warps instead.
template <typename acc_t, typename Term>
acc_t lane_sum(int64_t n, Term&& term) {
  constexpr int kLanes = 16;
  acc_t lanes[kLanes] = {};
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes) {
    for (int k = 0; k < kLanes; ++k) lanes[k] += term(i + k);
  }
  acc_t total = 0;
  for (; i < n; ++i) total += term(i);
  for (int k = 0; k < kLanes; ++k) total += lanes[k];
  return total;
}

template <typename scalar_t>
void taid_fwd_cpu_kernel(const TaidParams& p, const scalar_t* __restrict__ s,
                         const at::opmath_type<scalar_t>* __restrict__ w,
                         scalar_t* __restrict__ y, at::opmath_type<scalar_t>* __restrict__ attn,
                         at::opmath_type<scalar_t>* __restrict__ squeezed) {
  using acc_t = at::opmath_type<scalar_t>;
  using M = TaidMath<acc_t>;
  const int64_t HW = p.plane_size, step = p.planes * HW;
  const acc_t scale = M::scale(p);
  at::parallel_for(0, p.planes, plane_grain(p), [&](int64_t begin, int64_t end) {
    std::vector<acc_t> X(p.T), coef(p.T);
    for (int64_t plane = begin; plane < end; ++plane) {
      for (int64_t t = 0; t < p.T; ++t) {
        const scalar_t* st = s + (t * p.planes + plane) * HW;
        X[t] = M::squeeze(lane_sum<acc_t>(HW, [st](int64_t i) { return acc_t(st[i]); }), HW);
      }
      for (int64_t t = 0; t < p.T; ++t) {
        const acc_t a = M::attention(w, X.data(), p.T, t);
        attn[t * p.planes + plane] = a;
        squeezed[t * p.planes + plane] = X[t];
        coef[t] = M::coef(a, scale);
      }
      // y = sum_t coef_t s_t, kPixels pixels at a time with their partial sums in registers
      // (each pixel's sum runs over t in order, as on CUDA), the rest one by one.
      scalar_t* yp = y + plane * HW;
      const scalar_t* sp = s + plane * HW;
      int64_t i0 = 0;
      for (; i0 + kPixels <= HW; i0 += kPixels) {
        acc_t acc[kPixels] = {};
        for (int64_t t = 0; t < p.T; ++t) {
          const scalar_t* st = sp + t * step + i0;
          const acc_t c = coef[t];
          for (int k = 0; k < kPixels; ++k) acc[k] = M::reweight(acc[k], c, acc_t(st[k]));
        }
        for (int k = 0; k < kPixels; ++k) yp[i0 + k] = scalar_t(acc[k]);
      }
      for (; i0 < HW; ++i0) {
        acc_t acc = 0;
        for (int64_t t = 0; t < p.T; ++t) acc = M::reweight(acc, coef[t], acc_t(sp[t * step + i0]));
        yp[i0] = scalar_t(acc);
      }
    }
  });
}

// Per plane: dZ_t from G_t = scale sum_px g s_t, then ds_t = coef_t g + shift_t. dZ is kept
// (T, planes) for dw.
template <typename scalar_t>
void taid_bwd_cpu_kernel(const TaidParams& p, const scalar_t* __restrict__ g,
                         const scalar_t* __restrict__ s,
                         const at::opmath_type<scalar_t>* __restrict__ w,
                         const at::opmath_type<scalar_t>* __restrict__ attn,
                         scalar_t* __restrict__ grad_s, at::opmath_type<scalar_t>* __restrict__ dZ) {
  using acc_t = at::opmath_type<scalar_t>;
  using M = TaidMath<acc_t>;
  const int64_t HW = p.plane_size;
  const acc_t scale = M::scale(p);
  at::parallel_for(0, p.planes, plane_grain(p), [&](int64_t begin, int64_t end) {
    std::vector<acc_t> dz(p.T);
    for (int64_t plane = begin; plane < end; ++plane) {
      const scalar_t* gp = g + plane * HW;
      for (int64_t t = 0; t < p.T; ++t) {
        const scalar_t* st = s + (t * p.planes + plane) * HW;
        const acc_t g_s_sum = lane_sum<acc_t>(
            HW, [gp, st](int64_t i) { return M::grad_term(acc_t(gp[i]), acc_t(st[i])); });
        dz[t] = M::attention_grad(g_s_sum, scale, attn[t * p.planes + plane]);
        dZ[t * p.planes + plane] = dz[t];
      }
      for (int64_t t = 0; t < p.T; ++t) {
        const acc_t c = M::coef(attn[t * p.planes + plane], scale);
        const acc_t shift = M::grad_shift(w, dz.data(), p.T, t, HW);
        scalar_t* dst = grad_s + (t * p.planes + plane) * HW;
        for (int64_t i = 0; i < HW; ++i) dst[i] = scalar_t(M::grad_s(c, acc_t(gp[i]), shift));
      }
    }
  });
}

// dw[t, k] = sum over planes of dZ[t, plane] * X[k, plane], planes in order.
template <typename acc_t>
void taid_dw_cpu(const TaidParams& p, const acc_t* __restrict__ dZ,
                 const acc_t* __restrict__ X, acc_t* __restrict__ dw) {
  using M = TaidMath<acc_t>;
  at::parallel_for(0, p.T * p.T, 1, [&](int64_t begin, int64_t end) {
    for (int64_t e = begin; e < end; ++e) {
      const acc_t* dz = dZ + (e / p.T) * p.planes;
      const acc_t* x = X + (e % p.T) * p.planes;
      acc_t sum = 0;
      for (int64_t i = 0; i < p.planes; ++i) sum += M::grad_w_term(dz[i], x[i]);
      dw[e] = sum;
    }
  });
}

