"""Where a training step of a Table 8 network spends its time: a torch.profiler trace of a few
steps and the top kernels (GPU) or operators (CPU) by time.

    python bench/profile_train.py [--net mnist|cifar10] [--batch 128] [--precision fp32|bf16] [--steps 5]

Writes bench/results/train_trace_<net>_<device>.json (open in ui.perfetto.dev or chrome://tracing).
"""
import argparse
import sys
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile, schedule

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import alif_cuda  # noqa: E402
from bench_train import SHAPES, make_step  # noqa: E402
from common import RESULTS_DIR, device_name, device_slug  # noqa: E402
from models.classifiers import build_classifier  # noqa: E402
from models.train_classifier import HelpFormatter  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="cuda or cpu")
    parser.add_argument("--net", choices=tuple(SHAPES), default="mnist", help="which Table 8 network")
    parser.add_argument("--batch", type=int, default=128, help="images per step")
    parser.add_argument("--precision", choices=("fp32", "bf16"), default="fp32", help="autocast precision (bf16: GPU)")
    parser.add_argument("--steps", type=int, default=5, help="profiled steps (after 1 skipped and 2 warm-up steps)")
    parser.add_argument("--rows", type=int, default=20, help="rows of the printed table")
    args = parser.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda" and not (torch.cuda.is_available() and alif_cuda.cuda_kernels_available()):
        parser.error("--device cuda needs a visible GPU and a CUDA build of alif_cuda")
    if args.steps < 1 or args.batch < 1:
        parser.error(f"--steps and --batch must be >= 1, got {args.steps} and {args.batch}")
    if device.type == "cpu" and args.precision == "bf16":
        parser.error("bf16 autocast needs a GPU here (the CPU kernels run float32); use --precision fp32")
    c, size = SHAPES[args.net]
    torch.manual_seed(0)
    model = build_classifier(args.net).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    images = torch.randn(args.batch, c, size, size, device=device)
    labels = torch.randint(0, 10, (args.batch,), device=device)
    step = make_step(model, optimizer, images, labels, torch.bfloat16 if args.precision == "bf16" else None,
                     device, False)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities, schedule=schedule(wait=1, warmup=2, active=args.steps)) as prof:
        for _ in range(3 + args.steps):
            step()
            prof.step()
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    trace = RESULTS_DIR / f"train_trace_{args.net}_{device_slug(device)}.json"
    prof.export_chrome_trace(str(trace))
    sort = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    print(f"{args.net} batch {args.batch} {args.precision} on {device_name(device)}: {args.steps} profiled steps\n")
    print(prof.key_averages().table(sort_by=sort, row_limit=args.rows))
    print(f"trace: {trace}")


if __name__ == "__main__":
    main()
