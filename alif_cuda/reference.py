"""Plain PyTorch oracles: explicit time loops whose autograd is the definition the kernels match.

Slow on purpose: every step is a handful of separate PyTorch ops, so the math is easy to read and
the gradients come from autograd, not from hand-derived formulas.
"""
import math
from typing import Optional, Union

import torch
from torch import Tensor

SURROGATES = ("rect", "atan", "sigmoid")
RESETS = ("hard", "soft")
# How tau is given: "direct", tau itself; "sigmoid", logit(tau) (the op applies the sigmoid).
TAU_PARAMS = ("direct", "sigmoid")
# alpha=None means the surrogate's default: SpikingJelly's ATan(alpha=2) and Sigmoid(alpha=4).
DEFAULT_ALPHA = {"rect": 2.0, "atan": 2.0, "sigmoid": 4.0}


def resolve_alpha(surrogate: str, alpha: Optional[float]) -> float:
    """alpha, or the surrogate's default when None (rect ignores it)."""
    if alpha is not None:
        return alpha
    return DEFAULT_ALPHA.get(surrogate, 2.0)


_SYMBOLIC_NUMBERS = (torch.SymInt, torch.SymFloat)


def known_number(value) -> bool:
    """Whether a number's value can be checked in Python: False for a SymInt/SymFloat and for any
    number met while torch.compile traces (Dynamo shows its symbolic numbers as plain ones, so
    they cannot be told apart, and math.isfinite on them is a graph break). The C++ ops check
    width and alpha again when they run."""
    return not (isinstance(value, _SYMBOLIC_NUMBERS) or torch.compiler.is_compiling())


def check_alif_options(
    surrogate: str, width: float, alpha: float, reset: str, tau_param: str = "direct"
) -> None:
    """Raise ValueError for an unknown surrogate/reset/tau_param or a non-positive width/alpha
    (width and alpha when their values are known: see :func:`known_number`)."""
    if tau_param not in TAU_PARAMS:
        raise ValueError(f"alif: tau_param must be one of {TAU_PARAMS}, got {tau_param!r}")
    if surrogate not in SURROGATES:
        raise ValueError(f"alif: surrogate must be one of {SURROGATES}, got {surrogate!r}")
    if reset not in RESETS:
        raise ValueError(f"alif: reset must be one of {RESETS}, got {reset!r}")
    if known_number(width) and not (math.isfinite(width) and width > 0):
        raise ValueError(f"alif: the rect surrogate's width must be > 0, got {width}")
    if known_number(alpha) and not (math.isfinite(alpha) and alpha > 0):
        raise ValueError(f"alif: the atan/sigmoid surrogate's alpha must be > 0, got {alpha}")


class _Spike(torch.autograd.Function):
    """o = H(d), d = h - v_th; backward replaces dH/dd by the surrogate."""

    @staticmethod
    def forward(ctx, d, surrogate, width, alpha):
        ctx.save_for_backward(d)
        ctx.surrogate, ctx.width, ctx.alpha = surrogate, width, alpha
        return (d >= 0).to(d.dtype)

    @staticmethod
    def backward(ctx, grad):
        (d,) = ctx.saved_tensors
        if ctx.surrogate == "rect":
            s = (d.abs() < ctx.width / 2).to(d.dtype) / ctx.width
        elif ctx.surrogate == "atan":
            s = (ctx.alpha / 2) / (1 + (math.pi / 2 * ctx.alpha * d) ** 2)
        else:
            sg = torch.sigmoid(ctx.alpha * d)
            s = (1 - sg) * sg * ctx.alpha
        return grad * s, None, None, None


def _per_channel_view(p: Tensor, step_dims: int) -> Tensor:
    """A () parameter as is; a (C,) one viewed to broadcast over one step (B, C, ...)."""
    if p.dim() == 0:
        return p
    return p.view(p.shape[0], *([1] * (step_dims - 2)))


def alif_ref(
    x: Tensor,
    tau: Union[float, Tensor],
    v_th: Union[float, Tensor],
    u0: Tensor = None,
    *,
    surrogate: str = "rect",
    width: float = 1.0,
    alpha: Optional[float] = None,
    reset: str = "hard",
    detach_reset: bool = False,
    decay_input: bool = False,
    return_state: bool = False,
    tau_param: str = "direct",
):
    """Adaptive LIF over T steps, as an explicit loop.

    x: (T, B, ...); tau, v_th: () or (C,) with C = x.shape[2], or Python floats (as for
    :func:`alif_cuda.alif`: float64 for float64 x, else float32); u0: (B, ...) or None (zeros).
    For t = 0..T-1, with u_{-1} = u0:
        h_t = tau * u_{t-1} + x_t                  (decay_input: + (1 - tau) * x_t)
        o_t = H(h_t - v_th)                        (surrogate gradient in backward)
        u_t = h_t * (1 - o_t)  (hard)   |   u_t = h_t - v_th * o_t  (soft)
    o_t in the reset term is detached when detach_reset. tau_param="sigmoid": the tau given is
    logit(tau), and tau = sigmoid(it). Returns spikes (T, B, ...), and the final state u_{T-1}
    (B, ...) too when return_state.
    """
    alpha = resolve_alpha(surrogate, alpha)
    check_alif_options(surrogate, width, alpha, reset, tau_param)
    param_dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
    tau, v_th = (
        p if isinstance(p, Tensor) else torch.tensor(float(p), dtype=param_dtype, device=x.device)
        for p in (tau, v_th)
    )
    if tau_param == "sigmoid":  # in the math dtype, as the kernels take it
        tau = torch.sigmoid(tau.to(param_dtype))
    step_dims = x.dim() - 1
    tau_b = _per_channel_view(tau, step_dims)
    vth_b = _per_channel_view(v_th, step_dims)
    u = torch.zeros_like(x[0]) if u0 is None else u0
    spikes = []
    for t in range(x.shape[0]):
        h = tau_b * u + ((1 - tau_b) * x[t] if decay_input else x[t])
        o = _Spike.apply(h - vth_b, surrogate, width, alpha)
        o_reset = o.detach() if detach_reset else o
        u = h * (1 - o_reset) if reset == "hard" else h - vth_b * o_reset
        spikes.append(o)
    out = torch.stack(spikes)
    return (out, u) if return_state else out


REDUCES = ("sum", "mean")


def check_taid_options(reduce: str) -> None:
    """Raise ValueError for an unknown reduction."""
    if reduce not in REDUCES:
        raise ValueError(f"taid: reduce must be one of {REDUCES}, got {reduce!r}")


def taid_ref(s: Tensor, w: Tensor, reduce: str = "sum", *, return_attention: bool = False):
    """Temporal attention image decoding, step by step.

    s: (T, B, C, H, W) real-valued decoder output; w: (T, T).
        X[t, b, c] = mean over (h, w) of s[t, b, c]               (squeeze)
        A[t, b, c] = sigmoid(sum_t' w[t, t'] X[t', b, c])          (temporal attention)
        y[b, c]    = sum_t A[t, b, c] * s[t, b, c]  (/ T for reduce="mean")
    Computes in float32 for float16/bfloat16 s (as the kernels do) and returns y (B, C, H, W) in
    s's dtype, and A (T, B, C) in the math dtype too when return_attention.
    """
    check_taid_options(reduce)
    math_dtype = torch.float64 if s.dtype == torch.float64 else torch.float32
    s_m = s.to(math_dtype)
    w_m = w.to(math_dtype)
    T = s.shape[0]
    X = s_m.mean(dim=(3, 4))
    A = torch.stack([torch.sigmoid(sum(w_m[t, k] * X[k] for k in range(T))) for t in range(T)])
    y = sum(A[t, :, :, None, None] * s_m[t] for t in range(T))
    if reduce == "mean":
        y = y / T
    y = y.to(s.dtype)
    return (y, A) if return_attention else y
