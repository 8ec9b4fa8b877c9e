"""The shared training driver (models/training/) under faults, on the tiny network of
tiny_run.py: kills at chosen moments (simulated by raising there, and one real SIGKILL), damaged
and crafted checkpoints, a full disk, two writers, Ctrl-C, bad run directories, and the run's
user-facing output (progress, summary, help, curves)."""
import errno
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest
import torch

import tiny_run
from classifier_data import write_tiny_mnist
from models import training as tr

ROOT = Path(__file__).resolve().parent.parent
FAST = ["--workers", "0", "--progress", "none", "--epochs", "3"]
TIMING = {"images_per_s", "wall_time_s", "peak_gpu_mb"}


@pytest.fixture(autouse=True)
def quick_curves(monkeypatch):
    """matplotlib takes seconds per figure here: the runs write a placeholder curves.png built
    from the same panels (the curves test draws the real one)."""
    def plot(run_dir, records, pairs):
        tr.curves._panels(records, list(pairs))
        tr.write_bytes_atomic(b"placeholder", Path(run_dir) / tr.CURVES)

    monkeypatch.setattr(tr.curves, "plot_curves", plot)


class SimulatedKill(BaseException):
    """Raised at a chosen point, as a SIGKILL there would end the process (no except clause of
    the driver catches a BaseException that is not KeyboardInterrupt)."""


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    write_tiny_mnist(root, n_train=24, n_test=8)
    return str(root)


@pytest.fixture(scope="module")
def full(data_dir, tmp_path_factory):
    """An uninterrupted three-epoch run: (model state, metrics records)."""
    out = tmp_path_factory.mktemp("full") / "run"
    model = tiny_run.main(FAST + ["--data-dir", data_dir, "--out", str(out)])
    return model.state_dict(), tr.read_metrics(out)


def run(data_dir, out, *extra):
    return tiny_run.main(FAST + ["--data-dir", data_dir, "--out", str(out), *extra])


def assert_same_run(full, model, out):
    """Bitwise-equal weights and equal metrics (timings aside), epochs 1..3 once each."""
    state, records = full
    for name, value in model.state_dict().items():
        assert torch.equal(value, state[name]), name
    got = tr.read_metrics(out)
    assert [r["epoch"] for r in got] == [1, 2, 3]
    strip = lambda r: {k: v for k, v in r.items() if k not in TIMING}  # noqa: E731
    assert [strip(r) for r in got] == [strip(r) for r in records]


def kill_at(monkeypatch, point, occurrence):
    seen = []

    def fault(name):
        if name == point:
            seen.append(name)
            if len(seen) == occurrence:
                raise SimulatedKill(f"killed at {point} #{occurrence}")

    monkeypatch.setattr(tr.files, "fault_point", fault)


# ---- item 3: a kill at any moment leaves a run that --resume continues exactly ----------------
@pytest.mark.parametrize("point,occurrence", [
    ("mid_write", 2),            # halfway through writing epoch 2's checkpoint: epoch 1's stays
    ("checkpoint_written", 1),   # epoch 1's checkpoint written, its metrics line not yet
    ("checkpoint_written", 3),   # the last epoch's checkpoint written, no summary yet
    ("metrics_written", 2),      # epoch 2 complete on disk
])
def test_a_kill_at_each_point_resumes_bitwise_exact(data_dir, tmp_path, monkeypatch, full, point, occurrence):
    kill_at(monkeypatch, point, occurrence)
    with pytest.raises(SimulatedKill):
        run(data_dir, tmp_path / "cut")
    monkeypatch.setattr(tr.files, "fault_point", lambda name: None)
    assert not list((tmp_path / "cut").glob(".*.tmp-*"))
    resumed = run(data_dir, tmp_path / "cut", "--resume")
    assert_same_run(full, resumed, tmp_path / "cut")
    assert (tmp_path / "cut" / "summary.json").is_file() and (tmp_path / "cut" / "curves.png").is_file()


def test_a_kill_mid_epoch_and_a_torn_metrics_line_resume_exactly(data_dir, tmp_path, full):
    with pytest.raises(SystemExit, match="halted after 5 steps"):
        run(data_dir, tmp_path / "cut", "--halt-after-steps", "5")
    with open(tmp_path / "cut" / "metrics.jsonl", "a") as f:
        f.write('{"epoch": 2, "train_lo')  # what a kill mid-append leaves
    assert_same_run(full, run(data_dir, tmp_path / "cut", "--resume"), tmp_path / "cut")


def test_a_kill_before_the_first_checkpoint_never_sticks(data_dir, tmp_path, capsys, full):
    """Killed in epoch 1: --resume starts over (saying so), and so does a plain start."""
    with pytest.raises(SystemExit, match="halted"):
        run(data_dir, tmp_path / "cut", "--halt-after-steps", "2")
    assert [p.name for p in (tmp_path / "cut").iterdir()] == [tr.LOCK]
    capsys.readouterr()
    resumed = run(data_dir, tmp_path / "cut", "--resume")
    err = capsys.readouterr().err
    assert "holds no checkpoint yet" in err and "starting the run from the beginning" in err
    assert_same_run(full, resumed, tmp_path / "cut")
    with pytest.raises(SystemExit, match="halted"):
        run(data_dir, tmp_path / "again", "--halt-after-steps", "1")
    assert_same_run(full, run(data_dir, tmp_path / "again"), tmp_path / "again")  # only .lock was left


def _script(data_dir, out, *extra, **popen):
    """tiny_run.py in a fresh process, as a user starts it."""
    env = dict(os.environ, OMP_NUM_THREADS=str(torch.get_num_threads()))
    return subprocess.Popen([sys.executable, str(ROOT / "tests" / "tiny_run.py"), *FAST[:-1], "12", "--data-dir",
                             data_dir, "--out", str(out), *extra], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, **popen)


def test_a_real_sigkill_then_resume_is_bitwise_exact(data_dir, tmp_path):
    """SIGKILLed as soon as its first checkpoint exists, then --resume'd, a 12-epoch run ends with the
    weights of the same run made straight through. Every run is a fresh process started the same way,
    so the comparison is like with like: this test's own process has run other training before (the
    simulated kills above compare within one process)."""
    out = tmp_path / "killed"
    proc = _script(data_dir, out)
    deadline = time.monotonic() + 120
    while not (out / "checkpoint.pt").exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    _, err = proc.communicate()
    assert proc.returncode == -signal.SIGKILL, err.decode()
    killed_at = tr.load_checkpoint(out / "checkpoint.pt")["epoch"]
    assert killed_at < 12
    # Finish the killed run, and make the same run straight through, side by side.
    resumed, straight = _script(data_dir, out, "--resume"), _script(data_dir, tmp_path / "straight")
    for p in (resumed, straight):
        _, err = p.communicate(timeout=300)
        assert p.returncode == 0, err.decode()
    a = tr.load_checkpoint(out / "checkpoint.pt")
    b = tr.load_checkpoint(tmp_path / "straight" / "checkpoint.pt")
    assert a["epoch"] == b["epoch"] == 12
    differ = [name for name, value in b["model"].items() if not torch.equal(value, a["model"][name])]
    first = next((r["epoch"] for r, q in zip(tr.read_metrics(out), tr.read_metrics(tmp_path / "straight"))
                  if r["train_loss"] != q["train_loss"]), None)
    assert not differ, f"killed after epoch {killed_at}: {differ} differ (train_loss first differs at epoch {first})"
    assert [r["epoch"] for r in tr.read_metrics(out)] == list(range(1, 13))


def test_a_real_ctrl_c_prints_the_resume_command_and_no_traceback(data_dir, tmp_path):
    out = tmp_path / "r"
    # A shell running the suite in the background (`&`, nohup, some CI runners) starts it with
    # SIGINT ignored, and children inherit that: the child gets SIGINT's default disposition back,
    # as a program started from a terminal has it.
    proc = subprocess.Popen([sys.executable, str(ROOT / "tests" / "tiny_run.py"), *FAST[:-1], "200", "--data-dir",
                             data_dir, "--out", str(out)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 120
    while not (out / "metrics.jsonl").exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    err = err.decode()
    assert proc.returncode == 130, err
    assert "interrupted (Ctrl-C) in epoch" in err and "Traceback" not in err
    command = err.strip().splitlines()[-1].strip()
    assert f"--out {out} " in command and " --epochs 200 " in command and command.endswith(" --resume")
    assert tr.load_checkpoint(out / "checkpoint.pt")["epoch"] >= 1


# ---- item 4: stale temporaries, a full disk ----------------------------------------------------
def test_stale_temporaries_are_removed_at_start(data_dir, tmp_path, capsys, full):
    run(data_dir, tmp_path / "r", "--epochs", "1", "--keep-optimizer")
    stale = tmp_path / "r" / ".checkpoint.pt.tmp-999999"
    stale.write_bytes(b"PK\x03\x04" + bytes(2 << 20))  # a partial write of a killed process
    capsys.readouterr()
    resumed = run(data_dir, tmp_path / "r", "--resume")
    assert ".checkpoint.pt.tmp-999999 (2.0 MB)" in capsys.readouterr().err
    assert not stale.exists()
    assert_same_run(full, resumed, tmp_path / "r")


def test_a_full_disk_says_so_and_leaves_the_last_checkpoint_resumable(data_dir, tmp_path, capsys, monkeypatch, full):
    real_write = os.write
    writes = []

    def write(fd, data):
        target = os.readlink(f"/proc/self/fd/{fd}")
        if ".checkpoint.pt.tmp-" in target:
            writes.append(target)
            if len(writes) > 1:  # epoch 1's checkpoint fits; epoch 2's does not
                real_write(fd, bytes(data)[:100])
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_write(fd, data)

    monkeypatch.setattr(os, "write", write)
    with pytest.raises(SystemExit) as exc:
        run(data_dir, tmp_path / "r")
    assert exc.value.code == 1
    err = capsys.readouterr().err
    assert "no space left on device writing" in err and "checkpoint.pt was left as it was" in err
    assert "in epoch 2" in err and "--resume" in err
    assert tr.load_checkpoint(tmp_path / "r" / "checkpoint.pt")["epoch"] == 1
    assert not list((tmp_path / "r").glob(".*.tmp-*"))
    assert [r["epoch"] for r in tr.read_metrics(tmp_path / "r")] == [1]
    monkeypatch.setattr(os, "write", real_write)
    assert_same_run(full, run(data_dir, tmp_path / "r", "--resume"), tmp_path / "r")


# ---- item 5: one writer per run directory ------------------------------------------------------
def test_a_second_live_writer_is_refused_naming_the_first(data_dir, tmp_path, capsys):
    out = tmp_path / "r"
    out.mkdir()
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys; sys.path.insert(0, sys.argv[1]); from models import training as tr; "
         "tr.acquire_lock(sys.argv[2], 'the first run'); print('locked', flush=True); sys.stdin.read()",
         str(ROOT), str(out)], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        assert holder.stdout.readline().strip() == b"locked"
        with pytest.raises(SystemExit) as exc:
            run(data_dir, out, "--resume")
        assert exc.value.code == 2
        err = capsys.readouterr().err
        assert f"in use by another live run: pid {holder.pid}" in err and "the first run" in err
    finally:
        holder.kill()
        holder.wait()
    run(data_dir, out, "--epochs", "1")  # the kernel dropped the dead holder's lock
    assert [r["epoch"] for r in tr.read_metrics(out)] == [1]


# ---- items 1, 2, 7: checkpoints that cannot hurt ----------------------------------------------
class Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


@pytest.fixture(scope="module")
def finished(data_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("finished") / "run"
    run(data_dir, out, "--epochs", "1")
    return out


def test_checkpoints_hold_only_tensors_and_plain_values(finished):
    ckpt = torch.load(finished / "checkpoint.pt", weights_only=True)
    assert ckpt["epoch"] == 1 and ckpt["finished"] and ckpt["records"][0]["epoch"] == 1
    assert zipfile.ZipFile(finished / "checkpoint.pt").testzip() is None


def test_a_crafted_checkpoint_is_refused_without_running_its_payload(data_dir, finished, tmp_path, capsys):
    marker = tmp_path / "payload_ran"
    ckpt = torch.load(finished / "checkpoint.pt", weights_only=True)
    ckpt["records"] = [Payload(marker)]
    out = tmp_path / "r"
    out.mkdir()
    torch.save(ckpt, out / "checkpoint.pt")
    with pytest.raises(tr.CheckpointError, match="refused without running them"):
        tr.load_checkpoint(out / "checkpoint.pt")
    with pytest.raises(SystemExit):
        run(data_dir, out, "--resume")
    assert "refused without running them" in capsys.readouterr().err
    assert not marker.exists()
    torch.load(out / "checkpoint.pt", weights_only=False)  # what the refusal prevents: the payload runs
    assert marker.exists()


def _damaged(finished, tmp_path, how):
    path = tmp_path / "checkpoint.pt"
    data = bytearray((finished / "checkpoint.pt").read_bytes())
    if how == "flipped":
        with zipfile.ZipFile(finished / "checkpoint.pt") as z:
            info = max(z.infolist(), key=lambda i: i.file_size)  # the largest tensor record
        data[info.header_offset + 30 + len(info.filename) + 64 + info.file_size // 2] ^= 0x01
    elif how == "truncated":
        data = data[: len(data) // 2]
    elif how == "empty":
        data = b""
    elif how == "random":
        data = os.urandom(4096)
    path.write_bytes(bytes(data))
    if how == "foreign":
        torch.save({"weights": torch.zeros(3)}, path)
    return path


@pytest.mark.parametrize("how,message", [
    ("flipped", r"is damaged: the CRC-32 of its record '.*data/\d+' does not match"),
    ("truncated", "is damaged, truncated or not a PyTorch checkpoint"),
    ("empty", r"is empty \(0 bytes\)"),
    ("random", "is damaged, truncated or not a PyTorch checkpoint"),
    ("foreign", r"is not a training checkpoint: it lacks \['recipe', 'model', 'epoch', 'rng', 'records'\]"),
])
def test_damaged_and_foreign_checkpoints_are_refused_with_a_message(data_dir, finished, tmp_path, capsys, how, message):
    path = _damaged(finished, tmp_path, how)
    with pytest.raises(SystemExit) as exc:
        run(data_dir, tmp_path, "--resume", "--epochs", "2")
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert str(path) in err and re.search(message, err), err
    assert "Traceback" not in err


def test_the_final_checkpoint_drops_the_optimizer_unless_kept(data_dir, finished, tmp_path, capsys, full):
    slim = tr.load_checkpoint(finished / "checkpoint.pt")
    assert slim["optimizer"] is None
    run(data_dir, tmp_path / "kept", "--epochs", "2", "--keep-optimizer")
    kept = tr.load_checkpoint(tmp_path / "kept" / "checkpoint.pt")
    assert kept["optimizer"]["state"] and kept["epoch"] == 2
    # --keep-optimizer makes training a finished run further exact ...
    assert_same_run(full, run(data_dir, tmp_path / "kept", "--resume"), tmp_path / "kept")
    # ... without it the continuation says it restarts the optimizer.
    run(data_dir, tmp_path / "slim", "--epochs", "2")
    capsys.readouterr()
    run(data_dir, tmp_path / "slim", "--resume")
    assert "holds no optimizer state" in capsys.readouterr().err


# ---- item 7: run directories and arguments ----------------------------------------------------
def test_bad_run_directories_are_explained(data_dir, tmp_path, capsys, monkeypatch):
    (tmp_path / "file").write_text("x")
    with pytest.raises(SystemExit):
        run(data_dir, tmp_path / "file")
    assert "exists and is not a directory" in capsys.readouterr().err

    def denied(run_dir, command):
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(tr.rundir, "acquire_lock", denied)
    with pytest.raises(SystemExit):
        run(data_dir, tmp_path / "ro")
    assert "cannot create or write the run directory (Permission denied)" in capsys.readouterr().err


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only directories")
def test_a_read_only_run_directory_is_refused(data_dir, tmp_path, capsys):
    (tmp_path / "ro").mkdir(mode=0o555)
    with pytest.raises(SystemExit):
        run(data_dir, tmp_path / "ro")
    assert "cannot create or write" in capsys.readouterr().err


def test_output_files_are_checked_before_the_work(tmp_path):
    tr.check_output_file(tmp_path / "report.json")
    with pytest.raises(ValueError, match="is a directory; give a file name"):
        tr.check_output_file(tmp_path)
    with pytest.raises(ValueError, match=f"the folder {tmp_path / 'nowhere'} does not exist"):
        tr.check_output_file(tmp_path / "nowhere" / "report.json")


def test_resume_with_fewer_epochs_than_done_and_a_finished_run(data_dir, finished, tmp_path, capsys):
    metrics = (finished / "metrics.jsonl").read_text()
    with pytest.raises(SystemExit):
        run(data_dir, finished, "--resume", "--epochs", "1", "--lr", "0.5")
    assert "lr: run has 0.01, now 0.5" in capsys.readouterr().err
    out = tmp_path / "two"
    run(data_dir, out, "--epochs", "2")
    with pytest.raises(SystemExit):
        run(data_dir, out, "--resume", "--epochs", "1")
    assert "has already trained 2 epochs; --epochs 1 would end it before that" in capsys.readouterr().err
    capsys.readouterr()
    run(data_dir, finished, "--resume", "--epochs", "1")
    assert "already finished its 1 epochs" in capsys.readouterr().out
    assert (finished / "metrics.jsonl").read_text() == metrics


# ---- item 8 and --stop-on-nonfinite ------------------------------------------------------------
def test_atomic_writes_fsync_the_file_and_the_directory(tmp_path, monkeypatch):
    synced = []
    real = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(os.readlink(f"/proc/self/fd/{fd}")), real(fd)))
    tr.save_atomic({"x": torch.ones(2)}, tmp_path / "c.pt")
    assert len(synced) == 2 and synced[1] == str(tmp_path)
    assert re.fullmatch(re.escape(str(tmp_path / ".c.pt.tmp-")) + r"\w{6,}", synced[0]), synced
    assert torch.equal(tr.load_checkpoint(tmp_path / "c.pt")["x"], torch.ones(2))


@pytest.mark.parametrize("what,message", [
    ("loss", r"stopped at epoch 2, step 2 of 3 \(--stop-on-nonfinite\): the loss is nan"),
    ("grad", r"stopped at epoch 2, step 2 of 3 .*the gradient of fc1.weight \(layer fc1, Linear\) is not finite"),
])
def test_stop_on_nonfinite_names_the_step_and_the_layer(data_dir, tmp_path, capsys, monkeypatch, what, message):
    def poison(step, net):
        if step == 4:
            if what == "loss":
                net.fc2.bias.data.fill_(float("nan"))
            else:
                net.fc1.weight.register_hook(lambda g: g * float("nan"))

    monkeypatch.setattr(tiny_run, "STEP_HOOK", poison)
    with pytest.raises(SystemExit) as exc:
        run(data_dir, tmp_path / "r", "--stop-on-nonfinite")
    assert exc.value.code == 1
    err = capsys.readouterr().err
    assert re.search(message, err), err
    assert tr.load_checkpoint(tmp_path / "r" / "checkpoint.pt")["epoch"] == 1


# ---- issue 15: Ctrl-C, progress, summary, help, workers, curves, CPU scale ---------------------
def test_ctrl_c_ends_cleanly_with_the_resume_command_that_works(data_dir, tmp_path, capsys, monkeypatch, full):
    def interrupt(step, net):
        if step == 4:
            raise KeyboardInterrupt

    monkeypatch.setattr(tiny_run, "STEP_HOOK", interrupt)
    with pytest.raises(SystemExit) as exc:
        run(data_dir, tmp_path / "r")
    assert exc.value.code == 130
    err = capsys.readouterr().err
    assert "interrupted (Ctrl-C) in epoch 2 at step 2 of 3" in err and "is intact" in err
    command = shlex.split(err.strip().splitlines()[-1])
    assert command[:2] == ["python", "tests/tiny_run.py"] and command[-1] == "--resume"
    monkeypatch.setattr(tiny_run, "STEP_HOOK", None)
    assert_same_run(full, tiny_run.main(command[2:]), tmp_path / "r")


def test_ctrl_c_in_the_first_epoch_leaves_no_empty_run_directory(data_dir, tmp_path, capsys, monkeypatch):
    def interrupt(step, net):
        if step == 1:
            raise KeyboardInterrupt

    monkeypatch.setattr(tiny_run, "STEP_HOOK", interrupt)
    with pytest.raises(SystemExit):
        run(data_dir, tmp_path / "new")
    err = capsys.readouterr().err
    assert "nothing was saved yet" in err and "was removed" in err and "Start again with" in err
    assert not (tmp_path / "new").exists()
    (tmp_path / "mine").mkdir()
    with pytest.raises(SystemExit):
        run(data_dir, tmp_path / "mine")
    assert (tmp_path / "mine").is_dir()  # a directory the user made stays


def test_log_progress_shows_the_run_eta_and_the_summary_line(data_dir, tmp_path, capsys):
    tiny_run.main(["--workers", "0", "--epochs", "2", "--progress", "log", "--log-every", "2", "--data-dir", data_dir,
                   "--out", str(tmp_path / "r")])
    out = capsys.readouterr().out
    lines = [line for line in out.splitlines() if line.startswith("epoch ") and " step " in line]
    # Steps 1 and 3 (every 2nd) of 3 in each of 2 epochs.
    assert [line.split(" |")[0] for line in lines] == ["epoch 1/2 step 1/3", "epoch 1/2 step 3/3", "epoch 2/2 step 1/3",
                                                        "epoch 2/2 step 3/3"]
    assert all("| epoch ETA " in line and "| run ETA " in line for line in lines)
    summary = json.loads((tmp_path / "r" / "summary.json").read_text())
    done = out.strip().splitlines()[-1]
    assert done.startswith(f"done: test_acc {summary['final_test_acc']:.2f}% "
                           f"(best {summary['best_test_acc']:.2f}% at epoch")
    for name in ("metrics.jsonl", "summary.json", "curves.png"):
        assert str(tmp_path / "r" / name) in done
    assert "img/s | wall 0:00:" in done


def test_bar_progress_shows_the_run_eta(data_dir, tmp_path, capsys):
    run(data_dir, tmp_path / "r", "--epochs", "1", "--progress", "bar", "--log-every", "1")
    assert "run_eta=0:00:" in capsys.readouterr().err


def test_a_gpu_scale_run_on_the_cpu_is_warned_about(data_dir, tmp_path, capsys, monkeypatch):
    run(data_dir, tmp_path / "small", "--epochs", "1")
    assert "GPU-scale" not in capsys.readouterr().err
    monkeypatch.setattr(tr.loop, "CPU_SCALE_IMAGES", 47)  # one epoch of 24 images: under; three: over
    run(data_dir, tmp_path / "big")
    assert "warning: this is a GPU-scale run on a CPU (3 epochs x 24 images)" in capsys.readouterr().err


def test_help_describes_every_shared_option_with_its_default():
    parser = tiny_run.build_parser()
    text = parser.format_help()
    shared = [a for a in parser._actions if a.option_strings and a.dest not in ("help", "hidden", "halt_after_steps")]
    assert len(shared) == 19  # with --probes and --probe-size
    for action in shared:
        assert action.help and ("default" in action.help or action.required), action.dest
    assert "%(default)" not in text and "(default: 0.01)" in text and "(default: this checkout's data/" in text
    assert "--halt-after-steps" not in text


def test_workers_are_capped_by_the_cpus_and_data_defaults_to_the_shipped_copy(tmp_path, capsys):
    parser = tiny_run.build_parser()
    args = parser.parse_args(["--out", str(tmp_path / "r"), "--workers", "999"])
    tr.validate_run_args(args, parser, lambda: None)
    assert args.workers == tr.cpu_count()
    assert f"--workers 999 is more than the {tr.cpu_count()} CPUs available" in capsys.readouterr().err
    args = parser.parse_args(["--out", str(tmp_path / "s")])
    tr.validate_run_args(args, parser, lambda: None)
    assert not (tmp_path / "s").exists()  # validation creates nothing
    assert args.workers == min(4, tr.cpu_count())
    assert Path(args.data_dir) == ROOT / "data" and (Path(args.data_dir) / "MNIST" / "raw" / "SHA256SUMS").is_file()


def test_firing_rates_count_spikes_per_neuron_per_step():
    model = tiny_run.Tiny(hidden=5)
    monitor = tr.FiringMonitor(tr.default_spiking_layers(model))
    x = torch.randn(4, 1, 28, 28)
    with torch.no_grad():
        current = model.fc1(x.flatten(1))
        spikes = model.neuron(current.unsqueeze(0).expand(2, *current.shape))
        model(x)
    monitor.remove()
    assert monitor.rates("train") == pytest.approx({"neuron": spikes.mean().item()}, rel=1e-6)
    assert monitor.rates("eval") == {}


def test_silent_and_saturated_layers_are_warned_about_in_training_and_on_the_test_set(data_dir, tmp_path, monkeypatch):
    """A job with warn_firing: a FiringRateWarning per layer outside [1 %, 99 %], naming the epoch
    and where (here the thresholds are moved so that the tiny run's layer is outside)."""
    monkeypatch.setattr(tr.loop, "firing_warnings", lambda rates: tr.firing_warnings(rates, low=0.999, high=1.0))
    real_job = tr.Job
    monkeypatch.setattr(tr, "Job", lambda **kw: real_job(**kw, warn_firing=True))
    with pytest.warns(tr.FiringRateWarning) as caught:
        run(data_dir, tmp_path / "r", "--epochs", "1")
    messages = sorted(str(w.message) for w in caught if issubclass(w.category, tr.FiringRateWarning))
    assert len(messages) == 2
    assert messages[0].startswith("epoch 1 (test): layer neuron fired at ")
    assert messages[1].startswith("epoch 1 (training): layer neuron fired at ")
    assert all("(silent: outside 99.9%..100%)" in m for m in messages)
    record = tr.read_metrics(tmp_path / "r")[0]
    assert set(record["firing_rate"]) == set(record["train_firing_rate"]) == {"neuron"}
