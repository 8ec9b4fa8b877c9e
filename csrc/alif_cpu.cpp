// CPU kernels of the alif op family: float32, float64, and float16/bfloat16 storage with float32
// math (so CPU autocast works). The time loops are alif.h's, the ones the CUDA kernels run.
//
// Work is split over groups of neurons, one value V a group: at::vec::Vectorized (8 floats or
// 4 doubles, a masked load and store for the last, shorter group). For the tests, the value type
// can be switched at run time to the ones the CUDA kernels use (a scalar, Lanes<float, 4 or 8>),
// so this build executes every instantiation of the shared code that the GPU runs.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/vec.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <algorithm>
#include <atomic>
#include <cmath>

namespace alif_cuda {

// Declared before alif.h so its templates find them (ordinary lookup; ADL would look in
// at::vec). The shared code's comparison and negation helpers for Vectorized: its members give 1 or 0
// per lane (ge/lt/gt) and negate exactly. Vectorized's * and + are separate instructions (this
// build enables no FMA), so every lane rounds as the scalar code does.
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

}  // namespace alif_cuda

#include "alif.h"

namespace alif_cuda {

namespace {

// Which value type the CPU kernels run (see _set_cpu_value_type in the registration below).
enum class CpuValueType : int64_t { Vectorized = 0, Scalar = 1, Lanes4 = 2, Lanes8 = 3 };
std::atomic<int64_t> g_value_type{0};

// ---- lanes of a value type, for loads, stores and per-lane parameters ----------------------

template <typename V>
struct LaneTraits;  // size; to/from an array of acc_t

template <typename T>
struct LaneTraits<at::vec::Vectorized<T>> {
  using acc_t = T;
  static constexpr int size = at::vec::Vectorized<T>::size();
  static at::vec::Vectorized<T> from(const T* a) { return at::vec::Vectorized<T>::loadu(a); }
  static void to(const at::vec::Vectorized<T>& v, T* a) { v.store(a); }
};

template <typename T, int L>
struct LaneTraits<Lanes<T, L>> {
  using acc_t = T;
  static constexpr int size = L;
  static Lanes<T, L> from(const T* a) {
    Lanes<T, L> v;
    for (int l = 0; l < L; ++l) v.v[l] = a[l];
    return v;
  }
  static void to(const Lanes<T, L>& v, T* a) {
    for (int l = 0; l < L; ++l) a[l] = v.v[l];
  }
};

template <>
struct LaneTraits<float> {
  using acc_t = float;
  static constexpr int size = 1;
  static float from(const float* a) { return a[0]; }
  static void to(float v, float* a) { a[0] = v; }
};

template <>
struct LaneTraits<double> {
  using acc_t = double;
  static constexpr int size = 1;
  static double from(const double* a) { return a[0]; }
  static void to(double v, double* a) { a[0] = v; }
};

template <typename V>
constexpr bool kIsVectorized = false;
template <typename T>
constexpr bool kIsVectorized<at::vec::Vectorized<T>> = true;

// Loads cnt neurons from p (the rest of the lanes are 0).
template <typename V, typename scalar_t>
inline V load(const scalar_t* p, int cnt) {
  using Tr = LaneTraits<V>;
  using acc_t = typename Tr::acc_t;
  if constexpr (kIsVectorized<V> && std::is_same_v<scalar_t, acc_t>) {
    return cnt == Tr::size ? V::loadu(p) : V::loadu(p, cnt);
  } else {
    acc_t a[Tr::size] = {};
    for (int l = 0; l < cnt; ++l) a[l] = acc_t(p[l]);
    return Tr::from(a);
  }
}

// Stores the first cnt lanes of v to p, in p's dtype.
template <typename V, typename scalar_t>
inline void store(scalar_t* p, const V& v, int cnt) {
  using Tr = LaneTraits<V>;
  using acc_t = typename Tr::acc_t;
  if constexpr (kIsVectorized<V> && std::is_same_v<scalar_t, acc_t>) {
    // A full group's store has a compile-time size (a partial one is a memcpy call).
    cnt == Tr::size ? v.store(p) : v.store(p, cnt);
  } else {
    acc_t a[Tr::size];
    Tr::to(v, a);
    for (int l = 0; l < cnt; ++l) p[l] = scalar_t(a[l]);
  }
}

// ---- the backend part: which neurons, loads and stores ---------------------------------------

template <typename scalar_t>
struct CpuPtrs {
  using acc_t = at::opmath_type<scalar_t>;
  const scalar_t* x = nullptr;
  const scalar_t* u0 = nullptr;
  const scalar_t* grad_spikes = nullptr;
  const scalar_t* grad_u_last = nullptr;
  const acc_t* tau = nullptr;
  const acc_t* v_th = nullptr;
  acc_t* u_ckpt = nullptr;  // written by the forward, read by the backward
  scalar_t* spikes = nullptr;
  scalar_t* u_last = nullptr;
  scalar_t* grad_x = nullptr;
  scalar_t* grad_u0 = nullptr;
  acc_t* dtau_n = nullptr;  // per-neuron sums over time
  acc_t* dvth_n = nullptr;
};

// The Mem accessor of alif.h for the neurons [n, n + cnt) of one group.
template <typename scalar_t, typename V, bool kStatic>
struct CpuMem {
  using acc_t = at::opmath_type<scalar_t>;
  const CpuPtrs<scalar_t>& q;
  int64_t N, n;
  int cnt;
  V zero;

  V x(int64_t t) const { return load<V>(q.x + (kStatic ? 0 : t * N) + n, cnt); }
  V g(int64_t t) const { return q.grad_spikes ? load<V>(q.grad_spikes + t * N + n, cnt) : zero; }
  V u0() const { return q.u0 ? load<V>(q.u0 + n, cnt) : zero; }
  V grad_u_last() const { return q.grad_u_last ? load<V>(q.grad_u_last + n, cnt) : zero; }
  V ckpt(int64_t i) const { return load<V>(q.u_ckpt + i * N + n, cnt); }
  void spikes(int64_t t, const V& o) const { store(q.spikes + t * N + n, o, cnt); }
  void u_last(const V& u) const { store(q.u_last + n, u, cnt); }
  void set_ckpt(int64_t i, const V& u) const {
    if (q.u_ckpt) store(q.u_ckpt + i * N + n, u, cnt);
  }
  void grad_x(int64_t t, const V& dh) const { store(q.grad_x + t * N + n, dh, cnt); }
  void grad_x_static(const V& s) const { store(q.grad_x + n, s, cnt); }
  void grad_u0(const V& du) const {
    if (q.grad_u0) store(q.grad_u0 + n, du, cnt);
  }
};

// tau or v_th for the lanes of the group starting at neuron n: channel (n / I) % C per lane.
template <typename V, typename acc_t>
inline V lane_param(const AlifParams& p, const acc_t* values, bool per_channel, int64_t n) {
  if (!per_channel) return V(values[0]);
  constexpr int L = LaneTraits<V>::size;
  acc_t a[L];
  int64_t c = (n / p.I) % p.C, i = n % p.I;
  for (int l = 0; l < L; ++l) {
    a[l] = values[c];  // lanes past N repeat a valid channel; they are never stored
    if (++i == p.I) {
      i = 0;
      c = c + 1 == p.C ? 0 : c + 1;
    }
  }
  return LaneTraits<V>::from(a);
}

template <typename V, typename scalar_t, typename F>
void for_each_group(const AlifParams& p, const CpuPtrs<scalar_t>& q, F&& body) {
  using acc_t = at::opmath_type<scalar_t>;
  constexpr int L = LaneTraits<V>::size;
  const int64_t groups = (p.N + L - 1) / L;
  const SurrogateScalars<acc_t> sur(p);
  const bool per_channel = p.tau_per_channel || p.vth_per_channel;
  at::parallel_for(0, groups, std::max<int64_t>(1, 2048 / L), [&](int64_t g0, int64_t g1) {
    // Scalar parameters: the constants are the same for every group, built once per task.
    const auto shared = make_consts(V(q.tau[0]), V(q.v_th[0]), sur);
    for (int64_t gi = g0; gi < g1; ++gi) {
      const int64_t n = gi * L;
      const int cnt = static_cast<int>(std::min<int64_t>(L, p.N - n));
      if (per_channel) {
        body(n, cnt, make_consts(lane_param<V>(p, q.tau, p.tau_per_channel, n),
                                 lane_param<V>(p, q.v_th, p.vth_per_channel, n), sur));
      } else {
        body(n, cnt, shared);
      }
    }
  });
}

template <typename V, typename scalar_t, bool kSoft, bool kStatic>
void alif_fwd_cpu_kernel(const AlifParams& p, const CpuPtrs<scalar_t>& q) {
  for_each_group<V>(p, q, [&](int64_t n, int cnt, const NeuronConsts<V>& c) {
    CpuMem<scalar_t, V, kStatic> m{q, p.N, n, cnt, c.zero};
    alif_fwd_neurons<kSoft>(m, c, p.T);
  });
}

template <typename V, typename scalar_t, bool kSoft, bool kDetach, bool kRect, bool kStatic>
void alif_bwd_cpu_kernel(const AlifParams& p, const CpuPtrs<scalar_t>& q) {
  for_each_group<V>(p, q, [&](int64_t n, int cnt, const NeuronConsts<V>& c) {
    CpuMem<scalar_t, V, kStatic> m{q, p.N, n, cnt, c.zero};
    V dtau = c.zero, dvth = c.zero;
    alif_bwd_neurons<kSoft, kDetach, kRect, kStatic>(m, c, p.T, dtau, dvth);
    store(q.dtau_n + n, dtau, cnt);
    store(q.dvth_n + n, dvth, cnt);
  });
}

// Calls f(V{}) with the value type selected for this storage type.
template <typename scalar_t, typename F>
void with_value_type(F&& f) {
  using acc_t = at::opmath_type<scalar_t>;
  const auto kind = static_cast<CpuValueType>(g_value_type.load(std::memory_order_relaxed));
  if constexpr (std::is_same_v<scalar_t, acc_t>) {
    if (kind == CpuValueType::Scalar) return f(acc_t{});
  }
  if constexpr (std::is_same_v<scalar_t, float>) {
    if (kind == CpuValueType::Lanes4) return f(Lanes<float, 4>{});
    if (kind == CpuValueType::Lanes8) return f(Lanes<float, 8>{});
  }
  f(at::vec::Vectorized<acc_t>{});
}

// Sums per-neuron values (B, C, I) over B and I in a fixed order: deterministic whatever the
// number of threads. Accumulates in double.
template <typename acc_t>
at::Tensor sum_per_channel(const AlifParams& p, const acc_t* per_neuron, at::TensorOptions opts) {
  at::Tensor out = at::empty({p.C}, opts);
  acc_t* o = out.data_ptr<acc_t>();
  at::parallel_for(0, p.C, 1, [&](int64_t c0, int64_t c1) {
    for (int64_t c = c0; c < c1; ++c) {
      double s = 0;
      for (int64_t b = 0; b < p.B; ++b) {
        const acc_t* row = per_neuron + (b * p.C + c) * p.I;
        for (int64_t i = 0; i < p.I; ++i) s += row[i];
      }
      o[c] = acc_t(s);
    }
  });
  return out;
}

// The values are read here anyway (converted to the math dtype): checking them costs no sync.
template <typename acc_t>
void check_finite(const char* who, const char* name, const at::Tensor& param, const at::Tensor& values) {
  const acc_t* v = values.data_ptr<acc_t>();
  for (int64_t i = 0; i < values.numel(); ++i) {
    TORCH_CHECK(std::isfinite(v[i]), who, ": ", name, " must be finite, got ", param);
  }
}

// tau and v_th as contiguous tensors of the math dtype, checked finite.
template <typename acc_t>
std::pair<at::Tensor, at::Tensor> math_params(const char* who, const at::Tensor& tau,
                                              const at::Tensor& v_th) {
  const auto acc = c10::CppTypeToScalarType<acc_t>::value;
  at::Tensor tau_c = tau.to(acc).contiguous(), vth_c = v_th.to(acc).contiguous();
  check_finite<acc_t>(who, "tau", tau, tau_c);
  check_finite<acc_t>(who, "v_th", v_th, vth_c);
  return {tau_c, vth_c};
}

template <typename T>
const T* ptr_or_null(const at::Tensor& t) {
  return t.defined() && t.numel() ? t.data_ptr<T>() : nullptr;
}

template <typename T>
T* mut_ptr_or_null(const at::Tensor& t) {
  return t.defined() && t.numel() ? t.data_ptr<T>() : nullptr;
}

#define ALIF_DISPATCH_CPU(type, name, ...) \
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, type, name, __VA_ARGS__)

std::tuple<at::Tensor, at::Tensor, at::Tensor> alif_fwd_cpu(
    const at::Tensor& x, const at::Tensor& tau, const at::Tensor& v_th,
    const std::optional<at::Tensor>& u0, std::optional<int64_t> steps, std::string_view reset,
    bool checkpoint, bool detach_reset, std::string_view surrogate, double width, double alpha) {
  const AlifParams p = make_alif_fwd_params(x, tau, v_th, u0, steps, reset, detach_reset,
                                            surrogate, width, alpha);
  AlifFwdOutputs out = alloc_alif_fwd(x, p, checkpoint);
  const at::Tensor xc = x.contiguous();
  const at::Tensor u0c = u0.has_value() ? u0->contiguous() : at::Tensor();
  ALIF_DISPATCH_CPU(x.scalar_type(), "alif_fwd_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const auto [tau_c, vth_c] = math_params<acc_t>("alif", tau, v_th);
    CpuPtrs<scalar_t> q;
    q.x = xc.data_ptr<scalar_t>();
    q.u0 = ptr_or_null<scalar_t>(u0c);
    q.tau = tau_c.data_ptr<acc_t>();
    q.v_th = vth_c.data_ptr<acc_t>();
    q.u_ckpt = mut_ptr_or_null<acc_t>(out.u_ckpt);
    q.spikes = out.spikes.data_ptr<scalar_t>();
    q.u_last = out.u_last.data_ptr<scalar_t>();
    with_value_type<scalar_t>([&](auto v) {
      bool_switch2(p.soft_reset, p.static_x, [&](auto soft, auto stat) {
        alif_fwd_cpu_kernel<decltype(v), scalar_t, decltype(soft)::value, decltype(stat)::value>(
            p, q);
      });
    });
  });
  return {out.spikes, out.u_last, out.u_ckpt};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> alif_bwd_cpu(
    const std::optional<at::Tensor>& grad_spikes, const std::optional<at::Tensor>& grad_u_last,
    const at::Tensor& x, const std::optional<at::Tensor>& u_ckpt, std::optional<int64_t> steps,
    const at::Tensor& tau, const at::Tensor& v_th, const std::optional<at::Tensor>& u0,
    std::string_view reset, bool detach_reset, std::string_view surrogate, double width,
    double alpha, bool need_grad_u0) {
  const AlifParams p = make_alif_bwd_params(grad_spikes, grad_u_last, x, u_ckpt, steps, tau, v_th,
                                            u0, reset, detach_reset, surrogate, width, alpha);
  const AlifBwdBuffers buf =
      prepare_alif_bwd(p, grad_spikes, grad_u_last, x, u_ckpt, u0, need_grad_u0);
  at::Tensor grad_tau, grad_vth;
  ALIF_DISPATCH_CPU(x.scalar_type(), "alif_bwd_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const auto acc_opts = x.options().dtype(c10::CppTypeToScalarType<acc_t>::value);
    const auto [tau_c, vth_c] = math_params<acc_t>("alif_bwd", tau, v_th);
    at::Tensor dtau_n = at::empty({p.N}, acc_opts), dvth_n = at::empty({p.N}, acc_opts);
    CpuPtrs<scalar_t> q;
    q.x = buf.x.data_ptr<scalar_t>();
    q.u0 = ptr_or_null<scalar_t>(buf.u0);
    q.grad_spikes = ptr_or_null<scalar_t>(buf.grad_spikes);
    q.grad_u_last = ptr_or_null<scalar_t>(buf.grad_u_last);
    q.tau = tau_c.data_ptr<acc_t>();
    q.v_th = vth_c.data_ptr<acc_t>();
    q.u_ckpt = mut_ptr_or_null<acc_t>(buf.u_ckpt);
    q.grad_x = buf.grad_x.data_ptr<scalar_t>();
    q.grad_u0 = mut_ptr_or_null<scalar_t>(buf.grad_u0);
    q.dtau_n = dtau_n.data_ptr<acc_t>();
    q.dvth_n = dvth_n.data_ptr<acc_t>();
    with_value_type<scalar_t>([&](auto v) {
      alif_flag_switch(p, [&](auto soft, auto detach, auto rect, auto stat) {
        alif_bwd_cpu_kernel<decltype(v), scalar_t, decltype(soft)::value, decltype(detach)::value,
                            decltype(rect)::value, decltype(stat)::value>(p, q);
      });
    });
    grad_tau = param_grad(sum_per_channel(p, q.dtau_n, acc_opts), tau);
    grad_vth = param_grad(sum_per_channel(p, q.dvth_n, acc_opts), v_th);
  });
  return {buf.grad_x, grad_tau, grad_vth, buf.grad_u0};
}

// Test hook: selects the CPU kernels' value type (0 Vectorized, the default; 1 the scalar a CUDA
// thread runs; 2 and 3 Lanes<float, 4> and <float, 8>, the CUDA 16-byte paths; the Lanes apply
// to float32 storage, the scalar to float32/float64). Returns the previous one.
int64_t set_cpu_value_type(int64_t kind) {
  TORCH_CHECK(kind >= 0 && kind <= 3,
              "_set_cpu_value_type: kind must be 0 (Vectorized), 1 (scalar), 2 (Lanes<float, 4>) "
              "or 3 (Lanes<float, 8>), got ",
              kind);
  return g_value_type.exchange(kind);
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(alif_cuda, m) {
  m.def("_set_cpu_value_type(int kind) -> int", &set_cpu_value_type);
}

TORCH_LIBRARY_IMPL(alif_cuda, CPU, m) {
  m.impl("alif_fwd", &alif_fwd_cpu);
  m.impl("alif_bwd", &alif_bwd_cpu);
}

}  // namespace alif_cuda
