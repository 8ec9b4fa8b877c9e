"""The generative models: tdBN, FSVAE (both decoders), the ANN VAE, their losses, sampling."""
import pytest
import torch

from alif_cuda.layers import TdBatchNorm
from models.fad import FadAutoencoder, fad_config
from models.vae import (ANNVAE, FSVAE, VAEConfig, bernoulli_kl, build_vae, frozen_batch_stats, mmd_loss,
                        scheduled_probability, synaptic_trace)


def test_tdbn_normalises_over_time_batch_and_space_then_scales_by_alpha_vth():
    bn = TdBatchNorm(3, alpha=2.0, v_th=0.2)
    x = torch.randn(4, 5, 3, 6, 6) * 3 + 1
    y = bn(x)
    torch.testing.assert_close(y.mean(dim=(0, 1, 3, 4)), torch.zeros(3), atol=1e-5, rtol=0)
    torch.testing.assert_close(y.std(dim=(0, 1, 3, 4), unbiased=False), torch.full((3,), 0.4), atol=1e-4, rtol=0)
    assert bn(torch.randn(4, 5, 3)).shape == (4, 5, 3)  # after a linear layer
    with pytest.raises(ValueError, match=r"expected \(T, B, 3, \.\.\.\), got shape \(4, 5, 2\)"):
        bn(torch.randn(4, 5, 2))


@pytest.mark.parametrize(
    "kw,shape",
    [
        (dict(model="fsvae", decoder="taid"), (1, 32)),
        (dict(model="fsvae", decoder="membrane"), (1, 32)),
        (dict(model="fsvae", decoder="taid", in_channels=3, image_size=64, T=3), (3, 64)),
        (dict(model="ann"), (1, 32)),
        (dict(model="ann", in_channels=3, image_size=64), (3, 64)),
    ],
    ids=["fsvae-taid-32", "fsvae-membrane-32", "fsvae-taid-64", "ann-32", "ann-64"],
)
def test_shapes_through_every_model(kw, shape):
    torch.manual_seed(0)
    cfg = VAEConfig(**{"T": 4, **kw})
    model = build_vae(cfg)
    x = torch.rand(2, shape[0], shape[1], shape[1]) * 2 - 1
    out = model(x, 0.2)
    assert out["recon"].shape == x.shape
    loss, parts = model.loss(x, out)
    loss.backward()
    assert set(parts) == {"recon_loss", "latent_loss"} and torch.isfinite(loss)
    if cfg.model == "fsvae":
        assert out["q"].shape == out["p"].shape == (cfg.T, 2, cfg.latent, cfg.k)
        assert set(out["q"].unique().tolist()) <= {0.0, 1.0}
    model.eval()
    samples = model.sample(3)
    assert samples.shape == (3, *x.shape[1:]) and samples.min() >= -1 and samples.max() <= 1


def test_fsvae_structure_and_static_first_layer():
    model = FSVAE(VAEConfig(T=4))
    seen = {}
    model.first_neuron.register_forward_pre_hook(lambda m, i: seen.update(stride=i[0].stride(), shape=i[0].shape))
    z, q = model.sample_posterior(model.encode(torch.rand(3, 1, 32, 32)))
    assert seen["shape"] == (4, 3, 32, 16, 16) and seen["stride"][0] == 0
    assert z.shape == (4, 3, 128) and set(z.unique().tolist()) <= {0.0, 1.0}
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert [c.out_channels for c in convs] == [32, 64, 128, 256, 1]
    tconvs = [m for m in model.modules() if isinstance(m, torch.nn.ConvTranspose2d)]
    assert [(t.in_channels, t.out_channels) for t in tconvs] == [(256, 128), (128, 64), (64, 32), (32, 32)]
    widths = [m.out_features for m in model.posterior.modules() if isinstance(m, torch.nn.Linear)]
    assert widths == [256, 512, 128 * 20]
    assert model.posterior[0][0].module.in_features == 256 and model.prior[0][0].module.in_features == 128
    assert all(not p.requires_grad or "tau" not in n for n, p in model.named_parameters())  # fixed LIF by default


def test_sampling_passes_leave_running_statistics_alone():
    """In training, the no-grad autoregressive passes use batch statistics but must not move the
    running ones; the pass with gradient does."""
    model = FSVAE(VAEConfig(T=4)).train()
    z = torch.rand(4, 2, 128).round()
    bn = model.prior[0][1]
    before = bn.running_mean.clone()
    with frozen_batch_stats(model.prior):
        model.prior(z)
    assert torch.equal(bn.running_mean, before)
    model.prior(z)
    assert not torch.equal(bn.running_mean, before)


@pytest.mark.parametrize("kw", [dict(model="fsvae", decoder="taid"), dict(model="fsvae", decoder="membrane"), dict(model="ann")],
                         ids=["fsvae-taid", "fsvae-membrane", "ann"])
def test_loss_decreases_on_a_fixed_batch(kw):
    torch.manual_seed(0)
    model = build_vae(VAEConfig(T=4, **kw))
    x = torch.rand(8, 1, 32, 32) * 2 - 1
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3)
    losses = []
    for _ in range(25):
        torch.manual_seed(1)  # the same posterior draws every step: a fixed objective
        loss, _ = model.loss(x, model(x))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.7 * losses[0]


def test_synaptic_trace_mmd_and_bernoulli_kl_arithmetic():
    p = torch.tensor([1.0, 0.0, 1.0]).view(3, 1, 1)
    torch.testing.assert_close(synaptic_trace(p).flatten(), torch.tensor([0.5, 0.25, 0.625]))
    q = torch.rand(5, 2, 4)
    assert mmd_loss(q, q).item() == 0
    torch.testing.assert_close(mmd_loss(torch.ones(2, 1, 1), torch.zeros(2, 1, 1)), torch.tensor((0.25 + 0.5625) / 2))
    assert bernoulli_kl(q, q).abs().item() < 1e-6
    want = 0.5 * torch.log(torch.tensor(0.5 / 0.25)) + 0.5 * torch.log(torch.tensor(0.5 / 0.75))
    torch.testing.assert_close(bernoulli_kl(torch.full((1, 1, 1), 0.5), torch.full((1, 1, 1), 0.25)), want)


def test_scheduled_sampling_probability_rises_from_0_1_to_0_3():
    assert scheduled_probability(0, 150) == pytest.approx(0.1)
    assert scheduled_probability(149, 150) == pytest.approx(0.3)
    assert scheduled_probability(0, 1) == pytest.approx(0.1)


def test_bad_configs_are_rejected():
    for bad, msg in [(dict(model="gan"), "model must be one of"), (dict(decoder="rate"), "decoder must be one of"),
                     (dict(image_size=28), "image_size must be 32 or 64"), (dict(latent_loss="l2"), "latent_loss must be one of")]:
        with pytest.raises(ValueError, match=msg):
            VAEConfig(**bad)


@pytest.mark.parametrize("dataset,latent", [("mnist", 64), ("cifar10", 128), ("celeba", 128)])
def test_fad_autoencoder_shapes(dataset, latent):
    ae = FadAutoencoder(fad_config(dataset))
    c = ae.cfg
    x = torch.rand(2, c.in_channels, c.image_size, c.image_size) * 2 - 1
    y = ae(x)
    assert y.shape == x.shape and y.abs().max() <= 1 and ae.features(x).shape == (2, latent)
    assert isinstance(ANNVAE(VAEConfig()).decoder[-1], torch.nn.Tanh)
