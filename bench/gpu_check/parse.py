"""Reading what the parts print and write: Markdown tables, pytest's junit file, compute-sanitizer's
summary, metrics.jsonl."""
import json
import re
import xml.etree.ElementTree as ET
from pathlib import Path

from .config import GPU_SKIP


def table_blocks(text):
    """Each run of lines starting with '|' in `text`, in order."""
    blocks, current = [], []
    for line in text.splitlines():
        if line.startswith("|"):
            current.append(line)
        elif current:
            blocks.append(current)
            current = []
    if current:
        blocks.append(current)
    return blocks


def parse_last_table(text):
    """The last Markdown table in `text` as a list of {column: cell} rows."""
    for block in reversed(table_blocks(text)):
        if len(block) >= 2 and re.match(r"^\|[\s\-:|]+\|$", block[1]):
            header = [c.strip() for c in block[0].strip("|").split("|")]
            return [dict(zip(header, (c.strip() for c in row.strip("|").split("|")))) for row in block[2:]]
    return []


def last_table_text(text):
    """The last run of '|' lines in `text`, as printed."""
    blocks = table_blocks(text)
    return "\n".join(blocks[-1]) if blocks else ""


def last_line(text):
    """The output's last non-blank line (at most 300 characters): what a failed part's note quotes."""
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[-1][:300] if lines else "no output"


def parse_copy_gbps(text):
    m = re.search(r"copy bandwidth\s+([\d.]+)\s*GB/s", text)
    return float(m.group(1)) if m else None


def number(cell):
    """'12.5', '93%', '1,024' -> float; '-' or missing -> None."""
    if cell is None:
        return None
    m = re.match(r"^\s*(-?[\d.,]+)\s*%?\s*$", str(cell))
    return float(m.group(1).replace(",", "")) if m else None


def matches(row, want):
    """Whether the row's cells equal `want` (a key naming a column prefix matches that column)."""
    for key, value in want.items():
        col = key if key in row else next((k for k in row if k.startswith(key)), None)
        if col is None or row[col] != value:
            return False
    return True


def find_row(rows, **want):
    """The first row that matches `want`."""
    return next((row for row in rows if matches(row, want)), None)


def parse_junit(path):
    """Counts and the failed / GPU-skipped cases of a pytest junit file (None if unreadable)."""
    try:
        root = ET.parse(path).getroot()
    except (ET.ParseError, FileNotFoundError):
        return None
    counts = dict(tests=0, failures=0, errors=0, skipped=0, passed=0)
    failed, gpu_skips = [], []
    for case in root.iter("testcase"):
        counts["tests"] += 1
        cid = f"{case.get('classname')}::{case.get('name')}"
        if case.find("failure") is not None or case.find("error") is not None:
            kind = "failures" if case.find("failure") is not None else "errors"
            counts[kind] += 1
            el = case.find("failure") if kind == "failures" else case.find("error")
            failed.append(f"{cid}: {(el.get('message') or '').splitlines()[0][:200] if el.get('message') else ''}")
        elif case.find("skipped") is not None:
            counts["skipped"] += 1
            if GPU_SKIP.search(case.find("skipped").get("message") or ""):
                gpu_skips.append(cid)
        else:
            counts["passed"] += 1
    return dict(counts, failed=failed[:30], gpu_skips=len(gpu_skips), gpu_skip_examples=gpu_skips[:5])


def parse_sanitizer(text):
    """Errors (memcheck) or hazards (racecheck) from compute-sanitizer's summary lines."""
    m = re.search(r"ERROR SUMMARY:\s*(\d+)\s+error", text)
    hazards = re.search(r"RACECHECK SUMMARY:\s*(\d+)\s+hazard", text)
    return dict(errors=int(m.group(1)) if m else None, hazards=int(hazards.group(1)) if hazards else None)


def read_jsonl(path):
    try:
        return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
    except (FileNotFoundError, json.JSONDecodeError):
        return []
