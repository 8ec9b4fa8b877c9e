"""The CPU output pool (csrc/cpu_pool.h): large outputs reuse freed buffers, stay ordinary
tensors, respect the cap and the off switch, and change no result."""
import os
import pickle
import subprocess
import sys
import threading

import pytest
import torch

import alif_cuda
from alif_cuda import alif, alif_ref, cpu_cache_stats, empty_cpu_cache, taid, taid_ref

MiB = 2**20
BIG_N = 2**18  # (8, 2^18) float32 spikes: 8 MiB, pooled


def big_x(T=8, N=BIG_N, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(T, N, generator=g) * 0.6 + 0.15).to(dtype)


def test_freed_outputs_are_reused_without_new_allocations():
    x = big_x()
    alif(x, 0.25, 0.2)  # warm: the blocks of these sizes exist and are free again
    before = cpu_cache_stats()
    first = alif(x, 0.25, 0.2)
    ptr = first.data_ptr()
    del first
    second = alif(x, 0.25, 0.2)
    after = cpu_cache_stats()
    assert second.data_ptr() == ptr
    assert after["allocated"] == before["allocated"]
    assert after["reused"] >= before["reused"] + 2
    assert second.data_ptr() % (2 * MiB) == 0  # 2 MiB aligned: whole huge pages


def test_pooled_results_equal_the_reference_forward_and_backward():
    x = big_x(T=5, N=BIG_N + 13).requires_grad_()
    tau = torch.tensor(0.3, requires_grad=True)
    v_th = torch.tensor(0.2, requires_grad=True)
    g = torch.randn(x.shape, generator=torch.Generator().manual_seed(1))
    for _ in range(3):  # the later rounds run on reused (dirty) blocks
        out = alif(x, tau, v_th)
        grads = torch.autograd.grad(out, (x, tau, v_th), g)
        ref = alif_ref(x, tau, v_th)
        ref_grads = torch.autograd.grad(ref, (x, tau, v_th), g)
        assert torch.equal(out, ref)
        torch.testing.assert_close(grads[0], ref_grads[0], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(grads[1], ref_grads[1], rtol=1e-4, atol=1e-3)
        torch.testing.assert_close(grads[2], ref_grads[2], rtol=1e-4, atol=1e-3)


def test_taid_outputs_are_pooled_and_correct():
    g = torch.Generator().manual_seed(2)
    s = (torch.rand(4, 64, 3, 64, 64, generator=g) < 0.3).float().requires_grad_()  # y: 3 MiB
    w = torch.randn(4, 4, generator=g, requires_grad=True)
    taid(s.detach(), w.detach())
    before = cpu_cache_stats()
    y = taid(s, w)
    gy = torch.randn(y.shape, generator=g)
    gs, gw = torch.autograd.grad(y, (s, w), gy)
    assert cpu_cache_stats()["reused"] > before["reused"]
    y_ref = taid_ref(s, w)
    gs_ref, gw_ref = torch.autograd.grad(y_ref, (s, w), gy)
    torch.testing.assert_close(y, y_ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(gs, gs_ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(gw, gw_ref, rtol=1e-4, atol=1e-3)


def test_small_outputs_do_not_use_the_pool():
    x = big_x(N=1000)  # 32 KB
    before = cpu_cache_stats()
    for _ in range(3):
        alif(x, 0.25, 0.2)
    after = cpu_cache_stats()
    assert (after["allocated"], after["reused"]) == (before["allocated"], before["reused"])


def test_pooled_outputs_are_ordinary_tensors():
    x = big_x()
    out = alif(x, 0.25, 0.2)
    want = out.clone()
    out.resize_(9, BIG_N)  # resizable storage: grows into a new block, keeps the data
    assert torch.equal(out[:8], want)
    back = pickle.loads(pickle.dumps(out[:8]))
    assert torch.equal(back, want)
    shared = out[:8].clone()
    shared.share_memory_()
    assert shared.is_shared() and torch.equal(shared, want)
    out.add_(1)
    assert torch.equal(out[:8], want + 1)


def test_empty_cpu_cache_gives_blocks_back():
    x = big_x()
    alif(x, 0.25, 0.2)
    assert cpu_cache_stats()["held_bytes"] > 0
    empty_cpu_cache()
    stats = cpu_cache_stats()
    assert stats["held_bytes"] == 0 and stats["held_blocks"] == 0
    live = alif(x, 0.25, 0.2)  # a tensor alive across a clear keeps its memory
    empty_cpu_cache()
    assert torch.equal(live, alif_ref(x, 0.25, 0.2))


def test_outputs_freed_on_other_threads():
    x = big_x()
    want = alif_ref(x, 0.25, 0.2)
    results, errors = [], []

    def work():
        try:
            for _ in range(10):
                out = alif(x, 0.25, 0.2)
                results.append(torch.equal(out, want))
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(results) == 40 and all(results)


def run_with_env(code, value):
    env = dict(os.environ, ALIF_CUDA_CPU_CACHE_MB=value)
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)


CAP_PROBE = f"""
import torch, alif_cuda
x = torch.randn(8, {BIG_N})
outs = [alif_cuda.alif(x * (i + 1), 0.25, 0.2) for i in range(3)]  # three 8 MiB outputs
want = [alif_cuda.alif_ref(x * (i + 1), 0.25, 0.2) for i in range(3)]
assert all(torch.equal(a, b) for a, b in zip(outs, want))
del outs
s = alif_cuda.cpu_cache_stats()
print(s["held_bytes"], s["cap_bytes"], s["allocated"])
"""


def test_cap_bounds_what_the_pool_holds():
    r = run_with_env(CAP_PROBE, "12")
    assert r.returncode == 0, r.stderr
    held, cap, allocated = map(int, r.stdout.split())
    assert cap == 12 * MiB and 0 < held <= cap and allocated >= 3


def test_zero_turns_the_pool_off():
    r = run_with_env(CAP_PROBE, "0")
    assert r.returncode == 0, r.stderr
    held, cap, allocated = map(int, r.stdout.split())
    assert (held, cap, allocated) == (0, 0, 0)


@pytest.mark.parametrize("value", ["lots", "-1", "1.5"])
def test_bad_cap_is_a_clear_error(value):
    r = run_with_env(CAP_PROBE, value)
    assert r.returncode != 0
    assert "ALIF_CUDA_CPU_CACHE_MB must be a whole number of MiB" in r.stderr


def test_pool_functions_are_exported():
    assert alif_cuda.cpu_cache_stats is cpu_cache_stats and alif_cuda.empty_cpu_cache is empty_cpu_cache
    assert set(cpu_cache_stats()) == {"held_bytes", "held_blocks", "reused", "allocated", "cap_bytes"}


def test_profiler_sees_pooled_outputs():
    from torch.profiler import ProfilerActivity, profile

    x = big_x()
    alif(x, 0.25, 0.2)  # the block exists: the profiled call reuses it
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        out = alif(x, 0.25, 0.2)
        del out
    sizes = [e.nbytes() for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"]
    spikes = 8 * BIG_N * 4
    assert spikes in sizes and -spikes in sizes  # allocation and free, reported like PyTorch's own
