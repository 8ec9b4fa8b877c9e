"""The run directory: its lock, the decision to start, resume or refuse (made before anything in
it is touched), the temporaries of killed writes, and on --resume the checkpoint and the recipe
check.

A run directory cannot be turned against its user: no link in it is followed (the lock is opened
with O_NOFOLLOW and never written, temporaries are new files with unpredictable names, a run file
that is not a regular file is refused), and nothing is deleted that the run did not write."""
import errno
import json
import os
import socket
import stat
import time
from pathlib import Path
from typing import Dict, List, Optional

import torch

from .cli import INTERNAL, RUN_ONLY, _note
from .env import init_distributed, pick_device, seed_everything
from .files import CHECKPOINT, RUN_FILES, SUMMARY, CheckpointError, load_checkpoint, read_metrics, write_bytes_atomic

LOCK = ".lock"
LOCK_HOLDER = ".lock-holder.json"
LOCK_FILES = (LOCK, LOCK_HOLDER)

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
    except OSError:
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
            raise RunDirError(f"--out {out} already holds files; pass --resume to continue that run, or choose a new "
                              f"directory (it holds {shown})")
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
        why = ("is new" if created
               else "holds no checkpoint yet (an earlier attempt stopped before its first epoch ended)")
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


def recipe_differences(saved: Dict, args, inherit=()) -> Dict[str, tuple]:
    """{option: (the run's value, this command's)} for each recipe option that differs from the
    run's recipe `saved`; the options in `inherit` left as None first take the run's value."""
    for key in inherit:
        if getattr(args, key) is None:
            setattr(args, key, saved.get(key))
    mine = recipe(args)
    return {k: (saved.get(k), mine.get(k)) for k in sorted(set(saved) | set(mine)) if saved.get(k) != mine.get(k)}


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
        diff = recipe_differences(ckpt["recipe"], args, inherit)
        if diff:
            release_lock(run_dir)
            details = ", ".join(f"{k}: run has {a!r}, now {b!r}" for k, (a, b) in diff.items())
            parser.error(f"--resume: the arguments differ from the run's ({details}); "
                         f"only {sorted(RUN_ONLY)} may change")
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
