"""The files a stage writes besides results.json: summary.md, junit.xml and log.txt."""
import json
import xml.etree.ElementTree as ET

from .config import LOG_PART_LIMIT

BENCHMARKS = ("bench_alif_fp32", "bench_alif_bf16", "bench_taid", "bench_train", "sweep_alif_fp32", "sweep_alif_bf16",
              "sweep_train", "sweep_fsvae")
VERDICT = {True: "pass", False: "FAIL", None: "not measured"}


def fmt_value(v):
    if v is None:
        return "not measured"
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def summary_markdown(c, results):
    env = results["env"]
    lines = [
        f"# gpu_check {c.stage}{' (dry run)' if c.dry else ''}: {results['status'].upper()}"
        + (" (partial: out of time)" if results["partial"] else ""),
        "",
        f"- device: {env.get('device', 'unknown')}" + (f" ({env['nvidia_smi']})" if env.get("nvidia_smi") else ""),
        f"- torch {env.get('torch')} (CUDA {env.get('torch_cuda')}), Python {env.get('python')}; "
        f"alif_cuda git {results['git']}",
        f"- command: `{results['command']}`; budget {c.budget:.0f} s, used {results['elapsed_s']:.0f} s; "
        f"started {results['started_utc']}",
        "",
        "## Targets",
        "| id | target | measured | threshold | result |",
        "|---|---|---|---|---|",
    ]
    lines += [f"| {t['id']} | {t['target']} | {fmt_value(t['value'])} | {t['wanted']} | {VERDICT[t['met']]} |"
              for t in c.targets]
    if c.dry:
        lines += ["", "Dry run: tiny CPU sizes; the targets' values say the plumbing works, not how fast anything is."]
    lines += ["", "## Parts", "| part | status | s | note |", "|---|---|---|---|"]
    lines += [f"| {p['name']} | {p['status']} | {p['elapsed_s']:.0f} | {p['note'].replace('|', '/')} |"
              for p in c.parts]
    tests = c.data.get("tests")
    if tests and tests["failed"]:
        lines += ["", "## Failed tests"] + [f"- `{f}`" for f in tests["failed"]]
    for name in BENCHMARKS:
        d = c.data.get(name)
        if d and d.get("table"):
            lines += ["", f"## {name} (copy bandwidth {fmt_value(d['copy_gbps'])} GB/s in the same run)", d["table"]]
    if "probe" in c.data:
        lines += ["", "## Train probe", json.dumps(c.data["probe"])]
    if "train" in c.data:
        t = c.data["train"]
        lines += ["", "## Training run", f"- command: `{t.get('command')}`",
                  f"- epochs {t.get('epochs_done')} of {t.get('epochs_planned')}; final test accuracy "
                  f"{fmt_value(t.get('final_test_acc'))}%, best {fmt_value(t.get('best_test_acc'))}%; "
                  f"{fmt_value(t.get('images_per_s'))} images/s; training {fmt_value(t.get('wall_time_s'))} s"]
    commands = [f"- {p['name']}: `{p['command']}`" for p in c.parts if p.get("command")]
    lines += ["", "## Commands"] + commands
    return "\n".join(lines) + "\n"


def write_junit(c, path):
    """One testsuite with a case per part, then pytest's own suites (verify)."""
    root = ET.Element("testsuites")
    suite = ET.SubElement(root, "testsuite", name=f"gpu_check.{c.stage}", tests=str(len(c.parts)),
                          failures=str(sum(p["status"] == "failed" for p in c.parts)),
                          errors=str(sum(p["status"] == "timeout" for p in c.parts)),
                          skipped=str(sum(p["status"] == "skipped" for p in c.parts)))
    for p in c.parts:
        case = ET.SubElement(suite, "testcase", classname=f"gpu_check.{c.stage}", name=p["name"],
                             time=str(p["elapsed_s"]))
        if p["status"] == "failed":
            ET.SubElement(case, "failure", message=p["note"])
        elif p["status"] == "timeout":
            ET.SubElement(case, "error", type="timeout", message=p["note"])
        elif p["status"] == "skipped":
            ET.SubElement(case, "skipped", message=p["note"])
    for extra in c.junit_suites:
        try:
            other = ET.parse(extra).getroot()
        except (ET.ParseError, FileNotFoundError):
            continue
        for s in ([other] if other.tag == "testsuite" else list(other)):
            root.append(s)
    ET.ElementTree(root).write(path, encoding="utf-8", xml_declaration=True)


def write_log(chunks, path):
    with open(path, "w") as f:
        for name, argv, rc, elapsed, output in chunks:
            if len(output) > LOG_PART_LIMIT:
                half = LOG_PART_LIMIT // 2
                output = (output[:half] + f"\n[... {len(output) - LOG_PART_LIMIT} characters left out ...]\n"
                          + output[-half:])
            f.write(f"===== {name}: exit {rc} after {elapsed:.1f} s\n$ {argv}\n")
            f.write(output + ("" if output.endswith("\n") else "\n"))
