// The alif op family's one implementation of the neuron arithmetic, shared by the CPU and CUDA
// kernels, with the parameter structs: no tensor types, so a translation unit compiled for
// another instruction set (cpu/alif_cpu_avx2.cpp) can include it.
//
// The per-neuron time loops (alif_fwd_neurons, alif_bwd_neurons) are templates over the value
// type V: a scalar in a CUDA thread, Lanes<float, 4 or 8> when a CUDA thread owns the neurons of
// one 16-byte access, at::vec::Vectorized<float/double> on the CPU. What each backend supplies is
// a memory accessor (which neurons, loads and stores) and the reduction of the tau/v_th partials.
#pragma once

#include <ATen/OpMathType.h>

#include <cmath>
#include <cstdint>
#include <type_traits>

#include "common.h"

namespace alif_cuda {

enum class Surrogate : int { Rect = 0, Atan = 1, Sigmoid = 2 };

// Steps the backward replays at once (held in registers on the GPU). For T > kChunk the forward
// writes u at the end of every chunk but the last: (T - 1) / kChunk checkpoints, 4 / kChunk bytes
// per neuron-step each way. alif_cuda/ops.py mirrors this constant for the fake kernel.
constexpr int kChunk = 8;

inline int64_t num_checkpoints(int64_t T) { return (T - 1) / kChunk; }

// The CPU backward's dL/dtau and dL/dv_th sums with scalar parameters: neurons in blocks of this
// many, each block's terms added in neuron order in double, then the blocks in order, so the bits
// do not depend on the number of threads.
constexpr int64_t kCpuSumBlock = 2048;

// Geometry of one alif call. Neurons of one time step are laid out as (B, C, I): C is the channel
// dim (dim 2 of x) when some parameter is per-channel, else C = 1 and I = N / B. A parameter that
// is scalar reads index 0 whatever the channel.
struct AlifParams {
  int64_t T = 0;  // time steps
  int64_t N = 0;  // neurons per time step
  int64_t B = 1, C = 1, I = 1;
  bool tau_per_channel = false;
  bool vth_per_channel = false;
  bool soft_reset = false;
  bool detach_reset = false;
  bool static_x = false;  // x is (B, ...), the same input at every step
  bool has_u0 = false;
  bool decay_input = false;  // h_t = tau u_{t-1} + (1 - tau) x_t instead of + x_t
  bool tau_logit = false;    // the op was given logit(tau): the neurons use sigmoid of it
  Surrogate surrogate = Surrogate::Rect;
  double width = 1.0;
  double alpha = 2.0;
};

// The pointers one alif kernel call works on, for both backends (null when absent). The math
// dtype acc_t is float, or double for float64 storage. No two of them alias: every output is a
// fresh buffer, and u_ckpt is written by the forward and read by the backward, never both.
template <typename scalar_t>
struct AlifPtrs {
  using acc_t = at::opmath_type<scalar_t>;
  const scalar_t* __restrict__ x = nullptr;
  const scalar_t* __restrict__ u0 = nullptr;
  const scalar_t* __restrict__ grad_spikes = nullptr;
  const scalar_t* __restrict__ grad_u_last = nullptr;
  const acc_t* __restrict__ tau = nullptr;
  const acc_t* __restrict__ v_th = nullptr;
  acc_t* __restrict__ u_ckpt = nullptr;
  scalar_t* __restrict__ spikes = nullptr;
  scalar_t* __restrict__ u_last = nullptr;
  scalar_t* __restrict__ grad_x = nullptr;
  scalar_t* __restrict__ grad_u0 = nullptr;
  acc_t* __restrict__ dtau_n = nullptr;  // per-neuron sums over time (CUDA: per-channel only)
  acc_t* __restrict__ dvth_n = nullptr;
  // The CPU with scalar parameters: the kCpuSumBlock blocks' sums, dtau's then dvth's.
  double* __restrict__ block_sums = nullptr;
};

// Calls f(std::bool_constant<a>, std::bool_constant<b>): runtime flags become template flags.
template <typename F>
void bool_switch2(bool a, bool b, F&& f) {
  if (a) {
    b ? f(std::true_type{}, std::true_type{}) : f(std::true_type{}, std::false_type{});
  } else {
    b ? f(std::false_type{}, std::true_type{}) : f(std::false_type{}, std::false_type{});
  }
}

// Calls f(kSur) with the surrogate as a std::integral_constant<Surrogate, ...>.
template <typename F>
void surrogate_switch(Surrogate s, F&& f) {
  switch (s) {
    case Surrogate::Rect: return f(std::integral_constant<Surrogate, Surrogate::Rect>{});
    case Surrogate::Atan: return f(std::integral_constant<Surrogate, Surrogate::Atan>{});
    case Surrogate::Sigmoid: return f(std::integral_constant<Surrogate, Surrogate::Sigmoid>{});
  }
}

// The forward's flags: calls f(kSoft, kStatic, kDecay) with each as a std::bool_constant.
template <typename F>
void alif_fwd_flag_switch(const AlifParams& p, F&& f) {
  bool_switch2(p.soft_reset, p.static_x, [&](auto soft, auto stat) {
    p.decay_input ? f(soft, stat, std::true_type{}) : f(soft, stat, std::false_type{});
  });
}

// The backward's flags: calls f(kSoft, kDetach, kSur, kStatic, kDecay).
template <typename F>
void alif_flag_switch(const AlifParams& p, F&& f) {
  bool_switch2(p.soft_reset, p.detach_reset, [&](auto soft, auto detach) {
    surrogate_switch(p.surrogate, [&](auto sur) {
      bool_switch2(p.static_x, p.decay_input,
                   [&](auto stat, auto decay) { f(soft, detach, sur, stat, decay); });
    });
  });
}

// ---- value types --------------------------------------------------------------------------
// L neurons of one thread, operated on lane by lane. The arithmetic is the scalar arithmetic,
// lane by lane, so every instantiation rounds exactly like the scalar one.
template <typename T, int L>
struct Lanes {
  T v[L];
  Lanes() = default;
  ALIF_HD explicit Lanes(T s) {
    ALIF_UNROLL
    for (int l = 0; l < L; ++l) v[l] = s;
  }
};

#define ALIF_LANES_BINARY(op)                                                   \
  template <typename T, int L>                                                  \
  ALIF_HD Lanes<T, L> operator op(const Lanes<T, L>& a, const Lanes<T, L>& b) { \
    Lanes<T, L> r;                                                              \
    ALIF_UNROLL                                                                 \
    for (int l = 0; l < L; ++l) r.v[l] = a.v[l] op b.v[l];                      \
    return r;                                                                   \
  }
ALIF_LANES_BINARY(+)
ALIF_LANES_BINARY(-)
ALIF_LANES_BINARY(*)
ALIF_LANES_BINARY(/)
#undef ALIF_LANES_BINARY

// Comparisons give 1 or 0 (in the value type), negation is exact: the same helpers exist for
// scalars here and for at::vec::Vectorized in cpu/alif_cpu_vec.h (its ge/lt/gt/neg members).
template <typename T, std::enable_if_t<std::is_floating_point<T>::value, int> = 0>
ALIF_HD T ge01(T a, T b) { return a >= b ? T(1) : T(0); }
template <typename T, std::enable_if_t<std::is_floating_point<T>::value, int> = 0>
ALIF_HD T lt01(T a, T b) { return a < b ? T(1) : T(0); }
template <typename T, std::enable_if_t<std::is_floating_point<T>::value, int> = 0>
ALIF_HD T gt01(T a, T b) { return a > b ? T(1) : T(0); }
template <typename T, std::enable_if_t<std::is_floating_point<T>::value, int> = 0>
ALIF_HD T neg(T a) { return -a; }

#define ALIF_LANES_PRED(name)                                               \
  template <typename T, int L>                                              \
  ALIF_HD Lanes<T, L> name(const Lanes<T, L>& a, const Lanes<T, L>& b) {    \
    Lanes<T, L> r;                                                          \
    ALIF_UNROLL                                                             \
    for (int l = 0; l < L; ++l) r.v[l] = name(a.v[l], b.v[l]);              \
    return r;                                                               \
  }
ALIF_LANES_PRED(ge01)
ALIF_LANES_PRED(lt01)
ALIF_LANES_PRED(gt01)
#undef ALIF_LANES_PRED

template <typename T, std::enable_if_t<std::is_floating_point<T>::value, int> = 0>
ALIF_HD T exp_of(T a) {
  if constexpr (std::is_same<T, float>::value) {
    return expf(a);
  } else {
    return exp(a);
  }
}

template <typename T, int L>
ALIF_HD Lanes<T, L> neg(const Lanes<T, L>& a) {
  Lanes<T, L> r;
  ALIF_UNROLL
  for (int l = 0; l < L; ++l) r.v[l] = -a.v[l];
  return r;
}

template <typename T, int L>
ALIF_HD Lanes<T, L> exp_of(const Lanes<T, L>& a) {
  Lanes<T, L> r;
  ALIF_UNROLL
  for (int l = 0; l < L; ++l) r.v[l] = exp_of(a.v[l]);
  return r;
}

// tau from its logit z (ALIF's tau_param="sigmoid", fused into the op): 1 / (1 + exp(-z)); the
// backward's dL/dz is dL/dtau * tau (1 - tau), applied once to the reduced sums.
template <typename V, typename acc_t>
ALIF_HD V tau_from_logit(const V& z) {
  const V one(acc_t(1));
  return one / (one + exp_of(neg(z)));
}

// dtau/dz = tau (1 - tau), from tau = sigmoid(z).
template <typename acc_t>
ALIF_HD acc_t logit_slope(acc_t tau) {
  return tau * (acc_t(1) - tau);
}

// ---- the neuron arithmetic ------------------------------------------------------------------
// Written as separate multiplies and adds (CUDA builds with --fmad=false; the CPU build has no
// FMA contraction) so that h rounds exactly as PyTorch's eager reference computes it: spikes are
// then identical to alif_ref, and the backward's replay reproduces the forward's h bit for bit.

// Per-neuron constants of one call, broadcast into V.
template <typename V>
struct NeuronConsts {
  V tau, v_th;
  V in_scale;  // 1 - tau: the input's factor with decay_input (unused without)
  V zero, one;
  V half, neg_half, inv_width;  // rect: s = 1(|d| < width/2) * (1/width)
  V k, alpha_half;              // atan: s = (alpha/2) / (1 + (k d)^2), k = pi/2 * alpha
  V alpha;                      // sigmoid: s = (1 - sg) sg alpha, sg = 1 / (1 + exp(-alpha d))
};

// Scalar surrogate constants in the math type, from the op's double options. (1/width) instead
// of a division by width is bit-identical here: it multiplies an indicator that is 0 or 1.
template <typename acc_t>
struct SurrogateScalars {
  acc_t half, inv_width, k, alpha_half, alpha;
  ALIF_HD explicit SurrogateScalars(const AlifParams& p) {
    const acc_t width = acc_t(p.width);
    alpha = acc_t(p.alpha);
    half = width / acc_t(2);
    inv_width = acc_t(1) / width;
    k = acc_t(M_PI / 2) * alpha;
    alpha_half = alpha / acc_t(2);
  }
};

template <typename V, typename acc_t>
ALIF_HD NeuronConsts<V> make_consts(const V& tau, const V& v_th, const SurrogateScalars<acc_t>& s) {
  NeuronConsts<V> c;
  c.tau = tau;
  c.v_th = v_th;
  c.zero = V(acc_t(0));
  c.one = V(acc_t(1));
  c.half = V(s.half);
  c.neg_half = V(-s.half);
  c.inv_width = V(s.inv_width);
  c.k = V(s.k);
  c.alpha_half = V(s.alpha_half);
  c.alpha = V(s.alpha);
  c.in_scale = c.one - tau;
  return c;
}

// u_t from h_t: the reset, with the spike recomputed by the forward's own comparison.
template <bool kSoft, typename V>
ALIF_HD V reset_of(const V& h, const V& o, const NeuronConsts<V>& c) {
  if constexpr (kSoft) {
    return h - c.v_th * o;
  } else {
    return h * (c.one - o);
  }
}

// h_t = tau u_{t-1} + x_t, or tau u_{t-1} + (1 - tau) x_t with decay_input.
template <bool kDecay, typename V>
ALIF_HD V charge(const V& u, const V& x, const NeuronConsts<V>& c) {
  if constexpr (kDecay) {
    return c.tau * u + c.in_scale * x;
  } else {
    return c.tau * u + x;
  }
}

// One forward step: h_t from the charge, o_t = H(h_t - v_th), u updated in place; returns o_t.
template <bool kSoft, bool kDecay, typename V>
ALIF_HD V fwd_step(V& u, const V& x, const NeuronConsts<V>& c) {
  const V h = charge<kDecay>(u, x, c);
  const V o = ge01(h, c.v_th);
  u = reset_of<kSoft>(h, o, c);
  return o;
}

template <Surrogate kSur, typename V>
ALIF_HD V surrogate_of(const V& d, const NeuronConsts<V>& c) {
  if constexpr (kSur == Surrogate::Rect) {
    return lt01(d, c.half) * gt01(d, c.neg_half) * c.inv_width;
  } else if constexpr (kSur == Surrogate::Atan) {
    const V z = c.k * d;
    return c.alpha_half / (c.one + z * z);
  } else {
    const V sg = c.one / (c.one + exp_of(neg(c.alpha * d)));
    return (c.one - sg) * sg * c.alpha;
  }
}

// One step of BPTT at t (from T-1 down to 0), given h_t, u_{t-1}, x_t and g_t = dL/do_t; du
// holds dL/du_t on entry and dL/du_{t-1} = tau dL/dh_t on return. Adds the step's dL/dtau and
// dL/dv_th terms to dtau and dvth; returns dL/dx_t (dL/dh_t, times 1 - tau with decay_input).
template <bool kSoft, bool kDetach, Surrogate kSur, bool kDecay, typename V>
ALIF_HD V bptt_step(const V& h, const V& u_prev, const V& x, const V& g, V& du, V& dtau,
                    V& dvth, const NeuronConsts<V>& c) {
  const V o = ge01(h, c.v_th);
  const V s = surrogate_of<kSur>(h - c.v_th, c);
  V g_total = g;  // dL/do_t through the spike output and, unless detached, the reset
  if constexpr (!kDetach) g_total = g - du * (kSoft ? c.v_th : h);
  V dh;
  if constexpr (kSoft) {
    dh = s * g_total + du;
    dvth = dvth + (neg(s) * g_total - du * o);
  } else {
    dh = s * g_total + du * (c.one - o);
    dvth = dvth + neg(s) * g_total;
  }
  du = c.tau * dh;
  if constexpr (kDecay) {  // dh/dtau = u_{t-1} - x_t, dh/dx = 1 - tau
    dtau = dtau + dh * (u_prev - x);
    return c.in_scale * dh;
  } else {
    dtau = dtau + dh * u_prev;
    return dh;
  }
}

// ---- the per-neuron time loops ---------------------------------------------------------------
// Mem is the backend's accessor for the neurons one V holds:
//   V x(t)            input of step t (a static x: the same value for every t)
//   V g(t)            dL/do_t (zero when grad_spikes is absent)
//   V u0(), V grad_u_last(), V ckpt(i)             (zero when absent)
//   void spikes(t, o), u_last(u), set_ckpt(i, u)   (set_ckpt a no-op when not checkpointing)
//   void grad_x(t, dh), grad_x_static(sum), grad_u0(du)

// The forward over all T steps. Step t+1's input is loaded before step t's arithmetic.
template <bool kSoft, bool kDecay, typename V, typename Mem>
ALIF_HD void alif_fwd_neurons(Mem& m, const NeuronConsts<V>& c, int64_t T) {
  V u = m.u0();
  V x_next = m.x(0);
  for (int64_t t = 0; t < T; ++t) {
    const V x = x_next;
    if (t + 1 < T) x_next = m.x(t + 1);
    m.spikes(t, fwd_step<kSoft, kDecay>(u, x, c));
    if ((t + 1) % kChunk == 0 && t + 1 < T) m.set_ckpt((t + 1) / kChunk - 1, u);
  }
  m.u_last(u);
}

// BPTT over all T steps, one chunk of kChunk steps at a time from the last: the chunk's h is
// replayed from x starting at the state entering it (u0, a forward checkpoint, or for a static x
// a replay from u0: recomputation instead of memory), then walked backward. Per-neuron sums of
// the dL/dtau and dL/dv_th terms are added to dtau and dvth.
template <bool kSoft, bool kDetach, Surrogate kSur, bool kStatic, bool kDecay, typename V,
          typename Mem>
ALIF_HD void alif_bwd_neurons(Mem& m, const NeuronConsts<V>& c, int64_t T, V& dtau, V& dvth) {
  V du = m.grad_u_last();
  V gx_sum = c.zero;
  const V x_static = kStatic ? m.x(0) : c.zero;
  for (int64_t t0 = (T - 1) / kChunk * kChunk; t0 >= 0; t0 -= kChunk) {
    const int len = static_cast<int>(T - t0 < kChunk ? T - t0 : kChunk);
    V u;
    if constexpr (kStatic) {
      u = m.u0();
      for (int64_t t = 0; t < t0; ++t) fwd_step<kSoft, kDecay>(u, x_static, c);
    } else {
      u = t0 == 0 ? m.u0() : m.ckpt(t0 / kChunk - 1);
    }
    const V u_start = u;
    // All of the chunk's loads first, so they are in flight together.
    V h[kChunk], g[kChunk];
    ALIF_UNROLL
    for (int k = 0; k < kChunk; ++k) {
      if (k < len) {
        h[k] = kStatic ? x_static : m.x(t0 + k);
        g[k] = m.g(t0 + k);
      }
    }
    ALIF_UNROLL
    for (int k = 0; k < kChunk; ++k) {
      if (k < len) {
        h[k] = charge<kDecay>(u, h[k], c);
        u = reset_of<kSoft>(h[k], ge01(h[k], c.v_th), c);
      }
    }
    ALIF_UNROLL
    for (int k = kChunk - 1; k >= 0; --k) {
      if (k < len) {
        const V u_prev = k > 0 ? reset_of<kSoft>(h[k - 1], ge01(h[k - 1], c.v_th), c) : u_start;
        // With decay_input the walk needs x_t itself (dh/dtau): read again, from cache (the
        // loads above just brought it), rather than kept beside h, which would take 8 more
        // registers per lane across the chunk (the 8-lane CUDA path spilled).
        const V x_k = kStatic ? x_static : (kDecay ? m.x(t0 + k) : c.zero);
        const V dx = bptt_step<kSoft, kDetach, kSur, kDecay>(h[k], u_prev, x_k, g[k], du, dtau,
                                                              dvth, c);
        if constexpr (kStatic) {
          gx_sum = gx_sum + dx;
        } else {
          m.grad_x(t0 + k, dx);
        }
      }
    }
  }
  if constexpr (kStatic) m.grad_x_static(gx_sum);
  m.grad_u0(du);
}

}  // namespace alif_cuda
