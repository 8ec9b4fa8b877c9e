"""Generation metrics: Frechet distance between Gaussian fits of features (FAD with our own
autoencoder's latent, FID with Inception's pool features), Inception Score, and the helpers that
collect features. The arithmetic runs in float64."""
from typing import Iterable, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor


def gaussian_fit(features: Tensor) -> Tuple[Tensor, Tensor]:
    """Mean (D,) and unbiased covariance (D, D) of features (N, D), N >= 2."""
    f = features.double()
    if f.dim() != 2 or f.shape[0] < 2:
        raise ValueError(f"gaussian_fit: need (N, D) features with N >= 2, got shape {tuple(f.shape)}")
    return f.mean(0), torch.cov(f.T).reshape(f.shape[1], f.shape[1])


def _sqrt_psd(m: Tensor) -> Tensor:
    vals, vecs = torch.linalg.eigh((m + m.T) / 2)
    return (vecs * vals.clamp(min=0).sqrt()) @ vecs.T


def frechet_distance(mu1: Tensor, sigma1: Tensor, mu2: Tensor, sigma2: Tensor) -> float:
    """||mu1 - mu2||^2 + tr(S1 + S2 - 2 (S1 S2)^(1/2)) for Gaussians N(mu1, S1), N(mu2, S2).
    tr((S1 S2)^(1/2)) is computed as the sum of square roots of the eigenvalues of the symmetric
    PSD matrix S1^(1/2) S2 S1^(1/2), which has the same spectrum."""
    mu1, mu2, s1, s2 = (t.double() for t in (mu1, mu2, sigma1, sigma2))
    root1 = _sqrt_psd(s1)
    middle = root1 @ s2 @ root1
    tr_sqrt = torch.linalg.eigvalsh((middle + middle.T) / 2).clamp(min=0).sqrt().sum()
    return ((mu1 - mu2).square().sum() + s1.trace() + s2.trace() - 2 * tr_sqrt).item()


def inception_score(probs: Tensor, splits: int = 10) -> Tuple[float, float]:
    """exp(E_x KL(p(y|x) || p(y))) over `splits` chunks of class probabilities (N, classes):
    (mean, std) over the chunks. A classifier that is uniform on every input scores 1."""
    p = probs.double()
    if p.dim() != 2 or p.shape[0] < splits:
        raise ValueError(f"inception_score: need (N, classes) probabilities with N >= splits={splits}, got {tuple(p.shape)}")
    scores = []
    for chunk in p.chunk(splits):
        marginal = chunk.mean(0, keepdim=True)
        kl = (chunk * (chunk.clamp_min(1e-12).log() - marginal.clamp_min(1e-12).log())).sum(1)
        scores.append(kl.mean().exp())
    s = torch.stack(scores)
    return s.mean().item(), (s.std(unbiased=False).item() if len(scores) > 1 else 0.0)


@torch.no_grad()
def collect(fn, batches: Iterable[Tensor], device) -> Tensor:
    """fn applied to each batch on `device`, the results concatenated on the CPU."""
    return torch.cat([fn(b.to(device)).double().cpu() for b in batches])


def load_inception(weights: Optional[str], device):
    """torchvision's Inception-v3 with ImageNet weights read from a local file, or None when no
    file is given (IS and FID are then reported as not computed)."""
    if weights is None:
        return None
    from torchvision.models import inception_v3

    net = inception_v3(weights=None, aux_logits=True, init_weights=False)
    net.load_state_dict(torch.load(weights, map_location="cpu"))
    return net.eval().to(device)


def inception_inputs(images: Tensor) -> Tensor:
    """FSVAE's way: images in [-1, 1] mapped to [0, 255] with no ImageNet normalisation, grey
    repeated to 3 channels, bilinear resize to 299."""
    x = (images.float().clamp(-1, 1) + 1) * 127.5
    if x.shape[1] == 1:
        x = x.repeat(1, 3, 1, 1)
    return F.interpolate(x, size=(299, 299), mode="bilinear", align_corners=False)


@torch.no_grad()
def inception_outputs(net, images: Tensor) -> Tuple[Tensor, Tensor]:
    """(softmax class probabilities (N, 1000), pool features (N, 2048)) of a batch."""
    feats = {}
    handle = net.avgpool.register_forward_hook(lambda m, i, o: feats.update(pool=o.flatten(1)))
    logits = net(inception_inputs(images))
    handle.remove()
    return F.softmax(logits, dim=1), feats["pool"]
