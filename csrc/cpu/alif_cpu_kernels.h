// The CPU kernels of the alif op family, included by alif_cpu.cpp inside a namespace of their own
// (alif_cpu_isa_impl.h includes them again for another instruction set, in another namespace).
// The per-neuron arithmetic is alif_math.h's. No include guard, on purpose; the includes this
// code needs come first in the including file.
//
// Work is split over groups of neurons, one value V a group (a partial load and store for the
// last, shorter group). The per-neuron dL/dtau and dL/dv_th sums are written per neuron and
// added up afterwards in a fixed order (alif_cpu.cpp), so results do not depend on the threads.

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
    acc_t a[Tr::size];
    if (cnt == Tr::size) {  // a compile-time trip count: one vector load (and convert)
      for (int l = 0; l < Tr::size; ++l) a[l] = acc_t(p[l]);
    } else {
      for (int l = 0; l < Tr::size; ++l) a[l] = l < cnt ? acc_t(p[l]) : acc_t(0);
    }
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
    if (cnt == Tr::size) {
      for (int l = 0; l < Tr::size; ++l) p[l] = scalar_t(a[l]);
    } else {
      for (int l = 0; l < cnt; ++l) p[l] = scalar_t(a[l]);
    }
  }
}

// ---- the backend part: which neurons, loads and stores ---------------------------------------

// The Mem accessor of alif_math.h for the neurons [n, n + cnt) of one group.
template <typename scalar_t, typename V, bool kStatic>
struct CpuMem {
  const AlifPtrs<scalar_t>& q;
  int64_t N, n;
  int cnt;
  V zero;

  V x(int64_t t) const { return load<V>(q.x + (kStatic ? 0 : t * N) + n, cnt); }
  V g(int64_t t) const { return q.grad_spikes ? load<V>(q.grad_spikes + t * N + n, cnt) : zero; }
  V u0() const { return q.u0 ? load<V>(q.u0 + n, cnt) : zero; }
  V grad_u_last() const { return q.grad_u_last ? load<V>(q.grad_u_last + n, cnt) : zero; }
  V ckpt(int64_t i) const { return load<V>(q.u_ckpt + i * N + n, cnt); }
  void spikes(int64_t t, const V& o) const { store(q.spikes + t * N + n, o, cnt); }
  void u_last(const V& u) const {
    if (q.u_last) store(q.u_last + n, u, cnt);
  }
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
void for_each_group(const AlifParams& p, const AlifPtrs<scalar_t>& q, F&& body) {
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

template <typename V, typename scalar_t, bool kSoft, bool kStatic, bool kDecay>
void alif_fwd_cpu_kernel(const AlifParams& p, const AlifPtrs<scalar_t>& q) {
  for_each_group<V>(p, q, [&](int64_t n, int cnt, const NeuronConsts<V>& c) {
    CpuMem<scalar_t, V, kStatic> m{q, p.N, n, cnt, c.zero};
    alif_fwd_neurons<kSoft, kDecay>(m, c, p.T);
  });
}

template <typename V, typename scalar_t, bool kSoft, bool kDetach, Surrogate kSur, bool kStatic,
          bool kDecay>
void alif_bwd_cpu_kernel(const AlifParams& p, const AlifPtrs<scalar_t>& q) {
  if (q.block_sums == nullptr) {  // per-channel parameters: per-neuron sums, reduced afterwards
    for_each_group<V>(p, q, [&](int64_t n, int cnt, const NeuronConsts<V>& c) {
      CpuMem<scalar_t, V, kStatic> m{q, p.N, n, cnt, c.zero};
      V dtau = c.zero, dvth = c.zero;
      alif_bwd_neurons<kSoft, kDetach, kSur, kStatic, kDecay>(m, c, p.T, dtau, dvth);
      store(q.dtau_n + n, dtau, cnt);
      store(q.dvth_n + n, dvth, cnt);
    });
    return;
  }
  // Scalar parameters: each block of kCpuSumBlock neurons adds its neurons' terms in order, in
  // double, straight from the registers (no per-neuron buffer: 2 x 4 bytes a neuron written and
  // read back saved).
  using acc_t = at::opmath_type<scalar_t>;
  using Tr = LaneTraits<V>;
  constexpr int L = Tr::size;
  static_assert(kCpuSumBlock % L == 0, "a block holds whole groups");
  const SurrogateScalars<acc_t> sur(p);
  const int64_t blocks = ceil_div(p.N, kCpuSumBlock);
  at::parallel_for(0, blocks, 1, [&](int64_t b0, int64_t b1) {
    const auto c = make_consts(V(q.tau[0]), V(q.v_th[0]), sur);
    for (int64_t b = b0; b < b1; ++b) {
      double sum_tau = 0, sum_vth = 0;
      const int64_t end = std::min(p.N, (b + 1) * kCpuSumBlock);
      for (int64_t n = b * kCpuSumBlock; n < end; n += L) {
        const int cnt = static_cast<int>(std::min<int64_t>(L, end - n));
        CpuMem<scalar_t, V, kStatic> m{q, p.N, n, cnt, c.zero};
        V dtau = c.zero, dvth = c.zero;
        alif_bwd_neurons<kSoft, kDetach, kSur, kStatic, kDecay>(m, c, p.T, dtau, dvth);
        acc_t a[L], v[L];
        Tr::to(dtau, a);
        Tr::to(dvth, v);
        for (int l = 0; l < cnt; ++l) {
          sum_tau += a[l];
          sum_vth += v[l];
        }
      }
      q.block_sums[b] = sum_tau;
      q.block_sums[blocks + b] = sum_vth;
    }
  });
}

// The kernels for value type V, every template flag, through one pointer each.
template <typename V, typename scalar_t>
void run_alif_fwd(const AlifParams& p, const AlifPtrs<scalar_t>& q) {
  alif_fwd_flag_switch(p, [&](auto soft, auto stat, auto decay) {
    alif_fwd_cpu_kernel<V, scalar_t, decltype(soft)::value, decltype(stat)::value,
                        decltype(decay)::value>(p, q);
  });
}

template <typename V, typename scalar_t>
void run_alif_bwd(const AlifParams& p, const AlifPtrs<scalar_t>& q) {
  alif_flag_switch(p, [&](auto soft, auto detach, auto sur, auto stat, auto decay) {
    alif_bwd_cpu_kernel<V, scalar_t, decltype(soft)::value, decltype(detach)::value,
                        decltype(sur)::value, decltype(stat)::value, decltype(decay)::value>(p, q);
  });
}
