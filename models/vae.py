"""The paper's generative models: the fully spiking VAE (FSVAE) with a TAID or membrane decoder,
and its ANN twin with a Gaussian latent. Time-first, from alif_cuda parts (facts in REFERENCE.md).

FSVAE: every layer is time-distributed (conv or linear at each step) + tdBN + ALIF. The image, in
[-1, 1], is the input current at every step: the first conv + tdBN runs once and reaches the first
ALIF as a stride-0 input. Latent: 128 binary channels per step from an autoregressive Bernoulli
posterior (k = 20 output spikes per channel, one picked at random), a prior of the same design
trained to match it (MMD of their synaptic-trace-filtered probabilities, or a Bernoulli KL), and a
decoder whose last real-valued conv output (T, B, C, H, W) is decoded into an image by TAID or by
FSVAE's membrane decoding, then tanh.
"""
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import Dict, List, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from alif_cuda import ALIF, make_decoder
from alif_cuda.layers import TdBatchNorm, TimeDistributed, repeat_over_time

MODELS = ("fsvae", "ann")
DECODERS = ("taid", "membrane")
LATENT_LOSSES = ("mmd", "kl")


@dataclass
class VAEConfig:
    model: str = "fsvae"
    in_channels: int = 1
    image_size: int = 32
    T: int = 16
    latent: int = 128
    k: int = 20
    decoder: str = "taid"
    taid_reduce: str = "sum"
    learnable_neurons: bool = False
    tau: float = 0.25
    v_th: float = 0.2
    latent_loss: str = "mmd"
    kl_weight: float = 1e-4  # FSVAE's weight for the Bernoulli KL option
    kld_weight: float = 2.5e-4  # the ANN VAE's Gaussian KL weight (our choice; REFERENCE.md gives none)
    scheduled_from: int = 5

    def __post_init__(self):
        if self.model not in MODELS:
            raise ValueError(f"VAEConfig: model must be one of {MODELS}, got {self.model!r}")
        if self.decoder not in DECODERS:
            raise ValueError(f"VAEConfig: decoder must be one of {DECODERS}, got {self.decoder!r}")
        if self.latent_loss not in LATENT_LOSSES:
            raise ValueError(f"VAEConfig: latent_loss must be one of {LATENT_LOSSES}, got {self.latent_loss!r}")
        if self.image_size not in (32, 64):
            raise ValueError(f"VAEConfig: image_size must be 32 or 64, got {self.image_size}")
        if min(self.T, self.latent, self.k, self.in_channels) < 1:
            raise ValueError("VAEConfig: T, latent, k and in_channels must be >= 1")

    @property
    def channels(self) -> List[int]:
        """Encoder conv widths: 32x32 images go down to 2x2 in four stride-2 convs, 64x64 in five."""
        return [32, 64, 128, 256] if self.image_size == 32 else [32, 64, 128, 256, 512]

    def to_dict(self) -> Dict:
        return asdict(self)


def _neuron(cfg: VAEConfig) -> ALIF:
    # FSVAE's LIF: tau 0.25, v_th 0.2, hard reset not detached, box surrogate of width 1 (ours is
    # centred at v_th). Learnable only as the paper's ALIF variant.
    return ALIF(tau=cfg.tau, v_th=cfg.v_th, learnable=cfg.learnable_neurons, surrogate="rect", width=1.0,
                detach_reset=False)


class SpikingLayer(nn.Sequential):
    """A time-distributed layer, then tdBN and an ALIF: (T, B, ...) -> spikes."""

    def __init__(self, layer: nn.Module, channels: int, cfg: VAEConfig, alpha: float = 1.0):
        super().__init__(TimeDistributed(layer), TdBatchNorm(channels, alpha=alpha, v_th=cfg.v_th), _neuron(cfg))


class BernoulliNet(nn.Sequential):
    """in -> 256 -> 512 -> latent * k, each linear + tdBN (alpha 2) + ALIF: (T, B, in) -> spikes."""

    def __init__(self, inputs: int, hidden: List[int], cfg: VAEConfig):
        widths = [inputs, *hidden, cfg.latent * cfg.k]
        super().__init__(*[SpikingLayer(nn.Linear(a, b, bias=False), b, cfg, alpha=2.0)
                           for a, b in zip(widths[:-1], widths[1:])])


def pick_one_of_k(spikes: Tensor, latent: int, k: int) -> Tensor:
    """(..., latent * k) spikes -> (..., latent): per channel one of its k spikes, at random."""
    grouped = spikes.unflatten(-1, (latent, k))
    index = torch.randint(k, grouped.shape[:-1] + (1,), device=spikes.device)
    return grouped.gather(-1, index).squeeze(-1)


@contextmanager
def frozen_batch_stats(module: nn.Module):
    """Sampling passes use the batch statistics but leave the running ones untouched."""
    norms = [m for m in module.modules() if isinstance(m, TdBatchNorm)]
    saved = [m.momentum for m in norms]
    for m in norms:
        m.momentum = 0.0
    try:
        yield
    finally:
        for m, momentum in zip(norms, saved):
            m.momentum = momentum


class FSVAE(nn.Module):
    def __init__(self, cfg: VAEConfig):
        super().__init__()
        self.cfg = cfg
        ch = cfg.channels
        self.first = nn.Conv2d(cfg.in_channels, ch[0], 3, stride=2, padding=1, bias=False)
        self.first_bn = TdBatchNorm(ch[0], v_th=cfg.v_th)
        self.first_neuron = _neuron(cfg)
        self.encoder = nn.Sequential(
            *[SpikingLayer(nn.Conv2d(a, b, 3, stride=2, padding=1, bias=False), b, cfg) for a, b in zip(ch[:-1], ch[1:])],
            TimeDistributed(nn.Flatten()),
            SpikingLayer(nn.Linear(ch[-1] * 4, cfg.latent, bias=False), cfg.latent, cfg),
        )
        self.posterior = BernoulliNet(2 * cfg.latent, [256, 512], cfg)
        self.prior = BernoulliNet(cfg.latent, [256, 512], cfg)
        self.decoder_input = SpikingLayer(nn.Linear(cfg.latent, ch[-1] * 4, bias=False), ch[-1] * 4, cfg)
        up = list(reversed(ch))  # e.g. 256 -> 128 -> 64 -> 32, then 32 -> 32
        self.decoder = nn.Sequential(*[
            SpikingLayer(nn.ConvTranspose2d(a, b, 3, stride=2, padding=1, output_padding=1, bias=False), b, cfg)
            for a, b in zip(up, up[1:] + [up[-1]])
        ])
        self.to_image = TimeDistributed(nn.Conv2d(ch[0], cfg.in_channels, 3, padding=1))
        self.decode = make_decoder(cfg.decoder, cfg.T, **({"reduce": cfg.taid_reduce} if cfg.decoder == "taid" else {}))

    # -- pieces --------------------------------------------------------------------------------
    def encode(self, x: Tensor) -> Tensor:
        """images (B, C, H, W) -> encoder spikes (T, B, latent)."""
        current = self.first_bn(self.first(x).unsqueeze(0))[0]  # the static input, computed once
        return self.encoder(self.first_neuron(repeat_over_time(current, self.cfg.T)))

    def sample_posterior(self, h: Tensor) -> Tuple[Tensor, Tensor]:
        """Autoregressive posterior: z_t from [h_t, z_{t-1}], first sampled step by step without
        gradient, then recomputed teacher-forced with gradient. Returns z (T, B, latent) and the
        posterior spikes q (T, B, latent, k)."""
        T, B = h.shape[:2]
        zero = h.new_zeros(1, B, self.cfg.latent)
        z_in = zero
        with torch.no_grad(), frozen_batch_stats(self.posterior):
            for t in range(T - 1):
                out = self.posterior(torch.cat([h[: t + 1], z_in], -1))
                z_in = torch.cat([z_in, pick_one_of_k(out[t], self.cfg.latent, self.cfg.k)[None]])
        q = self.posterior(torch.cat([h, z_in], -1))
        return pick_one_of_k(q, self.cfg.latent, self.cfg.k), q.unflatten(-1, (self.cfg.latent, self.cfg.k))

    def prior_of(self, z: Tensor, p_scheduled: float = 0.0) -> Tensor:
        """Prior spikes (T, B, latent, k) for z_t given z_{<t}. With p_scheduled > 0 (training),
        from step `scheduled_from` on each sample's input z_{t-1} is, with that probability, the
        prior's own sample instead of the posterior's (scheduled sampling)."""
        T, B = z.shape[:2]
        z_in = torch.cat([z.new_zeros(1, B, self.cfg.latent), z[:-1]])
        if p_scheduled > 0 and T > self.cfg.scheduled_from:
            with torch.no_grad(), frozen_batch_stats(self.prior):
                for t in range(self.cfg.scheduled_from, T):
                    own = pick_one_of_k(self.prior(z_in[:t])[t - 1], self.cfg.latent, self.cfg.k)
                    use_own = (torch.rand(B, 1, device=z.device) < p_scheduled).to(z.dtype)
                    z_in = z_in.clone()
                    z_in[t] = use_own * own + (1 - use_own) * z_in[t]
        return self.prior(z_in).unflatten(-1, (self.cfg.latent, self.cfg.k))

    def generate_latent(self, n: int, device) -> Tensor:
        """z (T, n, latent) sampled from the prior, step by step."""
        z_in = torch.zeros(1, n, self.cfg.latent, device=device)
        zs = []
        with frozen_batch_stats(self.prior):
            for t in range(self.cfg.T):
                zs.append(pick_one_of_k(self.prior(z_in)[t], self.cfg.latent, self.cfg.k))
                z_in = torch.cat([z_in, zs[-1][None]])
        return torch.stack(zs)

    def decode_latent(self, z: Tensor) -> Tensor:
        """z (T, B, latent) -> images (B, C, H, W) in [-1, 1]."""
        h = self.decoder_input(z).unflatten(-1, (self.cfg.channels[-1], 2, 2))
        s = self.to_image(self.decoder(h))
        return torch.tanh(self.decode(s))

    # -- the model -----------------------------------------------------------------------------
    def forward(self, x: Tensor, p_scheduled: float = 0.0) -> Dict[str, Tensor]:
        z, q = self.sample_posterior(self.encode(x))
        return {"recon": self.decode_latent(z), "q": q, "p": self.prior_of(z, p_scheduled)}

    def loss(self, x: Tensor, out: Dict[str, Tensor]) -> Tuple[Tensor, Dict[str, Tensor]]:
        recon = F.mse_loss(out["recon"].float(), x.float())
        q, p = out["q"].float().mean(-1), out["p"].float().mean(-1)  # Bernoulli probabilities
        if self.cfg.latent_loss == "mmd":
            latent = mmd_loss(q, p)
        else:
            latent = self.cfg.kl_weight * bernoulli_kl(q, p)
        return recon + latent, {"recon_loss": recon, "latent_loss": latent}

    @torch.no_grad()
    def sample(self, n: int) -> Tensor:
        return self.decode_latent(self.generate_latent(n, next(self.parameters()).device))

    @torch.no_grad()
    def reconstruct(self, x: Tensor) -> Tensor:
        return self.forward(x)["recon"]


def synaptic_trace(p: Tensor, tau_s: float = 2.0) -> Tensor:
    """syn_t = syn_{t-1} + (p_t - syn_{t-1}) / tau_s over dim 0 (time), syn_{-1} = 0."""
    syn = torch.zeros_like(p[0])
    out = []
    for t in range(p.shape[0]):
        syn = syn + (p[t] - syn) / tau_s
        out.append(syn)
    return torch.stack(out)


def mmd_loss(q: Tensor, p: Tensor) -> Tensor:
    """FSVAE's latent loss: mean squared difference of the trace-filtered posterior and prior
    Bernoulli probabilities (T, B, latent)."""
    return (synaptic_trace(q) - synaptic_trace(p)).square().mean()


def bernoulli_kl(q: Tensor, p: Tensor, eps: float = 1e-6) -> Tensor:
    """KL(Bern(q) || Bern(p)), summed over latent channels and steps, averaged over the batch."""
    q, p = q.clamp(eps, 1 - eps), p.clamp(eps, 1 - eps)
    kl = q * (q / p).log() + (1 - q) * ((1 - q) / (1 - p)).log()
    return kl.sum(dim=(0, 2)).mean()


class ANNVAE(nn.Module):
    """The same conv architecture with BatchNorm + LeakyReLU and a Gaussian latent."""

    def __init__(self, cfg: VAEConfig):
        super().__init__()
        self.cfg = cfg
        ch = cfg.channels
        layers, prev = [], cfg.in_channels
        for c in ch:
            layers += [nn.Conv2d(prev, c, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(c), nn.LeakyReLU()]
            prev = c
        self.encoder = nn.Sequential(*layers, nn.Flatten())
        self.mu = nn.Linear(ch[-1] * 4, cfg.latent)
        self.log_var = nn.Linear(ch[-1] * 4, cfg.latent)
        self.decoder_input = nn.Sequential(nn.Linear(cfg.latent, ch[-1] * 4, bias=False), nn.BatchNorm1d(ch[-1] * 4),
                                           nn.LeakyReLU())
        up, layers = list(reversed(ch)), []
        for a, b in zip(up, up[1:] + [up[-1]]):
            layers += [nn.ConvTranspose2d(a, b, 3, stride=2, padding=1, output_padding=1, bias=False),
                       nn.BatchNorm2d(b), nn.LeakyReLU()]
        self.decoder = nn.Sequential(*layers, nn.Conv2d(ch[0], cfg.in_channels, 3, padding=1), nn.Tanh())

    def decode_latent(self, z: Tensor) -> Tensor:
        return self.decoder(self.decoder_input(z).unflatten(-1, (self.cfg.channels[-1], 2, 2)))

    def forward(self, x: Tensor, p_scheduled: float = 0.0) -> Dict[str, Tensor]:
        h = self.encoder(x)
        mu, log_var = self.mu(h), self.log_var(h)
        z = mu + torch.randn_like(mu) * (0.5 * log_var).exp()
        return {"recon": self.decode_latent(z), "mu": mu, "log_var": log_var}

    def loss(self, x: Tensor, out: Dict[str, Tensor]) -> Tuple[Tensor, Dict[str, Tensor]]:
        recon = F.mse_loss(out["recon"].float(), x.float())
        mu, log_var = out["mu"].float(), out["log_var"].float()
        kld = (-0.5 * (1 + log_var - mu.square() - log_var.exp()).sum(-1)).mean()
        latent = self.cfg.kld_weight * kld
        return recon + latent, {"recon_loss": recon, "latent_loss": latent}

    @torch.no_grad()
    def sample(self, n: int) -> Tensor:
        device = next(self.parameters()).device
        return self.decode_latent(torch.randn(n, self.cfg.latent, device=device))

    @torch.no_grad()
    def reconstruct(self, x: Tensor) -> Tensor:
        return self.decode_latent(self.mu(self.encoder(x)))


def build_vae(cfg: VAEConfig) -> nn.Module:
    return FSVAE(cfg) if cfg.model == "fsvae" else ANNVAE(cfg)


def scheduled_probability(epoch: int, epochs: int) -> float:
    """Scheduled sampling's probability, rising linearly from 0.1 to 0.3 over training."""
    return 0.1 + 0.2 * (epoch / max(epochs - 1, 1))


def dataset_channels(dataset: str) -> Tuple[int, int]:
    """(image channels, image size) of a dataset as the VAEs see it."""
    return {"mnist": (1, 32), "fashion": (1, 32), "cifar10": (3, 32), "celeba": (3, 64)}[dataset]
