"""The generative models: tdBN, FSVAE (both decoders), the ANN VAE, their losses, sampling, and
where they follow FSVAE's code (posterior sample reuse, scheduled sampling, KL smoothing)."""
import copy
import math

import pytest
import torch

from alif_cuda.layers import TdBatchNorm
from models.fad import FEATURE_BATCH, FadAutoencoder, fad_config, fad_features
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


def _stats(x):
    """Per-channel mean and unbiased variance of (T, B, C, ...) over all but C."""
    flat = x.transpose(0, 2).flatten(1)
    return flat.mean(1), flat.var(1, unbiased=True)


def test_tdbn_running_statistics_warm_start_and_fsvae_rule():
    torch.manual_seed(0)
    batches = [torch.randn(3, 4, 2, 5) * 0.1 + 0.3 * i for i in range(15)]
    warm, cold = TdBatchNorm(2), TdBatchNorm(2, warm_start=False)
    mean_w, var_w = torch.zeros(2), torch.ones(2)
    mean_c, var_c = torch.zeros(2), torch.ones(2)
    for n, x in enumerate(batches, 1):
        warm(x), cold(x)
        m, v = _stats(x)
        w = max(0.1, 1 / n)  # the first batch replaces the initial (0, 1); then 1/n until 1/n < momentum
        mean_w, var_w = (1 - w) * mean_w + w * m, (1 - w) * var_w + w * v
        mean_c, var_c = 0.9 * mean_c + 0.1 * m, 0.9 * var_c + 0.1 * v  # FSVAE: momentum 0.1 throughout
        torch.testing.assert_close(warm.running_mean, mean_w)
        torch.testing.assert_close(warm.running_var, var_w)
        torch.testing.assert_close(cold.running_mean, mean_c)
        torch.testing.assert_close(cold.running_var, var_c)
    torch.testing.assert_close(warm.running_mean, torch.stack([_stats(x)[0] for x in batches[:10]]).mean(0) * 0.9 ** 5
                               + sum(0.1 * 0.9 ** (14 - i) * _stats(batches[i])[0] for i in range(10, 15)))
    # A restored module goes on counting from its checkpoint's batch count.
    again = TdBatchNorm(2)
    again.load_state_dict(TdBatchNorm(2).state_dict())
    x = batches[0]
    again(x)
    torch.testing.assert_close(again.running_mean, _stats(x)[0])
    with pytest.raises(ValueError, match=r"momentum must be in \(0, 1\], got 0"):
        TdBatchNorm(2, momentum=0)


def test_sampling_passes_leave_running_statistics_alone():
    """In training, the no-grad autoregressive passes use batch statistics but must not move the
    running ones; the pass with gradient does."""
    model = FSVAE(VAEConfig(T=4)).train()
    z = torch.rand(4, 2, 128).round()
    bn = model.prior[0][1]
    before = bn.running_mean.clone()
    count = bn.num_batches_tracked.clone()
    with frozen_batch_stats(model.prior):
        y = model.prior(z)
    assert torch.equal(bn.running_mean, before) and torch.equal(bn.num_batches_tracked, count)
    assert not bn.frozen
    torch.testing.assert_close(y, model.prior(z))  # batch statistics either way in training mode
    assert not torch.equal(bn.running_mean, before)


@pytest.mark.parametrize("kw", [dict(model="fsvae", decoder="taid"), dict(model="fsvae", decoder="membrane"),
                                dict(model="ann")],
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


def test_bernoulli_kl_is_fsvae_smoothed_form():
    # FSVAE: q log((q + .01) / (p + .01)) + (1 - q) log((1 - q + .01) / (1 - p + .01)), summed over
    # channels and steps, averaged over the batch.
    want = 0.5 * math.log(0.51 / 0.26) + 0.5 * math.log(0.51 / 0.76)
    assert bernoulli_kl(torch.full((1, 1, 1), 0.5), torch.full((1, 1, 1), 0.25)).item() == pytest.approx(want)
    silent = bernoulli_kl(torch.ones(1, 1, 1), torch.zeros(1, 1, 1)).item()
    assert silent == pytest.approx(math.log(1.01 / 0.01))  # bounded where a 1e-6 clamp gave 13.8
    q, p = torch.tensor([[[0.2, 0.9]], [[0.6, 0.0]]]), torch.tensor([[[0.5, 0.5]], [[0.1, 1.0]]])  # (T=2, B=1, 2)
    terms = [a * math.log((a + .01) / (b + .01)) + (1 - a) * math.log((1 - a + .01) / (1 - b + .01))
             for a, b in zip(q.flatten().tolist(), p.flatten().tolist())]
    assert bernoulli_kl(q, p).item() == pytest.approx(sum(terms), rel=1e-6)
    batch = torch.cat([q, torch.zeros_like(q)], 1), torch.cat([p, torch.zeros_like(p)], 1)
    assert bernoulli_kl(*batch).item() == pytest.approx(sum(terms) / 2, rel=1e-6)  # mean over the batch


def test_scheduled_sampling_probability_is_fsvae_schedule():
    # FSVAE: p = 0.1 + 0.2 * epoch / max_epoch, epochs counted from 0.
    assert scheduled_probability(0, 150) == pytest.approx(0.1)
    assert scheduled_probability(75, 150) == pytest.approx(0.2)
    assert scheduled_probability(149, 150) == pytest.approx(0.1 + 0.2 * 149 / 150)
    assert scheduled_probability(0, 1) == pytest.approx(0.1)


def _warmed_fsvae(T=6, seed=0):
    torch.manual_seed(seed)
    model = FSVAE(VAEConfig(T=T))
    x = torch.rand(8, 1, 32, 32) * 2 - 1
    model.train()
    model(x)  # one training pass gives the (warm-started) running statistics
    return model, x


def test_posterior_reuses_the_sampling_pass_indices():
    """The returned z_t (t < T-1) is read from the teacher-forced outputs with the indices the
    sampling pass drew, so it is what the posterior conditioned on. In eval mode the network is
    causal and uses fixed statistics, so the teacher-forced outputs at t equal the sampling
    pass's: then z_t must equal the conditioning input z_t exactly."""
    model, x = _warmed_fsvae()
    model.eval()
    seen = []
    model.posterior.register_forward_pre_hook(lambda m, args: seen.append(args[0].clone()))
    with torch.no_grad():
        z, q = model.sample_posterior(model.encode(x))
    conditioned = seen[-1][..., model.cfg.latent:]  # the teacher-forced pass's z input: [0, z_0 .. z_{T-2}]
    assert 0.05 < z.mean().item() < 0.95, "the posterior must fire for this test to mean anything"
    assert torch.equal(conditioned[0], torch.zeros_like(conditioned[0]))
    assert torch.equal(z[:-1], conditioned[1:])
    # And every z_t is one of the k outputs of its own channel.
    assert ((q == z[..., None]).any(-1)).all()


def test_posterior_reuse_in_training_mode_uses_the_recorded_indices(monkeypatch):
    import models.vae as vae

    model, x = _warmed_fsvae()
    drawn = []
    real = vae.one_of_k_indices
    monkeypatch.setattr(vae, "one_of_k_indices", lambda *a: drawn.append(real(*a)) or drawn[-1])
    z, q = model.sample_posterior(model.encode(x))
    assert len(drawn) == model.cfg.T  # T-1 in the sampling pass, one fresh for z_{T-1}
    for t, index in enumerate(drawn):
        torch.testing.assert_close(z[t], q[t].gather(-1, index).squeeze(-1), rtol=0, atol=0)


def _prior_inputs(model, z, p):
    seen = []
    handle = model.prior.register_forward_pre_hook(lambda m, args: seen.append(args[0].clone()))
    out = model.prior_of(z, p)
    handle.remove()
    return seen[-1], out


def _thresholded_prediction(model, inputs, t):
    """FSVAE's replacement for z_t: the prior's mean over k at step t given inputs[: t + 1], > 0.5."""
    with torch.no_grad(), frozen_batch_stats(model.prior):
        mean = model.prior(inputs[: t + 1])[t].unflatten(-1, (model.cfg.latent, model.cfg.k)).mean(-1)
    return mean, (mean > 0.5).float()


def test_scheduled_sampling_follows_fsvae():
    T = 12
    model, _ = _warmed_fsvae(T=T)
    torch.manual_seed(3)
    z = (torch.rand(T, 16, 128) < 0.3).float()
    teacher = torch.cat([torch.zeros(1, 16, 128), z[:-1]])
    inputs, _ = _prior_inputs(model, z, 0.0)
    assert torch.equal(inputs, teacher)  # p = 0: plain teacher forcing
    model.eval()
    assert torch.equal(_prior_inputs(model, z, 1.0)[0], teacher)  # training mode only
    model.train()
    torch.manual_seed(4)
    inputs, _ = _prior_inputs(model, z, 0.5)
    assert torch.equal(inputs[:6], teacher[:6])  # inputs up to z_4 are never replaced (FSVAE: t >= 5)
    replaced = []
    for t in range(5, T - 1):
        mean, want = _thresholded_prediction(model, inputs, t)
        replaced.append(not torch.equal(inputs[t + 1], teacher[t + 1]))
        if replaced[-1]:
            # One draw for the whole batch: a replaced step holds the thresholded mean for every
            # sample (a per-sample draw would mix it with the teacher's z); entries at exactly 0.5
            # are decided by FSVAE's 1e-3 noise.
            clear = (mean - 0.5).abs() > 1e-6
            assert torch.equal(inputs[t + 1][clear], want[clear]), f"step {t}"
    assert any(replaced) and not all(replaced), replaced  # seed 4 gives both kinds of step


def test_prior_input_is_detached_explicitly():
    model, _ = _warmed_fsvae()
    z = (torch.rand(6, 4, 128) < 0.3).float().requires_grad_()
    for p in (0.0, 1.0):
        model.prior_of(z, p).sum().backward()
        assert z.grad is None


def test_ann_vae_decoder_input_is_a_plain_linear():
    model = ANNVAE(VAEConfig(model="ann"))
    assert type(model.decoder_input) is torch.nn.Linear and model.decoder_input.bias is not None
    assert VAEConfig().kld_weight == pytest.approx(1 / 240)  # FSVAE's 1 / len(train loader), MNIST at 250


def test_bad_configs_are_rejected():
    for bad, msg in [(dict(model="gan"), "model must be one of"), (dict(decoder="rate"), "decoder must be one of"),
                     (dict(image_size=28), "image_size must be 32 or 64"),
                     (dict(latent_loss="l2"), "latent_loss must be one of")]:
        with pytest.raises(ValueError, match=msg):
            VAEConfig(**bad)


@pytest.mark.parametrize("dataset,latent,widths", [("mnist", 64, [32, 64, 128, 256]),
                                                   ("cifar10", 128, [32, 64, 128, 256]),
                                                   ("celeba", 128, [32, 64, 128, 256, 512])])
def test_fad_autoencoder_is_fsvae_design(dataset, latent, widths):
    ae = FadAutoencoder(fad_config(dataset))
    c = ae.cfg
    x = torch.rand(2, c.in_channels, c.image_size, c.image_size) * 2 - 1
    y = ae(x)
    assert y.shape == x.shape and y.abs().max() <= 1 and ae.features(x).shape == (2, latent)
    assert [m.out_channels for m in ae.encoder if isinstance(m, torch.nn.Conv2d)] == widths
    assert [(m.in_features, m.out_features) for m in ae.modules() if isinstance(m, torch.nn.Linear)] == \
        [(widths[-1] * 4, latent), (latent, widths[-1] * 4)]  # down to 2x2, and a plain linear back
    tconvs = [m for m in ae.decoder if isinstance(m, torch.nn.ConvTranspose2d)]
    up = list(reversed(widths))
    assert [(m.in_channels, m.out_channels, m.stride) for m in tconvs] == \
        [(a, b, (2, 2)) for a, b in zip(up, up[1:] + [32])] + [(32, c.in_channels, (1, 1))]
    kinds = [type(m).__name__ for m in ae.decoder][-5:]
    assert kinds == ["ConvTranspose2d", "BatchNorm2d", "LeakyReLU", "ConvTranspose2d", "Tanh"]
    assert isinstance(ANNVAE(VAEConfig()).decoder[-1], torch.nn.Tanh)


def test_fad_features_use_batch_statistics_in_batches_of_256():
    torch.manual_seed(0)
    ae = FadAutoencoder(fad_config("mnist"))
    ae.train()
    for _ in range(3):
        ae(torch.rand(32, 1, 32, 32) * 2 - 1)  # running statistics away from their initial values
    images = torch.rand(300, 1, 32, 32) * 2 - 1
    buffers = {k: v.clone() for k, v in ae.state_dict().items()}
    feats = fad_features(ae, images.split(70), "cpu")  # batches of 70 arrive; features in 256 + 44
    assert all(torch.equal(v, buffers[k]) for k, v in ae.state_dict().items())  # running stats untouched
    reference = copy.deepcopy(ae).train()  # BatchNorm in training mode: the batch's own statistics
    with torch.no_grad():
        want = torch.cat([reference.features(images[:FEATURE_BATCH]), reference.features(images[FEATURE_BATCH:])])
    torch.testing.assert_close(feats, want.double(), rtol=1e-5, atol=1e-5)
    with torch.no_grad():
        eval_feats = ae.eval().features(images).double()
    torch.testing.assert_close(fad_features(ae, [images], "cpu", bn="running"), eval_feats, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(feats, eval_feats, atol=1e-2)  # the two modes do differ
    with pytest.raises(ValueError, match="bn must be one of"):
        fad_features(ae, [images], "cpu", bn="eval")
