"""The alif op against the alternatives a user has: providers side by side, one run, one device.

    python bench/bench_alif.py [--device cuda] [--T 4 8 16 32] [--N 16 20 24] [--dtypes float32 bfloat16]
                               [--providers alif_cuda reference reference+compile spikingjelly]
                               [--copy-mb MB] [--reps 20] [--profile] [--no-save]

Providers: `alif_cuda` (the fused op: the backward replays the forward from x), `reference`
(alif_ref, an eager loop), `reference+compile` (alif_ref under torch.compile), `spikingjelly`
(SpikingJelly 2.0 plif_multi_step with decay_input=False and hard reset to 0: the same dynamics
with a learnable decay sigmoid(w) = 1 - tau; when importable).
Modes: `forward` (training forward, saving what backward needs), `forward+backward`,
`inference` (forward under no_grad) and `static forward+backward` (x expanded over T from (B, ...)).
What is timed is exactly the op: forward+backward is
`torch.autograd.grad(out, inputs, grad_outputs=g)` over the provider's own inputs (x, tau, v_th;
SpikingJelly: x, w), with g made beforehand; no loss, no extra elementwise work.
For each: median ms (CUDA events after warm-up; perf_counter on the CPU), GB/s over the bytes the
op must move at the least (training forward+backward: x read and spikes written, then x and
grad read and grad_x written = 20 B per neuron-step in float32, 10 in bfloat16), the share of the
device's copy bandwidth measured in this run, and peak extra memory (CUDA only).
Writes bench/results/alif_<device>.json, .md and .png (GB/s against N per provider).
--profile writes a torch.profiler trace (bench/results/alif_trace_<device>.json) of the fused op
at the largest size and prints the Nsight Compute command line for its kernels.
The printed table's columns (read by bench/gpu_check/): provider, dtype, T, N, mode, ms, GB/s,
of copy, peak MB.
"""
import argparse
import sys

import torch

import alif_cuda
from alif_cuda import alif, alif_ref
from common import (RESULTS_DIR, command_line, copy_gbps, device_name, device_slug, markdown_table, peak_extra_mb,
                    time_ms, write_results)

DTYPES = {"float32": torch.float32, "float64": torch.float64, "bfloat16": torch.bfloat16, "float16": torch.float16}
PROVIDERS = ("alif_cuda", "reference", "reference+compile", "spikingjelly")


def spikingjelly_provider():
    """SpikingJelly's PLIF multi-step kernel configured as ALIF (hard reset to 0, no input decay:
    h = v (1 - sigmoid(w)) + x, so tau = 1 - sigmoid(w)), or None when it is not installed.
    Returns make(x, tau, v_th) -> (fn, inputs): fn(*inputs) gives the spikes."""
    try:
        from spikingjelly.activation_based.functional import plif_multi_step
    except ImportError:
        return None

    def make(x, tau, v_th):
        w = torch.logit(1 - tau.detach().float()).requires_grad_()
        v0 = torch.zeros(x.shape[1:], device=x.device, dtype=torch.float32)
        threshold = float(v_th)

        def run(x, w):
            return plif_multi_step(x, v0, w, False, threshold, 0.0, None, False, False)[0]

        return run, (x, w)

    return make


def own_inputs(fn):
    """A provider whose inputs are (x, tau, v_th) as given."""
    return lambda x, tau, v_th: (fn, (x, tau, v_th))


def providers(names):
    out = {}
    for name in names:
        if name == "alif_cuda":
            out[name] = own_inputs(alif)
        elif name == "reference":
            out[name] = own_inputs(alif_ref)
        elif name == "reference+compile":
            out[name] = own_inputs(torch.compile(alif_ref))
        elif name == "spikingjelly":
            make = spikingjelly_provider()
            if make is None:
                print("spikingjelly is not installed: skipping that provider", file=sys.stderr)
            else:
                out[name] = make
    return out


def mode_bytes(mode, T, N, esize):
    """Bytes the op must move at the least: the forward reads x and writes spikes; the backward
    reads x and grad and writes grad_x; a static x is read once and its gradient written once."""
    if mode in ("inference", "forward"):
        return 2 * T * N * esize
    if mode == "forward+backward":
        return 5 * T * N * esize
    return 2 * N * esize + 2 * T * N * esize  # static: x, grad_x once; spikes, grad per step


def grad_run(fn, inputs, g):
    """forward+backward of exactly the op: autograd.grad(out, inputs, grad_outputs=g)."""
    return lambda: torch.autograd.grad(fn(*inputs), inputs, g)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--T", type=int, nargs="+", default=[4, 8, 16, 32])
    parser.add_argument("--N", type=int, nargs="+", default=[16, 20, 24], help="log2 of neurons per step")
    parser.add_argument("--dtypes", nargs="+", choices=DTYPES, default=["float32", "bfloat16"])
    parser.add_argument("--providers", nargs="+", choices=PROVIDERS, default=list(PROVIDERS))
    parser.add_argument("--max-elements", type=int, default=2**27, help="skip sizes with T*N above this (memory)")
    parser.add_argument("--reps", type=int, default=20)
    parser.add_argument("--copy-mb", type=int, default=None,
                        help="size of the copy that measures bandwidth (default 1024 MB on CUDA, 256 MB on the CPU)")
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--no-save", action="store_true")
    args = parser.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda" and not (torch.cuda.is_available() and alif_cuda.cuda_kernels_available()):
        parser.error("--device cuda needs a visible GPU and a CUDA build of alif_cuda")
    if min(args.T) < 1 or min(args.N) < 0 or args.reps < 1:
        parser.error("--T must be >= 1, --N >= 0 and --reps >= 1")

    copy = copy_gbps(device, args.copy_mb)
    print(f"alif on {device_name(device)}, torch {torch.__version__}; copy bandwidth {copy:.0f} GB/s\n", flush=True)
    fns = providers(args.providers)
    records, rows = [], []
    for dtype_name in args.dtypes:
        dtype = DTYPES[dtype_name]
        esize = torch.tensor([], dtype=dtype).element_size()
        for T in args.T:
            for logn in args.N:
                N = 2**logn
                if T * N > args.max_elements:
                    continue
                x = (torch.randn(T, N, device=device) * 0.6 + 0.15).to(dtype).requires_grad_()
                base = (torch.randn(N, device=device) * 0.6 + 0.15).to(dtype).requires_grad_()
                g = torch.randn(T, N, device=device).to(dtype)
                tau = torch.tensor(0.25, device=device, requires_grad=True)
                v_th = torch.tensor(0.2, device=device, requires_grad=True)
                for name, make in fns.items():
                    fn, inputs = make(x, tau, v_th)
                    fn_s, inputs_s = make(base.unsqueeze(0).expand(T, N), tau, v_th)
                    runs = {
                        "forward": lambda fn=fn, inputs=inputs: fn(*inputs),
                        "forward+backward": grad_run(fn, inputs, g),
                        "inference": lambda fn=fn, inputs=inputs: _no_grad(fn, inputs),
                        # the gradient is owed to base, the tensor x was expanded from
                        "static forward+backward": lambda fn=fn_s, inputs=inputs_s: torch.autograd.grad(
                            fn(*inputs), (base, *inputs[1:]), g),
                    }
                    for mode, run in runs.items():
                        try:
                            ms = time_ms(run, device, reps=args.reps)
                            peak = peak_extra_mb(run, device)
                        except (RuntimeError, TypeError) as e:  # e.g. a dtype a provider does not support
                            print(f"  {name} {mode} T={T} N=2^{logn} {dtype_name}: failed ({str(e).splitlines()[0]})")
                            continue
                        gbps = mode_bytes(mode, T, N, esize) / (ms * 1e-3) / 1e9
                        rec = dict(provider=name, T=T, N=N, dtype=dtype_name, mode=mode, ms=round(ms, 4),
                                   gbps=round(gbps, 1), pct_of_copy=round(100 * gbps / copy, 1),
                                   peak_mb=None if peak is None else round(peak, 1), copy_gbps=round(copy, 1),
                                   device=device_name(device), torch=torch.__version__)
                        records.append(rec)
                        rows.append([name, dtype_name, T, f"2^{logn}", mode, f"{ms:.3f}", f"{gbps:.1f}",
                                     f"{rec['pct_of_copy']:.0f}%", "-" if peak is None else f"{peak:.0f}"])
                        print(f"  {name:18s} {dtype_name:8s} T={T:<3} N=2^{logn:<3} {mode:24s} {ms:9.3f} ms "
                              f"{gbps:7.1f} GB/s", flush=True)
    table = markdown_table(["provider", "dtype", "T", "N", "mode", "ms", "GB/s", "of copy", "peak MB"], rows)
    print("\n" + table)
    if not args.no_save and records:
        path = write_results("alif", device, records, table, command_line(__file__))
        plot(records, path.with_suffix(".png"))
        print(f"\nwrote {path}, {path.with_suffix('.md')} and {path.with_suffix('.png')}")
    if args.profile:
        profile(device, max(args.T), 2 ** max(args.N))


def _no_grad(fn, inputs):
    with torch.no_grad():
        return fn(*inputs)


def plot(records, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for key in sorted({(r["provider"], r["dtype"], r["T"]) for r in records if r["mode"] == "forward+backward"}):
        pts = sorted((r["N"], r["gbps"]) for r in records if (r["provider"], r["dtype"], r["T"]) == key
                     and r["mode"] == "forward+backward")
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=f"{key[0]} {key[1]} T={key[2]}")
    ax.axhline(records[0]["copy_gbps"], color="k", ls="--", lw=1, label="copy bandwidth")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("neurons per step N")
    ax.set_ylabel("GB/s (forward+backward)")
    ax.set_title(f"alif on {records[0]['device']}")
    ax.legend(fontsize=6, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def profile(device, T, N):
    from torch.profiler import ProfilerActivity, profile as torch_profile

    x = (torch.randn(T, N, device=device) * 0.6 + 0.15).requires_grad_()
    tau = torch.tensor(0.25, device=device, requires_grad=True)
    v_th = torch.tensor(0.2, device=device, requires_grad=True)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with torch_profile(activities=activities) as prof:
        for _ in range(3):
            torch.autograd.grad(alif(x, tau, v_th), (x, tau, v_th), torch.ones_like(x))
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    trace = RESULTS_DIR / f"alif_trace_{device_slug(device)}.json"
    prof.export_chrome_trace(str(trace))
    sort = "cuda_time_total" if device.type == "cuda" else "cpu_time_total"
    print(prof.key_averages().table(sort_by=sort, row_limit=12))
    print(f"trace: {trace} (open in chrome://tracing or ui.perfetto.dev)")
    print("Nsight Compute on the kernels:\n  ncu --kernel-name "
          "regex:'alif_(fwd|bwd)_kernel|sum_partials_kernel|channel_' "
          f"--set full -o alif_ncu python bench/bench_alif.py --T {T} --N {N.bit_length() - 1} --dtypes float32 "
          "--providers alif_cuda --reps 1 --no-save")


if __name__ == "__main__":
    main()
