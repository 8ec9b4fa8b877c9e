"""One stage's run: its clock and budget, the parts it runs as subprocesses under their deadlines,
and the files it writes at the end."""
import datetime
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

from .config import DEFAULT_BUDGET_S, DRY_BUDGET_S, FINAL_RESERVE_S, MAX_OUT_FILES, PARTS, PY, ROOT, STOP_GRACE_S
from .parse import last_line
from .report import summary_markdown, write_junit, write_log


class Check:
    """One stage's clock, parts, output directory and files."""

    def __init__(self, stage, args):
        self.stage, self.dry = stage, args.dry_run
        self.mode = "dry" if self.dry else "gpu"
        self.budget = float(args.budget_s or (DRY_BUDGET_S if self.dry else DEFAULT_BUDGET_S)[stage])
        self.t0 = time.monotonic()
        self.started = datetime.datetime.now(datetime.timezone.utc)
        self.deadline = self.t0 + self.budget
        self.scale = min(1.0, self.budget / DEFAULT_BUDGET_S[stage])
        self.args = args
        self.parts, self.data, self.targets = [], {}, []
        self.junit_suites = []  # pytest's junit files, merged into junit.xml
        self.work = Path(tempfile.mkdtemp(prefix=f"gpu_check_{stage}_"))
        self.out = None  # set once the device is known
        self.log_chunks = []
        self.plan = PARTS[stage]
        self.command = "scripts/gpu_check.sh " + " ".join(shlex.quote(a) for a in args.argv)

    # -- clock ------------------------------------------------------------------------------
    def elapsed(self):
        return time.monotonic() - self.t0

    def remaining(self):
        return self.deadline - time.monotonic()

    def allowance(self, name):
        """Seconds part `name` may run: its cap, less what the later parts need at the least."""
        names = [p[0] for p in self.plan]
        i = names.index(name)
        _, cap, least = self.plan[i]
        later = sum(p[2] for p in self.plan[i + 1:]) * self.scale
        avail = self.remaining() - FINAL_RESERVE_S - STOP_GRACE_S
        t = min(cap, avail - later)
        if t < least * self.scale:
            t = min(least * self.scale, avail)
        return t

    # -- parts ------------------------------------------------------------------------------
    def record(self, name, status, note="", elapsed=0.0, **extra):
        part = dict(name=name, status=status, note=note, elapsed_s=round(elapsed, 1), **extra)
        self.parts.append(part)
        print(f"[{self.elapsed():6.1f} s] {name}: {status}" + (f" ({note})" if note else ""), flush=True)
        return part

    def amend(self, part, status, note):
        """Changes a part's verdict after reading its output (and says so on the console)."""
        part.update(status=status, note=note)
        print(f"[{self.elapsed():6.1f} s] {part['name']}: {status} ({note})", flush=True)
        return part

    def skip(self, name, note):
        return self.record(name, "skipped", note)

    def fmt(self, argv, **values):
        """Fills the {placeholders} named in `values` (and {py}); other braces stay as they are."""
        values = dict(py=PY, **{k: str(v) for k, v in values.items()})
        return [re.sub(r"\{(\w+)\}", lambda m: values.get(m.group(1), m.group(0)), a) for a in argv]

    def run(self, name, argv, env=None, shown=None):
        """Runs argv as a part under the deadline; returns the part record with its output. `shown`:
        the command as the log and summary print it (default: argv without this machine's paths)."""
        limit = self.allowance(name)
        if limit < 3:
            # No output: the stages read it as a part that printed nothing (its targets not measured).
            return self.record(name, "skipped", f"out of time ({self.remaining():.0f} s left of {self.budget:.0f} s)",
                               out_of_time=True, output="")
        full_env = dict(os.environ, PYTHONUNBUFFERED="1", **(env or {}))
        log_path = self.work / f"{name}.log"
        t = time.monotonic()
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(argv, cwd=ROOT, env=full_env, stdout=log, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, start_new_session=True, preexec_fn=default_sigint)
            timed_out = False
            try:
                rc = proc.wait(timeout=limit)
                kill_group(proc)
            except subprocess.TimeoutExpired:
                timed_out = True
                rc = stop(proc)
        elapsed = time.monotonic() - t
        output = log_path.read_text(errors="replace")
        command = shown or self.display(argv)
        self.log_chunks.append((name, command, rc, elapsed, output))
        if timed_out:
            part = self.record(name, "timeout",
                               f"stopped after {elapsed:.0f} s (its share of the budget: {limit:.0f} s)",
                               elapsed, command=command, returncode=rc, out_of_time=True)
        elif rc != 0:
            part = self.record(name, "failed", f"exit status {rc}: {last_line(output)}", elapsed, command=command,
                               returncode=rc)
        else:
            part = self.record(name, "passed", "", elapsed, command=command, returncode=rc)
        part["output"] = output
        return part

    def display(self, argv):
        """argv as a shell line without this machine's paths: python, <work>/..., <out>/..."""
        return self.display_text(" ".join(shlex.quote(str(a)) for a in argv))

    def display_text(self, text):
        for path, name in ((self.work, "<work>"), (self.out, "<out>"), (PY, "python"), (f"{ROOT}/", "")):
            if path is not None:
                text = text.replace(str(path), name)
        return text

    # -- output -----------------------------------------------------------------------------
    def set_out(self, device_tag):
        base = os.environ.get("OUT") or self.args.out
        if not base:
            date = self.started.strftime("%Y-%m-%d")
            base = ROOT / "results" / "gpu" / f"{device_tag}-{date}{'-dry-run' if self.dry else ''}"
        self.out = Path(base) / self.stage
        self.out.mkdir(parents=True, exist_ok=True)

    @property
    def partial(self):
        return any(p.get("out_of_time") for p in self.parts)

    def status(self):
        if any(p["status"] == "failed" for p in self.parts):
            return "failed"
        return "partial" if self.partial else "passed"

    def finish(self):
        """Writes summary.md, results.json, junit.xml and log.txt; returns the exit status."""
        if self.out is None:
            self.set_out("unknown")
        status = self.status()
        env = self.data.get("env", {})
        parts = [{k: v for k, v in p.items() if k != "output"} for p in self.parts]
        results = dict(
            stage=self.stage, dry_run=self.dry, status=status, partial=self.partial, budget_s=self.budget,
            elapsed_s=round(self.elapsed(), 1), started_utc=self.started.isoformat(timespec="seconds"),
            command=self.command, git=git_head(), env=env, parts=parts, targets=self.targets,
            data={k: v for k, v in self.data.items() if k != "env"},
        )
        (self.out / "results.json").write_text(json.dumps(results, indent=1, default=str) + "\n")
        (self.out / "summary.md").write_text(summary_markdown(self, results))
        write_junit(self, self.out / "junit.xml")
        write_log([(n, a, rc, t, self.display_text(out)) for n, a, rc, t, out in self.log_chunks], self.out / "log.txt")
        files = [p for p in self.out.rglob("*") if p.is_file()]
        text = (self.out / "summary.md").read_text()
        print(f"\n{text}")
        # The verdict and the targets once more at the very end: a console that keeps only the
        # tail of the output (the GPU machine's reply) still shows them.
        recap = text[text.index("## Targets"):text.index("\n\n", text.index("## Targets"))]
        print(f"{text.splitlines()[0]}\n{recap}")
        print(f"wrote {len(files)} files under {self.out}")
        if len(files) > MAX_OUT_FILES:
            print(f"warning: {len(files)} files under {self.out}; the GPU machine sends back only {MAX_OUT_FILES}")
        shutil.rmtree(self.work, ignore_errors=True)
        return {"passed": 0, "failed": 1, "partial": 3}[status]


def default_sigint():
    """In the child before exec: a shell's background job ignores SIGINT and its children inherit
    that, which would make stop()'s SIGINT a no-op."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def stop(proc):
    """Interrupts a part's whole process group: SIGINT (pytest writes its junit file, training
    stops between steps), then SIGTERM, then SIGKILL. Returns the exit status."""
    for sig, wait in ((signal.SIGINT, STOP_GRACE_S * 0.6), (signal.SIGTERM, STOP_GRACE_S * 0.25),
                      (signal.SIGKILL, STOP_GRACE_S * 0.15)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            rc = proc.wait()
            break
        try:
            rc = proc.wait(timeout=wait)
            break
        except subprocess.TimeoutExpired:
            continue
    else:
        rc = proc.wait()
    kill_group(proc)
    return rc


def kill_group(proc):
    """Ends what a part left behind in its process group (data-loader or compile workers)."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def git_head():
    try:
        out = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
        return out.stdout.strip() or None
    except OSError:
        return None
