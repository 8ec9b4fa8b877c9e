"""The options every training entry point shares, their checks, and the command that resumes a
run."""
import argparse
import math
import os
import shlex
import sys
from pathlib import Path

from .env import AMP_DTYPES, check_device_and_amp, cpu_count


def command_line(parser, args, resume: bool = True) -> str:
    """The command that repeats this run (with --resume): every option that differs from its
    default, plus the required ones (under torchrun, a torchrun command; with several nodes, add
    their options)."""
    parts = shlex.split(parser.prog)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and parts[:2] == ["python", "-m"]:
        parts[:1] = ["torchrun", f"--nproc_per_node={world}"]
    for action in parser._actions:
        if not action.option_strings or action.help == argparse.SUPPRESS or action.dest in ("help", "resume"):
            continue
        value = getattr(args, action.dest, None)
        flag = action.option_strings[-1] if action.option_strings[-1].startswith("--") else action.option_strings[0]
        if action.nargs == 0:
            if value != action.default:
                parts.append(flag)
        elif value is not None and (action.required or value != action.default):
            parts += [flag, str(value)]
    if resume:
        parts.append("--resume")
    return " ".join(shlex.quote(p) for p in parts)


def _note(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# ---- the shared options ----------------------------------------------------------------------
# Arguments that only say how to run, not what is trained: they may change on --resume.
# --test-subset is not among them: the best epoch is picked by test scores, which must all come
# from the same test images.
RUN_ONLY = {"out", "resume", "workers", "device", "data_dir", "download", "halt_after_steps", "epochs", "progress",
            "log_every", "keep_optimizer", "stop_on_nonfinite", "probes", "probe_size"}
# torch.manual_seed takes seeds below 2**64; process k of torchrun uses seed + k.
SEED_LIMIT = 2**63
# What the driver itself keeps in args (never part of the recipe).
INTERNAL = {"resume_command", "run_dir_created", "lock_created"}


class HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """The module docstring as written, and every option's default in its help."""


def add_run_args(p, *, epochs: int, batch_size: int, lr: float, seed: int) -> None:
    """The options every training entry point has; each help names its default."""
    p.add_argument("--data-dir", default=None,
                   help="datasets in torchvision's layout (see models/data.py) (default: this checkout's data/, "
                        "which ships MNIST)")
    p.add_argument("--out", required=True,
                   help="run directory: created if new; with --resume, the run in it continues")
    p.add_argument("--download", action="store_true",
                   help="download the dataset if missing (needs a network) (default: %(default)s)")
    p.add_argument("--epochs", type=int, default=epochs,
                   help="epochs in the whole run; a larger value with --resume trains a finished run further "
                        "(default: %(default)s)")
    p.add_argument("--batch-size", type=int, default=batch_size,
                   help="images per step, per process (default: %(default)s)")
    p.add_argument("--lr", type=float, default=lr, help="initial learning rate (default: %(default)s)")
    p.add_argument("--device", default="auto",
                   help="auto (the GPU if there is one), cpu or cuda (default: %(default)s)")
    p.add_argument("--amp", choices=tuple(AMP_DTYPES), default="none",
                   help="autocast precision, GPU only (default: %(default)s)")
    p.add_argument("--seed", type=int, default=seed,
                   help="seed of every RNG (process k of torchrun uses seed + k) (default: %(default)s)")
    p.add_argument("--subset", type=int, default=None,
                   help="train on the first N training images, for short runs (default: all)")
    p.add_argument("--test-subset", type=int, default=None,
                   help="evaluate on the first N test images, for short runs (default: all)")
    p.add_argument("--probes", type=int, default=None,
                   help="test-set evaluations inside each epoch, evenly spaced, on the first --probe-size test "
                        "images, for the test curve of a short run; they change nothing in the training "
                        "(default: auto, 4 in a run of fewer than 5 epochs when they cost at most about 10 %% of "
                        "its training time, else 0)")
    p.add_argument("--probe-size", type=int, default=256,
                   help="test images each probe evaluates (the first ones) (default: %(default)s)")
    p.add_argument("--resume", action="store_true",
                   help="continue the run in --out from its checkpoint (from the beginning, saying so, when it has "
                        "none yet) (default: %(default)s)")
    p.add_argument("--workers", type=int, default=None,
                   help="data loader worker processes, at most the CPUs available "
                        f"(default: min(4, CPUs) = {min(4, cpu_count())})")
    p.add_argument("--progress", choices=("auto", "bar", "log", "none"), default="auto",
                   help="bar: a progress bar with the run's ETA; log: one plain line every --log-every steps "
                        "(for log files); auto: bar on a terminal, log otherwise (default: %(default)s)")
    p.add_argument("--log-every", type=int, default=50,
                   help="steps between lines of --progress log (default: %(default)s)")
    p.add_argument("--keep-optimizer", action="store_true",
                   help="keep the optimizer state in the finished run's checkpoint, so that training it further "
                        "with --resume --epochs is exact; otherwise only the checkpoints of an unfinished run "
                        "hold it (default: %(default)s)")
    p.add_argument("--stop-on-nonfinite", action="store_true",
                   help="stop at the first step whose loss or gradient is NaN or infinite, naming the step and "
                        "the parameter (one host sync per step) (default: %(default)s)")
    # tests: die mid-epoch, as if killed
    p.add_argument("--halt-after-steps", type=int, default=None, help=argparse.SUPPRESS)


def validate_run_args(args, parser, check_data) -> None:
    """Checks the shared options, the device and the data; exits with a usage error naming the
    problem before anything is computed or created. Fills in --data-dir and --workers defaults."""
    args.resume_command = command_line(parser, args)
    for name in ("epochs", "batch_size", "log_every"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if not (math.isfinite(args.lr) and args.lr > 0):
        parser.error(f"--lr must be > 0, got {args.lr}")
    if not 0 <= args.seed < SEED_LIMIT:
        parser.error(f"--seed must be in [0, 2**63), got {args.seed}")
    if args.probes is not None and args.probes < 0:
        parser.error(f"--probes must be >= 0, got {args.probes}")
    for name in ("subset", "test_subset", "probe_size"):
        value = getattr(args, name)
        if value is not None and value < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1, got {value}")
    cpus = cpu_count()
    if args.workers is None:
        args.workers = min(4, cpus)
    elif args.workers < 0:
        parser.error(f"--workers must be >= 0, got {args.workers}")
    elif args.workers > cpus:
        _note(f"note: --workers {args.workers} is more than the {cpus} CPUs available; using {cpus}")
        args.workers = cpus
    if args.data_dir is None:
        from ..data import DEFAULT_DATA_DIR

        args.data_dir = DEFAULT_DATA_DIR
    try:
        check_device_and_amp(args.device, args.amp)
        check_data()
    except (ValueError, FileNotFoundError) as e:
        parser.error(str(e))
    if not args.out.strip():
        parser.error("--out must name a directory, got an empty string")
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        parser.error(f"--out {out} exists and is not a directory")
