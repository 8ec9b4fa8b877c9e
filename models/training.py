"""What every training entry point shares: distributed set-up, devices and precision, safe atomic
checkpoints with every RNG state, the run directory (lock, crash-consistent files), the
per-epoch metrics file, progress, the closing summary and the curves plot.

A run directory is consistent whatever moment the process dies: checkpoint.pt is replaced
atomically (temporary file, fsync, rename, fsync of the directory) and holds every metrics record
so far, so --resume rewrites metrics.jsonl from it; metrics.jsonl is appended only after the
checkpoint of its epoch exists. A lock held by the live writer refuses a second one.

A run directory cannot be turned against its user: no link in it is followed (the lock is opened
with O_NOFOLLOW and never written, temporaries are new files with unpredictable names, a run file
that is not a regular file is refused), and nothing is deleted that the run did not write: whether
to start, resume or refuse is decided before anything in the directory is touched."""
import argparse
import errno
import io
import json
import math
import os
import pickle
import random
import shlex
import socket
import stat
import sys
import tempfile
import time
import zipfile
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, Iterable, List, Optional

import numpy as np
import torch
import torch.distributed as dist

AMP_DTYPES = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}
CHECKPOINT = "checkpoint.pt"
METRICS = "metrics.jsonl"
SUMMARY = "summary.json"
CURVES = "curves.png"
LOCK = ".lock"
LOCK_HOLDER = ".lock-holder.json"
LOCK_FILES = (LOCK, LOCK_HOLDER)
RUN_FILES = (CHECKPOINT, METRICS, SUMMARY, CURVES)
# Training more image-epochs than this on a CPU gets a warning (the paper's MNIST recipe is 3.84M).
CPU_SCALE_IMAGES = 1_000_000
STEP_LOSS_POINTS = 100  # per-step loss kept per epoch for curves.png (means over chunks of steps)


def fault_point(name: str) -> None:
    """Does nothing. Tests replace it to die at a chosen moment ("mid_write", "checkpoint_written",
    "metrics_written", "curves_written"), as a kill there would."""


@dataclass
class Dist:
    """This process's place in the run: world size 1 and rank 0 without torchrun."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0


def init_distributed(device_kind: str) -> Dist:
    """Joins the process group when launched by torchrun (WORLD_SIZE > 1): NCCL on GPUs, gloo on
    the CPU."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist()
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device_kind == "cuda" else "gloo")
    return Dist(rank=dist.get_rank(), world=dist.get_world_size(), local_rank=int(os.environ.get("LOCAL_RANK", "0")))


def pick_device(requested: str, d: Dist) -> torch.device:
    """"auto" is the GPU when there is one; under torchrun each process takes its local GPU."""
    kind = ("cuda" if torch.cuda.is_available() else "cpu") if requested == "auto" else requested
    if kind == "cuda":
        device = torch.device("cuda", d.local_rank if d.world > 1 else torch.cuda.current_device())
        torch.cuda.set_device(device)
        return device
    return torch.device(kind)


def check_device_and_amp(device: str, amp: str) -> None:
    """Raises ValueError for a device that is not there or a precision it cannot run."""
    if device not in ("auto", "cpu", "cuda"):
        raise ValueError(f"--device must be auto, cpu or cuda, got {device!r}")
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda was asked for but no GPU is visible (torch.cuda.is_available() is False)")
    kind = "cuda" if device == "cuda" or (device == "auto" and torch.cuda.is_available()) else "cpu"
    if amp != "none" and kind != "cuda":
        raise ValueError(f"--amp {amp} needs a GPU: the CPU kernels compute in float32/float64; use --amp none")


def autocast(device: torch.device, amp: str):
    dtype = AMP_DTYPES[amp]
    return torch.autocast(device.type, dtype=dtype) if dtype is not None else nullcontext()


def cpu_count() -> int:
    """The CPUs this process may run on (its affinity mask, not the machine's total)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


# ---- RNG state, as tensors and plain values (so checkpoints load with weights_only=True) -----
def rng_state() -> Dict:
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    version, mt, gauss_next = random.getstate()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "gauss": float(gauss)},
        "python": {"version": version, "state": torch.tensor(mt, dtype=torch.int64), "gauss_next": gauss_next},
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Dict) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    p = state["python"]
    random.setstate((p["version"], tuple(p["state"].tolist()), p["gauss_next"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


# ---- files: atomic, fsynced writes and checked reads -------------------------------------------
class DiskFullError(OSError):
    """A write failed for lack of space; the file it was replacing is intact."""


class CheckpointError(ValueError):
    """A checkpoint that cannot be used (missing, damaged, unsafe or of another kind); the message
    names the file."""


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some file systems cannot fsync a directory; the rename is still atomic
    finally:
        os.close(fd)


# Files are created with the permissions open(..., 0o666) would give them under the umask, not
# mkstemp's 0o600 (read once here: os.umask can only be read by setting it).
_UMASK = os.umask(0o022)
os.umask(_UMASK)


def _temporary_beside(path: Path):
    """(fd, name) of a new file in path's folder named .<name>.tmp-<random>: created with O_EXCL
    (mkstemp), so an existing file or a planted link is never opened, and unpredictable."""
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.tmp-", dir=path.parent if str(path.parent) else ".")
    os.fchmod(fd, 0o666 & ~_UMASK)
    return fd, Path(name)


def write_bytes_atomic(data: bytes, path: Path) -> None:
    """Writes `data` to a new temporary file beside `path` (_temporary_beside), fsyncs it, renames
    it over `path` and fsyncs the directory: a crash at any moment leaves either the old file or
    the new one, and a link at `path` is replaced, never followed. On an error the temporary file
    is removed and `path` is untouched (DiskFullError when out of space)."""
    path = Path(path)
    tmp = None
    try:
        fd, tmp = _temporary_beside(path)
        try:
            view = memoryview(data)
            written = 0
            while written < len(view):
                before = written
                written += os.write(fd, view[written:written + (1 << 24)])
                if before < len(view) // 2 <= written:
                    fault_point("mid_write")
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException as e:
        if tmp is not None:
            try:
                tmp.unlink()
            except FileNotFoundError:
                pass
        if not isinstance(e, OSError):
            raise
        if e.errno in (errno.ENOSPC, errno.EDQUOT):
            raise DiskFullError(e.errno, f"no space left on device writing {path} ({len(data) / 2**20:.1f} MB); "
                                         f"{path.name} was left as it was") from None
        raise OSError(e.errno, f"cannot write {path}: {e.strerror or e}") from None
    _fsync_dir(path.parent)


def save_atomic(obj, path: Path) -> None:
    """torch.save, atomically and fsynced (write_bytes_atomic). The archive's records carry
    CRC-32s that load_checkpoint verifies."""
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    write_bytes_atomic(buffer.getbuffer(), path)


def write_json_atomic(obj, path: Path) -> None:
    write_bytes_atomic((json.dumps(obj, indent=1) + "\n").encode(), path)


def load_checkpoint(path, what: str = "checkpoint", keys: Iterable[str] = ()) -> Dict:
    """A checkpoint dict read safely: its zip records' CRC-32s verified, then torch.load with
    weights_only=True (tensors and plain Python values only, so a crafted pickle never runs), then
    the `keys` it must have. Raises CheckpointError naming the file and what is wrong."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path} does not exist" if not path.exists() else f"{path} is not a file")
    size = path.stat().st_size
    if size == 0:
        raise CheckpointError(f"{path} is empty (0 bytes): not a checkpoint")
    try:
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
    except (zipfile.BadZipFile, EOFError, OSError, ValueError) as e:
        raise CheckpointError(f"{path} is damaged, truncated or not a PyTorch checkpoint ({size} bytes; zip: {e})") from None
    if bad is not None:
        raise CheckpointError(f"{path} is damaged: the CRC-32 of its record {bad!r} does not match its bytes "
                              f"(a flipped or overwritten byte); do not use it")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"{path} holds objects other than tensors and plain Python values and was refused "
                              f"without running them (weights_only=True): {first}") from None
    except Exception as e:  # torch.load's reader raises RuntimeError and others for damaged archives
        raise CheckpointError(f"{path} could not be read as a checkpoint ({type(e).__name__}: {e})") from None
    missing = [k for k in keys if not (isinstance(ckpt, dict) and k in ckpt)]
    if not isinstance(ckpt, dict) or missing:
        found = sorted(ckpt)[:8] if isinstance(ckpt, dict) else type(ckpt).__name__
        raise CheckpointError(f"{path} is not a {what}: it lacks {missing} (it holds {found})")
    return ckpt


def check_output_file(path, option: str = "--out") -> None:
    """Raises ValueError unless `path` can be written as a file (its folder exists and is
    writable, and it is not a folder itself): call it before the work whose result goes there."""
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"{option} {path} is a directory; give a file name")
    folder = path.parent if str(path.parent) else Path(".")
    if not folder.is_dir():
        raise ValueError(f"{option} {path}: the folder {folder} does not exist")
    if not os.access(folder, os.W_OK | os.X_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise ValueError(f"{option} {path} cannot be written (permission denied)")


def append_metrics(run_dir: Path, record: Dict) -> None:
    """Appends one line, fsynced. A torn line (a kill or a full disk mid-write) is harmless:
    --resume rewrites the file from the checkpoint."""
    path = Path(run_dir) / METRICS
    try:
        # O_NOFOLLOW: a link planted at metrics.jsonl is refused (ELOOP), not appended through.
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o666)
        with os.fdopen(fd, "a") as f:
            f.write(json.dumps(record) + "\n")
            f.flush()
            os.fsync(f.fileno())
    except OSError as e:
        if e.errno in (errno.ENOSPC, errno.EDQUOT):
            raise DiskFullError(e.errno, f"no space left on device appending to {path}") from None
        raise


def read_metrics(run_dir: Path) -> List[Dict]:
    """The records of metrics.jsonl; a torn (half-written) line is skipped."""
    path = Path(run_dir) / METRICS
    if not path.is_file():
        return []
    records = []
    for line in path.read_text(errors="replace").splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return [r for r in records if isinstance(r, dict) and "epoch" in r]


def write_metrics(run_dir: Path, records: List[Dict]) -> None:
    """Replaces metrics.jsonl with `records` (on --resume, those the checkpoint holds)."""
    write_bytes_atomic("".join(json.dumps(r) + "\n" for r in records).encode(), Path(run_dir) / METRICS)


# ---- the run directory: lock, stale files, the command that resumes --------------------------
_held_locks: Dict[str, tuple] = {}


class RunDirError(ValueError):
    """A run directory that cannot be used as asked (a planted link, a live writer, files that
    are not this run's); the message names what is there and what to do. Nothing was changed."""


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISLNK, "a symbolic link"), (stat.S_ISDIR, "a directory"),
                       (stat.S_ISFIFO, "a named pipe"), (stat.S_ISSOCK, "a socket"),
                       (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device")):
        if test(mode):
            return name
    return "not a regular file"


def _not_regular(path: Path) -> Optional[str]:
    """None for a regular file or nothing at `path`; else what is there (a link is never
    followed, and said with its target)."""
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return None
    if stat.S_ISREG(mode):
        return None
    what = _kind(mode)
    if stat.S_ISLNK(mode):
        target = os.readlink(path)
        what += f" (to {target}{'' if path.exists() else ', which does not exist'})"
    return f"{path} is {what}"


def _read_holder(run_dir: Path) -> Dict:
    """Who holds the lock, from .lock-holder.json (or an older version's .lock); {} if unknown."""
    for name in (LOCK_HOLDER, LOCK):
        try:
            fd = os.open(Path(run_dir) / name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError:
            continue
        try:
            if stat.S_ISREG(os.fstat(fd).st_mode):
                holder = json.loads(os.pread(fd, 1 << 16, 0).decode() or "{}")
                if isinstance(holder, dict) and holder:
                    return holder
        except ValueError:
            pass
        finally:
            os.close(fd)
    return {}


def acquire_lock(run_dir: Path, command: str) -> None:
    """Takes run_dir's lock: flock on run_dir/.lock, released by the kernel when the process dies,
    so it is never stale. The lock file is opened read-only without following links (a link or
    anything but a regular file there is refused) and never written: who holds it goes to
    .lock-holder.json, replaced atomically and removed at release. Raises RunDirError naming a live holder or a bad
    lock file, OSError when the directory cannot be written. Re-entrant within a process."""
    import fcntl

    key = str(Path(run_dir).resolve())
    if key in _held_locks:
        return
    path = Path(run_dir) / LOCK
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
    created = True
    try:
        try:
            fd = os.open(path, flags | os.O_CREAT | os.O_EXCL, 0o666)
        except FileExistsError:
            created = False
            fd = os.open(path, flags)
    except OSError as e:
        problem = _not_regular(path)
        if problem is not None:
            raise RunDirError(f"{problem}: the run's lock must be a regular file, and a link is never "
                              f"followed; remove it if you trust this directory") from None
        raise
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise RunDirError(f"{_not_regular(path) or path}: the run's lock must be a regular file")
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise
            holder = _read_holder(run_dir)
            raise RunDirError(
                f"--out {run_dir} is in use by another live run: pid {holder.get('pid', '?')} on "
                f"{holder.get('host', '?')}, started {holder.get('started', '?')} ({holder.get('command', '?')}). "
                f"Two writers would corrupt the run: wait for it to end, or stop it first."
            ) from None
        info = {"pid": os.getpid(), "host": socket.gethostname(), "command": command,
                "started": time.strftime("%Y-%m-%d %H:%M:%S %Z")}
        write_bytes_atomic(json.dumps(info).encode(), Path(run_dir) / LOCK_HOLDER)
    except BaseException:
        os.close(fd)
        if created:
            path.unlink(missing_ok=True)
        raise
    _held_locks[key] = (fd, created)


def release_lock(run_dir: Path) -> None:
    """Removes the holder's record (it describes a live holder only) and releases the lock."""
    held = _held_locks.pop(str(Path(run_dir).resolve()), None)
    if held is None:
        return
    try:
        (Path(run_dir) / LOCK_HOLDER).unlink(missing_ok=True)
    except OSError:
        pass
    os.close(held[0])


def _own_temporaries(run_dir: Path) -> List[Path]:
    """The temporary files of this project's unfinished writes in run_dir (.<run file>.tmp-*),
    regular files only (a link of that name is left alone)."""
    return sorted(path for name in RUN_FILES + (LOCK_HOLDER,) for path in Path(run_dir).glob(f".{name}.tmp-*")
                  if _not_regular(path) is None)


def remove_stale_temporaries(run_dir: Path) -> List[str]:
    """Deletes the temporary files of writes that never finished (a killed process's
    .<run file>.tmp-*), and nothing else; call with the lock held, when no other writer can
    exist."""
    removed = []
    for path in _own_temporaries(run_dir):
        removed.append(f"{path.name} ({path.lstat().st_size / 2**20:.1f} MB)")
        path.unlink()
    return removed


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


# ---- the shared options -----------------------------------------------------------------------
# Arguments that only say how to run, not what is trained: they may change on --resume.
# --test-subset is not among them: the best epoch is picked by test scores, which must all come
# from the same test images.
RUN_ONLY = {"out", "resume", "workers", "device", "data_dir", "download", "halt_after_steps", "epochs", "progress",
            "log_every", "keep_optimizer", "stop_on_nonfinite"}
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
    p.add_argument("--batch-size", type=int, default=batch_size, help="images per step, per process (default: %(default)s)")
    p.add_argument("--lr", type=float, default=lr, help="initial learning rate (default: %(default)s)")
    p.add_argument("--device", default="auto", help="auto (the GPU if there is one), cpu or cuda (default: %(default)s)")
    p.add_argument("--amp", choices=tuple(AMP_DTYPES), default="none",
                   help="autocast precision, GPU only (default: %(default)s)")
    p.add_argument("--seed", type=int, default=seed,
                   help="seed of every RNG (process k of torchrun uses seed + k) (default: %(default)s)")
    p.add_argument("--subset", type=int, default=None,
                   help="train on the first N training images, for short runs (default: all)")
    p.add_argument("--test-subset", type=int, default=None,
                   help="evaluate on the first N test images, for short runs (default: all)")
    p.add_argument("--resume", action="store_true",
                   help="continue the run in --out from its checkpoint (from the beginning, saying so, when it has "
                        "none yet) (default: %(default)s)")
    p.add_argument("--workers", type=int, default=None,
                   help="data loader worker processes, at most the CPUs available "
                        f"(default: min(4, CPUs) = {min(4, cpu_count())})")
    p.add_argument("--progress", choices=("auto", "bar", "log", "none"), default="auto",
                   help="bar: a progress bar with the run's ETA; log: one plain line every --log-every steps "
                        "(for log files); auto: bar on a terminal, log otherwise (default: %(default)s)")
    p.add_argument("--log-every", type=int, default=50, help="steps between lines of --progress log (default: %(default)s)")
    p.add_argument("--keep-optimizer", action="store_true",
                   help="keep the optimizer state in the finished run's checkpoint, so that training it further "
                        "with --resume --epochs is exact; otherwise only the checkpoints of an unfinished run "
                        "hold it (default: %(default)s)")
    p.add_argument("--stop-on-nonfinite", action="store_true",
                   help="stop at the first step whose loss or gradient is NaN or infinite, naming the step and "
                        "the parameter (one host sync per step) (default: %(default)s)")
    p.add_argument("--halt-after-steps", type=int, default=None, help=argparse.SUPPRESS)  # tests: die mid-epoch, as if killed


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
    for name in ("subset", "test_subset"):
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
        from .data import DEFAULT_DATA_DIR

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


def _epoch_records(run_dir: Path) -> int:
    try:
        return len(read_metrics(run_dir))
    except OSError:
        return 0


def plan_run_dir(out: Path, resume: bool) -> str:
    """What starting in `out` will do, decided from what is there before anything is touched:
    "fresh" (a new or empty directory, or one holding only an earlier attempt's lock files),
    "resume" (a run with its checkpoint) or "restart" (--resume where no epoch was ever recorded:
    the run starts from the beginning). Raises RunDirError naming what is there otherwise."""
    if not out.exists():
        return "restart" if resume else "fresh"
    if not out.is_dir():
        raise RunDirError(f"--out {out} exists and is not a directory")
    bad = [problem for name in RUN_FILES + LOCK_FILES if (problem := _not_regular(out / name)) is not None]
    if bad:
        raise RunDirError(f"--out {out}: {'; '.join(bad)}. A run's files must be regular files and no link is "
                          f"followed: nothing was read or changed; remove or replace it if you trust this directory")
    entries = sorted(p.name for p in out.iterdir())
    ours = set(LOCK_FILES) | {p.name for p in _own_temporaries(out)}
    others = [n for n in entries if n not in ours]
    if not others:
        return "restart" if resume else "fresh"
    run_files = [n for n in others if n in RUN_FILES]
    shown = ", ".join(others[:6]) + (f" and {len(others) - 6} more" if len(others) > 6 else "")
    if not resume:
        if CHECKPOINT in run_files:
            raise RunDirError(f"--out {out} already holds a run ({shown}); pass --resume to continue it, or choose a "
                              f"new directory")
        raise RunDirError(f"--out {out} already holds files ({shown}); a new run needs a new or empty directory "
                          f"(hidden files count): choose another --out")
    if CHECKPOINT in run_files:
        return "resume"
    epochs = _epoch_records(out)
    if epochs or SUMMARY in run_files:
        recorded = f"the records of {epochs} epoch(s)" if epochs else "a summary.json"
        raise RunDirError(f"--resume: {out} holds {recorded} ({shown}) but no {CHECKPOINT}, so the run cannot "
                          f"continue. If you moved {CHECKPOINT} aside, put it back; to train again from the "
                          f"beginning, choose a new --out. Nothing in {out} was changed")
    raise RunDirError(f"--resume: {out} holds no {CHECKPOINT} and no run of this project ({shown}); choose a new "
                      f"--out. Nothing in {out} was changed")


def prepare_run_dir(args, parser, main: bool) -> None:
    """--out checked (plan_run_dir) and refused before anything in it is touched, then created
    and locked (rank 0) and the temporaries of this run's killed writes removed. --resume without
    any recorded epoch becomes a fresh start, said so; a fresh start needs a new or empty
    directory."""
    out = Path(args.out)
    if not main:
        # Rank 0 turns a --resume without a checkpoint into a fresh start; so must every rank.
        args.resume = args.resume and (out / CHECKPOINT).exists()
        return
    try:
        plan = plan_run_dir(out, args.resume)
    except RunDirError as e:
        parser.error(str(e))
    created = not out.exists()
    args.run_dir_created = created
    args.lock_created = False
    try:
        out.mkdir(parents=True, exist_ok=True)
        acquire_lock(out, args.resume_command)
        args.lock_created = _held_locks[str(out.resolve())][1]
        # Decided again under the lock: a writer that held it until now may have changed the directory.
        if plan_run_dir(out, args.resume) != plan:
            raise RunDirError(f"--out {out} changed while this run was starting; start it again")
        removed = remove_stale_temporaries(out)
    except RunDirError as e:
        _undo_run_dir(args)
        parser.error(str(e))
    except OSError as e:
        _undo_run_dir(args)
        parser.error(f"--out {out}: cannot create or write the run directory ({e.strerror or e})")
    if removed:
        _note(f"removed {len(removed)} temporary file(s) of interrupted writes from {out}: {', '.join(removed)}")
    if plan == "restart":
        why = "is new" if created else "holds no checkpoint yet (an earlier attempt stopped before its first epoch ended)"
        _note(f"--resume: {out} {why}: starting the run from the beginning")
        args.resume = False


def _undo_run_dir(args) -> None:
    """Releases the lock and removes what this process created for a run that saved nothing: the
    lock file it made, and the directory if it made that too (and it is empty then)."""
    out = Path(args.out)
    release_lock(out)
    if getattr(args, "lock_created", False):
        (out / LOCK).unlink(missing_ok=True)
    if getattr(args, "run_dir_created", False):
        try:
            out.rmdir()
        except OSError:
            pass


def recipe(args) -> Dict:
    """What a run trains: every argument but the RUN_ONLY ones."""
    return {k: v for k, v in vars(args).items() if k not in RUN_ONLY and k not in INTERNAL}


def prepare_run(args, parser, inherit=()):
    """Prepares the run directory (prepare_run_dir), joins torchrun's group, picks the device,
    and on --resume loads the checkpoint (verified) and checks that the arguments describe the
    same run (arguments in `inherit` left as None take the run's value). Seeds every RNG.
    Returns (dist, device, checkpoint or None)."""
    prepare_run_dir(args, parser, main=int(os.environ.get("RANK", "0")) == 0)
    kind = "cuda" if args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available()) else "cpu"
    d = init_distributed(kind)
    device = pick_device(args.device, d)
    ckpt = None
    run_dir = Path(args.out)
    if args.resume:
        try:
            ckpt = load_checkpoint(run_dir / CHECKPOINT, what="training checkpoint",
                                   keys=("recipe", "model", "epoch", "rng", "records"))
        except CheckpointError as e:
            release_lock(run_dir)
            parser.error(f"--resume: {e}. The run cannot continue from it; to train again from the beginning, "
                         f"choose a new --out")
        saved = ckpt["recipe"]
        for key in inherit:
            if getattr(args, key) is None:
                setattr(args, key, saved.get(key))
        mine = recipe(args)
        diff = {k: (saved.get(k), mine.get(k)) for k in sorted(set(saved) | set(mine)) if saved.get(k) != mine.get(k)}
        if diff:
            release_lock(run_dir)
            details = ", ".join(f"{k}: run has {a!r}, now {b!r}" for k, (a, b) in diff.items())
            parser.error(f"--resume: the arguments differ from the run's ({details}); only {sorted(RUN_ONLY)} may change")
        if len(ckpt["rng"]) != d.world:
            release_lock(run_dir)
            parser.error(f"--resume: the run used {len(ckpt['rng'])} processes, this launch has {d.world}")
        if args.epochs < ckpt["epoch"]:
            release_lock(run_dir)
            parser.error(f"--resume: the run in {run_dir} has already trained {ckpt['epoch']} epochs; --epochs "
                         f"{args.epochs} would end it before that (pass --epochs {ckpt['epoch']} or more)")
    seed_everything(args.seed + d.rank)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    return d, device, ckpt


@dataclass
class Job:
    """What an entry point hands to fit().

    train_step(net, batch, epoch) runs the forward pass and the loss under autocast and returns
    (loss to minimise, {name: sum over the batch's samples} of per-sample statistics, samples);
    the epoch's record gets train_loss and train_<name> as means over the epoch's samples.
    evaluate(model, loader) returns the test metrics (rank 0, on the unwrapped model);
    epoch_info(model) adds fields to each epoch's record; `best` = (metric, "max" or "min").
    spiking_layers(model) gives the {name: module} whose outputs are spikes: their firing rates
    during evaluation go into each record as firing_rate (default: every alif_cuda ALIF);
    with warn_firing, a layer whose rate lies outside [1 %, 99 %] gets a warning on stderr;
    drop_last drops each epoch's last incomplete training batch (FSVAE's FashionMNIST/CIFAR-10)."""

    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Optional[object]
    train_set: object
    test_set: object
    train_step: object
    evaluate: object
    model_config: Dict
    best: tuple
    curves: List
    title: str
    epoch_info: object = None
    spiking_layers: Optional[Callable] = None
    warn_firing: bool = False
    drop_last: bool = False


def make_loaders(job: Job, args, d: Dist, device):
    from torch.utils.data import DataLoader, DistributedSampler, Subset

    train_set, test_set = job.train_set, job.test_set
    if args.subset is not None:
        if args.subset > len(train_set):
            raise SystemExit(f"--subset {args.subset} exceeds the {len(train_set)} training images")
        train_set = Subset(train_set, range(args.subset))
    if args.test_subset is not None:
        test_set = Subset(test_set, range(min(args.test_subset, len(test_set))))
    # The shuffle is a function of (seed, epoch) through set_epoch, so a resumed run replays it.
    sampler = DistributedSampler(train_set, num_replicas=d.world, rank=d.rank, shuffle=True, seed=args.seed)
    common = dict(num_workers=args.workers, pin_memory=device.type == "cuda")
    train_loader = DataLoader(train_set, batch_size=args.batch_size, sampler=sampler, drop_last=job.drop_last, **common)
    # Its own generator: iterating a loader draws a seed, which must not move the training RNG.
    test_loader = DataLoader(test_set, batch_size=max(args.batch_size, 256), shuffle=False,
                             generator=torch.Generator(), **common)
    return train_loader, test_loader, sampler


def default_spiking_layers(model: torch.nn.Module) -> Dict[str, torch.nn.Module]:
    from alif_cuda.nn import ALIF

    return {name: m for name, m in model.named_modules() if isinstance(m, ALIF)}


class SpikeCounter:
    """Forward hooks adding up each layer's output spikes on the device (no sync per batch);
    rates() is spikes per neuron per time step since the hooks went in."""

    def __init__(self, layers: Dict[str, torch.nn.Module]):
        self.sums: Dict[str, object] = {name: 0.0 for name in layers}
        self.counts = {name: 0 for name in layers}
        self.handles = [m.register_forward_hook(self._hook(name)) for name, m in layers.items()]

    def _hook(self, name):
        def hook(module, inputs, out):
            if isinstance(out, torch.Tensor):
                self.sums[name] = self.sums[name] + out.detach().float().sum()
                self.counts[name] += out.numel()
        return hook

    def remove(self) -> None:
        for h in self.handles:
            h.remove()

    def rates(self) -> Dict[str, float]:
        return {name: round(float(self.sums[name]) / self.counts[name], 6)
                for name in self.sums if self.counts[name]}


def warn_firing_rates(epoch: int, rates: Dict[str, float], low: float = 0.01, high: float = 0.99) -> None:
    """One stderr line per layer that is (nearly) silent or saturated: such a layer passes almost
    no gradient through the surrogate, so the network has likely stopped learning there."""
    for name, rate in rates.items():
        if not low <= rate <= high:
            kind = f"silent: < {low:.0%}" if rate < low else f"saturated: > {high:.0%}"
            _note(f"warning: epoch {epoch}: layer {name} fired at {rate:.4f} on the test set ({kind})")


def format_duration(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    h, rest = divmod(seconds, 3600)
    return f"{h}:{rest // 60:02d}:{rest % 60:02d}"


class Progress:
    """Per-step progress: a tqdm bar per epoch, or plain lines every `every` steps; both show the
    epoch's and the whole run's estimated time left (from the mean step time so far in this
    process, plus the last evaluation's time per remaining epoch)."""

    def __init__(self, mode: str, every: int, epochs: int, start_epoch: int, steps_per_epoch: int, enabled: bool):
        if mode == "auto":
            mode = "bar" if sys.stderr.isatty() else "log"
        self.mode = mode if enabled else "none"
        self.every, self.epochs, self.steps = every, epochs, steps_per_epoch
        self.steps_left_total = (epochs - start_epoch) * steps_per_epoch
        self.step_time, self.steps_timed, self.eval_time = 0.0, 0, 0.0
        self.bar = None

    def start_epoch(self, epoch: int, loader):
        self.epoch = epoch
        self.t0 = time.perf_counter()
        if self.mode == "bar":
            from tqdm import tqdm

            self.bar = tqdm(loader, desc=f"epoch {epoch + 1}/{self.epochs}", unit="batch", dynamic_ncols=True)
            return self.bar
        return loader

    def eta(self, step: int):
        """(epoch seconds left, run seconds left) after `step` + 1 steps of this epoch."""
        per_step = (self.step_time + time.perf_counter() - self.t0) / max(self.steps_timed + step + 1, 1)
        epoch_left = per_step * (self.steps - step - 1)
        run_steps_left = self.steps_left_total - step - 1
        epochs_left = self.epochs - self.epoch
        return epoch_left, per_step * run_steps_left + self.eval_time * epochs_left

    def due(self, step: int) -> bool:
        return self.mode != "none" and (step % self.every == 0 or step + 1 == self.steps)

    def show(self, step: int, loss: torch.Tensor, images_per_s: float) -> None:
        epoch_left, run_left = self.eta(step)
        if self.mode == "bar":
            self.bar.set_postfix(loss=f"{loss.item():.4f}", img_s=f"{images_per_s:.0f}",
                                 run_eta=format_duration(run_left), refresh=False)
        else:
            print(f"epoch {self.epoch + 1}/{self.epochs} step {step + 1}/{self.steps} | loss {loss.item():.4f} | "
                  f"{images_per_s:.0f} img/s | epoch ETA {format_duration(epoch_left)} | "
                  f"run ETA {format_duration(run_left)}", flush=True)

    def end_epoch(self, steps_done: int) -> None:
        self.close()
        self.step_time += time.perf_counter() - self.t0
        self.steps_timed += steps_done
        self.steps_left_total -= steps_done

    def evaluated(self, seconds: float) -> None:
        self.eval_time = seconds

    def close(self) -> None:
        """Ends an open bar, so that a message after an interruption starts on its own line."""
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def _nonfinite(loss: torch.Tensor, model: torch.nn.Module, check_grads: bool) -> Optional[str]:
    """None if the loss (and, with check_grads, every gradient) is finite, else what is not."""
    named = [(n, p) for n, p in model.named_parameters() if p.grad is not None] if check_grads else []
    flags = torch.stack([loss.detach().isfinite().all()] + [p.grad.isfinite().all() for _, p in named])
    if bool(flags.all()):
        return None
    if not bool(flags[0]):
        return f"the loss is {loss.item()}"
    name = next(n for (n, _), ok in zip(named, flags[1:].tolist()) if not ok)
    layer = name.rsplit(".", 1)[0] if "." in name else "(top level)"
    module = model.get_submodule(layer) if "." in name else model
    return f"the gradient of {name} (layer {layer}, {type(module).__name__}) is not finite (loss {loss.item():.6g})"


def _step_curve(losses: List[torch.Tensor], first_step: int) -> List[List[float]]:
    """[[global step, mean loss over a chunk of steps]] with at most STEP_LOSS_POINTS points."""
    if not losses:
        return []
    values = torch.stack(losses).double().cpu()
    chunk = max(1, math.ceil(len(values) / STEP_LOSS_POINTS))
    return [[first_step + min(i + chunk, len(values)), round(values[i:i + chunk].mean().item(), 6)]
            for i in range(0, len(values), chunk)]


def fit(job: Job, args, d: Dist, device: torch.device, ckpt: Optional[Dict]) -> torch.nn.Module:
    """Trains job.model for args.epochs epochs (from the checkpoint's epoch on --resume); after
    each one evaluates and (rank 0) writes checkpoint.pt atomically, then appends its record to
    metrics.jsonl; finally writes summary.json and curves.png and prints a one-line summary.
    Ctrl-C, a full disk or (with --stop-on-nonfinite) a NaN end the run with a message saying how
    to resume it. Returns the unwrapped model."""
    run_dir = Path(args.out)
    try:
        return _fit(job, args, d, device, ckpt)
    finally:
        if d.main:
            release_lock(run_dir)


def _fit(job: Job, args, d: Dist, device: torch.device, ckpt: Optional[Dict]) -> torch.nn.Module:
    from torch.nn.parallel import DistributedDataParallel

    run_dir = Path(args.out)
    model, optimizer, scheduler = job.model, job.optimizer, job.scheduler
    scaler = torch.amp.GradScaler(device.type) if args.amp == "fp16" else None
    best_key, best_mode = job.best
    start_epoch, wall_before, best, best_epoch, records = 0, 0.0, None, None, []
    if ckpt is not None:
        model.load_state_dict(ckpt["model"])
        if ckpt.get("optimizer") is not None:
            optimizer.load_state_dict(ckpt["optimizer"])
        elif ckpt["epoch"] < args.epochs:
            _note(f"note: {run_dir / CHECKPOINT} is a finished run's and holds no optimizer state (it was trained "
                  f"without --keep-optimizer): the optimizer starts afresh, so these extra epochs differ from "
                  f"what one longer run would have trained")
        if scheduler is not None and ckpt.get("scheduler") is not None:
            scheduler.load_state_dict(ckpt["scheduler"])
        if scaler is not None and ckpt.get("scaler") is not None:
            scaler.load_state_dict(ckpt["scaler"])
        start_epoch, wall_before = ckpt["epoch"], ckpt["wall_time_s"]
        best, best_epoch, records = ckpt["best"], ckpt["best_epoch"], list(ckpt["records"])
        set_rng_state(ckpt["rng"][d.rank])
        if d.main:
            try:
                write_metrics(run_dir, records)
            except DiskFullError as e:
                raise SystemExit(f"{e}; {run_dir} is unchanged: free some space, then run\n  {args.resume_command}") from None
    if start_epoch >= args.epochs:
        if d.main:
            missing = [name for name in (CURVES, SUMMARY) if not (run_dir / name).is_file()]
            if missing:
                # A kill after the last checkpoint, before (or between) these two.
                _note(f"the finished run in {run_dir} lacks {' and '.join(missing)}: writing them again")
                _finish(job, args, d, device, records, best, best_epoch, wall_before, 0.0, only=missing)
            final = records[-1].get(best_key) if records else None
            print(f"the run in {run_dir} already finished its {start_epoch} epochs ({best_key} {final}, best "
                  f"{best} at epoch {best_epoch}); nothing to train. To train it further, pass a larger --epochs "
                  f"with --resume. Its files: {run_dir / METRICS}, {run_dir / SUMMARY}, {run_dir / CURVES}", flush=True)
        return model
    net = model
    if d.world > 1:
        net = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    train_loader, test_loader, sampler = make_loaders(job, args, d, device)
    if d.main and device.type == "cpu" and (args.epochs - start_epoch) * len(sampler) * d.world > CPU_SCALE_IMAGES:
        _note(f"warning: this is a GPU-scale run on a CPU ({args.epochs - start_epoch} epochs x "
              f"{len(sampler) * d.world} images): expect many hours (see the run ETA below). For a short CPU run, "
              f"pass e.g. --epochs 1 --subset 6000 --test-subset 2000 (what scripts/train.sh does on a CPU).")
    layers = (job.spiking_layers or default_spiking_layers)(model)
    started = time.perf_counter()
    steps_here = 0
    throughput = Throughput(device)
    progress = Progress(args.progress, args.log_every, args.epochs, start_epoch, len(train_loader), d.main)
    if d.main:
        print(f"{job.title} on {device_description(device)} x {d.world} process(es); epochs {start_epoch + 1}.."
              f"{args.epochs} of {len(train_loader)} steps; run dir {run_dir}", flush=True)
    epoch, step = start_epoch, -1
    try:
        for epoch in range(start_epoch, args.epochs):
            sampler.set_epoch(epoch)
            net.train()
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            sums: Dict[str, torch.Tensor] = {}
            step_losses: List[torch.Tensor] = []
            seen = 0
            throughput.begin()
            step = -1
            for step, batch in enumerate(progress.start_epoch(epoch, train_loader)):
                batch = [b.to(device, non_blocking=True) for b in batch]
                loss, stats, n = job.train_step(net, batch, epoch)
                optimizer.zero_grad(set_to_none=True)
                if scaler is not None:
                    scaler.scale(loss).backward()
                else:
                    loss.backward()
                if args.stop_on_nonfinite:
                    # Under fp16 loss scaling, inf gradients are expected (the scaler skips those steps).
                    problem = _nonfinite(loss, model, check_grads=scaler is None)
                    if problem is not None:
                        raise NonFiniteError(f"stopped at epoch {epoch + 1}, step {step + 1} of {len(train_loader)} "
                                             f"(--stop-on-nonfinite): {problem}")
                if scaler is not None:
                    scaler.step(optimizer)
                    scaler.update()
                else:
                    optimizer.step()
                for key, value in {"loss": loss.detach() * n, **stats}.items():
                    sums[key] = sums.get(key, 0) + value.detach().double()
                step_losses.append(loss.detach())
                seen += n
                throughput.add(n * d.world)
                steps_here += 1
                if args.halt_after_steps is not None and steps_here >= args.halt_after_steps:
                    raise SystemExit(f"halted after {steps_here} steps (--halt-after-steps), as if killed: no checkpoint written")
                if d.main and progress.due(step):
                    progress.show(step, loss, throughput.rate())
            progress.end_epoch(step + 1)
            images_per_s = throughput.rate()
            keys = sorted(sums)
            totals = torch.stack([sums[k] for k in keys] + [torch.tensor(float(seen), device=device, dtype=torch.float64)])
            if d.world > 1:
                dist.all_reduce(totals)
                # DDP syncs gradients, and buffers only at the start of a forward: give every rank
                # rank 0's buffers (BatchNorm statistics) now, so all hold the model the checkpoint holds.
                for buffer in model.buffers():
                    dist.broadcast(buffer, 0)
            if scheduler is not None:
                scheduler.step()
            test, rates = {}, {}
            if d.main:
                eval_start = time.perf_counter()
                counter = SpikeCounter(layers)
                try:
                    test = job.evaluate(model, test_loader)
                finally:
                    counter.remove()
                rates = counter.rates()
                if job.warn_firing:
                    warn_firing_rates(epoch + 1, rates)
                progress.evaluated(time.perf_counter() - eval_start)
            # Every rank's RNG state as the next epoch will find it, for an exact --resume.
            rng = [None] * d.world
            if d.world > 1:
                dist.all_gather_object(rng, rng_state())
            else:
                rng = [rng_state()]
            if d.main:
                value = test[best_key]
                if best is None or (value > best if best_mode == "max" else value < best):
                    best, best_epoch = value, epoch + 1
                wall = wall_before + time.perf_counter() - started
                count = max(totals[-1].item(), 1.0)
                record = {"epoch": epoch + 1}
                record.update({("train_loss" if k == "loss" else f"train_{k}"): totals[i].item() / count
                               for i, k in enumerate(keys)})
                record.update(test)
                record.update(images_per_s=round(images_per_s, 1), peak_gpu_mb=peak_gpu_mb(device),
                              lr=optimizer.param_groups[0]["lr"], wall_time_s=round(wall, 1))
                if rates:
                    record["firing_rate"] = rates
                if job.epoch_info is not None:
                    record.update(job.epoch_info(model))
                record["train_loss_steps"] = _step_curve(step_losses, epoch * len(train_loader))
                records.append(record)
                last = epoch + 1 == args.epochs
                keep_optimizer = not last or args.keep_optimizer
                save_atomic(dict(
                    recipe=recipe(args), model_config=job.model_config, model=model.state_dict(),
                    optimizer=optimizer.state_dict() if keep_optimizer else None,
                    scheduler=scheduler.state_dict() if scheduler is not None else None,
                    scaler=scaler.state_dict() if scaler is not None and keep_optimizer else None,
                    epoch=epoch + 1, rng=rng, wall_time_s=wall, best=best, best_epoch=best_epoch, best_key=best_key,
                    records=records, finished=last,
                ), run_dir / CHECKPOINT)
                fault_point("checkpoint_written")
                append_metrics(run_dir, record)
                fault_point("metrics_written")
                shown = " | ".join(f"{k} {v:.4g}" for k, v in record.items()
                                   if isinstance(v, float) and (k.startswith("train_") or k.startswith("test_")))
                print(f"epoch {epoch + 1}: {shown} | {images_per_s:.0f} img/s", flush=True)
            if d.world > 1:
                dist.barrier()
        if d.main:
            _finish(job, args, d, device, records, best, best_epoch, wall_before, time.perf_counter() - started)
    except KeyboardInterrupt:
        progress.close()
        if d.main:
            _interrupted(args, run_dir, epoch, step, len(train_loader), "interrupted (Ctrl-C)")
        raise SystemExit(130) from None
    except (DiskFullError, NonFiniteError) as e:
        if not d.main:
            raise
        progress.close()
        _interrupted(args, run_dir, epoch, step, len(train_loader), str(e))
        raise SystemExit(1) from None
    return model


class NonFiniteError(RuntimeError):
    """--stop-on-nonfinite found a NaN or infinity."""


def _interrupted(args, run_dir: Path, epoch: int, step: int, steps: int, why: str) -> None:
    """Says what state the run directory is in and how to go on."""
    where = f"in epoch {epoch + 1} at step {max(step + 1, 0)} of {steps}"
    ckpt = run_dir / CHECKPOINT
    if ckpt.is_file():
        _note(f"{why} {where}. {ckpt} holds the run as of the end of the last finished epoch and is intact; "
              f"continue with:\n  {args.resume_command}")
        return
    if getattr(args, "run_dir_created", False) or getattr(args, "lock_created", False):
        _undo_run_dir(args)
        gone = "" if run_dir.exists() else f"; {run_dir} was removed"
        _note(f"{why} {where}: nothing was saved yet (the first checkpoint comes at the end of epoch 1){gone}. "
              f"Start again with:\n  {args.resume_command}")
    else:
        _note(f"{why} {where}: nothing was saved yet. Start again with:\n  {args.resume_command}")


def _finish(job: Job, args, d: Dist, device, records: List[Dict], best, best_epoch, wall_before: float,
            wall_here: float, only=(CURVES, SUMMARY)) -> None:
    """curves.png, then summary.json (the mark of a finished run, so it comes last), and the
    closing line; `only` names which of the two files to write."""
    run_dir = Path(args.out)
    best_key = job.best[0]
    final = records[-1] if records else {}
    wall = round(wall_before + wall_here, 1)
    summary = {f"final_{best_key}": final.get(best_key), f"best_{best_key}": best, "best_epoch": best_epoch}
    summary.update(
        epochs=args.epochs, wall_time_s=wall,
        images_per_s_last_epoch=final.get("images_per_s"), peak_gpu_mb=final.get("peak_gpu_mb"),
        device=device_description(device), processes=d.world, recipe=recipe(args),
    )
    if CURVES in only:
        plot_curves(run_dir, records, job.curves)
        fault_point("curves_written")
    if SUMMARY in only:
        write_json_atomic(summary, run_dir / SUMMARY)
    unit = "%" if best_key.endswith("_acc") else ""
    value = final.get(best_key)
    shown = f"{value:.2f}{unit}" if isinstance(value, float) else str(value)
    best_shown = f"{best:.2f}{unit}" if isinstance(best, float) else str(best)
    print(f"done: {best_key} {shown} (best {best_shown} at epoch {best_epoch}) | "
          f"{final.get('images_per_s', 0):.0f} img/s | wall {format_duration(wall)} | "
          f"{run_dir / METRICS}, {run_dir / SUMMARY}, {run_dir / CURVES}", flush=True)


def _panels(records: List[Dict], pairs: List) -> List:
    """(title, x label, {label: (xs, ys)}) per panel: the entry point's per-epoch pairs, then what
    the records hold (per-step loss, per-layer firing rates, tau and v_th)."""
    epochs = [r["epoch"] for r in records]
    panels = [(title, "epoch", {k: (epochs, [r.get(k) for r in records]) for k in keys}) for title, keys in pairs]
    steps = [p for r in records for p in r.get("train_loss_steps", [])]
    if steps:
        panels.append(("training loss per step (chunk means)", "step",
                       {"train_loss": ([s for s, _ in steps], [v for _, v in steps])}))

    def per_layer(field: str, key: Optional[str] = None) -> Dict:
        lines: Dict[str, tuple] = {}
        for r in records:
            for layer, value in (r.get(field) or {}).items():
                if key is not None:
                    value = value.get(key, value.get(f"{key}_mean")) if isinstance(value, dict) else None
                if isinstance(value, (int, float)):
                    xs, ys = lines.setdefault(layer, ([], []))
                    xs.append(r["epoch"])
                    ys.append(value)
        return lines

    for title, field, key in (("firing rate per layer (test)", "firing_rate", None),
                              ("firing rate per layer (training)", "train_firing_rate", None),
                              ("tau per layer", "neurons", "tau"), ("v_th per layer", "neurons", "v_th")):
        lines = per_layer(field, key)
        if lines:
            panels.append((title, "epoch", lines))
    return panels


def plot_curves(run_dir: Path, records: List[Dict], pairs: Iterable) -> None:
    """curves.png: one panel per (title, [metric keys]) in `pairs` against epoch, then the
    per-step training loss and, where the records hold them, per-layer firing rates, tau and v_th."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = _panels(records, list(pairs))
    cols = min(3, len(panels))
    rows = math.ceil(len(panels) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5 * cols, 3.5 * rows), squeeze=False)
    for ax in axes.flat[len(panels):]:
        ax.axis("off")
    for ax, (title, xlabel, lines) in zip(axes.flat, panels):
        for label, (xs, ys) in lines.items():
            ax.plot(xs, ys, marker="o" if xlabel == "epoch" else None, markersize=3, label=label)
        ax.set_xlabel(xlabel)
        ax.set_title(title)
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=120)
    plt.close(fig)
    write_bytes_atomic(buffer.getvalue(), Path(run_dir) / CURVES)


def device_description(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)} (torch {torch.__version__})"
    return f"CPU, {torch.get_num_threads()} threads (torch {torch.__version__})"


def peak_gpu_mb(device: torch.device) -> Optional[float]:
    if device.type != "cuda":
        return None
    return round(torch.cuda.max_memory_allocated(device) / 2**20, 1)


class Throughput:
    """Images per second over a span of training steps (synchronising the GPU at the ends)."""

    def __init__(self, device: torch.device):
        self.device = device
        self.start = None
        self.images = 0

    def begin(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self.start = time.perf_counter()
        self.images = 0

    def add(self, n: int) -> None:
        self.images += n

    def rate(self) -> float:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        elapsed = time.perf_counter() - self.start
        return self.images / elapsed if elapsed > 0 else 0.0
