// The CPU output pool of cpu_pool.h: large outputs of both op families in reused, huge-page
// blocks, and the ops that report and clear it.
#include <ATen/EmptyTensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <mutex>
#include <unordered_map>
#include <vector>

#if defined(__linux__)
#include <sys/mman.h>
#endif

#include "cpu_pool.h"

namespace alif_cuda {

namespace {

constexpr size_t kHugePage = size_t(1) << 21;

// Asks for the whole 2 MiB pages inside [p, p + n) in huge pages (no effect where unsupported).
void advise_huge_pages(void* p, size_t n) {
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  const auto begin = reinterpret_cast<uintptr_t>(p);
  const uintptr_t first = (begin + kHugePage - 1) & ~(kHugePage - 1);
  const uintptr_t last = (begin + n) & ~(kHugePage - 1);
  if (last > first) madvise(reinterpret_cast<void*>(first), last - first, MADV_HUGEPAGE);
#else
  (void)p;
  (void)n;
#endif
}

int64_t cache_cap_bytes() {
  const char* env = std::getenv("ALIF_CUDA_CPU_CACHE_MB");
  if (env == nullptr || *env == '\0') return int64_t(1024) << 20;
  char* end = nullptr;
  const long long mb = std::strtoll(env, &end, 10);
  TORCH_CHECK(end != env && *end == '\0' && mb >= 0,
              "ALIF_CUDA_CPU_CACHE_MB must be a whole number of MiB >= 0 (0 turns the CPU output "
              "pool off), got '", env, "'");
  return int64_t(mb) << 20;
}

// One block of the pool: it travels as the DataPtr's context while a tensor holds it.
struct PoolBlock {
  void* data;
  size_t size;       // a multiple of 2 MiB
  size_t requested;  // what the tensor asked for (for the profiler)
};

// Free blocks by size (exact 2 MiB multiples), at most cap bytes of them; the rest go back to the
// system. A mutex guards the lists: tensors are freed on whatever thread drops them.
class OutputPool final : public c10::Allocator {
 public:
  explicit OutputPool(int64_t cap) : cap_(cap) {}

  bool enabled() const { return cap_ > 0; }

  c10::DataPtr allocate(size_t n) override {
    const size_t size = (std::max<size_t>(n, 1) + kHugePage - 1) & ~(kHugePage - 1);
    PoolBlock* block = nullptr;
    int64_t live = 0, held = 0;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      auto it = free_.find(size);
      if (it != free_.end() && !it->second.empty()) {
        block = it->second.back();
        it->second.pop_back();
        held_ -= static_cast<int64_t>(size);
        ++reused_;
        live_ += static_cast<int64_t>(n);
        live = live_;
        held = held_;
      }
    }
    if (block == nullptr) {  // a new block, allocated outside the lock
      void* data = std::aligned_alloc(kHugePage, size);
      TORCH_CHECK(data != nullptr, "alif_cuda: out of CPU memory allocating ", size,
                  " bytes for an output (the output pool holds ", stats()[0], " free bytes; ",
                  "alif_cuda.empty_cpu_cache() gives them back)");
      advise_huge_pages(data, size);
      block = new PoolBlock{data, size, 0};
      std::lock_guard<std::mutex> lock(mutex_);
      ++fresh_;
      live_ += static_cast<int64_t>(n);
      live = live_;
      held = held_;
    }
    block->requested = n;
    report(block->data, static_cast<int64_t>(n), live, held);
    return {block->data, block, &OutputPool::release, c10::Device(c10::DeviceType::CPU)};
  }

  void copy_data(void* dest, const void* src, std::size_t count) const override {
    default_copy_data(dest, src, count);
  }

  std::vector<int64_t> stats() {
    std::lock_guard<std::mutex> lock(mutex_);
    int64_t blocks = 0;
    for (const auto& kv : free_) blocks += static_cast<int64_t>(kv.second.size());
    return {held_, blocks, reused_, fresh_, cap_};
  }

  void clear() {
    std::unordered_map<size_t, std::vector<PoolBlock*>> drop;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      drop.swap(free_);
      held_ = 0;
    }
    for (auto& kv : drop) {
      for (PoolBlock* b : kv.second) destroy(b);
    }
  }

  static OutputPool& get() {
    // Never destroyed: tensors freed during interpreter shutdown still find it.
    static OutputPool* pool = new OutputPool(cache_cap_bytes());
    return *pool;
  }

 private:
  static void destroy(PoolBlock* b) {
    std::free(b->data);
    delete b;
  }

  // Tells PyTorch's profiler (profile_memory=True) about an allocation (+) or a free (-), as
  // its own CPU allocator does, so that memory traces and peaks count pooled outputs too; live
  // and held are the pool's counters after the change.
  static void report(void* data, int64_t delta, int64_t live, int64_t held) {
    if (c10::memoryProfilingEnabled()) {
      c10::reportMemoryUsageToProfiler(data, delta, static_cast<size_t>(live),
                                       static_cast<size_t>(live + held),
                                       c10::Device(c10::DeviceType::CPU));
    }
  }

  static void release(void* ctx) {
    auto* b = static_cast<PoolBlock*>(ctx);
    OutputPool& pool = get();
    const auto requested = static_cast<int64_t>(b->requested);
    void* const data = b->data;
    bool kept;
    int64_t live, held;
    {
      std::lock_guard<std::mutex> lock(pool.mutex_);
      pool.live_ -= requested;
      kept = pool.held_ + static_cast<int64_t>(b->size) <= pool.cap_;
      if (kept) {
        pool.free_[b->size].push_back(b);
        pool.held_ += static_cast<int64_t>(b->size);
      }
      live = pool.live_;
      held = pool.held_;
    }
    report(data, -requested, live, held);
    if (!kept) destroy(b);
  }

  const int64_t cap_;
  std::mutex mutex_;
  std::unordered_map<size_t, std::vector<PoolBlock*>> free_;
  int64_t held_ = 0, reused_ = 0, fresh_ = 0, live_ = 0;
};

}  // namespace

at::Tensor empty_output(at::IntArrayRef sizes, const at::TensorOptions& options) {
  if (!options.device().is_cpu()) return at::empty(sizes, options);
  const auto dtype = c10::typeMetaToScalarType(options.dtype());
  int64_t numel = 1;
  for (int64_t s : sizes) numel *= s;
  const size_t nbytes = static_cast<size_t>(numel) * c10::elementSize(dtype);
  if (nbytes < kHugePage) return at::empty(sizes, options);
  OutputPool& pool = OutputPool::get();
  if (!pool.enabled()) {
    at::Tensor t = at::empty(sizes, options);
    advise_huge_pages(t.data_ptr(), nbytes);
    return t;
  }
  return at::detail::empty_generic(sizes, &pool, c10::DispatchKeySet(c10::DispatchKey::CPU), dtype,
                                   std::nullopt);
}

std::vector<int64_t> cpu_cache_stats() { return OutputPool::get().stats(); }

void cpu_cache_clear() { OutputPool::get().clear(); }

TORCH_LIBRARY_FRAGMENT(alif_cuda, m) {
  // alif_cuda.cpu_cache_stats() / empty_cpu_cache().
  m.def("_cpu_cache_stats() -> int[]", &cpu_cache_stats);
  m.def("_cpu_cache_clear() -> ()", &cpu_cache_clear);
}

}  // namespace alif_cuda
