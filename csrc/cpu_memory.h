// Memory help for the CPU kernels of both op families (defined in alif_cpu.cpp).
#pragma once

#include <ATen/core/Tensor.h>

namespace alif_cuda {

// Fresh outputs of a few MB would otherwise cost a page fault every 4 KiB on first write, about
// as much time as a kernel's own traffic: their memory is asked for in 2 MiB pages (Linux,
// transparent huge pages in "madvise" or "always" mode; elsewhere, or when refused, nothing
// changes). Only the whole 2 MiB pages inside the tensor are advised; call before first write.
void advise_huge_pages(const at::Tensor& t);

}  // namespace alif_cuda
