"""Drop-in spiking modules built on the fused ops, and the image decoders. Time-first: inputs are
(T, B, ...) (an ALIF with step_mode="s" takes one step (B, ...) per call)."""
import math
from contextlib import contextmanager
from typing import Iterator, Optional

import torch
from torch import Tensor, nn

from .ops import alif, taid
from .reference import alif_ref, check_alif_options, check_taid_options, resolve_alpha, taid_ref
STEP_MODES = ("m", "s")

_use_reference = False


@contextmanager
def use_reference_ops(enabled: bool = True) -> Iterator[None]:
    """Within the block, the ALIF and TAID modules run the plain-PyTorch references
    (:func:`alif_ref`, :func:`taid_ref`) instead of the fused kernels: to debug a model against
    the definitions, or to benchmark a whole network both ways."""
    global _use_reference
    previous, _use_reference = _use_reference, enabled
    try:
        yield
    finally:
        _use_reference = previous


def _surrogate_arguments(surrogate, width: float, alpha: Optional[float]):
    """(surrogate, width, alpha) for :func:`alif_cuda.alif` from a name or from a SpikingJelly
    surrogate object; SpikingJelly is imported only when such an object is passed."""
    if isinstance(surrogate, str):
        return surrogate, width, alpha
    if type(surrogate).__module__.split(".")[0] != "spikingjelly":
        raise TypeError(
            f"ALIF: surrogate must be a name ('rect', 'atan', 'sigmoid') or a SpikingJelly surrogate "
            f"object (surrogate.ATan, .Sigmoid, .Rect), got {type(surrogate).__name__}"
        )
    if alpha is not None:
        raise ValueError(
            f"ALIF: alpha={alpha} was given with the surrogate object {surrogate!r}, which has its own "
            f"alpha; give one or the other"
        )
    from .spikingjelly import surrogate_options

    options = surrogate_options(surrogate)
    return options["surrogate"], options["width"], options["alpha"]


class ALIF(nn.Module):
    """Adaptive LIF neurons whose decay ``tau`` and threshold ``v_th`` can be learned.

    Forward, ``step_mode="m"`` (default): x (T, B, ...) -> spikes (T, B, ...), by
    :func:`alif_cuda.alif`. A static input expanded over time
    (``y.unsqueeze(0).expand(T, *y.shape)``) is read once. ``step_mode="s"``: x (B, ...) is one
    time step -> spikes (B, ...), and the state is kept between calls (SpikingJelly's single-step
    convention) until :meth:`reset`.

    Works inside SpikingJelly code: ``functional.reset_net`` calls :meth:`reset`,
    ``functional.detach_net`` calls :meth:`detach`, ``functional.set_step_mode`` sets
    ``step_mode``; SpikingJelly's ``surrogate.ATan(alpha)``, ``surrogate.Sigmoid(alpha)`` and
    ``surrogate.Rect(alpha)`` (our rect with width 1/alpha) are accepted as ``surrogate``.

    Args:
        tau: initial decay, 0 < tau < 1 when ``tau_param="sigmoid"``.
        v_th: initial threshold.
        learnable: tau and v_th are Parameters (True) or fixed buffers (False).
        per_channel: None for one tau and v_th per layer (the paper), or C for one per channel of
            dim 2 of the (T, B, C, ...) input (dim 1 of a single step).
        tau_param: "sigmoid" stores logit(tau), keeping 0 < tau < 1 while it learns; "direct"
            stores tau itself.
        surrogate: "rect", "atan", "sigmoid" or a SpikingJelly surrogate object (its alpha is
            used; then leave ``alpha`` None).
        alpha: the atan/sigmoid sharpness; None for the surrogate's default (2 for atan, 4 for
            sigmoid, SpikingJelly's).
        width, detach_reset, decay_input: as in :func:`alif_cuda.alif`.
        reset: "hard" or "soft", kept as ``reset_mode`` (``reset()`` clears the state).
        stateful: in step_mode "m", keep the final membrane state between calls, so a long
            sequence can be fed in chunks; the state keeps its autograd graph (BPTT across
            chunks) until :meth:`reset` or :meth:`detach`.
        step_mode: "m" (multi-step, time-major input) or "s" (one step per call).
    """

    def __init__(
        self,
        tau: float = 0.25,
        v_th: float = 0.2,
        learnable: bool = True,
        per_channel: Optional[int] = None,
        tau_param: str = "sigmoid",
        surrogate="rect",
        width: float = 1.0,
        alpha: Optional[float] = None,
        reset: str = "hard",
        detach_reset: bool = False,
        decay_input: bool = False,
        stateful: bool = False,
        step_mode: str = "m",
    ):
        super().__init__()
        surrogate, width, alpha = _surrogate_arguments(surrogate, width, alpha)
        alpha = resolve_alpha(surrogate, alpha)
        check_alif_options(surrogate, width, alpha, reset, tau_param)
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
        self.reset_mode, self.detach_reset = reset, detach_reset
        self.decay_input = decay_input
        self.stateful = stateful
        self.step_mode = step_mode
        self.state: Optional[Tensor] = None

    @property
    def step_mode(self) -> str:
        return self._step_mode

    @step_mode.setter
    def step_mode(self, value: str) -> None:
        # A property so that SpikingJelly's functional.set_step_mode is checked too.
        if value not in STEP_MODES:
            raise ValueError(f"ALIF: step_mode must be one of {STEP_MODES}, got {value!r}")
        self._step_mode = value

    @property
    def tau(self) -> Tensor:
        """The effective decay, () or (C,)."""
        return torch.sigmoid(self.tau_raw) if self.tau_param == "sigmoid" else self.tau_raw

    def reset(self) -> None:
        """Forget the kept membrane state (the next call starts from 0): SpikingJelly's
        ``reset()``, which ``functional.reset_net`` calls."""
        self.state = None

    def reset_state(self) -> None:
        """The same as :meth:`reset`."""
        self.reset()

    def detach(self) -> None:
        """Keep the state's value but cut its autograd graph (truncated BPTT): SpikingJelly's
        ``detach()``, which ``functional.detach_net`` calls."""
        if self.state is not None:
            self.state = self.state.detach()

    def detach_state(self) -> None:
        """The same as :meth:`detach`."""
        self.detach()

    def forward(self, x: Tensor) -> Tensor:
        if not isinstance(x, Tensor):
            raise TypeError(f"ALIF: x must be a Tensor, got {type(x).__name__}")
        single = self.step_mode == "s"
        if single:
            if x.dim() < 1:
                raise ValueError("ALIF: step_mode='s' expects one time step (B, ...), got a 0-dim tensor")
            x = x.unsqueeze(0)
        elif x.dim() < 2:
            raise ValueError(
                f"ALIF: step_mode='m' expects time-major input (T, B, ...), got shape {list(x.shape)}; "
                f"for one time step (B, ...) per call use step_mode='s'"
            )
        keep = single or self.stateful
        u0 = self.state if keep else None
        if u0 is not None and u0.shape != x.shape[1:]:
            raise ValueError(
                f"ALIF: the kept state has shape {tuple(u0.shape)} but this input's steps are "
                f"{tuple(x.shape[1:])}; call reset() (or SpikingJelly's functional.reset_net) when "
                f"the batch or layer size changes"
            )
        # tau_raw as stored: with tau_param="sigmoid" the op applies the sigmoid (and its
        # derivative) itself, so the layer is alif_fwd and alif_bwd and nothing else.
        out = (alif_ref if _use_reference else alif)(
            x, self.tau_raw, self.v_th, u0,
            surrogate=self.surrogate, width=self.width, alpha=self.alpha,
            reset=self.reset_mode, detach_reset=self.detach_reset, decay_input=self.decay_input,
            return_state=keep, tau_param=self.tau_param,
        )
        if keep:
            spikes, self.state = out
        else:
            spikes = out
        return spikes[0] if single else spikes

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
            f"rect(width={self.width:g})" if self.surrogate == "rect" else f"{self.surrogate}(alpha={self.alpha:g})"
        )
        return (
            f"{values}, learnable={self.learnable}, tau_param={self.tau_param}, "
            f"surrogate={surrogate}, reset={self.reset_mode}, detach_reset={self.detach_reset}"
            + (", decay_input=True" if self.decay_input else "")
            + (", stateful=True" if self.stateful else "")
            + (", step_mode=s" if self.step_mode == "s" else "")
        )


def _check_steps(who: str, T: int) -> None:
    if not isinstance(T, int) or isinstance(T, bool) or T < 1:
        raise ValueError(f"{who}: T must be a positive int, got {T!r}")


def _check_decoder_input(who: str, s: Tensor, T: int) -> None:
    if s.dim() != 5 or s.shape[0] != T:
        raise ValueError(
            f"{who}: expected s of shape (T={T}, B, C, H, W), got {tuple(s.shape)}"
        )


class TAID(nn.Module):
    """Temporal attention image decoding: (T, B, C, H, W) -> (B, C, H, W), by :func:`alif_cuda.taid`.

    Holds ``w`` (T, T), initialised like PyTorch's default ``Conv1d(T, T, 1)`` weight,
    U(-1/sqrt(T), 1/sqrt(T)). Returns y before the image's tanh, which the model applies.
    """

    def __init__(self, T: int, reduce: str = "sum"):
        super().__init__()
        _check_steps("TAID", T)
        check_taid_options(reduce)
        self.T, self.reduce = T, reduce
        self.w = nn.Parameter(torch.empty(T, T))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # Conv1d's default: kaiming_uniform_ with a = sqrt(5) gives bound 1 / sqrt(fan_in), fan_in = T.
        nn.init.kaiming_uniform_(self.w, a=math.sqrt(5))

    def forward(self, s: Tensor) -> Tensor:
        _check_decoder_input("TAID", s, self.T)
        return (taid_ref if _use_reference else taid)(s, self.w, self.reduce)

    def extra_repr(self) -> str:
        return f"T={self.T}, reduce={self.reduce}"


class MembraneDecoder(nn.Module):
    """FSVAE's decoding, the baseline TAID replaces: the membrane of a non-firing leaky integrator,
    y = sum_t decay^(T-1-t) s_t, (T, B, C, H, W) -> (B, C, H, W). Nothing is learned."""

    def __init__(self, T: int, decay: float = 0.8):
        super().__init__()
        _check_steps("MembraneDecoder", T)
        if not (math.isfinite(decay) and 0 < decay <= 1):
            raise ValueError(f"MembraneDecoder: decay must be in (0, 1], got {decay}")
        self.T, self.decay = T, decay
        self.register_buffer(
            "weights", torch.tensor([decay ** (T - 1 - t) for t in range(T)]), persistent=False
        )

    def forward(self, s: Tensor) -> Tensor:
        _check_decoder_input("MembraneDecoder", s, self.T)
        return torch.tensordot(self.weights.to(s.dtype), s, dims=([0], [0]))

    def extra_repr(self) -> str:
        return f"T={self.T}, decay={self.decay:g}"


DECODERS = {"taid": TAID, "membrane": MembraneDecoder}


def make_decoder(name: str, T: int, **kwargs) -> nn.Module:
    """The image decoder called ``name`` ("taid" or "membrane") for T time steps."""
    if name not in DECODERS:
        raise ValueError(f"make_decoder: name must be one of {tuple(DECODERS)}, got {name!r}")
    return DECODERS[name](T, **kwargs)
