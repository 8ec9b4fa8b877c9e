"""The run's files: atomic, fsynced writes that never follow a link, checkpoints read safely
(CRC-32s verified, weights_only=True), and the per-epoch metrics file."""
import errno
import io
import json
import os
import pickle
import tempfile
import zipfile
from pathlib import Path
from typing import Dict, Iterable, List, Optional

import torch

CHECKPOINT = "checkpoint.pt"
METRICS = "metrics.jsonl"
SUMMARY = "summary.json"
CURVES = "curves.png"
RUN_FILES = (CHECKPOINT, METRICS, SUMMARY, CURVES)


def fault_point(name: str) -> None:
    """Does nothing. Tests replace it to die at a chosen moment ("mid_write", "checkpoint_written",
    "metrics_written", "curves_written"), as a kill there would."""




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
        raise CheckpointError(f"{path} is damaged, truncated or not a PyTorch checkpoint "
                              f"({size} bytes; zip: {e})") from None
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


# The model_config fields that tell which trainer wrote a checkpoint (a VAE's config has a latent
# and an image size too, so it is told first), and what each trains.
KIND_FIELDS = {"train_vae": {"model", "decoder"}, "train_classifier": {"stages", "neuron"},
               "train_fad_ae": {"in_channels", "image_size", "latent"}}
KIND_NAMES = {"train_vae": "a VAE", "train_classifier": "a spiking classifier",
              "train_fad_ae": "the FAD autoencoder"}


def checkpoint_kind(ckpt: Dict) -> Optional[str]:
    """"train_vae", "train_classifier" or "train_fad_ae": the trainer whose model_config the
    checkpoint holds (told by its fields); None for anything else."""
    cfg = ckpt.get("model_config")
    if isinstance(cfg, dict):
        for kind, fields in KIND_FIELDS.items():
            if fields <= set(cfg):
                return kind
    return None


def require_kind(ckpt: Dict, path, option: str, expected: str) -> None:
    """Raises ValueError unless `ckpt` (read from `path`, given as `option`) is a checkpoint of
    the trainer `expected`, saying what it is instead."""
    kind = checkpoint_kind(ckpt)
    if kind == expected:
        return
    if kind is None:
        cfg = ckpt.get("model_config")
        held = sorted(cfg)[:8] if isinstance(cfg, dict) else type(cfg).__name__
        got = f"not a checkpoint of this project's VAE, classifier or FAD trainers (its model_config holds {held})"
    else:
        got = f"a {kind} checkpoint ({KIND_NAMES[kind]})"
    raise ValueError(f"{option} {path} is {got}; expected a {expected} checkpoint ({KIND_NAMES[expected]})")


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
