"""The spiking and decoder modules: parameters, forward through the ops, state, repr, bad arguments."""
import math

import pytest
import torch

import alif_cuda
from alif_cuda import ALIF, alif_ref
from conftest import device_params


@pytest.mark.parametrize("device", device_params())
@pytest.mark.parametrize("tau_param", ["sigmoid", "direct"])
@pytest.mark.parametrize("per_channel", [None, 3])
def test_module_matches_reference_and_learns(device, tau_param, per_channel):
    torch.manual_seed(0)
    neuron = ALIF(tau=0.3, v_th=0.25, per_channel=per_channel, tau_param=tau_param,
                  reset="soft", surrogate="atan", detach_reset=True).to(device)
    torch.testing.assert_close(neuron.tau, torch.full(neuron.tau.shape, 0.3, device=device))
    x = torch.randn(6, 2, 3, 4, device=device)
    out = neuron(x)
    # The reference with the parameterisation outside the op: tau = sigmoid(tau_raw) by autograd.
    tau_raw = neuron.tau_raw.detach().clone().requires_grad_()
    v_th = neuron.v_th.detach().clone().requires_grad_()
    tau = torch.sigmoid(tau_raw) if tau_param == "sigmoid" else tau_raw
    want = alif_ref(x, tau, v_th, surrogate="atan", reset="soft", detach_reset=True)
    assert torch.equal(out, want)
    g = torch.randn(out.shape, device=device)
    (out * g).sum().backward()
    (want * g).sum().backward()
    assert neuron.tau_raw.grad.shape == neuron.tau_raw.shape
    torch.testing.assert_close(neuron.tau_raw.grad, tau_raw.grad, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(neuron.v_th.grad, v_th.grad, rtol=1e-4, atol=1e-5)
    assert tau_raw.grad.abs().max() > 0 and v_th.grad.abs().max() > 0


def test_fixed_neuron_has_no_parameters():
    neuron = ALIF(learnable=False)
    assert list(neuron.parameters()) == []
    assert set(neuron.state_dict()) == {"tau_raw", "v_th"}
    torch.testing.assert_close(neuron.tau, torch.tensor(0.25))


def test_sigmoid_tau_stays_in_unit_interval_while_learning():
    neuron = ALIF(tau=0.9)
    with torch.no_grad():
        neuron.tau_raw += 100.0
    assert 0 < neuron.tau.item() <= 1


def test_stateful_chunks_equal_one_sequence():
    torch.manual_seed(1)
    x = torch.randn(10, 4, 5, dtype=torch.float64)
    whole = ALIF(tau=0.4, v_th=0.3).double()
    chunked = ALIF(tau=0.4, v_th=0.3, stateful=True).double()
    out = whole(x)
    out_c = torch.cat([chunked(x[:4]), chunked(x[4:])])
    assert torch.equal(out, out_c)
    out.sum().backward()
    out_c.sum().backward()  # BPTT across the two chunks
    torch.testing.assert_close(chunked.tau_raw.grad, whole.tau_raw.grad)
    torch.testing.assert_close(chunked.v_th.grad, whole.v_th.grad)
    chunked.reset()
    assert chunked.state is None
    assert torch.equal(chunked(x), out)
    chunked.detach()
    assert chunked.state.grad_fn is None
    with pytest.raises(ValueError, match=r"kept state has shape \(4, 5\).*call reset\(\)"):
        chunked(x[:, :2])
    chunked.reset_state()
    assert chunked.state is None


def test_reset_mode_is_an_attribute_and_reset_a_method():
    """reset= stays the constructor's argument; the attribute is reset_mode, so that reset() can be
    the state reset SpikingJelly's functional.reset_net calls."""
    neuron = ALIF(reset="soft", stateful=True)
    assert neuron.reset_mode == "soft" and callable(neuron.reset)
    neuron(torch.randn(3, 2, 4))
    neuron.reset()
    assert neuron.state is None


@pytest.mark.parametrize("per_channel", [None, 3])
def test_single_step_mode_keeps_the_state_between_calls(per_channel):
    torch.manual_seed(0)
    x = torch.randn(7, 2, 3, 4, dtype=torch.float64, requires_grad=True)
    multi = ALIF(tau=0.4, v_th=0.3, per_channel=per_channel, surrogate="atan", alpha=2.0).double()
    single = ALIF(tau=0.4, v_th=0.3, per_channel=per_channel, surrogate="atan", alpha=2.0, step_mode="s").double()
    want = multi(x)
    got = torch.stack([single(x[t]) for t in range(7)])
    assert torch.equal(got, want)
    (g_want,) = torch.autograd.grad(want.sum(), x)
    (g_got,) = torch.autograd.grad(got.sum(), x)
    torch.testing.assert_close(g_got, g_want)
    single.reset()
    assert torch.equal(single(x[0]), want[0])
    with pytest.raises(ValueError, match=r"kept state has shape \(2, 3, 4\).*call reset\(\)"):
        single(x[0, :1])


def test_decay_input_scales_the_input_by_one_minus_tau():
    torch.manual_seed(0)
    x = torch.randn(6, 2, 5, dtype=torch.float64) * 2 + 0.5
    neuron = ALIF(tau=0.3, v_th=0.25, decay_input=True, reset="soft").double()
    want = alif_ref(x, neuron.tau, neuron.v_th, reset="soft", decay_input=True)
    assert torch.equal(neuron(x), want)
    assert not torch.equal(want, alif_ref(x, neuron.tau, neuron.v_th, reset="soft"))
    assert "decay_input=True" in repr(neuron)


@pytest.mark.parametrize("step_mode,shape,match", [
    ("m", (32,), r"step_mode='m' expects time-major input \(T, B, \.\.\.\), got shape \[32\].*step_mode='s'"),
    ("s", (), r"step_mode='s' expects one time step \(B, \.\.\.\), got a 0-dim tensor"),
])
def test_input_that_cannot_be_time_major_is_refused(step_mode, shape, match):
    with pytest.raises(ValueError, match=match):
        ALIF(step_mode=step_mode)(torch.zeros(shape))


def test_bad_step_mode_and_surrogate_object():
    with pytest.raises(ValueError, match=r"step_mode must be one of \('m', 's'\), got 'x'"):
        ALIF(step_mode="x")
    neuron = ALIF()
    with pytest.raises(ValueError, match="step_mode must be one of"):
        neuron.step_mode = "multi"
    with pytest.raises(TypeError, match="surrogate must be a name .* or a SpikingJelly surrogate object.*got function"):
        ALIF(surrogate=lambda d: d)


def test_extra_repr_shows_values_and_options():
    text = repr(ALIF(tau=0.25, v_th=0.2, surrogate="atan", reset="soft"))
    assert "tau=0.25" in text and "v_th=0.2" in text
    assert "surrogate=atan(alpha=2)" in text and "reset=soft" in text
    assert "per_channel=8" in repr(ALIF(per_channel=8))


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(tau=1.0), r"tau must be in \(0, 1\)"),
        (dict(tau=math.nan, tau_param="direct"), "tau must be finite"),
        (dict(v_th=math.inf), "v_th must be finite"),
        (dict(per_channel=0), "per_channel must be None or a positive int"),
        (dict(tau_param="exp"), "tau_param must be one of"),
        (dict(surrogate="box"), "surrogate must be one of"),
        (dict(reset="none"), "reset must be one of"),
    ],
)
def test_bad_constructor_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ALIF(**kwargs)


def test_per_channel_size_mismatch_is_reported():
    with pytest.raises(RuntimeError, match=r"tau must have shape \(\) or \(4,\)"):
        ALIF(per_channel=3)(torch.zeros(2, 1, 4, 5))


def test_taid_module_initialises_like_conv1d():
    """w is drawn exactly as PyTorch's default Conv1d(T, T, 1) weight."""
    for T in (1, 4, 16):
        torch.manual_seed(7)
        conv = torch.nn.Conv1d(T, T, 1)
        torch.manual_seed(7)
        module = alif_cuda.TAID(T)
        assert torch.equal(module.w.detach(), conv.weight.detach().squeeze(-1))
        assert module.w.abs().max() <= T ** -0.5


def test_taid_module_forward_and_gradient():
    torch.manual_seed(0)
    module = alif_cuda.TAID(6, reduce="mean")
    s = torch.randn(6, 2, 3, 4, 5, dtype=torch.float64, requires_grad=True)
    y = module.double()(s)
    y_ref = alif_cuda.taid_ref(s, module.w, "mean")
    torch.testing.assert_close(y, y_ref)
    y.square().sum().backward()
    assert module.w.grad is not None and module.w.grad.abs().sum() > 0
    assert "T=6, reduce=mean" in repr(module)


def test_membrane_decoder_is_fsvae_leaky_integrator():
    T = 5
    s = torch.randn(T, 2, 1, 3, 3, dtype=torch.float64)
    want = torch.zeros_like(s[0])
    for t in range(T):  # a non-firing leaky integrator with decay 0.8
        want = 0.8 * want + s[t]
    torch.testing.assert_close(alif_cuda.MembraneDecoder(T)(s), want)
    assert list(alif_cuda.MembraneDecoder(T).state_dict()) == []


def test_make_decoder_by_name():
    assert isinstance(alif_cuda.make_decoder("taid", 16), alif_cuda.TAID)
    assert isinstance(alif_cuda.make_decoder("membrane", 16, decay=0.9), alif_cuda.MembraneDecoder)
    assert alif_cuda.make_decoder("taid", 8, reduce="mean").reduce == "mean"


def test_use_reference_ops_switches_the_modules_to_the_references():
    torch.manual_seed(0)
    neuron, decoder = ALIF(), alif_cuda.TAID(4)
    x = torch.randn(4, 2, 3, 5, 5, requires_grad=True)
    fused = decoder(neuron(x) + x)
    with alif_cuda.use_reference_ops():
        spikes_ref = neuron(x)
        ref = decoder(spikes_ref + x)
        assert "AlifFunction" not in spikes_ref.grad_fn.name()
    assert "AlifFunction" in neuron(x).grad_fn.name()  # switched back on exit
    torch.testing.assert_close(fused, ref)
    g_fused = torch.autograd.grad(fused.sum(), x)[0]
    g_ref = torch.autograd.grad(ref.sum(), x)[0]
    torch.testing.assert_close(g_fused, g_ref)
