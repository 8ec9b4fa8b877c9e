"""A run directory cannot be turned against its user (issue 37): no link in it is followed, no
temporary name can be guessed, nothing is deleted or changed that the run did not write, and a
refused start touches nothing. Each test snapshots every file around the run (names, kinds, bytes,
link targets) before and after, and a victim file outside it that planted links point at."""
import errno
import json
import os
import stat
from pathlib import Path

import pytest

import tiny_run
from models import training as tr
from test_runs import data_dir, kill_at, quick_curves, run, SimulatedKill  # noqa: F401 (fixtures)

VICTIM = b"the user's own file\n"


def test_a_finished_run_leaves_its_lock_file_empty(data_dir, tmp_path):  # noqa: F811
    run(data_dir, tmp_path / "run", "--epochs", "1")
    assert (tmp_path / "run" / tr.LOCK).stat().st_size == 0
    assert not (tmp_path / "run" / tr.LOCK_HOLDER).exists()


def snapshot(root: Path) -> dict:
    """{path: (kind, content)} of everything under root, links not followed."""
    seen = {}
    for folder, dirs, files in os.walk(root):
        for name in dirs + files:
            path = Path(folder) / name
            mode = os.lstat(path).st_mode
            if stat.S_ISLNK(mode):
                seen[str(path)] = ("link", os.readlink(path))
            elif stat.S_ISREG(mode):
                seen[str(path)] = ("file", path.read_bytes())
            else:
                seen[str(path)] = ("other", stat.S_IFMT(mode))
    return seen


@pytest.fixture
def victim(tmp_path):
    path = tmp_path / "victim"
    path.write_bytes(VICTIM)
    return path


@pytest.fixture
def finished_run(data_dir, tmp_path):  # noqa: F811
    out = tmp_path / "run"
    run(data_dir, out, "--epochs", "1")
    return out


def refused(data_dir, out, *extra, capsys):  # noqa: F811
    """Runs tiny_run, expecting a usage error; returns its message."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        run(data_dir, out, "--epochs", "1", *extra)
    assert exc.value.code == 2
    return capsys.readouterr().err.split(" error: ", 1)[-1]  # the message, without the usage lines


# ---- item 1: no link is followed ---------------------------------------------------------------
@pytest.mark.parametrize("kind", ["link", "dangling link", "directory", "fifo"])
def test_a_planted_lock_is_refused_and_nothing_is_touched(data_dir, finished_run, tmp_path, victim, capsys, kind):  # noqa: F811
    lock = finished_run / tr.LOCK
    lock.unlink()
    if kind == "link":
        lock.symlink_to(os.path.relpath(victim, finished_run))
    elif kind == "dangling link":
        lock.symlink_to(tmp_path / "nowhere")
    elif kind == "directory":
        lock.mkdir()
    else:
        os.mkfifo(lock)
    before = snapshot(tmp_path)
    err = refused(data_dir, finished_run, "--resume", capsys=capsys)
    assert f"{lock} is a" in err and "no link is followed" in err
    assert snapshot(tmp_path) == before
    assert victim.read_bytes() == VICTIM and not (tmp_path / "nowhere").exists()


def test_the_lock_file_is_never_written(data_dir, finished_run, monkeypatch):  # noqa: F811
    """The flock'd file stays as it was (0 bytes, or an older version's record); who holds it is
    written beside it while the run lives, replacing a link there instead of following it."""
    old_record = b'{"pid": 1, "host": "old", "command": "an older version", "started": "then"}'
    (finished_run / tr.LOCK).write_bytes(old_record)
    holders = []
    monkeypatch.setattr(tiny_run, "STEP_HOOK", lambda step, net: holders.append(
        json.loads((finished_run / tr.LOCK_HOLDER).read_text())["pid"]))
    run(data_dir, finished_run, "--resume", "--epochs", "2")
    assert holders and set(holders) == {os.getpid()}
    assert (finished_run / tr.LOCK).read_bytes() == old_record and not (finished_run / tr.LOCK_HOLDER).exists()


@pytest.mark.parametrize("name", tr.RUN_FILES)
@pytest.mark.parametrize("kind", ["link", "dangling link", "directory"])
def test_a_run_file_that_is_not_a_regular_file_is_refused(data_dir, finished_run, tmp_path, victim, capsys, name,  # noqa: F811
                                                         kind):
    path = finished_run / name
    path.unlink()
    if kind == "link":
        path.symlink_to(victim)
    elif kind == "dangling link":
        path.symlink_to(tmp_path / "moved.pt")
    else:
        path.mkdir()
    before = snapshot(tmp_path)
    err = refused(data_dir, finished_run, "--resume", capsys=capsys)
    assert f"{path} is a" in err and ("does not exist" in err) == (kind == "dangling link")
    assert snapshot(tmp_path) == before


def test_temporary_names_cannot_be_guessed_and_links_there_are_not_followed(data_dir, tmp_path, victim,  # noqa: F811
                                                                           monkeypatch):
    """Links planted during the run at every name the older code used (.<file>.tmp-<pid>, whose
    pid an attacker reads from the lock) stay links, and their target keeps its bytes."""
    out = tmp_path / "run"
    names = [f".{name}.tmp-{os.getpid()}" for name in tr.RUN_FILES + (tr.LOCK_HOLDER, "write-test")]

    def plant(step, net):
        if step == 0:
            for name in names:
                (out / name).symlink_to(victim)

    monkeypatch.setattr(tiny_run, "STEP_HOOK", plant)
    run(data_dir, out)
    assert victim.read_bytes() == VICTIM
    assert all((out / name).is_symlink() for name in names)
    assert [r["epoch"] for r in tr.read_metrics(out)] == [1, 2, 3]


def test_an_atomic_write_replaces_a_link_at_its_destination(tmp_path, victim):
    (tmp_path / "summary.json").symlink_to(victim)
    tr.write_json_atomic({"a": 1}, tmp_path / "summary.json")
    assert not (tmp_path / "summary.json").is_symlink() and victim.read_bytes() == VICTIM
    assert json.loads((tmp_path / "summary.json").read_text()) == {"a": 1}
    assert stat.S_IMODE((tmp_path / "summary.json").stat().st_mode) == 0o666 & ~tr.files._UMASK


def test_appending_metrics_refuses_a_link(tmp_path, victim):
    (tmp_path / tr.METRICS).symlink_to(victim)
    with pytest.raises(OSError) as exc:
        tr.append_metrics(tmp_path, {"epoch": 1})
    assert exc.value.errno == errno.ELOOP and victim.read_bytes() == VICTIM


# ---- items 2, 3: --resume without a checkpoint deletes nothing ---------------------------------
def test_resume_of_a_run_whose_checkpoint_was_moved_aside_is_refused(data_dir, finished_run, tmp_path, capsys):  # noqa: F811
    (finished_run / tr.CHECKPOINT).rename(tmp_path / "aside.pt")
    before = snapshot(tmp_path)
    err = refused(data_dir, finished_run, "--resume", capsys=capsys)
    assert "holds the records of 1 epoch(s)" in err and "put it back" in err and "Nothing in" in err
    assert snapshot(tmp_path) == before
    (finished_run / tr.METRICS).unlink()  # a summary alone is a record too
    before = snapshot(tmp_path)
    err = refused(data_dir, finished_run, "--resume", capsys=capsys)
    assert "holds a summary.json" in err
    assert snapshot(tmp_path) == before


def test_resume_in_another_tools_directory_is_refused(data_dir, tmp_path, capsys):  # noqa: F811
    out = tmp_path / "theirs"
    (out / ".git").mkdir(parents=True)
    (out / ".git" / "config").write_text("[core]\n")
    (out / "notes.txt").write_text("mine\n")
    (out / ".checkpoint.pt.tmp-12").write_bytes(b"their temporary")  # our temporary's name, not ours
    (out / "curves.png").write_bytes(b"their picture")
    before = snapshot(tmp_path)
    err = refused(data_dir, out, "--resume", capsys=capsys)
    assert "holds no checkpoint.pt and no run of this project" in err
    assert snapshot(tmp_path) == before


# ---- item 4: a refused fresh start deletes nothing ---------------------------------------------
@pytest.mark.parametrize("contents", [
    {".other.tmp-1": b"x", ".checkpoint.pt.tmp-99": b"y", "data.csv": b"1,2"},  # another tool's directory
    {".env": b"SECRET=1", ".git/HEAD": b"ref: main"},                          # only hidden files
    {"checkpoint.pt": b"PK", "metrics.jsonl": b""},                           # a run: needs --resume
])
def test_a_fresh_start_in_a_directory_that_holds_files_is_refused_untouched(data_dir, tmp_path, capsys, contents):  # noqa: F811
    out = tmp_path / "d"
    for name, data in contents.items():
        (out / name).parent.mkdir(parents=True, exist_ok=True)
        (out / name).write_bytes(data)
    before = snapshot(tmp_path)
    err = refused(data_dir, out, capsys=capsys)
    assert "already holds" in err and ("--resume" in err) == ("checkpoint.pt" in contents)
    assert snapshot(tmp_path) == before


def test_an_empty_out_is_refused(data_dir, tmp_path, capsys, monkeypatch):  # noqa: F811
    (tmp_path / "work.txt").write_text("here")
    (tmp_path / ".checkpoint.pt.tmp-1").write_text("here")
    monkeypatch.chdir(tmp_path)
    before = snapshot(tmp_path)
    for out in ("", "  "):
        assert "--out must name a directory" in refused(data_dir, out, capsys=capsys)
    assert "already holds" in refused(data_dir, ".", capsys=capsys)
    assert snapshot(tmp_path) == before


# ---- item 5: a finished run is complete ----------------------------------------------------------
def test_a_kill_between_the_picture_and_the_summary_is_completed_on_resume(data_dir, tmp_path, capsys, monkeypatch):  # noqa: F811
    out = tmp_path / "run"
    kill_at(monkeypatch, "curves_written", 1)
    with pytest.raises(SimulatedKill):
        run(data_dir, out, "--epochs", "1")
    assert (out / tr.CURVES).is_file() and not (out / tr.SUMMARY).exists()
    monkeypatch.setattr(tr.files, "fault_point", lambda name: None)
    capsys.readouterr()
    run(data_dir, out, "--resume", "--epochs", "1")
    captured = capsys.readouterr()
    assert "lacks summary.json: writing them again" in captured.err and "already finished" in captured.out
    summary = json.loads((out / tr.SUMMARY).read_text())
    assert summary["epochs"] == 1 and summary["best_epoch"] == 1
    (out / tr.CURVES).unlink()
    run(data_dir, out, "--resume", "--epochs", "1")
    assert "lacks curves.png" in capsys.readouterr().err and (out / tr.CURVES).is_file()
    assert json.loads((out / tr.SUMMARY).read_text()) == summary
    # Trained further and killed after the last checkpoint: the 1-epoch summary is written again.
    kill_at(monkeypatch, "checkpoint_written", 1)
    with pytest.raises(SimulatedKill):
        run(data_dir, out, "--resume", "--epochs", "2")
    monkeypatch.setattr(tr.files, "fault_point", lambda name: None)
    capsys.readouterr()
    run(data_dir, out, "--resume", "--epochs", "2")
    assert "summary.json in" in capsys.readouterr().err
    assert json.loads((out / tr.SUMMARY).read_text())["epochs"] == 2


# ---- items 6, 10: recipe changes and bad options are usage errors ----------------------------
def test_a_changed_test_subset_on_resume_is_refused(data_dir, tmp_path, capsys):  # noqa: F811
    out = tmp_path / "run"
    run(data_dir, out, "--epochs", "1", "--test-subset", "4")
    before = snapshot(tmp_path)
    err = refused(data_dir, out, "--resume", "--epochs", "2", "--test-subset", "8", capsys=capsys)
    assert "test_subset: run has 4, now 8" in err
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("seed", [str(2**70), str(2**63), "-1"])
def test_a_seed_torch_cannot_take_is_a_usage_error(data_dir, tmp_path, capsys, seed):  # noqa: F811
    assert f"--seed must be in [0, 2**63), got {seed}" in refused(data_dir, tmp_path / "r", "--seed", seed,
                                                                  capsys=capsys)
    assert not (tmp_path / "r").exists()


def test_a_full_disk_at_the_start_is_a_usage_error_and_leaves_nothing(data_dir, tmp_path, capsys, monkeypatch):  # noqa: F811
    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(tr.files.tempfile, "mkstemp", full)
    err = refused(data_dir, tmp_path / "r", capsys=capsys)
    assert "cannot create or write the run directory" in err and "no space left on device" in err.lower()
    assert not (tmp_path / "r").exists()
    (tmp_path / "mine").mkdir()
    refused(data_dir, tmp_path / "mine", capsys=capsys)
    assert list((tmp_path / "mine").iterdir()) == []  # the lock it made is gone with it
