"""Small time-first helpers the paper's networks are built from. Inputs are (T, B, ...)."""
import torch
import torch.nn.functional as F
from torch import Tensor, nn


def repeat_over_time(x: Tensor, T: int) -> Tensor:
    """x (B, ...) seen as (T, B, ...) without copying (stride 0 over T): the static input of a
    first spiking layer, which :func:`alif_cuda.alif` reads once. T may be a SymInt (a traced
    x.shape[0])."""
    if not isinstance(T, (int, torch.SymInt)) or T < 1:
        raise ValueError(f"repeat_over_time: T must be a positive int, got {T!r}")
    return x.unsqueeze(0).expand(T, *x.shape)


class TimeDistributed(nn.Module):
    """Applies ``module`` at every time step: (T, B, ...) -> (T, B, ...'), by folding T into the
    batch (one call, so a BatchNorm inside normalises over T and B together)."""

    def __init__(self, *modules: nn.Module):
        super().__init__()
        if not modules:
            raise ValueError("TimeDistributed: give at least one module")
        self.module = modules[0] if len(modules) == 1 else nn.Sequential(*modules)

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() < 2:
            raise ValueError(f"TimeDistributed: expected (T, B, ...), got shape {tuple(x.shape)}")
        T, B = x.shape[:2]
        y = self.module(x.flatten(0, 1))
        return y.unflatten(0, (T, B))


class TemporalDropout(nn.Module):
    """Dropout that draws one mask per sample and keeps it for all T steps (PLIF's and the
    paper's dropout): (T, B, ...) -> (T, B, ...), scaled by 1 / (1 - p) in training."""

    def __init__(self, p: float = 0.5):
        super().__init__()
        if not 0 <= p < 1:
            raise ValueError(f"TemporalDropout: p must be in [0, 1), got {p}")
        self.p = p

    def forward(self, x: Tensor) -> Tensor:
        if not self.training or self.p == 0:
            return x
        mask = torch.empty(x.shape[1:], device=x.device, dtype=x.dtype).bernoulli_(1 - self.p)
        return x * (mask / (1 - self.p))

    def extra_repr(self) -> str:
        return f"p={self.p}"


class VotingLayer(nn.Module):
    """Averages groups of ``group`` consecutive features: (..., F) -> (..., F / group). With 100
    output neurons and group 10, each class is voted for by 10 neurons (PLIF's voting layer)."""

    def __init__(self, group: int = 10):
        super().__init__()
        if not isinstance(group, int) or group < 1:
            raise ValueError(f"VotingLayer: group must be a positive int, got {group!r}")
        self.group = group

    def forward(self, x: Tensor) -> Tensor:
        if x.shape[-1] % self.group:
            raise ValueError(
                f"VotingLayer: the last dim ({x.shape[-1]}) must be a multiple of group={self.group}"
            )
        return x.unflatten(-1, (-1, self.group)).mean(-1)

    def extra_repr(self) -> str:
        return f"group={self.group}"


class TdBatchNorm(nn.BatchNorm1d):
    """FSVAE's threshold-dependent batch norm (tdBN) for time-first input (T, B, C, ...):
    normalises each channel over time, batch and space together, scales by alpha * v_th, then
    applies the affine weight and bias.

    Running statistics: BatchNorm's exponential average (``momentum``), except that with
    ``warm_start`` (the default) the n-th training batch is averaged in with weight
    max(momentum, 1/n). The first batches then give their plain mean instead of pulling the
    initial (0, 1) only 10 % of the way each: with FSVAE's cold start, the spike-driven layers'
    true variance (~0.01) is overestimated 10x after 20 steps, and an eval-mode network is silent.
    ``warm_start=False`` is FSVAE's rule. While ``frozen`` is set, training-mode calls use the
    batch statistics and leave the running ones (and the batch count) untouched."""

    def __init__(self, channels: int, alpha: float = 1.0, v_th: float = 0.2, eps: float = 1e-5, momentum: float = 0.1,
                 warm_start: bool = True):
        super().__init__(channels, eps=eps, momentum=momentum)
        if not 0 < momentum <= 1:
            raise ValueError(f"TdBatchNorm: momentum must be in (0, 1], got {momentum}")
        self.alpha, self.v_th, self.warm_start = alpha, v_th, warm_start
        self.frozen = False
        # The batch count on the host, so that the warm-start weight costs no device sync; None
        # after load_state_dict, when it is read once from the restored buffer.
        self._seen = 0

    def reset_running_stats(self) -> None:
        super().reset_running_stats()
        self._seen = 0

    def _load_from_state_dict(self, *args, **kwargs):
        self._seen = None
        super()._load_from_state_dict(*args, **kwargs)

    def _check_input_dim(self, x: Tensor) -> None:
        if x.dim() < 3 or x.shape[2] != self.num_features:
            raise ValueError(
                f"TdBatchNorm: expected (T, B, {self.num_features}, ...), got shape {tuple(x.shape)}"
            )

    def forward(self, x: Tensor) -> Tensor:
        self._check_input_dim(x)
        update = self.training and not self.frozen
        factor = self.momentum
        if update:
            self.num_batches_tracked.add_(1)
            self._seen = int(self.num_batches_tracked) if self._seen is None else self._seen + 1
            if self.warm_start:
                factor = max(self.momentum, 1.0 / self._seen)
        use_running = update or not self.training
        y = F.batch_norm(
            x.flatten(0, 1), self.running_mean if use_running else None, self.running_var if use_running else None,
            self.weight * (self.alpha * self.v_th), self.bias, self.training, factor, self.eps,
        )
        return y.unflatten(0, x.shape[:2])

    def extra_repr(self) -> str:
        return super().extra_repr() + f", alpha={self.alpha}, v_th={self.v_th}, warm_start={self.warm_start}"
