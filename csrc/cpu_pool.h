// The output allocation of both op families and its CPU pool (defined in cpu_pool.cpp).
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <vector>

namespace alif_cuda {

// An uninitialised output of the op families' kernels (any device; only CPU tensors are
// special). A fresh CPU buffer of a few MB costs a page fault every 4 KiB on first write, which
// on the machines measured takes longer than the kernel's own traffic (docs/design.md). So CPU
// outputs of 2 MiB and more come from a pool: blocks in 2 MiB multiples, aligned and asked for in
// 2 MiB pages (Linux transparent huge pages), and given back to the pool, not to the system, when
// the tensor is freed; the next output of the same rounded size reuses one with its pages already
// mapped. The pool keeps at most ALIF_CUDA_CPU_CACHE_MB MiB of free blocks (read once; default
// 1024; 0 turns the pool off, and outputs are then at::empty, advised to huge pages). The tensors
// are ordinary resizable CPU tensors whatever their allocator.
at::Tensor empty_output(at::IntArrayRef sizes, const at::TensorOptions& options);

// The pool's counters: {free bytes held, free blocks held, outputs served from held blocks,
// blocks allocated from the system, cap in bytes}.
std::vector<int64_t> cpu_cache_stats();

// Gives every free block back to the system (live tensors keep theirs).
void cpu_cache_clear();

}  // namespace alif_cuda
