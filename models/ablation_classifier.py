"""The paper's Table 7 ablation: ALIF with learnable or fixed tau / v_th, from three inits.

    python -m models.ablation_classifier --data-dir DIR --out DIR [--dataset mnist] [--epochs E]
                                          [any other train_classifier option]

Trains the six configurations one after another (each in OUT/<name>/, resumable: a finished run
is skipped, an interrupted one continues) with the same budget and writes OUT/ablation.md: final
and best test accuracy per configuration, next to the paper's numbers (best accuracy, MNIST).
"""
import argparse
import json
import sys
from pathlib import Path
from typing import List, Optional

from . import train_classifier
from .training import CHECKPOINT

INITS = [(0.25, 0.2), (0.5, 0.2), (0.5, 0.5)]
PAPER_MNIST = {(False, 0.25, 0.2): 99.64, (False, 0.5, 0.2): 99.52, (False, 0.5, 0.5): 99.41,
               (True, 0.25, 0.2): 99.78, (True, 0.5, 0.2): 99.71, (True, 0.5, 0.5): 99.62}


def main(argv: Optional[List[str]] = None) -> str:
    p = argparse.ArgumentParser(prog="python -m models.ablation_classifier", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-dir", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--dataset", default="mnist", choices=train_classifier.DATASETS)
    args, rest = p.parse_known_args(argv)
    for flag in ("--tau", "--v-th", "--fixed-neurons", "--resume"):
        if any(r == flag or r.startswith(flag + "=") for r in rest):
            p.error(f"{flag} is set by the ablation itself; remove it")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for learnable in (False, True):
        for tau, v_th in INITS:
            name = f"{'learnable' if learnable else 'fixed'}_tau{tau}_vth{v_th}"
            run_dir = out / name
            run_args = ["--dataset", args.dataset, "--data-dir", args.data_dir, "--out", str(run_dir),
                        "--tau", str(tau), "--v-th", str(v_th), *rest]
            if not learnable:
                run_args.append("--fixed-neurons")
            summary_path = run_dir / "summary.json"
            if not summary_path.is_file():
                if (run_dir / CHECKPOINT).is_file():
                    run_args.append("--resume")
                print(f"== {name}", flush=True)
                train_classifier.main(run_args)
            s = json.loads(summary_path.read_text())
            paper = PAPER_MNIST.get((learnable, tau, v_th)) if args.dataset == "mnist" else None
            rows.append(f"| {'yes' if learnable else 'no'} | {tau} | {v_th} | {s['final_test_acc']:.2f} | "
                        f"{s['best_test_acc']:.2f} | {'-' if paper is None else f'{paper:.2f}'} | {s['epochs']} | "
                        f"{s['wall_time_s']:.0f} |")
    cmd = "python -m models.ablation_classifier " + " ".join(argv if argv is not None else sys.argv[1:])
    table = "\n".join([
        f"Table 7 ablation on {args.dataset}, produced by `{cmd}` on {s['device']}.",
        "",
        "| Learnable | Init tau | Init v_th | final test acc (%) | best test acc (%) | paper (best, %) | epochs | wall s |",
        "|---|---|---|---:|---:|---:|---:|---:|",
        *rows,
    ])
    (out / "ablation.md").write_text(table + "\n")
    print(table)
    return table


if __name__ == "__main__":
    main(sys.argv[1:])
