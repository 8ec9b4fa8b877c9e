"""TAID decoding: the fused taid op against the PyTorch reference, eager and under torch.compile.

    python bench/bench_taid.py [--device cuda|cpu] [--dtype float32|bfloat16|float16]
                               [--T 16] [--batch 250] [--planes 1x32,3x32,1x64,3x64] [--reps 20]
                               [--providers alif_cuda reference reference+compile]
                               [--no-compile] [--no-save]

Sizes are FSVAE's (T=16, batch 250, C in {1, 3}, 32x32 and 64x64 planes). What is timed is
exactly the op, nothing around it:
  forward           y = fn(s, w) under torch.no_grad();
  forward+backward  y = fn(s, w), then torch.autograd.grad(y, (s, w), grad_outputs=g) with a
                    fixed random g made beforehand (no loss, no multiply, no sum).
Each provider runs on its own leaf copies of s and w. The providers of a mode are timed in turns
(one run of each, then the next round), so load from other processes on a shared machine falls
on all of them alike. For each provider and mode it prints the median time (CUDA events after
warm-up on a GPU, perf_counter on the CPU), the bandwidth over the
bytes the op must move (forward: read s, write y; backward: read s and grad_y, write grad_s), that
bandwidth as a share of this device's copy bandwidth measured in the same run, and the peak
memory beyond the inputs (GPU only). Every size first checks that the providers agree. Results
go to bench/results/taid_<device>.json and .md (taid_<dtype>_<device>.* for a dtype other than
float32).
"""
import argparse
import statistics
import time

import torch

import alif_cuda
from alif_cuda import taid, taid_ref
from common import command_line, copy_gbps, device_name, markdown_table, peak_extra_mb, sync, write_results

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
PLANES = [(1, 32), (3, 32), (1, 64), (3, 64)]  # (C, H = W)


class HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """The docstring as written, and every option's default."""


def time_in_turns(runs, device, reps, warmup=3):
    """{name: median ms} of each zero-argument callable in `runs`, timed round by round."""
    for run in runs.values():
        for _ in range(warmup):
            run()
    sync(device)
    times = {name: [] for name in runs}
    for _ in range(reps):
        for name, run in runs.items():
            if device.type == "cuda":
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                run()
                end.record()
                end.synchronize()
                times[name].append(start.elapsed_time(end))
            else:
                t0 = time.perf_counter()
                run()
                times[name].append((time.perf_counter() - t0) * 1e3)
    return {name: statistics.median(ts) for name, ts in times.items()}


PROVIDERS = ("alif_cuda", "reference", "reference+compile")


def providers(names):
    make = {"alif_cuda": lambda: taid, "reference": lambda: taid_ref,
            "reference+compile": lambda: torch.compile(taid_ref)}
    return {name: make[name]() for name in names}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                        help="cuda or cpu")
    parser.add_argument("--dtype", choices=DTYPES, default="float32", help="storage dtype of s, y and the gradients")
    parser.add_argument("--T", type=int, default=16, help="time steps")
    parser.add_argument("--batch", type=int, default=250, help="batch size B")
    parser.add_argument("--planes", default=",".join(f"{c}x{h}" for c, h in PLANES),
                        help="comma-separated CxH sizes (planes H x H, C channels)")
    parser.add_argument("--reps", type=int, default=20, help="timed runs per provider and mode (the median is kept)")
    parser.add_argument("--providers", nargs="+", choices=PROVIDERS, default=list(PROVIDERS),
                        help="what to time (reference is the eager loop, slow on a CPU)")
    parser.add_argument("--no-compile", action="store_true", help="skip the reference+compile provider")
    parser.add_argument("--no-save", action="store_true", help="print only; write nothing to bench/results")
    args = parser.parse_args()
    if min(args.T, args.batch, args.reps) < 1:
        parser.error("--T, --batch and --reps must be >= 1")
    try:
        planes = [tuple(int(v) for v in item.split("x")) for item in args.planes.split(",")]
    except ValueError:
        planes = None
    if not planes or any(len(cp) != 2 or min(cp) < 1 for cp in planes):
        parser.error(f"--planes must look like 1x32,3x64 (C x H, both >= 1), got {args.planes!r}")
    device = torch.device(args.device)
    if device.type == "cuda" and not (torch.cuda.is_available() and alif_cuda.cuda_kernels_available()):
        parser.error("--device cuda needs a visible GPU and a CUDA build of alif_cuda")
    dtype = DTYPES[args.dtype]

    names = [p for p in args.providers if not (args.no_compile and p == "reference+compile")]
    fns = providers(names)
    copy = copy_gbps(device)
    print(f"taid on {device_name(device)}, torch {torch.__version__}, {args.dtype}; "
          f"copy bandwidth {copy:.0f} GB/s (read + write)\n")
    esize = torch.tensor([], dtype=dtype).element_size()
    records, rows = [], []
    for C, H in planes:
        shape = (args.T, args.batch, C, H, H)
        s = torch.randn(shape, device=device, dtype=dtype).requires_grad_()
        w = ((torch.rand(args.T, args.T, device=device) * 2 - 1) * args.T ** -0.5).requires_grad_()
        g = torch.randn(shape[1:], device=device, dtype=dtype)
        s_bytes, y_bytes = s.numel() * esize, g.numel() * esize
        mode_bytes = {"forward": s_bytes + y_bytes, "forward+backward": 2 * s_bytes + y_bytes + s_bytes + y_bytes}
        with torch.no_grad():
            torch.testing.assert_close(taid(s, w), taid_ref(s, w), rtol=2e-2, atol=2e-2)
        runs = {mode: {} for mode in mode_bytes}
        for name, fn in fns.items():
            s_p, w_p = s.detach().clone().requires_grad_(), w.detach().clone().requires_grad_()

            def forward(fn=fn, s_p=s_p, w_p=w_p):
                with torch.no_grad():
                    fn(s_p, w_p)

            def forward_backward(fn=fn, s_p=s_p, w_p=w_p):
                torch.autograd.grad(fn(s_p, w_p), (s_p, w_p), grad_outputs=g)

            runs["forward"][name], runs["forward+backward"][name] = forward, forward_backward
        for mode, nbytes in mode_bytes.items():
            for name, ms in time_in_turns(runs[mode], device, args.reps).items():
                gbps = nbytes / (ms * 1e-3) / 1e9
                peak = peak_extra_mb(runs[mode][name], device)
                rec = dict(
                    provider=name, T=args.T, B=args.batch, C=C, H=H, W=H, dtype=args.dtype, mode=mode,
                    ms=round(ms, 4), gbps=round(gbps, 1), pct_of_copy=round(100 * gbps / copy, 1),
                    peak_mb=None if peak is None else round(peak, 1), copy_gbps=round(copy, 1),
                    device=device_name(device), torch=torch.__version__,
                )
                records.append(rec)
                rows.append([f"{C}x{H}x{H}", mode, name, f"{ms:.3f}", f"{gbps:.0f}",
                             f"{rec['pct_of_copy']:.0f}%", "-" if peak is None else f"{peak:.0f}"])
                print(f"  C={C} {H}x{H} {mode:16s} {name:18s} {ms:9.3f} ms {gbps:7.0f} GB/s", flush=True)
    table = markdown_table(
        [f"plane (C x H x W), T={args.T}, B={args.batch}", "mode", "provider", "ms", "GB/s", "of copy", "peak MB"],
        rows,
    )
    print("\n" + table)
    if not args.no_save:
        name = "taid" if args.dtype == "float32" else f"taid_{args.dtype}"
        path = write_results(name, device, records, table, command_line(__file__))
        print(f"\nwrote {path} and {path.with_suffix('.md')}")


if __name__ == "__main__":
    main()
