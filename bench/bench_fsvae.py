"""One FSVAE+TAID training step with the fused ops against the same model run through the plain
PyTorch references (alif_ref, taid_ref), side by side.

    python bench/bench_fsvae.py [--device cuda|cpu] [--batch 250] [--T 16] [--dataset mnist] [--reps 10]

A step is forward (posterior sampling included), loss, backward and the AdamW update. Prints the
median step time (CUDA events after warm-up on a GPU), images/s, peak memory beyond the model
(GPU only) and the speedup; writes bench/results/fsvae_<device>.json and .md.
"""
import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # models/ from the checkout

import alif_cuda  # noqa: E402
from common import command_line, device_name, markdown_table, peak_extra_mb, time_ms, write_results  # noqa: E402
from models.vae import VAEConfig, build_vae, dataset_channels  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dataset", choices=("mnist", "fashion", "cifar10", "celeba"), default="mnist")
    parser.add_argument("--batch", type=int, default=250)
    parser.add_argument("--T", type=int, default=16)
    parser.add_argument("--reps", type=int, default=10)
    parser.add_argument("--decoder", choices=("taid", "membrane"), default="taid")
    parser.add_argument("--no-save", action="store_true")
    args = parser.parse_args()
    if min(args.batch, args.T, args.reps) < 1:
        parser.error("--batch, --T and --reps must be >= 1")
    device = torch.device(args.device)
    if device.type == "cuda" and not (torch.cuda.is_available() and alif_cuda.cuda_kernels_available()):
        parser.error("--device cuda needs a visible GPU and a CUDA build of alif_cuda")

    channels, size = dataset_channels(args.dataset)
    torch.manual_seed(0)
    model = build_vae(VAEConfig(in_channels=channels, image_size=size, T=args.T, decoder=args.decoder)).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=1e-3)
    images = torch.rand(args.batch, channels, size, size, device=device) * 2 - 1

    def step():
        loss, _ = model.loss(images, model(images, 0.2))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    print(f"FSVAE+{args.decoder} training step on {device_name(device)}, torch {torch.__version__}, "
          f"{args.dataset} ({channels}x{size}x{size}), batch {args.batch}, T={args.T}\n")
    records, rows, times = [], [], {}
    for provider in ("alif_cuda", "reference"):
        with alif_cuda.use_reference_ops(provider == "reference"):
            ms = time_ms(step, device, reps=args.reps, warmup=2)
            peak = peak_extra_mb(step, device)
        times[provider] = ms
        rec = dict(provider=provider, dataset=args.dataset, batch=args.batch, T=args.T, decoder=args.decoder,
                   ms=round(ms, 3), images_per_s=round(args.batch / (ms * 1e-3), 1),
                   peak_mb=None if peak is None else round(peak, 1), device=device_name(device),
                   torch=torch.__version__)
        records.append(rec)
        print(f"  {provider:10s} {ms:9.2f} ms/step {rec['images_per_s']:9.1f} img/s", flush=True)
    for rec in records:
        rec["speedup_vs_reference"] = round(times["reference"] / rec["ms"], 2)
        rows.append([rec["provider"], f"{rec['ms']:.2f}", f"{rec['images_per_s']:.0f}",
                     "-" if rec["peak_mb"] is None else f"{rec['peak_mb']:.0f}", f"{rec['speedup_vs_reference']:.2f}x"])
    table = markdown_table([f"FSVAE+{args.decoder}, {args.dataset}, batch {args.batch}, T={args.T}", "ms/step",
                            "images/s", "peak MB", "speedup"], rows)
    print("\n" + table)
    if not args.no_save:
        path = write_results(f"fsvae_{args.dataset}", device, records, table,
                             command_line(__file__))
        print(f"\nwrote {path} and {path.with_suffix('.md')}")


if __name__ == "__main__":
    main()
