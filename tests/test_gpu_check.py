"""scripts/gpu_check.sh rehearsed on the CPU: the verify and train stages' dry runs, a stage stopped
by its budget with partial results written, the GPU branches of verify and sweep with stand-in
commands, the parsers that read the parts' output (bench/gpu_check/'s and bench/kernel_report.py's),
the targets table, and the `cuda` marker that selects the GPU run's tests."""
import json
import os
import re
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from bench.gpu_check import check, cli, config, parse, stages
from bench.gpu_check.evaluate import COMPARE, MEASURES
from bench.gpu_check.targets import TARGETS
from conftest import NEEDS_GPU_REASON

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

import kernel_report  # noqa: E402

MAX_FILES, MAX_FILE_BYTES = 8, 16 * 2**20  # what the GPU machine sends back from $OUT
# The environment probe's stand-in for the GPU branches: what the probe prints on the H200.
H200_ENV = ('print(\'ENV {"cuda_available": true, "device": "NVIDIA H200", '
            '"alif_cuda_built": true, "cuda_kernels": true, "torch": "2.11.0"}\')')


def launch(out, *args):
    env = {k: v for k, v in os.environ.items() if k != "OUT"}
    env.update(PYTHON=sys.executable, OMP_NUM_THREADS="1")
    # --no-build: a stage stopped mid-build must never leave the shared checkout half-built.
    return subprocess.Popen(["bash", str(ROOT / "scripts" / "gpu_check.sh"), "--dry-run", "--no-build",
                             "--out", str(out), *args],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def finish(proc):
    t = time.monotonic()
    output, _ = proc.communicate(timeout=900)
    return proc.returncode, output, time.monotonic() - t


def check_files(stage_dir, expected):
    files = sorted(p for p in stage_dir.rglob("*") if p.is_file())
    names = {p.name for p in files}
    assert expected <= names, f"expected {sorted(expected)} in {stage_dir}, found {sorted(names)}"
    assert len(files) <= MAX_FILES, f"{len(files)} files: the GPU machine sends back {MAX_FILES}"
    assert all(p.stat().st_size < MAX_FILE_BYTES for p in files)
    assert all(len(p.relative_to(stage_dir.parent).parts) <= 3 for p in files), "deeper than $OUT/a/b/file"
    results = json.loads((stage_dir / "results.json").read_text())
    ET.parse(stage_dir / "junit.xml")
    return results


@pytest.fixture(scope="module")
def dry_verify(tmp_path_factory):
    """Started first and left running while the train tests run: the two share CI's two cores."""
    out = tmp_path_factory.mktemp("verify")
    proc = launch(out, "--budget-s", "400", "verify")
    yield lambda: (*finish(proc), out / "verify")
    if proc.poll() is None:
        proc.kill()


@pytest.fixture(scope="module")
def dry_train(tmp_path_factory, dry_verify):
    out = tmp_path_factory.mktemp("train")
    return (*finish(launch(out, "--budget-s", "300", "train")), out / "train")


def test_dry_run_train_fits_its_budget_and_writes_the_run(dry_train):
    rc, output, _, stage_dir = dry_train
    assert rc == 0, output
    results = check_files(stage_dir, {"summary.md", "results.json", "junit.xml", "log.txt", "metrics.jsonl",
                                      "train_summary.json", "curves.png"})
    assert results["status"] == "passed" and not results["partial"]
    parts = {p["name"]: p for p in results["parts"]}
    assert list(parts) == ["env", "build", "train_probe", "train", "train_finish"]
    probe = results["data"]["probe"]
    epochs = probe["epochs"]
    assert 1 <= epochs <= config.MAX_EPOCHS["dry"]
    assert (f"--epochs {config.PROBE_EPOCHS}" in parts["train_probe"]["command"]
            and f"--epochs {epochs}" in parts["train"]["command"])
    records = [json.loads(line) for line in (stage_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == list(range(1, epochs + 1))
    summary = json.loads((stage_dir / "train_summary.json").read_text())
    assert summary["epochs"] == epochs and summary["final_test_acc"] == records[-1]["test_acc"]
    targets = {t["id"]: t for t in results["targets"]}
    assert targets["mnist_final_acc"]["value"] == records[-1]["test_acc"]
    assert targets["train_to_final_epoch"]["met"] is True
    assert results["elapsed_s"] <= 300


def test_train_stage_stops_at_its_budget_with_partial_results(dry_train, tmp_path):
    """A budget sized from the dry run's own probe (start-up plus about four epochs on this
    machine) against 1000 epochs: the run is stopped, and what it did is written, marked partial."""
    _, _, _, fit_dir = dry_train
    fit = json.loads((fit_dir / "results.json").read_text())
    env_s = next(p["elapsed_s"] for p in fit["parts"] if p["name"] == "env")
    probe = fit["data"]["probe"]
    budget = round(env_s + probe["startup_s"] + 4 * probe["epoch_s_estimate"] + config.FINAL_RESERVE_S
                   + config.STOP_GRACE_S + 5)
    rc, output, wall = finish(launch(tmp_path, "--budget-s", str(budget), "--train-epochs", "1000", "train"))
    assert rc == 3, output
    stage_dir = tmp_path / "train"
    results = check_files(stage_dir, {"summary.md", "results.json", "junit.xml", "log.txt"})
    assert results["status"] == "partial" and results["partial"] is True
    parts = {p["name"]: p for p in results["parts"]}
    assert parts["train"]["status"] == "timeout"
    done = results["data"]["train"]["epochs_done"]
    assert 1 <= done < 1000
    records = [json.loads(line) for line in (stage_dir / "metrics.jsonl").read_text().splitlines()]
    assert len(records) == done
    assert "PARTIAL" in (stage_dir / "summary.md").read_text()
    junit = ET.parse(stage_dir / "junit.xml").getroot()
    assert any(e.get("type") == "timeout" for e in junit.iter("error"))
    assert results["elapsed_s"] <= budget + 2 and wall <= budget + 30


def test_dry_run_verify_runs_every_part_and_writes_its_files(dry_verify):
    rc, output, _, stage_dir = dry_verify()
    assert rc == 0, output
    results = check_files(stage_dir, {"summary.md", "results.json", "junit.xml", "log.txt"})
    assert results["status"] == "passed" and not results["partial"]
    parts = {p["name"]: p for p in results["parts"]}
    assert list(parts) == [p[0] for p in config.PARTS["verify"]]
    assert parts["memcheck"]["status"] == parts["racecheck"]["status"] == "skipped"
    for name in ("bench_alif_fp32", "bench_taid", "bench_train"):
        assert parts[name]["status"] == "passed", parts[name]
        rows = results["data"][name]["rows"]
        assert any(r.get("provider") == "alif_cuda" for r in rows), (name, rows)
    tests = results["data"]["tests"]
    assert tests["passed"] >= 1 and tests["failures"] == tests["errors"] == 0
    assert parts["kernel_report"]["status"] in ("passed", "skipped")
    if parts["kernel_report"]["status"] == "passed":
        assert (stage_dir / "kernel_report.md").read_text().startswith("# Kernel report")
    junit = ET.parse(stage_dir / "junit.xml").getroot()
    suites = [s.get("name") for s in junit.iter("testsuite")]
    assert suites[0] == "gpu_check.verify" and len(suites) >= 2  # the parts, then pytest's own
    summary = (stage_dir / "summary.md").read_text()
    assert "## Targets" in summary and "| bench_alif_fp32 | passed |" in summary
    assert "alif fp32 forward+backward T=2 N=2^10" in summary


def test_gpu_sweep_reads_its_benchmarks_with_stand_in_commands(monkeypatch, tmp_path):
    """The sweep stage's GPU branch with stand-in benchmarks: one target per T at its widest N,
    the small-N call time, CIFAR-10 against SpikingJelly, and the FSVAE step against the reference."""
    def echo(header, *rows):
        text = "\n".join(["copy bandwidth 4300 GB/s", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
                         + ["| " + " | ".join(r) + " |" for r in rows])
        return ["{py}", "-c", f"print({text!r})"]

    alif = ["provider", "dtype", "T", "N", "mode", "ms", "GB/s", "of copy", "peak MB"]
    fb = "forward+backward"
    stand_ins = {
        "sweep_alif_fp32": echo(alif, ["alif_cuda", "float32", "4", "2^16", fb, "0.020", "900", "21%", "1"],
                                ["alif_cuda", "float32", "4", "2^24", fb, "0.700", "4000", "93%", "100"],
                                ["alif_cuda", "float32", "8", "2^16", fb, "0.150", "900", "21%", "1"],
                                ["alif_cuda", "float32", "8", "2^24", fb, "1.400", "3700", "86%", "200"]),
        "sweep_alif_bf16": echo(alif, ["alif_cuda", "bfloat16", "8", "2^24", fb, "0.500", "3500", "81%", "50"],
                                ["spikingjelly", "bfloat16", "8", "2^24", fb, "1.000", "2300", "53%", "200"]),
        "sweep_train": echo(["net", "batch", "precision", "provider", "ms/step", "images/s", "peak MB"],
                            ["cifar10", "128", "fp32", "alif_cuda", "20", "6400", "900"],
                            ["cifar10", "128", "fp32", "spikingjelly", "30", "4267", "1500"]),
        "sweep_fsvae": echo(["FSVAE+taid, mnist, batch 250, T=16", "ms/step", "images/s", "peak MB", "speedup"],
                            ["alif_cuda", "10.00", "25000", "300", "3.50x"],
                            ["reference", "35.00", "7143", "900", "1.00x"]),
    }
    monkeypatch.setitem(config.COMMANDS, "gpu", stand_ins)
    monkeypatch.setattr(stages, "ENV_SNIPPET", H200_ENV)
    monkeypatch.delenv("OUT", raising=False)
    assert cli.main(["--out", str(tmp_path), "sweep"]) == 0
    results = json.loads((tmp_path / "sweep" / "results.json").read_text())
    assert [p["status"] for p in results["parts"]] == ["passed", "skipped", "passed", "passed", "passed", "passed"]
    met = {t["id"]: (t["value"], t["met"]) for t in results["targets"]}
    assert met["alif_bw_T4"] == (93.0, True) and met["alif_bw_T8"] == (86.0, False)
    assert met["alif_small_N_ms"] == (0.15, False) and met["alif_bf16_vs_sj"] == (2.0, True)
    assert met["train_cifar10_128_fp32_vs_sj"] == (1.5, False) and met["train_mnist_512_fp32_vs_sj"] == (None, None)
    assert met["fsvae_vs_reference"] == (3.5, True)


# -- the parsers ---------------------------------------------------------------------------------
def test_last_markdown_table_and_copy_bandwidth():
    text = ("alif on X; copy bandwidth 4321 GB/s\n| a | b |\n|---|---|\n| 1 | 2 |\n\nnoise\n"
            "| provider | of copy | peak MB |\n|---|---|---|\n| alif_cuda | 93% | - |\n| sj | 61% | 12 |\n")
    rows = parse.parse_last_table(text)
    assert rows == [{"provider": "alif_cuda", "of copy": "93%", "peak MB": "-"},
                    {"provider": "sj", "of copy": "61%", "peak MB": "12"}]
    assert parse.parse_copy_gbps(text) == 4321.0
    assert parse.number("93%") == 93.0 and parse.number("-") is None
    assert parse.find_row(rows, provider="sj")["peak MB"] == "12"


def test_sanitizer_summaries():
    assert parse.parse_sanitizer("========= ERROR SUMMARY: 3 errors\n") == {"errors": 3, "hazards": None}
    found = parse.parse_sanitizer("========= RACECHECK SUMMARY: 0 hazards displayed (0 errors, 0 warnings)\n")
    assert found["hazards"] == 0


def test_junit_counts_gpu_skips(tmp_path):
    path = tmp_path / "j.xml"
    path.write_text(
        '<testsuites><testsuite name="pytest">'
        '<testcase classname="t" name="a"/>'
        '<testcase classname="t" name="b"><skipped message="no CUDA device visible"/></testcase>'
        '<testcase classname="t" name="c"><skipped message="per-channel parameters need a channel dim"/></testcase>'
        '<testcase classname="t" name="d"><failure message="boom"/></testcase>'
        "</testsuite></testsuites>")
    res = parse.parse_junit(path)
    assert (res["tests"], res["passed"], res["skipped"], res["failures"], res["gpu_skips"]) == (4, 1, 2, 1, 1)
    assert res["failed"] == ["t::d: boom"]


def test_later_parts_keep_their_least_time():
    """With 250 s left, the tests may use what the later parts do not need at the least; with
    100 s left they still get their own least; with 5 s left, what is left."""
    class Args:
        dry_run, budget_s, out, argv = False, 420, None, ["verify"]

    c = check.Check("verify", Args())
    c.work.rmdir()
    plan = config.PARTS["verify"]
    later = sum(p[2] for p in plan[[p[0] for p in plan].index("tests") + 1:])
    reserve = config.FINAL_RESERVE_S + config.STOP_GRACE_S
    c.deadline = time.monotonic() + 250
    assert c.allowance("tests") == pytest.approx(250 - reserve - later, abs=0.5)
    c.deadline = time.monotonic() + 100
    assert c.allowance("tests") == pytest.approx(45, abs=0.5)
    c.deadline = time.monotonic() + 5
    assert c.allowance("tests") == pytest.approx(5 - reserve, abs=0.5)


def test_kernel_report_reads_widths_loops_and_local_memory():
    sass = """
	identifier = csrc/alif_cuda.cu
		Function : _Z3fooPf
        /*0000*/                   LDG.E.128.CONSTANT R4, desc[UR4][R2.64] ;
        /*0010*/                   LDG.E.U16 R8, desc[UR4][R2.64] ;
        /*0020*/                   STL [R1], R4 ;
        /*0030*/                   STG.E desc[UR4][R2.64], R4 ;
        /*0040*/                   LDL R5, [R1] ;
        /*0050*/               @P0 BRA 0x10 ;
        /*0060*/                   STG.E.64 desc[UR4][R2.64], R4 ;
        /*0070*/                   EXIT ;
"""
    kernels = kernel_report.parse_sass(sass)
    assert list(kernels) == ["_Z3fooPf"] and kernels["_Z3fooPf"]["source"] == "alif_cuda.cu"
    counts, n_loops = kernel_report.analyse(kernels["_Z3fooPf"]["instructions"])
    assert n_loops == 1
    assert counts == {("LDG", 16): [1, 0], ("LDG", 2): [1, 1], ("STL", 4): [1, 1], ("STG", 4): [1, 1],
                      ("LDL", 4): [1, 1], ("STG", 8): [1, 0]}
    assert kernel_report.widths(counts, ("STG",)) == "8B x1, 4B x1"
    usage = kernel_report.parse_res_usage(" Function _Z3fooPf:\n  REG:40 STACK:8 SHARED:1088 LOCAL:0 CONSTANT[0]:680\n")
    assert usage["_Z3fooPf"]["REG"] == 40 and usage["_Z3fooPf"]["STACK"] == 8
    assert kernel_report.short_name("void alif_cuda::(anonymous namespace)::alif_bwd_kernel<c10::BFloat16, false, true>"
                                    "(alif_cuda::AlifParams, float const*)") == "alif_bwd_kernel<bf16, false, true>"


def test_gpu_verify_reads_its_parts_with_stand_in_commands(monkeypatch, tmp_path):
    """The GPU branch of verify, with each command replaced by a stand-in that prints what the real
    one prints on an H200: a CUDA case skipped for want of a GPU and a memcheck error fail the
    stage; the targets are read at the headline sizes (T=8, N=2^24, 3x64x64, B=128)."""
    def echo(text):
        return ["{py}", "-c", f"print({text!r})"]

    def table(header, *rows):
        return "\n".join(["copy bandwidth 4300 GB/s", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
                         + ["| " + " | ".join(r) + " |" for r in rows])

    alif = ["provider", "dtype", "T", "N", "mode", "ms", "GB/s", "of copy", "peak MB"]
    junit = ('<testsuites><testsuite name="pytest"><testcase classname="t" name="ok"/>'
             '<testcase classname="t" name="gpu"><skipped message="no CUDA device visible"/></testcase>'
             '</testsuite></testsuites>')
    findings = {"findings": {"kernels": 2, "local_memory": [], "local_memory_in_loops": [],
                             "with_16B_global_access": ["k"], "without_16B_global_access": ["j"]}}
    stand_ins = {
        "wheels": echo("installed"), "build": echo("built"),
        "kernel_report": ["{py}", "-c", f"import json, sys; json.dump({findings!r}, open(sys.argv[1], 'w'))",
                          "{kernel_json}"],
        "tests": ["{py}", "-c", f"import sys; open(sys.argv[1], 'w').write({junit!r})", "{junit}"],
        "memcheck": echo("========= ERROR SUMMARY: 2 errors"),
        "racecheck": echo("========= RACECHECK SUMMARY: 0 hazards displayed (0 errors, 0 warnings)"),
        "bench_alif_fp32": echo(table(
            alif, ["alif_cuda", "float32", "8", "2^24", "forward+backward", "1.000", "4000", "95%", "100"],
            ["alif_cuda", "float32", "8", "2^24", "static forward+backward", "0.500", "3700", "88%", "50"],
            ["spikingjelly", "float32", "8", "2^24", "forward+backward", "1.600", "2500", "60%", "400"])),
        "bench_alif_bf16": echo(table(
            alif, ["alif_cuda", "bfloat16", "8", "2^24", "forward+backward", "0.600", "3500", "81%", "50"],
            ["spikingjelly", "bfloat16", "8", "2^24", "forward+backward", "0.900", "2300", "53%", "200"])),
        "bench_taid": echo(table(["plane (C x H x W), T=16, B=250", "mode", "provider", "ms", "GB/s", "of copy",
                                  "peak MB"],
                                 ["3x64x64", "forward", "alif_cuda", "0.100", "3600", "84%", "10"],
                                 ["3x64x64", "forward+backward", "alif_cuda", "0.300", "3000", "70%", "20"],
                                 ["3x64x64", "forward+backward", "reference+compile", "0.600", "1500", "35%", "90"])),
        "bench_train": echo(table(["net", "batch", "precision", "provider", "ms/step", "images/s", "peak MB"],
                                  ["mnist", "128", "fp32", "alif_cuda", "5.0", "25600", "500"],
                                  ["mnist", "128", "fp32", "spikingjelly", "12.0", "10667", "1000"])),
    }
    monkeypatch.setitem(config.COMMANDS, "gpu", stand_ins)
    monkeypatch.setattr(stages, "ENV_SNIPPET", H200_ENV)
    monkeypatch.setattr(stages, "find_sanitizer", lambda: "compute-sanitizer")
    monkeypatch.delenv("OUT", raising=False)
    assert cli.main(["--out", str(tmp_path), "verify"]) == 1  # its build is a stand-in too
    results = json.loads((tmp_path / "verify" / "results.json").read_text())
    status = {p["name"]: p["status"] for p in results["parts"]}
    # wheels/ is git-ignored: present where someone downloaded the wheels, absent in a fresh clone.
    wheels = "passed" if (config.ROOT / "wheels").is_dir() else "skipped"
    assert status == {"env": "passed", "wheels": wheels, "build": "passed", "kernel_report": "passed",
                      "tests": "failed", "memcheck": "failed", "racecheck": "passed", "bench_alif_fp32": "passed",
                      "bench_alif_bf16": "passed", "bench_taid": "passed", "bench_train": "passed"}
    met = {t["id"]: (t["value"], t["met"]) for t in results["targets"]}
    assert met["cuda_tests"][1] is False and met["memcheck"] == (2, False) and met["racecheck"] == (0, True)
    assert met["no_local_in_loops"] == (0, True)
    assert met["alif_fp32_bw"] == (95.0, True) and met["alif_static_bw"] == (88.0, True)
    assert met["alif_fp32_vs_sj"] == (1.6, True) and met["alif_memory"] == (0.25, True)
    assert met["alif_bf16_vs_sj"] == (1.5, False)
    assert met["taid_fwd_bw"] == (84.0, True) and met["taid_fb_vs_compile"] == (2.0, False)
    assert met["train_fp32_vs_sj"] == (2.4, True) and met["train_memory"] == (0.5, True)
    assert met["train_bf16_vs_sj"] == (None, None)  # not measured, and said so
    summary = (tmp_path / "verify" / "summary.md").read_text()
    assert summary.startswith("# gpu_check verify: FAILED") and "NVIDIA H200" in summary
    # Each target's threshold beside its measured value, and the verdict.
    row = "| alif_fp32_bw | alif fp32 forward+backward T=8 N=2^24: share of copy bandwidth | 95 | >= 92% | pass |"
    assert row in summary
    assert "| train_bf16_vs_sj |" in summary and "| not measured | >= 2.5x | not measured |" in summary
    assert "| taid_fb_vs_compile |" in summary and "| 2 | >= 3x | FAIL |" in summary


# -- the targets table ---------------------------------------------------------------------------
def test_targets_table_reads_parts_of_its_stage():
    """Each target reads a part its stage runs, with a known measure and comparison; ids are unique
    within a stage; a table measure names its filter and column, a ratio the other row."""
    assert {t.stage for t in TARGETS} == set(config.PARTS)
    for t in TARGETS:
        assert t.source in [p[0] for p in config.PARTS[t.stage]], t
        assert t.measure in MEASURES and t.compare in COMPARE and t.when in ("ran", "rows"), t
        assert (t.rows is not None and t.column) if t.measure in ("cell", "ratio") else t.rows is None, t
        assert (t.over is not None) == (t.measure == "ratio"), t
    for stage in config.PARTS:
        ids = [t.id for t in TARGETS if t.stage == stage]
        assert len(ids) == len(set(ids)), stage
    wanted = {(t.stage, t.id): t.wanted for t in TARGETS}
    assert wanted["verify", "alif_fp32_bw"] == ">= 92%" and wanted["verify", "alif_fp32_vs_sj"] == ">= 1.4x"
    assert wanted["verify", "alif_bf16_vs_sj"] == ">= 1.8x" and wanted["train", "mnist_final_acc"] == ">= 99.6%"


# -- the `cuda` marker ---------------------------------------------------------------------------
COLLECT = r'''
import inspect, json, sys
import pytest


class Record:
    """Writes the collected tests (id, function, markers, parameters, skipif reasons) and each test
    function's source to sys.argv[1] as JSON."""

    def pytest_collection_finish(self, session):
        items, sources = [], {}
        for item in session.items:
            function = f"{item.module.__name__}.{item.function.__qualname__}"
            sources.setdefault(function, inspect.getsource(item.function))
            items.append(dict(id=item.nodeid, function=function, marks=[m.name for m in item.iter_markers()],
                              params=[str(v) for v in item.callspec.params.values()] if hasattr(item, "callspec")
                              else [],
                              reasons=[m.kwargs.get("reason", "") for m in item.iter_markers("skipif")]))
        with open(sys.argv[1], "w") as f:
            json.dump(dict(items=items, sources=sources), f)


sys.exit(pytest.main(["tests", "--collect-only", "-q", "-p", "no:cacheprovider", *sys.argv[2:]], plugins=[Record()]))
'''
# A test body that puts tensors on CUDA or calls into torch.cuda.
TOUCHES_CUDA = re.compile(r"""["']cuda["']|\.cuda\(|torch\.cuda\.""")


def test_every_test_needing_a_gpu_is_marked_cuda(tmp_path):
    """verify runs `tests -m cuda` on the GPU. The whole suite, collected: every CUDA device case,
    every test skipped for want of CUDA or a GPU, and every test not parametrised over devices whose
    body uses CUDA carries the marker, and so does every test `-k cuda` (the former selection) picks."""
    def collect(path, *args):
        return subprocess.Popen([sys.executable, "-c", COLLECT, str(path), *args], cwd=ROOT, text=True,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT)

    procs = [collect(tmp_path / "all.json"), collect(tmp_path / "k.json", "-k", "cuda")]  # side by side
    for proc in procs:
        output, _ = proc.communicate(timeout=600)
        assert proc.returncode == 0, output
    suite = json.loads((tmp_path / "all.json").read_text())
    marked = {i["id"] for i in suite["items"] if "cuda" in i["marks"]}

    def needs_gpu(item):
        if "cuda" in item["params"] or any(NEEDS_GPU_REASON.search(r) for r in item["reasons"]):
            return True
        return "cpu" not in item["params"] and TOUCHES_CUDA.search(suite["sources"][item["function"]])

    needing = {i["id"] for i in suite["items"] if needs_gpu(i)}
    assert len(needing) > 100
    assert sorted(needing - marked) == [], "these need a GPU but lack the `cuda` marker"
    picked_by_k = {i["id"] for i in json.loads((tmp_path / "k.json").read_text())["items"]}
    assert picked_by_k and sorted(picked_by_k - marked) == [], "`-k cuda` picks these, `-m cuda` does not"
    assert config.COMMANDS["gpu"]["tests"][-3:] == ["tests", "-m", "cuda"]
