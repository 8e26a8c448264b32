"""What every benchmark records about the machine it ran on, and how busy that machine was.

Shared by the benchmark scripts (run as ``python benchmarks/NAME.py``, so this directory is on
``sys.path``)."""

from __future__ import annotations

import os
import platform
import resource
import subprocess


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
