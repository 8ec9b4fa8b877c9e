"""The public ops' Python face: fake kernels for torch.ops.alif_cuda.* and the entry points.

The C++ schemas and the autograd (registered for the Autograd key, double backward refused)
live in csrc/ops.cpp; this file registers what Python must provide (shape propagation for
torch.compile, with the ops' device checks) and turns friendly arguments into op arguments.
"""
import math
from typing import Optional, Tuple, Union

import torch
from torch import Tensor

from .reference import check_alif_options, check_taid_options, known_number, resolve_alpha

REBUILD_COMMAND = (
    "FORCE_CUDA=1 CUDA_HOME=/usr/local/cuda pip install --no-build-isolation --force-reinstall ."
)


_CUDA_KERNELS = None

# Steps the backward replays at once; the forward checkpoints u every CHUNK steps for T > CHUNK.
# Mirrors kChunk in csrc/alif_math.h (the fake kernel must give the real output's shape).
CHUNK = 8


def cuda_kernels_available() -> bool:
    """True when this build of alif_cuda._C contains the CUDA kernels (asked once: a build does not
    change while it is loaded)."""
    global _CUDA_KERNELS
    if _CUDA_KERNELS is None:
        _CUDA_KERNELS = torch._C._dispatch_has_kernel_for_dispatch_key("alif_cuda::alif_fwd", "CUDA")
    return _CUDA_KERNELS


def cpu_cache_stats() -> dict:
    """The CPU output pool's counters. CPU outputs of 2 MiB and more (spikes, gradients, TAID
    images) come from a pool of reused buffers: a fresh buffer costs a page fault every 4 KiB on
    first write, often more time than the kernel itself. A freed output goes back to the pool,
    which holds at most ALIF_CUDA_CPU_CACHE_MB MiB of free blocks (read once, at the first CPU
    call; default 1024, 0 turns the pool off). Keys: held_bytes and held_blocks (free, kept for
    reuse), reused (outputs served from held blocks), allocated (blocks taken from the system),
    cap_bytes."""
    held, blocks, reused, fresh, cap = torch.ops.alif_cuda._cpu_cache_stats()
    return dict(held_bytes=held, held_blocks=blocks, reused=reused, allocated=fresh, cap_bytes=cap)


def empty_cpu_cache() -> None:
    """Gives the CPU output pool's free blocks back to the system (like torch.cuda.empty_cache;
    tensors still alive keep their memory)."""
    torch.ops.alif_cuda._cpu_cache_clear()


def _refuse_functorch_autodiff(who: str) -> None:
    """torch.func.grad / vjp / jacrev / jvp cannot run the ops' C++ autograd: say what works.
    (Called outside torch.compile only.)"""
    if torch._C._functorch.peek_interpreter_stack() is None:
        return
    from torch._functorch.pyfunctorch import retrieve_all_functorch_interpreters

    kinds = {i.key() for i in retrieve_all_functorch_interpreters()}
    if kinds & {torch._C._functorch.TransformType.Grad, torch._C._functorch.TransformType.Jvp}:
        raise RuntimeError(
            f"alif_cuda.{who}: torch.func's grad/vjp/jacrev/jvp transforms cannot differentiate "
            f"this op (its autograd is written in C++). Use torch.autograd.grad (or .backward()) "
            f"instead, or alif_cuda.{who}_ref under torch.func; torch.func.vmap alone works."
        )


def _check_device(x: Tensor) -> None:
    if x.is_cuda and not cuda_kernels_available():
        raise RuntimeError(
            "alif_cuda was built without CUDA kernels, so it cannot run on CUDA tensors. "
            f"Rebuild it from the source checkout with: {REBUILD_COMMAND}"
        )


def _state_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _check_devices(who: str, ref_name: str, ref: Tensor, **others) -> None:
    """The fake kernels' device check, as the C++ ops do it: every tensor on ref's device."""
    for name, t in others.items():
        if t is not None and t.device != ref.device:
            raise RuntimeError(
                f"{who}: {name} must be on {ref_name}'s device ({ref.device}), got {t.device}"
            )


def _alif_step_shape(x, steps):
    return (tuple(x.shape) if steps is not None else tuple(x.shape[1:])), (
        steps if steps is not None else x.shape[0]
    )


@torch.library.register_fake("alif_cuda::alif")
def _alif_fake(x, tau, v_th, u0, steps, reset, detach_reset, surrogate, width, alpha, decay_input=False,
               need_state=True, tau_logit=False):
    _check_devices("alif", "x", x, tau=tau, v_th=v_th, u0=u0)
    step_shape, T = _alif_step_shape(x, steps)
    return x.new_empty((T, *step_shape)), x.new_empty(step_shape if need_state else (0,))


@torch.library.register_fake("alif_cuda::alif_fwd")
def _alif_fwd_fake(
    x, tau, v_th, u0, steps, reset, checkpoint, detach_reset, surrogate, width, alpha, decay_input=False,
    need_state=True, tau_logit=False,
):
    """Spikes, u_last (an empty (0,) tensor unless need_state) and the checkpoints in the math
    dtype, an empty (0,) tensor when there are none."""
    _check_devices("alif", "x", x, tau=tau, v_th=v_th, u0=u0)
    step_shape, T = _alif_step_shape(x, steps)
    n_ckpt = (T - 1) // CHUNK if checkpoint and steps is None else 0
    return (
        x.new_empty((T, *step_shape)),
        x.new_empty(step_shape if need_state else (0,)),
        x.new_empty((n_ckpt, *step_shape) if n_ckpt > 0 else (0,), dtype=_state_dtype(x.dtype)),
    )


@torch.library.register_fake("alif_cuda::alif_bwd")
def _alif_bwd_fake(
    grad_spikes, grad_u_last, x, u_ckpt, steps, tau, v_th, u0, reset, detach_reset, surrogate,
    width, alpha, need_grad_u0, decay_input=False, tau_logit=False,
):
    _check_devices(
        "alif_bwd", "x", x, grad_spikes=grad_spikes, grad_u_last=grad_u_last, u_ckpt=u_ckpt,
        tau=tau, v_th=v_th, u0=u0,
    )
    grad_u0 = x.new_empty(u0.shape if need_grad_u0 and u0 is not None else (0,))
    return x.new_empty(x.shape), tau.new_empty(tau.shape), v_th.new_empty(v_th.shape), grad_u0


# Python floats become tensors once per (value, dtype, device): torch.tensor(v, device="cuda")
# would copy from pageable host memory and synchronise on every call. A cached tensor is never
# evicted: a CUDA graph captured with it reads its memory at every replay. Only a plain eager call
# adds to the cache: a tensor made under torch.inference_mode() (autograd cannot save it for
# backward), under any dispatch mode (fake, proxy, functional or a user's: it may not be a real
# tensor), while torch.compile traces, while a CUDA stream is captured (its fill runs only when the
# graph does) or past the cap is fresh and not kept. Inference mode and a user's dispatch mode are
# handed cached tensors (real, normal ones); a fake, proxy or functional mode and torch.compile
# never are (they make their own, in their graph).
_PARAM_CACHE = {}
_PARAM_CACHE_MAX = 256


# The dispatch modes that trace (their tensors are not real ones): fake, proxy, functional.
_TRACING_MODE_KEYS = tuple(torch._C._TorchDispatchModeKey.__members__.values())


def _tracing_mode_active() -> bool:
    return any(torch._C._get_dispatch_mode(key) is not None for key in _TRACING_MODE_KEYS)


def _as_param(name: str, value: Union[float, Tensor], x: Tensor, compiling: bool) -> Tensor:
    if isinstance(value, Tensor):
        return value
    dtype = _state_dtype(x.dtype)
    if compiling or not known_number(value):
        # Part of the traced graph, and a symbolic float has no value to check here. Added to a
        # zero, not given to torch.full: Dynamo turns a float input into a graph tensor only where
        # it meets tensor arithmetic, and specialises it (a recompile per value) in a factory.
        return torch.zeros((), dtype=dtype, device=x.device) + value
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"alif: {name} must be finite, got {value}")
    in_mode = torch._C._len_torch_dispatch_stack() > 0
    if in_mode and _tracing_mode_active():
        return torch.full((), value, dtype=dtype, device=x.device)
    key = (value, dtype, x.device)
    t = _PARAM_CACHE.get(key)
    if t is None:
        t = torch.full((), value, dtype=dtype, device=x.device)
        plain = not in_mode and not torch.is_inference_mode_enabled()
        capturing = x.is_cuda and torch.cuda.is_current_stream_capturing()
        if plain and not capturing and len(_PARAM_CACHE) < _PARAM_CACHE_MAX:
            _PARAM_CACHE[key] = t
    return t


def _static_source(x: Tensor, compiling: bool) -> Optional[Tensor]:
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
    if not compiling:
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
    alpha: Optional[float] = None,
    reset: str = "hard",
    detach_reset: bool = False,
    decay_input: bool = False,
    return_state: bool = False,
    tau_param: str = "direct",
) -> Union[Tensor, Tuple[Tensor, Tensor]]:
    """Adaptive leaky integrate-and-fire neurons over T time steps, fused in one kernel.

    x: (T, B, ...) input current, float32/float64/float16/bfloat16 (the last two computed in
       float32, on the CPU too, so CPU autocast works).
       An x expanded over time from a (B, ...) tensor (stride 0 along dim 0, e.g.
       ``y.unsqueeze(0).expand(T, *y.shape)``) is read once and its gradient is the sum over time,
       without materialising T copies.
    tau, v_th: () or (C,) with C = x.shape[2] (per channel), or Python floats.
       tau_param="sigmoid": tau holds logit(tau); the kernels take sigmoid(tau) as they load it,
       in the math dtype (float32; float64 for float64 x), and return dL/dlogit (ALIF's default
       parameterisation, with no elementwise ops around the op). That tau can differ from
       torch.sigmoid's in the last bit (another exp), so spikes equal alif_ref's bit for bit up
       to that.
    u0: (B, ...) initial state in x's dtype, or None for zeros.

    For t = 0..T-1, with u_{-1} = u0:
        h_t = tau * u_{t-1} + x_t   (decay_input: tau * u_{t-1} + (1 - tau) * x_t);
        o_t = H(h_t - v_th)
        u_t = h_t * (1 - o_t) (reset="hard")  |  h_t - v_th * o_t (reset="soft")
    The backward is exact BPTT with dH/dh replaced by the surrogate, with d = h - v_th: "rect",
    (1/width) * 1(|d| < width/2); "atan", (alpha/2) / (1 + (pi/2 * alpha * d)^2); "sigmoid",
    alpha * sg * (1 - sg) with sg = sigmoid(alpha * d) (SpikingJelly's surrogate.Sigmoid).
    alpha=None is the surrogate's default: 2 for atan, 4 for sigmoid (SpikingJelly's).
    detach_reset drops the gradient through o_t in the reset. decay_input=True is SpikingJelly's
    LIF/PLIF charge with v_reset=0: tau = 1 - 1/tau_sj, or sigmoid(-w) for ParametricLIFNode.

    Saved for backward: x itself (not a copy) and per-neuron tensors (u0; for T > 8 the state
    every 8 steps, (T - 1) // 8 of them): the backward replays the forward from x. Returns spikes
    (T, B, ...) in x's dtype, plus the final state u_{T-1} (B, ...) when return_state
    (differentiable, for chunked or stateful use; without return_state it is not even written).
    Gradients of an unused output are not materialised. The oracle is
    :func:`alif_cuda.reference.alif_ref`.
    """
    alpha = resolve_alpha(surrogate, alpha)
    check_alif_options(surrogate, width, alpha, reset, tau_param)
    if not isinstance(x, Tensor):
        raise TypeError(f"alif: x must be a Tensor, got {type(x).__name__}")
    _check_device(x)
    compiling = torch.compiler.is_compiling()
    if not compiling:
        _refuse_functorch_autodiff("alif")
    tau = _as_param("tau", tau, x, compiling)
    v_th = _as_param("v_th", v_th, x, compiling)
    static = _static_source(x, compiling)
    steps = x.shape[0] if static is not None else None
    spikes, u_last = torch.ops.alif_cuda.alif(
        static if static is not None else x, tau, v_th, u0, steps, reset, detach_reset, surrogate,
        float(width), float(alpha), bool(decay_input), bool(return_state), tau_param == "sigmoid",
    )
    return (spikes, u_last) if return_state else spikes


@torch.library.register_fake("alif_cuda::taid_fwd")
def _taid_fwd_fake(s, w, reduce):
    _check_devices("taid", "s", s, w=w)
    stat_dtype = _state_dtype(s.dtype)
    return s.new_empty(s.shape[1:]), s.new_empty(s.shape[:3], dtype=stat_dtype), s.new_empty(
        s.shape[:3], dtype=stat_dtype
    )


@torch.library.register_fake("alif_cuda::taid_bwd")
def _taid_bwd_fake(grad_y, s, w, attn, squeezed, reduce):
    _check_devices("taid_bwd", "s", s, grad_y=grad_y, w=w, attn=attn, squeezed=squeezed)
    return s.new_empty(s.shape), w.new_empty(w.shape)


@torch.library.register_fake("alif_cuda::taid")
def _taid_fake(s, w, reduce):
    _check_devices("taid", "s", s, w=w)
    return s.new_empty(s.shape[1:]), s.new_empty(s.shape[:3], dtype=_state_dtype(s.dtype))


def taid(
    s: Tensor, w: Tensor, reduce: str = "sum", *, return_attention: bool = False
) -> Union[Tensor, Tuple[Tensor, Tensor]]:
    """Temporal attention image decoding (TAID), forward and backward each one fused kernel.

    s: (T, B, C, H, W) real-valued decoder output (float32/float64/float16/bfloat16, the last
       two computed in float32); w: (T, T) attention weights (any float dtype; used in the math dtype).
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
    if not torch.compiler.is_compiling():
        _refuse_functorch_autodiff("taid")
    y, attn = torch.ops.alif_cuda.taid(s, w, reduce)
    return (y, attn) if return_attention else y
