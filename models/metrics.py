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


IS_SPLITS = 10  # the Inception Score's chunks of samples, as in the paper's (and FSVAE's) code


def inception_score(probs: Tensor, splits: int = IS_SPLITS) -> Tuple[float, float]:
    """exp(E_x KL(p(y|x) || p(y))) over `splits` chunks of class probabilities (N, classes):
    (mean, std) over the chunks. A classifier that is uniform on every input scores 1."""
    p = probs.double()
    if p.dim() != 2 or p.shape[0] < splits:
        raise ValueError(f"inception_score: need (N, classes) probabilities with N >= splits={splits}, "
                         f"got {tuple(p.shape)}")
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
    """torchvision's Inception-v3 with ImageNet weights read from a local file (nothing can be
    downloaded), or None when no file is given (IS and FID are then reported as not computed).
    transform_input is off: the inputs are prepared by is_inputs / fid_inputs."""
    if weights is None:
        return None
    from torchvision.models import inception_v3

    net = inception_v3(weights=None, aux_logits=True, init_weights=False, transform_input=False)
    try:
        state = torch.load(weights, map_location="cpu", weights_only=True)
    except Exception as e:  # torch.load raises UnpicklingError, RuntimeError and others for what it cannot read
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise ValueError(f"--inception-weights {weights} could not be read as a state dict of tensors "
                         f"({type(e).__name__}: {first})") from None
    try:
        net.load_state_dict(state)
    except (RuntimeError, TypeError, AttributeError) as e:
        raise ValueError(f"--inception-weights {weights} is not a torchvision inception_v3 state dict: "
                         f"{str(e).splitlines()[0]}") from None
    return net.eval().to(device)


def _to_255_rgb(images: Tensor) -> Tensor:
    x = (images.float().clamp(-1, 1) + 1) * 127.5
    return x.repeat(1, 3, 1, 1) if x.shape[1] == 1 else x


def is_inputs(images: Tensor) -> Tensor:
    """Inception inputs for IS, FSVAE's way (its metrics/inception_score.py): images in [-1, 1]
    mapped to [0, 255] and fed as they are (no normalisation), grey repeated to 3 channels,
    bilinear resize to 299. Not what the weights were trained on, but what the paper's IS used."""
    return F.interpolate(_to_255_rgb(images), size=(299, 299), mode="bilinear", align_corners=False)


def _pil_bicubic(x: float, a: float = -0.5) -> float:
    x = abs(x)
    if x < 1:
        return ((a + 2) * x - (a + 3)) * x * x + 1
    if x < 2:
        return (((x - 5) * x + 8) * x - 4) * a
    return 0.0


def pil_bicubic_matrix(n_in: int, n_out: int) -> Tensor:
    """(n_out, n_in) weights of PIL's bicubic resize along one axis (Image.resize with
    Image.BICUBIC: the a = -0.5 kernel, widened by the scale when shrinking, taps clipped at the
    border and renormalised), float64."""
    scale = n_in / n_out
    filter_scale = max(scale, 1.0)
    support = 2.0 * filter_scale
    w = torch.zeros(n_out, n_in, dtype=torch.float64)
    for i in range(n_out):
        center = (i + 0.5) * scale
        lo, hi = max(int(center - support + 0.5), 0), min(int(center + support + 0.5), n_in)
        taps = [_pil_bicubic((j - center + 0.5) / filter_scale) for j in range(lo, hi)]
        total = sum(taps)
        for j, t in zip(range(lo, hi), taps):
            w[i, j] = t / total if total else 0.0
    return w


def fid_inputs(images: Tensor, size: int = 299) -> Tensor:
    """Inception inputs for FID following clean-fid's conventions (FSVAE's FID): images in
    [-1, 1] mapped to [0, 255], grey repeated to 3 channels, resized to 299 with PIL's bicubic
    filter per channel in float (clean-fid's "clean" resize), clipped to [0, 255], then scaled
    by (x - 128) / 128 as clean-fid's Inception does inside. The weights differ: clean-fid's is
    the TF FID Inception, these are torchvision's ImageNet weights (which take the same [-1, 1]
    range with transform_input off)."""
    x = _to_255_rgb(images).double()
    rows = pil_bicubic_matrix(x.shape[2], size).to(x.device)
    cols = pil_bicubic_matrix(x.shape[3], size).to(x.device)
    x = (rows @ x @ cols.T).clamp(0, 255)
    return ((x - 128) / 128).float()


@torch.no_grad()
def inception_outputs(net, images: Tensor) -> Tuple[Tensor, Tensor]:
    """(softmax class probabilities (N, 1000) from is_inputs, pool features (N, 2048) from
    fid_inputs) of a batch."""
    feats = {}
    handle = net.avgpool.register_forward_hook(lambda m, i, o: feats.update(pool=o.flatten(1)))
    try:
        probs = F.softmax(net(is_inputs(images)), dim=1)
        net(fid_inputs(images))
    finally:
        handle.remove()
    return probs, feats["pool"]


def constant_samples(samples: Tensor, tol: float = 1e-3) -> bool:
    """True when every sample is (nearly) the same image: the largest per-pixel standard
    deviation across samples is below `tol` (images in [-1, 1]). A silent generator gives this."""
    if samples.shape[0] < 2:
        return False
    return samples.float().flatten(1).std(0).max().item() < tol
