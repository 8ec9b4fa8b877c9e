"""The public ops: fake kernels and autograd for torch.ops.alif_cuda.*, and the Python entry points.

The C++ schemas live in csrc/ops.cpp; this file only registers what Python must provide (shape
propagation for torch.compile, autograd) and turns friendly arguments into op arguments.
"""
from typing import Optional, Tuple, Union

import torch
from torch import Tensor

from .reference import check_alif_options, check_taid_options

REBUILD_COMMAND = (
    "FORCE_CUDA=1 CUDA_HOME=/usr/local/cuda pip install --no-build-isolation --force-reinstall ."
)


def cuda_kernels_available() -> bool:
    """True when this build of alif_cuda._C contains the CUDA kernels."""
    return torch._C._dispatch_has_kernel_for_dispatch_key("alif_cuda::alif_fwd", "CUDA")


def _check_device(x: Tensor) -> None:
    if x.is_cuda and not cuda_kernels_available():
        raise RuntimeError(
            "alif_cuda was built without CUDA kernels, so it cannot run on CUDA tensors. "
            f"Rebuild it from the source checkout with: {REBUILD_COMMAND}"
        )


def _state_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


@torch.library.register_fake("alif_cuda::alif_fwd")
def _alif_fwd_fake(x, tau, v_th, u0, steps, reset, save_h, detach_reset, surrogate, width, alpha):
    step_shape = tuple(x.shape) if steps is not None else tuple(x.shape[1:])
    T = steps if steps is not None else x.shape[0]
    spikes = x.new_empty((T, *step_shape))
    u_last = x.new_empty(step_shape)
    h_shape = (T, *step_shape) if save_h and steps is None else (0,)
    h = x.new_empty(h_shape, dtype=_state_dtype(x.dtype))
    return spikes, u_last, h


@torch.library.register_fake("alif_cuda::alif_bwd")
def _alif_bwd_fake(
    grad_spikes, grad_u_last, h, x_static, tau, v_th, u0, reset, detach_reset, surrogate, width,
    alpha, need_grad_u0,
):
    grad_x = grad_spikes.new_empty(x_static.shape if x_static is not None else grad_spikes.shape)
    grad_u0 = grad_spikes.new_empty(u0.shape if need_grad_u0 and u0 is not None else (0,))
    return grad_x, tau.new_empty(tau.shape), v_th.new_empty(v_th.shape), grad_u0


def _alif_setup_context(ctx, inputs, output):
    x, tau, v_th, u0, steps, reset, save_h, detach_reset, surrogate, width, alpha = inputs
    _, _, h = output
    # A time-major x saves h (x itself is not kept); a static x is kept instead and the backward
    # recomputes h from it, so nothing of size T * N is saved.
    ctx.save_for_backward(h if steps is None else x, tau, v_th, u0)
    ctx.static = steps is not None
    ctx.options = (reset, detach_reset, surrogate, width, alpha)


def _alif_backward(ctx, grad_spikes, grad_u_last, _grad_h):
    # Outputs that got no gradient arrive as zeros (autograd materialises them).
    saved, tau, v_th, u0 = ctx.saved_tensors
    reset, detach_reset, surrogate, width, alpha = ctx.options
    need_grad_u0 = u0 is not None and ctx.needs_input_grad[3]
    grad_x, grad_tau, grad_vth, grad_u0 = torch.ops.alif_cuda.alif_bwd(
        grad_spikes.contiguous(),
        None if grad_u_last is None else grad_u_last.contiguous(),
        None if ctx.static else saved,
        saved if ctx.static else None,
        tau, v_th, u0, reset, detach_reset, surrogate, width, alpha, need_grad_u0,
    )
    return (
        grad_x,
        grad_tau,
        grad_vth,
        grad_u0 if need_grad_u0 else None,
        None, None, None, None, None, None, None,
    )


torch.library.register_autograd(
    "alif_cuda::alif_fwd", _alif_backward, setup_context=_alif_setup_context
)


def _refuse_double_backward(op_name: str):
    """An autograd formula for a backward op that says double backward is unsupported (without
    one, autograd would silently treat the op's outputs as constants and return zeros)."""

    def backward(ctx, *grads):
        raise RuntimeError(
            f"alif_cuda: double backward through {op_name} (e.g. autograd.grad with "
            "create_graph=True, then differentiating the result) is not supported"
        )

    return backward


def _no_context(ctx, inputs, output):
    pass


for _op in ("alif_bwd", "taid_bwd"):
    torch.library.register_autograd(
        f"alif_cuda::{_op}", _refuse_double_backward(_op), setup_context=_no_context
    )


def _as_param(value: Union[float, Tensor], x: Tensor) -> Tensor:
    if isinstance(value, Tensor):
        return value
    return torch.tensor(float(value), dtype=_state_dtype(x.dtype), device=x.device)


def _static_source(x: Tensor) -> Optional[Tensor]:
    """The (B, ...) tensor behind an x expanded over time (stride 0 along dim 0), or None.

    Its gradient must be the sum over time, computed by the kernel, without PyTorch building a
    (T, B, ...) gradient for the expanded view. In eager mode we take the tensor x was expanded
    from (x._base, when its geometry is exactly one step of x) so autograd skips the expand node.
    Otherwise we select step 0 through autograd: the select/expand backward then adds up to the
    same gradient (under torch.compile, Inductor fuses it). An expanded leaf is T separate inputs
    to autograd, each owed its own gradient, so it runs as an ordinary time-major x.
    """
    if x.dim() < 2 or x.shape[0] < 2 or x.stride(0) != 0:
        return None
    if not x.requires_grad:
        return x[0]
    if x.is_leaf:
        return None
    if not torch.compiler.is_compiling():
        base = x._base
        if (
            base is not None
            and base.shape == x.shape[1:]
            and base.stride() == x.stride()[1:]
            and base.storage_offset() == x.storage_offset()
        ):
            return base
    return x[0]


def alif(
    x: Tensor,
    tau: Union[float, Tensor],
    v_th: Union[float, Tensor],
    u0: Optional[Tensor] = None,
    *,
    surrogate: str = "rect",
    width: float = 1.0,
    alpha: float = 2.0,
    reset: str = "hard",
    detach_reset: bool = False,
    return_state: bool = False,
) -> Union[Tensor, Tuple[Tensor, Tensor]]:
    """Adaptive leaky integrate-and-fire neurons over T time steps, fused in one kernel.

    x: (T, B, ...) input current, float32/float64 on CPU, float32/float16/bfloat16/float64 on CUDA.
       An x expanded over time from a (B, ...) tensor (stride 0 along dim 0, e.g.
       ``y.unsqueeze(0).expand(T, *y.shape)``) is read once and its gradient is the sum over time,
       without materialising T copies.
    tau, v_th: () or (C,) with C = x.shape[2] (per channel), or Python floats.
    u0: (B, ...) initial state in x's dtype, or None for zeros.

    For t = 0..T-1, with u_{-1} = u0:
        h_t = tau * u_{t-1} + x_t;  o_t = H(h_t - v_th)
        u_t = h_t * (1 - o_t) (reset="hard")  |  h_t - v_th * o_t (reset="soft")
    The backward is exact BPTT with dH/dh replaced by the surrogate: "rect",
    (1/width) * 1(|h - v_th| < width/2), or "atan", (alpha/2) / (1 + (pi/2 * alpha * (h - v_th))^2);
    detach_reset drops the gradient through o_t in the reset.

    Saved for backward: h in float32 (float64 for float64 x), nothing else of size T * N; for a
    static x, only x. Returns spikes (T, B, ...) in x's dtype, plus the final state u_{T-1}
    (B, ...) when return_state (differentiable, for chunked or stateful use).
    The oracle is :func:`alif_cuda.reference.alif_ref`.
    """
    check_alif_options(surrogate, width, alpha, reset)
    if not isinstance(x, Tensor):
        raise TypeError(f"alif: x must be a Tensor, got {type(x).__name__}")
    _check_device(x)
    tau = _as_param(tau, x)
    v_th = _as_param(v_th, x)
    static = _static_source(x)
    steps = x.shape[0] if static is not None else None
    x_op = static if static is not None else x
    needs_grad = any(
        t is not None and t.requires_grad for t in (x_op, tau, v_th, u0)
    )
    save_h = torch.is_grad_enabled() and needs_grad
    spikes, u_last, _ = torch.ops.alif_cuda.alif_fwd(
        x_op, tau, v_th, u0, steps, reset, save_h, detach_reset, surrogate, float(width),
        float(alpha),
    )
    return (spikes, u_last) if return_state else spikes


@torch.library.register_fake("alif_cuda::taid_fwd")
def _taid_fwd_fake(s, w, reduce):
    stat_dtype = _state_dtype(s.dtype)
    return s.new_empty(s.shape[1:]), s.new_empty(s.shape[:3], dtype=stat_dtype), s.new_empty(
        s.shape[:3], dtype=stat_dtype
    )


@torch.library.register_fake("alif_cuda::taid_bwd")
def _taid_bwd_fake(grad_y, s, w, attn, squeezed, reduce):
    return s.new_empty(s.shape), w.new_empty(w.shape)


def _taid_setup_context(ctx, inputs, output):
    s, w, reduce = inputs
    _, attn, squeezed = output
    ctx.save_for_backward(s, w, attn, squeezed)
    ctx.reduce = reduce


def _taid_backward(ctx, grad_y, _grad_attn, _grad_squeezed):
    s, w, attn, squeezed = ctx.saved_tensors
    grad_s, grad_w = torch.ops.alif_cuda.taid_bwd(
        grad_y.contiguous(), s, w, attn, squeezed, ctx.reduce
    )
    return grad_s, grad_w, None


torch.library.register_autograd(
    "alif_cuda::taid_fwd", _taid_backward, setup_context=_taid_setup_context
)


def taid(
    s: Tensor, w: Tensor, reduce: str = "sum", *, return_attention: bool = False
) -> Union[Tensor, Tuple[Tensor, Tensor]]:
    """Temporal attention image decoding (TAID), forward and backward each one fused kernel.

    s: (T, B, C, H, W) real-valued decoder output (float32/float64 on CPU, also float16/bfloat16
       on CUDA); w: (T, T) attention weights (any float dtype; used in the math dtype).
        X[t, b, c] = mean over (h, w) of s[t, b, c]               (squeeze)
        A[t, b, c] = sigmoid(sum_t' w[t, t'] X[t', b, c])          (temporal attention)
        y[b, c]    = sum_t A[t, b, c] * s[t, b, c]  (/ T for reduce="mean")
    reduce="sum" follows the paper's official code, "mean" its text. The image is tanh(y).

    Saved for backward: s, w and the small (T, B, C) tensors X and A. Returns y (B, C, H, W) in
    s's dtype, and A (T, B, C, float32; float64 for float64 s; not differentiable) too when
    return_attention. The oracle is :func:`alif_cuda.reference.taid_ref`.
    """
    check_taid_options(reduce)
    for name, t in (("s", s), ("w", w)):
        if not isinstance(t, Tensor):
            raise TypeError(f"taid: {name} must be a Tensor, got {type(t).__name__}")
    _check_device(s)
    y, attn, _ = torch.ops.alif_cuda.taid_fwd(s, w, reduce)
    return (y, attn.detach()) if return_attention else y
