"""A static report of the compiled kernels in alif_cuda._C: no GPU needed.

    python bench/kernel_report.py [--so alif_cuda/_C*.so] [--cuobjdump PATH] [--out REPORT.md] [--json REPORT.json]

For every kernel instantiation in the built extension: registers, stack frame, local and shared
memory (`cuobjdump -res-usage`), and from the disassembly (`cuobjdump -sass`) its global loads and
stores counted by width, local-memory instructions (LDL/STL: spills or arrays the compiler could
not keep in registers), whether any of those sit inside a loop, and the widest global access.
It answers, before any GPU run, whether a kernel spills or issues scalar accesses where 16-byte
ones were meant. cuobjdump comes from $CUDA_HOME/bin, the PATH, or the copy Triton's package ships.
"""
import argparse
import datetime
import glob
import hashlib
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# Memory instruction classes in sm_90 SASS. Generic LD/ST may reach global memory too.
CLASSES = {
    "LDG": "global load", "STG": "global store", "LD": "generic load", "ST": "generic store",
    "RED": "global reduction", "ATOMG": "global atomic", "ATOM": "generic atomic",
    "LDL": "local load", "STL": "local store", "LDS": "shared load", "STS": "shared store",
    "LDGSTS": "async global->shared copy", "UBLKCP": "bulk copy", "UTMALDG": "tensor-map load",
}
WIDTH_SUFFIX = {"U8": 1, "S8": 1, "U16": 2, "S16": 2, "64": 8, "128": 16, "256": 32}
INSTR = re.compile(r"/\*([0-9a-f]{4,})\*/\s+(@!?U?P\w+\s+)?([A-Z][A-Z0-9]*)((?:\.[A-Z0-9_]+)*)\s*([^;]*);")
BRANCH_TARGET = re.compile(r"0x([0-9a-f]+)")


def find_cuobjdump(explicit=None):
    """The cuobjdump to use: --cuobjdump, $CUDA_HOME/bin, the PATH, then Triton's bundled copy
    (found without importing Triton)."""
    if explicit:
        return explicit
    candidates = []
    for var in ("CUDA_HOME", "CUDA_PATH"):
        if os.environ.get(var):
            candidates.append(Path(os.environ[var]) / "bin" / "cuobjdump")
    candidates.append(Path("/usr/local/cuda/bin/cuobjdump"))
    on_path = shutil.which("cuobjdump")
    if on_path:
        candidates.append(Path(on_path))
    spec = importlib.util.find_spec("triton")
    if spec is not None and spec.submodule_search_locations:
        for loc in spec.submodule_search_locations:
            candidates.append(Path(loc) / "backends" / "nvidia" / "bin" / "cuobjdump")
    for c in candidates:
        if c.is_file() and os.access(c, os.X_OK):
            return str(c)
    return None


def find_extension(explicit=None):
    if explicit:
        return Path(explicit)
    found = sorted(glob.glob(str(ROOT / "alif_cuda" / "_C*.so")), key=os.path.getmtime)
    return Path(found[-1]) if found else None


def demangle(names):
    """Mangled -> readable names through c++filt when it is there, else unchanged."""
    tool = shutil.which("c++filt")
    if not tool or not names:
        return {n: n for n in names}
    out = subprocess.run([tool], input="\n".join(names), capture_output=True, text=True, check=True).stdout
    return dict(zip(names, out.splitlines()))


def short_name(readable):
    """`void ns::(anonymous namespace)::alif_fwd_kernel<float, true>(Params, ...)` ->
    `alif_fwd_kernel<float, true>`: the kernel and its template arguments, no namespaces."""
    name = re.sub(r"^void\s+", "", readable)
    depth, end = 0, len(name)
    for i, ch in enumerate(name):  # cut at the parameter list: the first '(' outside <...>
        if ch == "<":
            depth += 1
        elif ch == ">":
            depth -= 1
        elif ch == "(" and depth == 0 and not name.startswith("(anonymous", i):
            end = i
            break
    name = name[:end].replace("(anonymous namespace)::", "")
    head, sep, args = name.partition("<")
    head = head.rsplit("::", 1)[-1]
    for long, short in (("c10::BFloat16", "bf16"), ("c10::Half", "fp16"), ("at::BFloat16", "bf16"), ("at::Half", "fp16")):
        args = args.replace(long, short)
    return head + sep + args


def parse_res_usage(text):
    """{mangled name: {REG, STACK, SHARED, LOCAL, ...}} from `cuobjdump -res-usage`."""
    out, current = {}, None
    for line in text.splitlines():
        m = re.match(r"\s*Function\s+(\S+?):\s*$", line)
        if m:
            current = m.group(1)
            continue
        if current and "REG:" in line:
            out[current] = {k: int(v) for k, v in re.findall(r"(\w+(?:\[\d+\])?):(\d+)", line)}
            current = None
    return out


def access_width(opcode, suffixes):
    """Bytes per thread of one memory instruction, from its width suffix (none = 4 bytes)."""
    width = 4
    for s in suffixes:
        if s in WIDTH_SUFFIX:
            width = WIDTH_SUFFIX[s]
    return width


def parse_sass(text):
    """{mangled name: {"source": file, "instructions": [(address, opcode, suffixes, operands)]}}
    from `cuobjdump -sass`."""
    kernels, current, source = {}, None, None
    for line in text.splitlines():
        m = re.match(r"\s*identifier\s*=\s*(\S+)", line)
        if m:
            source = Path(m.group(1)).name
            continue
        m = re.match(r"\s*Function\s*:\s*(\S+)", line)
        if m:
            current = m.group(1)
            kernels[current] = {"source": source, "instructions": []}
            continue
        if current is None:
            continue
        m = INSTR.search(line)
        if m:
            addr, _, opcode, suffixes, operands = m.groups()
            kernels[current]["instructions"].append((int(addr, 16), opcode, tuple(s for s in suffixes.split(".") if s), operands))
    return kernels


def loops(instructions):
    """Address ranges [target, branch] of the backward branches: the kernel's loops."""
    ranges = []
    for addr, opcode, _, operands in instructions:
        if opcode in ("BRA", "JMP"):
            m = BRANCH_TARGET.search(operands)
            if m and int(m.group(1), 16) <= addr:
                ranges.append((int(m.group(1), 16), addr))
    return ranges


def analyse(instructions):
    ranges = loops(instructions)
    counts = {}  # (class, width) -> [count, count inside loops]
    for addr, opcode, suffixes, _ in instructions:
        if opcode not in CLASSES:
            continue
        key = (opcode, access_width(opcode, suffixes))
        entry = counts.setdefault(key, [0, 0])
        entry[0] += 1
        entry[1] += any(lo <= addr <= hi for lo, hi in ranges)
    return counts, len(ranges)


def widths(counts, opcodes):
    """'16B x4, 4B x10' for the given opcodes, widest first."""
    per = {}
    for (op, w), (n, _) in counts.items():
        if op in opcodes:
            per[w] = per.get(w, 0) + n
    return ", ".join(f"{w}B x{n}" for w, n in sorted(per.items(), reverse=True)) or "-"


def report(so, cuobjdump):
    res_text = subprocess.run([cuobjdump, "-res-usage", str(so)], capture_output=True, text=True, check=True).stdout
    sass_text = subprocess.run([cuobjdump, "-sass", str(so)], capture_output=True, text=True, check=True).stdout
    res = parse_res_usage(res_text)
    sass = parse_sass(sass_text)
    names = sorted(set(res) | set(sass))
    readable = demangle(names)
    archs = sorted(set(re.findall(r"arch = (sm_\w+)", sass_text)))
    version = subprocess.run([cuobjdump, "--version"], capture_output=True, text=True).stdout
    release = re.search(r"release ([\d.]+)", version)
    kernels = []
    for mangled in names:
        info = sass.get(mangled, {"source": None, "instructions": []})
        counts, n_loops = analyse(info["instructions"])
        usage = res.get(mangled, {})
        local_total = sum(n for (op, _), (n, _) in counts.items() if op in ("LDL", "STL"))
        local_in_loops = sum(k for (op, _), (_, k) in counts.items() if op in ("LDL", "STL"))
        global_widths = sorted({w for (op, w) in counts if op in ("LDG", "STG", "LD", "ST", "RED", "ATOMG")})
        kernels.append(dict(
            name=short_name(readable[mangled]), mangled=mangled, source=info["source"],
            registers=usage.get("REG"), stack_bytes=usage.get("STACK"), local_bytes=usage.get("LOCAL"),
            shared_bytes=usage.get("SHARED"), instructions=len(info["instructions"]), loops=n_loops,
            global_loads=widths(counts, ("LDG", "LD")), global_stores=widths(counts, ("STG", "ST")),
            global_reductions=widths(counts, ("RED", "ATOMG", "ATOM")),
            shared_accesses=widths(counts, ("LDS", "STS")), async_copies=widths(counts, ("LDGSTS", "UBLKCP", "UTMALDG")),
            local_instructions=local_total, local_instructions_in_loops=local_in_loops,
            widest_global_bytes=max(global_widths) if global_widths else None,
            counts={f"{op}.{w}B": n for (op, w), (n, _) in sorted(counts.items())},
        ))
    return dict(extension=str(so), archs=archs, cuobjdump=cuobjdump, cuobjdump_release=release and release.group(1),
                kernels=kernels)


def checkout_of(so):
    """The checkout an extension was built in (alif_cuda/_C*.so sits one level down), else ours."""
    so = Path(so).resolve()
    return so.parents[1] if so.parent.name == "alif_cuda" else ROOT


def relative(path, root=ROOT):
    """path relative to root when inside it, else only its name: no machine's paths in a report."""
    try:
        return str(Path(path).resolve().relative_to(root))
    except ValueError:
        return Path(path).name


def git_head(root=ROOT):
    try:
        out = subprocess.run(["git", "-C", str(root), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
        return out.stdout.strip() or None
    except OSError:
        return None


def findings(rep):
    ks = rep["kernels"]
    spilling = [k["name"] for k in ks if (k["local_instructions"] or 0) > 0 or (k["local_bytes"] or 0) > 0]
    in_loops = [k["name"] for k in ks if k["local_instructions_in_loops"]]
    vector = [k["name"] for k in ks if (k["widest_global_bytes"] or 0) >= 16]
    scalar = [k["name"] for k in ks if k["widest_global_bytes"] is not None and k["widest_global_bytes"] < 16]
    return dict(kernels=len(ks), local_memory=spilling, local_memory_in_loops=in_loops,
                with_16B_global_access=vector, without_16B_global_access=scalar)


def families(names):
    """`alif_fwd_kernel` x16, ...: kernel names without their template arguments, counted."""
    count = {}
    for n in names:
        base = n.split("<", 1)[0]
        count[base] = count.get(base, 0) + 1
    return ", ".join(f"`{b}` x{c}" for b, c in sorted(count.items()))


def markdown(rep, sha):
    f = rep["findings"]
    lines = [
        "# Kernel report",
        "",
        f"Produced by `python bench/kernel_report.py` on {datetime.date.today().isoformat()} from "
        f"`{relative(rep['extension'], checkout_of(rep['extension']))}` (sha256 {sha[:12]}, "
        f"git {git_head(checkout_of(rep['extension'])) or 'unknown'}), "
        f"targets {', '.join(rep['archs']) or 'none found'}; cuobjdump {rep['cuobjdump_release'] or ''} `-res-usage` and `-sass`. "
        "Static: no GPU ran.",
        "",
        "## Findings",
        f"- {f['kernels']} kernel instantiations.",
        f"- Local memory (LDL/STL instructions or LOCAL bytes; spills or register arrays indexed at run time): "
        + (", ".join(f"`{n}`" for n in f["local_memory"]) if f["local_memory"] else "none") + ".",
        f"- Local-memory instructions inside a loop: "
        + (", ".join(f"`{n}`" for n in f["local_memory_in_loops"]) if f["local_memory_in_loops"] else "none") + ".",
        f"- Kernels with a 16-byte global access: "
        + (", ".join(f"`{n}`" for n in f["with_16B_global_access"]) if f["with_16B_global_access"] else "none") + ".",
        f"- Kernels whose global accesses are all narrower than 16 bytes: {len(f['without_16B_global_access'])}"
        + (" (" + families(f["without_16B_global_access"]) + ")" if f["without_16B_global_access"] else "") + ".",
        "",
        "## Per kernel",
        "Widths are bytes per thread per instruction (4B x10 = ten 4-byte instructions); 'loops' counts backward branches.",
        "",
        "| kernel | source | regs | stack B | local B | shared B | loops | global loads | global stores | reductions/atomics "
        "| shared | LDL/STL (in loops) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for k in sorted(rep["kernels"], key=lambda k: (k["source"] or "", k["name"])):
        lines.append(
            f"| `{k['name']}` | {k['source'] or '-'} | {k['registers']} | {k['stack_bytes']} | {k['local_bytes']} | "
            f"{k['shared_bytes']} | {k['loops']} | {k['global_loads']} | {k['global_stores']} | {k['global_reductions']} | "
            f"{k['shared_accesses']} | {k['local_instructions']} ({k['local_instructions_in_loops']}) |"
        )
    return "\n".join(lines) + "\n"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--so", help="the built extension (default: the newest alif_cuda/_C*.so)")
    parser.add_argument("--cuobjdump", help="path to cuobjdump (default: CUDA_HOME, PATH, then Triton's copy)")
    parser.add_argument("--out", help="write the Markdown report here (default: print it)")
    parser.add_argument("--json", help="also write the report as JSON here")
    args = parser.parse_args(argv)
    so = find_extension(args.so)
    if so is None or not so.is_file():
        parser.error(f"no built extension: expected alif_cuda/_C*.so under {ROOT} (build with "
                     "`pip install --no-build-isolation -e .`) or pass --so PATH")
    cuobjdump = find_cuobjdump(args.cuobjdump)
    if cuobjdump is None:
        parser.error("cuobjdump not found in $CUDA_HOME/bin, /usr/local/cuda/bin, the PATH or Triton's package; "
                     "pass --cuobjdump PATH")
    listing = subprocess.run([cuobjdump, "-lelf", str(so)], capture_output=True, text=True)
    if listing.returncode != 0 or ".cubin" not in listing.stdout:
        parser.error(f"{relative(so)} holds no CUDA machine code (a CPU-only build?): cuobjdump -lelf said "
                     f"{(listing.stdout + listing.stderr).strip()[:200]!r}")
    rep = report(so, cuobjdump)
    rep["findings"] = findings(rep)
    sha = hashlib.sha256(so.read_bytes()).hexdigest()
    text = markdown(rep, sha)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text)
        print(f"wrote {args.out}")
    else:
        print(text)
    if args.json:
        rep = dict(rep, extension=relative(so, checkout_of(so)), sha256=sha, cuobjdump=relative(cuobjdump))
        Path(args.json).write_text(json.dumps(rep, indent=1) + "\n")
    f = rep["findings"]
    print(f"{f['kernels']} kernels; local memory in {len(f['local_memory'])} ({len(f['local_memory_in_loops'])} inside "
          f"loops); 16-byte global accesses in {len(f['with_16B_global_access'])}", file=sys.stderr)


if __name__ == "__main__":
    main()
