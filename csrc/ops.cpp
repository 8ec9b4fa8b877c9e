// The op schemas of the alif_cuda library, and the module init that makes the shared library
// importable as alif_cuda._C. The host side of each op is in alif_host.cpp / taid_host.cpp, the
// kernels under cpu/ and cuda/, the C++ autograd in autograd.cpp, the fake kernels in
// alif_cuda/ops.py.
#include <Python.h>
#include <torch/library.h>

namespace alif_cuda {

TORCH_LIBRARY(alif_cuda, m) {
  // The public ops, differentiable (autograd in autograd.cpp): what alif_cuda.alif / .taid call.
  // alif: spikes (T, B, ...) and the final state u_{T-1} (B, ...), both in x's dtype; x is
  // (T, B, ...), or (B, ...) repeated over `steps` steps when steps is given (static input).
  m.def(
      "alif(Tensor x, Tensor tau, Tensor v_th, Tensor? u0, int? steps, str reset, "
      "bool detach_reset, str surrogate, float width, float alpha, bool decay_input=False, "
      "bool need_state=True, bool tau_logit=False) -> (Tensor, Tensor)");
  // taid: y (B, C, H, W) in s's dtype and the attention A (T, B, C, math dtype, not
  // differentiable).
  m.def("taid(Tensor s, Tensor w, str reduce) -> (Tensor, Tensor)");

  // need_state=False: nobody wants u_last, which is then an empty (0,) tensor and not written
  // (4 / T bytes per neuron-step saved); alif() passes return_state. tau_logit=True: tau holds
  // logit(tau) and the kernels use sigmoid(tau) (ALIF's default tau_param="sigmoid" without two
  // elementwise ops and their launches around the op); the gradient is then dL/dlogit.
  //
  // The kernels. alif_fwd returns spikes, u_last (empty unless need_state) and, when checkpoint is true, x is time-major
  // and T > kChunk (8), u_ckpt ((T - 1) // 8, B, ...) in float32 (float64 for float64 x): the
  // state after steps 8, 16, ..., which the backward starts its replayed chunks from; otherwise
  // an empty tensor. The backward-only options (detach_reset, surrogate, width, alpha) are
  // validated here so a bad option fails at the forward.
  m.def(
      "alif_fwd(Tensor x, Tensor tau, Tensor v_th, Tensor? u0, int? steps, str reset, "
      "bool checkpoint, bool detach_reset, str surrogate, float width, float alpha, "
      "bool decay_input=False, bool need_state=True, bool tau_logit=False) "
      "-> (Tensor, Tensor, Tensor)");
  // BPTT of alif_fwd from x itself: each chunk of steps is replayed from x, then walked back.
  // Absent grad_spikes / grad_u_last are zero. Returns dL/dx (x's shape: (B, ...) summed over
  // time for a static x), dL/dtau, dL/dv_th (their shapes and dtypes) and dL/du0 (empty unless
  // need_grad_u0).
  m.def(
      "alif_bwd(Tensor? grad_spikes, Tensor? grad_u_last, Tensor x, Tensor? u_ckpt, int? steps, "
      "Tensor tau, Tensor v_th, Tensor? u0, str reset, bool detach_reset, str surrogate, "
      "float width, float alpha, bool need_grad_u0, bool decay_input=False, "
      "bool tau_logit=False) -> (Tensor, Tensor, Tensor, Tensor)");
  // s: (T, B, C, H, W), w: (T, T), reduce "sum" or "mean". Returns the decoded y (B, C, H, W) in
  // s's dtype, and the attention A and squeezed means X (T, B, C) in float32 (float64 for float64
  // s), which the backward reuses.
  m.def("taid_fwd(Tensor s, Tensor w, str reduce) -> (Tensor, Tensor, Tensor)");
  // Gradient of taid_fwd: returns dL/ds (s's shape and dtype) and dL/dw (w's dtype).
  m.def(
      "taid_bwd(Tensor grad_y, Tensor s, Tensor w, Tensor attn, Tensor squeezed, str reduce) "
      "-> (Tensor, Tensor)");
}

}  // namespace alif_cuda

// The shared library is imported as the Python module alif_cuda._C; loading it runs the
// registrations (these schemas, and every backend's TORCH_LIBRARY_IMPL). It defines no Python
// functions of its own.
extern "C" PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module_def);
}
