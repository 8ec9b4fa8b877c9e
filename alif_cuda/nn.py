"""Drop-in spiking modules built on the fused ops. Time-first: inputs are (T, B, ...)."""
import math
from typing import Optional

import torch
from torch import Tensor, nn

from .ops import alif
from .reference import check_alif_options

TAU_PARAMS = ("sigmoid", "direct")


class ALIF(nn.Module):
    """Adaptive LIF neurons whose decay ``tau`` and threshold ``v_th`` can be learned.

    Forward: x (T, B, ...) -> spikes (T, B, ...), by :func:`alif_cuda.alif`. A static input
    expanded over time (``y.unsqueeze(0).expand(T, *y.shape)``) is read once.

    Args:
        tau: initial decay, 0 < tau < 1 when ``tau_param="sigmoid"``.
        v_th: initial threshold.
        learnable: tau and v_th are Parameters (True) or fixed buffers (False).
        per_channel: None for one tau and v_th per layer (the paper), or C for one per channel of
            dim 2 of the input.
        tau_param: "sigmoid" stores logit(tau), keeping 0 < tau < 1 while it learns; "direct"
            stores tau itself.
        surrogate, width, alpha, reset, detach_reset: as in :func:`alif_cuda.alif`.
        stateful: keep the final membrane state between calls, so a long sequence can be fed in
            chunks; the state keeps its autograd graph (BPTT across chunks) until
            :meth:`reset_state` or :meth:`detach_state`.
    """

    def __init__(
        self,
        tau: float = 0.25,
        v_th: float = 0.2,
        learnable: bool = True,
        per_channel: Optional[int] = None,
        tau_param: str = "sigmoid",
        surrogate: str = "rect",
        width: float = 1.0,
        alpha: float = 2.0,
        reset: str = "hard",
        detach_reset: bool = False,
        stateful: bool = False,
    ):
        super().__init__()
        check_alif_options(surrogate, width, alpha, reset)
        if tau_param not in TAU_PARAMS:
            raise ValueError(f"ALIF: tau_param must be one of {TAU_PARAMS}, got {tau_param!r}")
        if not math.isfinite(tau) or (tau_param == "sigmoid" and not 0 < tau < 1):
            kind = "in (0, 1) with tau_param='sigmoid'" if tau_param == "sigmoid" else "finite"
            raise ValueError(f"ALIF: tau must be {kind}, got {tau}")
        if not math.isfinite(v_th):
            raise ValueError(f"ALIF: v_th must be finite, got {v_th}")
        if per_channel is not None and (not isinstance(per_channel, int) or per_channel < 1):
            raise ValueError(f"ALIF: per_channel must be None or a positive int, got {per_channel!r}")
        shape = () if per_channel is None else (per_channel,)
        raw_tau = math.log(tau / (1 - tau)) if tau_param == "sigmoid" else tau
        tau_raw = torch.full(shape, raw_tau)
        v_th_t = torch.full(shape, float(v_th))
        if learnable:
            self.tau_raw = nn.Parameter(tau_raw)
            self.v_th = nn.Parameter(v_th_t)
        else:
            self.register_buffer("tau_raw", tau_raw)
            self.register_buffer("v_th", v_th_t)
        self.learnable = learnable
        self.per_channel = per_channel
        self.tau_param = tau_param
        self.surrogate, self.width, self.alpha = surrogate, width, alpha
        self.reset, self.detach_reset = reset, detach_reset
        self.stateful = stateful
        self.state: Optional[Tensor] = None

    @property
    def tau(self) -> Tensor:
        """The effective decay, () or (C,)."""
        return torch.sigmoid(self.tau_raw) if self.tau_param == "sigmoid" else self.tau_raw

    def reset_state(self) -> None:
        """Forget the membrane state kept by a stateful neuron (the next call starts from 0)."""
        self.state = None

    def detach_state(self) -> None:
        """Keep the state's value but cut its autograd graph (truncated BPTT)."""
        if self.state is not None:
            self.state = self.state.detach()

    def forward(self, x: Tensor) -> Tensor:
        u0 = self.state if self.stateful else None
        if u0 is not None and u0.shape != x.shape[1:]:
            raise ValueError(
                f"ALIF: the kept state has shape {tuple(u0.shape)} but this input's steps are "
                f"{tuple(x.shape[1:])}; call reset_state() when the batch or layer size changes"
            )
        spikes, u_last = alif(
            x, self.tau, self.v_th, u0,
            surrogate=self.surrogate, width=self.width, alpha=self.alpha,
            reset=self.reset, detach_reset=self.detach_reset, return_state=True,
        )
        if self.stateful:
            self.state = u_last
        return spikes

    def extra_repr(self) -> str:
        with torch.no_grad():
            tau, v_th = self.tau.float(), self.v_th.float()
            if self.per_channel is None:
                values = f"tau={tau.item():.4g}, v_th={v_th.item():.4g}"
            else:
                values = (
                    f"per_channel={self.per_channel}, tau=mean {tau.mean().item():.4g}, "
                    f"v_th=mean {v_th.mean().item():.4g}"
                )
        surrogate = (
            f"rect(width={self.width:g})" if self.surrogate == "rect" else f"atan(alpha={self.alpha:g})"
        )
        return (
            f"{values}, learnable={self.learnable}, tau_param={self.tau_param}, "
            f"surrogate={surrogate}, reset={self.reset}, detach_reset={self.detach_reset}"
            + (", stateful=True" if self.stateful else "")
        )
