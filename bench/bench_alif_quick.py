"""Quick benchmark: the fused alif op against the PyTorch reference loop alif_ref.

    python bench/bench_alif_quick.py [--device cpu|cuda] [--T 8] [--reps 20]

Times forward and forward+backward (exactly the op: autograd.grad(out, inputs, grad_outputs);
median of --reps runs after warm-up; CUDA events on a GPU, perf_counter on the CPU) over a few
neuron counts and prints a Markdown table with the speedup. It also checks, on every size, that
both providers give the same spikes.
"""
import argparse

import torch

import alif_cuda
from alif_cuda import alif, alif_ref
from common import time_ms


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--T", type=int, default=8)
    parser.add_argument("--sizes", type=int, nargs="+", default=[2**12, 2**16, 2**18])
    parser.add_argument("--reps", type=int, default=20)
    args = parser.parse_args()
    if args.T < 1 or args.reps < 1 or any(n < 1 for n in args.sizes):
        parser.error("--T, --reps and every --sizes value must be >= 1")
    device = torch.device(args.device)
    if device.type == "cuda" and not (torch.cuda.is_available() and alif_cuda.cuda_kernels_available()):
        parser.error("--device cuda needs a visible GPU and a CUDA build of alif_cuda")

    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({torch.get_num_threads()} threads)"
    print(f"alif vs alif_ref on {name}, torch {torch.__version__}, T={args.T}, float32, scalar tau/v_th\n")
    print("| neurons N | mode | alif_ref ms | alif ms | speedup |")
    print("|---:|---|---:|---:|---:|")
    for n in args.sizes:
        x = (torch.randn(args.T, n, device=device) * 0.6 + 0.15).requires_grad_()
        tau = torch.tensor(0.25, device=device, requires_grad=True)
        v_th = torch.tensor(0.2, device=device, requires_grad=True)
        grad = torch.randn(args.T, n, device=device)
        with torch.no_grad():
            if not torch.equal(alif(x, tau, v_th), alif_ref(x, tau, v_th)):
                raise SystemExit(f"spikes differ between alif and alif_ref at N={n}")
        for mode in ("forward", "forward+backward"):
            row = []
            for fn in (alif_ref, alif):
                if mode == "forward":
                    def run(fn=fn):
                        with torch.no_grad():
                            fn(x, tau, v_th)
                else:
                    def run(fn=fn):
                        torch.autograd.grad(fn(x, tau, v_th), (x, tau, v_th), grad)
                row.append(time_ms(run, device, args.reps))
            print(f"| {n} | {mode} | {row[0]:.3f} | {row[1]:.3f} | {row[0] / row[1]:.1f}x |")


if __name__ == "__main__":
    main()
