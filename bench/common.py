"""What every benchmark script shares: timing, the device's copy bandwidth, peak memory, and
writing results (JSON records plus a Markdown table) under bench/results/ with the device named."""
import json
import os
import platform
import re
import statistics
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Optional

import torch

RESULTS_DIR = Path(__file__).resolve().parent / "results"


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_ms(fn, device: torch.device, reps: int = 20, warmup: int = 3) -> float:
    """Median time of fn() in ms over `reps` runs after `warmup` runs: CUDA events on a GPU,
    perf_counter on the CPU."""
    for _ in range(warmup):
        fn()
    sync(device)
    times = []
    for _ in range(reps):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
        else:
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


@contextmanager
def _quiet_stderr():
    """File descriptor 2 sent to /dev/null: the profiler's C++ side (Kineto) prints lines such as
    "USDT: ... profiler_start" there as it starts and stops, whatever its log level, and they would
    land between a benchmark's table rows. Only the start and stop are silenced, never fn()."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def peak_extra_mb(fn, device: torch.device):
    """Memory fn() allocates at its peak beyond what was allocated before it, in MB.
    CUDA: the caching allocator's peak statistic. CPU: the peak of the running sum of the
    allocations and frees PyTorch's profiler records during fn() (profile_memory=True: PyTorch's
    CPU allocator reports every tensor, and alif_cuda's CPU output pool reports its outputs the same
    way), so every provider is counted alike and memory reuse cannot hide an allocation."""
    if device.type == "cuda":
        sync(device)
        before = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        fn()
        sync(device)
        return (torch.cuda.max_memory_allocated(device) - before) / 2**20
    from torch.profiler import ProfilerActivity, profile

    prof = profile(activities=[ProfilerActivity.CPU], profile_memory=True)
    with _quiet_stderr():
        prof.start()
    try:
        fn()
    finally:
        with _quiet_stderr():
            prof.stop()
    events = sorted((e.start_ns(), e.nbytes()) for e in prof.profiler.kineto_results.events()
                    if e.name() == "[memory]" and e.device_type() == torch.autograd.DeviceType.CPU)
    live = peak = 0
    for _, nbytes in events:
        live += nbytes
        peak = max(peak, live)
    return peak / 2**20


def copy_gbps(device: torch.device, mb: Optional[int] = None, reps: int = 20) -> float:
    """Bandwidth of a same-device copy of an `mb`-MB float32 tensor (default 1024 MB on CUDA,
    256 MB on the CPU: far beyond its caches, and quick on a small machine), counting bytes read
    plus bytes written: the practical ceiling a memory-bound kernel is compared with."""
    if mb is None:
        mb = 1024 if device.type == "cuda" else 256
    n = mb * 2**20 // 4
    src = torch.empty(n, device=device).uniform_()
    dst = torch.empty_like(src)
    ms = time_ms(lambda: dst.copy_(src), device, reps=reps)
    return 2 * src.numel() * 4 / (ms * 1e-3) / 1e9


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU {platform.processor() or platform.machine()} ({torch.get_num_threads()} threads)"


def device_slug(device: torch.device) -> str:
    """A file-name-safe tag for the device, e.g. nvidia_h100_80gb_hbm3 or cpu."""
    if device.type != "cuda":
        return "cpu"
    return re.sub(r"[^a-z0-9]+", "_", torch.cuda.get_device_name(device).lower()).strip("_")


def markdown_table(columns, rows) -> str:
    """columns: header strings; rows: lists of cells (already formatted)."""
    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def command_line(script: str) -> str:
    """The command that ran `script` (a bench/ file's __file__), relative to the checkout, for the
    results' header."""
    return ("python bench/" + Path(script).name + " " + " ".join(sys.argv[1:])).strip()


def write_results(name: str, device: torch.device, records, markdown: str, command: str) -> Path:
    """Writes bench/results/<name>_<device>.json (the records) and .md (the table, headed by the
    command and device that produced it); returns the JSON path."""
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    stem = RESULTS_DIR / f"{name}_{device_slug(device)}"
    stem.with_suffix(".json").write_text(json.dumps(records, indent=1) + "\n")
    header = (
        f"Produced by `{command}` on {device_name(device)}, torch {torch.__version__}.\n\n"
    )
    stem.with_suffix(".md").write_text(header + markdown + "\n")
    return stem.with_suffix(".json")
