"""The paper's generative models: the fully spiking VAE (FSVAE) with a TAID or membrane decoder,
and its ANN twin with a Gaussian latent. Time-first, from alif_cuda parts; docs/generative.md lists
where they follow FSVAE's code (kamata1729/FullySpikingVAE) and where they deviate.

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
from typing import Dict, List, Optional, Tuple

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
    # The ANN VAE's Gaussian KL weight. FSVAE's ANN code uses 1 / (batches per epoch): 1/240 for
    # MNIST at batch 250; train_vae sets it from the run's own loader.
    kld_weight: float = 1 / 240
    scheduled_from: int = 5  # the first latent step z_t that scheduled sampling may replace (FSVAE: t >= 5)
    bn_warm_start: bool = True  # tdBN running statistics without FSVAE's cold start (see TdBatchNorm)

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
        if not self.kld_weight >= 0:
            raise ValueError(f"VAEConfig: kld_weight must be >= 0, got {self.kld_weight}")

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


def _tdbn(channels: int, cfg: VAEConfig, alpha: float = 1.0) -> TdBatchNorm:
    return TdBatchNorm(channels, alpha=alpha, v_th=cfg.v_th, warm_start=cfg.bn_warm_start)


class SpikingLayer(nn.Sequential):
    """A time-distributed layer, then tdBN and an ALIF: (T, B, ...) -> spikes."""

    def __init__(self, layer: nn.Module, channels: int, cfg: VAEConfig, alpha: float = 1.0):
        super().__init__(TimeDistributed(layer), _tdbn(channels, cfg, alpha), _neuron(cfg))


class BernoulliNet(nn.Sequential):
    """in -> 256 -> 512 -> latent * k, each linear + tdBN (alpha 2) + ALIF: (T, B, in) -> spikes."""

    def __init__(self, inputs: int, hidden: List[int], cfg: VAEConfig):
        widths = [inputs, *hidden, cfg.latent * cfg.k]
        super().__init__(*[SpikingLayer(nn.Linear(a, b, bias=False), b, cfg, alpha=2.0)
                           for a, b in zip(widths[:-1], widths[1:])])


def one_of_k_indices(spikes: Tensor, latent: int, k: int) -> Tensor:
    """For (..., latent * k) spikes, a random index in [0, k) per latent channel: (..., latent, 1)."""
    return torch.randint(k, spikes.shape[:-1] + (latent, 1), device=spikes.device)


def pick_one_of_k(spikes: Tensor, latent: int, k: int, index: Optional[Tensor] = None) -> Tensor:
    """(..., latent * k) spikes -> (..., latent): per channel the spike at `index` (from
    one_of_k_indices; drawn afresh when None)."""
    if index is None:
        index = one_of_k_indices(spikes, latent, k)
    return spikes.unflatten(-1, (latent, k)).gather(-1, index).squeeze(-1)


@contextmanager
def frozen_batch_stats(module: nn.Module):
    """Sampling passes use the batch statistics but leave the running ones untouched."""
    norms = [m for m in module.modules() if isinstance(m, TdBatchNorm)]
    saved = [m.frozen for m in norms]
    for m in norms:
        m.frozen = True
    try:
        yield
    finally:
        for m, frozen in zip(norms, saved):
            m.frozen = frozen


class FSVAE(nn.Module):
    def __init__(self, cfg: VAEConfig):
        super().__init__()
        self.cfg = cfg
        ch = cfg.channels
        self.first = nn.Conv2d(cfg.in_channels, ch[0], 3, stride=2, padding=1, bias=False)
        self.first_bn = _tdbn(ch[0], cfg)
        self.first_neuron = _neuron(cfg)
        self.encoder = nn.Sequential(
            *[SpikingLayer(nn.Conv2d(a, b, 3, stride=2, padding=1, bias=False), b, cfg)
              for a, b in zip(ch[:-1], ch[1:])],
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
        gradient, then recomputed teacher-forced with gradient. As in FSVAE, the returned z_t for
        t < T-1 picks the same one-of-k indices as the sampling pass did, so the decoded z is
        read from the very outputs the posterior conditioned on (only z_{T-1} is a fresh draw).
        Returns z (T, B, latent) and the posterior spikes q (T, B, latent, k)."""
        T, B = h.shape[:2]
        latent, k = self.cfg.latent, self.cfg.k
        z_in, indices = h.new_zeros(1, B, latent), []
        with torch.no_grad(), frozen_batch_stats(self.posterior):
            for t in range(T - 1):
                out = self.posterior(torch.cat([h[: t + 1], z_in], -1))[t]
                indices.append(one_of_k_indices(out, latent, k))
                z_in = torch.cat([z_in, pick_one_of_k(out, latent, k, indices[-1])[None]])
        q = self.posterior(torch.cat([h, z_in], -1))
        indices.append(one_of_k_indices(q[-1], latent, k))
        return pick_one_of_k(q, latent, k, torch.stack(indices)), q.unflatten(-1, (latent, k))

    def prior_of(self, z: Tensor, p_scheduled: float = 0.0) -> Tensor:
        """Prior spikes (T, B, latent, k) for z_t given z_{<t}; the prior's input is z detached
        (the prior learns to match the posterior, not the other way round).

        Scheduled sampling (FSVAE's), in training mode with p_scheduled > 0: for each step
        t >= scheduled_from, one draw for the whole batch decides, with probability p_scheduled,
        whether the prior's input z_t is replaced by the prior's own prediction of it, its
        thresholded mean mean_k(p_t) + 1e-3 noise > 0.5 given the inputs built so far."""
        T, B = z.shape[:2]
        latent, k = self.cfg.latent, self.cfg.k
        z = z.detach()
        z_in = torch.cat([z.new_zeros(1, B, latent), z[:-1]])
        if self.training and p_scheduled > 0:
            with torch.no_grad(), frozen_batch_stats(self.prior):
                for t in range(self.cfg.scheduled_from, T - 1):
                    # A CPU draw, so the decision costs no device sync.
                    if torch.rand(()).item() < p_scheduled:
                        mean = self.prior(z_in[: t + 1])[t].unflatten(-1, (latent, k)).mean(-1)
                        z_in[t + 1] = (mean + 1e-3 * torch.randn_like(mean) > 0.5).to(z_in.dtype)
        return self.prior(z_in).unflatten(-1, (latent, k))

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
        q, p = out["q"].float().mean(-1), out["p"].float().mean(-1)  # Bernoulli probabilities (T, B, latent)
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


def bernoulli_kl(q: Tensor, p: Tensor, smooth: float = 1e-2) -> Tensor:
    """FSVAE's smoothed KL(Bern(q) || Bern(p)) for probabilities (T, B, latent):
    q log((q + s) / (p + s)) + (1 - q) log((1 - q + s) / (1 - p + s)) with s = 1e-2, summed over
    latent channels and steps, averaged over the batch. The smoothing bounds what one silent prior
    channel (p = 0) can cost, log(1.01 / 0.01) ~ 4.6 nats, where clamping at 1e-6 gave 13.8."""
    kl = q * ((q + smooth) / (p + smooth)).log() + (1 - q) * ((1 - q + smooth) / (1 - p + smooth)).log()
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
        self.decoder_input = nn.Linear(cfg.latent, ch[-1] * 4)  # plain, as FSVAE's ANN VAE
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
    """Scheduled sampling's probability in epoch `epoch` (from 0) of `epochs`: FSVAE's
    0.1 + 0.2 * epoch / epochs, rising linearly towards 0.3."""
    return 0.1 + 0.2 * epoch / epochs


def dataset_channels(dataset: str) -> Tuple[int, int]:
    """(image channels, image size) of a dataset as the VAEs see it."""
    return {"mnist": (1, 32), "fashion": (1, 32), "cifar10": (3, 32), "celeba": (3, 64)}[dataset]
