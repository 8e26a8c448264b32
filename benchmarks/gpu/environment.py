"""Stage 0 of the GPU verification run (``benchmarks/gpu/run.sh``): what the later stages will run on.

A lent GPU machine runs its own image's ``python3`` and packages, not this project's pins, and it
has no network (only wheels carried to it can be installed): the project runs from the checkout
(``run.sh`` puts the repository root first on ``PYTHONPATH``), never from an installed copy.
This check prints, before any GPU time is spent on the stages:

- Python, torch (its CUDA build), the device (name, capability, memory, bf16), triton and
  flash-attn;
- each runtime dependency in ``pyproject.toml``'s ``[project] dependencies`` with its version,
  and the test-extra packages stage 1 uses: ``pytest`` and ``hypothesis`` (``tests/conftest.py``
  imports it) are needed; without ``beartype`` stage 1 runs without the jaxtyping runtime type
  checks, without ``pytest-timeout`` without its hang detector;
- where ``discdiff`` and ``sumi`` are imported from, which must be this checkout.

It exits 1 when a runtime dependency, ``pytest`` or ``hypothesis`` is missing, when the project would be
imported from anywhere but this checkout, or (``--device cuda``) when torch sees no CUDA
device; the later stages still run, and their logs say what failed.  Last line: one JSON line.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.metadata
import json
import platform
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
TEST_PACKAGES = {"pytest": True, "hypothesis": True, "beartype": False, "pytest-timeout": False}  # name: required
MODULE_NAMES = {"pytest-timeout": "pytest_timeout"}  # distribution -> module, where they differ


def runtime_dependencies() -> list[str]:
    """The distribution names of ``[project] dependencies`` that apply to this Python."""
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10: the backport the project depends on there
        import tomli as tomllib
    specs = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    names = []
    for spec in specs:
        marker = spec.partition(";")[2].strip()
        # the one marker form pyproject.toml uses: "python_version < 'X.Y'" (a backport)
        if marker and sys.version_info[:2] >= tuple(int(p) for p in marker.split("'")[1].split(".")):
            continue
        names.append(re.match(r"[A-Za-z0-9_.\-]+", spec).group(0))
    return names


def probe(distribution: str) -> dict:
    """Import the package; its version, or the error that stops it."""
    module = MODULE_NAMES.get(distribution, distribution.replace("-", "_"))
    try:
        importlib.import_module(module)
    except Exception as e:  # noqa: BLE001  (reported: the point of this check)
        return {"ok": False, "error": f"{type(e).__name__}: {e}"}
    try:
        version = importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        version = "(no metadata)"
    return {"ok": True, "version": version}


def project_location(name: str) -> dict:
    try:
        module = importlib.import_module(name)
    except Exception as e:  # noqa: BLE001
        return {"ok": False, "error": f"{type(e).__name__}: {e}"}
    where = Path(module.__file__).resolve()
    inside = where.is_relative_to(ROOT)
    return {"ok": inside, "file": str(where),
            **({} if inside else {"error": f"imported from {where.parent}, not from this checkout {ROOT}"})}


def torch_report(device: str) -> dict:
    import torch

    report = {"torch": torch.__version__, "cuda_build": torch.version.cuda, "cuda_available": torch.cuda.is_available()}
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        report.update(device_name=props.name, capability=f"{props.major}.{props.minor}",
                      memory_gib=round(props.total_memory / 2**30, 1), multiprocessors=props.multi_processor_count,
                      device_count=torch.cuda.device_count(), bf16=torch.cuda.is_bf16_supported())
    report["ok"] = device != "cuda" or report["cuda_available"]
    for extra in ("triton", "flash_attn"):
        try:
            report[extra] = importlib.import_module(extra).__version__
        except Exception as e:  # noqa: BLE001
            report[extra] = f"not importable ({type(e).__name__})"
    return report


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda", choices=["cpu", "cuda"])
    args = parser.parse_args()
    print(f"python {platform.python_version()} at {sys.executable}; platform {platform.platform()}; checkout {ROOT}")
    runtime = {name: probe(name) for name in runtime_dependencies()}
    tests = {name: probe(name) for name in TEST_PACKAGES}
    project = {name: project_location(name) for name in ("discdiff", "sumi")}
    device = torch_report(args.device) if runtime.get("torch", {}).get("ok") else {"ok": False}
    for group, rows in (("runtime", runtime), ("test", tests), ("project", project)):
        for name, r in rows.items():
            state = r.get("version") or r.get("file") if r["ok"] else "MISSING: " + r["error"]
            print(f"{group:8s} {name:16s} {state}")
    print("torch    " + ", ".join(f"{k} {v}" for k, v in device.items() if k != "ok"))
    if not device["ok"]:
        print("FAIL: torch sees no CUDA device" if runtime.get("torch", {}).get("ok") else "FAIL: torch is not importable")
    if not tests["beartype"]["ok"]:
        print("note: beartype is missing, so stage 1 runs without the jaxtyping runtime type checks")
    failed = [n for n, r in {**runtime, **project}.items() if not r["ok"]]
    failed += [n for n, r in tests.items() if TEST_PACKAGES[n] and not r["ok"]]
    ok = not failed and device["ok"]
    if failed:
        print("FAIL: " + ", ".join(failed))
    print(json.dumps({"check": "environment", "python": platform.python_version(), "checkout": str(ROOT),
                      "runtime": runtime, "test": tests, "project": project, "device": device, "passed": ok}))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
