"""The three stages, part by part: verify, sweep and train, and the parts they share (the
environment probe and the build). Each stage ends by reading its targets (evaluate.py)."""
import glob
import importlib.util
import json
import math
import os
import re
import shutil
import subprocess

from .config import BUILD_ENV, COMMANDS, MAX_EPOCHS, PROBE_EPOCHS, PY, ROOT, SANITIZER_ENV, TEST_ENV
from .evaluate import evaluate
from .parse import (last_line, last_table_text, parse_copy_gbps, parse_junit, parse_last_table, parse_sanitizer,
                    read_jsonl)

ENV_SNIPPET = r"""
import json, platform, sys
info = {"python": platform.python_version()}
try:
    import torch
    info.update(torch=torch.__version__, torch_cuda=torch.version.cuda, cuda_available=torch.cuda.is_available())
    if torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        info.update(device=torch.cuda.get_device_name(0), capability=f"{p.major}.{p.minor}",
                    sms=p.multi_processor_count, memory_gib=round(p.total_memory / 2**30, 1))
    else:
        info.update(device=f"CPU {platform.machine()}", cpu_threads=torch.get_num_threads())
except Exception as e:
    info["torch_error"] = repr(e)
try:
    import alif_cuda
    info.update(alif_cuda_built=True, cuda_kernels=bool(alif_cuda.cuda_kernels_available()))
except Exception as e:
    info.update(alif_cuda_built=False, alif_cuda_error=repr(e)[:300])
print("ENV " + json.dumps(info))
"""


def find_sanitizer():
    candidates = [shutil.which("compute-sanitizer"),
                  os.path.join(os.environ.get("CUDA_HOME", "/usr/local/cuda"), "bin", "compute-sanitizer")]
    candidates += sorted(glob.glob("/usr/local/cuda*/bin/compute-sanitizer"))
    candidates += sorted(glob.glob("/opt/nvidia/**/compute-sanitizer", recursive=True))
    return next((c for c in candidates if c and os.path.isfile(c) and os.access(c, os.X_OK)), None)


# ---------------------------------------------------------------------------------------------
# Parts shared by the stages.
def part_env(c):
    part = c.run("env", [PY, "-c", ENV_SNIPPET], shown="python -c <environment probe>")
    m = re.search(r"^ENV (.*)$", part["output"], re.M)
    info = json.loads(m.group(1)) if m else {}
    if shutil.which("nvidia-smi"):
        smi = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm",
                              "--format=csv,noheader"], capture_output=True, text=True, timeout=30)
        info["nvidia_smi"] = smi.stdout.strip() or smi.stderr.strip()
    c.data["env"] = info
    tag = ("cpu" if not info.get("cuda_available")
           else re.sub(r"[^a-z0-9]+", "_", info.get("device", "gpu").lower()).strip("_"))
    c.set_out(tag)
    if not m:
        c.amend(part, "failed", "could not read torch's environment: " + last_line(part["output"]))
        return False
    if not c.dry and not info.get("cuda_available"):
        c.amend(part, "failed", "no CUDA device visible; on a machine without a GPU use --dry-run"
                + (f" (torch: {info['torch_error']})" if info.get("torch_error") else ""))
        return False
    return True


def part_build(c, always):
    """Builds the extension (printing its time) unless it is built already and `always` is False."""
    info = c.data["env"]
    built = info.get("alif_cuda_built") and (c.dry or info.get("cuda_kernels"))
    if built and (not always or c.args.no_build):
        return c.skip("build", "alif_cuda is built already" + ("" if c.dry else " with CUDA kernels"))
    if c.args.no_build:
        return c.record("build", "failed", "alif_cuda is not built" + (
            "" if c.dry or not info.get("alif_cuda_built") else " with CUDA kernels") + " and --no-build was given")
    part = c.run("build", c.fmt(COMMANDS[c.mode]["build"]), env=BUILD_ENV[c.mode])
    part["build_s"] = part["elapsed_s"]
    if part["status"] == "passed":
        print(f"    built alif_cuda in {part['elapsed_s']:.0f} s", flush=True)
        check = subprocess.run([PY, "-c", ENV_SNIPPET], cwd=ROOT, capture_output=True, text=True)
        m = re.search(r"^ENV (.*)$", check.stdout, re.M)
        after = json.loads(m.group(1)) if m else {}
        info.update({k: after.get(k) for k in ("alif_cuda_built", "cuda_kernels", "alif_cuda_error")})
        if not after.get("alif_cuda_built") or (not c.dry and not after.get("cuda_kernels")):
            c.amend(part, "failed", "the build finished but alif_cuda " + (
                "has no CUDA kernels" if after.get("alif_cuda_built")
                else f"does not import: {after.get('alif_cuda_error')}"))
    return part


def run_benchmarks(c, names):
    """Each benchmark script as a part; its results are the last table it prints."""
    for name in names:
        if name not in COMMANDS[c.mode]:
            c.skip(name, "not part of the dry run (the CPU kernels run float32 only)")
            continue
        part = c.run(name, c.fmt(COMMANDS[c.mode][name]))
        rows = parse_last_table(part["output"])
        c.data[name] = dict(copy_gbps=parse_copy_gbps(part["output"]), rows=rows,
                            table=last_table_text(part["output"]))
        if part["status"] == "passed" and not rows:
            c.amend(part, "failed", "finished but printed no results table")


# ---------------------------------------------------------------------------------------------
# verify
def stage_verify(c):
    if not part_env(c):
        return
    cmds = c.mode
    if not (ROOT / "wheels").is_dir():
        c.skip("wheels", "no wheels/ folder (SpikingJelly is used where installed)")
    else:
        c.run("wheels", c.fmt(COMMANDS[cmds]["wheels"]))
    build = part_build(c, always=not c.dry)
    if build["status"] == "failed":
        return

    kernel_json = c.work / "kernel_report.json"
    kr = c.run("kernel_report", c.fmt(COMMANDS[cmds]["kernel_report"], kernel_md=c.out / "kernel_report.md",
                                      kernel_json=kernel_json))
    if (kr["status"] == "failed" and c.dry
            and re.search(r"cuobjdump not found|holds no CUDA machine code", kr["output"])):
        c.amend(kr, "skipped", "no cuobjdump or no CUDA code in this build: " + last_line(kr["output"]))
    if kernel_json.is_file():
        c.data["kernel_report"] = json.loads(kernel_json.read_text())["findings"]

    part_tests(c)
    sanitizer = find_sanitizer()
    for tool in ("memcheck", "racecheck"):
        if c.dry:
            c.skip(tool, "dry run: no compute-sanitizer on the CPU")
            continue
        if sanitizer is None:
            c.record(tool, "failed", "compute-sanitizer not found on the PATH or in $CUDA_HOME/bin")
            continue
        part = c.run(tool, c.fmt(COMMANDS[cmds][tool], junit=c.work / f"{tool}.xml", sanitizer=sanitizer),
                     env=SANITIZER_ENV)
        found = parse_sanitizer(part["output"])
        c.data[tool] = found
        count = found["errors"] if tool == "memcheck" else found["hazards"]
        if count is None and tool == "racecheck":
            count = found["errors"]
        part["note"] = (part["note"] + "; " if part["note"] else "") + (
            f"{count} {'errors' if tool == 'memcheck' else 'hazards'} reported" if count is not None
            else "no sanitizer summary")
        if part["status"] == "passed" and count:
            c.amend(part, "failed", part["note"])

    run_benchmarks(c, ("bench_alif_fp32", "bench_alif_bf16", "bench_taid", "bench_train"))
    evaluate(c)


def part_tests(c):
    """The CUDA test cases under pytest; on the GPU a case skipped for want of a GPU fails the part."""
    junit = c.work / "tests.xml"
    argv = c.fmt(COMMANDS[c.mode]["tests"], junit=junit)
    if "-n" in argv and importlib.util.find_spec("xdist") is None:
        i = argv.index("-n")  # pytest-xdist is missing: one process rather than a failed part
        print(f"    pytest-xdist is not installed: running the tests without -n {argv[i + 1]}", flush=True)
        del argv[i:i + 2]
    tests = c.run("tests", argv, env=TEST_ENV if not c.dry else None)
    res = parse_junit(junit)
    c.data["tests"] = res
    if res is not None:
        c.junit_suites = [junit]
        c.amend(tests, tests["status"], (tests["note"] + "; " if tests["note"] else "") + (
            f"{res['passed']} passed, {res['failures']} failed, {res['errors']} errors, {res['skipped']} skipped "
            f"({res['gpu_skips']} for want of a GPU)"))
        if tests["status"] == "passed" and res["tests"] == 0:
            c.amend(tests, "failed", "no test selected")
        if not c.dry and res["gpu_skips"]:
            c.amend(tests, "failed", tests["note"] + ": a CUDA case skipped on the GPU machine")
    elif tests["status"] != "skipped":
        c.amend(tests, "failed" if tests["status"] == "passed" else tests["status"],
                (tests["note"] + "; " if tests["note"] else "") + "no junit file written")


# ---------------------------------------------------------------------------------------------
# sweep
def stage_sweep(c):
    if not part_env(c):
        return
    if part_build(c, always=False)["status"] == "failed":
        return
    run_benchmarks(c, ("sweep_alif_fp32", "sweep_alif_bf16", "sweep_train", "sweep_fsvae"))
    evaluate(c)


# ---------------------------------------------------------------------------------------------
# train
def option(argv, flag, default=None):
    """The last value of `flag` in argv (argparse's rule), else default."""
    value = default
    for i, a in enumerate(argv[:-1]):
        if a == flag:
            value = argv[i + 1]
    return value


def stage_train(c):
    if not part_env(c):
        return
    if part_build(c, always=False)["status"] == "failed":
        return
    table = COMMANDS[c.mode]
    run_dir = c.work / "train_run"
    base = c.fmt(table["train"], run_dir=run_dir)
    if c.args.train_epochs:
        epochs = c.args.train_epochs
        c.skip("train_probe", f"--train-epochs {epochs} given")
    else:
        epochs = part_train_probe(c, base)
        if epochs is None:
            return
    argv = [a.replace("{epochs}", str(epochs)) for a in base]
    train = c.run("train", argv)
    records = read_jsonl(run_dir / "metrics.jsonl")
    done = records[-1]["epoch"] if records else 0
    c.data["train"] = dict(command=train.get("command"), epochs_planned=epochs, epochs_done=done)
    if train["status"] == "timeout":
        train["note"] += f"; {done} of {epochs} epochs done"
        if done and not (run_dir / "summary.json").exists():
            # --resume at the epochs reached only writes summary.json and curves.png.
            finish = [a.replace("{epochs}", str(done)) for a in base] + ["--resume"]
            c.run("train_finish", finish)
    else:
        c.skip("train_finish", "the run finished by itself" if train["status"] == "passed" else "the run failed")
    for src, dst in (("metrics.jsonl", "metrics.jsonl"), ("summary.json", "train_summary.json"),
                     ("curves.png", "curves.png")):
        if (run_dir / src).is_file():
            shutil.copyfile(run_dir / src, c.out / dst)
    if records:
        final = records[-1]
        c.data["train"].update(final_test_acc=final.get("test_acc"),
                               best_test_acc=max(r.get("test_acc", 0) for r in records),
                               images_per_s=final.get("images_per_s"), peak_gpu_mb=final.get("peak_gpu_mb"),
                               wall_time_s=final.get("wall_time_s"))
    evaluate(c)


def part_train_probe(c, base):
    """Two short epochs on a subset time one epoch; returns how many epochs fit in the train part's
    share of the budget (None: the probe failed or not one epoch fits, and the stage ends)."""
    table = COMMANDS[c.mode]
    n_train = int(option(base, "--subset", 60000))
    n_test = min(int(option(base, "--test-subset", 10000)), 10000)
    probe_dir = c.work / "train_probe"
    probe_argv = [a.replace("{epochs}", str(PROBE_EPOCHS))
                  for a in c.fmt(table["train"], run_dir=probe_dir)] + table["train_probe"]
    probe = c.run("train_probe", probe_argv)
    records = read_jsonl(probe_dir / "metrics.jsonl")
    if probe["status"] != "passed" or len(records) < PROBE_EPOCHS:
        c.amend(probe, "failed" if probe["status"] == "passed" else probe["status"],
                probe["note"] or f"the probe wrote {len(records)} of {PROBE_EPOCHS} epochs' metrics")
        return None
    # The last epoch's figures: the first one also pays for warm-up (cuDNN autotuning, caches).
    first, last = records[-2], records[-1]
    p_train, p_test = int(option(probe_argv, "--subset")), int(option(probe_argv, "--test-subset"))
    ips = last["images_per_s"]
    epoch_wall = last["wall_time_s"] - first["wall_time_s"]
    eval_s_per_image = max(0.0, epoch_wall - p_train / ips) / p_test
    startup_s = max(0.0, probe["elapsed_s"] - last["wall_time_s"])
    epoch_s = n_train / ips + n_test * eval_s_per_image
    train_cap = c.allowance("train")
    epochs = min(MAX_EPOCHS[c.mode], max(0, math.floor((train_cap - startup_s) / (epoch_s * 1.1))))
    c.data["probe"] = dict(images_per_s=ips, eval_s_per_image=round(eval_s_per_image, 6),
                           startup_s=round(startup_s, 1), epoch_s_estimate=round(epoch_s, 2),
                           seconds_for_training=round(train_cap, 1), epochs=epochs)
    probe["note"] = (f"{ips:.0f} train images/s; an epoch ~{epoch_s:.1f} s + {startup_s:.0f} s start-up: "
                     f"{epochs} epochs fit in {train_cap:.0f} s")
    if epochs < 1:
        c.record("train", "skipped", f"not even one epoch fits in {train_cap:.0f} s", out_of_time=True)
        return None
    return epochs
