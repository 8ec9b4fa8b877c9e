"""SpikingJelly networks on the fused ALIF op: drop-in LIF/PLIF nodes and ``accelerate(net)``.

SpikingJelly (2.0) is an optional dependency: this module imports it, ``import alif_cuda`` does not.

SpikingJelly's LIF family with ``v_reset=0.0`` (hard reset) or ``v_reset=None`` (soft reset) is our
:func:`alif_cuda.alif` with tau = 1 - 1/tau_SJ, i.e. tau = sigmoid(-w) for ``ParametricLIFNode``:

    decay_input=True:   H[t] = V[t-1] + (X[t] - V[t-1]) / tau_SJ = tau V[t-1] + (1 - tau) X[t]
    decay_input=False:  H[t] = V[t-1] - V[t-1] / tau_SJ + X[t]   = tau V[t-1] + X[t]

and its surrogates ``ATan(alpha)``, ``Sigmoid(alpha)`` and ``Rect(alpha)`` are ours with the same
alpha (Rect: our rect with width 1/alpha). ``FusedLIFNode`` / ``FusedParametricLIFNode`` run that
op in multi-step mode and SpikingJelly's own code otherwise; ``accelerate`` turns the nodes of an
existing network into them.
"""
import math
import warnings
from dataclasses import dataclass, field
from typing import List, Optional, Tuple, Union

from spikingjelly.activation_based import neuron
from spikingjelly.activation_based import surrogate as sj_surrogate
from torch import Tensor, nn

from .ops import alif
from .reference import known_number

_SURROGATES = {sj_surrogate.ATan: "atan", sj_surrogate.Sigmoid: "sigmoid", sj_surrogate.Rect: "rect"}


def _surrogate_or_reason(fn) -> Tuple[Optional[dict], Optional[str]]:
    """(alif's surrogate arguments, None) for a SpikingJelly surrogate we reproduce exactly, else
    (None, why not). Exact types only: a subclass may change the function."""
    name = _SURROGATES.get(type(fn))
    if name is None:
        return None, (
            f"surrogate {type(fn).__name__} has no fused equivalent (fused: surrogate.ATan, "
            f"surrogate.Sigmoid, surrogate.Rect)"
        )
    if not fn.spiking:
        return None, f"surrogate {type(fn).__name__} has spiking=False (its forward is not a spike)"
    alpha = fn.alpha
    # Under torch.compile alpha may be symbolic: then the op checks its value when it runs.
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or (
        known_number(alpha) and not (math.isfinite(alpha) and alpha > 0)
    ):
        return None, f"surrogate {type(fn).__name__}'s alpha must be a finite number > 0, got {alpha!r}"
    if name == "rect":
        return dict(surrogate="rect", width=1.0 / alpha, alpha=None), None
    return dict(surrogate=name, width=1.0, alpha=float(alpha)), None


def surrogate_options(fn) -> dict:
    """The :func:`alif_cuda.alif` arguments ``surrogate``, ``width``, ``alpha`` equal to the
    SpikingJelly surrogate object ``fn``: ATan(alpha) -> "atan" with alpha, Sigmoid(alpha) ->
    "sigmoid" with alpha, Rect(alpha) -> "rect" with width 1/alpha. Raises ValueError otherwise."""
    options, reason = _surrogate_or_reason(fn)
    if options is None:
        raise ValueError(f"alif_cuda: {reason}")
    return options


def _config_reason(node: neuron.BaseNode) -> Optional[str]:
    """Why the node's configuration cannot run on the fused op, or None when it can."""
    if node.store_v_seq:
        return "store_v_seq=True (the fused op keeps only the final v)"
    if node.v_reset is not None and node.v_reset != 0.0:
        return f"v_reset={node.v_reset} (fused: 0.0, hard reset, or None, soft reset)"
    if getattr(node, "_neuron_precision", None) is not None:
        return "an explicit neuron precision (SpikingJelly's own Triton path)"
    if isinstance(node.v_threshold, bool) or not isinstance(node.v_threshold, (int, float)):
        return f"v_threshold is a {type(node.v_threshold).__name__}, not a float"
    return _surrogate_or_reason(node.surrogate_function)[1]


def _channel_decay_logit(w: Tensor, x_seq: Tensor) -> Optional[Tensor]:
    """-w, the logit of tau = sigmoid(-w), shaped as alif takes tau ((), or (C,) with
    C = x_seq.shape[2]) when w broadcasts over one step [N, C, ...] as one value or one per
    channel; None for any other shape. alif applies the sigmoid itself (tau_param="sigmoid")."""
    if w.numel() == 1:
        return (-w).reshape(())
    step_dims = x_seq.dim() - 1
    if step_dims < 2 or w.dim() > step_dims:
        return None
    shape = (1,) * (step_dims - w.dim()) + tuple(w.shape)
    if shape[0] != 1 or shape[1] != x_seq.shape[2] or any(s != 1 for s in shape[2:]):
        return None
    return (-w).reshape(-1)


class _FusedMultiStep:
    """The multi-step forward on the fused op; any case it does not cover runs SpikingJelly's."""

    def _decay(self, x_seq: Tensor) -> Optional[Tuple[Union[float, Tensor], str]]:
        """This node's tau for alif and how it is given (alif's tau_param), or None when it cannot
        be fused for x_seq; each fused node class defines it (the mixin is never used alone)."""
        raise NotImplementedError

    def _fused_arguments(self, x_seq: Tensor) -> Optional[dict]:
        """alif's arguments besides x and u0, or None when this call is not fused."""
        if not isinstance(x_seq, Tensor) or x_seq.dim() < 2 or _config_reason(self) is not None:
            return None
        decay = self._decay(x_seq)
        if decay is None:
            return None
        tau, tau_param = decay
        return dict(
            tau=tau, tau_param=tau_param, v_th=float(self.v_threshold),
            reset="soft" if self.v_reset is None else "hard",
            detach_reset=self.detach_reset, decay_input=self.decay_input,
            **surrogate_options(self.surrogate_function),
        )

    def multi_step_forward(self, x_seq: Tensor, *args, **kwargs):
        options = None if args or kwargs else self._fused_arguments(x_seq)
        if options is None:
            return super().multi_step_forward(x_seq, *args, **kwargs)
        v = self.v
        # SpikingJelly's own rules turn the kept v into one step's state (a float, or a tensor of
        # another shape or dtype after the batch changed); a fresh 0.0 is alif's default.
        u0 = None if isinstance(v, float) and v == 0.0 else self.materialize_states((x_seq,), (v,), "m")[0]
        spikes, self.v = alif(x_seq, u0=u0, return_state=True, **options)
        return spikes


class FusedLIFNode(_FusedMultiStep, neuron.LIFNode):
    """SpikingJelly's ``neuron.LIFNode`` (same arguments, attributes and state) whose multi-step
    forward runs :func:`alif_cuda.alif` with tau = 1 - 1/self.tau when the configuration maps
    exactly (see the module's docstring); otherwise, and in single-step mode, SpikingJelly's code."""

    def _decay(self, x_seq: Tensor) -> Tuple[float, str]:
        return 1.0 - 1.0 / self.tau, "direct"


class FusedParametricLIFNode(_FusedMultiStep, neuron.ParametricLIFNode):
    """SpikingJelly's ``neuron.ParametricLIFNode`` (same arguments, parameter ``w``, state ``v``)
    whose multi-step forward runs :func:`alif_cuda.alif` with tau = sigmoid(-w) when the
    configuration maps exactly (see the module's docstring), also for a ``w`` of one value per
    channel (shape (C, 1, ..., 1) against [T, N, C, ...] input), which SpikingJelly runs as a
    Python loop; otherwise, and in single-step mode, SpikingJelly's code."""

    def _decay(self, x_seq: Tensor) -> Optional[Tuple[Tensor, str]]:
        logit = _channel_decay_logit(self.w, x_seq)
        return None if logit is None else (logit, "sigmoid")


_FUSED = {neuron.LIFNode: FusedLIFNode, neuron.ParametricLIFNode: FusedParametricLIFNode}


@dataclass
class AccelerateReport:
    """What :func:`accelerate` did: the names of the nodes now fused, and (name, reason) for the
    LIF/PLIF nodes it left as they were."""

    replaced: List[str] = field(default_factory=list)
    left: List[Tuple[str, str]] = field(default_factory=list)

    def __str__(self) -> str:
        lines = [f"alif_cuda.spikingjelly.accelerate: {len(self.replaced)} node(s) fused, {len(self.left)} left"]
        lines += [f"  fused {name}" for name in self.replaced]
        lines += [f"  left  {name}: {reason}" for name, reason in self.left]
        return "\n".join(lines)


def accelerate(net: nn.Module) -> AccelerateReport:
    """Make every SpikingJelly ``LIFNode`` / ``ParametricLIFNode`` of ``net`` whose configuration
    maps exactly onto the fused op (multi-step; v_reset 0.0 or None; surrogate ATan, Sigmoid or
    Rect; store_v_seq False) its fused twin, in place: the module object stays, with its
    parameters, state, hooks and step mode, so optimizers, monitors, ``functional.reset_net``
    and checkpoints (same ``state_dict`` names) keep working. The other nodes are left alone and
    listed, with the reason, in one warning. Returns an :class:`AccelerateReport`."""
    report = AccelerateReport()
    for name, module in net.named_modules():
        name = name or type(module).__name__
        fused = _FUSED.get(type(module))
        if fused is None:
            if (isinstance(module, (neuron.LIFNode, neuron.ParametricLIFNode))
                    and not isinstance(module, _FusedMultiStep)):
                report.left.append((name, f"{type(module).__name__} subclasses SpikingJelly's node and may change it"))
            continue
        reason = _config_reason(module)
        if reason is None and module.step_mode != "m":
            reason = "step_mode='s' (the fused op runs multi-step; call functional.set_step_mode(net, 'm') first)"
        if reason is not None:
            report.left.append((name, reason))
            continue
        # A class change, not a new module: every reference to the node (optimizer, hooks, the
        # module list functional.reset_net caches) stays valid.
        module.__class__ = fused
        report.replaced.append(name)
    if report.left:
        warnings.warn(
            "alif_cuda.spikingjelly.accelerate left these nodes on SpikingJelly's code:\n"
            + "\n".join(f"  {name}: {reason}" for name, reason in report.left),
            stacklevel=2,
        )
    return report
