// The taid ops on CUDA, host side: check the arguments, allocate, launch on the current stream
// under a device guard. The kernels and their launch plans are taid_launch_cuda.cu's; this file is
// plain C++, so it compiles without nvcc.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "cuda/taid_cuda.h"
#include "taid_host.h"

namespace alif_cuda {
namespace {

std::tuple<at::Tensor, at::Tensor, at::Tensor> taid_fwd_cuda(const at::Tensor& s,
                                                             const at::Tensor& w,
                                                             std::string_view reduce) {
  const TaidParams p = make_taid_fwd_params(s, w, reduce);
  const c10::cuda::OptionalCUDAGuard guard(s.device());
  TaidFwdOutputs out = alloc_taid_fwd(s);
  if (p.planes == 0) return {out.y, out.attn, out.squeezed};
  const at::Tensor sc = s.contiguous();
  const auto stream = c10::cuda::getCurrentCUDAStream();
  const int device = s.get_device();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, s.scalar_type(), "taid_fwd_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const at::Tensor wc = w.to(c10::CppTypeToScalarType<acc_t>::value).contiguous();
    launch_taid_fwd<scalar_t>(p, device, stream, sc.const_data_ptr<scalar_t>(),
                              wc.const_data_ptr<acc_t>(), out.y.mutable_data_ptr<scalar_t>(),
                              out.attn.mutable_data_ptr<acc_t>(),
                              out.squeezed.mutable_data_ptr<acc_t>());
  });
  return {out.y, out.attn, out.squeezed};
}

std::tuple<at::Tensor, at::Tensor> taid_bwd_cuda(const at::Tensor& grad_y, const at::Tensor& s,
                                                 const at::Tensor& w, const at::Tensor& attn,
                                                 const at::Tensor& squeezed,
                                                 std::string_view reduce) {
  const TaidParams p = make_taid_bwd_params(grad_y, s, w, attn, squeezed, reduce);
  const c10::cuda::OptionalCUDAGuard guard(s.device());
  const TaidBwdBuffers b = prepare_taid_bwd(p, grad_y, s, w, attn, squeezed);
  const auto stream = c10::cuda::getCurrentCUDAStream();
  const int device = s.get_device();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, s.scalar_type(), "taid_bwd_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    launch_taid_bwd<scalar_t>(p, device, stream, b.grad_y.const_data_ptr<scalar_t>(),
                              b.s.const_data_ptr<scalar_t>(), b.w.const_data_ptr<acc_t>(),
                              b.attn.const_data_ptr<acc_t>(), b.squeezed.const_data_ptr<acc_t>(),
                              b.grad_s.mutable_data_ptr<scalar_t>(),
                              b.dZ.mutable_data_ptr<acc_t>(), b.dw.mutable_data_ptr<acc_t>());
  });
  return {b.grad_s, b.dw.to(w.scalar_type())};
}

}  // namespace

TORCH_LIBRARY_IMPL(alif_cuda, CUDA, m) {
  m.impl("taid_fwd", &taid_fwd_cuda);
  m.impl("taid_bwd", &taid_bwd_cuda);
}

}  // namespace alif_cuda
