"""The per-dataset autoencoder behind FAD (Frechet Autoencoder Distance), FSVAE's design: convs
k3 s2 p1 with BN + LeakyReLU down to 2x2 (32, 64, 128, 256 channels for 32x32 images, then 512
for 64x64 CelebA), a linear latent (64 for grey datasets, 128 for colour); the decoder a plain
linear back to 2x2, transposed convs k3 s2 p1 (output padding 1) with BN + LeakyReLU up to the
first width, one more such stride-2 transposed conv at that width, and a stride-1 k3 transposed
conv to the image channels, then tanh. Trained with MSE on [-1, 1] images.

FAD is the Frechet distance between Gaussian fits of the latent over generated samples and the
test set. As in FSVAE, the features are computed with the BatchNorms in batch-statistics mode
(FSVAE never puts this network in eval mode), in batches of 256 for generated and reference
images alike: see :func:`batch_stat_features`."""
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import Dict, Iterable, List

import torch
from torch import Tensor, nn

FEATURE_BATCH = 256  # FSVAE's batch for both the generated and the test images
FEATURE_BN = ("batch", "running")


@dataclass
class FadConfig:
    in_channels: int = 1
    image_size: int = 32
    latent: int = 64

    @property
    def channels(self) -> List[int]:
        """Encoder widths: four stride-2 convs take 32x32 to 2x2, five take 64x64 there."""
        return [32, 64, 128, 256] if self.image_size == 32 else [32, 64, 128, 256, 512]

    def __post_init__(self):
        if self.image_size not in (32, 64):
            raise ValueError(f"FadConfig: image_size must be 32 or 64, got {self.image_size}")

    def to_dict(self) -> Dict:
        return asdict(self)


def fad_config(dataset: str) -> FadConfig:
    from .vae import dataset_channels

    channels, size = dataset_channels(dataset)
    return FadConfig(in_channels=channels, image_size=size, latent=64 if channels == 1 else 128)


def _block(conv: nn.Module, channels: int) -> List[nn.Module]:
    return [conv, nn.BatchNorm2d(channels), nn.LeakyReLU()]


class FadAutoencoder(nn.Module):
    def __init__(self, cfg: FadConfig):
        super().__init__()
        self.cfg = cfg
        ch = cfg.channels
        layers, prev = [], cfg.in_channels
        for c in ch:
            layers += _block(nn.Conv2d(prev, c, 3, stride=2, padding=1), c)
            prev = c
        self.encoder = nn.Sequential(*layers, nn.Flatten(), nn.Linear(ch[-1] * 4, cfg.latent))
        up, layers = list(reversed(ch)), []
        for a, b in zip(up, up[1:] + [up[-1]]):
            layers += _block(nn.ConvTranspose2d(a, b, 3, stride=2, padding=1, output_padding=1), b)
        self.decoder = nn.Sequential(
            nn.Linear(cfg.latent, ch[-1] * 4), nn.Unflatten(1, (ch[-1], 2, 2)), *layers,
            nn.ConvTranspose2d(ch[0], cfg.in_channels, 3, padding=1), nn.Tanh(),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.decoder(self.encoder(x))

    def features(self, x: Tensor) -> Tensor:
        """The latent FAD compares: (B, latent)."""
        return self.encoder(x)


@contextmanager
def batch_statistics(model: nn.Module):
    """Every BatchNorm of `model` normalises with the batch's own statistics and leaves its
    running statistics (and batch count) untouched; the previous modes come back afterwards."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [(m.training, m.track_running_stats) for m in norms]
    for m in norms:
        m.train()
        m.track_running_stats = False
    try:
        yield
    finally:
        for m, (training, track) in zip(norms, saved):
            m.train(training)
            m.track_running_stats = track


@torch.no_grad()
def fad_features(ae: FadAutoencoder, images: Iterable[Tensor], device, bn: str = "batch") -> Tensor:
    """The FAD latent (N, latent) of every image, float64 on the CPU. `images` yields batches;
    they are regrouped into batches of FEATURE_BATCH (the last one may be smaller), because with
    bn="batch" (FSVAE's way) each feature depends on its batch's statistics. bn="running" uses
    the BatchNorms' running statistics (eval mode) instead."""
    if bn not in FEATURE_BN:
        raise ValueError(f"fad_features: bn must be one of {FEATURE_BN}, got {bn!r}")
    ae.eval()
    out, pending, count = [], [], 0
    with batch_statistics(ae) if bn == "batch" else torch.no_grad():
        def flush(batch):
            out.append(ae.features(batch.to(device)).double().cpu())

        for b in images:
            pending.append(b)
            count += b.shape[0]
            while count >= FEATURE_BATCH:
                joined = torch.cat(pending)
                flush(joined[:FEATURE_BATCH])
                rest = joined[FEATURE_BATCH:]
                pending, count = ([rest] if rest.shape[0] else []), rest.shape[0]
        if count:
            flush(torch.cat(pending))
    return torch.cat(out)
