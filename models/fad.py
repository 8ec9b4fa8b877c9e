"""The per-dataset autoencoder behind FAD (Frechet Autoencoder Distance): convs k3 s2 p1 with
BN + LeakyReLU over 32, 64, 128, 256 channels, a linear latent (64 for grey datasets, 128 for
colour), a mirrored decoder ending in tanh; trained with MSE on [-1, 1] images. FAD is the
Frechet distance between Gaussian fits of its latent over generated samples and the test set."""
from dataclasses import asdict, dataclass
from typing import Dict

from torch import Tensor, nn

CHANNELS = [32, 64, 128, 256]


@dataclass
class FadConfig:
    in_channels: int = 1
    image_size: int = 32
    latent: int = 64

    def to_dict(self) -> Dict:
        return asdict(self)


def fad_config(dataset: str) -> FadConfig:
    from .vae import dataset_channels

    channels, size = dataset_channels(dataset)
    return FadConfig(in_channels=channels, image_size=size, latent=64 if channels == 1 else 128)


class FadAutoencoder(nn.Module):
    def __init__(self, cfg: FadConfig):
        super().__init__()
        self.cfg = cfg
        side = cfg.image_size // 2 ** len(CHANNELS)
        layers, prev = [], cfg.in_channels
        for c in CHANNELS:
            layers += [nn.Conv2d(prev, c, 3, stride=2, padding=1), nn.BatchNorm2d(c), nn.LeakyReLU()]
            prev = c
        self.encoder = nn.Sequential(*layers, nn.Flatten(), nn.Linear(CHANNELS[-1] * side * side, cfg.latent))
        up, layers = list(reversed(CHANNELS)), []
        for a, b in zip(up, up[1:] + [up[-1]]):
            layers += [nn.ConvTranspose2d(a, b, 3, stride=2, padding=1, output_padding=1), nn.BatchNorm2d(b), nn.LeakyReLU()]
        self.decoder = nn.Sequential(
            nn.Linear(cfg.latent, CHANNELS[-1] * side * side), nn.Unflatten(1, (CHANNELS[-1], side, side)),
            *layers[:-3],  # the last upsampling is the final conv below
            nn.ConvTranspose2d(up[-1], cfg.in_channels, 3, stride=2, padding=1, output_padding=1), nn.Tanh(),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.decoder(self.encoder(x))

    def features(self, x: Tensor) -> Tensor:
        """The latent FAD compares: (B, latent)."""
        return self.encoder(x)
