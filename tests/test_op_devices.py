"""Device checks that hold on every path (the C++ ops, the fake kernels torch.compile and meta
tensors use), and torch.func's transforms refused with a message that says what to use."""
import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode

from alif_cuda import alif, taid


def test_meta_parameter_with_cpu_input_is_rejected():
    x = torch.randn(3, 4)
    with pytest.raises(RuntimeError, match=r"tau must be on x's device \(cpu\), got meta"):
        alif(x, torch.tensor(0.5, device="meta"), 0.2)


def test_cpu_parameter_with_meta_input_is_rejected_by_the_fake_kernels():
    x = torch.randn(3, 4, device="meta")
    tau = torch.tensor(0.5)
    for call in (
        lambda: alif(x, tau, torch.tensor(0.2, device="meta")),
        lambda: torch.ops.alif_cuda.alif_fwd(x, tau, tau.to("meta"), None, None, "hard", True, False, "rect", 1.0, 2.0),
    ):
        with pytest.raises(RuntimeError, match=r"tau must be on x's device \(meta\), got cpu"):
            call()
    s = torch.randn(2, 1, 1, 2, 2, device="meta")
    with pytest.raises(RuntimeError, match=r"w must be on s's device \(meta\), got cpu"):
        taid(s, torch.randn(2, 2))


def test_meta_inputs_give_shapes():
    x = torch.randn(11, 2, 3, device="meta")
    spikes, u_last, u_ckpt = torch.ops.alif_cuda.alif_fwd(
        x, torch.tensor(0.5, device="meta"), torch.tensor(0.2, device="meta"), None, None, "hard", True,
        False, "rect", 1.0, 2.0,
    )
    assert spikes.shape == (11, 2, 3) and u_last.shape == (2, 3) and u_ckpt.shape == (1, 2, 3)


def test_fake_mode_mismatched_u0_is_rejected():
    with FakeTensorMode(allow_non_fake_inputs=False) as mode:
        x = mode.from_tensor(torch.randn(3, 2, 4))
        tau = mode.from_tensor(torch.tensor(0.5))
        u0 = mode.from_tensor(torch.zeros(2, 4, device="meta"))
        with pytest.raises(RuntimeError, match=r"u0 must be on x's device \(cpu\), got meta"):
            torch.ops.alif_cuda.alif(x, tau, tau, u0, None, "hard", False, "rect", 1.0, 2.0)


@pytest.mark.parametrize("transform", ["grad", "vjp", "jacrev"])
def test_torch_func_autodiff_says_what_to_use(transform):
    x = torch.randn(4, 3, dtype=torch.float64)

    def f(x):
        return alif(x, 0.5, 0.2).sum()

    call = {
        "grad": lambda: torch.func.grad(f)(x),
        "vjp": lambda: torch.func.vjp(f, x),
        "jacrev": lambda: torch.func.jacrev(f)(x),
    }[transform]
    with pytest.raises(RuntimeError, match=r"alif_cuda.alif: torch.func's .* Use torch.autograd.grad"):
        call()
    s = torch.randn(2, 1, 1, 2, 2)
    with pytest.raises(RuntimeError, match=r"alif_cuda.taid: torch.func's"):
        torch.func.grad(lambda s: taid(s, torch.randn(2, 2)).sum())(s)


def test_torch_func_vmap_works():
    x = torch.randn(2, 5, 3)
    out = torch.func.vmap(lambda x: alif(x, 0.5, 0.2))(x)
    assert torch.equal(out, torch.stack([alif(x[i], 0.5, 0.2) for i in range(2)]))
