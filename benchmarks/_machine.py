"""What every benchmark records about the machine it ran on, and how busy that machine was.

Shared by the benchmark scripts (run as ``python benchmarks/NAME.py``, so this directory is on
``sys.path``)."""

from __future__ import annotations

import json
import os
import platform
import resource
import subprocess
import time


def busy_cpu_seconds() -> float:
    """CPU time spent by every process on the machine since boot (``/proc/stat``)."""
    with open("/proc/stat") as f:
        user, nice, system, _idle, _iowait, irq, softirq, steal = map(int, f.readline().split()[1:9])
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def own_cpu_seconds() -> float:
    """CPU time of this process and its finished children (the measurement subprocesses)."""
    return sum(r.ru_utime + r.ru_stime for r in (resource.getrusage(resource.RUSAGE_SELF),
                                                  resource.getrusage(resource.RUSAGE_CHILDREN)))


def hardware() -> dict:
    try:
        lscpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        fields = {k.strip(): v.strip() for k, v in (line.split(":", 1) for line in lscpu.splitlines() if ":" in line)}
    except OSError:
        fields = {}
    with open("/proc/meminfo") as f:
        mem_total = int(f.readline().split()[1]) * 1024
    return {
        "cpu": fields.get("Model name", platform.processor()),
        "cpus": os.cpu_count(),
        "hypervisor": fields.get("Hypervisor vendor"),
        "mem_total_gib": round(mem_total / 2**30, 1),
        "platform": platform.platform(),
        "python": platform.python_version(),
    }


def rss_bytes() -> int:
    """This process's resident set size now (Linux)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def reset_peak_rss() -> bool:
    """Reset this process's resident-set high-water mark (VmHWM) to its current RSS (Linux >= 4.0);
    False where the kernel does not allow it (then :func:`peak_rss_bytes` is the lifetime peak)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def peak_rss_bytes() -> int:
    """This process's resident-set high-water mark (VmHWM): since the last :func:`reset_peak_rss`."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def run_worker(cmd: list[str], env: dict | None = None) -> dict:
    """Run one measurement in a fresh interpreter and return the JSON of its last stdout line, or
    ``{"error": ...}`` when it fails (for example killed for memory): the table reports the
    failure instead of losing the other methods' numbers."""
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        return {"error": f"exit {proc.returncode}: {proc.stderr.strip()[-500:]}"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


class OtherLoad:
    """Measures the share of the machine's CPU that OTHER processes used during a ``with`` block
    (``/proc/stat`` busy time minus ours and our finished children's): timings taken while it
    is high are inflated."""

    def __enter__(self) -> OtherLoad:
        self._busy, self._own, self._start = busy_cpu_seconds(), own_cpu_seconds(), time.perf_counter()
        self.share = 0.0
        return self

    def __exit__(self, *exc) -> None:
        other = (busy_cpu_seconds() - self._busy) - (own_cpu_seconds() - self._own)
        self.share = max(other, 0.0) / ((time.perf_counter() - self._start) * (os.cpu_count() or 1))


BUSY_SHARE = 0.05


def warn_if_busy(other_share: float) -> None:
    """Print a warning under a table whose timings other processes inflated (share > 5%)."""
    if other_share > BUSY_SHARE:
        print(f"WARNING: other processes used {other_share:.0%} of the CPU during the run; timings are inflated.")


def sync(device) -> None:
    """Wait for the device's queued work (CUDA kernels run asynchronously); nothing on CPU."""
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)
