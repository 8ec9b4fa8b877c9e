"""Host overhead of one ALIF layer: the glue around the kernels, at a size where the kernels cost
nothing (T=2, N=1, one thread; forward+backward; median of many calls).

    python bench/bench_overhead.py [--device cpu|cuda] [--calls 2000] [--T 2] [--N 1] [--no-save]

Providers:
  raw ops     torch.ops.alif_cuda.alif_fwd then alif_bwd, called directly (no autograd): the floor.
  alif()      torch.autograd.grad(alif(x, tau, v_th), (x, tau, v_th), g): the op with its C++
              autograd.
  ALIF module torch.autograd.grad(layer(x), (x, tau_raw, v_th), g) for ALIF(tau_param="sigmoid"),
              the paper's layer (the op applies the sigmoid of tau_raw and its derivative itself).
  autograd floor
              torch.autograd.grad(x * tau, (x, tau), g): the same call on a one-multiply graph,
              what autograd itself costs whatever the op (not a target; context for the ratios).
  engine floor
              x * tau, then PyTorch's C++ autograd engine called directly
              (Variable._execution_engine.run_backward, the call torch.autograd.grad ends in): the
              engine's own cost without torch.autograd.grad's Python (context, not a target).
The providers are timed in turns (one call of each per round), the median of --calls rounds.
Targets (issue 14): alif() <= 1.3x raw ops, ALIF module <= 1.5x.
Writes bench/results/overhead_<device>.json and .md.
"""
import argparse
import statistics
import time

import torch

import alif_cuda
from alif_cuda import ALIF, alif
from torch.autograd import Variable

from common import command_line, device_name, markdown_table, sync, write_results


def median_us_in_turns(runs, device, calls, warmup=200):
    """{name: median µs} of each callable, timed round by round (one call of each per round), so
    that a slow phase of a noisy machine falls on every provider alike."""
    for fn in runs.values():
        for _ in range(warmup):
            fn()
    sync(device)
    times = {name: [] for name in runs}
    for _ in range(calls):
        for name, fn in runs.items():
            t0 = time.perf_counter()
            fn()
            sync(device)
            times[name].append((time.perf_counter() - t0) * 1e6)
    return {name: statistics.median(ts) for name, ts in times.items()}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--T", type=int, default=2)
    parser.add_argument("--N", type=int, default=1)
    parser.add_argument("--no-save", action="store_true")
    args = parser.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda" and not (torch.cuda.is_available() and alif_cuda.cuda_kernels_available()):
        parser.error("--device cuda needs a visible GPU and a CUDA build of alif_cuda")
    if args.calls < 1 or args.T < 1 or args.N < 1:
        parser.error("--calls, --T and --N must be >= 1")
    torch.set_num_threads(1)

    T, N = args.T, args.N
    x = torch.randn(T, N, device=device, requires_grad=True)
    tau = torch.tensor(0.25, device=device, requires_grad=True)
    v_th = torch.tensor(0.2, device=device, requires_grad=True)
    g = torch.randn(T, N, device=device)
    layer = ALIF().to(device)
    ops = torch.ops.alif_cuda
    opts = ("hard", False, "rect", 1.0, 2.0)

    def raw():
        spikes, u_last, u_ckpt = ops.alif_fwd(x.detach(), tau.detach(), v_th.detach(), None, None,
                                              opts[0], True, *opts[1:])
        return ops.alif_bwd(g, None, x.detach(), u_ckpt, None, tau.detach(), v_th.detach(), None,
                            *opts, False)

    runs = {
        "raw ops": raw,
        "alif()": lambda: torch.autograd.grad(alif(x, tau, v_th), (x, tau, v_th), g),
        "ALIF module": lambda: torch.autograd.grad(layer(x), (x, layer.tau_raw, layer.v_th), g),
        "autograd floor": lambda: torch.autograd.grad(x * tau, (x, tau), g),
        "engine floor": lambda: Variable._execution_engine.run_backward(
            (x * tau,), (g,), False, False, (x, tau), False, accumulate_grad=False),
    }
    targets = {"alif()": 1.3, "ALIF module": 1.5}
    us = median_us_in_turns(runs, device, args.calls)
    records, rows = [], []
    for name, t in us.items():
        ratio = t / us["raw ops"]
        target = targets.get(name)
        records.append(dict(provider=name, T=T, N=N, us=round(t, 2), ratio_to_raw=round(ratio, 3),
                            target=target, device=device_name(device), torch=torch.__version__))
        rows.append([name, f"{t:.1f}", f"{ratio:.2f}x", "-" if target is None else f"<= {target}x",
                     "-" if target is None else ("met" if ratio <= target else "missed")])
    table = markdown_table(["provider", "median us (fwd+bwd)", "vs raw ops", "target", ""], rows)
    print(f"overhead on {device_name(device)}, torch {torch.__version__}, T={T}, N={N}, one thread\n")
    print(table)
    if not args.no_save:
        path = write_results("overhead", device, records, table,
                             command_line(__file__))
        print(f"\nwrote {path} and {path.with_suffix('.md')}")


if __name__ == "__main__":
    main()
