"""scripts/gpu_check.sh rehearsed on the CPU: both stages' dry runs, a stage stopped by its budget
with partial results written, and the parsers that read the parts' output (the driver's and
bench/kernel_report.py's)."""
import json
import os
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

import gpu_check  # noqa: E402
import kernel_report  # noqa: E402

MAX_FILES, MAX_FILE_BYTES = 8, 16 * 2**20  # what the GPU machine sends back from $OUT


def launch(out, *args):
    env = {k: v for k, v in os.environ.items() if k != "OUT"}
    env.update(PYTHON=sys.executable, OMP_NUM_THREADS="1")
    return subprocess.Popen(["bash", str(ROOT / "scripts" / "gpu_check.sh"), "--dry-run", "--out", str(out), *args],
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
    assert 1 <= epochs <= gpu_check.MAX_EPOCHS["dry"]
    assert f"--epochs {gpu_check.PROBE_EPOCHS}" in parts["train_probe"]["command"] and f"--epochs {epochs}" in parts["train"]["command"]
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
    budget = round(env_s + probe["startup_s"] + 4 * probe["epoch_s_estimate"] + gpu_check.FINAL_RESERVE_S
                   + gpu_check.STOP_GRACE_S + 5)
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
    assert list(parts) == [p[0] for p in gpu_check.PARTS["verify"]]
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


def test_sweep_is_refused_with_a_reason(tmp_path):
    rc, output, _ = finish(launch(tmp_path, "sweep"))
    assert rc == 2 and "for another time" in output


# -- the parsers ---------------------------------------------------------------------------------
def test_last_markdown_table_and_copy_bandwidth():
    text = ("alif on X; copy bandwidth 4321 GB/s\n| a | b |\n|---|---|\n| 1 | 2 |\n\nnoise\n"
            "| provider | of copy | peak MB |\n|---|---|---|\n| alif_cuda | 93% | - |\n| sj | 61% | 12 |\n")
    rows = gpu_check.parse_last_table(text)
    assert rows == [{"provider": "alif_cuda", "of copy": "93%", "peak MB": "-"},
                    {"provider": "sj", "of copy": "61%", "peak MB": "12"}]
    assert gpu_check.parse_copy_gbps(text) == 4321.0
    assert gpu_check.number("93%") == 93.0 and gpu_check.number("-") is None
    assert gpu_check.find_row(rows, provider="sj")["peak MB"] == "12"


def test_sanitizer_summaries():
    assert gpu_check.parse_sanitizer("========= ERROR SUMMARY: 3 errors\n") == {"errors": 3, "hazards": None}
    found = gpu_check.parse_sanitizer("========= RACECHECK SUMMARY: 0 hazards displayed (0 errors, 0 warnings)\n")
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
    res = gpu_check.parse_junit(path)
    assert (res["tests"], res["passed"], res["skipped"], res["failures"], res["gpu_skips"]) == (4, 1, 2, 1, 1)
    assert res["failed"] == ["t::d: boom"]


def test_later_parts_keep_their_least_time():
    """With 250 s left, the tests may use what the later parts do not need at the least; with
    100 s left they still get their own least; with 5 s left, what is left."""
    class Args:
        dry_run, budget_s, out, argv = False, 420, None, ["verify"]

    c = gpu_check.Check("verify", Args())
    c.work.rmdir()
    plan = gpu_check.PARTS["verify"]
    later = sum(p[2] for p in plan[[p[0] for p in plan].index("tests") + 1:])
    reserve = gpu_check.FINAL_RESERVE_S + gpu_check.STOP_GRACE_S
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
