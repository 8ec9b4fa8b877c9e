"""What first writing a fresh CPU buffer costs, against writing one already mapped: the reason
the CPU ops take their large outputs from a pool of reused blocks (docs/design.md).

    python bench/bench_first_touch.py [--mb 32] [--reps 15] [--no-save]

Times (median after warm-up, perf_counter) torch.empty(n).fill_(0) with a fresh tensor each call
(PyTorch's CPU allocator: page faults and the kernel zeroing each new page), the same fill_ on a
tensor allocated once, and the copy of a mapped tensor into another, for one float32 tensor of
--mb MB. Writes bench/results/first_touch_cpu.json and .md.
"""
import argparse

import torch

from common import command_line, device_name, markdown_table, time_ms, write_results


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mb", type=int, default=32, help="size of the tensor in MB (default 32)")
    parser.add_argument("--reps", type=int, default=15, help="timed calls per case (default 15)")
    parser.add_argument("--no-save", action="store_true", help="print only; write nothing to bench/results")
    args = parser.parse_args()
    if args.mb < 1 or args.reps < 1:
        parser.error("--mb and --reps must be >= 1")
    device = torch.device("cpu")
    n = args.mb * 2**20 // 4
    mapped = torch.zeros(n)
    src = torch.rand(n)
    cases = {
        "fresh tensor, fill_(0)": lambda: torch.empty(n).fill_(0),
        "mapped tensor, fill_(0)": lambda: mapped.fill_(0),
        "mapped tensor, copy_": lambda: mapped.copy_(src),
    }
    records, rows = [], []
    for name, fn in cases.items():
        ms = time_ms(fn, device, reps=args.reps)
        records.append(dict(case=name, mb=args.mb, ms=round(ms, 4), device=device_name(device),
                            torch=torch.__version__))
        rows.append([name, str(args.mb), f"{ms:.3f}"])
    table = markdown_table(["case", "MB", "median ms"], rows)
    print(f"first touch on {device_name(device)}, torch {torch.__version__}\n")
    print(table)
    if not args.no_save:
        path = write_results("first_touch", device, records, table,
                             command_line(__file__))
        print(f"\nwrote {path} and {path.with_suffix('.md')}")


if __name__ == "__main__":
    main()
